/* protocol_floor.c - the fastest any client can send over DATA on one
 * connection: the bound the engine is measured against.
 *
 *     protocol_floor N PORT MESSAGE_FILE     (prints messages per second)
 *
 * With PIPELINING but no CHUNKING, a message's body may go only after the
 * server's 354 (RFC 2920, section 3.1), so each message costs one round trip
 * at least: this client writes the body, its end marker and the next
 * message's MAIL, RCPT and DATA in one send(), then reads the four replies
 * with blocking recv() calls, and does nothing else: no parsing beyond the
 * reply codes, no timeouts, no transcript, no Python.  Whatever a real client
 * adds is its own cost on top of this floor.
 *
 * The message file must already be in wire form (CRLF lines, no line
 * starting with "."), as benchmarks/bench.py's body() makes it.  A reply
 * other than the one expected ends the run with exit status 1. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ENVELOPE "MAIL FROM:<a@bench.example>\r\nRCPT TO:<b@bench.example>\r\nDATA\r\n"
#define END_MARK ".\r\n"

static char rbuf[65536];
static size_t rlen;

/* Reads until `want` replies are complete; each reply's first digit must be
 * the next of `classes`.  0, or -1 with a message printed. */
static int
replies(int fd, int want, const char *classes)
{
    int got = 0;
    size_t start = 0, i = 0;

    for (;;) {
        for (; i + 1 < rlen; i++) {
            if (rbuf[i] != '\r' || rbuf[i + 1] != '\n')
                continue;
            if (i - start >= 3 && (i - start == 3 || rbuf[start + 3] == ' ')) {
                if (rbuf[start] != classes[got]) {
                    fprintf(stderr, "protocol_floor: unexpected reply: %.*s\n",
                            (int)(i - start), rbuf + start);
                    return -1;
                }
                got++;
            }
            start = i + 2;
            if (got == want) {
                memmove(rbuf, rbuf + start, rlen - start);
                rlen -= start;
                return 0;
            }
            i++;
        }
        if (rlen == sizeof(rbuf)) {
            fprintf(stderr, "protocol_floor: reply too long\n");
            return -1;
        }
        ssize_t n = recv(fd, rbuf + rlen, sizeof(rbuf) - rlen, 0);
        if (n <= 0) {
            perror("protocol_floor: recv");
            return -1;
        }
        rlen += (size_t)n;
    }
}

static int
send_all(int fd, const char *p, size_t len)
{
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0) {
            perror("protocol_floor: send");
            return -1;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int
main(int argc, char **argv)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    struct timespec t0, t1;
    const size_t elen = strlen(ENVELOPE), mlen = strlen(END_MARK);
    char *out = NULL;
    size_t blen, olen;
    long n, i;
    int fd, one = 1, rc = 1;
    FILE *f;

    if (argc != 4 || (n = atol(argv[1])) <= 0) {
        fprintf(stderr, "usage: protocol_floor N PORT MESSAGE_FILE\n");
        return 2;
    }
    if (!(f = fopen(argv[3], "rb"))) {
        perror(argv[3]);
        return 2;
    }
    fseek(f, 0, SEEK_END);
    blen = (size_t)ftell(f);
    rewind(f);
    if (!(out = malloc(blen + mlen + elen)) || fread(out, 1, blen, f) != blen) {
        fprintf(stderr, "protocol_floor: cannot read %s\n", argv[3]);
        fclose(f);
        free(out);
        return 2;
    }
    fclose(f);
    memcpy(out + blen, END_MARK, mlen);
    memcpy(out + blen + mlen, ENVELOPE, elen);

    addr.sin_port = htons((unsigned short)atoi(argv[2]));
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if ((fd = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
        connect(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("protocol_floor: connect");
        free(out);
        return 1;
    }
    if (replies(fd, 1, "2") < 0 || send_all(fd, "EHLO bench.example\r\n", 20) < 0 ||
        replies(fd, 1, "2") < 0)
        goto done;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (send_all(fd, ENVELOPE, elen) < 0 || replies(fd, 3, "223") < 0)
        goto done;
    for (i = 0; i < n; i++) {
        int last = i + 1 == n;
        olen = blen + mlen + (last ? 0 : elen);
        if (send_all(fd, out, olen) < 0 || replies(fd, last ? 1 : 4, "2223") < 0)
            goto done;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.0f\n", (double)n / ((double)(t1.tv_sec - t0.tv_sec) +
                                  (double)(t1.tv_nsec - t0.tv_nsec) / 1e9));
    rc = send_all(fd, "QUIT\r\n", 6) < 0;
done:
    close(fd);
    free(out);
    return rc;
}
