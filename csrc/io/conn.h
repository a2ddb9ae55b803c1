/* conn.h - one connection's transport and byte streams: the I/O loop that
 * writes command bytes and reads complete replies, under absolute
 * deadlines, with a bounded transcript.  No Python; meant to be called with
 * the GIL released.  Knows replies as bytes (the pure parser cuts them), not
 * what they mean. */
#ifndef MX_CONN_H
#define MX_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "net.h"
#include "reply.h"
#include "transcript.h"

/* Bytes read ahead of the parser.  Replies are small; 16 KiB holds many
 * pipelined ones. */
#define MX_RBUF 16384
/* Encoded body bytes per write (also the staging buffer of a group). */
#define MX_WBUF 65536

typedef struct {
    int fd;                      /* -1: none */
    mx_reader rd;                /* how fd's plain reads wait (net.h) */
    SSL *ssl;                    /* NULL: plain */
    int64_t t0;                  /* when connect() began (mx_now_ms) */
    int record;                  /* keep a transcript */
    mx_transcript tr;
    /* mapped (mx_conn_init): with 64 KiB lines and 256 KiB replies they
     * are too large to live in the Session object, which Python zero-fills
     * page by page; mapped, only the pages a reply touches become resident,
     * and all of them go back to the system when the session ends */
    mx_reply_parser *parser;
    mx_reply *reply;             /* the last complete reply */
    size_t rstart, rend;
    unsigned char *rbuf;         /* MX_RBUF bytes, mapped with the parser */
    unsigned char *wbuf;         /* MX_WBUF bytes */
    mx_error err;                /* why the last call failed */
    unsigned replies_since_write;   /* complete replies read since we last wrote */
} mx_conn;

/* 0, or -1 (out of memory: wbuf, parser, reply); mx_conn_free either way. */
int mx_conn_init(mx_conn *c);
void mx_conn_free(mx_conn *c);

/* Closes the transport. */
void mx_conn_drop(mx_conn *c);

/* Milliseconds since t0. */
uint32_t mx_conn_elapsed(const mx_conn *c);

void mx_conn_record(mx_conn *c, mx_tr_dir dir, const char *text, size_t len);
void mx_conn_recordf(mx_conn *c, mx_tr_dir dir, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* The desync check, before a write when no reply is outstanding: bytes the
 * server sent unasked (read ahead, held decrypted in OpenSSL, or waiting on
 * a plain socket) are refused before they can be taken as the answer to
 * the next command.  0, or -1 with c->err set (MX_E_PROTOCOL). */
int mx_conn_in_step(mx_conn *c);

/* Writes all of buf.  0, or -1 with c->err set and, when maybe is not
 * NULL, *maybe = how many of the bytes may have reached the server: exact
 * on a plain socket (what the kernel took); over TLS the whole buffer, as a
 * failed SSL_write may have sent records before it failed. */
int mx_conn_write(mx_conn *c, const void *buf, size_t len, int64_t deadline, size_t *maybe);

/* One or more CRLF-ended command lines in one write, after the desync
 * check; each is recorded (as `shown` instead, when given, for one line
 * holding a secret).  0, or -1 with c->err set. */
int mx_conn_send(mx_conn *c, const char *buf, size_t len, const char *shown, int64_t deadline);

/* Reads one whole reply into c->reply (recorded).  0, or -1 with c->err set. */
int mx_conn_recv_reply(mx_conn *c, int64_t deadline);

/* The same from bytes already read, without I/O (and so without a deadline
 * to work out): 1 a reply is in c->reply (recorded), 0 more bytes are
 * needed (what there was is in the parser; mx_conn_recv_reply goes on from
 * there), -1 with c->err set. */
int mx_conn_buffered_reply(mx_conn *c);

#endif
