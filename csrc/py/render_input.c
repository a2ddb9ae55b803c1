/* render_input.c - a send_many mapping or a Template row read into a
 * message (render_msg.h) for render.c: str values as UTF-8, a row's
 * placeholders filled in as pieces.  Anything it does not take is "not for
 * us" (0 / Py_None) and the Python builder builds it. */
#include "render_msg.h"

#include <stddef.h>
#include <string.h>

/* The UTF-8 of a str value (ASCII only when ascii_only).  1 ok, 0 not for
 * us (no error set), -1 raised. */
int
mxr_utf8_of(PyObject *s, int ascii_only, const unsigned char **p, Py_ssize_t *n)
{
    const char *u;

    if (ascii_only && !PyUnicode_IS_ASCII(s))
        return 0;
    u = PyUnicode_AsUTF8AndSize(s, n);
    if (!u) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeError))
            return -1;
        PyErr_Clear();                 /* a lone surrogate: Python says why */
        return 0;
    }
    *p = (const unsigned char *)u;
    return 1;
}

/* row[name] as a str (str(value) unless it is one), held.  1, 0 (missing
 * or not convertible: Python says why), -1 raised. */
static int
field_value(PyObject *row, PyObject *name, holds *h, PyObject **out)
{
    PyObject *v, *s;

    v = PyDict_GetItemWithError(row, name);         /* rows are dicts (template_one) */
    if (!v)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(v);
    if (PyUnicode_CheckExact(v)) {
        s = v;
    } else {
        s = PyObject_Str(v);
        Py_DECREF(v);
        if (!s) {
            PyErr_Clear();             /* Python's own call raises it again, named */
            return 0;
        }
    }
    if (h->n >= (int)(sizeof h->held / sizeof h->held[0])) {
        Py_DECREF(s);
        return 0;
    }
    h->held[h->n++] = s;
    *out = s;
    return 1;
}

/* A templated field, a tuple (literal bytes, name str or None, ...), as
 * pieces appended to segs[*nsegs..maxsegs).  1, 0 (not for us), -1 raised. */
static int
field_segs(PyObject *field, PyObject *row, int escape, int ascii_only, holds *h,
           mx_seg *segs, size_t maxsegs, size_t *nsegs)
{
    Py_ssize_t i, n;

    if (!PyTuple_Check(field) || PyTuple_GET_SIZE(field) % 2) {
        PyErr_SetString(PyExc_TypeError, "render: a field is a tuple of (bytes, name) pairs");
        return -1;
    }
    n = PyTuple_GET_SIZE(field);
    for (i = 0; i < n; i += 2) {
        PyObject *lit = PyTuple_GET_ITEM(field, i), *name = PyTuple_GET_ITEM(field, i + 1);
        if (!PyBytes_Check(lit)) {
            PyErr_SetString(PyExc_TypeError, "render: a field's literal is bytes");
            return -1;
        }
        if (*nsegs + 2 > maxsegs)
            return 0;
        if (PyBytes_GET_SIZE(lit)) {
            segs[*nsegs].p = (const unsigned char *)PyBytes_AS_STRING(lit);
            segs[*nsegs].len = (size_t)PyBytes_GET_SIZE(lit);
            segs[*nsegs].escape = 0;
            (*nsegs)++;
        }
        if (name != Py_None) {
            PyObject *s;
            const unsigned char *p;
            Py_ssize_t len;
            int r = field_value(row, name, h, &s);
            if (r <= 0)
                return r;
            if ((r = mxr_utf8_of(s, ascii_only, &p, &len)) <= 0)
                return r;
            segs[*nsegs].p = p;
            segs[*nsegs].len = (size_t)len;
            segs[*nsegs].escape = escape;
            (*nsegs)++;
        }
    }
    return 1;
}

/* A templated header field's text joined into buf[FIELD_MAX].  1, 0, -1. */
static int
field_text(PyObject *field, PyObject *row, holds *h, unsigned char *buf, size_t *len)
{
    mx_seg segs[2 * MAX_VALUES];
    size_t n = 0, i;
    int r = field_segs(field, row, 0, 1, h, segs, 2 * MAX_VALUES, &n);

    if (r <= 0)
        return r;
    *len = 0;
    for (i = 0; i < n; i++) {
        if (segs[i].len > FIELD_MAX - *len)
            return 0;
        memcpy(buf + *len, segs[i].p, segs[i].len);
        *len += segs[i].len;
    }
    return 1;
}
/* ---- a send_many mapping ----------------------------------------------- */

