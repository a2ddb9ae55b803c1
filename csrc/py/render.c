/* render.c - the binding of proto/render.c: a send_many mapping or a
 * Template row into a compose.Prepared, in one C call.  This file: the
 * message assembled (MIME part, headers, Message-ID) and the module
 * functions; render_input.c reads the Python arguments.
 *
 * These functions either return what mime.py / template.py would build for
 * the same input (Date, Message-ID aside) or None: "not for me", and the
 * caller builds in Python, which also raises the InputError that names the
 * field.  No state: everything comes in as arguments (the Message-ID counter
 * is the caller's itertools.count, so the numbers are the same sequence as
 * mime.make_message_id's).  The GIL is held throughout: no I/O here. */
#include "render_msg.h"

#include <stddef.h>
#include <string.h>

#include <openssl/rand.h>

static const char MIME_VERSION[] = "MIME-Version: 1.0\r\n";
static const char MSGID[] = "Message-ID: ";

void
mxr_holds_clear(holds *h)
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
    int i;

    if (name)
        mx_render_addr_begin(&f, o, name, nlen);
    for (i = 0; i < count; i++) {
        PyObject *s = objs[i], *a;
        const unsigned char *p;
        Py_ssize_t n;
        size_t off, alen;
        mx_render_status st;
        int r = mxr_utf8_of(s, 1, &p, &n);
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
PyObject *
mxr_render_one(ctx *c, message *m)
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
/* ---- the module functions ------------------------------------------------ */

/* One row (spec given) or one mapping (spec NULL). */
static PyObject *
one(ctx *c, PyObject *spec, PyObject *x)
{
    return spec ? mxr_template_one(c, spec, x) : mxr_item_one(c, x);
}

/* args: [spec,] consts, xs, date, counter, id_prefix, eight_bit, prepared;
 * xs a list of rows/items.  A new list of what one() gives for each, or
 * NULL raised (the list made so far freed). */
static PyObject *
call(PyObject *const *args, Py_ssize_t nargs, int with_spec, const char *name)
{
    ctx c;
    PyObject *spec = NULL, *xs, *res = NULL;
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
    xs = args[1];
    if (!PyList_CheckExact(xs)) {
        PyErr_Format(PyExc_TypeError, "%s: a list, please", name);
        goto done;
    }
    res = PyList_New(PyList_GET_SIZE(xs));
    if (!res)
        goto done;
    for (i = 0; i < PyList_GET_SIZE(xs); i++) {
        PyObject *got = one(&c, spec, PyList_GET_ITEM(xs, i));
        if (!got) {
            Py_CLEAR(res);
            goto done;
        }
        PyList_SET_ITEM(res, i, got);
    }
done:
    ctx_free(&c);
    return res;
}

PyObject *
mx_render_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return call(args, nargs, 0, "render_items");
}

PyObject *
mx_render_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    return call(args, nargs, 1, "render_rows");
}
