/* net.c - sockets with deadlines; see net.h. */
#define _GNU_SOURCE
#include "net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int64_t
mx_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
mx_error_set(mx_error *e, mx_err_kind kind, int sys_errno, const char *fmt, ...)
{
    va_list ap;

    e->kind = kind;
    e->sys_errno = sys_errno;
    e->verify_code = 0;
    e->wrong_mode = MX_MODE_UNKNOWN;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
}

/* Sends a pending delayed ACK now, and ACKs what arrives next at once (the
 * kernel clears the flag by itself). */
static void
ack_now(int fd)
{
#ifdef TCP_QUICKACK
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
#else
    (void)fd;
#endif
}

int
mx_net_wait(int fd, short events, int64_t deadline, mx_error *err)
{
    if (events & MX_WAIT_ACK_NOW) {
        ack_now(fd);
        events = (short)(events & ~MX_WAIT_ACK_NOW);
    }
    for (;;) {
        struct pollfd pfd;
        int timeout = -1, rc;

        if (deadline) {
            int64_t left = deadline - mx_now_ms();
            if (left <= 0) {
                mx_error_set(err, MX_E_TIMEOUT, ETIMEDOUT, "timed out");
                return -1;
            }
            timeout = left > 0x7fffffff ? 0x7fffffff : (int)left;
        }
        pfd.fd = fd;
        pfd.events = events;
        pfd.revents = 0;
        rc = poll(&pfd, 1, timeout);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR) {
            mx_error_set(err, MX_E_IO, errno, "poll: %s", strerror(errno));
            return -1;
        }
        /* rc == 0: loop to report the timeout; EINTR: retry */
    }
}

/* One non-blocking connect to ai, bounded by deadline.  Returns the socket
 * or -1 with errno set. */
static int
connect_one(const struct addrinfo *ai, int64_t deadline)
{
    int fd, one = 1, soerr = 0, saved;
    socklen_t slen = sizeof(soerr);
    mx_error werr;

    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                ai->ai_protocol);
    if (fd < 0)
        return -1;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
        if (errno != EINPROGRESS)
            goto fail;
        if (mx_net_wait(fd, POLLOUT, deadline, &werr) < 0) {
            errno = werr.sys_errno ? werr.sys_errno : ETIMEDOUT;
            goto fail;
        }
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &slen) < 0)
            goto fail;
        if (soerr) {
            errno = soerr;
            goto fail;
        }
    }
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
fail:
    saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

