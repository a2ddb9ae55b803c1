/* session.c - the Session type: drives SMTP over net.c/tls.c using the pure
 * protocol files, and is the one file that maps C failures to Python.
 *
 * Rules kept here:
 * - Python objects are touched only with the GIL held; every blocking call
 *   (connect, read, write, handshake) runs between Py_BEGIN/END_ALLOW_THREADS
 *   and works on C data owned by the session alone.
 * - Each method first takes the session's own lock without waiting: a second
 *   thread gets ConcurrentUseError instead of interleaving on the wire.
 * - The protocol state changes in set_state() only.  After a failure that
 *   leaves the connection in an unknown state (I/O error, timeout, protocol
 *   violation, 421) the state is ERROR for good and the socket is closed.
 * - Sending a command and reading its reply are separate steps (send_cmd,
 *   recv_reply), so pipelining is queueing, not a rewrite.
 */
#include "module.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth.h"
#include "body.h"
#include "cmd.h"
#include "ehlo.h"
#include "net.h"
#include "reply.h"
#include "sasl.h"
#include "tls.h"
#include "transcript.h"

#include <openssl/ssl.h>

/* ---- stages, timeouts, states ------------------------------------------ */

typedef enum {
    STG_CONNECT, STG_TLS, STG_EHLO, STG_STARTTLS, STG_AUTH, STG_MAIL,
    STG_RCPT, STG_DATA, STG_END_OF_DATA, STG_RSET, STG_NOOP, STG_QUIT,
    STG_COUNT
} stage;

static const char *const stage_names[STG_COUNT] = {
    "CONNECT", "TLS", "EHLO", "STARTTLS", "AUTH", "MAIL",
    "RCPT", "DATA", "END_OF_DATA", "RSET", "NOOP", "QUIT",
};

/* Timeouts, in the order of timeout_names.  Defaults follow RFC 5321
 * §4.5.3.2 where it gives one (initial 220: 5 min; MAIL, RCPT: 5 min; DATA
 * initiation: 2 min; data block: 3 min; DATA termination: 10 min). */
typedef enum {
    TO_CONNECT, TO_BANNER, TO_TLS, TO_EHLO, TO_STARTTLS, TO_AUTH, TO_MAIL,
    TO_RCPT, TO_DATA, TO_DATA_BLOCK, TO_END_OF_DATA, TO_COMMAND, TO_QUIT,
    TO_COUNT
} timeout_key;

static const char *const timeout_names[TO_COUNT] = {
    "connect", "banner", "tls", "ehlo", "starttls", "auth", "mail",
    "rcpt", "data", "data_block", "end_of_data", "command", "quit",
};

static const int64_t timeout_defaults_ms[TO_COUNT] = {
    30000,   /* connect: not in the RFC; a dead host should fail fast */
    300000,  /* banner: §4.5.3.2.1 initial 220 message, 5 minutes */
    60000,   /* tls: the handshake */
    300000,  /* ehlo: as a command, 5 minutes */
    120000,  /* starttls */
    120000,  /* auth: allows for tarpits (Exchange AuthTarpitInterval 5 s) */
    300000,  /* mail: §4.5.3.2.2, 5 minutes */
    300000,  /* rcpt: §4.5.3.2.3, 5 minutes */
    120000,  /* data: §4.5.3.2.4 DATA initiation, 2 minutes */
    180000,  /* data_block: §4.5.3.2.5, 3 minutes per write */
    600000,  /* end_of_data: §4.5.3.2.6 DATA termination, 10 minutes */
    300000,  /* command: RSET, NOOP, ... */
    30000,   /* quit: nothing is at stake any more */
};

typedef enum {
    S_NEW,         /* not connected yet */
    S_CONNECTED,   /* greeting received, no EHLO yet */
    S_READY,       /* EHLO done, no mail transaction */
    S_MAIL,        /* MAIL accepted */
    S_RCPT,        /* at least one RCPT accepted */
    S_CLOSED,
    S_ERROR,       /* sticky: the connection's state is unknown */
    S_COUNT
} sstate;

static const char *const state_names[S_COUNT] = {
    "NEW", "CONNECTED", "READY", "MAIL", "RCPT", "CLOSED", "ERROR",
};

enum { SEC_STARTTLS, SEC_SSL, SEC_NONE };

/* Bytes read ahead of the parser.  Replies are small; 16 KiB holds many
 * pipelined ones. */
#define MX_RBUF 16384
/* Encoded body bytes per write. */
#define MX_WBUF 65536

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    sstate state;
    char failure[768];           /* why the state is ERROR */

    /* settings */
    char *host, *server_name, *ehlo_name, *ca_file, *cert_file, *key_file;
    char port[8];
    int security, verify, min_tls, allow_insecure_auth, helo_fallback;
    unsigned auth_allowed;
    int record;                  /* keep a transcript */
    int64_t timeout_ms[TO_COUNT];   /* < 0: none */
    int64_t deadline;            /* absolute, mx_now_ms(); 0 = none */

    /* connection */
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    int64_t t0;
    mx_attempts attempts;
    char peer_addr[64];
    int peer_port;
    int esmtp, authenticated;
    mx_caps caps;
    /* What the getters read without the lock: written only with the GIL
     * and the lock held, never while a method runs with the GIL released
     * (state, esmtp, authenticated, caps, peer_addr/port and these). */
    PyObject *caps_dict;         /* {KEYWORD: params}; a fresh dict per EHLO */
    PyObject *banner;            /* Reply */
    PyObject *ehlo_reply;        /* Reply */
    /* TLS facts taken once after the handshake: the SSL object itself is in
     * use by a send with the GIL released (and replaces its SSL_SESSION when
     * a TLS 1.3 ticket arrives), so no getter may touch it. */
    PyObject *tls_version_s, *tls_cipher_s;   /* str */
    PyObject *peer_der;          /* bytes or None */
    PyObject *peer_info;         /* dict or None */

    /* I/O */
    mx_reply_parser parser;
    mx_reply reply;
    size_t rstart, rend;
    unsigned char rbuf[MX_RBUF];
    unsigned char *wbuf;         /* MX_WBUF bytes, for bodies */
    mx_transcript tr;
    mx_error err;
    int deadline_hit;            /* the last timeout was the overall deadline */
    unsigned replies_since_write;   /* complete replies read since we last wrote */
} Session;

/* The one place the protocol state changes. */
static void
set_state(Session *s, sstate next)
{
    s->state = next;
}

/* ---- small helpers (no Python) ------------------------------------------ */

static uint32_t
elapsed_ms(Session *s)
{
    int64_t d = mx_now_ms() - s->t0;
    return d < 0 ? 0 : (uint32_t)d;
}

static void
record(Session *s, mx_tr_dir dir, const char *text, size_t len)
{
    if (s->record)
        (void)mx_transcript_add(&s->tr, elapsed_ms(s), dir, text, len);
}

static void
recordf(Session *s, mx_tr_dir dir, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n;

    if (!s->record)
        return;
    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n > 0)
        record(s, dir, buf, (size_t)n < sizeof(buf) ? (size_t)n : sizeof(buf) - 1);
}

/* The deadline for one step: the stage timeout, capped by the overall one. */
static int64_t
deadline_for(Session *s, timeout_key k)
{
    int64_t dl = 0;

    if (s->timeout_ms[k] >= 0)
        dl = mx_now_ms() + s->timeout_ms[k];
    s->deadline_hit = 0;
    if (s->deadline && (!dl || s->deadline < dl)) {
        dl = s->deadline;
        s->deadline_hit = 1;
    }
    return dl;
}

