/* outcomes.c - _core.pack_records: results.Outcomes.compact's work, a
 * batch of pending records put in the store's columns (see results.py for
 * the layout).  A record goes in columns when it has one recipient, no
 * refused recipient, a Message-ID <prefix N@domain> of this process and an
 * elapsed_ms that fits 32 bits; any other item is kept whole in obj.  The
 * store's tables and indexes are Python lists and dicts, its columns
 * array.array objects and bytearrays; nothing is kept here between calls.
 *
 * Replies: the first REPLIES_KEPT distinct ones are kept as objects in a
 * table (a run's replies are mostly one or a few); a reply after those is
 * spelled out when it is a plain Reply: its code, enhanced code and stage
 * as a "shape" in a table of their own, its lines in the blob after the
 * recipient.  So a server that answers every message differently ("queued
 * as 4XyZ...": Postfix, Exchange) costs its reply's text a message, not a
 * Reply object. */
#include "module.h"

#include <stdint.h>
#include <string.h>

#define TABLE_MAX 65535
#define REPLIES_KEPT 1024
#define SPELLED 0x8000          /* C_REPLY at or above: a shape, the lines in the blob */
enum { K_RECORD = 1, K_OBJECT = 2 };
enum { T_SENDER, T_REPLY, T_DOMAIN, T_SHAPE, T_COUNT };
enum { C_SENDER, C_REPLY, C_ELAPSED, C_ROFF, C_RLEN, C_MID, C_DOM, C_REPLEN, C_COUNT };
static const Py_ssize_t col_size[C_COUNT] = {2, 2, 4, 8, 2, 8, 2, 2};

/* The previous packed record's sender, reply and domain with their table
 * indexes: the sender and reply borrowed (from a record in pending, or from
 * the `last` argument: both outlive the call), the domain owned. */
typedef struct {
    PyObject *value[3];
    Py_ssize_t ix[3];
} last_seen;

/* The index of value in table `which`, added when new; -1 when the table
 * has `cap` entries; -2 raised. */
static Py_ssize_t
table_ix(PyObject *tables, PyObject *index, int which, PyObject *value, Py_ssize_t cap)
{
    PyObject *table = PyTuple_GET_ITEM(tables, which), *ix = PyTuple_GET_ITEM(index, which);
    PyObject *got = PyDict_GetItemWithError(ix, value), *n;
    Py_ssize_t at;

    if (got)
        return PyLong_AsSsize_t(got);
    if (PyErr_Occurred())
        return -2;
    at = PyList_GET_SIZE(table);
    if (at >= cap)
        return -1;
    if (!(n = PyLong_FromSsize_t(at)))
        return -2;
    if (PyList_Append(table, value) < 0 || PyDict_SetItem(ix, value, n) < 0) {
        Py_DECREF(n);
        return -2;
    }
    Py_DECREF(n);
    return at;
}

/* Whether the Message-ID is <prefix N@domain>: N's value and the domain
 * (new reference) when it is.  1 yes, 0 no, -1 raised. */
static int
split_mid(PyObject *mid, PyObject *prefix, unsigned long long *number, PyObject **domain)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(mid), p = PyUnicode_GET_LENGTH(prefix), at, k;
    unsigned long long v = 0;

    if (n < p + 1 || PyUnicode_READ_CHAR(mid, n - 1) != '>' ||
        PyUnicode_Tailmatch(mid, prefix, 0, p, -1) != 1)
        return PyErr_Occurred() ? -1 : 0;
    at = PyUnicode_FindChar(mid, '@', p, n - 1, 1);
    if (at == -2)
        return -1;
    if (at < 0 || at == p || at - p > 19)
        return 0;
    if (PyUnicode_READ_CHAR(mid, p) == '0' && at - p > 1)
        return 0;
    for (k = p; k < at; k++) {
        Py_UCS4 c = PyUnicode_READ_CHAR(mid, k);
        if (c < '0' || c > '9')
            return 0;
        v = v * 10 + (c - '0');        /* 19 digits fit 64 bits */
    }
    if (!(*domain = PyUnicode_Substring(mid, at + 1, n - 1)))
        return -1;
    *number = v;
    return 1;
}

