/* commands.c - the Session's step methods off the send engine: connect,
 * ehlo, starttls, noop, quit, close, set_deadline (mail, rcpt, data, rset
 * and try_sender run on the engine: steps.c).  What each reply means
 * is judged by judge() (errors.c) on mx_verdict_of (proto/verdict.c). */
#include "session.h"

#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "tls.h"


/* How long a plain connection waits for the first byte of the greeting
 * before it asks, on a second connection, whether the port speaks implicit
 * TLS (issue 14): a TLS port never greets, and waiting out the banner
 * timeout (5 min by default) to report "no greeting" hides the fix.  Real
 * SMTP servers greet within milliseconds, or after a deliberate pause
 * (Postfix postscreen's greet wait is 6 s), and such a pause is still waited
 * out in full: the probe only ends the wait when the port answers TLS. */
#define MX_BANNER_PROBE_AFTER_MS 3000
/* The probe's own bound: connect, ClientHello, the first bytes back. */
#define MX_BANNER_PROBE_MS 1500

/* Reads the greeting (banner timeout).  Not over TLS: when nothing came
 * within MX_BANNER_PROBE_AFTER_MS, probes the port (mx_tls_probe); a port
 * that answers TLS ends the wait with MX_E_CONNECT, wrong_mode SSL.  All
 * with the GIL released.  0, or -1 with s->c.err set. */
static int
await_banner(Session *s)
{
    int64_t full = deadline_for(s, TO_BANNER);
    int rc = 0, tls = 0;

    if (s->security == SEC_SSL)
        return recv_only(s, TO_BANNER);
    Py_BEGIN_ALLOW_THREADS
    {
        int64_t early = mx_now_ms() + MX_BANNER_PROBE_AFTER_MS;
        mx_error werr;

        if ((!full || early < full) &&
            mx_net_wait(s->c.fd, POLLIN, early, &werr) < 0 && werr.kind == MX_E_TIMEOUT) {
            int64_t pdl = mx_now_ms() + MX_BANNER_PROBE_MS;
            tls = mx_tls_probe(s->c.fd, s->server_name, full && full < pdl ? full : pdl);
        }
        if (!tls)
            rc = mx_conn_recv_reply(&s->c, full);
    }
    Py_END_ALLOW_THREADS
    if (tls) {
        mx_error_set(&s->c.err, MX_E_CONNECT, 0,
                     "no greeting after %d s, and the port answers a TLS ClientHello: "
                     "this port speaks implicit TLS (SMTPS), not plain SMTP first: "
                     "set security = 'ssl' (port 465), or use the port that offers "
                     "STARTTLS (587)", MX_BANNER_PROBE_AFTER_MS / 1000);
        s->c.err.wrong_mode = MX_MODE_SSL;
        mx_conn_recordf(&s->c, MX_TR_INFO, "no greeting; the port answers TLS (implicit TLS)");
        return -1;
    }
    return rc;
}

MX_DOC(connect_doc,
"connect() -> Reply\n\n"
"Resolves the host, tries each address in order, runs the TLS handshake\n"
"for security='ssl', and reads the greeting.  Raises ConnectError,\n"
"TimeoutError, TLSError or CertificateError.");