/* Closes the transport; no Python. */
static void
drop_connection(Session *s)
{
    if (s->ssl) {
        mx_tls_close(s->ssl);
        s->ssl = NULL;
    }
    if (s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
    s->rstart = s->rend = 0;
}

/* Writes all of buf.  0, or -1 with s->err set and, when maybe is not
 * NULL, *maybe = how many of the bytes may have reached the server: exact
 * on a plain socket (what the kernel took); over TLS the whole buffer, as a
 * failed SSL_write may have sent records before it failed. */
static int
stream_write_counted(Session *s, const void *buf, size_t len, int64_t dl, size_t *maybe)
{
    size_t done = len;
    int rc;

    s->replies_since_write = 0;
    if (s->ssl)
        rc = mx_tls_write_all(s->ssl, s->fd, buf, len, dl, &s->err);
    else
        rc = mx_net_write_all(s->fd, buf, len, dl, &done, &s->err);
    if (maybe)
        *maybe = done;
    return rc;
}

static int
stream_write(Session *s, const void *buf, size_t len, int64_t dl)
{
    return stream_write_counted(s, buf, len, dl, NULL);
}

/* Bytes that arrived when no reply was due: read ahead into rbuf, held
 * decrypted inside OpenSSL, or waiting on a plain socket.  (Over TLS the
 * socket itself is not peeked: TLS 1.3 session tickets arrive there
 * unasked, and they are not SMTP.)  Returns how many bytes are known. */
static size_t
unsolicited_bytes(Session *s)
{
    char c;
    ssize_t n;

    if (s->rstart < s->rend)
        return s->rend - s->rstart;
    if (s->ssl)
        return (size_t)SSL_pending(s->ssl);
    n = recv(s->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n > 0 ? (size_t)n : 0;
}

/* Sends one command line and records it (or its redacted form).  No reply
 * is outstanding when it is called, so anything the server has already
 * said is out of turn: a desync, refused before it can be mistaken for the
 * answer to this command. */
static int
send_cmd(Session *s, const char *line, size_t len, const char *shown,
         timeout_key k)
{
    size_t extra = unsolicited_bytes(s);

    if (extra) {
        mx_error_set(&s->err, MX_E_PROTOCOL, 0,
                     "the server sent %zu byte%s nobody asked for (desynchronised)",
                     extra, extra == 1 ? "" : "s");
        return -1;
    }
    record(s, MX_TR_CLIENT, shown ? shown : line, shown ? strlen(shown) : len);
    return stream_write(s, line, len, deadline_for(s, k));
}

static void
record_reply(Session *s)
{
    size_t i;

    for (i = 0; i < s->reply.nlines; i++) {
        char line[MX_REPLY_LINE_MAX + 8];
        size_t n = s->reply.line_len[i];
        int hdr = snprintf(line, sizeof(line), "%03d%c", s->reply.code,
                           i + 1 == s->reply.nlines ? ' ' : '-');
        memcpy(line + hdr, s->reply.text + s->reply.line_off[i], n);
        record(s, MX_TR_SERVER, line, (size_t)hdr + n);
    }
}

/* Reads one whole reply into s->reply.  Returns 0, or -1 with s->err set. */
static int
recv_reply(Session *s, timeout_key k)
{
    int64_t dl = deadline_for(s, k);

    for (;;) {
        size_t used = 0;
        ssize_t n;
        int ack_now;

        if (s->rstart < s->rend) {
            mx_reply_status st = mx_reply_parse(&s->parser, s->rbuf + s->rstart,
                                s->rend - s->rstart, &used, &s->reply);
            s->rstart += used;
            if (st == MX_REPLY_COMPLETE) {
                s->replies_since_write++;
                record_reply(s);
                return 0;
            }
            if (st != MX_REPLY_INCOMPLETE) {
                mx_error_set(&s->err, MX_E_PROTOCOL, 0, "malformed reply: %s",
                             mx_reply_strerror(st));
                return -1;
            }
        }
        s->rstart = s->rend = 0;
        /* part of a pipelined group has come and the rest is awaited: see
         * MX_WAIT_ACK_NOW */
        ack_now = s->replies_since_write > 0;
        if (s->ssl)
            n = mx_tls_read(s->ssl, s->fd, s->rbuf, sizeof(s->rbuf), dl, ack_now, &s->err);
        else
            n = mx_net_read(s->fd, s->rbuf, sizeof(s->rbuf), dl, ack_now, &s->err);
        if (n < 0)
            return -1;
        s->rend = (size_t)n;
    }
}

/* Sends a command and reads its reply, GIL released. */
static int
exchange(Session *s, const char *line, size_t len, const char *shown,
         timeout_key k)
{
    int rc;

    Py_BEGIN_ALLOW_THREADS
    rc = send_cmd(s, line, len, shown, k);
    if (rc == 0)
        rc = recv_reply(s, k);
    Py_END_ALLOW_THREADS
    return rc;
}

/* Sends several command lines in one write (RFC 2920 pipelining), each
 * recorded; GIL released.  0, or -1 with s->err set. */
static int
send_batch(Session *s, const char *buf, size_t len, timeout_key k)
{
    size_t extra;
    int rc;

    Py_BEGIN_ALLOW_THREADS
    extra = unsolicited_bytes(s);
    if (extra) {
        mx_error_set(&s->err, MX_E_PROTOCOL, 0,
                     "the server sent %zu byte%s nobody asked for (desynchronised)",
                     extra, extra == 1 ? "" : "s");
        rc = -1;
    } else {
        size_t start = 0, i;
        for (i = 0; i + 1 < len; i++) {
            if (buf[i] == '\r' && buf[i + 1] == '\n') {
                record(s, MX_TR_CLIENT, buf + start, i - start);
                start = i + 2;
            }
        }
        rc = stream_write(s, buf, len, deadline_for(s, k));
    }
    Py_END_ALLOW_THREADS
    return rc;
}

/* Reads one reply with the GIL released; 0 or -1 with s->err set. */
static int
recv_only(Session *s, timeout_key k)
{
    int rc;

    Py_BEGIN_ALLOW_THREADS
    rc = recv_reply(s, k);
    Py_END_ALLOW_THREADS
    return rc;
}

/* ---- Python side: replies and exceptions --------------------------------- */

static mx_state *
state_of(Session *s)
{
    return mx_get_state(Py_TYPE(s));
}

/* A new Reply for s->reply (new reference), or NULL. */
static PyObject *
make_reply(Session *s, stage stg)
{
    mx_state *st = state_of(s);
    PyObject *lines = NULL, *res = NULL;
    size_t i;

    if (!st)
        return NULL;
    lines = PyTuple_New((Py_ssize_t)s->reply.nlines);
    if (!lines)
        return NULL;
    for (i = 0; i < s->reply.nlines; i++) {
        PyObject *l = PyUnicode_DecodeUTF8(s->reply.text + s->reply.line_off[i],
                                           (Py_ssize_t)s->reply.line_len[i],
                                           "replace");
        if (!l)
            goto done;
        PyTuple_SET_ITEM(lines, (Py_ssize_t)i, l);
    }
    res = PyObject_CallFunction(st->reply_cls, "isOs", s->reply.code,
                                s->reply.enhanced[0] ? s->reply.enhanced : NULL,
                                lines, stage_names[stg]);
done:
    Py_DECREF(lines);
    return res;
}

/* A new exception instance exc(message, stage=..., reply=..., **extra), not
 * raised (bulk sends hand one to each message).  Steals nothing; reply and
 * extra may be NULL.  NULL with an error set on failure. */
static PyObject *
make_exc_v(PyObject *cls, stage stg, PyObject *reply, PyObject *extra,
           const char *fmt, va_list ap)
{
    PyObject *msg = NULL, *args = NULL, *kw = NULL, *obj = NULL;

    msg = PyUnicode_FromFormatV(fmt, ap);
    if (!msg)
        goto done;
    args = PyTuple_Pack(1, msg);
    kw = extra ? PyDict_Copy(extra) : PyDict_New();
    if (!args || !kw)
        goto done;
    {
        PyObject *sn = PyUnicode_FromString(stage_names[stg]);
        int bad = !sn || PyDict_SetItemString(kw, "stage", sn) < 0;
        Py_XDECREF(sn);
        if (bad)
            goto done;
    }
    if (reply && PyDict_SetItemString(kw, "reply", reply) < 0)
        goto done;
    obj = PyObject_Call(cls, args, kw);
done:
    Py_XDECREF(msg);
    Py_XDECREF(args);
    Py_XDECREF(kw);
    return obj;
}

static PyObject *
make_exc(Session *s, mx_exc exc, stage stg, PyObject *reply, PyObject *extra,
         const char *fmt, ...)
{
    mx_state *st = state_of(s);
    PyObject *obj;
    va_list ap;

    if (!st)
        return NULL;
    va_start(ap, fmt);
    obj = make_exc_v(st->exc[exc], stg, reply, extra, fmt, ap);
    va_end(ap);
    return obj;
}

/* make_exc with the class given. */
static PyObject *
make_exc_cls(PyObject *cls, stage stg, PyObject *reply, PyObject *extra, const char *fmt, ...)
{
    PyObject *obj;
    va_list ap;

    va_start(ap, fmt);
    obj = make_exc_v(cls, stg, reply, extra, fmt, ap);
    va_end(ap);
    return obj;
}

/* Raises exception class exc(message, stage=..., reply=..., **extra).
 * Steals nothing; extra may be NULL.  Always returns NULL. */
static PyObject *
raise_exc(Session *s, mx_exc exc, stage stg, PyObject *reply, PyObject *extra,
          const char *fmt, ...)
{
    mx_state *st = state_of(s);
    PyObject *obj;
    va_list ap;

    if (!st)
        return NULL;
    va_start(ap, fmt);
    obj = make_exc_v(st->exc[exc], stg, reply, extra, fmt, ap);
    va_end(ap);
    if (obj) {
        PyErr_SetObject((PyObject *)Py_TYPE(obj), obj);
        Py_DECREF(obj);
    }
    return NULL;
}

/* The exception being raised, taken out of the error indicator (a new
 * reference), to be handed to one message of a bulk send. */
static PyObject *
take_raised(void)
{
    PyObject *type, *value, *tb;

    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value && tb)
        PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

/* Makes the session unusable for good, closing the connection. */
static void
poison(Session *s, const char *why)
{
    snprintf(s->failure, sizeof(s->failure), "%s", why);
    drop_connection(s);
    set_state(s, S_ERROR);
    recordf(s, MX_TR_INFO, "session unusable: %s", why);
}

/* Turns s->err (a failed I/O or parse step) into an exception; the session
 * becomes unusable.  Returns NULL. */
static PyObject *
fail_io(Session *s, stage stg)
{
    mx_exc exc;
    PyObject *extra = NULL;
    char msg[700];

    switch (s->err.kind) {
    case MX_E_TIMEOUT: exc = MX_EXC_TIMEOUT; break;
    case MX_E_EOF:
    case MX_E_IO: exc = MX_EXC_CONNECTION_LOST; break;
    case MX_E_TLS: exc = MX_EXC_TLS; break;
    case MX_E_TLS_VERIFY: exc = MX_EXC_CERTIFICATE; break;
    case MX_E_RESOLVE:
    case MX_E_CONNECT: exc = MX_EXC_CONNECT; break;
    case MX_E_SETUP: exc = MX_EXC_CONFIG; break;
    case MX_E_PROTOCOL: exc = MX_EXC_PROTOCOL; break;
    default: exc = MX_EXC_ERROR; break;
    }
    if (s->err.kind == MX_E_TIMEOUT)
        snprintf(msg, sizeof(msg), "%s: %s", stage_names[stg],
                 s->deadline_hit ? "the overall deadline passed"
                                 : "the stage timeout passed");
    else
        snprintf(msg, sizeof(msg), "%s: %s", stage_names[stg], s->err.msg);
    if (s->err.kind == MX_E_TLS_VERIFY) {
        extra = Py_BuildValue("{s:l,s:s}", "verify_code", s->err.verify_code,
                              "verify_message",
                              X509_verify_cert_error_string(s->err.verify_code));
        if (!extra)
            return NULL;
    }
    if (s->err.kind == MX_E_IO || s->err.kind == MX_E_CONNECT ||
        s->err.kind == MX_E_RESOLVE) {
        if (!extra && !(extra = PyDict_New()))
            return NULL;
        PyObject *no = PyLong_FromLong(s->err.sys_errno);
        if (!no || PyDict_SetItemString(extra, "errno", no) < 0) {
            Py_XDECREF(no);
            Py_DECREF(extra);
            return NULL;
        }
        Py_DECREF(no);
    }
    poison(s, msg);
    raise_exc(s, exc, stg, NULL, extra, "%s", msg);
    Py_XDECREF(extra);
    return NULL;
}

/* A 421 (service closing) ends the session; raises ServiceUnavailable. */
static PyObject *
fail_421(Session *s, stage stg)
{
    PyObject *r = make_reply(s, stg);

    if (!r)
        return NULL;
    poison(s, "the server closed the session (421)");
    raise_exc(s, MX_EXC_SERVICE_UNAVAILABLE, stg, r, NULL,
              "%s: the server is closing the session", stage_names[stg]);
    Py_DECREF(r);
    return NULL;
}

/* Raises exc for a refusal carried by s->reply (session stays usable). */
static PyObject *
fail_reply(Session *s, mx_exc exc, stage stg, const char *what)
{
    PyObject *r;

    if (s->reply.code == 421)
        return fail_421(s, stg);
    r = make_reply(s, stg);
    if (!r)
        return NULL;
    raise_exc(s, exc, stg, r, NULL, "%s", what);
    Py_DECREF(r);
    return NULL;
}

/* A server answer that cannot belong: the session is unusable. */
static PyObject *
fail_protocol(Session *s, stage stg, const char *what)
{
    PyObject *r = make_reply(s, stg);

    if (!r)
        return NULL;
    poison(s, what);
    raise_exc(s, MX_EXC_PROTOCOL, stg, r, NULL, "%s: %s", stage_names[stg], what);
    Py_DECREF(r);
    return NULL;
}

/* A 3xx reply answers only AUTH (334) and DATA (354); anywhere else the
 * server is out of step with us.  Returns 0, or -1 raised (session unusable). */
static int
refuse_3xx(Session *s, stage stg)
{
    char why[96];

    if (s->reply.code / 100 != 3)
        return 0;
    snprintf(why, sizeof(why), "a %d reply cannot answer %s", s->reply.code, stage_names[stg]);
    fail_protocol(s, stg, why);
    return -1;
}

/* Takes the session's lock and checks it can be used.  0, or -1 raised. */
static int
enter(Session *s, int need_connection)
{
    if (!PyThread_acquire_lock(s->lock, NOWAIT_LOCK)) {
        raise_exc(s, MX_EXC_BUSY, STG_CONNECT, NULL, NULL,
                  "this Session is in use by another thread; use one Session "
                  "per thread");
        return -1;
    }
    if (need_connection) {
        const char *why = NULL;
        if (s->state == S_ERROR)
            why = s->failure;
        else if (s->state == S_CLOSED)
            why = "the session is closed";
        else if (s->state == S_NEW)
            why = "the session is not connected; call connect() first";
        if (why) {
            PyThread_release_lock(s->lock);
            raise_exc(s, MX_EXC_STATE, STG_CONNECT, NULL, NULL,
                      "session unusable: %s", why);
            return -1;
        }
    }
    return 0;
}

static void
leave(Session *s)
{
    PyThread_release_lock(s->lock);
}

/* UTF-8 of a str argument, checked with check(); raises InputError naming
 * the field.  The pointer is borrowed from obj. */
static const char *
arg_utf8(Session *s, PyObject *obj, const char *field,
         mx_cmd_status (*check)(const char *, size_t), Py_ssize_t *len,
         stage stg)
{
    const char *p;
    mx_cmd_status cs;

    if (!PyUnicode_Check(obj)) {
        raise_exc(s, MX_EXC_INPUT, stg, NULL, NULL, "%s must be a str, not %s",
                  field, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    p = PyUnicode_AsUTF8AndSize(obj, len);
    if (!p)
        return NULL;
    if (check && (cs = check(p, (size_t)*len)) != MX_CMD_OK) {
        raise_exc(s, MX_EXC_INPUT, stg, NULL, NULL, "%s %R %s; nothing was sent",
                  field, obj, mx_cmd_strerror(cs));
        return NULL;
    }
    return p;
}

static int
is_ascii(const char *p, Py_ssize_t n)
{
    Py_ssize_t i;

    for (i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            return 0;
    return 1;
}

/* ---- construction --------------------------------------------------------- */

static char *
dup_opt(PyObject *o, const char *field, int *bad)
{
    Py_ssize_t n;
    char *r;

    if (!o || o == Py_None)
        return NULL;
    if (!PyUnicode_Check(o) && !PyBytes_Check(o) && !PyObject_HasAttrString(o, "__fspath__")) {
        PyErr_Format(PyExc_TypeError, "%s must be a str or path", field);
        *bad = 1;
        return NULL;
    }
    if (PyUnicode_Check(o)) {
        const char *p = PyUnicode_AsUTF8AndSize(o, &n);
        if (!p) {
            *bad = 1;
            return NULL;
        }
        if ((size_t)n != strlen(p)) {
            PyErr_Format(PyExc_ValueError, "%s contains a NUL character", field);
            *bad = 1;
            return NULL;
        }
        r = PyMem_RawMalloc((size_t)n + 1);
        if (!r) {
            PyErr_NoMemory();
            *bad = 1;
            return NULL;
        }
        memcpy(r, p, (size_t)n + 1);
        return r;
    } else {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(o, &b)) {
            *bad = 1;
            return NULL;
        }
        n = PyBytes_GET_SIZE(b);
        r = PyMem_RawMalloc((size_t)n + 1);
        if (!r) {
            Py_DECREF(b);
            PyErr_NoMemory();
            *bad = 1;
            return NULL;
        }
        memcpy(r, PyBytes_AS_STRING(b), (size_t)n + 1);
        Py_DECREF(b);
        return r;
    }
}

static int
parse_timeouts(Session *s, PyObject *timeouts)
{
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    int i;

    for (i = 0; i < TO_COUNT; i++)
        s->timeout_ms[i] = timeout_defaults_ms[i];
    if (!timeouts || timeouts == Py_None)
        return 0;
    if (!PyDict_Check(timeouts)) {
        PyErr_SetString(PyExc_TypeError, "timeouts must be a dict");
        return -1;
    }
    while (PyDict_Next(timeouts, &pos, &key, &value)) {
        const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        double secs;
        for (i = 0; name && i < TO_COUNT; i++)
            if (strcmp(name, timeout_names[i]) == 0)
                break;
        if (!name || i == TO_COUNT) {
            PyErr_Format(PyExc_ValueError,
                         "timeouts: unknown stage %R; known: connect, banner, "
                         "tls, ehlo, starttls, auth, mail, rcpt, data, "
                         "data_block, end_of_data, command, quit", key);
            return -1;
        }
        if (value == Py_None) {
            s->timeout_ms[i] = -1;
            continue;
        }
        secs = PyFloat_AsDouble(value);
        if (secs == -1.0 && PyErr_Occurred())
            return -1;
        if (!(secs > 0) || secs > 86400.0 * 7) {
            PyErr_Format(PyExc_ValueError,
                         "timeouts[%R] must be a number of seconds between 0 "
                         "and 604800, or None", key);
            return -1;
        }
        s->timeout_ms[i] = (int64_t)(secs * 1000.0 + 0.5);
        if (s->timeout_ms[i] == 0)
            s->timeout_ms[i] = 1;
    }
    return 0;
}

/* The mechanisms auth_mechanisms may name (and allows by default). */
#define MX_AUTH_ALL (MX_AUTH_PLAIN | MX_AUTH_LOGIN | MX_AUTH_XOAUTH2 | \
                     MX_AUTH_OAUTHBEARER | MX_AUTH_NTLM | MX_AUTH_GSSAPI)

static int
parse_mechanisms(PyObject *seq, unsigned *mask)
{
    PyObject *fast;
    Py_ssize_t i, n;

    *mask = MX_AUTH_ALL;
    if (!seq || seq == Py_None)
        return 0;
    if (PyUnicode_Check(seq)) {
        PyErr_SetString(PyExc_TypeError, "auth_mechanisms must be a sequence of names");
        return -1;
    }
    fast = PySequence_Fast(seq, "auth_mechanisms must be a sequence of names");
    if (!fast)
        return -1;
    *mask = 0;
    n = PySequence_Fast_GET_SIZE(fast);
    for (i = 0; i < n; i++) {
        const char *name;
        Py_ssize_t len;
        unsigned bit;
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        name = PyUnicode_Check(item) ? PyUnicode_AsUTF8AndSize(item, &len) : NULL;
        bit = name ? mx_auth_mech_bit(name, (size_t)len) : 0;
        if (!(bit & MX_AUTH_ALL)) {
            PyErr_Format(PyExc_ValueError,
                         "auth_mechanisms: %R is not supported; allowed: 'PLAIN', "
                         "'LOGIN', 'XOAUTH2', 'OAUTHBEARER', 'NTLM', 'GSSAPI'", item);
            Py_DECREF(fast);
            return -1;
        }
        *mask |= bit;
    }
    Py_DECREF(fast);
    return 0;
}

static int
Session_init(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {
        "host", "port", "security", "server_name", "verify", "ca_file",
        "client_cert", "client_key", "min_tls_version", "ehlo_name",
        "timeouts", "allow_insecure_auth", "helo_fallback",
        "auth_mechanisms", "transcript", "tls_context", NULL};
    PyObject *host = NULL, *server_name = Py_None, *ca = Py_None,
             *cert = Py_None, *key = Py_None, *timeouts = Py_None,
             *mechs = Py_None, *ehlo = NULL, *tls_ctx = Py_None;
    const char *security = "starttls", *min_tls = "1.2";
    int port = 587, verify = 1, insecure = 0, helo = 0, transcript = 1, bad = 0;

    if (s->state != S_NEW || s->host) {
        PyErr_SetString(PyExc_RuntimeError, "Session.__init__ called twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|i$sOpOOOsUOppOpO", kwlist,
                                     &host, &port, &security, &server_name,
                                     &verify, &ca, &cert, &key, &min_tls, &ehlo,
                                     &timeouts, &insecure, &helo, &mechs,
                                     &transcript, &tls_ctx))
        return -1;
    if (tls_ctx != Py_None) {
        SSL_CTX *shared = PyCapsule_GetPointer(tls_ctx, MX_TLS_CTX_CAPSULE);
        if (!shared)
            return -1;
        if (!SSL_CTX_up_ref(shared)) {
            PyErr_SetString(PyExc_RuntimeError, "SSL_CTX_up_ref failed");
            return -1;
        }
        s->ctx = shared;
    }
    if (port < 1 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port %d is not between 1 and 65535", port);
        return -1;
    }
    if (strcmp(security, "starttls") == 0)
        s->security = SEC_STARTTLS;
    else if (strcmp(security, "ssl") == 0)
        s->security = SEC_SSL;
    else if (strcmp(security, "none") == 0)
        s->security = SEC_NONE;
    else {
        PyErr_Format(PyExc_ValueError,
                     "security '%s' is not one of 'starttls', 'ssl', 'none'",
                     security);
        return -1;
    }
    if (strcmp(min_tls, "1.2") == 0)
        s->min_tls = TLS1_2_VERSION;
    else if (strcmp(min_tls, "1.3") == 0)
        s->min_tls = TLS1_3_VERSION;
    else {
        PyErr_SetString(PyExc_ValueError, "min_tls_version must be '1.2' or '1.3'");
        return -1;
    }
    snprintf(s->port, sizeof(s->port), "%d", port);
    s->verify = verify;
    s->allow_insecure_auth = insecure;
    s->helo_fallback = helo;
    s->record = transcript;
    if (parse_timeouts(s, timeouts) < 0 || parse_mechanisms(mechs, &s->auth_allowed) < 0)
        return -1;
    s->host = dup_opt(host, "host", &bad);
    s->server_name = dup_opt(server_name == Py_None ? host : server_name,
                             "server_name", &bad);
    s->ehlo_name = ehlo ? dup_opt(ehlo, "ehlo_name", &bad) : NULL;
    s->ca_file = dup_opt(ca, "ca_file", &bad);
    s->cert_file = dup_opt(cert, "client_cert", &bad);
    s->key_file = dup_opt(key, "client_key", &bad);
    if (bad)
        return -1;
    if (!s->host || !s->host[0]) {
        PyErr_SetString(PyExc_ValueError, "host must not be empty");
        return -1;
    }
    if (!s->ehlo_name) {
        s->ehlo_name = PyMem_RawMalloc(10);
        if (!s->ehlo_name) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(s->ehlo_name, "localhost", 10);
    }
    if (mx_cmd_check_domain(s->ehlo_name, strlen(s->ehlo_name)) != MX_CMD_OK) {
        PyErr_Format(PyExc_ValueError, "ehlo_name %R %s", ehlo,
                     mx_cmd_strerror(mx_cmd_check_domain(s->ehlo_name,
                                                         strlen(s->ehlo_name))));
        return -1;
    }
    return 0;
}

static PyObject *
Session_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    Session *s = (Session *)tp->tp_alloc(tp, 0);

    (void)args;
    (void)kw;
    if (!s)
        return NULL;
    s->fd = -1;
    s->state = S_NEW;
    mx_transcript_init(&s->tr);
    mx_reply_parser_init(&s->parser);
    s->lock = PyThread_allocate_lock();
    s->wbuf = PyMem_RawMalloc(MX_WBUF);
    if (!s->lock || !s->wbuf) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    return (PyObject *)s;
}

/* The Python objects a Session holds, for the cycle collector: a subclass
 * instance can reach itself through them (a Reply it was given, say). */
static int
Session_traverse(Session *s, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->caps_dict);
    Py_VISIT(s->banner);
    Py_VISIT(s->ehlo_reply);
    Py_VISIT(s->tls_version_s);
    Py_VISIT(s->tls_cipher_s);
    Py_VISIT(s->peer_der);
    Py_VISIT(s->peer_info);
    return 0;
}

static int
Session_clear(Session *s)
{
    Py_CLEAR(s->caps_dict);
    Py_CLEAR(s->banner);
    Py_CLEAR(s->ehlo_reply);
    Py_CLEAR(s->tls_version_s);
    Py_CLEAR(s->tls_cipher_s);
    Py_CLEAR(s->peer_der);
    Py_CLEAR(s->peer_info);
    return 0;
}

static void
Session_dealloc(Session *s)
{
    PyTypeObject *tp = Py_TYPE(s);

    PyObject_GC_UnTrack(s);
    drop_connection(s);
    if (s->ctx)
        SSL_CTX_free(s->ctx);
    if (s->lock)
        PyThread_free_lock(s->lock);
    PyMem_RawFree(s->wbuf);
    PyMem_RawFree(s->host);
    PyMem_RawFree(s->server_name);
    PyMem_RawFree(s->ehlo_name);
    PyMem_RawFree(s->ca_file);
    PyMem_RawFree(s->cert_file);
    PyMem_RawFree(s->key_file);
    mx_transcript_free(&s->tr);
    (void)Session_clear(s);
    tp->tp_free((PyObject *)s);
    Py_DECREF(tp);
}

/* ---- TLS ------------------------------------------------------------------ */

/* Creates the TLS context on first use.  0, or -1 raised (ConfigError). */
static int
ensure_ctx(Session *s, stage stg)
{
    mx_tls_opts o;

    if (s->ctx)
        return 0;
    o.verify = s->verify;
    o.ca_file = s->ca_file;
    o.cert_file = s->cert_file;
    o.key_file = s->key_file;
    o.min_version = s->min_tls;
    s->ctx = mx_tls_ctx_new(&o, &s->err);
    if (!s->ctx) {
        raise_exc(s, MX_EXC_CONFIG, stg, NULL, NULL, "%s", s->err.msg);
        return -1;
    }
    return 0;
}

/* _core.tls_context(verify=True, ca_file=None, client_cert=None,
 * client_key=None, min_tls_version="1.2") -> capsule: one client SSL_CTX
 * (trust store loaded once) for many Sessions, passed as tls_context=.
 * Loading the system store costs tens of milliseconds; sharing it is what
 * makes a second connection cheap. */
static void
tls_capsule_free(PyObject *cap)
{
    SSL_CTX *ctx = PyCapsule_GetPointer(cap, MX_TLS_CTX_CAPSULE);

    if (ctx)
        SSL_CTX_free(ctx);
}

PyObject *
mx_tls_context_new(PyObject *module, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"verify", "ca_file", "client_cert", "client_key",
                             "min_tls_version", NULL};
    PyObject *ca = Py_None, *cert = Py_None, *key = Py_None, *cap;
    const char *min_tls = "1.2";
    char *ca_s = NULL, *cert_s = NULL, *key_s = NULL;
    int verify = 1, bad = 0;
    mx_tls_opts o;
    mx_error err;
    SSL_CTX *ctx;

    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$pOOOs", kwlist, &verify, &ca, &cert,
                                     &key, &min_tls))
        return NULL;
    if (strcmp(min_tls, "1.2") != 0 && strcmp(min_tls, "1.3") != 0) {
        PyErr_SetString(PyExc_ValueError, "min_tls_version must be '1.2' or '1.3'");
        return NULL;
    }
    ca_s = dup_opt(ca, "ca_file", &bad);
    cert_s = dup_opt(cert, "client_cert", &bad);
    key_s = dup_opt(key, "client_key", &bad);
    cap = NULL;
    if (bad)
        goto done;
    memset(&err, 0, sizeof(err));
    o.verify = verify;
    o.ca_file = ca_s;
    o.cert_file = cert_s;
    o.key_file = key_s;
    o.min_version = strcmp(min_tls, "1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
    Py_BEGIN_ALLOW_THREADS
    ctx = mx_tls_ctx_new(&o, &err);
    Py_END_ALLOW_THREADS
    if (!ctx) {
        mx_state *st = PyModule_GetState(module);
        if (st)
            PyErr_SetString(st->exc[MX_EXC_CONFIG], err.msg);
        goto done;
    }
    if (!(cap = PyCapsule_New(ctx, MX_TLS_CTX_CAPSULE, tls_capsule_free)))
        SSL_CTX_free(ctx);
done:
    PyMem_RawFree(ca_s);
    PyMem_RawFree(cert_s);
    PyMem_RawFree(key_s);
    return cap;
}