/* compose.recipients(value) as borrowed str objects: None, a str, or a list
 * or tuple of str.  1, or 0 for anything else (Python's case). */
static int
addr_objs(PyObject *value, PyObject **out, int *n)
{
    Py_ssize_t i, k;

    *n = 0;
    if (value == NULL || value == Py_None)
        return 1;
    if (PyUnicode_Check(value)) {
        out[(*n)++] = value;
        return 1;
    }
    if (!PyList_CheckExact(value) && !PyTuple_CheckExact(value))
        return 0;
    k = PySequence_Fast_GET_SIZE(value);
    if (k > MAX_VALUES)
        return 0;
    for (i = 0; i < k; i++) {
        PyObject *a = PySequence_Fast_GET_ITEM(value, i);
        if (!PyUnicode_Check(a))
            return 0;
        out[(*n)++] = a;
    }
    return 1;
}

/* send_as's other keyword arguments: None means what leaving them out means */
static int
known_key(PyObject *key)
{
    static const char *const keys[] = {"sender", "reply_to", "headers", "message",
                                       "envelope_from", "attachments"};
    size_t i;

    for (i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (PyUnicode_CompareWithASCIIString(key, keys[i]) == 0)
            return 1;
    return 0;
}

/* A mapping of to, cc, bcc, subject, body and html (the other keys None or
 * absent) as a message; anything else is left to compose.prepare_item (*ok 0).  0 or 1,
 * -1 raised. */
static int
item_message(PyObject *item, message *m, int *ok)
{
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    PyObject *to = NULL, *cc = NULL, *bcc = NULL, *subject = NULL, *body = NULL, *html = NULL;
    const unsigned char *p;
    Py_ssize_t n;
    int r;

    *ok = 0;
    memset(m, 0, offsetof(message, segs));
    if (!PyDict_CheckExact(item))
        return 0;
    while (PyDict_Next(item, &pos, &key, &value)) {
        if (!PyUnicode_Check(key))
            return 0;
        if (PyUnicode_CompareWithASCIIString(key, "to") == 0)
            to = value;
        else if (PyUnicode_CompareWithASCIIString(key, "subject") == 0)
            subject = value;
        else if (PyUnicode_CompareWithASCIIString(key, "body") == 0)
            body = value;
        else if (PyUnicode_CompareWithASCIIString(key, "html") == 0)
            html = value;
        else if (PyUnicode_CompareWithASCIIString(key, "cc") == 0)
            cc = value;
        else if (PyUnicode_CompareWithASCIIString(key, "bcc") == 0)
            bcc = value;
        else if (value != Py_None || !known_key(key))
            return 0;                      /* cc, headers, ...: Python builds */
    }
    if (to == NULL || !addr_objs(to, m->to, &m->nto) || !addr_objs(cc, m->cc, &m->ncc)
        || !addr_objs(bcc, m->bcc, &m->nbcc))
        return 0;
    if (subject == NULL) {
        m->subject = (const unsigned char *)"";
    } else {
        if (!PyUnicode_Check(subject))
            return 0;
        if ((r = mxr_utf8_of(subject, 1, &p, &n)) <= 0)
            return r;
        m->subject = p;
        m->subject_len = (size_t)n;
    }
    /* mime.body_bytes: a text part unless there is html and no body; both:
     * multipart/alternative */
    if (html == Py_None)
        html = NULL;
    if (body == Py_None)
        body = NULL;
    m->nsegs = 0;
    if (body != NULL || html == NULL) {
        mpart *t = &m->parts[m->nparts++];
        t->subtype = "plain";
        t->sublen = 5;
        if (body != NULL) {
            if (!PyUnicode_Check(body))
                return 0;
            if ((r = mxr_utf8_of(body, 0, &p, &n)) <= 0)
                return r;
            m->segs[0].p = p;
            m->segs[0].len = (size_t)n;
            m->segs[0].escape = 0;
            m->nsegs = t->nseg = 1;
        }
    }
    if (html != NULL) {
        mpart *h = &m->parts[m->nparts++];
        if (!PyUnicode_Check(html))
            return 0;
        if ((r = mxr_utf8_of(html, 0, &p, &n)) <= 0)
            return r;
        h->subtype = "html";
        h->sublen = 4;
        h->seg0 = m->nsegs;
        m->segs[m->nsegs].p = p;
        m->segs[m->nsegs].len = (size_t)n;
        m->segs[m->nsegs].escape = 0;      /* a mapping's html is the caller's markup */
        m->nsegs++;
        h->nseg = 1;
    }
    *ok = 1;
    return 1;
}

PyObject *
mxr_item_one(ctx *c, PyObject *item)
{
    message m;
    int ok, r = item_message(item, &m, &ok);

    if (r < 0)
        return NULL;
    if (!ok)
        Py_RETURN_NONE;
    return mxr_render_one(c, &m);
}

/* ---- a Template row ------------------------------------------------------ */

/* spec = (to field, subject: line bytes or field, mime: bytes (all of it
 * after MIME-Version) or a tuple of one text part or the two of a
 * multipart/alternative, each bytes (made once) or (field, subtype bytes,
 * escape)) */
PyObject *
mxr_template_one(ctx *c, PyObject *spec, PyObject *row)
{
    message m;
    holds h;
    unsigned char to_buf[FIELD_MAX], subject_buf[FIELD_MAX];
    PyObject *subject, *mime, *res = NULL;
    int r;

    h.n = 0;
    memset(&m, 0, offsetof(message, segs));
    m.nsegs = 0;
    if (!PyDict_CheckExact(row))
        Py_RETURN_NONE;                    /* other mappings (and the rest): Python's */
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 3) {
        PyErr_SetString(PyExc_TypeError, "render: spec must be a tuple of 3");
        return NULL;
    }
    r = field_text(PyTuple_GET_ITEM(spec, 0), row, &h, to_buf, &m.to_len);
    if (r <= 0)
        goto out;
    m.to_text = to_buf;
    subject = PyTuple_GET_ITEM(spec, 1);
    if (PyBytes_Check(subject)) {
        m.subject_line = PyBytes_AS_STRING(subject);
        m.subject_line_len = PyBytes_GET_SIZE(subject);
    } else {
        r = field_text(subject, row, &h, subject_buf, &m.subject_len);
        if (r <= 0)
            goto out;
        m.subject = subject_buf;
    }
    mime = PyTuple_GET_ITEM(spec, 2);
    if (PyBytes_Check(mime)) {
        m.mime_static = PyBytes_AS_STRING(mime);
        m.mime_static_len = PyBytes_GET_SIZE(mime);
    } else {
        Py_ssize_t i;
        if (!PyTuple_Check(mime) || PyTuple_GET_SIZE(mime) < 1 || PyTuple_GET_SIZE(mime) > 2) {
            PyErr_SetString(PyExc_TypeError, "render: mime must be bytes or a tuple of 1 or 2 parts");
            goto out_err;
        }
        for (i = 0; i < PyTuple_GET_SIZE(mime); i++) {
            PyObject *part = PyTuple_GET_ITEM(mime, i), *sub;
            mpart *p = &m.parts[m.nparts++];
            int escape;
            if (PyBytes_Check(part)) {
                p->fixed = PyBytes_AS_STRING(part);
                p->fixed_len = PyBytes_GET_SIZE(part);
                continue;
            }
            if (!PyTuple_Check(part) || PyTuple_GET_SIZE(part) != 3
                || !PyBytes_Check(sub = PyTuple_GET_ITEM(part, 1))) {
                PyErr_SetString(PyExc_TypeError,
                                "render: a part is bytes or (field, subtype bytes, escape)");
                goto out_err;
            }
            escape = PyObject_IsTrue(PyTuple_GET_ITEM(part, 2));
            if (escape < 0)
                goto out_err;
            p->seg0 = m.nsegs;
            r = field_segs(PyTuple_GET_ITEM(part, 0), row, escape, 0, &h, m.segs,
                           sizeof m.segs / sizeof m.segs[0], &m.nsegs);
            if (r <= 0)
                goto out;
            p->nseg = m.nsegs - p->seg0;
            p->subtype = PyBytes_AS_STRING(sub);
            p->sublen = PyBytes_GET_SIZE(sub);
        }
    }
    res = mxr_render_one(c, &m);
    goto out_done;
out:
    if (r == 0) {
        res = Py_None;
        Py_INCREF(res);
    }
    goto out_done;
out_err:
    res = NULL;
out_done:
    mxr_holds_clear(&h);
    return res;
}
