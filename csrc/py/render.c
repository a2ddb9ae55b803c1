/* render.c - the binding of proto/render.c: a send_many mapping or a
 * Template row into a compose.Prepared, in one C call.
 *
 * These functions either return what mime.py / template.py would build for
 * the same input (Date, Message-ID aside) or None: "not for me", and the
 * caller builds in Python, which also raises the InputError that names the
 * field.  No state: everything comes in as arguments (the Message-ID counter
 * is the caller's itertools.count, so the numbers are the same sequence as
 * mime.make_message_id's).  The GIL is held throughout: no I/O here. */
#include "module.h"

#include <stddef.h>
#include <string.h>

#include <openssl/rand.h>

#include "render.h"

/* placeholders in one templated field, at most (more: built in Python) */
#define MAX_VALUES 64
/* a templated header's text, at most (more: built in Python) */
#define FIELD_MAX 4096
/* the output buffer grows up to this (bigger: built in Python) */
#define OUT_MAX ((size_t)64 << 20)

static const char MIME_VERSION[] = "MIME-Version: 1.0\r\n";
static const char MSGID[] = "Message-ID: ";

/* What is the same for every message of a call. */
typedef struct {
    const char *head, *mid, *post, *date, *id_prefix, *id_suffix;
    Py_ssize_t headlen, midlen, postlen, datelen, id_prefixlen, id_suffixlen;
    PyObject *mail_from;           /* str, borrowed */
    PyObject *counter;             /* iterator of ints, borrowed */
    PyTypeObject *prepared;        /* a tuple subclass of 4 fields */
    int eight_bit;
    unsigned char *buf;            /* scratch output, PyMem_Raw */
    size_t cap;
} ctx;

/* Values kept alive while their bytes are in use. */
typedef struct {
    PyObject *held[3 * MAX_VALUES];
    int n;
} holds;

static void
holds_clear(holds *h)
{
    while (h->n > 0)
        Py_DECREF(h->held[--h->n]);
}

static int
bytes_arg(PyObject *o, const char **p, Py_ssize_t *n, const char *what)
{
    if (!PyBytes_Check(o)) {
        PyErr_Format(PyExc_TypeError, "render: %s must be bytes", what);
        return -1;
    }
    *p = PyBytes_AS_STRING(o);
    *n = PyBytes_GET_SIZE(o);
    return 0;
}