/* The peer certificate's facts as a dict, or None (new reference); NULL
 * raised.  GIL held, on an SSL no other thread uses. */
static PyObject *
cert_info_dict(SSL *ssl)
{
    mx_cert_info *info;
    PyObject *res = NULL, *san = NULL;
    int i;

    info = PyMem_Malloc(sizeof(*info));
    if (!info)
        return PyErr_NoMemory();
    if (mx_tls_cert_info(ssl, info) < 0) {
        PyMem_Free(info);
        Py_RETURN_NONE;
    }
    san = PyList_New(0);
    for (i = 0; san && i < info->nsan; i++) {
        PyObject *v = PyUnicode_DecodeUTF8(info->san[i], (Py_ssize_t)strlen(info->san[i]), "replace");
        if (!v || PyList_Append(san, v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(san);
            break;
        }
        Py_DECREF(v);
    }
    if (san)
        res = Py_BuildValue("{s:s,s:s,s:L,s:L,s:O,s:l,s:s}",
                            "subject", info->subject, "issuer", info->issuer,
                            "not_before", (long long)info->not_before,
                            "not_after", (long long)info->not_after,
                            "san", san, "verify_code", info->verify_code,
                            "verify_message", info->verify_text);
    Py_XDECREF(san);
    PyMem_Free(info);
    return res;
}

/* Takes the TLS facts the getters show, right after the handshake (GIL and
 * lock held, before any other use of s->ssl).  0, or -1 raised. */
static int
take_tls_facts(Session *s)
{
    unsigned char *der = NULL;
    int len;

    Py_XSETREF(s->tls_version_s, PyUnicode_FromString(SSL_get_version(s->ssl)));
    Py_XSETREF(s->tls_cipher_s, PyUnicode_FromString(SSL_get_cipher_name(s->ssl)));
    if ((len = mx_tls_cert_der(s->ssl, &der)) < 0) {
        Py_XSETREF(s->peer_der, Py_NewRef(Py_None));
    } else {
        Py_XSETREF(s->peer_der, PyBytes_FromStringAndSize((const char *)der, len));
        OPENSSL_free(der);
    }
    Py_XSETREF(s->peer_info, cert_info_dict(s->ssl));
    if (!s->tls_version_s || !s->tls_cipher_s || !s->peer_der || !s->peer_info)
        return -1;
    return 0;
}

/* Handshake on the open socket, GIL released.  0, or -1 (s->err). */
static int
handshake(Session *s)
{
    int64_t dl = deadline_for(s, TO_TLS);
    SSL *ssl;

    Py_BEGIN_ALLOW_THREADS
    ssl = mx_tls_handshake(s->ctx, s->fd, s->server_name, s->verify, dl, &s->err);
    Py_END_ALLOW_THREADS
    if (!ssl)
        return -1;
    s->ssl = ssl;
    if (take_tls_facts(s) < 0) {
        PyErr_Clear();
        mx_error_set(&s->err, MX_E_NOMEM, ENOMEM, "out of memory after the TLS handshake");
        return -1;
    }
    recordf(s, MX_TR_INFO, "TLS established: %s, %s", SSL_get_version(ssl),
            SSL_get_cipher_name(ssl));
    return 0;
}

/* ---- methods ------------------------------------------------------------ */

PyDoc_STRVAR(connect_doc,
"connect() -> Reply\n\n"
"Resolves the host, tries each address in order, runs the TLS handshake\n"
"for security='ssl', and reads the greeting.  Raises ConnectError,\n"
"TimeoutError, TLSError or CertificateError.");

static PyObject *
Session_connect(Session *s, PyObject *unused)
{
    PyObject *res = NULL;
    int fd;
    int64_t dl;

    (void)unused;
    if (enter(s, 0) < 0)
        return NULL;
    if (s->state != S_NEW) {
        raise_exc(s, MX_EXC_STATE, STG_CONNECT, NULL, NULL,
                  "connect() was already called on this Session; make a new one");
        goto done;
    }
    if (s->security == SEC_SSL && ensure_ctx(s, STG_TLS) < 0)
        goto done;
    s->t0 = mx_now_ms();
    recordf(s, MX_TR_INFO, "connecting to %s port %s", s->host, s->port);
    dl = deadline_for(s, TO_CONNECT);
    Py_BEGIN_ALLOW_THREADS
    fd = mx_net_connect(s->host, s->port, dl, &s->attempts, &s->err);
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        fail_io(s, STG_CONNECT);
        goto done;
    }
    s->fd = fd;
    mx_net_peer(fd, s->peer_addr, sizeof(s->peer_addr), &s->peer_port);
    recordf(s, MX_TR_INFO, "connected to %s port %d", s->peer_addr, s->peer_port);
    if (s->security == SEC_SSL && handshake(s) < 0) {
        fail_io(s, STG_TLS);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    fd = recv_reply(s, TO_BANNER);
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        fail_io(s, STG_CONNECT);
        goto done;
    }
    if (s->reply.code != 220) {
        PyObject *r = make_reply(s, STG_CONNECT);
        if (!r)
            goto done;
        poison(s, "the server refused the connection");
        raise_exc(s, s->reply.code == 421 ? MX_EXC_SERVICE_UNAVAILABLE : MX_EXC_CONNECT,
                  STG_CONNECT, r, NULL, "the server refused the connection in its greeting");
        Py_DECREF(r);
        goto done;
    }
    Py_XSETREF(s->banner, make_reply(s, STG_CONNECT));
    if (!s->banner)
        goto done;
    set_state(s, S_CONNECTED);
    res = Py_NewRef(s->banner);
done:
    leave(s);
    return res;
}

/* Builds the capability dict of the EHLO reply in s->reply. */
static int
take_capabilities(Session *s)
{
    PyObject *d = PyDict_New();
    size_t i;

    if (!d)
        return -1;
    mx_ehlo_parse(&s->reply, &s->caps);
    for (i = 1; i < s->reply.nlines; i++) {
        const char *line = s->reply.text + s->reply.line_off[i], *params;
        size_t kwlen, plen, j;
        char kwbuf[128];
        PyObject *v;

        mx_ehlo_split(line, s->reply.line_len[i], &kwlen, &params, &plen);
        if (kwlen == 0 || kwlen >= sizeof(kwbuf))
            continue;
        for (j = 0; j < kwlen; j++) {
            char c = line[j];
            kwbuf[j] = (char)((c >= 'a' && c <= 'z') ? c - 'a' + 'A' : c);
        }
        PyObject *k = PyUnicode_FromStringAndSize(kwbuf, (Py_ssize_t)kwlen);
        v = PyUnicode_DecodeUTF8(params, (Py_ssize_t)plen, "replace");
        if (!k || !v || PyDict_SetItem(d, k, v) < 0) {
            Py_XDECREF(k);
            Py_XDECREF(v);
            Py_DECREF(d);
            return -1;
        }
        Py_DECREF(k);
        Py_DECREF(v);
    }
    /* AUTH: every mechanism of the AUTH, AUTH= and X-EXPS lines */
    {
        char *mechs = PyMem_Malloc(MX_REPLY_TEXT_MAX + 1);
        size_t n;
        PyObject *v;
        if (!mechs) {
            Py_DECREF(d);
            PyErr_NoMemory();
            return -1;
        }
        n = mx_ehlo_auth_list(&s->reply, mechs, MX_REPLY_TEXT_MAX + 1);
        v = n ? PyUnicode_DecodeUTF8(mechs, (Py_ssize_t)n, "replace") : NULL;
        PyMem_Free(mechs);
        if (n && (!v || PyDict_SetItemString(d, "AUTH", v) < 0)) {
            Py_XDECREF(v);
            Py_DECREF(d);
            return -1;
        }
        Py_XDECREF(v);
    }
    Py_XSETREF(s->caps_dict, d);
    return 0;
}

/* EHLO (or HELO where allowed); the body of ehlo() and of the re-EHLO after
 * STARTTLS.  Returns a new Reply or NULL. */
static PyObject *
do_ehlo(Session *s, const char *name)
{
    char cmd[MX_DOMAIN_MAX + 16];
    size_t len;
    PyObject *r;

    if (mx_cmd_hello(cmd, sizeof(cmd), &len, "EHLO", name, strlen(name)) != MX_CMD_OK)
        return raise_exc(s, MX_EXC_INPUT, STG_EHLO, NULL, NULL,
                         "ehlo name %s is not a valid domain", name);
    if (exchange(s, cmd, len, NULL, TO_EHLO) < 0)
        return fail_io(s, STG_EHLO);
    if (refuse_3xx(s, STG_EHLO) < 0)
        return NULL;
    if (s->reply.code == 250) {
        r = make_reply(s, STG_EHLO);
        if (!r || take_capabilities(s) < 0) {
            Py_XDECREF(r);
            return NULL;
        }
        s->esmtp = 1;
        Py_XSETREF(s->ehlo_reply, Py_NewRef(r));
        set_state(s, S_READY);
        return r;
    }
    if (s->reply.code == 421)
        return fail_421(s, STG_EHLO);
    if (s->reply.code >= 500 && s->helo_fallback) {
        (void)mx_cmd_hello(cmd, sizeof(cmd), &len, "HELO", name, strlen(name));
        if (exchange(s, cmd, len, NULL, TO_EHLO) < 0)
            return fail_io(s, STG_EHLO);
        if (s->reply.code == 250) {
            memset(&s->caps, 0, sizeof(s->caps));
            Py_XSETREF(s->caps_dict, PyDict_New());
            if (!s->caps_dict)
                return NULL;
            s->esmtp = 0;
            r = make_reply(s, STG_EHLO);
            Py_XSETREF(s->ehlo_reply, r ? Py_NewRef(r) : NULL);
            if (r)
                set_state(s, S_READY);
            return r;
        }
    }
    return fail_reply(s, MX_EXC_REFUSED, STG_EHLO,
                      s->helo_fallback ? "the server refused EHLO and HELO"
                                       : "the server refused EHLO (HELO fallback "
                                         "is off: TLS or authentication is required)");
}

PyDoc_STRVAR(ehlo_doc,
"ehlo(name=None) -> Reply\n\n"
"Sends EHLO and reads the capabilities.  Falls back to HELO only when the\n"
"session was made with helo_fallback=True.");

static PyObject *
Session_ehlo(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"name", NULL};
    PyObject *name = Py_None, *res = NULL;
    const char *n;
    Py_ssize_t len;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O", kwlist, &name))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    if (name == Py_None)
        n = s->ehlo_name;
    else if (!(n = arg_utf8(s, name, "ehlo name", mx_cmd_check_domain, &len, STG_EHLO)))
        goto done;
    if (s->state == S_MAIL || s->state == S_RCPT) {
        raise_exc(s, MX_EXC_STATE, STG_EHLO, NULL, NULL,
                  "EHLO in the middle of a mail transaction; call rset() first");
        goto done;
    }
    res = do_ehlo(s, n);
done:
    leave(s);
    return res;
}