/* A reply spelled out: its shape's index (SPELLED added) and its lines
 * joined by LF as UTF-8 (new reference) in *text.  Its index, 0 when it
 * cannot be spelled (not a plain Reply, no lines, a line that is not a str
 * or holds LF or a lone surrogate, too long): kept whole then; -1 raised. */
static Py_ssize_t
spell(mx_state *st, PyObject *reply, PyObject *tables, PyObject *index, PyObject **text)
{
    PyObject *f[4] = {NULL, NULL, NULL, NULL}, *shape = NULL, *sep = NULL;
    Py_ssize_t k, ix = 0, n;

    *text = NULL;
    if (Py_TYPE(reply) != (PyTypeObject *)st->reply_cls)
        return 0;
    for (k = 0; k < 4; k++)
        if (!(f[k] = PyObject_GetAttr(reply, PyTuple_GET_ITEM(st->reply_attrs, k))))
            goto err;
    /* code, enhanced, lines, stage */
    if (!PyTuple_CheckExact(f[2]) || (n = PyTuple_GET_SIZE(f[2])) == 0)
        goto done;
    for (k = 0; k < n; k++) {
        PyObject *line = PyTuple_GET_ITEM(f[2], k);
        if (!PyUnicode_CheckExact(line) || PyUnicode_FindChar(line, '\n', 0, PyUnicode_GET_LENGTH(line), 1) != -1)
            goto done;
    }
    if (!(sep = PyUnicode_FromString("\n")))
        goto err;
    {
        PyObject *joined = PyUnicode_Join(sep, f[2]);
        if (!joined)
            goto err;
        *text = PyUnicode_AsUTF8String(joined);
        Py_DECREF(joined);
    }
    if (!*text) {
        if (!PyErr_ExceptionMatches(PyExc_UnicodeError))
            goto err;
        PyErr_Clear();              /* a lone surrogate: kept whole */
        goto done;
    }
    if (PyBytes_GET_SIZE(*text) > TABLE_MAX)
        goto done;
    if (!(shape = PyTuple_Pack(3, f[0], f[1], f[3])))
        goto err;
    ix = table_ix(tables, index, T_SHAPE, shape, SPELLED - 1);
    if (ix == -2)
        goto err;
    ix = ix < 0 ? 0 : ix + SPELLED;
    goto done;
err:
    ix = -1;
done:
    if (ix <= 0)
        Py_CLEAR(*text);
    for (k = 0; k < 4; k++)
        Py_XDECREF(f[k]);
    Py_XDECREF(shape);
    Py_XDECREF(sep);
    return ix;
}