/* consts = (head, mid, post, mail_from, id_suffix); the rest from args.  -1 raised. */
static int
ctx_init(ctx *c, PyObject *consts, PyObject *date, PyObject *counter, PyObject *id_prefix,
         PyObject *eight_bit, PyObject *prepared)
{
    memset(c, 0, sizeof *c);
    if (!PyTuple_Check(consts) || PyTuple_GET_SIZE(consts) != 5) {
        PyErr_SetString(PyExc_TypeError, "render: consts must be a tuple of 5");
        return -1;
    }
    if (bytes_arg(PyTuple_GET_ITEM(consts, 0), &c->head, &c->headlen, "head") < 0
        || bytes_arg(PyTuple_GET_ITEM(consts, 1), &c->mid, &c->midlen, "mid") < 0
        || bytes_arg(PyTuple_GET_ITEM(consts, 2), &c->post, &c->postlen, "post") < 0
        || bytes_arg(PyTuple_GET_ITEM(consts, 4), &c->id_suffix, &c->id_suffixlen, "id suffix") < 0
        || bytes_arg(date, &c->date, &c->datelen, "date") < 0
        || bytes_arg(id_prefix, &c->id_prefix, &c->id_prefixlen, "id prefix") < 0)
        return -1;
    c->mail_from = PyTuple_GET_ITEM(consts, 3);
    if (!PyUnicode_Check(c->mail_from)) {
        PyErr_SetString(PyExc_TypeError, "render: mail_from must be a str");
        return -1;
    }
    if (!PyIter_Check(counter)) {
        PyErr_SetString(PyExc_TypeError, "render: counter must be an iterator");
        return -1;
    }
    c->counter = counter;
    if (!PyType_Check(prepared)
        || !PyType_IsSubtype((PyTypeObject *)prepared, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "render: prepared must be a tuple subclass");
        return -1;
    }
    c->prepared = (PyTypeObject *)prepared;
    c->eight_bit = PyObject_IsTrue(eight_bit);
    if (c->eight_bit < 0)
        return -1;
    c->cap = 16384;
    c->buf = PyMem_RawMalloc(c->cap);
    if (!c->buf) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void
ctx_free(ctx *c)
{
    PyMem_RawFree(c->buf);
    c->buf = NULL;
}

/* Doubles the scratch buffer.  0; 1 when it may not grow more; -1 raised. */
static int
ctx_grow(ctx *c)
{
    unsigned char *nb;

    if (c->cap >= OUT_MAX)
        return 1;
    nb = PyMem_RawRealloc(c->buf, c->cap * 2);
    if (!nb) {
        PyErr_NoMemory();
        return -1;
    }
    c->buf = nb;
    c->cap *= 2;
    return 0;
}

/* The UTF-8 of a str value (ASCII only when ascii_only).  1 ok, 0 not for
 * us (no error set), -1 raised. */
static int
utf8_of(PyObject *s, int ascii_only, const unsigned char **p, Py_ssize_t *n)
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

    if (PyDict_CheckExact(row)) {
        v = PyDict_GetItemWithError(row, name);
        if (!v)
            return PyErr_Occurred() ? -1 : 0;
        Py_INCREF(v);
    } else {
        v = PyObject_GetItem(row, name);
        if (!v) {
            if (!PyErr_ExceptionMatches(PyExc_KeyError))
                return -1;
            PyErr_Clear();
            return 0;
        }
    }
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
            if ((r = utf8_of(s, ascii_only, &p, &len)) <= 0)
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

/* The message from its parts, into a Prepared: the MIME part is already at
 * c->buf[0..mlen), the headers up to Date at [mlen..mlen+hlen).  A new
 * reference, or NULL raised. */
static PyObject *
finish(ctx *c, size_t mlen, size_t hlen, PyObject *rcpts)
{
    PyObject *n = NULL, *id = NULL, *data = NULL, *res = NULL;
    char idbuf[512];
    Py_ssize_t num;
    size_t idlen, total;
    char *d;
    int k;

    n = PyIter_Next(c->counter);
    if (!n) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "render: the Message-ID counter ended");
        goto done;
    }
    num = PyLong_AsSsize_t(n);
    if (num < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "render: a negative Message-ID counter");
        goto done;
    }
    if ((size_t)(c->id_prefixlen + c->id_suffixlen) + 24 > sizeof idbuf) {
        PyErr_SetString(PyExc_ValueError, "render: the Message-ID is too long");
        goto done;
    }
    memcpy(idbuf, c->id_prefix, (size_t)c->id_prefixlen);
    {
        char digits[24];
        k = 0;
        do {                               /* the number in decimal, as str(N) */
            digits[k++] = (char)('0' + num % 10);
            num /= 10;
        } while (num > 0);
        idlen = (size_t)c->id_prefixlen;
        while (k > 0)
            idbuf[idlen++] = digits[--k];
    }
    memcpy(idbuf + idlen, c->id_suffix, (size_t)c->id_suffixlen);
    idlen += (size_t)c->id_suffixlen;
    id = PyUnicode_DecodeUTF8(idbuf, (Py_ssize_t)idlen, "strict");
    if (!id)
        goto done;
    total = hlen + sizeof MSGID - 1 + idlen + 2 + sizeof MIME_VERSION - 1 + mlen;
    data = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)total);
    if (!data)
        goto done;
    d = PyBytes_AS_STRING(data);
    memcpy(d, c->buf + mlen, hlen);
    d += hlen;
    memcpy(d, MSGID, sizeof MSGID - 1);
    d += sizeof MSGID - 1;
    memcpy(d, idbuf, idlen);
    d += idlen;
    memcpy(d, "\r\n", 2);
    d += 2;
    memcpy(d, MIME_VERSION, sizeof MIME_VERSION - 1);
    d += sizeof MIME_VERSION - 1;
    memcpy(d, c->buf, mlen);
    /* tuple.__new__(Prepared, (mail_from, rcpts, data, id)), as
     * tuple_subtype_new makes it */
    res = c->prepared->tp_alloc(c->prepared, 4);
    if (!res)
        goto done;
    Py_INCREF(c->mail_from);
    PyTuple_SET_ITEM(res, 0, c->mail_from);
    Py_INCREF(rcpts);
    PyTuple_SET_ITEM(res, 1, rcpts);
    PyTuple_SET_ITEM(res, 2, data);
    data = NULL;
    PyTuple_SET_ITEM(res, 3, id);
    id = NULL;
