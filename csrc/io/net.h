/* net.h - sockets: resolve, connect, read and write under deadlines.
 * Knows nothing of SMTP.  All calls block (poll) and are meant to be made
 * with the GIL released; none touches Python. */
#ifndef MX_NET_H
#define MX_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef enum {
    MX_E_NONE = 0,
    MX_E_RESOLVE,       /* the name did not resolve */
    MX_E_CONNECT,       /* no address accepted the connection */
    MX_E_TIMEOUT,       /* a deadline passed */
    MX_E_IO,            /* read/write failed (reset, ...) */
    MX_E_EOF,           /* the peer closed the connection */
    MX_E_TLS,           /* TLS failed (handshake, record layer) */
    MX_E_TLS_VERIFY,    /* the certificate was not accepted */
    MX_E_SETUP,         /* bad local setup (CA file, client cert, ...) */
    MX_E_PROTOCOL,      /* the peer broke the protocol (set by callers) */
    MX_E_NOMEM
} mx_err_kind;

/* The security mode the port was found to speak when it is not the one
 * configured (issue 14): the fix to name, not a guess. */
typedef enum {
    MX_MODE_UNKNOWN = 0,
    MX_MODE_STARTTLS,          /* plain SMTP first: a 220 where a ServerHello was expected */
    MX_MODE_SSL                /* implicit TLS: silent, but answers a ClientHello */
} mx_wrong_mode;

typedef struct {
    mx_err_kind kind;
    int sys_errno;
    long verify_code;          /* X509_V_* when kind is MX_E_TLS_VERIFY */
    mx_wrong_mode wrong_mode;  /* set by the callers that find it; else UNKNOWN */
    char msg[512];
} mx_error;

/* the connect attempts made, for diagnosis */
#define MX_MAX_ATTEMPTS 16
typedef struct {
    char addr[64];             /* numeric address */
    int family;                /* AF_INET / AF_INET6 */
    int sys_errno;             /* 0 = connected */
    int64_t ms;                /* time taken */
} mx_attempt;

typedef struct {
    mx_attempt a[MX_MAX_ATTEMPTS];
    int n;
    int64_t resolve_ms;
} mx_attempts;

/* The monotonic clock in milliseconds. */
int64_t mx_now_ms(void);

void mx_error_set(mx_error *e, mx_err_kind kind, int sys_errno,
                  const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;

/* Resolves host and tries each address in order until one connects, each
 * attempt bounded by connect_deadline.  Returns a non-blocking socket with
 * TCP_NODELAY, or -1 with *err set.  Every attempt is recorded in *att. */
int mx_net_connect(const char *host, const char *port, int64_t deadline,
                   mx_attempts *att, mx_error *err);

/* One more connection to the address fd is connected to (a probe),
 * bounded by deadline: a non-blocking socket, or -1. */
int mx_net_connect_same(int fd, int64_t deadline);

/* Waits until fd is ready for events (POLLIN / POLLOUT) or deadline passes
 * (deadline 0 = none).  Returns 0, or -1 with *err set. */
int mx_net_wait(int fd, short events, int64_t deadline, mx_error *err);
/* With POLLIN: acknowledge received data at once before sleeping (TCP_QUICKACK).
 * For waits in the middle of a pipelined group of replies: a server that
 * writes them one by one without TCP_NODELAY holds each until the last is
 * acknowledged, and a delayed ACK (40 ms on Linux) would stall the group.
 * Not set otherwise: an extra ACK packet per reply costs throughput. */
#define MX_WAIT_ACK_NOW 0x4000

/* One read: >0 bytes, or -1 with *err set (EOF is MX_E_EOF).  Tries the
 * socket without waiting first, then waits (poll) when nothing is there:
 * mx_net_read_sleep without a reader. */
ssize_t mx_net_read(int fd, void *buf, size_t cap, int64_t deadline, int ack_now, mx_error *err);

/* The reads of one plain connection's socket (io/conn keeps one).  To wait
 * for a reply, the socket sleeps in recv itself: it is switched to blocking
 * mode once, and a receive timeout (SO_RCVTIMEO) set at or under the time
 * left bounds each recv, so a round trip costs one read instead of a recv
 * that finds nothing, a poll and a recv.  When that timeout passes before
 * the deadline, a poll waits out the rest, so deadlines stay exact.  Every
 * other use of such a socket must not block: writes here pass
 * MSG_DONTWAIT, peeks MSG_DONTWAIT, and mx_tls_handshake makes the socket
 * non-blocking again for OpenSSL. */
typedef struct {
    int fd;            /* the socket switched to blocking mode; -1: none */
    int64_t timeo;     /* its SO_RCVTIMEO in ms; 0: none (recv may sleep for ever) */
} mx_reader;

void mx_reader_init(mx_reader *r);

/* mx_net_read's contract, through r (NULL: mx_net_read): one read of >0 bytes, or -1 with
 * *err set.  With ack_now (MX_WAIT_ACK_NOW's case: the rest of a pipelined
 * group is awaited) the socket is tried first without waiting, and the
 * pending ACK sent before it sleeps. */
ssize_t mx_net_read_sleep(mx_reader *r, int fd, void *buf, size_t cap, int64_t deadline,
                          int ack_now, mx_error *err);

/* Writes everything without blocking in send (MSG_DONTWAIT: the socket
 * may be in blocking mode, see mx_reader), waiting in poll under the
 * deadline; 0, or -1 with *err set.  *done (when not NULL) is the
 * number of bytes the kernel took: on failure, none after them can have
 * reached the peer. */
int mx_net_write_all(int fd, const void *buf, size_t len, int64_t deadline,
                     size_t *done, mx_error *err);

/* The numeric address and port of the peer, into out (cap >= 64). */
void mx_net_peer(int fd, char *out, size_t cap, int *port);

#endif
