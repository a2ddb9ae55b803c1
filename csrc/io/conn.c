/* conn.c - the I/O loop of one connection: see conn.h. */
#include "conn.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls.h"

/* The parser (a 64 KiB line), the last reply (256 KiB of text) and the
 * read buffer (16 KiB) are sized for the longest reply allowed (issue 14)
 * and for pipelined bursts, yet most replies are under 1 KiB.  They share
 * one anonymous mapping rather than malloc'd blocks or room in the Session
 * object (which Python zero-fills, making every page of it resident): the
 * kernel makes a page resident when a reply first writes to it, so a
 * session holds the pages its longest reply used (an EHLO reply: the first
 * page of each) and munmap hands them all back when it ends.  From malloc,
 * blocks this size went to glibc's heaps once its mmap threshold had risen
 * past them, and the heaps kept ~7 MiB of freed ones per process.  One
 * mapping: one mmap and one munmap per session.  The pure parser keeps its
 * fixed, caller-owned bounds.  The reply comes first, the parser and the
 * read buffer each start on a page of their own (4 KiB rounding: larger
 * pages only cost a page more). */
#define MX_PAGE_UP(n) (((n) + 4095) / 4096 * 4096)
#define MX_MAP_PARSER_OFF MX_PAGE_UP(sizeof(mx_reply))
#define MX_MAP_RBUF_OFF (MX_MAP_PARSER_OFF + MX_PAGE_UP(sizeof(mx_reply_parser)))
#define MX_MAP_SIZE (MX_MAP_RBUF_OFF + MX_RBUF)