/* EHLO with the configured name if none was done yet; 0 or -1 raised. */
static int
ensure_ehlo(Session *s)
{
    PyObject *r;

    if (s->state != S_CONNECTED)
        return 0;
    r = do_ehlo(s, s->ehlo_name);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* EHLO if none was done, then requires that no mail transaction is open.
 * `what` names the operation for the error.  0, or -1 raised. */
static int
need_ready(Session *s, const char *what)
{
    if (ensure_ehlo(s) < 0)
        return -1;
    if (s->state != S_READY) {
        raise_exc(s, MX_EXC_STATE, STG_MAIL, NULL, NULL,
                  "%s needs a session with no transaction open (state %s); call rset()",
                  what, state_names[s->state]);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(starttls_doc,
"starttls() -> Reply\n\n"
"Upgrades the connection with STARTTLS (RFC 3207), verifies the server,\n"
"forgets everything learnt before TLS and sends EHLO again.  Returns the\n"
"220 reply.  Raises TLSError when the server does not offer or refuses\n"
"STARTTLS, ProtocolError when bytes arrive between the 220 and the\n"
"handshake (response injection), CertificateError when verification fails.");

static PyObject *
Session_starttls(Session *s, PyObject *unused)
{
    PyObject *res = NULL, *r = NULL;
    char cmd[16];
    size_t len;

    (void)unused;
    if (enter(s, 1) < 0)
        return NULL;
    if (s->ssl) {
        raise_exc(s, MX_EXC_STATE, STG_STARTTLS, NULL, NULL, "TLS is already active");
        goto done;
    }
    if (s->state == S_MAIL || s->state == S_RCPT) {
        raise_exc(s, MX_EXC_STATE, STG_STARTTLS, NULL, NULL,
                  "STARTTLS in the middle of a mail transaction");
        goto done;
    }
    if (ensure_ctx(s, STG_STARTTLS) < 0 || ensure_ehlo(s) < 0)
        goto done;
    if (!(s->caps.ext & MX_EXT_STARTTLS)) {
        raise_exc(s, MX_EXC_TLS, STG_STARTTLS, s->ehlo_reply, NULL,
                  "the server does not offer STARTTLS; nothing was sent in the "
                  "clear.  Enable TLS on the connector or use security='ssl'");
        goto done;
    }
    (void)mx_cmd_simple(cmd, sizeof(cmd), &len, "STARTTLS");
    if (exchange(s, cmd, len, NULL, TO_STARTTLS) < 0) {
        fail_io(s, STG_STARTTLS);
        goto done;
    }
    if (refuse_3xx(s, STG_STARTTLS) < 0)
        goto done;
    if (s->reply.code != 220) {
        fail_reply(s, MX_EXC_TLS, STG_STARTTLS,
                   "the server refused STARTTLS; nothing was sent in the clear");
        goto done;
    }
    r = make_reply(s, STG_STARTTLS);
    if (!r)
        goto done;
    if (s->rstart < s->rend) {
        char why[200];
        snprintf(why, sizeof(why),
                 "%zu bytes arrived after the 220 to STARTTLS, before the TLS "
                 "handshake (response injection?); they were discarded",
                 s->rend - s->rstart);
        poison(s, why);
        raise_exc(s, MX_EXC_PROTOCOL, STG_STARTTLS, r, NULL, "STARTTLS: %s", why);
        goto done;
    }
    if (handshake(s) < 0) {
        fail_io(s, STG_STARTTLS);
        goto done;
    }
    /* RFC 3207 §4.2: forget all knowledge obtained before TLS */
    memset(&s->caps, 0, sizeof(s->caps));
    Py_CLEAR(s->caps_dict);
    Py_CLEAR(s->ehlo_reply);
    s->esmtp = 0;
    s->authenticated = 0;
    mx_reply_parser_init(&s->parser);
    s->rstart = s->rend = 0;
    set_state(s, S_CONNECTED);
    if (ensure_ehlo(s) < 0)
        goto done;
    res = Py_NewRef(r);
done:
    Py_XDECREF(r);
    leave(s);
    return res;
}

/* ---- AUTH: the loop is auth.c's; here the checks and the Python side ------ */

static int
auth_conv_exchange(void *sess, const char *line, size_t len, const char *shown)
{
    return exchange((Session *)sess, line, len, shown, TO_AUTH);
}

/* What every AUTH method checks before a byte is sent; what is "credentials",
 * "a token", ... for the refusal without TLS.  0, or -1 raised. */
static int
auth_precheck(Session *s, int secret, const char *what)
{
    if (ensure_ehlo(s) < 0)
        return -1;
    if (s->authenticated) {
        raise_exc(s, MX_EXC_STATE, STG_AUTH, NULL, NULL, "already authenticated");
        return -1;
    }
    if (s->state != S_READY) {
        raise_exc(s, MX_EXC_STATE, STG_AUTH, NULL, NULL,
                  "AUTH is not allowed during a mail transaction");
        return -1;
    }
    if (secret && !s->ssl && !s->allow_insecure_auth) {
        raise_exc(s, MX_EXC_INSECURE_AUTH, STG_AUTH, NULL, NULL,
                  "refusing to send %s without TLS; use "
                  "security='starttls' or 'ssl', or set allow_insecure_auth=True "
                  "if the network is trusted", what);
        return -1;
    }
    return 0;
}

/* AuthError for the refusal in s->reply (4xx: transient), carrying
 * `mechanism` and `oauth_challenge` (the server's decoded JSON, or None). */
static void
auth_refused(Session *s, const mx_auth_mech *m)
{
    PyObject *r, *extra = NULL, *json = NULL;
    char note[300] = "";

    if (s->reply.code == 421) {
        fail_421(s, STG_AUTH);
        return;
    }
    if (m->has_challenge) {
        json = PyUnicode_DecodeUTF8((const char *)m->challenge.p,
                                    (Py_ssize_t)m->challenge.len, "replace");
        if (!json)
            return;
        snprintf(note, sizeof(note), "; the server's OAuth error: %.*s%s",
                 m->challenge.len > 200 ? 200 : (int)m->challenge.len,
                 (const char *)m->challenge.p, m->challenge.len > 200 ? "..." : "");
    }
    r = make_reply(s, STG_AUTH);
    extra = Py_BuildValue("{s:s,s:O}", "mechanism", m->name, "oauth_challenge",
                          json ? json : Py_None);
    if (r && extra) {
        if (s->reply.code < 500)
            raise_exc(s, MX_EXC_AUTH, STG_AUTH, r, extra,
                      "the server refused the authentication (%s) for now: a temporary "
                      "failure, not a verdict on the credentials; try again later%s",
                      m->name, note);
        else
            raise_exc(s, MX_EXC_AUTH, STG_AUTH, r, extra,
                      "the server refused the authentication (%s)%s", m->name, note);
    }
    Py_XDECREF(r);
    Py_XDECREF(extra);
    Py_XDECREF(json);
}

/* Runs the exchange of m; a new Reply on 235, NULL raised otherwise. */
static PyObject *
run_auth(Session *s, mx_auth_mech *m)
{
    mx_auth_conv c = {s, auth_conv_exchange, &s->reply};
    char why[160] = "";

    switch (mx_auth_run(&c, m, why, sizeof(why))) {
    case MX_AUTH_OK:
        s->authenticated = 1;
        return make_reply(s, STG_AUTH);
    case MX_AUTH_REFUSED:
        auth_refused(s, m);
        return NULL;
    case MX_AUTH_IO:
        return fail_io(s, STG_AUTH);
    case MX_AUTH_PROTOCOL:
        return fail_protocol(s, STG_AUTH, why);
    case MX_AUTH_RAISED_IO:
        poison(s, "the connection failed while cancelling AUTH");
        return NULL;
    case MX_AUTH_RAISED:
        return NULL;
    }
    return NULL;
}

PyDoc_STRVAR(login_doc,
"login(user, password, mechanism=None) -> Reply\n\n"
"Authenticates with AUTH PLAIN or LOGIN: the given mechanism, or the first\n"
"of PLAIN, LOGIN that the server offers and auth_mechanisms allows.\n"
"Without TLS it refuses (InsecureAuthError) unless the session was made\n"
"with allow_insecure_auth=True.  The password is wiped from the C buffers\n"
"after use and never enters the transcript.");

static PyObject *
Session_login(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"user", "password", "mechanism", NULL};
    PyObject *user, *pass, *mech_obj = Py_None, *res = NULL;
    const char *u, *p;
    Py_ssize_t ulen, plen;
    unsigned mech = 0, usable;
    mx_auth_mech m;
    mx_sasl_status st;
    int bad;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "UU|O", kwlist, &user, &pass, &mech_obj))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    if (auth_precheck(s, 1, "credentials") < 0)
        goto done;
    if (mech_obj != Py_None) {
        Py_ssize_t mlen;
        const char *mn = PyUnicode_Check(mech_obj) ? PyUnicode_AsUTF8AndSize(mech_obj, &mlen) : NULL;
        mech = mn ? mx_auth_mech_bit(mn, (size_t)mlen) : 0;
        if (mech != MX_AUTH_PLAIN && mech != MX_AUTH_LOGIN) {
            raise_exc(s, MX_EXC_INPUT, STG_AUTH, NULL, NULL,
                      "mechanism %R is not supported; use 'PLAIN' or 'LOGIN'", mech_obj);
            goto done;
        }
    } else {
        usable = s->caps.auth & s->auth_allowed & (MX_AUTH_PLAIN | MX_AUTH_LOGIN);
        if (!(s->caps.ext & MX_EXT_AUTH)) {
            raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_AUTH, s->ehlo_reply, NULL,
                      "the server offers no AUTH%s", s->ssl ? "" :
                      " before TLS (many servers offer it only after STARTTLS)");
            goto done;
        }
        if (!usable) {
            PyObject *offered = s->caps_dict ? PyDict_GetItemString(s->caps_dict, "AUTH") : NULL;
            raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_AUTH, s->ehlo_reply, NULL,
                      "the server offers AUTH %S but none of the allowed "
                      "mechanisms (PLAIN, LOGIN); basic authentication is off "
                      "on this connector", offered ? offered : Py_None);
            goto done;
        }
        mech = (usable & MX_AUTH_PLAIN) ? MX_AUTH_PLAIN : MX_AUTH_LOGIN;
    }
    if (!(u = arg_utf8(s, user, "username", mx_cmd_check_params, &ulen, STG_AUTH)))
        goto done;
    p = PyUnicode_AsUTF8AndSize(pass, &plen);
    if (!p)
        goto done;
    mx_auth_mech_init(&m, mech == MX_AUTH_PLAIN ? MX_MECH_PLAIN : MX_MECH_LOGIN,
                      mx_auth_mech_name(mech));
    m.challenge_max = MX_SASL_CHALLENGE_MAX;
    if (mech == MX_AUTH_PLAIN) {
        bad = mx_abuf_reserve(&m.first, 3 * MX_SASL_FIELD_MAX + 2);
        st = bad ? MX_SASL_OK : mx_sasl_plain_raw("", 0, u, (size_t)ulen, p, (size_t)plen,
                                                 m.first.p, m.first.cap, &m.first.len);
    } else {
        st = (size_t)ulen > MX_SASL_FIELD_MAX || (size_t)plen > MX_SASL_FIELD_MAX
             ? MX_SASL_E_TOO_LONG : MX_SASL_OK;
        bad = st == MX_SASL_OK && (mx_abuf_set(&m.first, u, (size_t)ulen) < 0 ||
                                   mx_abuf_set(&m.second, p, (size_t)plen) < 0);
    }
    if (!bad && st != MX_SASL_OK)
        raise_exc(s, MX_EXC_INPUT, STG_AUTH, NULL, NULL,
                  "username or password %s; nothing was sent", mx_sasl_strerror(st));
    else if (!bad)
        res = run_auth(s, &m);
    mx_auth_mech_free(&m);
done:
    leave(s);
    return res;
}

PyDoc_STRVAR(auth_oauth_doc,
"auth_oauth(user, token, mechanism='XOAUTH2', *, host=None, port=None) -> Reply\n\n"
"Authenticates with an OAuth 2.0 bearer token: SASL XOAUTH2\n"
"(user=<user>^Aauth=Bearer <token>^A^A) or OAUTHBEARER (RFC 7628; host and\n"
"port default to the session's server name and port).  The message goes\n"
"on the AUTH line when that stays within 12288 octets (RFC 4954), else\n"
"after the server's 334.  A 334 carrying the server's JSON error is\n"
"answered as RFC 7628 says, and the AuthError raised for the final reply\n"
"has the decoded JSON in oauth_challenge.  Refused without TLS\n"
"(InsecureAuthError) unless allow_insecure_auth=True.  The token is\n"
"redacted in the transcript and wiped from the C buffers.");

static PyObject *
Session_auth_oauth(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"user", "token", "mechanism", "host", "port", NULL};
    PyObject *user, *token, *mech_obj = NULL, *host_obj = Py_None, *port_obj = Py_None;
    PyObject *res = NULL;
    const char *u, *t, *h, *mn = "XOAUTH2";
    Py_ssize_t ulen, tlen, hlen = 0;
    long port = 0;
    int bearer;
    mx_auth_mech m;
    mx_sasl_status st;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O$OO", kwlist, &user, &token,
                                     &mech_obj, &host_obj, &port_obj))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    if (mech_obj) {
        Py_ssize_t mlen;
        mn = PyUnicode_Check(mech_obj) ? PyUnicode_AsUTF8AndSize(mech_obj, &mlen) : NULL;
        if (!mn || !(mx_auth_mech_bit(mn, (size_t)mlen) & (MX_AUTH_XOAUTH2 | MX_AUTH_OAUTHBEARER))) {
            PyErr_Clear();
            raise_exc(s, MX_EXC_INPUT, STG_AUTH, NULL, NULL,
                      "mechanism %R is not an OAuth mechanism; use 'XOAUTH2' or "
                      "'OAUTHBEARER'", mech_obj);
            goto done;
        }
    }
    bearer = mx_auth_mech_bit(mn, strlen(mn)) == MX_AUTH_OAUTHBEARER;
    if (auth_precheck(s, 1, "a token") < 0)
        goto done;
    if (!(u = arg_utf8(s, user, "user", NULL, &ulen, STG_AUTH)) ||
        !(t = arg_utf8(s, token, "token", NULL, &tlen, STG_AUTH)))
        goto done;
    if (host_obj == Py_None) {
        h = s->server_name ? s->server_name : s->host;
        hlen = (Py_ssize_t)strlen(h);
    } else if (!(h = arg_utf8(s, host_obj, "host", NULL, &hlen, STG_AUTH))) {
        goto done;
    }
    if (port_obj == Py_None) {
        port = atol(s->port);
    } else {
        port = PyLong_Check(port_obj) ? PyLong_AsLong(port_obj) : -1;
        if (port < 1 || port > 65535) {
            PyErr_Clear();
            raise_exc(s, MX_EXC_INPUT, STG_AUTH, NULL, NULL,
                      "port %R is not a number between 1 and 65535; nothing was sent", port_obj);
            goto done;
        }
    }
    {
        /* each field checked on its own, so the error names it */
        static const char *const fields[3] = {"user", "host", "token"};
        mx_sasl_status fst[3];
        int f;
        fst[0] = mx_sasl_check_field(u, (size_t)ulen);
        fst[1] = mx_sasl_check_field(h, (size_t)hlen);
        fst[2] = mx_sasl_check_token(t, (size_t)tlen);
        for (f = 0; f < 3; f++) {
            if (fst[f] == MX_SASL_OK)
                continue;
            raise_exc(s, MX_EXC_INPUT, STG_AUTH, NULL, NULL, "%s %s; nothing was sent",
                      fields[f], fst[f] != MX_SASL_E_TOO_LONG ? mx_sasl_strerror(fst[f])
                      : f < 2 ? "is longer than 255 octets" : "is longer than 65536 octets");
            goto done;
        }
    }
    mx_auth_mech_init(&m, MX_MECH_OAUTH, bearer ? "OAUTHBEARER" : "XOAUTH2");
    m.bearer = bearer;
    if (mx_abuf_reserve(&m.first, mx_sasl_oauth_size((size_t)ulen, (size_t)hlen,
                                                     (size_t)tlen)) == 0) {
        if (bearer)
            st = mx_sasl_oauthbearer(u, (size_t)ulen, h, (size_t)hlen, (unsigned)port, t,
                                     (size_t)tlen, m.first.p, m.first.cap, &m.first.len);
        else
            st = mx_sasl_xoauth2(u, (size_t)ulen, t, (size_t)tlen, m.first.p, m.first.cap,
                                 &m.first.len);
        if (st == MX_SASL_OK)
            res = run_auth(s, &m);
        else    /* the fields were checked: the buffer was too small */
            raise_exc(s, MX_EXC_ERROR, STG_AUTH, NULL, NULL, "OAuth message framing failed (%s)",
                      mx_sasl_strerror(st));
    }
    mx_auth_mech_free(&m);
done:
    leave(s);
    return res;
}

PyDoc_STRVAR(auth_doc,
"auth(mechanism, step, *, secret=True) -> Reply\n\n"
"The generic SASL exchange, for mechanisms implemented in Python (NTLM,\n"
"GSSAPI): step(None) gives the initial response (bytes, or None for\n"
"none), then step(challenge) is called with each decoded 334 challenge and\n"
"its bytes are sent (None: an empty line).  If step raises, the exchange is\n"
"cancelled with '*' and the step's exception propagates.  Messages of up\n"
"to 64 KiB; the GIL is held only inside step.  secret=True (the mechanism\n"
"exposes a secret) refuses without TLS unless allow_insecure_auth=True.\n"
"Responses are redacted in the transcript.");

static PyObject *
Session_auth(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"mechanism", "step", "secret", NULL};
    PyObject *mech_obj, *step_obj, *res = NULL;
    const char *mn;
    Py_ssize_t mlen, i;
    int secret = 1;
    char name[MX_MECH_NAME_MAX + 1];
    mx_auth_mech m;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$p", kwlist, &mech_obj, &step_obj, &secret))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    mn = PyUnicode_Check(mech_obj) ? PyUnicode_AsUTF8AndSize(mech_obj, &mlen) : NULL;
    for (i = 0; mn && i < mlen && mlen <= MX_MECH_NAME_MAX; i++) {
        char c = mn[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            break;
        name[i] = c;
    }
    if (!mn || mlen == 0 || mlen > MX_MECH_NAME_MAX || i != mlen) {
        PyErr_Clear();
        raise_exc(s, MX_EXC_INPUT, STG_AUTH, NULL, NULL,
                  "mechanism %R is not a SASL mechanism name (1-20 of A-Z, 0-9, '-', '_')",
                  mech_obj);
        goto done;
    }
    name[mlen] = '\0';
    if (!PyCallable_Check(step_obj)) {
        raise_exc(s, MX_EXC_INPUT, STG_AUTH, NULL, NULL,
                  "step must be a callable taking bytes or None, not %s",
                  Py_TYPE(step_obj)->tp_name);
        goto done;
    }
    if (auth_precheck(s, secret, "credentials") < 0)
        goto done;
    mx_auth_mech_init(&m, MX_MECH_PYTHON, name);
    m.step = step_obj;
    res = run_auth(s, &m);
    mx_auth_mech_free(&m);
done:
    leave(s);
    return res;
}

/* Formats MAIL/RCPT with the address and params from Python; -1 raised. */
static int
format_path(Session *s, const char *verb, PyObject *addr, PyObject *params,
            const char *extra, stage stg, char *out, size_t cap, size_t *len,
            int *non_ascii)
{
    const char *a;
    Py_ssize_t alen;
    char pbuf[1024];
    size_t plen = 0;
    mx_cmd_status cs;

    if (!(a = arg_utf8(s, addr, stg == STG_MAIL ? "sender address" : "recipient address",
                       mx_cmd_check_address, &alen, stg)))
        return -1;
    if (non_ascii && !is_ascii(a, alen))
        *non_ascii = 1;
    pbuf[0] = '\0';
    if (extra && extra[0]) {
        plen = strlen(extra);
        memcpy(pbuf, extra, plen + 1);
    }
    if (params && params != Py_None) {
        PyObject *fast = PySequence_Fast(params, "options must be a sequence of str");
        Py_ssize_t i, n;
        if (!fast)
            return -1;
        n = PySequence_Fast_GET_SIZE(fast);
        for (i = 0; i < n; i++) {
            PyObject *it = PySequence_Fast_GET_ITEM(fast, i);
            Py_ssize_t ilen;
            const char *ip = arg_utf8(s, it, "ESMTP option", mx_cmd_check_params, &ilen, stg);
            if (!ip || (size_t)ilen + plen + 2 > sizeof(pbuf)) {
                if (ip)
                    raise_exc(s, MX_EXC_INPUT, stg, NULL, NULL,
                              "ESMTP options are longer than 1000 octets");
                Py_DECREF(fast);
                return -1;
            }
            if (plen)
                pbuf[plen++] = ' ';
            memcpy(pbuf + plen, ip, (size_t)ilen);
            plen += (size_t)ilen;
            pbuf[plen] = '\0';
        }
        Py_DECREF(fast);
    }
    cs = mx_cmd_path(out, cap, len, verb, a, (size_t)alen, pbuf, plen);
    if (cs != MX_CMD_OK) {
        raise_exc(s, MX_EXC_INPUT, stg, NULL, NULL, "%s command %s", verb, mx_cmd_strerror(cs));
        return -1;
    }
    return 0;
}

/* MAIL or RCPT: formats the command, sends it, reads the reply; a 2xx moves
 * the state to `accepted`.  Returns 0 with s->reply holding the answer
 * (accepted or refused), or -1 raised (bad input, I/O failure, 421). */