done:
    Py_XDECREF(n);
    Py_XDECREF(id);
    Py_XDECREF(data);
    return res;
}

/* One text part of a message. */
typedef struct {
    const char *fixed;             /* the whole part, made once; or NULL: the pieces */
    Py_ssize_t fixed_len;
    size_t seg0, nseg;             /* its pieces in message.segs */
    const char *subtype;
    Py_ssize_t sublen;
} mpart;

/* How one message goes: the To addresses, the subject, the MIME part. */
typedef struct {
    PyObject *to[MAX_VALUES];      /* str, borrowed (items) */
    int nto;
    PyObject *cc[MAX_VALUES];      /* a Cc header and recipients (items) */
    int ncc;
    PyObject *bcc[MAX_VALUES];     /* recipients only (items) */
    int nbcc;
    const unsigned char *to_text;  /* a rendered template "to" */
    size_t to_len;
    const unsigned char *subject;  /* NULL: subject_line */
    size_t subject_len;
    const char *subject_line;      /* a whole constant Subject line */
    Py_ssize_t subject_line_len;
    const char *mime_static;       /* the MIME part after MIME-Version, or NULL: parts */
    Py_ssize_t mime_static_len;
    mpart parts[2];                /* one text part, or multipart/alternative of two */
    int nparts;
    mx_seg segs[2 * MAX_VALUES + 2];
    size_t nsegs;
} message;

/* One part as it is written: made once (fixed), or segs[seg0..seg0+nseg) */
static mx_render_status
render_part(ctx *c, mx_out *o, const message *m, const mpart *p)
{
    if (p->fixed) {
        mx_out_put_lines(o, p->fixed, (size_t)p->fixed_len);
        return mx_out_status(o);
    }
    return mx_render_text(o, m->segs + p->seg0, p->nseg, p->subtype, (size_t)p->sublen,
                          c->eight_bit);
}

static int
holds_at(const mx_out *o, size_t from, size_t to, const char *b, size_t n)
{
    return to - from >= n && memmem(o->p + from, to - from, b, n) != NULL;
}

/* mime.multipart(b"alternative", parts) with a boundary of its kind
 * ("=_mx" and 24 hex digits) that neither part holds; declined when the
 * random bytes fail or (about never) a part holds the boundary. */
static mx_render_status
render_alternative(ctx *c, mx_out *o, const message *m)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char rnd[12];
    char b[4 + 24];
    size_t i, p0, e0, p1, e1;
    mx_render_status st;

    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return MX_RENDER_DECLINED;
    memcpy(b, "=_mx", 4);
    for (i = 0; i < sizeof rnd; i++) {
        b[4 + 2 * i] = hex[rnd[i] >> 4];
        b[5 + 2 * i] = hex[rnd[i] & 15];
    }
    mx_out_put(o, "Content-Type: multipart/alternative; boundary=\"", 47);
    mx_out_put(o, b, sizeof b);
    mx_out_put(o, "\"", 1);
    mx_out_crlf(o);
    mx_out_crlf(o);
    mx_out_put(o, "--", 2);
    mx_out_put(o, b, sizeof b);
    mx_out_crlf(o);
    p0 = o->len;
    if ((st = render_part(c, o, m, &m->parts[0])) != MX_RENDER_OK)
        return st;
    e0 = o->len;
    mx_out_crlf(o);
    mx_out_put(o, "--", 2);
    mx_out_put(o, b, sizeof b);
    mx_out_crlf(o);
    p1 = o->len;
    if ((st = render_part(c, o, m, &m->parts[1])) != MX_RENDER_OK)
        return st;
    e1 = o->len;
    mx_out_crlf(o);
    mx_out_put(o, "--", 2);
    mx_out_put(o, b, sizeof b);
    mx_out_put(o, "--", 2);
    mx_out_crlf(o);
    if ((st = mx_out_status(o)) != MX_RENDER_OK)
        return st;
    if (holds_at(o, p0, e0, b, sizeof b) || holds_at(o, p1, e1, b, sizeof b))
        return MX_RENDER_DECLINED;
    return MX_RENDER_OK;
}