/* One record into the columns at i.  1 packed, 0 not (kept whole), -1 raised. */
static int
pack_one(mx_state *st, Py_ssize_t i, PyObject *rec, Py_buffer *col, PyObject *blob,
         PyObject *prefix, PyObject *tables, PyObject *index, last_seen *last)
{
    PyObject *sender, *who, *mid, *reply, *refused, *elapsed, *domain = NULL, *enc = NULL;
    PyObject *text = NULL;
    const char *u8;
    Py_ssize_t u8len, s, r, d, off, tlen = 0;
    unsigned long long number = 0, ms;
    int rc = 0, t;

    if (!PyTuple_CheckExact(rec) || PyTuple_GET_SIZE(rec) != 6)
        return 0;
    sender = PyTuple_GET_ITEM(rec, 0);
    who = PyTuple_GET_ITEM(rec, 1);
    mid = PyTuple_GET_ITEM(rec, 2);
    reply = PyTuple_GET_ITEM(rec, 3);
    refused = PyTuple_GET_ITEM(rec, 4);
    elapsed = PyTuple_GET_ITEM(rec, 5);
    if (refused != Py_None && (t = PyObject_IsTrue(refused)) != 0)
        return t < 0 ? -1 : 0;
    if (!PyUnicode_CheckExact(who) || !PyUnicode_CheckExact(mid) || !PyLong_CheckExact(elapsed))
        return 0;
    ms = PyLong_AsUnsignedLongLong(elapsed);
    if (ms == (unsigned long long)-1 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_OverflowError))
            return -1;
        PyErr_Clear();          /* negative or too large: kept whole */
        return 0;
    }
    if (ms >= (1ULL << 32))
        return 0;
    if ((t = split_mid(mid, prefix, &number, &domain)) <= 0)
        return t;
    if (!(u8 = PyUnicode_AsUTF8AndSize(who, &u8len))) {     /* lone surrogates */
        if (!PyErr_ExceptionMatches(PyExc_UnicodeError))
            goto done_err;
        PyErr_Clear();
        if (!(enc = PyUnicode_AsEncodedString(who, "utf-8", "surrogatepass")))
            goto done_err;
        u8 = PyBytes_AS_STRING(enc);
        u8len = PyBytes_GET_SIZE(enc);
    }
    if (u8len > TABLE_MAX)
        goto done;
    s = sender == last->value[0] ? last->ix[0] : table_ix(tables, index, T_SENDER, sender, TABLE_MAX);
    if (s == -2)
        goto done_err;
    r = reply == last->value[1] && last->ix[1] < SPELLED ? last->ix[1]
        : table_ix(tables, index, T_REPLY, reply, REPLIES_KEPT);
    if (r == -2)
        goto done_err;
    if (r == -1) {
        if ((r = spell(st, reply, tables, index, &text)) < 0)
            goto done_err;
        if (r == 0)
            r = -1;             /* kept whole */
        else
            tlen = PyBytes_GET_SIZE(text);
    }
    d = -3;                     /* not known yet */
    if (last->value[2]) {
        t = PyUnicode_Compare(domain, last->value[2]);
        if (t == -1 && PyErr_Occurred())
            goto done_err;
        if (t == 0)
            d = last->ix[2];
    }
    if (d == -3 && (d = table_ix(tables, index, T_DOMAIN, domain, TABLE_MAX)) == -2)
        goto done_err;
    if (s < 0 || r < 0 || d < 0)
        goto done;
    last->value[0] = sender;
    last->value[1] = reply;
    Py_XSETREF(last->value[2], Py_NewRef(domain));     /* owned: made here */
    last->ix[0] = s;
    last->ix[1] = r;
    last->ix[2] = d;
    off = PyByteArray_GET_SIZE(blob);
    if (PyByteArray_Resize(blob, off + u8len + tlen) < 0)
        goto done_err;
    memcpy(PyByteArray_AS_STRING(blob) + off, u8, (size_t)u8len);
    if (tlen)
        memcpy(PyByteArray_AS_STRING(blob) + off + u8len, PyBytes_AS_STRING(text), (size_t)tlen);
    ((uint16_t *)col[C_SENDER].buf)[i] = (uint16_t)s;
    ((uint16_t *)col[C_REPLY].buf)[i] = (uint16_t)r;
    ((uint16_t *)col[C_DOM].buf)[i] = (uint16_t)d;
    ((uint32_t *)col[C_ELAPSED].buf)[i] = (uint32_t)ms;
    ((uint64_t *)col[C_MID].buf)[i] = (uint64_t)number;
    ((uint64_t *)col[C_ROFF].buf)[i] = (uint64_t)off;
    ((uint16_t *)col[C_RLEN].buf)[i] = (uint16_t)u8len;
    ((uint16_t *)col[C_REPLEN].buf)[i] = (uint16_t)tlen;
    rc = 1;
    goto done;
done_err:
    rc = -1;
done:
    Py_XDECREF(domain);
    Py_XDECREF(enc);
    Py_XDECREF(text);
    return rc;
}