static int
path_command(Session *s, const char *verb, PyObject *addr, PyObject *opts,
             const char *extra, stage stg, timeout_key k, sstate accepted)
{
    char cmd[MX_PATH_MAX + 1100];
    size_t len;

    if (format_path(s, verb, addr, opts, extra, stg, cmd, sizeof(cmd), &len, NULL) < 0)
        return -1;
    if (exchange(s, cmd, len, NULL, k) < 0) {
        fail_io(s, stg);
        return -1;
    }
    if (s->reply.code == 421) {
        fail_421(s, stg);
        return -1;
    }
    if (refuse_3xx(s, stg) < 0)
        return -1;
    if (s->reply.code / 100 == 2)
        set_state(s, accepted);
    return 0;
}

PyDoc_STRVAR(mail_doc,
"mail(sender, options=()) -> Reply\n\n"
"Sends MAIL FROM and returns the reply, accepted or not (like smtplib's\n"
"mail()); raises only when the exchange itself fails.");

static PyObject *
Session_mail(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"sender", "options", NULL};
    PyObject *sender, *opts = Py_None, *res = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwlist, &sender, &opts))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    if (need_ready(s, "MAIL") < 0)
        goto done;
    if (path_command(s, "MAIL FROM", sender, opts, NULL, STG_MAIL, TO_MAIL, S_MAIL) == 0)
        res = make_reply(s, STG_MAIL);
done:
    leave(s);
    return res;
}

PyDoc_STRVAR(rcpt_doc,
"rcpt(recipient, options=()) -> Reply\n\n"
"Sends RCPT TO and returns the reply, accepted or not.");

static PyObject *
Session_rcpt(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"recipient", "options", NULL};
    PyObject *rcpt, *opts = Py_None, *res = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwlist, &rcpt, &opts))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    if (s->state != S_MAIL && s->state != S_RCPT) {
        raise_exc(s, MX_EXC_STATE, STG_RCPT, NULL, NULL,
                  "RCPT needs an accepted MAIL first (state %s)", state_names[s->state]);
        goto done;
    }
    if (path_command(s, "RCPT TO", rcpt, opts, NULL, STG_RCPT, TO_RCPT, S_RCPT) == 0)
        res = make_reply(s, STG_RCPT);
done:
    leave(s);
    return res;
}

/* Sends RSET to close a transaction the server may still hold open (after
 * a refusal) and returns to READY.  0, or -1 raised (the session is then
 * unusable). */
static int
end_transaction(Session *s)
{
    char cmd[8];
    size_t len;

    (void)mx_cmd_simple(cmd, sizeof(cmd), &len, "RSET");
    if (exchange(s, cmd, len, NULL, TO_COMMAND) < 0) {
        fail_io(s, STG_RSET);
        return -1;
    }
    set_state(s, S_READY);
    return 0;
}

static PyObject *send_body(Session *s, const unsigned char *p, size_t n);

/* DATA, the body and the final reply.  buf is held by the caller.  Returns
 * a new Reply (2xx) or NULL raised.  The transaction is over either way. */
static PyObject *
do_data(Session *s, const unsigned char *p, size_t n)
{
    char cmd[8];
    size_t len;

    (void)mx_cmd_simple(cmd, sizeof(cmd), &len, "DATA");
    if (exchange(s, cmd, len, NULL, TO_DATA) < 0)
        return fail_io(s, STG_DATA);
    if (s->reply.code == 421)
        return fail_421(s, STG_DATA);
    if (s->reply.code / 100 == 2 || (s->reply.code / 100 == 3 && s->reply.code != 354))
        return fail_protocol(s, STG_DATA,
                             "the server did not answer DATA with 354; the body was not sent");
    if (s->reply.code != 354) {
        PyObject *r = make_reply(s, STG_DATA);
        if (!r)
            return NULL;
        /* close the transaction so the session can go on */
        if (end_transaction(s) < 0) {
            Py_DECREF(r);
            return NULL;
        }
        raise_exc(s, MX_EXC_DATA, STG_DATA, r, NULL,
                  "the server refused DATA; the message was not sent");
        Py_DECREF(r);
        return NULL;
    }
    return send_body(s, p, n);
}

/* After a 354: the encoded body, the end marker and the final reply.
 * Returns a new Reply (2xx) or NULL raised; the transaction is over. */
static PyObject *
send_body(Session *s, const unsigned char *p, size_t n)
{
    size_t used, out;
    mx_body_enc enc;
    int rc = 0;

    recordf(s, MX_TR_INFO, "sending body: %zu bytes before encoding", n);
    mx_body_init(&enc);
    Py_BEGIN_ALLOW_THREADS
    while (n) {
        out = mx_body_encode(&enc, p, n, &used, s->wbuf, MX_WBUF);
        p += used;
        n -= used;
        if ((rc = stream_write(s, s->wbuf, out, deadline_for(s, TO_DATA_BLOCK))) < 0)
            break;
    }
    if (rc == 0) {
        out = mx_body_finish(&enc, s->wbuf, MX_WBUF);
        record(s, MX_TR_CLIENT, ".", 1);
        rc = stream_write(s, s->wbuf, out, deadline_for(s, TO_DATA_BLOCK));
    }
    if (rc == 0)
        rc = recv_reply(s, TO_END_OF_DATA);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return fail_io(s, STG_END_OF_DATA);
    set_state(s, S_READY);
    if (s->reply.code == 421)
        return fail_421(s, STG_END_OF_DATA);
    if (s->reply.code / 100 != 2) {
        if (s->reply.code / 100 == 3)
            return fail_protocol(s, STG_END_OF_DATA, "unexpected 3xx reply at end of data");
        return fail_reply(s, MX_EXC_DATA, STG_END_OF_DATA,
                          "the server refused the message at end of data");
    }
    return make_reply(s, STG_END_OF_DATA);
}

PyDoc_STRVAR(data_doc,
"data(body) -> Reply\n\n"
"Sends DATA, then the body (any bytes-like object) with bare CR and LF\n"
"turned into CRLF and leading dots doubled, then the end-of-data marker.\n"
"Returns the final 2xx reply; raises DataRefused (stage DATA or\n"
"END_OF_DATA) otherwise.  The message is sent only if this returns.");

static PyObject *
Session_data(Session *s, PyObject *arg)
{
    Py_buffer view;
    PyObject *res = NULL;

    if (PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError,
                        "data() takes bytes; encode the message first (or use send_message)");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (enter(s, 1) < 0)
        goto release;
    if (s->state != S_RCPT)
        raise_exc(s, MX_EXC_STATE, STG_DATA, NULL, NULL,
                  "DATA needs at least one accepted recipient (state %s)",
                  state_names[s->state]);
    else
        res = do_data(s, view.buf, (size_t)view.len);
    leave(s);
release:
    PyBuffer_Release(&view);
    return res;
}

/* A simple command whose reply is returned as is. */
static PyObject *
simple_command(Session *s, const char *verb, stage stg, timeout_key k)
{
    char cmd[16];
    size_t len;
    PyObject *res = NULL;

    if (enter(s, 1) < 0)
        return NULL;
    (void)mx_cmd_simple(cmd, sizeof(cmd), &len, verb);
    if (exchange(s, cmd, len, NULL, k) < 0) {
        fail_io(s, stg);
        goto done;
    }
    if (s->reply.code == 421) {
        fail_421(s, stg);
        goto done;
    }
    if (refuse_3xx(s, stg) < 0)
        goto done;
    if (stg == STG_RSET && s->reply.code / 100 == 2 && s->state != S_CONNECTED)
        set_state(s, S_READY);
    res = make_reply(s, stg);
done:
    leave(s);
    return res;
}

static PyObject *
Session_rset(Session *s, PyObject *unused)
{
    (void)unused;
    return simple_command(s, "RSET", STG_RSET, TO_COMMAND);
}

static PyObject *
Session_noop(Session *s, PyObject *unused)
{
    (void)unused;
    return simple_command(s, "NOOP", STG_NOOP, TO_COMMAND);
}

PyDoc_STRVAR(quit_doc,
"quit() -> Reply or None\n\n"
"Sends QUIT and closes the connection.  Returns the server's reply, or None\n"
"when the session was not open; a failure while quitting still closes.");

static PyObject *
Session_quit(Session *s, PyObject *unused)
{
    char cmd[8];
    size_t len;
    PyObject *res = NULL;

    (void)unused;
    if (enter(s, 0) < 0)
        return NULL;
    if (s->fd < 0 || s->state == S_ERROR || s->state == S_CLOSED || s->state == S_NEW) {
        drop_connection(s);
        if (s->state != S_ERROR)
            set_state(s, S_CLOSED);
        res = Py_NewRef(Py_None);
        goto done;
    }
    (void)mx_cmd_simple(cmd, sizeof(cmd), &len, "QUIT");
    if (exchange(s, cmd, len, NULL, TO_QUIT) < 0) {
        fail_io(s, STG_QUIT);
        goto done;
    }
    res = make_reply(s, STG_QUIT);
    drop_connection(s);
    set_state(s, S_CLOSED);
done:
    leave(s);
    return res;
}

static PyObject *
Session_close(Session *s, PyObject *unused)
{
    (void)unused;
    if (enter(s, 0) < 0)
        return NULL;
    drop_connection(s);
    if (s->state != S_ERROR)
        set_state(s, S_CLOSED);
    leave(s);
    Py_RETURN_NONE;
}

/* Reads one reply of a pipelined group (a transaction's, or try_sender's)
 * into a new Reply; NULL raised on I/O failure, 421 or a 3xx that cannot
 * belong (354 only after DATA). */
static PyObject *
group_reply(Session *s, stage stg, timeout_key k)
{
    if (recv_only(s, k) < 0)
        return fail_io(s, stg);
    if (s->reply.code == 421)
        return fail_421(s, stg);
    if (stg != STG_DATA && refuse_3xx(s, stg) < 0)
        return NULL;
    return make_reply(s, stg);
}

/* ---- the send engine: one or many messages, pipelined ------------------
 *
 * send_raw() and send_many() both come here.  Three phases:
 *  1. prepare (GIL held): every message's arguments are checked and its
 *     MAIL/RCPT lines formatted and its body scanned (SIZE, 8-bit, NUL)
 *     before a byte is sent; a message that fails here gets its exception
 *     as its outcome and is skipped.
 *  2. the wire (GIL released for the whole batch; taken back only to read
 *     a chunk of a file body): commands are staged into s->wbuf and written
 *     in one write per group; replies are read in order against a queue of
 *     what they answer.  With PIPELINING the next message's envelope goes in
 *     the same write as the end of the previous one (RFC 2920 §3.1), and with
 *     CHUNKING a whole message is MAIL, RCPT..., BDAT n LAST and its bytes
 *     (RFC 3030), so a run of messages needs no round trip of its own.
 *     Replies are kept as C data (text in an arena).
 *  3. outcomes (GIL held): per message, (refused, reply) or an exception
 *     instance; a failure of the session (I/O, 421, a reply that cannot
 *     belong) ends the batch: the message it hit gets the exception, a later
 *     one whose body was all written is "outcome unknown" (delivered=None),
 *     any other is "not sent" (delivered=False); after a 421 all are "not
 *     sent", since the server answers in turn and then closes.
 */

/* Replies outstanding at most: more could fill the TCP window both ways
 * (we write while the server's replies pile up unread); msmtp stops at 100
 * for the same reason.  A message with more recipients goes one command at
 * a time. */
#define MX_PIPELINE_MAX 100

/* A BDAT body larger than this waits for the RCPT replies, so a big
 * message to refused recipients is not sent for nothing. */
#define MX_BDAT_BLIND_MAX (1024 * 1024)

/* Bytes read from a file body per call. */
#define MX_FILE_CHUNK 65536

typedef enum { B_DATA, B_BDAT, B_BINARY } body_mode;
typedef enum { K_MAIL, K_RCPT, K_DATA, K_EOD, K_BDAT, K_RSET, K_EMPTY } rkind;

static const stage kind_stage[] = {
    STG_MAIL, STG_RCPT, STG_DATA, STG_END_OF_DATA, STG_END_OF_DATA, STG_RSET,
    STG_END_OF_DATA,
};
static const timeout_key kind_timeout[] = {
    TO_MAIL, TO_RCPT, TO_DATA, TO_END_OF_DATA, TO_END_OF_DATA, TO_COMMAND,
    TO_END_OF_DATA,
};

typedef struct {
    /* prepare */
    PyObject *item;            /* the caller's tuple (owned) */
    PyObject *rcpts;           /* a fast sequence (owned) */
    PyObject *file;            /* a binary file body (borrowed from item), or NULL */
    Py_buffer view;            /* a bytes-like body */
    int have_view;
    PyObject *outcome;         /* set when prepare fails, and in phase 3 */
    char *lines;               /* MAIL, then each RCPT, CRLF-terminated */
    size_t *ends;              /* ends[k]: where line k ends (0 = MAIL) */
    size_t nrcpt;
    uint64_t size;             /* body octets on the wire (BDAT) */
    body_mode mode;
    int serial;                /* one command at a time */
    /* wire */
    size_t step;               /* next line to stage; nrcpt + 1 = the body */
    int mail_ok;               /* -1 unknown */
    size_t rcpt_seen, accepted;
    int finished;              /* its last reply was read */
    int body_done;             /* all of its body was staged */
    uint64_t end_off;          /* stream offset just after its body (body_done) */
    int gated;                 /* waits for replies before its body */
    size_t first_reply;        /* index of its first stored reply */
} job;

typedef struct {
    size_t job, rcpt;
    rkind kind;
    int code;
    char enhanced[MX_ENHANCED_MAX];
    size_t off, len;           /* lines joined by '\n' in the arena */
} sreply;

typedef struct {
    size_t job, rcpt;
    rkind kind;
    uint64_t end;              /* stream offset just after the command it answers
                                * (a BDAT: after the body; unknown: UINT64_MAX) */
} expect;

typedef enum { F_NONE, F_IO, F_421, F_PROTOCOL, F_SOURCE } fail_kind;

typedef struct {
    job *jobs;
    size_t n, next, cur, gate;     /* cur/gate: a job index or NONE */
    int pipelining, stop_on_error, stopped;
    expect q[MX_PIPELINE_MAX + 4];
    size_t qhead, qlen, qwritten;
    int check_desync;              /* a reply was read since the last check */
    size_t wlen;                   /* bytes staged in s->wbuf */
    uint64_t sent;                 /* bytes written that may have reached the
                                    * server (stream offsets count from 0) */
    int write_failed;              /* the failure was a write the peer broke */
    sreply *replies;
    size_t nreplies, rcap;
    char *text;
    size_t tlen, tcap;
    fail_kind failed;
    stage fail_stage;
    size_t fail_job;
    char why[160];
    PyThreadState *ts;             /* while the GIL is released */
    PyObject *fobj;                /* a bytearray of MX_FILE_CHUNK, for file bodies */
    Py_buffer fbuf;                /* held on fobj: it cannot move or shrink */
} batch;

#define NONE ((size_t)-1)

static void
batch_fail(batch *b, fail_kind k, stage stg, size_t jobi, const char *why)
{
    if (b->failed)
        return;
    b->failed = k;
    b->fail_stage = stg;
    b->fail_job = jobi;
    snprintf(b->why, sizeof(b->why), "%s", why ? why : "");
}

/* Writes what is staged.  When no reply is outstanding, anything the
 * server already said is out of turn (see send_cmd).  0 or -1. */
static int
out_flush(Session *s, batch *b, size_t jobi, stage stg)
{
    size_t maybe;

    if (!b->wlen)
        return 0;
    if (b->qwritten == 0 && b->check_desync) {
        /* the first write since the last reply was read (not every 64 KiB
         * of a body): nothing is outstanding, so any byte is out of turn */
        b->check_desync = 0;
        size_t extra = unsolicited_bytes(s);
        if (extra) {
            mx_error_set(&s->err, MX_E_PROTOCOL, 0,
                         "the server sent %zu byte%s nobody asked for (desynchronised)",
                         extra, extra == 1 ? "" : "s");
            batch_fail(b, F_IO, stg, jobi, NULL);
            return -1;
        }
    }
    if (stream_write_counted(s, s->wbuf, b->wlen, deadline_for(s, TO_DATA_BLOCK), &maybe) < 0) {
        b->sent += maybe;
        b->write_failed = s->err.kind == MX_E_IO || s->err.kind == MX_E_EOF;
        batch_fail(b, F_IO, stg, jobi, NULL);
        return -1;
    }
    b->sent += b->wlen;
    b->wlen = 0;
    b->qwritten = b->qlen;
    return 0;
}

static int
out_put(Session *s, batch *b, const void *p, size_t n, size_t jobi, stage stg)
{
    if (b->wlen + n > MX_WBUF && out_flush(s, b, jobi, stg) < 0)
        return -1;
    memcpy(s->wbuf + b->wlen, p, n);
    b->wlen += n;
    return 0;
}

static void
push(batch *b, size_t jobi, rkind kind, size_t rcpt)
{
    expect *e = &b->q[(b->qhead + b->qlen) % (MX_PIPELINE_MAX + 4)];

    e->job = jobi;
    e->kind = kind;
    e->rcpt = rcpt;
    e->end = kind == K_BDAT ? UINT64_MAX : b->sent + b->wlen;
    b->qlen++;
}

/* Stages one command line (CRLF included) and what will answer it. */
static int
stage_line(Session *s, batch *b, const char *line, size_t len, size_t jobi,
           rkind kind, size_t rcpt)
{
    record(s, MX_TR_CLIENT, line, len - 2);
    if (out_put(s, b, line, len, jobi, kind_stage[kind]) < 0)
        return -1;
    push(b, jobi, kind, rcpt);
    return 0;
}

