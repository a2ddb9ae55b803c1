/* session.h - private to csrc/py/: the Session object and what its files
 * share.  The type and its getters are in session.c; the command methods
 * off the engine (connect, ehlo, starttls, noop, quit) in commands.c, AUTH
 * in session_auth.c; the send engine is pure (proto/engine.c), driven by
 * drive.c, with send.c (send_raw, send_many_raw: prepare, outcomes) and
 * steps.c (mail, rcpt, data, rset, try_sender) on it; failures become
 * exceptions in errors.c; the TLS context in tlsctx.c; the lock and the
 * GIL-released steps in wire.c.
 *
 * Rules kept here:
 * - Python objects are touched only with the GIL held; every blocking call
 *   (connect, read, write, handshake) runs with the GIL released and works
 *   on C data owned by the session alone (s->c, io/conn.h).
 * - Each method first takes the session's own lock without waiting: a second
 *   thread gets ConcurrentUseError instead of interleaving on the wire.
 * - The protocol state changes in set_state() only.  After a failure that
 *   leaves the connection in an unknown state (I/O error, timeout, protocol
 *   violation, 421) the state is ERROR for good and the socket is closed.
 * - What a reply means after a command is decided in one place:
 *   mx_verdict_of() (proto/verdict.c); judge() maps it to exceptions.
 */
#ifndef MX_PY_SESSION_H
#define MX_PY_SESSION_H

#include "module.h"

#include <stdint.h>

#include <openssl/ssl.h>

#include "cmd.h"
#include "conn.h"
#include "ehlo.h"
#include "net.h"
#include "tls.h"
#include "verdict.h"

/* A method docstring shared between files. */
#define MX_DOC(name, str) const char name[] = PyDoc_STR(str)

typedef enum {
    STG_CONNECT, STG_TLS, STG_EHLO, STG_STARTTLS, STG_AUTH, STG_MAIL,
    STG_RCPT, STG_DATA, STG_END_OF_DATA, STG_RSET, STG_NOOP, STG_QUIT,
    STG_COUNT
} stage;


/* Timeouts, in the order of timeout_names.  Defaults follow RFC 5321
 * §4.5.3.2 where it gives one (initial 220: 5 min; MAIL, RCPT: 5 min; DATA
 * initiation: 2 min; data block: 3 min; DATA termination: 10 min). */
typedef enum {
    TO_CONNECT, TO_BANNER, TO_TLS, TO_EHLO, TO_STARTTLS, TO_AUTH, TO_MAIL,
    TO_RCPT, TO_DATA, TO_DATA_BLOCK, TO_END_OF_DATA, TO_COMMAND, TO_QUIT,
    TO_COUNT
} timeout_key;



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


enum { SEC_STARTTLS, SEC_SSL, SEC_NONE };

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    sstate state;
    int txn_open;                /* a refused BDAT LAST may have left the server's
                                  * transaction open: the next MAIL, in any
                                  * later call, goes behind an RSET (engine guard) */
    char failure[768];           /* why the state is ERROR */

    /* settings */
    char *host, *server_name, *ehlo_name, *ca_file, *cert_file, *key_file;
    char port[8];
    int security, verify, min_tls, allow_insecure_auth, helo_fallback;
    unsigned auth_allowed;
    int64_t timeout_ms[TO_COUNT];   /* < 0: none */
    int64_t deadline;            /* absolute, mx_now_ms(); 0 = none */
    int deadline_hit;            /* the last timeout was the overall deadline */

    /* connection: written with the GIL released; read by getters only
     * under the lock */
    mx_conn c;
    mx_tls_ctx *ctx;             /* one reference; shared: tls_context= */
    mx_attempts attempts;

    /* What the getters read without the lock: written only with the GIL
     * and the lock held, never while a method runs with the GIL released. */
    char peer_addr[64];
    int peer_port;
    int esmtp, authenticated;
    mx_caps caps;
    PyObject *caps_dict;         /* {KEYWORD: params}; a fresh dict per EHLO */
    PyObject *banner;            /* Reply */
    PyObject *ehlo_reply;        /* Reply */
    /* TLS facts taken once after the handshake: the SSL object itself is in
     * use by a send with the GIL released (and replaces its SSL_SESSION when
     * a TLS 1.3 ticket arrives), so no getter may touch it. */
    PyObject *tls_version_s, *tls_cipher_s;   /* str */
    PyObject *peer_der;          /* bytes or None */
    PyObject *peer_info;         /* dict or None */
    int tls_resumed;             /* the handshake resumed a cached session */
} Session;