/* Addresses given as str objects: written as the header `name` (none when
 * NULL: Bcc) and appended to rcpts as envelope addresses, as
 * compose.prepare makes them.  MX_RENDER_OK or why not; *err set when a
 * Python error was raised. */
static mx_render_status
addr_list(mx_out *o, const char *name, size_t nlen, PyObject *const *objs, int count,
          PyObject *rcpts, int *err)
{
    mx_fold f;
    mx_render_status st;
    int i;

    if (name)
        mx_render_addr_begin(&f, o, name, nlen);
    for (i = 0; i < count; i++) {
        PyObject *s = objs[i], *a;
        const unsigned char *p;
        Py_ssize_t n;
        size_t off, alen;
        int r = utf8_of(s, 1, &p, &n);
        if (r <= 0) {
            *err = r < 0;
            return MX_RENDER_DECLINED;
        }
        st = name ? mx_render_addr(&f, p, (size_t)n, i + 1 < count, &off, &alen)
                  : mx_render_addr_parse(p, (size_t)n, &off, &alen);
        if (st != MX_RENDER_OK)
            return st;
        if (off == 0 && (Py_ssize_t)alen == n) {
            a = s;                         /* compose.prepare keeps the address as given */
            Py_INCREF(a);
        } else {
            a = PyUnicode_DecodeASCII((const char *)p + off, (Py_ssize_t)alen, NULL);
        }
        if (!a || PyList_Append(rcpts, a) < 0) {
            Py_XDECREF(a);
            *err = 1;
            return MX_RENDER_DECLINED;
        }
        Py_DECREF(a);
    }
    if (!name)
        return MX_RENDER_OK;
    mx_render_addr_end(&f);
    return mx_out_status(o);
}

/* Renders one message into c->buf and makes its Prepared.  A new
 * reference, Py_None (not for us) or NULL raised. */