static int
stage_simple(Session *s, batch *b, const char *verb, size_t jobi, rkind kind)
{
    char cmd[16];
    size_t len;

    (void)mx_cmd_simple(cmd, sizeof(cmd), &len, verb);
    return stage_line(s, b, cmd, len, jobi, kind, 0);
}

/* file.readinto() on a fresh memoryview of the engine's file buffer (a
 * bytearray), released as soon as the call returns: a reader that keeps
 * its argument gets ValueError when it uses it later, never memory the
 * engine has moved on from or freed.  (If the reader took a buffer of the
 * view and kept it, the view cannot be released, but that buffer keeps the
 * bytearray alive.)  The count, or -1 raised. */
static Py_ssize_t
readinto_chunk(PyObject *file, PyObject *fobj)
{
    PyObject *view = PyMemoryView_FromObject(fobj), *r, *rel;
    Py_ssize_t n = -1;

    if (!view)
        return -1;
    r = PyObject_CallMethod(file, "readinto", "O", view);
    if (r) {
        n = r == Py_None ? -1 : PyLong_AsSsize_t(r);
        Py_DECREF(r);
        if ((n < 0 || n > MX_FILE_CHUNK) && !PyErr_Occurred())
            PyErr_SetString(PyExc_OSError, "readinto() returned no count (a non-blocking file?)");
        if (n > MX_FILE_CHUNK)
            n = -1;
    }
    {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        rel = PyObject_CallMethod(view, "release", NULL);
        if (rel)
            Py_DECREF(rel);
        else
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    Py_DECREF(view);
    return n;
}

/* The next piece of a body: the rest of the buffer, or a chunk read from
 * the file with the GIL taken back for the call.  Returns its length (0 at
 * the end), or -1 with the batch failed. */
static Py_ssize_t
body_chunk(batch *b, job *j, size_t done, const unsigned char **p)
{
    Py_ssize_t n;

    if (!j->file) {
        *p = (const unsigned char *)j->view.buf + done;
        return j->view.len - (Py_ssize_t)done;
    }
    PyEval_RestoreThread(b->ts);
    n = readinto_chunk(j->file, b->fobj);
    if (n < 0) {
        /* the reader's exception is kept and becomes this message's outcome */
        j->outcome = take_raised();
    }
    b->ts = PyEval_SaveThread();
    if (n < 0) {
        batch_fail(b, F_SOURCE, STG_END_OF_DATA, (size_t)(j - b->jobs),
                   "reading the message file failed while it was being sent");
        return -1;
    }
    *p = b->fbuf.buf;
    return n;
}

/* Stages a message's body: after 354 (DATA: stuffed, "." at the end) or as
 * BDAT n LAST with exactly n octets (normalised; BINARYMIME: as given). */
static int
stage_body(Session *s, batch *b, size_t jobi)
{
    job *j = &b->jobs[jobi];
    mx_body_enc enc;
    uint64_t total = 0;
    size_t done = 0;

    if (j->mode == B_DATA) {
        mx_body_init(&enc);
    } else {
        char hdr[48];
        int hl = snprintf(hdr, sizeof(hdr), "BDAT %llu LAST\r\n", (unsigned long long)j->size);
        mx_body_init_bdat(&enc);
        if (stage_line(s, b, hdr, (size_t)hl, jobi, K_BDAT, 0) < 0)
            return -1;
    }
    recordf(s, MX_TR_INFO, "body: %llu octets%s", (unsigned long long)j->size,
            j->mode == B_BINARY ? ", binary" : "");
    for (;;) {
        const unsigned char *p;
        Py_ssize_t n = body_chunk(b, j, done, &p);

        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (size_t)n;
        while (n > 0) {
            size_t room, used, out;

            if (MX_WBUF - b->wlen < MX_BODY_STEP_MAX &&
                out_flush(s, b, jobi, STG_END_OF_DATA) < 0)
                return -1;
            room = MX_WBUF - b->wlen;
            if (j->mode == B_BINARY) {
                out = used = (size_t)n < room ? (size_t)n : room;
                memcpy(s->wbuf + b->wlen, p, out);
            } else {
                out = mx_body_encode(&enc, p, (size_t)n, &used, s->wbuf + b->wlen, room);
            }
            total += out;
            if (j->mode != B_DATA && total > j->size)
                goto changed;
            b->wlen += out;
            p += used;
            n -= (Py_ssize_t)used;
        }
        if (!j->file)
            break;
    }
    if (MX_WBUF - b->wlen < MX_BODY_FINISH_MAX && out_flush(s, b, jobi, STG_END_OF_DATA) < 0)
        return -1;
    if (j->mode != B_BINARY) {
        size_t out = mx_body_finish(&enc, s->wbuf + b->wlen, MX_WBUF - b->wlen);
        total += j->mode == B_DATA ? 0 : out;
        b->wlen += out;
    }
    if (j->mode != B_DATA && total != j->size)
        goto changed;
    j->end_off = b->sent + b->wlen;
    if (j->mode == B_DATA) {
        record(s, MX_TR_CLIENT, ".", 1);
        push(b, jobi, K_EOD, 0);
    } else {
        /* BDAT n LAST is answered once its n octets are in */
        b->q[(b->qhead + b->qlen - 1) % (MX_PIPELINE_MAX + 4)].end = j->end_off;
    }
    j->body_done = 1;
    return 0;
changed:
    batch_fail(b, F_SOURCE, STG_END_OF_DATA, jobi,
               "the message changed while it was being sent (its size no longer "
               "matches BDAT); the connection was closed so it cannot be delivered");
    return -1;
}

/* A job is over; with stop_on_error, a message not accepted at all stops
 * the batch (nothing after it is started). */
static void
job_over(batch *b, job *j, int accepted_for_delivery)
{
    j->finished = 1;
    if (!accepted_for_delivery && b->stop_on_error)
        b->stopped = 1;
}

/* A job whose replies so far leave nothing to send: ends it (RSET when
 * the server may hold a transaction open). */
static int
stage_close(Session *s, batch *b, size_t jobi)
{
    job *j = &b->jobs[jobi];

    if (j->mail_ok == 1)
        return stage_simple(s, b, "RSET", jobi, K_RSET);
    job_over(b, j, 0);
    return 0;
}

/* Stages the data phase of a job whose envelope replies are all known (or
 * not needed): BDAT with its body, DATA, or the end of the transaction. */
static int
stage_data(Session *s, batch *b, size_t jobi, int replies_known)
{
    job *j = &b->jobs[jobi];

    if (replies_known && (j->mail_ok != 1 || !j->accepted))
        return stage_close(s, b, jobi);
    if (j->mode == B_DATA) {
        b->gate = jobi;            /* the body waits for 354 */
        return stage_simple(s, b, "DATA", jobi, K_DATA);
    }
    if (!replies_known && j->size > MX_BDAT_BLIND_MAX) {
        b->gate = jobi;            /* the body waits for the RCPT replies */
        j->gated = 1;
        return 0;
    }
    return stage_body(s, b, jobi);
}

/* Stages as much as the rules allow: a whole message at a time when
 * pipelining (while the queue has room), one command at a time otherwise;
 * nothing while a job waits at its gate. */
static int
stage_more(Session *s, batch *b)
{
    for (;;) {
        job *j;
        int one_by_one;

        if (b->failed || b->gate != NONE)
            return 0;
        if (b->cur == NONE) {
            if (b->next >= b->n || b->stopped)
                return 0;
            j = &b->jobs[b->next];
            if (j->outcome) {          /* failed in prepare */
                b->next++;
                continue;
            }
            one_by_one = !b->pipelining || j->serial;
            if (b->qlen && (one_by_one || b->stop_on_error ||
                            b->qlen + j->nrcpt + 2 > MX_PIPELINE_MAX))
                return 0;
            b->cur = b->next++;
            j->step = 0;
        }
        j = &b->jobs[b->cur];
        one_by_one = !b->pipelining || j->serial;
        if (one_by_one && b->qlen)
            return 0;
        if (j->step == 0) {
            if (stage_line(s, b, j->lines, j->ends[0], b->cur, K_MAIL, 0) < 0)
                return -1;
            j->step = 1;
        } else if (j->step <= j->nrcpt) {
            if (one_by_one && j->mail_ok != 1) {
                job_over(b, j, 0);     /* the sender was refused: no RCPT */
                b->cur = NONE;
                continue;
            }
            if (stage_line(s, b, j->lines + j->ends[j->step - 1],
                           j->ends[j->step] - j->ends[j->step - 1], b->cur, K_RCPT,
                           j->step - 1) < 0)
                return -1;
            j->step++;
        } else {
            size_t jobi = b->cur;
            b->cur = NONE;
            if (stage_data(s, b, jobi, one_by_one) < 0)
                return -1;
        }
    }
}

static int
store_reply(Session *s, batch *b, const expect *e)
{
    sreply *r;
    size_t i, need = s->reply.text_len + s->reply.nlines;
    job *j = &b->jobs[e->job];

    if (b->nreplies == b->rcap) {
        size_t cap = b->rcap ? 2 * b->rcap : 64;
        sreply *nr = PyMem_RawRealloc(b->replies, cap * sizeof(*nr));
        if (!nr)
            goto oom;
        b->replies = nr;
        b->rcap = cap;
    }
    if (b->tlen + need > b->tcap) {
        size_t cap = b->tcap ? 2 * b->tcap : 8192;
        char *nt;
        while (cap < b->tlen + need)
            cap *= 2;
        if (!(nt = PyMem_RawRealloc(b->text, cap)))
            goto oom;
        b->text = nt;
        b->tcap = cap;
    }
    r = &b->replies[b->nreplies];
    r->job = e->job;
    r->kind = e->kind;
    r->rcpt = e->rcpt;
    r->code = s->reply.code;
    memcpy(r->enhanced, s->reply.enhanced, sizeof(r->enhanced));
    r->off = b->tlen;
    for (i = 0; i < s->reply.nlines; i++) {
        if (i)
            b->text[b->tlen++] = '\n';
        memcpy(b->text + b->tlen, s->reply.text + s->reply.line_off[i], s->reply.line_len[i]);
        b->tlen += s->reply.line_len[i];
    }
    r->len = b->tlen - r->off;
    if (j->first_reply == NONE)
        j->first_reply = b->nreplies;
    b->nreplies++;
    return 0;
oom:
    mx_error_set(&s->err, MX_E_IO, ENOMEM, "out of memory keeping replies");
    batch_fail(b, F_IO, kind_stage[e->kind], e->job, NULL);
    return -1;
}

/* Reads the reply the queue's head expects and acts on it. */
static int
read_next(Session *s, batch *b)
{
    expect e = b->q[b->qhead];
    job *j = &b->jobs[e.job];
    int code, cls;

    b->qhead = (b->qhead + 1) % (MX_PIPELINE_MAX + 4);
    b->qlen--;
    b->check_desync = 1;
    if (b->qwritten)
        b->qwritten--;
    if (recv_reply(s, kind_timeout[e.kind]) < 0) {
        batch_fail(b, F_IO, kind_stage[e.kind], e.job, NULL);
        return -1;
    }
    code = s->reply.code;
    cls = code / 100;
    if (code == 421) {
        /* while draining after a failure, the 421 is what really ended it */
        b->failed = F_NONE;
        batch_fail(b, F_421, kind_stage[e.kind], e.job, NULL);
        return -1;
    }
    if (cls == 3 && !(e.kind == K_DATA && code == 354)) {
        char why[96];
        snprintf(why, sizeof(why), "a %d reply cannot answer %s", code,
                 stage_names[kind_stage[e.kind]]);
        batch_fail(b, F_PROTOCOL, kind_stage[e.kind], e.job, why);
        return -1;
    }
    if (e.kind == K_DATA && cls == 2) {
        batch_fail(b, F_PROTOCOL, STG_DATA, e.job,
                   "the server did not answer DATA with 354; the body was not sent");
        return -1;
    }
    if (store_reply(s, b, &e) < 0)
        return -1;
    switch (e.kind) {
    case K_MAIL:
        j->mail_ok = cls == 2;
        break;
    case K_RCPT:
        j->rcpt_seen++;
        if (j->mail_ok == 1 && cls == 2)
            j->accepted++;
        if (j->gated && j->rcpt_seen == j->nrcpt && !b->failed) {
            size_t jobi = e.job;
            j->gated = 0;
            b->gate = NONE;
            if (stage_data(s, b, jobi, 1) < 0)
                return -1;
        }
        break;
    case K_DATA:
        b->gate = NONE;
        if (b->failed) {
            /* draining: nothing more is written; a refusal ends the job,
             * a 354 leaves its body unsent */
            if (code != 354)
                job_over(b, j, 0);
            break;
        }
        if (code == 354) {
            if (j->accepted && j->mail_ok == 1)
                return stage_body(s, b, e.job);
            /* the server opened DATA though nothing was accepted: end it
             * empty; its answer closes the transaction */
            return stage_simple(s, b, ".", e.job, K_EMPTY);
        }
        return stage_close(s, b, e.job);    /* DATA refused */
    case K_EOD:
    case K_BDAT:
        job_over(b, j, cls == 2 && j->mail_ok == 1 && j->accepted);
        break;
    case K_RSET:
    case K_EMPTY:
        job_over(b, j, 0);
        break;
    }
    return 0;
}

/* Phase 2, GIL released by the caller.  0, or -1 with b->failed set. */
static int
run_wire(Session *s, batch *b)
{
    for (;;) {
        size_t was_next = b->next, was_cur = b->cur;

        if (stage_more(s, b) < 0)
            return -1;
        if (b->wlen) {
            const expect *last = &b->q[(b->qhead + b->qlen - 1) % (MX_PIPELINE_MAX + 4)];
            if (out_flush(s, b, last->job, kind_stage[last->kind]) < 0)
                return -1;
        }
        if (!b->qlen) {
            /* nothing outstanding: done, unless a one-by-one job just
             * ended without a reply (its sender was refused) */
            if (b->cur == NONE && b->gate == NONE && (b->next >= b->n || b->stopped))
                return 0;
            if (b->next == was_next && b->cur == was_cur && b->cur == NONE) {
                mx_error_set(&s->err, MX_E_PROTOCOL, 0, "internal error: the send engine stalled");
                batch_fail(b, F_IO, STG_MAIL, b->next ? b->next - 1 : 0, NULL);
                return -1;
            }
            continue;
        }
        if (read_next(s, b) < 0)
            return -1;
    }
}

/* Whether a job is decided by what the server already said although not
 * all of its replies came: its sender, or every recipient, was refused. */
static int
job_refused(const job *j)
{
    return j->mail_ok == 0 || (j->mail_ok == 1 && j->nrcpt && j->rcpt_seen == j->nrcpt &&
                                !j->accepted);
}

/* After a failure: reads what the server already answered before deciding
 * anything, so that a message whose final reply came gets it.  Only after
 * a write the peer broke (its replies are still readable, then EOF) or a
 * failure of the caller's file (the server is fine and answers what was
 * written); never after a timeout or a desync.  Only replies to commands
 * that may have reached the server are awaited.  A 421 read here becomes
 * the failure.  Then the failure is pinned on the first message whose fate
 * the server never told.  GIL released. */
static void
drain(Session *s, batch *b)
{
    mx_error kept = s->err;
    size_t i;

    if (b->write_failed || b->failed == F_SOURCE) {
        while (b->qlen && b->q[b->qhead].end <= b->sent)
            if (read_next(s, b) < 0)
                break;
        if (b->failed != F_421)
            s->err = kept;
    }
    if (b->failed != F_IO)
        return;
    for (i = 0; i < b->next && i < b->n; i++) {
        job *j = &b->jobs[i];
        if (!j->outcome && !j->finished && !job_refused(j)) {
            b->fail_job = i;
            break;
        }
    }
}

/* ---- phase 1: prepare ---------------------------------------------------- */

/* Appends to a PyMem_Raw buffer, growing it; -1 raised. */
static int
grow_put(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n > *cap) {
        size_t nc = *cap ? *cap : 1024;
        char *nb;
        while (nc < *len + n)
            nc *= 2;
        if (!(nb = PyMem_RawRealloc(*buf, nc))) {
            PyErr_NoMemory();
            return -1;
        }
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

/* Scans a seekable binary file from where it stands and goes back there.
 * -1 raised. */
static int
scan_file(PyObject *file, mx_body_scan_state *scan, batch *b)
{
    PyObject *pos = NULL, *r;
    int rc = -1;

    r = PyObject_CallMethod(file, "seekable", NULL);
    if (!r)
        return -1;
    if (!PyObject_IsTrue(r)) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_TypeError,
                        "a file body must be seekable (it is read twice: once for SIZE, "
                        "once to send); read it into bytes first");
        return -1;
    }
    Py_DECREF(r);
    if (!(pos = PyObject_CallMethod(file, "tell", NULL)))
        return -1;
    for (;;) {
        Py_ssize_t n;
        if ((n = readinto_chunk(file, b->fobj)) < 0)
            goto done;
        if (n == 0)
            break;
        mx_body_scan(scan, b->fbuf.buf, (size_t)n);
    }
    if (!(r = PyObject_CallMethod(file, "seek", "O", pos)))
        goto done;
    Py_DECREF(r);
    rc = 0;
done:
    Py_DECREF(pos);
    return rc;
}

/* Checks one message and formats its envelope.  0 ready; 1 refused before
 * sending (j->outcome holds the exception); -1 raised (out of memory). */