extern const char *const stage_names[STG_COUNT];
extern const char *const timeout_names[TO_COUNT];
extern const int64_t timeout_defaults_ms[TO_COUNT];
extern const char *const state_names[S_COUNT];

/* wire.c: the lock, the state, steps with the GIL released */
void set_state(Session *s, sstate next);
int64_t deadline_for(Session *s, timeout_key k);
int enter(Session *s, int need_connection);
void leave(Session *s);
int exchange(Session *s, const char *line, size_t len, const char *shown, timeout_key k);
int send_lines(Session *s, const char *buf, size_t len, timeout_key k);
int recv_only(Session *s, timeout_key k);

/* errors.c: replies and exceptions */
mx_state *state_of(Session *s);
PyObject *make_reply(Session *s, stage stg);
PyObject *make_exc(Session *s, mx_exc exc, stage stg, PyObject *reply, PyObject *extra,
                   const char *fmt, ...);
PyObject *make_exc_cls(PyObject *cls, stage stg, PyObject *reply, PyObject *extra,
                       const char *fmt, ...);
PyObject *raise_exc(Session *s, mx_exc exc, stage stg, PyObject *reply, PyObject *extra,
                    const char *fmt, ...);
PyObject *take_raised(void);
void poison(Session *s, const char *why);
PyObject *fail_io(Session *s, stage stg);
PyObject *fail_421(Session *s, stage stg);
PyObject *fail_reply(Session *s, mx_exc exc, stage stg, const char *what);
PyObject *fail_protocol(Session *s, stage stg, const char *what);
int judge(Session *s, mx_after after, stage stg, mx_verdict *v);
const char *arg_utf8(Session *s, PyObject *obj, const char *field,
                     mx_cmd_status (*check)(const char *, size_t), Py_ssize_t *len,
                     stage stg);
int is_ascii(const char *p, Py_ssize_t n);

/* session.c: construction */
char *dup_opt(PyObject *o, const char *field, int *bad);

/* tlsctx.c */
int ensure_ctx(Session *s, stage stg);
int handshake(Session *s, int implicit);

/* commands.c */
int ensure_ehlo(Session *s);
int need_ready(Session *s, const char *what);
int format_path(Session *s, const char *verb, PyObject *addr, PyObject *params,
                const char *extra, stage stg, char *out, size_t cap, size_t *len,
                int *non_ascii);

/* the methods, for the type's table in session.c */
#define MX_METHOD(name) PyObject *name(Session *s, PyObject *args, PyObject *kw)
#define MX_METHOD_NOARGS(name) PyObject *name(Session *s, PyObject *unused)
MX_METHOD_NOARGS(Session_connect);
MX_METHOD(Session_ehlo);
MX_METHOD_NOARGS(Session_starttls);
MX_METHOD(Session_login);
MX_METHOD(Session_auth_oauth);
MX_METHOD(Session_auth);
MX_METHOD(Session_mail);
MX_METHOD(Session_rcpt);
PyObject *Session_data(Session *s, PyObject *arg);
MX_METHOD_NOARGS(Session_rset);
MX_METHOD_NOARGS(Session_noop);
MX_METHOD_NOARGS(Session_quit);
MX_METHOD_NOARGS(Session_close);
MX_METHOD(Session_sendmail);
MX_METHOD(Session_send_many);
MX_METHOD(Session_send_records);
MX_METHOD(Session_try_sender);
PyObject *Session_set_deadline(Session *s, PyObject *arg);
extern const char connect_doc[], ehlo_doc[], starttls_doc[], login_doc[], auth_oauth_doc[],
    auth_doc[], mail_doc[], rcpt_doc[], data_doc[], quit_doc[], sendmail_doc[],
    send_many_doc[], send_records_doc[], try_sender_doc[], set_deadline_doc[];

#endif