PyObject *
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
    s->c.t0 = mx_now_ms();
    mx_conn_recordf(&s->c, MX_TR_INFO, "connecting to %s port %s", s->host, s->port);
    dl = deadline_for(s, TO_CONNECT);
    Py_BEGIN_ALLOW_THREADS
    fd = mx_net_connect(s->host, s->port, dl, &s->attempts, &s->c.err);
    Py_END_ALLOW_THREADS
    if (fd < 0) {
        fail_io(s, STG_CONNECT);
        goto done;
    }
    s->c.fd = fd;
    mx_net_peer(fd, s->peer_addr, sizeof(s->peer_addr), &s->peer_port);
    mx_conn_recordf(&s->c, MX_TR_INFO, "connected to %s port %d", s->peer_addr, s->peer_port);
    if (s->security == SEC_SSL && handshake(s, 1) < 0) {
        fail_io(s, STG_TLS);
        goto done;
    }
    if (await_banner(s) < 0) {
        fail_io(s, STG_CONNECT);
        goto done;
    }
    if (s->c.reply->code != 220) {
        PyObject *r = make_reply(s, STG_CONNECT);
        if (!r)
            goto done;
        poison(s, "the server refused the connection");
        raise_exc(s, mx_verdict_of(MX_AFTER_GREETING, s->c.reply->code) == MX_V_CLOSING
                         ? MX_EXC_SERVICE_UNAVAILABLE : MX_EXC_CONNECT,
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

/* Builds the capability dict of the EHLO reply in s->c.reply-> */
static int
take_capabilities(Session *s)
{
    PyObject *d = PyDict_New();
    size_t i;

    if (!d)
        return -1;
    mx_ehlo_parse(s->c.reply, &s->caps);
    for (i = 1; i < s->c.reply->nlines; i++) {
        const char *line = s->c.reply->text + s->c.reply->line_off[i], *params;
        size_t kwlen, plen, j;
        char kwbuf[128];
        PyObject *v;

        mx_ehlo_split(line, s->c.reply->line_len[i], &kwlen, &params, &plen);
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
        size_t mcap = s->c.reply->text_len + s->c.reply->nlines + 1;   /* names, spaces, NUL */
        char *mechs = PyMem_Malloc(mcap);
        size_t n;
        PyObject *v;
        if (!mechs) {
            Py_DECREF(d);
            PyErr_NoMemory();
            return -1;
        }
        n = mx_ehlo_auth_list(s->c.reply, mechs, mcap);
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
    mx_verdict v;

    if (mx_cmd_hello(cmd, sizeof(cmd), &len, "EHLO", name, strlen(name)) != MX_CMD_OK)
        return raise_exc(s, MX_EXC_INPUT, STG_EHLO, NULL, NULL,
                         "ehlo name %s is not a valid domain", name);
    if (exchange(s, cmd, len, NULL, TO_EHLO) < 0)
        return fail_io(s, STG_EHLO);
    if (judge(s, MX_AFTER_EHLO, STG_EHLO, &v) < 0)
        return NULL;
    if (s->c.reply->code == 250) {
        r = make_reply(s, STG_EHLO);
        if (!r || take_capabilities(s) < 0) {
            Py_XDECREF(r);
            return NULL;
        }
        s->esmtp = 1;
        Py_XSETREF(s->ehlo_reply, Py_NewRef(r));
        s->txn_open = 0;           /* EHLO resets the transaction (RFC 5321 §4.1.4) */
        set_state(s, S_READY);
        return r;
    }
    if (s->c.reply->code >= 500 && s->helo_fallback) {
        (void)mx_cmd_hello(cmd, sizeof(cmd), &len, "HELO", name, strlen(name));
        if (exchange(s, cmd, len, NULL, TO_EHLO) < 0)
            return fail_io(s, STG_EHLO);
        if (judge(s, MX_AFTER_EHLO, STG_EHLO, &v) < 0)
            return NULL;
        if (s->c.reply->code == 250) {
            memset(&s->caps, 0, sizeof(s->caps));
            Py_XSETREF(s->caps_dict, PyDict_New());
            if (!s->caps_dict)
                return NULL;
            s->esmtp = 0;
            r = make_reply(s, STG_EHLO);
            Py_XSETREF(s->ehlo_reply, r ? Py_NewRef(r) : NULL);
            if (r) {
                s->txn_open = 0;
                set_state(s, S_READY);
            }
            return r;
        }
    }
    return fail_reply(s, MX_EXC_REFUSED, STG_EHLO,
                      s->helo_fallback ? "the server refused EHLO and HELO"
                                       : "the server refused EHLO (HELO fallback "
                                         "is off: TLS or authentication is required)");
}

MX_DOC(ehlo_doc,
"ehlo(name=None) -> Reply\n\n"
"Sends EHLO and reads the capabilities.  Falls back to HELO only when the\n"
"session was made with helo_fallback=True.");

PyObject *
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
int
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
int
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

MX_DOC(starttls_doc,
"starttls() -> Reply\n\n"
"Upgrades the connection with STARTTLS (RFC 3207), verifies the server,\n"
"forgets everything learnt before TLS and sends EHLO again.  Returns the\n"
"220 reply.  Raises TLSError when the server does not offer or refuses\n"
"STARTTLS, ProtocolError when bytes arrive between the 220 and the\n"
"handshake (response injection), CertificateError when verification fails.");

PyObject *
Session_starttls(Session *s, PyObject *unused)
{
    PyObject *res = NULL, *r = NULL;
    char cmd[16];
    size_t len;
    mx_verdict v;

    (void)unused;
    if (enter(s, 1) < 0)
        return NULL;
    if (s->c.ssl) {
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
    if (judge(s, MX_AFTER_STARTTLS, STG_STARTTLS, &v) < 0)
        goto done;
    if (s->c.reply->code != 220) {
        fail_reply(s, MX_EXC_TLS, STG_STARTTLS,
                   "the server refused STARTTLS; nothing was sent in the clear");
        goto done;
    }
    r = make_reply(s, STG_STARTTLS);
    if (!r)
        goto done;
    if (s->c.rstart < s->c.rend) {   /* not mx_conn_in_step: OpenSSL holds nothing yet */
        char why[200];
        snprintf(why, sizeof(why),
                 "%zu bytes arrived after the 220 to STARTTLS, before the TLS "
                 "handshake (response injection?); they were discarded",
                 s->c.rend - s->c.rstart);
        poison(s, why);
        raise_exc(s, MX_EXC_PROTOCOL, STG_STARTTLS, r, NULL, "STARTTLS: %s", why);
        goto done;
    }
    if (handshake(s, 0) < 0) {
        fail_io(s, STG_STARTTLS);
        goto done;
    }
    /* RFC 3207 §4.2: forget all knowledge obtained before TLS */
    memset(&s->caps, 0, sizeof(s->caps));
    Py_CLEAR(s->caps_dict);
    Py_CLEAR(s->ehlo_reply);
    s->esmtp = 0;
    s->authenticated = 0;
    mx_reply_parser_init(s->c.parser);
    s->c.rstart = s->c.rend = 0;
    set_state(s, S_CONNECTED);
    if (ensure_ehlo(s) < 0)
        goto done;
    res = Py_NewRef(r);
done:
    Py_XDECREF(r);
    leave(s);
    return res;
}

/* Formats MAIL/RCPT with the address and params from Python; -1 raised. */
int
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

/* A simple command whose reply is returned as is. */
static PyObject *
simple_command(Session *s, const char *verb, stage stg, timeout_key k)
{
    char cmd[16];
    size_t len;
    PyObject *res = NULL;
    mx_verdict v;

    if (enter(s, 1) < 0)
        return NULL;
    (void)mx_cmd_simple(cmd, sizeof(cmd), &len, verb);
    if (exchange(s, cmd, len, NULL, k) < 0) {
        fail_io(s, stg);
        goto done;
    }
    if (judge(s, MX_AFTER_NOOP, stg, &v) < 0)
        goto done;
    res = make_reply(s, stg);
done:
    leave(s);
    return res;
}

PyObject *
Session_noop(Session *s, PyObject *unused)
{
    (void)unused;
    return simple_command(s, "NOOP", STG_NOOP, TO_COMMAND);
}

MX_DOC(quit_doc,
"quit() -> Reply or None\n\n"
"Sends QUIT and closes the connection.  Returns the server's reply, or None\n"
"when the session was not open; a failure while quitting still closes.");

PyObject *
Session_quit(Session *s, PyObject *unused)
{
    char cmd[8];
    size_t len;
    PyObject *res = NULL;

    (void)unused;
    if (enter(s, 0) < 0)
        return NULL;
    if (s->c.fd < 0 || s->state == S_ERROR || s->state == S_CLOSED || s->state == S_NEW) {
        mx_conn_drop(&s->c);
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
    mx_conn_drop(&s->c);
    set_state(s, S_CLOSED);
done:
    leave(s);
    return res;
}

PyObject *
Session_close(Session *s, PyObject *unused)
{
    (void)unused;
    if (enter(s, 0) < 0)
        return NULL;
    mx_conn_drop(&s->c);
    if (s->state != S_ERROR)
        set_state(s, S_CLOSED);
    leave(s);
    Py_RETURN_NONE;
}

MX_DOC(set_deadline_doc,
"set_deadline(seconds) -> None\n\n"
"Bounds everything that follows: no step may end later than `seconds` from\n"
"now (None removes the bound).  Stage timeouts still apply within it.");

PyObject *
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