static PyObject *
render_one(ctx *c, message *m)
{
    PyObject *rcpts = NULL, *res = NULL;
    mx_out o;
    mx_fold f;
    size_t mlen, off, alen;
    int grown, err = 0;
    mx_render_status st;

again:
    mx_out_init(&o, c->buf, c->cap);
    Py_CLEAR(rcpts);
    /* the MIME part first: the Message-ID's number is taken only for a
     * message that is rendered */
    if (m->mime_static) {
        mx_out_put_lines(&o, m->mime_static, (size_t)m->mime_static_len);
        st = mx_out_status(&o);
    } else if (m->nparts == 1) {
        st = render_part(c, &o, m, &m->parts[0]);
    } else {
        st = render_alternative(c, &o, m);
    }
    if (st != MX_RENDER_OK)
        goto status;
    mlen = o.len;
    o.line_start = o.len;          /* the headers' lines are counted from here */
    mx_out_put_lines(&o, c->head, (size_t)c->headlen);
    rcpts = PyList_New(0);
    if (!rcpts)
        goto done;
    if (m->to_text) {
        mx_render_addr_begin(&f, &o, "To", 2);
        st = mx_render_addr(&f, m->to_text, m->to_len, 0, &off, &alen);
        if (st != MX_RENDER_OK)
            goto status;
        PyObject *a = PyUnicode_DecodeASCII((const char *)m->to_text + off, (Py_ssize_t)alen, NULL);
        if (!a || PyList_Append(rcpts, a) < 0) {
            Py_XDECREF(a);
            goto done;
        }
        Py_DECREF(a);
        mx_render_addr_end(&f);
    } else {
        if (m->nto == 0) {
            st = MX_RENDER_DECLINED;       /* no To header: Python's case */
            goto status;
        }
        st = addr_list(&o, "To", 2, m->to, m->nto, rcpts, &err);
        if (st == MX_RENDER_OK && m->ncc)
            st = addr_list(&o, "Cc", 2, m->cc, m->ncc, rcpts, &err);
        if (st == MX_RENDER_OK && m->nbcc)
            st = addr_list(&o, NULL, 0, m->bcc, m->nbcc, rcpts, &err);
        if (err)
            goto done;
        if (st != MX_RENDER_OK)
            goto status;
    }
    mx_out_put_lines(&o, c->mid, (size_t)c->midlen);
    if (m->subject)
        st = mx_render_unstructured(&o, "Subject", 7, m->subject, m->subject_len);
    else
        mx_out_put_lines(&o, m->subject_line, (size_t)m->subject_line_len);
    if (st != MX_RENDER_OK)
        goto status;
    mx_out_put_lines(&o, c->post, (size_t)c->postlen);
    mx_out_put_lines(&o, c->date, (size_t)c->datelen);
    st = mx_out_status(&o);
    if (st != MX_RENDER_OK)
        goto status;
    res = finish(c, mlen, o.len - mlen, rcpts);
    goto done;
status:
    if (st == MX_RENDER_NOSPACE) {
        grown = ctx_grow(c);
        if (grown < 0)
            goto done;
        if (grown == 0)
            goto again;
    }
    res = Py_None;                         /* declined, refused or too big: Python builds */
    Py_INCREF(res);
done:
    Py_XDECREF(rcpts);
    return res;
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
        if ((r = utf8_of(subject, 1, &p, &n)) <= 0)
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
            if ((r = utf8_of(body, 0, &p, &n)) <= 0)
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
        if ((r = utf8_of(html, 0, &p, &n)) <= 0)
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

static PyObject *
item_one(ctx *c, PyObject *item)
{
    message m;
    int ok, r = item_message(item, &m, &ok);

    if (r < 0)
        return NULL;
    if (!ok)
        Py_RETURN_NONE;
    return render_one(c, &m);
}

/* ---- a Template row ------------------------------------------------------ */

/* spec = (to field, subject: line bytes or field, mime: bytes (all of it
 * after MIME-Version) or a tuple of one text part or the two of a
 * multipart/alternative, each bytes (made once) or (field, subtype bytes,
 * escape)) */
static PyObject *
template_one(ctx *c, PyObject *spec, PyObject *row)
{
    message m;
    holds h;
    unsigned char to_buf[FIELD_MAX], subject_buf[FIELD_MAX];
    PyObject *subject, *mime, *res = NULL;
    int r;

    h.n = 0;
    memset(&m, 0, offsetof(message, segs));
    m.nsegs = 0;
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
    res = render_one(c, &m);
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
    holds_clear(&h);
    return res;
}

/* ---- the module functions ------------------------------------------------ */

/* One row (spec given) or one mapping (spec NULL). */
static PyObject *
one(ctx *c, PyObject *spec, PyObject *x)
{
    return spec ? template_one(c, spec, x) : item_one(c, x);
}

/* args: [spec,] consts, x, date, counter, id_prefix, eight_bit, prepared;
 * x one row/item, or a list of them when `many`. */
static PyObject *
call(PyObject *const *args, Py_ssize_t nargs, int with_spec, int many, const char *name)
{
    ctx c;
    PyObject *spec = NULL, *x, *res = NULL;
    Py_ssize_t i, want = with_spec ? 8 : 7;

    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments", name, want);
        return NULL;
    }
    if (with_spec) {
        spec = args[0];
        args++;
    }
    if (ctx_init(&c, args[0], args[2], args[3], args[4], args[5], args[6]) < 0) {
        ctx_free(&c);
        return NULL;
    }
    x = args[1];
    if (!many) {
        res = one(&c, spec, x);
    } else {
        if (!PyList_CheckExact(x)) {
            PyErr_Format(PyExc_TypeError, "%s: a list, please", name);
            goto done;
        }
        res = PyList_New(PyList_GET_SIZE(x));
        if (!res)
            goto done;
        for (i = 0; i < PyList_GET_SIZE(x); i++) {
            PyObject *got = one(&c, spec, PyList_GET_ITEM(x, i));
            if (!got) {
                Py_CLEAR(res);
                goto done;
            }
            PyList_SET_ITEM(res, i, got);
        }
    }
done:
    ctx_free(&c);
    return res;
}

PyObject *
mx_render_item(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return call(args, nargs, 0, 0, "render_item");
}

PyObject *
mx_render_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return call(args, nargs, 0, 1, "render_items");
}

PyObject *
mx_render_row(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return call(args, nargs, 1, 0, "render_row");
}

PyObject *
mx_render_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return call(args, nargs, 1, 1, "render_rows");
}
