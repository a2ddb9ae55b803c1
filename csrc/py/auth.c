/* auth.c - the SASL exchange of AUTH and the mechanisms' steps; see auth.h. */
#include "auth.h"

#include <stdio.h>
#include <string.h>

#include "cmd.h"
#include "sasl.h"
#include "verdict.h"

/* ---- secret buffers -------------------------------------------------------- */

int
mx_abuf_reserve(mx_abuf *b, size_t n)
{
    mx_wipe(b->p, b->cap);
    b->len = 0;
    if (n <= b->cap && b->p)
        return 0;
    PyMem_RawFree(b->p);
    b->cap = 0;
    b->p = PyMem_RawMalloc(n ? n : 1);
    if (!b->p) {
        PyErr_NoMemory();
        return -1;
    }
    b->cap = n ? n : 1;
    return 0;
}

int
mx_abuf_set(mx_abuf *b, const void *p, size_t n)
{
    if (mx_abuf_reserve(b, n) < 0)
        return -1;
    if (n)
        memcpy(b->p, p, n);
    b->len = n;
    return 0;
}

void
mx_abuf_free(mx_abuf *b)
{
    mx_wipe(b->p, b->cap);
    PyMem_RawFree(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void
mx_auth_mech_init(mx_auth_mech *m, int kind, const char *name)
{
    memset(m, 0, sizeof(*m));
    m->kind = kind;
    snprintf(m->name, sizeof(m->name), "%s", name);
}

void
mx_auth_mech_free(mx_auth_mech *m)
{
    mx_abuf_free(&m->first);
    mx_abuf_free(&m->second);
    mx_abuf_free(&m->challenge);
}

int
mx_auth_prepare_basic(mx_auth_mech *m, int login, const char *user, size_t ulen,
                      const char *pass, size_t plen, char *why, size_t whycap)
{
    mx_sasl_status st = MX_SASL_OK;

    mx_auth_mech_init(m, login ? MX_MECH_LOGIN : MX_MECH_PLAIN, login ? "LOGIN" : "PLAIN");
    /* LOGIN's challenges are "Username:" / "Password:" */
    m->challenge_max = MX_SASL_CHALLENGE_MAX;
    if (login) {
        if (ulen > MX_SASL_FIELD_MAX || plen > MX_SASL_FIELD_MAX)
            st = MX_SASL_E_TOO_LONG;
        else if (mx_abuf_set(&m->first, user, ulen) < 0 ||
                 mx_abuf_set(&m->second, pass, plen) < 0)
            return -1;
    } else {
        if (mx_abuf_reserve(&m->first, 3 * MX_SASL_FIELD_MAX + 2) < 0)
            return -1;
        st = mx_sasl_plain_raw("", 0, user, ulen, pass, plen, m->first.p, m->first.cap,
                               &m->first.len);
    }
    if (st == MX_SASL_OK)
        return 0;
    snprintf(why, whycap, "username or password %s", mx_sasl_strerror(st));
    return 1;
}

int
mx_auth_prepare_oauth(mx_auth_mech *m, int bearer, const char *user, size_t ulen,
                      const char *host, size_t hlen, unsigned port, const char *token,
                      size_t tlen, char *why, size_t whycap)
{
    static const char *const fields[3] = {"user", "host", "token"};
    mx_sasl_status st[3];
    int f;

    mx_auth_mech_init(m, MX_MECH_OAUTH, bearer ? "OAUTHBEARER" : "XOAUTH2");
    m->bearer = bearer;
    /* each field on its own, so that the error names it */
    st[0] = mx_sasl_check_field(user, ulen);
    st[1] = mx_sasl_check_field(host, hlen);
    st[2] = mx_sasl_check_token(token, tlen);
    for (f = 0; f < 3; f++) {
        if (st[f] == MX_SASL_OK)
            continue;
        snprintf(why, whycap, "%s %s", fields[f],
                 st[f] != MX_SASL_E_TOO_LONG ? mx_sasl_strerror(st[f])
                 : f < 2 ? "is longer than 255 octets" : "is longer than 65536 octets");
        return 1;
    }
    if (mx_abuf_reserve(&m->first, mx_sasl_oauth_size(ulen, hlen, tlen)) < 0)
        return -1;
    if (bearer)
        st[0] = mx_sasl_oauthbearer(user, ulen, host, hlen, port, token, tlen,
                                    m->first.p, m->first.cap, &m->first.len);
    else
        st[0] = mx_sasl_xoauth2(user, ulen, token, tlen, m->first.p, m->first.cap,
                                &m->first.len);
    if (st[0] == MX_SASL_OK)
        return 0;
    snprintf(why, whycap, "the OAuth message %s", mx_sasl_strerror(st[0]));
    return 1;
}

int
mx_auth_prepare_python(mx_auth_mech *m, const char *name, size_t nlen, PyObject *step,
                       char *why, size_t whycap)
{
    char upper[MX_MECH_NAME_MAX + 1];
    size_t i;

    mx_auth_mech_init(m, MX_MECH_PYTHON, "");
    for (i = 0; i < nlen && nlen <= MX_MECH_NAME_MAX; i++) {
        char c = name[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        if (!((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            break;
        upper[i] = c;
    }
    if (nlen == 0 || nlen > MX_MECH_NAME_MAX || i != nlen) {
        snprintf(why, whycap, "mechanism is not a SASL mechanism name "
                 "(1-20 of A-Z, 0-9, '-', '_')");
        return 1;
    }
    upper[nlen] = '\0';
    memcpy(m->name, upper, nlen + 1);
    m->step = step;
    return 0;
}

/* ---- the mechanisms' steps --------------------------------------------------- */

/* The Python step: step(None) first, then step(challenge bytes). */
static mx_step_rc
python_step(mx_auth_mech *m, const unsigned char *chal, size_t clen, int initial)
{
    PyObject *arg, *res;
    mx_step_rc rc = MX_STEP_ERROR;

    if (initial)
        arg = Py_NewRef(Py_None);
    else if (!(arg = PyBytes_FromStringAndSize((const char *)chal, (Py_ssize_t)clen)))
        return MX_STEP_ERROR;
    res = PyObject_CallOneArg(m->step, arg);
    Py_DECREF(arg);
    if (!res)
        return MX_STEP_ERROR;
    if (res == Py_None) {
        rc = MX_STEP_NONE;
    } else if (PyBytes_Check(res) || PyByteArray_Check(res)) {
        const char *p = PyBytes_Check(res) ? PyBytes_AS_STRING(res) : PyByteArray_AS_STRING(res);
        Py_ssize_t n = PyBytes_Check(res) ? PyBytes_GET_SIZE(res) : PyByteArray_GET_SIZE(res);
        if ((size_t)n > MX_SASL_BLOB_MAX)
            PyErr_Format(PyExc_ValueError,
                         "the AUTH %s step returned %zd bytes; at most %d are sent",
                         m->name, n, MX_SASL_BLOB_MAX);
        else if (mx_abuf_set(&m->first, p, (size_t)n) == 0)
            rc = MX_STEP_SEND;
    } else {
        PyErr_Format(PyExc_TypeError, "the AUTH %s step must return bytes or None, not %.100s",
                     m->name, Py_TYPE(res)->tp_name);
    }
    Py_DECREF(res);
    return rc;
}

/* One step: what to say, initially (chal NULL) or to a challenge.  *msg is
 * set for MX_STEP_SEND; *shown is what the transcript gets instead of the
 * base64 (NULL: the line itself, for what holds no secret). */
static mx_step_rc
step(mx_auth_mech *m, const unsigned char *chal, size_t clen, int initial,
     const mx_abuf **msg, const char **shown)
{
    *msg = &m->first;
    *shown = NULL;
    switch (m->kind) {
    case MX_MECH_PLAIN:
        *shown = "<credentials redacted>";
        /* a server that ignores initial responses asks again, once */
        return initial || m->answered++ == 0 ? MX_STEP_SEND : MX_STEP_DONE;
    case MX_MECH_LOGIN:
        if (initial)
            return MX_STEP_NONE;
        if (m->answered == 0) {
            m->answered++;
            *shown = "<username redacted>";
            return MX_STEP_SEND;
        }
        if (m->answered++ == 1) {
            *msg = &m->second;
            *shown = "<password redacted>";
            return MX_STEP_SEND;
        }
        return MX_STEP_DONE;
    case MX_MECH_OAUTH:
        if (initial) {
            *shown = "<token redacted>";
            return MX_STEP_SEND;
        }
        if (m->has_challenge)
            return MX_STEP_DONE;
        /* RFC 7628 §3.2.3: the server's error (JSON); answer with the dummy
         * response and let the final reply come */
        if (mx_abuf_set(&m->challenge, chal, clen) < 0)
            return MX_STEP_ERROR;
        m->has_challenge = 1;
        if (!m->bearer)
            return MX_STEP_NONE;     /* XOAUTH2: an empty line */
        if (mx_abuf_set(&m->second, "\x01", 1) < 0)
            return MX_STEP_ERROR;
        *msg = &m->second;
        return MX_STEP_SEND;
    default:
        *shown = "<response redacted>";
        return python_step(m, chal, clen, initial);
    }
}

/* ---- the loop ------------------------------------------------------------------ */

/* line := prefix [base64(msg) | "=" when empty_as_eq and msg is empty] CRLF */
static int
make_line(mx_abuf *line, const char *prefix, const unsigned char *msg, size_t n,
          int empty_as_eq)
{
    size_t pl = strlen(prefix), bl = 0;

    if (mx_abuf_reserve(line, pl + MX_B64_LEN(n) + 4) < 0)
        return -1;
    memcpy(line->p, prefix, pl);
    if (n)
        (void)mx_b64_encode(msg, n, (char *)line->p + pl, line->cap - pl, &bl);
    else if (empty_as_eq)
        line->p[pl + bl++] = '=';
    memcpy(line->p + pl + bl, "\r\n", 2);
    line->len = pl + bl + 2;
    return 0;
}

/* Sends "*" to cancel the exchange after a step failed, keeping the step's
 * exception. */
static mx_auth_result
cancel(const mx_auth_conv *c)
{
    PyObject *t, *v, *tb;
    int rc;

    PyErr_Fetch(&t, &v, &tb);
    rc = c->exchange(c->sess, "*\r\n", 3, NULL);
    PyErr_Restore(t, v, tb);
    return rc < 0 ? MX_AUTH_RAISED_IO : MX_AUTH_RAISED;
}

mx_auth_result
mx_auth_run(const mx_auth_conv *c, mx_auth_mech *m, char *why, size_t whycap)
{
    const mx_reply *r = c->reply;
    mx_abuf line = {0}, chal = {0};
    const mx_abuf *msg;
    const char *shown;
    char auth[MX_MECH_NAME_MAX + 8], shown_line[MX_MECH_NAME_MAX + 64];
    const char *pending_shown = NULL;   /* initial response deferred to the first 334 */
    mx_auth_result res;
    mx_step_rc rc;
    int rounds;
    size_t limit = m->challenge_max ? m->challenge_max : MX_SASL_BLOB_MAX;

    snprintf(auth, sizeof(auth), "AUTH %s", m->name);
    rc = step(m, NULL, 0, 1, &msg, &shown);
    if (rc == MX_STEP_ERROR) {
        res = MX_AUTH_RAISED;    /* nothing was sent */
        goto out;
    }
    if (rc == MX_STEP_SEND) {
        char prefix[sizeof(auth) + 2];
        snprintf(prefix, sizeof(prefix), "%s ", auth);
        if (make_line(&line, prefix, msg->p, msg->len, 1) < 0) {
            res = MX_AUTH_RAISED;
            goto out;
        }
        if (line.len <= MX_AUTH_IR_LINE_MAX) {
            snprintf(shown_line, sizeof(shown_line), "%s %s", auth, shown ? shown : "");
            res = c->exchange(c->sess, (const char *)line.p, line.len, shown_line) < 0
                  ? MX_AUTH_IO : MX_AUTH_OK;
        } else {
            /* too long for the AUTH line (see MX_AUTH_IR_LINE_MAX): after the 334 */
            pending_shown = shown ? shown : "";
        }
    }
    if (rc != MX_STEP_SEND || pending_shown) {
        char bare[sizeof(auth) + 3];
        snprintf(bare, sizeof(bare), "%s\r\n", auth);
        res = c->exchange(c->sess, bare, strlen(bare), NULL) < 0 ? MX_AUTH_IO : MX_AUTH_OK;
    }
    if (res != MX_AUTH_OK)
        goto out;

    for (rounds = 0;; rounds++) {
        size_t clen = 0;
        mx_sasl_status st;
        mx_verdict v;

        v = mx_verdict_of(MX_AFTER_AUTH, r->code);
        if (v == MX_V_ACCEPTED && r->code == 235) {
            res = MX_AUTH_OK;
            break;
        }
        if (v != MX_V_CONTINUE) {
            /* a 421 is a refusal here; the caller ends the session on it */
            res = v == MX_V_REFUSED || v == MX_V_CLOSING ? MX_AUTH_REFUSED : MX_AUTH_PROTOCOL;
            if (v == MX_V_OUT_OF_STEP)
                mx_verdict_why(MX_AFTER_AUTH, r->code, why, whycap);
            else
                snprintf(why, whycap, "unexpected reply to AUTH (%d)", r->code);
            break;
        }
        res = MX_AUTH_PROTOCOL;
        if (rounds >= MX_AUTH_ROUNDS_MAX) {
            snprintf(why, whycap, "the server sent more than %d challenges", MX_AUTH_ROUNDS_MAX);
            break;
        }
        if (r->nlines != 1) {
            snprintf(why, whycap, "a 334 challenge must be one line");
            break;
        }
        if (mx_abuf_reserve(&chal, limit) < 0) {
            res = cancel(c);
            break;
        }
        st = mx_sasl_decode_challenge(r->text + r->line_off[0], r->line_len[0],
                                      chal.p, chal.cap, &clen);
        if (st != MX_SASL_OK) {
            if (st == MX_SASL_E_TOO_LONG)
                snprintf(why, whycap, "the server's 334 challenge is longer than %zu octets",
                         limit);
            else
                snprintf(why, whycap, "the server's 334 challenge %s", mx_sasl_strerror(st));
            break;
        }
        if (pending_shown) {
            /* the deferred initial response: the line already holds
             * "AUTH MECH base64CRLF"; send from the base64 on */
            size_t skip = strlen(auth) + 1;
            memmove(line.p, line.p + skip, line.len - skip);
            line.len -= skip;
            shown = pending_shown;
            pending_shown = NULL;
        } else {
            rc = step(m, chal.p, clen, 0, &msg, &shown);
            if (rc == MX_STEP_DONE) {
                snprintf(why, whycap, "the server asked for more than the mechanism has");
                break;
            }
            if (rc == MX_STEP_ERROR || (rc == MX_STEP_SEND
                                        ? make_line(&line, "", msg->p, msg->len, 0)
                                        : make_line(&line, "", NULL, 0, 0)) < 0) {
                res = cancel(c);
                break;
            }
        }
        if (c->exchange(c->sess, (const char *)line.p, line.len, shown) < 0) {
            res = MX_AUTH_IO;
            break;
        }
    }
out:
    mx_abuf_free(&line);
    mx_abuf_free(&chal);
    return res;
}
