/* session_auth.c - the AUTH methods (login, auth_oauth, auth): the loop is
 * proto/auth.c's; here the checks and the Python side. */
#include "session.h"

#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "sasl.h"


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
    if (secret && !s->c.ssl && !s->allow_insecure_auth) {
        raise_exc(s, MX_EXC_INSECURE_AUTH, STG_AUTH, NULL, NULL,
                  "refusing to send %s without TLS; use "
                  "security='starttls' or 'ssl', or set allow_insecure_auth=True "
                  "if the network is trusted", what);
        return -1;
    }
    return 0;
}

/* AuthError for the refusal in s->c.reply (4xx: transient), carrying
 * `mechanism` and `oauth_challenge` (the server's decoded JSON, or None). */
static void
auth_refused(Session *s, const mx_auth_mech *m)
{
    PyObject *r, *extra = NULL, *json = NULL;
    char note[300] = "";

    if (mx_verdict_of(MX_AFTER_AUTH, s->c.reply->code) == MX_V_CLOSING) {
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
        if (s->c.reply->code < 500)
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
    mx_auth_conv c = {s, auth_conv_exchange, s->c.reply};
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

/* Runs an exchange that mx_auth_prepare_* made ready (rc 0), or raises the
 * InputError it found (rc > 0; rc < 0 is already raised); frees m. */
static PyObject *
run_prepared(Session *s, mx_auth_mech *m, int rc, const char *why)
{
    PyObject *res = NULL;

    if (rc > 0)
        raise_exc(s, MX_EXC_INPUT, STG_AUTH, NULL, NULL, "%s; nothing was sent", why);
    else if (rc == 0)
        res = run_auth(s, m);
    mx_auth_mech_free(m);
    return res;
}

MX_DOC(login_doc,
"login(user, password, mechanism=None) -> Reply\n\n"
"Authenticates with AUTH PLAIN or LOGIN: the given mechanism, or the first\n"
"of PLAIN, LOGIN that the server offers and auth_mechanisms allows.\n"
"Without TLS it refuses (InsecureAuthError) unless the session was made\n"
"with allow_insecure_auth=True.  The password is wiped from the C buffers\n"
"after use and never enters the transcript.");

PyObject *
Session_login(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"user", "password", "mechanism", NULL};
    PyObject *user, *pass, *mech_obj = Py_None, *res = NULL;
    const char *u, *p;
    Py_ssize_t ulen, plen;
    unsigned mech = 0, usable;
    mx_auth_mech m;
    char why[160];
    int rc;

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
                      "the server offers no AUTH%s", s->c.ssl ? "" :
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
    rc = mx_auth_prepare_basic(&m, mech == MX_AUTH_LOGIN, u, (size_t)ulen, p, (size_t)plen,
                               why, sizeof(why));
    res = run_prepared(s, &m, rc, why);
done:
    leave(s);
    return res;
}

MX_DOC(auth_oauth_doc,
"auth_oauth(user, token, mechanism='XOAUTH2', *, host=None, port=None) -> Reply\n\n"
"Authenticates with an OAuth 2.0 bearer token: SASL XOAUTH2\n"
"(user=<user>^Aauth=Bearer <token>^A^A) or OAUTHBEARER (RFC 7628; host and\n"
"port default to the session's server name and port).  The message goes\n"
"on the AUTH line when that stays within 2048 octets (Postfix's\n"
"line_length_limit; RFC 4954 would allow 12288), else after the 334.  A 334 carrying the server's JSON error is\n"
"answered as RFC 7628 says, and the AuthError raised for the final reply\n"
"has the decoded JSON in oauth_challenge.  Refused without TLS\n"
"(InsecureAuthError) unless allow_insecure_auth=True.  The token is\n"
"redacted in the transcript and wiped from the C buffers.");

PyObject *
Session_auth_oauth(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"user", "token", "mechanism", "host", "port", NULL};
    PyObject *user, *token, *mech_obj = NULL, *host_obj = Py_None, *port_obj = Py_None;
    PyObject *res = NULL;
    const char *u, *t, *h, *mn = "XOAUTH2";
    Py_ssize_t ulen, tlen, hlen = 0;
    long port = 0;
    int bearer, rc;
    mx_auth_mech m;
    char why[160];

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
    rc = mx_auth_prepare_oauth(&m, bearer, u, (size_t)ulen, h, (size_t)hlen, (unsigned)port,
                               t, (size_t)tlen, why, sizeof(why));
    res = run_prepared(s, &m, rc, why);
done:
    leave(s);
    return res;
}

MX_DOC(auth_doc,
"auth(mechanism, step, *, secret=True) -> Reply\n\n"
"The generic SASL exchange, for mechanisms implemented in Python (NTLM,\n"
"GSSAPI): step(None) gives the initial response (bytes, or None for\n"
"none), then step(challenge) is called with each decoded 334 challenge and\n"
"its bytes are sent (None: an empty line).  If step raises, the exchange is\n"
"cancelled with '*' and the step's exception propagates.  Messages of up\n"
"to 64 KiB; the GIL is held only inside step.  secret=True (the mechanism\n"
"exposes a secret) refuses without TLS unless allow_insecure_auth=True.\n"
"Responses are redacted in the transcript.");

PyObject *
Session_auth(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"mechanism", "step", "secret", NULL};
    PyObject *mech_obj, *step_obj, *res = NULL;
    const char *mn;
    Py_ssize_t mlen = 0;
    int secret = 1;
    char why[160];
    mx_auth_mech m;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|$p", kwlist, &mech_obj, &step_obj, &secret))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    mn = PyUnicode_Check(mech_obj) ? PyUnicode_AsUTF8AndSize(mech_obj, &mlen) : NULL;
    if (!mn)
        PyErr_Clear();
    if (mx_auth_prepare_python(&m, mn ? mn : "", (size_t)mlen, step_obj, why, sizeof(why)) != 0)
        raise_exc(s, MX_EXC_INPUT, STG_AUTH, NULL, NULL, "%s, not %R", why, mech_obj);
    else if (!PyCallable_Check(step_obj))
        raise_exc(s, MX_EXC_INPUT, STG_AUTH, NULL, NULL,
                  "step must be a callable taking bytes or None, not %s",
                  Py_TYPE(step_obj)->tp_name);
    else if (auth_precheck(s, secret, "credentials") == 0)
        res = run_auth(s, &m);
    mx_auth_mech_free(&m);
    leave(s);
    return res;
}