/* pack_records(pending, columns, blob, kind, obj, tables, index, prefix, last) -> last */
PyObject *
mx_pack_records(PyObject *module, PyObject *args)
{
    PyObject *pending, *columns, *blob, *kind, *obj, *tables, *index, *prefix, *last_in;
    PyObject *key, *rec, *res = NULL;
    Py_buffer col[C_COUNT];
    Py_ssize_t pos = 0, c, held = 0, rows;
    last_seen last = {{NULL, NULL, NULL}, {0, 0, 0}};
    mx_state *st = PyModule_GetState(module);

    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!UO!:pack_records", &PyDict_Type, &pending,
                          &PyTuple_Type, &columns, &PyByteArray_Type, &blob,
                          &PyByteArray_Type, &kind, &PyDict_Type, &obj, &PyTuple_Type, &tables,
                          &PyTuple_Type, &index, &prefix, &PyTuple_Type, &last_in))
        return NULL;
    if (PyTuple_GET_SIZE(columns) != C_COUNT || PyTuple_GET_SIZE(tables) != T_COUNT ||
        PyTuple_GET_SIZE(index) != T_COUNT || PyTuple_GET_SIZE(last_in) != 6) {
        PyErr_SetString(PyExc_ValueError, "pack_records: 8 columns, 4 tables, 4 indexes, last of 6");
        return NULL;
    }
    for (c = 0; c < T_COUNT; c++) {
        if (!PyList_CheckExact(PyTuple_GET_ITEM(tables, c)) ||
            !PyDict_CheckExact(PyTuple_GET_ITEM(index, c))) {
            PyErr_SetString(PyExc_TypeError, "pack_records: tables are lists, indexes dicts");
            return NULL;
        }
    }
    rows = PyByteArray_GET_SIZE(kind);
    for (c = 0; c < C_COUNT; c++, held++) {
        if (PyObject_GetBuffer(PyTuple_GET_ITEM(columns, c), &col[c],
                               PyBUF_WRITABLE | PyBUF_FORMAT | PyBUF_ND) < 0)
            goto done;
        if (col[c].itemsize != col_size[c] || col[c].ndim != 1 ||
            col[c].len / col[c].itemsize < rows) {
            PyBuffer_Release(&col[c]);
            PyErr_Format(PyExc_ValueError, "pack_records: column %zd is not %zd-byte items, "
                         "as long as kind", c, col_size[c]);
            goto done;
        }
    }
    for (c = 0; c < 3; c++) {
        PyObject *v = PyTuple_GET_ITEM(last_in, 2 * c), *ix = PyTuple_GET_ITEM(last_in, 2 * c + 1);
        last.ix[c] = PyLong_AsSsize_t(ix);
        if (last.ix[c] == -1 && PyErr_Occurred())
            goto done;
        last.value[c] = v == Py_None || last.ix[c] < 0 ? NULL : v;
    }
    Py_XINCREF(last.value[2]);
    while (PyDict_Next(pending, &pos, &key, &rec)) {
        Py_ssize_t i = PyLong_AsSsize_t(key);
        int t;

        if (i == -1 && PyErr_Occurred())
            goto done;
        if (i < 0 || i >= rows) {
            PyErr_Format(PyExc_IndexError, "pack_records: index %zd outside the store", i);
            goto done;
        }
        if ((t = pack_one(st, i, rec, col, blob, prefix, tables, index, &last)) < 0)
            goto done;
        if (i >= PyByteArray_GET_SIZE(kind)) {        /* changed under us by a __hash__ */
            PyErr_SetString(PyExc_RuntimeError, "pack_records: the store changed while packed");
            goto done;
        }
        if (t) {
            PyByteArray_AS_STRING(kind)[i] = K_RECORD;
        } else {
            if (PyDict_SetItem(obj, key, rec) < 0)
                goto done;
            PyByteArray_AS_STRING(kind)[i] = K_OBJECT;
        }
    }
    res = Py_BuildValue("(OnOnOn)", last.value[0] ? last.value[0] : Py_None, last.ix[0],
                        last.value[1] ? last.value[1] : Py_None, last.ix[1],
                        last.value[2] ? last.value[2] : Py_None, last.ix[2]);
done:
    Py_XDECREF(last.value[2]);
    while (held-- > 0)
        PyBuffer_Release(&col[held]);
    return res;
}