static int
prepare_job(Session *s, batch *b, job *j)
{
    PyObject *from, *to, *body, *mopts = Py_None, *ropts = Py_None;
    char cmd[MX_PATH_MAX + 1100], extra[128];
    char *rl = NULL;
    size_t len, rlen = 0, rcap = 0, cap = 0, elen = 0, i;
    int non_ascii = 0;
    mx_body_scan_state scan;

    if (!PyTuple_Check(j->item)) {
        PyErr_SetString(PyExc_TypeError, "each message must be a tuple "
                        "(from_addr, to_addrs, msg[, mail_options[, rcpt_options]])");
        goto bad;
    }
    if (!PyArg_ParseTuple(j->item, "OOO|OO:message", &from, &to, &body, &mopts, &ropts))
        goto bad;
    if (PyUnicode_Check(body)) {
        PyErr_SetString(PyExc_TypeError, "msg must be bytes or a binary file; encode it first");
        goto bad;
    }
    j->rcpts = PyUnicode_Check(to) ? PyTuple_Pack(1, to)
                                   : PySequence_Fast(to, "to_addrs must be a str or a sequence of str");
    if (!j->rcpts)
        goto bad;
    j->nrcpt = (size_t)PySequence_Fast_GET_SIZE(j->rcpts);
    if (!j->nrcpt) {
        raise_exc(s, MX_EXC_INPUT, STG_RCPT, NULL, NULL, "no recipients given; nothing was sent");
        goto bad;
    }
    for (i = 0; i < j->nrcpt; i++) {
        if (format_path(s, "RCPT TO", PySequence_Fast_GET_ITEM(j->rcpts, (Py_ssize_t)i), ropts,
                        NULL, STG_RCPT, cmd, sizeof(cmd), &len, &non_ascii) < 0 ||
            grow_put(&rl, &rlen, &rcap, cmd, len) < 0)
            goto bad;
    }
    if (format_path(s, "MAIL FROM", from, mopts, NULL, STG_MAIL, cmd, sizeof(cmd), &len,
                    &non_ascii) < 0)
        goto bad;
    mx_body_scan_init(&scan);
    if (PyObject_CheckBuffer(body)) {
        if (PyObject_GetBuffer(body, &j->view, PyBUF_SIMPLE) < 0)
            goto bad;
        j->have_view = 1;
        Py_BEGIN_ALLOW_THREADS
        mx_body_scan(&scan, j->view.buf, (size_t)j->view.len);
        Py_END_ALLOW_THREADS
    } else if (PyObject_HasAttrString(body, "readinto")) {
        j->file = body;
        if (scan_file(body, &scan, b) < 0)
            goto bad;
    } else {
        PyErr_Format(PyExc_TypeError, "msg must be bytes-like or a binary file object, not %.100s",
                     Py_TYPE(body)->tp_name);
        goto bad;
    }
    mx_body_scan_finish(&scan);
    j->size = scan.info.size;
    j->mode = (s->caps.ext & MX_EXT_CHUNKING) ? B_BDAT : B_DATA;
    if (scan.info.has_nul) {
        if (!(s->caps.ext & MX_EXT_CHUNKING) || !(s->caps.ext & MX_EXT_BINARYMIME)) {
            raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                      "the message contains NUL bytes, which only BINARYMIME with CHUNKING "
                      "can carry, and the server does not offer them; encode the binary "
                      "parts (base64) first; nothing was sent");
            goto bad;
        }
        j->mode = B_BINARY;
        j->size = j->file ? scan.info.raw_size : (uint64_t)j->view.len;
    }
    if (scan.info.has_8bit && j->mode != B_BINARY && !(s->caps.ext & MX_EXT_8BITMIME)) {
        raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                  "the message has 8-bit bytes but the server does not offer 8BITMIME "
                  "(RFC 6152); encode the body (quoted-printable or base64), or let "
                  "send_as build it, which does; nothing was sent");
        goto bad;
    }
    extra[0] = '\0';
    if (s->caps.ext & MX_EXT_SIZE) {
        if (s->caps.size && j->size > s->caps.size) {
            raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                      "the message is %llu octets but the server accepts at most "
                      "%llu (SIZE); nothing was sent",
                      (unsigned long long)j->size, (unsigned long long)s->caps.size);
            goto bad;
        }
        elen += (size_t)snprintf(extra + elen, sizeof(extra) - elen, "SIZE=%llu",
                                 (unsigned long long)j->size);
    }
    if (j->mode == B_BINARY)
        elen += (size_t)snprintf(extra + elen, sizeof(extra) - elen, "%sBODY=BINARYMIME",
                                 elen ? " " : "");
    else if (scan.info.has_8bit && (s->caps.ext & MX_EXT_8BITMIME))
        elen += (size_t)snprintf(extra + elen, sizeof(extra) - elen, "%sBODY=8BITMIME",
                                 elen ? " " : "");
    if (non_ascii) {
        if (!(s->caps.ext & MX_EXT_SMTPUTF8)) {
            raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                      "an address is not ASCII but the server does not offer "
                      "SMTPUTF8; nothing was sent");
            goto bad;
        }
        elen += (size_t)snprintf(extra + elen, sizeof(extra) - elen, "%sSMTPUTF8",
                                 elen ? " " : "");
    }
    if (format_path(s, "MAIL FROM", from, mopts, extra, STG_MAIL, cmd, sizeof(cmd), &len, NULL) < 0)
        goto bad;
    {
        size_t mlen = len;
        len = 0;
        if (grow_put(&j->lines, &len, &cap, cmd, mlen) < 0 ||
            grow_put(&j->lines, &len, &cap, rl ? rl : "", rlen) < 0)
            goto bad;
    }
    if (!(j->ends = PyMem_RawMalloc((j->nrcpt + 1) * sizeof(size_t)))) {
        PyErr_NoMemory();
        goto bad;
    }
    {
        /* line k ends after its CRLF; lines hold no CR or LF of their own */
        size_t k = 0, p;
        for (p = 0; p + 1 < len && k <= j->nrcpt; p++)
            if (j->lines[p] == '\r' && j->lines[p + 1] == '\n')
                j->ends[k++] = p + 2;
    }
    j->serial = j->nrcpt + 2 > MX_PIPELINE_MAX;
    j->mail_ok = -1;
    PyMem_RawFree(rl);
    return 0;
bad:
    PyMem_RawFree(rl);
    if (PyErr_ExceptionMatches(PyExc_MemoryError))
        return -1;
    j->outcome = take_raised();
    return j->outcome ? 1 : -1;
}

/* ---- phase 3: outcomes --------------------------------------------------- */

/* A Reply for a stored reply (lines joined by '\n' in the arena). */
static PyObject *
make_sreply(Session *s, batch *b, const sreply *r)
{
    mx_state *st = state_of(s);
    PyObject *lines, *res;
    const char *p = b->text + r->off, *end = p + r->len;
    Py_ssize_t n = 1, i = 0;

    if (!st)
        return NULL;
    for (const char *q = p; q < end; q++)
        n += *q == '\n';
    if (!(lines = PyTuple_New(n)))
        return NULL;
    for (;;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        PyObject *l = PyUnicode_DecodeUTF8(p, stop - p, "replace");
        if (!l) {
            Py_DECREF(lines);
            return NULL;
        }
        PyTuple_SET_ITEM(lines, i++, l);
        if (!nl)
            break;
        p = nl + 1;
    }
    res = PyObject_CallFunction(st->reply_cls, "isOs", r->code,
                                r->enhanced[0] ? r->enhanced : NULL, lines,
                                stage_names[kind_stage[r->kind]]);
    Py_DECREF(lines);
    return res;
}

/* The outcome of a job whose replies all came: (refused, reply) or the
 * refusal as an exception instance.  New reference or NULL raised. */
static PyObject *
finished_outcome(Session *s, batch *b, size_t jobi)
{
    job *j = &b->jobs[jobi];
    PyObject *refused = PyDict_New(), *mail_r = NULL, *data_r = NULL, *final_r = NULL;
    PyObject *res = NULL, *extra = NULL;
    int data_code = 0, final_code = 0;
    size_t k;

    if (!refused)
        return NULL;
    for (k = j->first_reply; k != NONE && k < b->nreplies && b->replies[k].job == jobi; k++) {
        const sreply *r = &b->replies[k];
        PyObject *rep;

        if ((r->kind == K_RCPT && (r->code / 100 == 2 || j->mail_ok != 1)) ||
            r->kind == K_RSET || r->kind == K_EMPTY || (r->kind == K_DATA && r->code == 354))
            continue;
        if (!(rep = make_sreply(s, b, r)))
            goto done;
        if (r->kind == K_RCPT) {
            int bad = PyDict_SetItem(refused, PySequence_Fast_GET_ITEM(j->rcpts,
                                     (Py_ssize_t)r->rcpt), rep) < 0;
            Py_DECREF(rep);
            if (bad)
                goto done;
        } else if (r->kind == K_MAIL) {
            mail_r = rep;
        } else if (r->kind == K_DATA) {
            data_r = rep;
            data_code = r->code;
        } else {
            final_r = rep;
            final_code = r->code;
        }
    }
    if (!(extra = Py_BuildValue("{s:O}", "delivered", Py_False)))
        goto done;
    if (j->mail_ok != 1) {
        if (PyDict_SetItemString(extra, "sender", PyTuple_GET_ITEM(j->item, 0)) == 0)
            res = make_exc(s, MX_EXC_SENDER, STG_MAIL, mail_r, extra, "the server refused the sender");
    } else if (!j->accepted) {
        if (PyDict_SetItemString(extra, "replies", refused) == 0)
            res = make_exc(s, MX_EXC_RECIPIENTS, STG_RCPT, NULL, extra,
                           "the server refused every recipient; the message was not sent");
    } else if (data_code) {
        res = make_exc(s, MX_EXC_DATA, STG_DATA, data_r, extra,
                       "the server refused DATA; the message was not sent");
    } else if (!final_r) {
        PyErr_SetString(PyExc_SystemError, "mailexpress: a finished message without a final reply");
    } else if (final_code / 100 == 2) {
        res = PyTuple_Pack(2, refused, final_r);
    } else {
        res = make_exc(s, MX_EXC_DATA, STG_END_OF_DATA, final_r, extra,
                       "the server refused the message at end of data");
    }
done:
    Py_DECREF(refused);
    Py_XDECREF(mail_r);
    Py_XDECREF(data_r);
    Py_XDECREF(final_r);
    Py_XDECREF(extra);
    return res;
}

/* The exception that ended the session (raised by the fail_* helpers, then
 * taken back), or NULL raised. */
static PyObject *
fatal_exception(Session *s, batch *b)
{
    job *j = &b->jobs[b->fail_job];

    switch (b->failed) {
    case F_IO: fail_io(s, b->fail_stage); break;
    case F_421: fail_421(s, b->fail_stage); break;
    case F_PROTOCOL: fail_protocol(s, b->fail_stage, b->why); break;
    case F_SOURCE:
        poison(s, b->why);
        if (j->outcome) {             /* the file reader's own exception */
            PyObject *o = j->outcome;
            j->outcome = NULL;
            return o;
        }
        raise_exc(s, MX_EXC_INPUT, b->fail_stage, NULL, NULL, "%s", b->why);
        break;
    default:
        PyErr_SetString(PyExc_SystemError, "mailexpress: no failure to report");
    }
    return take_raised();
}

/* Outcomes for every job, in order: a list.  NULL raised. */
static PyObject *
batch_outcomes(Session *s, batch *b)
{
    PyObject *list = PyList_New((Py_ssize_t)b->n), *fatal = NULL;
    PyObject *fatal_type;
    size_t i;
    mx_state *st = state_of(s);

    if (!list)
        return NULL;
    if (b->failed && !(fatal = fatal_exception(s, b)))
        goto fail;
    if (!st)
        goto fail;
    fatal_type = fatal && PyObject_IsInstance(fatal, st->exc[MX_EXC_ERROR]) == 1
                     ? (PyObject *)Py_TYPE(fatal) : st->exc[MX_EXC_CONNECTION_LOST];
    for (i = 0; i < b->n; i++) {
        job *j = &b->jobs[i];
        PyObject *o = NULL;

        /* its body may have reached the server whole: only then can the
         * server have taken it.  A 421 answers this job's command in turn
         * and the server closes: nothing of this job or after it was taken */
        int maybe = j->body_done && j->end_off <= b->sent &&
                    !(b->failed == F_421 && i >= b->fail_job);

        if (j->outcome) {
            o = j->outcome;
            j->outcome = NULL;
        } else if (j->finished || (b->failed && job_refused(j))) {
            o = finished_outcome(s, b, i);
        } else if (b->failed && i == b->fail_job) {
            if (PyObject_SetAttrString(fatal, "delivered", maybe ? Py_None : Py_False) < 0 ||
                PyObject_SetAttrString(fatal, "retry_safe", maybe ? Py_False : Py_True) < 0)
                goto fail;
            Py_INCREF(fatal);
            o = fatal;
        } else if (b->failed) {
            PyObject *extra = Py_BuildValue("{s:O,s:O}", "delivered", maybe ? Py_None : Py_False,
                                            "retry_safe", maybe ? Py_False : Py_True);
            if (!extra)
                goto fail;
            if (maybe)
                o = make_exc_cls(fatal_type, STG_END_OF_DATA, NULL, extra,
                                 "the session failed after this message was sent, before the "
                                 "server's final answer: it may or may not have been delivered "
                                 "(%S)", fatal);
            else
                o = make_exc_cls(fatal_type, STG_MAIL, NULL, extra,
                                 "not sent: the session failed before this message went out "
                                 "whole, so the server cannot have taken it; it is safe to "
                                 "send again (%S)", fatal);
            Py_DECREF(extra);
        } else if (!b->stopped) {
            PyErr_SetString(PyExc_SystemError, "mailexpress: a message left without an outcome");
        } else {
            PyObject *extra = Py_BuildValue("{s:O,s:O}", "delivered", Py_False, "retry_safe", Py_True);
            if (!extra)
                goto fail;
            o = make_exc(s, MX_EXC_STATE, STG_MAIL, NULL, extra,
                         "not sent: an earlier message was refused and stop_on_error is set");
            Py_DECREF(extra);
        }
        if (!o)
            goto fail;
        PyList_SET_ITEM(list, (Py_ssize_t)i, o);
    }
    Py_XDECREF(fatal);
    return list;
fail:
    Py_XDECREF(fatal);
    Py_DECREF(list);
    return NULL;
}

/* ---- the methods ------------------------------------------------------------ */

static void
batch_free(batch *b)
{
    size_t i;

    for (i = 0; b->jobs && i < b->n; i++) {
        job *j = &b->jobs[i];
        if (j->have_view)
            PyBuffer_Release(&j->view);
        Py_XDECREF(j->item);
        Py_XDECREF(j->rcpts);
        Py_XDECREF(j->outcome);
        PyMem_RawFree(j->lines);
        PyMem_RawFree(j->ends);
    }
    PyMem_RawFree(b->jobs);
    PyMem_RawFree(b->replies);
    PyMem_RawFree(b->text);
    if (b->fbuf.obj)
        PyBuffer_Release(&b->fbuf);
    Py_XDECREF(b->fobj);
}

/* Runs the three phases over `items` (a list of message tuples); the lock
 * is held by the caller and the session is READY.  A list of outcomes, or
 * NULL raised (out of memory, or a bad argument before anything was sent). */
static PyObject *
send_batch_of(Session *s, PyObject *items, int stop_on_error)
{
    batch b;
    PyObject *res = NULL;
    size_t i;
    int rc;

    memset(&b, 0, sizeof(b));
    b.n = (size_t)PyList_GET_SIZE(items);
    b.cur = b.gate = NONE;
    b.check_desync = 1;
    b.stop_on_error = stop_on_error;
    b.pipelining = (s->caps.ext & MX_EXT_PIPELINING) != 0;
    if (!(b.jobs = PyMem_RawCalloc(b.n ? b.n : 1, sizeof(job)))) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(b.fobj = PyByteArray_FromStringAndSize(NULL, MX_FILE_CHUNK)) ||
        PyObject_GetBuffer(b.fobj, &b.fbuf, PyBUF_WRITABLE) < 0)
        goto done;
    for (i = 0; i < b.n; i++) {
        b.jobs[i].item = Py_NewRef(PyList_GET_ITEM(items, (Py_ssize_t)i));
        b.jobs[i].first_reply = NONE;
        if (prepare_job(s, &b, &b.jobs[i]) < 0)
            goto done;
    }
    b.ts = PyEval_SaveThread();
    rc = run_wire(s, &b);
    if (rc < 0)
        drain(s, &b);
    PyEval_RestoreThread(b.ts);
    if (rc == 0)
        set_state(s, S_READY);
    res = batch_outcomes(s, &b);
done:
    batch_free(&b);
    return res;
}

PyDoc_STRVAR(sendmail_doc,
"send_raw(from_addr, to_addrs, msg, mail_options=(), rcpt_options=())\n"
"    -> (refused, reply)\n\n"
"One whole transaction.  msg is bytes-like or a seekable binary file.\n"
"Adds SIZE=, BODY=8BITMIME and SMTPUTF8 when the server offers them and\n"
"the message needs them; refuses (before sending) non-ASCII addresses the\n"
"server cannot take.  Uses BDAT when CHUNKING is offered and pipelines\n"
"when PIPELINING is.  refused maps each refused recipient to its Reply;\n"
"reply is the server's final answer.  Raises SenderRefused,\n"
"RecipientsRefused (no recipient accepted; the body was not delivered)\n"
"or DataRefused.");