int
mx_net_connect(const char *host, const char *port, int64_t deadline,
               mx_attempts *att, mx_error *err)
{
    struct addrinfo hints, *res = NULL, *ai;
    int rc, fd = -1, last_errno = 0;
    int64_t t0 = mx_now_ms();

    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    /* No AI_ADDRCONFIG: it hides IPv6 on hosts where only loopback has it,
     * and an address of a family that is not routed fails at once
     * (ENETUNREACH), so trying it costs nothing. */
    hints.ai_flags = 0;
    att->n = 0;
    /* getaddrinfo has no timeout of its own; the resolver's (resolv.conf)
     * bounds it.  The deadline is checked right after. */
    rc = getaddrinfo(host, port, &hints, &res);
    att->resolve_ms = mx_now_ms() - t0;
    if (rc != 0) {
        mx_error_set(err, MX_E_RESOLVE, rc == EAI_SYSTEM ? errno : 0,
                     "cannot resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    for (ai = res; ai; ai = ai->ai_next) {
        mx_attempt *a = att->n < MX_MAX_ATTEMPTS ? &att->a[att->n] : NULL;
        int64_t ts = mx_now_ms();

        if (deadline && ts >= deadline) {
            last_errno = ETIMEDOUT;
            break;
        }
        fd = connect_one(ai, deadline);
        last_errno = fd < 0 ? errno : 0;
        if (a) {
            const void *sa = ai->ai_family == AF_INET6
                     ? (void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                     : (void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
            if (!inet_ntop(ai->ai_family, sa, a->addr, sizeof(a->addr)))
                a->addr[0] = '\0';
            a->family = ai->ai_family;
            a->sys_errno = last_errno;
            a->ms = mx_now_ms() - ts;
            att->n++;
        }
        if (fd >= 0)
            break;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        mx_error_set(err, last_errno == ETIMEDOUT ? MX_E_TIMEOUT : MX_E_CONNECT,
                     last_errno, "cannot connect to %s port %s: %s", host, port,
                     last_errno == ETIMEDOUT ? "timed out" : strerror(last_errno));
        return -1;
    }
    return fd;
}

int
mx_net_connect_same(int fd, int64_t deadline)
{
    struct sockaddr_storage ss;
    struct addrinfo ai;
    socklen_t len = sizeof(ss);

    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
        return -1;
    memset(&ai, 0, sizeof(ai));
    ai.ai_family = ss.ss_family;
    ai.ai_socktype = SOCK_STREAM;
    ai.ai_addr = (struct sockaddr *)&ss;
    ai.ai_addrlen = len;
    return connect_one(&ai, deadline);
}

void
mx_reader_init(mx_reader *r)
{
    r->fd = -1;
    r->timeo = 0;
}

/* Under this much time left, a read polls (the old way): SO_RCVTIMEO
 * counts in jiffies (up to 10 ms each) and would overshoot a short wait. */
#define MX_SLEEP_MIN_MS 50
/* What SO_RCVTIMEO is kept under the time left by: a jiffy's rounding up
 * (10 ms at HZ=100) twice over. */
#define MX_SLEEP_SLACK_MS 20

/* Switches fd to blocking mode for r, once.  0, or -1 (it stays
 * non-blocking: the caller polls). */
static int
reader_attach(mx_reader *r, int fd)
{
    int fl;

    if (r->fd == fd)
        return 0;
    fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
        return -1;
    r->fd = fd;
    r->timeo = 0;             /* a new socket has none */
    return 0;
}

/* Keeps fd's receive timeout at or under `left` ms less the slack, so a
 * recv cannot outlast the deadline; set again only when it would (the
 * timeout a read sets is reused by later ones while it fits: 1/16 of the
 * time left is given away for that).  0, or -1 (setsockopt failed). */
static int
reader_bound(mx_reader *r, int fd, int64_t left)
{
    struct timeval tv;
    int64_t t;

    if (r->timeo && r->timeo + MX_SLEEP_SLACK_MS <= left)
        return 0;
    t = left - left / 16 - MX_SLEEP_SLACK_MS;
    tv.tv_sec = (time_t)(t / 1000);
    tv.tv_usec = (suseconds_t)(t % 1000 * 1000);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0)
        return -1;
    r->timeo = t;
    return 0;
}

ssize_t
mx_net_read_sleep(mx_reader *r, int fd, void *buf, size_t cap, int64_t deadline,
                  int ack, mx_error *err)
{
    int flags = ack ? MSG_DONTWAIT : 0;
    short wait = (short)(POLLIN | (ack ? MX_WAIT_ACK_NOW : 0));

    for (;;) {
        ssize_t n;

        if (!flags) {
            int64_t left = deadline ? deadline - mx_now_ms() : 0;
            /* no reader, a short wait, or the socket could not be set up: poll */
            if (!r || (deadline && left < MX_SLEEP_MIN_MS) || reader_attach(r, fd) < 0 ||
                (deadline && reader_bound(r, fd, left) < 0))
                flags = MSG_DONTWAIT;
        }
        n = recv(fd, buf, cap, flags);
        if (n > 0)
            return n;
        if (n == 0) {
            mx_error_set(err, MX_E_EOF, 0, "connection closed by the server");
            return -1;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) {
            mx_error_set(err, MX_E_IO, errno, "read failed: %s", strerror(errno));
            return -1;
        }
        if (ack) {
            /* nothing yet of the rest of the group: ACK, then sleep */
            ack_now(fd);
            ack = 0;
            flags = 0;
            continue;
        }
        /* the receive timeout passed (or the socket was not blocking, or
         * the wait is short): poll waits out exactly what is left */
        if (mx_net_wait(fd, wait, deadline, err) < 0)
            return -1;
        flags = MSG_DONTWAIT;
    }
}

ssize_t
mx_net_read(int fd, void *buf, size_t cap, int64_t deadline, int ack_now, mx_error *err)
{
    return mx_net_read_sleep(NULL, fd, buf, cap, deadline, ack_now, err);
}

int
mx_net_write_all(int fd, const void *buf, size_t len, int64_t deadline,
                 size_t *done, mx_error *err)
{
    const char *p = buf;

    if (done)
        *done = 0;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            if (done)
                *done += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            mx_error_set(err, MX_E_IO, errno, "write failed: %s", strerror(errno));
            return -1;
        }
        if (mx_net_wait(fd, POLLOUT, deadline, err) < 0)
            return -1;
    }
    return 0;
}

void
mx_net_peer(int fd, char *out, size_t cap, int *port)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);

    out[0] = '\0';
    *port = 0;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
        return;
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        if (!inet_ntop(AF_INET6, &s6->sin6_addr, out, (socklen_t)cap))
            out[0] = '\0';
        *port = ntohs(s6->sin6_port);
    } else if (ss.ss_family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        if (!inet_ntop(AF_INET, &s4->sin_addr, out, (socklen_t)cap))
            out[0] = '\0';
        *port = ntohs(s4->sin_port);
    }
}