int
mx_conn_init(mx_conn *c)
{
    void *m;

    c->fd = -1;
    mx_reader_init(&c->rd);
    c->ssl = NULL;
    mx_transcript_init(&c->tr);
    c->rstart = c->rend = 0;
    c->wbuf = malloc(MX_WBUF);
    m = mmap(NULL, MX_MAP_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    c->reply = m == MAP_FAILED ? NULL : m;
    c->parser = m == MAP_FAILED ? NULL : (mx_reply_parser *)((char *)m + MX_MAP_PARSER_OFF);
    c->rbuf = m == MAP_FAILED ? NULL : (unsigned char *)m + MX_MAP_RBUF_OFF;
    if (!c->wbuf || !c->reply)
        return -1;
    mx_reply_parser_init(c->parser);
    c->reply->code = 0;
    c->reply->enhanced[0] = '\0';
    c->reply->nlines = 0;
    c->reply->text_len = 0;
    return 0;
}

void
mx_conn_free(mx_conn *c)
{
    mx_conn_drop(c);
    free(c->wbuf);
    c->wbuf = NULL;
    if (c->reply)
        (void)munmap(c->reply, MX_MAP_SIZE);      /* the parser and rbuf with it */
    c->reply = NULL;
    c->parser = NULL;
    c->rbuf = NULL;
    mx_transcript_free(&c->tr);
}

void
mx_conn_drop(mx_conn *c)
{
    if (c->ssl) {
        mx_tls_close(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    mx_reader_init(&c->rd);
    c->rstart = c->rend = 0;
}

uint32_t
mx_conn_elapsed(const mx_conn *c)
{
    int64_t d = mx_now_ms() - c->t0;
    return d < 0 ? 0 : (uint32_t)d;
}

/* One entry of head + text.  The clock is read only for an entry that is
 * kept: once the transcript is full, an entry costs a comparison and the
 * count of those not kept. */
static void
record2(mx_conn *c, mx_tr_dir dir, const char *head, size_t hlen, const char *text, size_t len)
{
    uint32_t ms = 0;

    if (mx_transcript_keeps(&c->tr, hlen, text, len))
        ms = mx_conn_elapsed(c);
    (void)mx_transcript_add2(&c->tr, ms, dir, head, hlen, text, len);
}

void
mx_conn_record(mx_conn *c, mx_tr_dir dir, const char *text, size_t len)
{
    if (c->record)
        record2(c, dir, NULL, 0, text, len);
}

void
mx_conn_recordf(mx_conn *c, mx_tr_dir dir, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n;

    if (!c->record)
        return;
    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0)
        mx_conn_record(c, dir, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

int
mx_conn_in_step(mx_conn *c)
{
    size_t extra;
    char ch;
    ssize_t n;

    /* over TLS the socket itself is not peeked: TLS 1.3 session tickets
     * arrive there unasked, and they are not SMTP */
    if (c->rstart < c->rend) {
        extra = c->rend - c->rstart;
    } else if (c->ssl) {
        extra = (size_t)SSL_pending(c->ssl);
    } else {
        n = recv(c->fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
        extra = n > 0 ? (size_t)n : 0;
    }
    if (!extra)
        return 0;
    mx_error_set(&c->err, MX_E_PROTOCOL, 0,
                 "the server sent %zu byte%s nobody asked for (desynchronised)",
                 extra, extra == 1 ? "" : "s");
    return -1;
}

int
mx_conn_write(mx_conn *c, const void *buf, size_t len, int64_t deadline, size_t *maybe)
{
    size_t done = len;
    int rc;

    c->replies_since_write = 0;
    if (c->ssl)
        rc = mx_tls_write_all(c->ssl, c->fd, buf, len, deadline, &c->err);
    else
        rc = mx_net_write_all(c->fd, buf, len, deadline, &done, &c->err);
    if (maybe)
        *maybe = done;
    return rc;
}

int
mx_conn_send(mx_conn *c, const char *buf, size_t len, const char *shown, int64_t deadline)
{
    if (mx_conn_in_step(c) < 0)
        return -1;
    if (shown) {
        mx_conn_record(c, MX_TR_CLIENT, shown, strlen(shown));
    } else {
        size_t start = 0, i;
        for (i = 0; i + 1 < len; i++) {
            if (buf[i] == '\r' && buf[i + 1] == '\n') {
                mx_conn_record(c, MX_TR_CLIENT, buf + start, i - start);
                start = i + 2;
            }
        }
    }
    return mx_conn_write(c, buf, len, deadline, NULL);
}

/* Each line of the reply as "250-text" / "250 text" (the parser took
 * three digits, so the code is 100..999: written by hand, no printf). */
static void
record_reply(mx_conn *c)
{
    const mx_reply *r = c->reply;
    unsigned code = (unsigned)r->code % 1000;
    char hdr[4];
    size_t i;

    if (!c->record)
        return;
    hdr[0] = (char)('0' + code / 100);
    hdr[1] = (char)('0' + code / 10 % 10);
    hdr[2] = (char)('0' + code % 10);
    for (i = 0; i < r->nlines; i++) {
        hdr[3] = i + 1 == r->nlines ? ' ' : '-';
        record2(c, MX_TR_SERVER, hdr, sizeof(hdr), r->text + r->line_off[i], r->line_len[i]);
    }
}

int
mx_conn_buffered_reply(mx_conn *c)
{
    size_t used = 0;
    mx_reply_status st;

    if (c->rstart >= c->rend)
        return 0;
    st = mx_reply_parse(c->parser, c->rbuf + c->rstart, c->rend - c->rstart, &used, c->reply);
    c->rstart += used;
    if (st == MX_REPLY_COMPLETE) {
        c->replies_since_write++;
        record_reply(c);
        return 1;
    }
    if (st != MX_REPLY_INCOMPLETE) {
        mx_error_set(&c->err, MX_E_PROTOCOL, 0, "malformed reply: %s", mx_reply_strerror(st));
        return -1;
    }
    return 0;
}

int
mx_conn_recv_reply(mx_conn *c, int64_t deadline)
{
    for (;;) {
        ssize_t n;
        int ack_now, rc = mx_conn_buffered_reply(c);

        if (rc)
            return rc < 0 ? -1 : 0;
        /* the parser holds whatever was left of the buffer */
        c->rstart = c->rend = 0;
        /* part of a pipelined group has come and the rest is awaited: see
         * MX_WAIT_ACK_NOW */
        ack_now = c->replies_since_write > 0;
        if (c->ssl)
            n = mx_tls_read(c->ssl, c->fd, c->rbuf, MX_RBUF, deadline, ack_now, &c->err);
        else
            n = mx_net_read_sleep(&c->rd, c->fd, c->rbuf, MX_RBUF, deadline, ack_now, &c->err);
        if (n < 0)
            return -1;
        c->rend = (size_t)n;
    }
}