static PyObject *
Session_sendmail(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"from_addr", "to_addrs", "msg", "mail_options",
                             "rcpt_options", NULL};
    PyObject *from, *to, *msg, *mopts = Py_None, *ropts = Py_None;
    PyObject *items = NULL, *outcomes = NULL, *res = NULL, *o;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OO", kwlist, &from, &to,
                                     &msg, &mopts, &ropts))
        return NULL;
    if (!(items = Py_BuildValue("[(OOOOO)]", from, to, msg, mopts, ropts)))
        return NULL;
    if (enter(s, 1) < 0)
        goto release;
    if (need_ready(s, "send_raw") == 0 && (outcomes = send_batch_of(s, items, 0))) {
        o = PyList_GET_ITEM(outcomes, 0);
        if (PyTuple_Check(o))
            res = Py_NewRef(o);
        else
            PyErr_SetObject((PyObject *)Py_TYPE(o), o);
    }
    leave(s);
release:
    Py_DECREF(items);
    Py_XDECREF(outcomes);
    return res;
}

PyDoc_STRVAR(send_many_doc,
"send_many_raw(messages, stop_on_error=False) -> list\n\n"
"Sends each (from_addr, to_addrs, msg[, mail_options[, rcpt_options]]) in\n"
"turn over this session, pipelined across messages when the server allows,\n"
"and returns one outcome per message, in order: (refused, reply) when it\n"
"was accepted, or the exception that says why not.  An exception's\n"
"`delivered` is False when the message certainly was not delivered and\n"
"None when the session failed between sending it and its final answer;\n"
"`retry_safe` is True on those the session failure kept from going out.\n"
"A refused message does not stop the rest unless stop_on_error is true;\n"
"a failed session (connection lost, 421) stops everything after it.");

static PyObject *
Session_send_many(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"messages", "stop_on_error", NULL};
    PyObject *messages, *items, *res = NULL;
    int stop = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p", kwlist, &messages, &stop))
        return NULL;
    if (!(items = PySequence_List(messages)))
        return NULL;
    if (enter(s, 1) == 0) {
        if (need_ready(s, "send_many_raw") == 0)
            res = send_batch_of(s, items, stop);
        leave(s);
    }
    Py_DECREF(items);
    return res;
}

PyDoc_STRVAR(try_sender_doc,
"try_sender(sender, recipient, options=()) -> (mail_reply, rcpt_reply, pipelined)\n\n"
"Asks whether the server would take a message from `sender` to `recipient`\n"
"without sending one: MAIL FROM, RCPT TO, RSET.  With PIPELINING the three\n"
"go in one write and rcpt_reply is the RCPT answer even when MAIL was\n"
"refused (then it is a consequence, typically 503); without, RCPT is sent\n"
"only after an accepted MAIL and rcpt_reply is None otherwise.  The session\n"
"is left with no transaction open.");

static PyObject *
Session_try_sender(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"sender", "recipient", "options", NULL};
    PyObject *sender, *rcpt, *opts = Py_None, *res = NULL;
    PyObject *mail_r = NULL, *rcpt_r = NULL, *rset_r = NULL;
    char buf[2 * (MX_PATH_MAX + 1100) + 16];
    size_t len = 0, n;
    int pipelined;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &sender, &rcpt, &opts))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    if (need_ready(s, "try_sender") < 0)
        goto done;
    pipelined = (s->caps.ext & MX_EXT_PIPELINING) != 0;
    if (format_path(s, "MAIL FROM", sender, opts, NULL, STG_MAIL, buf, sizeof(buf), &n, NULL) < 0)
        goto done;
    len = n;
    if (format_path(s, "RCPT TO", rcpt, NULL, NULL, STG_RCPT, buf + len, sizeof(buf) - len, &n, NULL) < 0)
        goto done;
    if (pipelined) {
        len += n;
        (void)mx_cmd_simple(buf + len, sizeof(buf) - len, &n, "RSET");
        len += n;
        if (send_batch(s, buf, len, TO_MAIL) < 0) {
            fail_io(s, STG_MAIL);
            goto done;
        }
        if (!(mail_r = group_reply(s, STG_MAIL, TO_MAIL)) ||
            !(rcpt_r = group_reply(s, STG_RCPT, TO_RCPT)) ||
            !(rset_r = group_reply(s, STG_RSET, TO_COMMAND)))
            goto done;
    } else {
        char line[MX_PATH_MAX + 1100];
        memcpy(line, buf + len, n);     /* the RCPT line, for later */
        if (send_batch(s, buf, len, TO_MAIL) < 0) {
            fail_io(s, STG_MAIL);
            goto done;
        }
        if (!(mail_r = group_reply(s, STG_MAIL, TO_MAIL)))
            goto done;
        if (s->reply.code / 100 == 2) {
            set_state(s, S_MAIL);
            if (send_batch(s, line, n, TO_RCPT) < 0) {
                fail_io(s, STG_RCPT);
                goto done;
            }
            if (!(rcpt_r = group_reply(s, STG_RCPT, TO_RCPT)))
                goto done;
        }
        (void)mx_cmd_simple(line, sizeof(line), &n, "RSET");
        if (send_batch(s, line, n, TO_COMMAND) < 0) {
            fail_io(s, STG_RSET);
            goto done;
        }
        if (!(rset_r = group_reply(s, STG_RSET, TO_COMMAND)))
            goto done;
    }
    if (s->reply.code / 100 != 2) {
        fail_protocol(s, STG_RSET, "the server refused RSET; the transaction state is unknown");
        goto done;
    }
    set_state(s, S_READY);
    res = Py_BuildValue("(OOO)", mail_r, rcpt_r ? rcpt_r : Py_None, pipelined ? Py_True : Py_False);
done:
    Py_XDECREF(mail_r);
    Py_XDECREF(rcpt_r);
    Py_XDECREF(rset_r);
    leave(s);
    return res;
}

PyDoc_STRVAR(set_deadline_doc,
"set_deadline(seconds) -> None\n\n"
"Bounds everything that follows: no step may end later than `seconds` from\n"
"now (None removes the bound).  Stage timeouts still apply within it.");

static PyObject *
Session_set_deadline(Session *s, PyObject *arg)
{
    double secs;

    if (arg == Py_None) {
        s->deadline = 0;
        Py_RETURN_NONE;
    }
    secs = PyFloat_AsDouble(arg);
    if (secs == -1.0 && PyErr_Occurred())
        return NULL;
    if (!(secs > 0) || secs > 86400.0 * 7) {
        PyErr_SetString(PyExc_ValueError, "deadline must be between 0 and 604800 seconds");
        return NULL;
    }
    s->deadline = mx_now_ms() + (int64_t)(secs * 1000.0 + 0.5);
    Py_RETURN_NONE;
}

/* ---- properties ----------------------------------------------------------- */

static PyObject *
Session_get_state(Session *s, void *c)
{
    (void)c;
    return PyUnicode_FromString(state_names[s->state]);
}

static PyObject *
Session_get_capabilities(Session *s, void *c)
{
    (void)c;
    if (!s->caps_dict)
        return PyDict_New();
    return PyDict_Copy(s->caps_dict);
}

static PyObject *
Session_get_banner(Session *s, void *c)
{
    (void)c;
    return Py_NewRef(s->banner ? s->banner : Py_None);
}

static PyObject *
Session_get_ehlo_reply(Session *s, void *c)
{
    (void)c;
    return Py_NewRef(s->ehlo_reply ? s->ehlo_reply : Py_None);
}

static PyObject *
Session_get_tls_active(Session *s, void *c)
{
    (void)c;
    return PyBool_FromLong(s->ssl != NULL);
}

static PyObject *
Session_get_authenticated(Session *s, void *c)
{
    (void)c;
    return PyBool_FromLong(s->authenticated);
}

static PyObject *
Session_get_esmtp(Session *s, void *c)
{
    (void)c;
    return PyBool_FromLong(s->esmtp);
}

static PyObject *
Session_get_tls_version(Session *s, void *c)
{
    (void)c;
    return Py_NewRef(s->ssl && s->tls_version_s ? s->tls_version_s : Py_None);
}

static PyObject *
Session_get_tls_cipher(Session *s, void *c)
{
    (void)c;
    return Py_NewRef(s->ssl && s->tls_cipher_s ? s->tls_cipher_s : Py_None);
}

static PyObject *
Session_get_peer_certificate(Session *s, void *c)
{
    (void)c;
    return Py_NewRef(s->ssl && s->peer_der ? s->peer_der : Py_None);
}

static PyObject *
Session_get_peer_cert_info(Session *s, void *c)
{
    (void)c;
    if (!s->ssl || !s->peer_info || s->peer_info == Py_None)
        Py_RETURN_NONE;
    return PyDict_Copy(s->peer_info);
}

static PyObject *
Session_get_transcript(Session *s, void *c)
{
    PyObject *list = PyList_New(0), *t = NULL;
    size_t pos = 0, len;
    uint32_t ms;
    char dir;
    const char *text;

    (void)c;
    if (!list)
        return NULL;
    /* written with the GIL released by whatever method runs: the lock */
    if (enter(s, 0) < 0) {
        Py_DECREF(list);
        return NULL;
    }
    while (mx_transcript_next(&s->tr, &pos, &ms, &dir, &text, &len)) {
        t = Py_BuildValue("(kC" "s#)", (unsigned long)ms, (int)dir, text, (Py_ssize_t)len);
        if (!t) {
            /* undecodable server bytes: replace rather than fail */
            PyErr_Clear();
            PyObject *u = PyUnicode_DecodeUTF8(text, (Py_ssize_t)len, "replace");
            t = u ? Py_BuildValue("(kCN)", (unsigned long)ms, (int)dir, u) : NULL;
        }
        if (!t || PyList_Append(list, t) < 0)
            goto fail;
        Py_DECREF(t);
    }
    if (s->tr.dropped) {
        t = Py_BuildValue("(kCN)", (unsigned long)elapsed_ms(s), (int)'*',
                          PyUnicode_FromFormat("%zu transcript entries not kept (limit 1 MiB)",
                                               s->tr.dropped));
        if (!t || PyList_Append(list, t) < 0)
            goto fail;
        Py_DECREF(t);
    }
    leave(s);
    return list;
fail:
    Py_XDECREF(t);
    Py_DECREF(list);
    leave(s);
    return NULL;
}

/* connect() fills the attempts with the GIL released: the lock. */
static PyObject *
Session_get_connect_attempts(Session *s, void *c)
{
    PyObject *list = PyList_New(0);
    int i;

    (void)c;
    if (!list || enter(s, 0) < 0) {
        Py_XDECREF(list);
        return NULL;
    }
    for (i = 0; list && i < s->attempts.n; i++) {
        mx_attempt *a = &s->attempts.a[i];
        PyObject *d = Py_BuildValue("{s:s,s:s,s:N,s:L}", "address", a->addr,
                                    "family", a->family == AF_INET6 ? "IPv6" : "IPv4",
                                    "error", a->sys_errno ? PyUnicode_FromString(strerror(a->sys_errno))
                                                          : Py_NewRef(Py_None),
                                    "ms", (long long)a->ms);
        if (!d || PyList_Append(list, d) < 0) {
            Py_XDECREF(d);
            Py_CLEAR(list);
        } else {
            Py_DECREF(d);
        }
    }
    leave(s);
    return list;
}

static PyObject *
Session_get_resolve_ms(Session *s, void *c)
{
    long long ms;

    (void)c;
    if (enter(s, 0) < 0)
        return NULL;
    ms = (long long)s->attempts.resolve_ms;
    leave(s);
    return PyLong_FromLongLong(ms);
}

static PyObject *
Session_get_peer_address(Session *s, void *c)
{
    (void)c;
    if (!s->peer_addr[0])
        Py_RETURN_NONE;
    return Py_BuildValue("(si)", s->peer_addr, s->peer_port);
}

static PyObject *
Session_get_max_size(Session *s, void *c)
{
    (void)c;
    if (!(s->caps.ext & MX_EXT_SIZE) || !s->caps.size)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(s->caps.size);
}

static PyMethodDef Session_methods[] = {
    {"connect", (PyCFunction)Session_connect, METH_NOARGS, connect_doc},
    {"ehlo", (PyCFunction)(void (*)(void))Session_ehlo, METH_VARARGS | METH_KEYWORDS, ehlo_doc},
    {"starttls", (PyCFunction)Session_starttls, METH_NOARGS, starttls_doc},
    {"login", (PyCFunction)(void (*)(void))Session_login, METH_VARARGS | METH_KEYWORDS, login_doc},
    {"auth_oauth", (PyCFunction)(void (*)(void))Session_auth_oauth, METH_VARARGS | METH_KEYWORDS, auth_oauth_doc},
    {"auth", (PyCFunction)(void (*)(void))Session_auth, METH_VARARGS | METH_KEYWORDS, auth_doc},
    {"mail", (PyCFunction)(void (*)(void))Session_mail, METH_VARARGS | METH_KEYWORDS, mail_doc},
    {"rcpt", (PyCFunction)(void (*)(void))Session_rcpt, METH_VARARGS | METH_KEYWORDS, rcpt_doc},
    {"data", (PyCFunction)Session_data, METH_O, data_doc},
    {"rset", (PyCFunction)Session_rset, METH_NOARGS, "rset() -> Reply"},
    {"noop", (PyCFunction)Session_noop, METH_NOARGS, "noop() -> Reply"},
    {"quit", (PyCFunction)Session_quit, METH_NOARGS, quit_doc},
    {"close", (PyCFunction)Session_close, METH_NOARGS,
     "close() -> None\n\nCloses the connection without QUIT."},
    {"send_raw", (PyCFunction)(void (*)(void))Session_sendmail, METH_VARARGS | METH_KEYWORDS, sendmail_doc},
    {"send_many_raw", (PyCFunction)(void (*)(void))Session_send_many, METH_VARARGS | METH_KEYWORDS, send_many_doc},
    {"set_deadline", (PyCFunction)Session_set_deadline, METH_O, set_deadline_doc},
    {"try_sender", (PyCFunction)(void (*)(void))Session_try_sender, METH_VARARGS | METH_KEYWORDS, try_sender_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Session_getset[] = {
    {"state", (getter)Session_get_state, NULL, "protocol state name", NULL},
    {"capabilities", (getter)Session_get_capabilities, NULL,
     "EHLO keywords (upper case) mapped to their parameters", NULL},
    {"banner", (getter)Session_get_banner, NULL, "the greeting Reply", NULL},
    {"ehlo_reply", (getter)Session_get_ehlo_reply, NULL, "the last EHLO Reply", NULL},
    {"tls_active", (getter)Session_get_tls_active, NULL, "TLS is up", NULL},
    {"authenticated", (getter)Session_get_authenticated, NULL, "AUTH succeeded", NULL},
    {"esmtp", (getter)Session_get_esmtp, NULL, "EHLO (not HELO) was accepted", NULL},
    {"tls_version", (getter)Session_get_tls_version, NULL, "e.g. 'TLSv1.3'", NULL},
    {"tls_cipher", (getter)Session_get_tls_cipher, NULL, "negotiated cipher", NULL},
    {"peer_certificate", (getter)Session_get_peer_certificate, NULL, "DER bytes", NULL},
    {"peer_cert_info", (getter)Session_get_peer_cert_info, NULL,
     "subject, issuer, validity, SANs, verify result", NULL},
    {"transcript", (getter)Session_get_transcript, NULL,
     "list of (ms, direction, text); credentials redacted at the source", NULL},
    {"connect_attempts", (getter)Session_get_connect_attempts, NULL,
     "the addresses tried by connect()", NULL},
    {"peer_address", (getter)Session_get_peer_address, NULL, "(address, port)", NULL},
    {"resolve_ms", (getter)Session_get_resolve_ms, NULL, "time the name lookup took", NULL},
    {"max_size", (getter)Session_get_max_size, NULL, "SIZE limit or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Session_slots[] = {
    {Py_tp_doc, "Session(host, port=587, *, security='starttls', ...)\n\n"
                "One SMTP connection.  Low-level: see mailexpress.connect()."},
    {Py_tp_new, Session_new},
    {Py_tp_init, Session_init},
    {Py_tp_dealloc, Session_dealloc},
    {Py_tp_traverse, Session_traverse},
    {Py_tp_clear, Session_clear},
    {Py_tp_methods, Session_methods},
    {Py_tp_getset, Session_getset},
    {0, NULL},
};

static PyType_Spec Session_spec = {
    .name = "mailexpress._core.Session",
    .basicsize = sizeof(Session),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Session_slots,
};

int
mx_session_add_type(PyObject *module, mx_state *st)
{
    PyObject *names;
    int i;

    st->session_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Session_spec, NULL);
    if (!st->session_type)
        return -1;
    if (PyModule_AddType(module, st->session_type) < 0)
        return -1;
    names = PyTuple_New(TO_COUNT);
    if (!names)
        return -1;
    for (i = 0; i < TO_COUNT; i++) {
        PyObject *n = PyUnicode_FromString(timeout_names[i]);
        if (!n) {
            Py_DECREF(names);
            return -1;
        }
        PyTuple_SET_ITEM(names, i, n);
    }
    if (PyModule_AddObject(module, "TIMEOUT_STAGES", names) < 0) {
        Py_DECREF(names);
        return -1;
    }
    {
        PyObject *d = PyDict_New();
        for (i = 0; d && i < TO_COUNT; i++) {
            PyObject *v = PyFloat_FromDouble((double)timeout_defaults_ms[i] / 1000.0);
            if (!v || PyDict_SetItemString(d, timeout_names[i], v) < 0) {
                Py_XDECREF(v);
                Py_CLEAR(d);
                break;
            }
            Py_DECREF(v);
        }
        if (!d || PyModule_AddObject(module, "DEFAULT_TIMEOUTS", d) < 0) {
            Py_XDECREF(d);
            return -1;
        }
    }
    return 0;
}
