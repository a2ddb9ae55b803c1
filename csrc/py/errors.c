/* errors.c - how failures become Python: Reply objects for replies, the
 * exception instances (raised, or handed to one message of a bulk send),
 * the session made unusable after a failure that leaves the connection in an
 * unknown state, and argument checks that raise InputError. */
#include "session.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>


mx_state *
state_of(Session *s)
{
    return mx_get_state(Py_TYPE(s));
}

/* A new Reply for s->c.reply (new reference), or NULL. */
PyObject *
make_reply(Session *s, stage stg)
{
    mx_state *st = state_of(s);
    PyObject *lines = NULL, *res = NULL;
    size_t i;

    if (!st)
        return NULL;
    lines = PyTuple_New((Py_ssize_t)s->c.reply->nlines);
    if (!lines)
        return NULL;
    for (i = 0; i < s->c.reply->nlines; i++) {
        PyObject *l = PyUnicode_DecodeUTF8(s->c.reply->text + s->c.reply->line_off[i],
                                           (Py_ssize_t)s->c.reply->line_len[i],
                                           "replace");
        if (!l)
            goto done;
        PyTuple_SET_ITEM(lines, (Py_ssize_t)i, l);
    }
    res = PyObject_CallFunction(st->reply_cls, "isOs", s->c.reply->code,
                                s->c.reply->enhanced[0] ? s->c.reply->enhanced : NULL,
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

/* make_exc_v with the class of exc in the module state. */
static PyObject *
make_exc_va(Session *s, mx_exc exc, stage stg, PyObject *reply, PyObject *extra,
            const char *fmt, va_list ap)
{
    mx_state *st = state_of(s);

    return st ? make_exc_v(st->exc[exc], stg, reply, extra, fmt, ap) : NULL;
}

PyObject *
make_exc(Session *s, mx_exc exc, stage stg, PyObject *reply, PyObject *extra,
         const char *fmt, ...)
{
    PyObject *obj;
    va_list ap;

    va_start(ap, fmt);
    obj = make_exc_va(s, exc, stg, reply, extra, fmt, ap);
    va_end(ap);
    return obj;
}

/* make_exc with the class given. */
PyObject *
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
PyObject *
raise_exc(Session *s, mx_exc exc, stage stg, PyObject *reply, PyObject *extra,
          const char *fmt, ...)
{
    PyObject *obj;
    va_list ap;

    va_start(ap, fmt);
    obj = make_exc_va(s, exc, stg, reply, extra, fmt, ap);
    va_end(ap);
    if (obj) {
        PyErr_SetObject((PyObject *)Py_TYPE(obj), obj);
        Py_DECREF(obj);
    }
    return NULL;
}

/* The exception being raised, taken out of the error indicator (a new
 * reference), to be handed to one message of a bulk send. */
PyObject *
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
void
poison(Session *s, const char *why)
{
    snprintf(s->failure, sizeof(s->failure), "%s", why);
    mx_conn_drop(&s->c);
    set_state(s, S_ERROR);
    mx_conn_recordf(&s->c, MX_TR_INFO, "session unusable: %s", why);
}

/* Turns s->c.err (a failed I/O or parse step) into an exception; the session
 * becomes unusable.  Returns NULL. */
PyObject *
fail_io(Session *s, stage stg)
{
    mx_exc exc;
    PyObject *extra = NULL;
    char msg[700];

    switch (s->c.err.kind) {
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
    if (s->c.err.kind == MX_E_TIMEOUT)
        snprintf(msg, sizeof(msg), "%s: %s", stage_names[stg],
                 s->deadline_hit ? "the overall deadline passed"
                                 : "the stage timeout passed");
    else
        snprintf(msg, sizeof(msg), "%s: %s", stage_names[stg], s->c.err.msg);
    if (s->c.err.kind == MX_E_TLS_VERIFY) {
        extra = Py_BuildValue("{s:l,s:s}", "verify_code", s->c.err.verify_code,
                              "verify_message",
                              X509_verify_cert_error_string(s->c.err.verify_code));
        if (!extra)
            return NULL;
    }
    if (s->c.err.kind == MX_E_IO || s->c.err.kind == MX_E_CONNECT ||
        s->c.err.kind == MX_E_RESOLVE) {
        if (!extra && !(extra = PyDict_New()))
            return NULL;
        PyObject *no = PyLong_FromLong(s->c.err.sys_errno);
        if (!no || PyDict_SetItemString(extra, "errno", no) < 0) {
            Py_XDECREF(no);
            Py_DECREF(extra);
            return NULL;
        }
        Py_DECREF(no);
    }
    if (s->c.err.wrong_mode != MX_MODE_UNKNOWN) {
        /* the security setting the port speaks (issue 14): "starttls" or "ssl" */
        PyObject *wm = PyUnicode_FromString(s->c.err.wrong_mode == MX_MODE_SSL ? "ssl"
                                                                                : "starttls");
        if (!extra && !(extra = PyDict_New())) {
            Py_XDECREF(wm);
            return NULL;
        }
        if (!wm || PyDict_SetItemString(extra, "wrong_mode", wm) < 0) {
            Py_XDECREF(wm);
            Py_DECREF(extra);
            return NULL;
        }
        Py_DECREF(wm);
    }
    poison(s, msg);
    raise_exc(s, exc, stg, NULL, extra, "%s", msg);
    Py_XDECREF(extra);
    return NULL;
}

/* A 421 (service closing) ends the session; raises ServiceUnavailable. */
PyObject *
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

/* Raises exc for a refusal carried by s->c.reply (session stays usable). */
PyObject *
fail_reply(Session *s, mx_exc exc, stage stg, const char *what)
{
    PyObject *r = make_reply(s, stg);
    if (!r)
        return NULL;
    raise_exc(s, exc, stg, r, NULL, "%s", what);
    Py_DECREF(r);
    return NULL;
}

/* A server answer that cannot belong: the session is unusable. */
PyObject *
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

/* What the reply in s->c.reply means after `after` (mx_verdict_of, the one
 * table of it): a 421 ends the session (ServiceUnavailable), a reply that
 * cannot answer this command too (ProtocolError); both raised, -1.
 * Otherwise 0 with *v = accepted, continue or refused. */
int
judge(Session *s, mx_after after, stage stg, mx_verdict *v)
{
    *v = mx_verdict_of(after, s->c.reply->code);
    if (*v == MX_V_CLOSING) {
        fail_421(s, stg);
        return -1;
    }
    if (*v == MX_V_OUT_OF_STEP) {
        char why[96];
        mx_verdict_why(after, s->c.reply->code, why, sizeof(why));
        fail_protocol(s, stg, why);
        return -1;
    }
    return 0;
}

/* UTF-8 of a str argument, checked with check(); raises InputError naming
 * the field.  The pointer is borrowed from obj. */
const char *
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

int
is_ascii(const char *p, Py_ssize_t n)
{
    Py_ssize_t i;

    for (i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            return 0;
    return 1;
}

