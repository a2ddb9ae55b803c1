/* testhooks.c - the module mailexpress._testhooks: tiny entry points into
 * the pure protocol files, for unit and property tests (tests/test_pure_*.py).
 * Built for the test suite only, not part of the shipped _core.  Each hands
 * bytes to one pure function and returns what it produced (_engine_run: the
 * send engine against a scripted server, all in memory). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "body.h"
#include "cmd.h"
#include "ehlo.h"
#include "engine.h"
#include "reply.h"
#include "sasl.h"
#include "verdict.h"

static PyObject *
reply_to_tuple(const mx_reply *r)
{
    PyObject *lines = PyList_New(0), *res;
    size_t i;

    if (!lines)
        return NULL;
    for (i = 0; i < r->nlines; i++) {
        PyObject *l = PyBytes_FromStringAndSize(r->text + r->line_off[i], (Py_ssize_t)r->line_len[i]);
        if (!l || PyList_Append(lines, l) < 0) {
            Py_XDECREF(l);
            Py_DECREF(lines);
            return NULL;
        }
        Py_DECREF(l);
    }
    res = Py_BuildValue("(izN)", r->code, r->enhanced[0] ? r->enhanced : NULL, lines);
    return res;
}

/* _reply_parse(data, chunk=0) -> (replies, consumed, error or None)
 * Feeds data (in pieces of `chunk` bytes when > 0) and collects replies. */
static PyObject *
th_reply_parse(PyObject *m, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t chunk = 0;
    mx_reply_parser *p = NULL;
    mx_reply *r = NULL;
    PyObject *list = NULL, *res = NULL;
    size_t pos = 0, total;
    const char *error = NULL;

    (void)m;
    if (!PyArg_ParseTuple(args, "y*|n", &b, &chunk))
        return NULL;
    p = PyMem_Malloc(sizeof(*p));
    r = PyMem_Malloc(sizeof(*r));
    list = PyList_New(0);
    if (!p || !r || !list) {
        PyErr_NoMemory();
        goto done;
    }
    mx_reply_parser_init(p);
    total = (size_t)b.len;
    while (pos < total) {
        size_t avail = total - pos, used = 0;
        mx_reply_status st;
        if (chunk > 0 && avail > (size_t)chunk)
            avail = (size_t)chunk;
        st = mx_reply_parse(p, (const unsigned char *)b.buf + pos, avail, &used, r);
        pos += used;
        if (st == MX_REPLY_COMPLETE) {
            PyObject *t = reply_to_tuple(r);
            if (!t || PyList_Append(list, t) < 0) {
                Py_XDECREF(t);
                goto done;
            }
            Py_DECREF(t);
        } else if (st != MX_REPLY_INCOMPLETE) {
            error = mx_reply_strerror(st);
            break;
        }
    }
    res = Py_BuildValue("(Onz)", list, (Py_ssize_t)pos, error);
done:
    Py_XDECREF(list);
    PyMem_Free(p);
    PyMem_Free(r);
    PyBuffer_Release(&b);
    return res;
}

/* Appends n bytes to a bytearray; -1 raised. */
static int
append(PyObject *acc, const unsigned char *p, size_t n)
{
    Py_ssize_t len = PyByteArray_GET_SIZE(acc);

    if (PyByteArray_Resize(acc, len + (Py_ssize_t)n) < 0)
        return -1;
    memcpy(PyByteArray_AS_STRING(acc) + len, p, n);
    return 0;
}

/* _body_encode(data, chunk=0, out_cap=65536) -> bytes on the wire after 354 */
static PyObject *
th_body_encode(PyObject *m, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t chunk = 0, out_cap = 65536;
    unsigned char *out = NULL;
    PyObject *acc = NULL, *res = NULL;
    mx_body_enc enc;
    size_t pos = 0;

    (void)m;
    if (!PyArg_ParseTuple(args, "y*|nn", &b, &chunk, &out_cap))
        return NULL;
    if (out_cap < MX_BODY_FINISH_MAX) {
        PyErr_SetString(PyExc_ValueError, "out_cap must be at least 5");
        goto done;
    }
    out = PyMem_Malloc((size_t)out_cap);
    acc = PyByteArray_FromStringAndSize(NULL, 0);
    if (!out || !acc) {
        PyErr_NoMemory();
        goto done;
    }
    mx_body_init(&enc);
    while (pos < (size_t)b.len) {
        size_t avail = (size_t)b.len - pos, used = 0, n;
        if (chunk > 0 && avail > (size_t)chunk)
            avail = (size_t)chunk;
        n = mx_body_encode(&enc, (const unsigned char *)b.buf + pos, avail, &used, out, (size_t)out_cap);
        if (used == 0 && n == 0) {
            PyErr_SetString(PyExc_RuntimeError, "encoder made no progress");
            goto done;
        }
        pos += used;
        if (append(acc, out, n) < 0)
            goto done;
    }
    if (append(acc, out, mx_body_finish(&enc, out, (size_t)out_cap)) < 0)
        goto done;
    res = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(acc), PyByteArray_GET_SIZE(acc));
done:
    Py_XDECREF(acc);
    PyMem_Free(out);
    PyBuffer_Release(&b);
    return res;
}

/* _body_scan(data) -> (size, has_8bit, has_nul) */
static PyObject *
th_body_scan(PyObject *m, PyObject *args)
{
    Py_buffer b;
    mx_body_scan_state s;

    (void)m;
    if (!PyArg_ParseTuple(args, "y*", &b))
        return NULL;
    mx_body_scan_init(&s);
    mx_body_scan(&s, b.buf, (size_t)b.len);
    mx_body_scan_finish(&s);
    PyBuffer_Release(&b);
    return Py_BuildValue("(KOO)", (unsigned long long)s.info.size,
                         s.info.has_8bit ? Py_True : Py_False,
                         s.info.has_nul ? Py_True : Py_False);
}

/* _ehlo_parse(reply_bytes) -> (extensions, auth mechanisms, size) */
static PyObject *
th_ehlo_parse(PyObject *m, PyObject *args)
{
    static const char *const ext_names[] = {
        "STARTTLS", "PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING",
        "BINARYMIME", "DSN", "ENHANCEDSTATUSCODES", "SIZE", "AUTH"};
    Py_buffer b;
    mx_reply_parser *p = NULL;
    mx_reply *r = NULL;
    mx_caps caps;
    size_t used;
    unsigned i;
    PyObject *exts = NULL, *mechs = NULL, *res = NULL;

    (void)m;
    if (!PyArg_ParseTuple(args, "y*", &b))
        return NULL;
    p = PyMem_Malloc(sizeof(*p));
    r = PyMem_Malloc(sizeof(*r));
    if (!p || !r) {
        PyErr_NoMemory();
        goto done;
    }
    mx_reply_parser_init(p);
    if (mx_reply_parse(p, b.buf, (size_t)b.len, &used, r) != MX_REPLY_COMPLETE) {
        PyErr_SetString(PyExc_ValueError, "not one complete reply");
        goto done;
    }
    mx_ehlo_parse(r, &caps);
    exts = PySet_New(NULL);
    mechs = PySet_New(NULL);
    if (!exts || !mechs)
        goto done;
    for (i = 0; i < 10; i++) {
        if (caps.ext & (1u << i)) {
            PyObject *n = PyUnicode_FromString(ext_names[i]);
            if (!n || PySet_Add(exts, n) < 0) {
                Py_XDECREF(n);
                goto done;
            }
            Py_DECREF(n);
        }
    }
    for (i = 0; i < 8; i++) {
        unsigned bit = 1u << i;
        if (caps.auth & bit) {
            const char *name = mx_auth_mech_name(bit);
            PyObject *n = PyUnicode_FromString(name ? name : "OTHER");
            if (!n || PySet_Add(mechs, n) < 0) {
                Py_XDECREF(n);
                goto done;
            }
            Py_DECREF(n);
        }
    }
    res = Py_BuildValue("(OOK)", exts, mechs, (unsigned long long)caps.size);
done:
    Py_XDECREF(exts);
    Py_XDECREF(mechs);
    PyMem_Free(p);
    PyMem_Free(r);
    PyBuffer_Release(&b);
    return res;
}

/* _cmd_path(verb, addr, params) -> bytes, or ValueError naming the problem */
static PyObject *
th_cmd_path(PyObject *m, PyObject *args)
{
    const char *verb;
    Py_buffer a, p;
    char out[MX_CMD_MAX];
    size_t len;
    mx_cmd_status st;
    PyObject *res = NULL;

    (void)m;
    if (!PyArg_ParseTuple(args, "sy*y*", &verb, &a, &p))
        return NULL;
    st = mx_cmd_path(out, sizeof(out), &len, verb, a.buf, (size_t)a.len, p.buf, (size_t)p.len);
    if (st != MX_CMD_OK)
        PyErr_SetString(PyExc_ValueError, mx_cmd_strerror(st));
    else
        res = PyBytes_FromStringAndSize(out, (Py_ssize_t)len);
    PyBuffer_Release(&a);
    PyBuffer_Release(&p);
    return res;
}

/* What a pure function of sasl.c made: bytes, or ValueError with its reason. */
static PyObject *
sasl_made(mx_sasl_status st, const void *out, size_t len)
{
    if (st != MX_SASL_OK) {
        PyErr_SetString(PyExc_ValueError, mx_sasl_strerror(st));
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)len);
}

typedef mx_sasl_status (*sasl_decoder)(const char *in, size_t n, unsigned char *out, size_t cap,
                                       size_t *len);

/* One bytes argument decoded by `decode` into at most `cap` bytes (0: as
 * many as the input and one). */
static PyObject *
sasl_decode_arg(PyObject *args, sasl_decoder decode, size_t cap)
{
    Py_buffer b;
    unsigned char *out;
    size_t len = 0;
    mx_sasl_status st;
    PyObject *res;

    if (!PyArg_ParseTuple(args, "y*", &b))
        return NULL;
    if (!cap)
        cap = (size_t)b.len + 1;
    if (!(out = PyMem_Malloc(cap))) {
        PyBuffer_Release(&b);
        return PyErr_NoMemory();
    }
    st = decode(b.buf, (size_t)b.len, out, cap, &len);     /* before len is read */
    res = sasl_made(st, out, len);
    PyMem_Free(out);
    PyBuffer_Release(&b);
    return res;
}

/* _b64_decode(data) -> bytes, or ValueError */
static PyObject *
th_b64_decode(PyObject *m, PyObject *args)
{
    (void)m;
    return sasl_decode_arg(args, mx_b64_decode, 0);
}

/* _sasl_plain(user, password) -> str (base64), or ValueError */
static PyObject *
th_sasl_plain(PyObject *m, PyObject *args)
{
    Py_buffer u, p;
    char out[1100];
    size_t len;
    mx_sasl_status st;
    PyObject *res = NULL;

    (void)m;
    if (!PyArg_ParseTuple(args, "y*y*", &u, &p))
        return NULL;
    st = mx_sasl_plain("", 0, u.buf, (size_t)u.len, p.buf, (size_t)p.len, out, sizeof(out), &len);
    if (st != MX_SASL_OK)
        PyErr_SetString(PyExc_ValueError, mx_sasl_strerror(st));
    else
        res = PyUnicode_FromStringAndSize(out, (Py_ssize_t)len);
    mx_wipe(out, sizeof(out));
    PyBuffer_Release(&u);
    PyBuffer_Release(&p);
    return res;
}

/* _ehlo_auth_list(reply_bytes, cap=16385) -> str: the union of mechanisms */
static PyObject *
th_ehlo_auth_list(PyObject *m, PyObject *args)
{
    Py_buffer b;
    Py_ssize_t cap = MX_REPLY_TEXT_MAX + 1;
    mx_reply_parser *p = NULL;
    mx_reply *r = NULL;
    char *out = NULL;
    size_t used, n;
    PyObject *res = NULL;

    (void)m;
    if (!PyArg_ParseTuple(args, "y*|n", &b, &cap))
        return NULL;
    if (cap < 1 || cap > MX_REPLY_TEXT_MAX + 1) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "cap out of range");
        return NULL;
    }
    p = PyMem_Malloc(sizeof(*p));
    r = PyMem_Malloc(sizeof(*r));
    out = PyMem_Malloc((size_t)cap);
    if (!p || !r || !out) {
        PyErr_NoMemory();
        goto done;
    }
    mx_reply_parser_init(p);
    if (mx_reply_parse(p, b.buf, (size_t)b.len, &used, r) != MX_REPLY_COMPLETE) {
        PyErr_SetString(PyExc_ValueError, "not one complete reply");
        goto done;
    }
    n = mx_ehlo_auth_list(r, out, (size_t)cap);
    if (strlen(out) != n) {
        PyErr_SetString(PyExc_AssertionError, "length and NUL disagree");
        goto done;
    }
    res = PyUnicode_FromStringAndSize(out, (Py_ssize_t)n);
done:
    PyMem_Free(p);
    PyMem_Free(r);
    PyMem_Free(out);
    PyBuffer_Release(&b);
    return res;
}

/* _sasl_oauth(user, token, host=None, port=0) -> bytes: XOAUTH2's message
 * when host is None, else OAUTHBEARER's; ValueError naming the problem */
static PyObject *
th_sasl_oauth(PyObject *m, PyObject *args)
{
    Py_buffer u, t, h = {0};
    PyObject *host = Py_None, *res = NULL;
    unsigned port = 0;
    unsigned char *out;
    size_t cap, len = 0;
    mx_sasl_status st;

    (void)m;
    if (!PyArg_ParseTuple(args, "y*y*|OI", &u, &t, &host, &port))
        return NULL;
    if (host != Py_None && PyObject_GetBuffer(host, &h, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&u);
        PyBuffer_Release(&t);
        return NULL;
    }
    cap = mx_sasl_oauth_size((size_t)u.len, (size_t)h.len, (size_t)t.len);
    out = PyMem_Malloc(cap);
    if (!out) {
        PyErr_NoMemory();
        goto done;
    }
    if (host == Py_None)
        st = mx_sasl_xoauth2(u.buf, (size_t)u.len, t.buf, (size_t)t.len, out, cap, &len);
    else
        st = mx_sasl_oauthbearer(u.buf, (size_t)u.len, h.buf, (size_t)h.len, port,
                                 t.buf, (size_t)t.len, out, cap, &len);
    res = sasl_made(st, out, len);
    mx_wipe(out, cap);
    PyMem_Free(out);
done:
    if (host != Py_None)
        PyBuffer_Release(&h);
    PyBuffer_Release(&u);
    PyBuffer_Release(&t);
    return res;
}

/* _sasl_challenge(text) -> bytes: a 334 challenge decoded (64 KiB bound) */
static PyObject *
th_sasl_challenge(PyObject *m, PyObject *args)
{
    (void)m;
    return sasl_decode_arg(args, mx_sasl_decode_challenge, MX_SASL_BLOB_MAX);
}

/* _verdict(after, code) -> str: what verdict.c says a reply means */
static PyObject *
th_verdict(PyObject *m, PyObject *args)
{
    static const char *const afters[MX_AFTER_COUNT] = {
        "greeting", "ehlo", "starttls", "auth", "mail", "rcpt", "data",
        "end_of_data", "bdat", "rset", "noop", "quit",
    };
    static const char *const names[] = {
        "accepted", "continue", "refused", "closing", "out_of_step",
    };
    const char *after;
    int code, i;
    char why[96];

    (void)m;
    if (!PyArg_ParseTuple(args, "si", &after, &code))
        return NULL;
    for (i = 0; i < MX_AFTER_COUNT; i++)
        if (strcmp(after, afters[i]) == 0)
            break;
    if (i == MX_AFTER_COUNT || code < 200 || code > 599) {
        PyErr_SetString(PyExc_ValueError, "unknown command or code out of 200..599");
        return NULL;
    }
    mx_verdict_why((mx_after)i, code, why, sizeof(why));
    return Py_BuildValue("(ss)", names[mx_verdict_of((mx_after)i, code)], why);
}

/* ---- _engine_run: the pure send engine against a scripted server -------- */

typedef struct {
    char *wire;
    size_t wlen, wcap, fail_after;   /* fail_after: 0 never */
    int broken;
    PyObject *replies, *reads;       /* list of codes; list of kind names */
    Py_ssize_t next;
    mx_reply reply;
} th_server;

static const char *const th_kinds[MX_K_COUNT] = {
    "MAIL", "RCPT", "DATA", "END_OF_DATA", "BDAT", "RSET", "EMPTY", "GUARD",
};

static int
th_in_step(void *ctx)
{
    (void)ctx;
    return 0;
}

static int
th_write(void *ctx, const unsigned char *p, size_t n, mx_kind wait, size_t *maybe, int *broken)
{
    th_server *t = ctx;
    size_t take = n;
    int fail = 0;

    (void)wait;
    if (t->fail_after && t->wlen + n >= t->fail_after) {
        take = t->fail_after - t->wlen;
        fail = 1;
    }
    if (t->wlen + take > t->wcap) {
        size_t cap = 2 * (t->wlen + take) + 256;
        char *nw = PyMem_Realloc(t->wire, cap);
        if (!nw)
            return -1;
        t->wire = nw;
        t->wcap = cap;
    }
    memcpy(t->wire + t->wlen, p, take);
    t->wlen += take;
    if (fail) {
        *maybe = take;
        *broken = t->broken;
        return -1;
    }
    return 0;
}

static const mx_reply *
th_read(void *ctx, mx_kind k)
{
    th_server *t = ctx;
    PyObject *name = PyUnicode_FromString(th_kinds[k]);
    long code;

    if (!name || PyList_Append(t->reads, name) < 0) {
        Py_XDECREF(name);
        return NULL;
    }
    Py_DECREF(name);
    if (t->next >= PyList_GET_SIZE(t->replies))
        return NULL;                 /* EOF */
    code = PyLong_AsLong(PyList_GET_ITEM(t->replies, t->next++));
    if (code < 200 || code > 559)
        return NULL;                 /* a reply that does not parse */
    memset(&t->reply, 0, sizeof(t->reply));
    t->reply.code = (int)code;
    t->reply.nlines = 1;
    t->reply.line_len[0] = t->reply.text_len = 2;
    memcpy(t->reply.text, "ok", 2);
    return &t->reply;
}

static long
th_pull(void *ctx, size_t job, const unsigned char **p)
{
    (void)ctx;
    (void)job;
    (void)p;
    return -1;
}

/* _engine_run(jobs, replies, pipelining=False, stop_on_error=False,
 *             fail_after=0, broken=True)
 *   jobs: [(mail bytes or None, [rcpt bytes], mode, body bytes, rset)], mode
 *   one of "none", "data", "bdat", "binary"; lines without CRLF.
 *   replies: codes the server answers in turn (then EOF; < 200: garbage).
 * -> (wire, reads, [(outcome, maybe)], failure, fail_job) */
static PyObject *
th_engine_run(PyObject *m, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"jobs", "replies", "pipelining", "stop_on_error", "fail_after",
                             "broken", NULL};
    static const char *const modes[] = {"none", "data", "bdat", "binary"};
    static const char *const outcomes[] = {
        "none", "skipped", "sent", "done", "refused_mail", "refused_rcpt", "refused_data",
        "refused_end", "no_final", "failed", "unknown", "not_sent", "stopped",
    };
    static const char *const fails[] = {"", "io", "421", "protocol", "source", "nomem",
                                        "internal"};
    PyObject *jobs_in, *replies, *res = NULL, *fast = NULL, *outs = NULL;
    int pipelining = 0, stop = 0, broken = 1;
    Py_ssize_t fail_after = 0, n = 0, i;
    th_server t;
    mx_engine e;
    mx_engine_io io = {&t, th_in_step, th_write, th_read, th_pull, NULL};
    mx_job *jobs = NULL;
    char *lines = NULL;
    size_t *offs = NULL, lcap = 0, llen = 0, ocap = 0, olen = 0;
    unsigned char *wbuf = NULL;

    (void)m;
    memset(&t, 0, sizeof(t));
    memset(&e, 0, sizeof(e));
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!|ppnp", kwlist, &jobs_in, &PyList_Type,
                                     &replies, &pipelining, &stop, &fail_after, &broken))
        return NULL;
    if (!(fast = PySequence_Fast(jobs_in, "jobs must be a sequence")))
        return NULL;
    n = PySequence_Fast_GET_SIZE(fast);
    /* first pass: sizes, so that the pointers into lines stay put */
    for (i = 0; i < n; i++) {
        PyObject *mail, *rcpts, *body;
        const char *mode;
        int rset;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "OO!sSp", &mail, &PyList_Type,
                              &rcpts, &mode, &body, &rset))
            goto done;
        lcap += (mail != Py_None && PyBytes_Check(mail) ? (size_t)PyBytes_GET_SIZE(mail) : 0) + 2;
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(rcpts); k++) {
            if (!PyBytes_Check(PyList_GET_ITEM(rcpts, k))) {
                PyErr_SetString(PyExc_TypeError, "recipients must be bytes");
                goto done;
            }
            lcap += (size_t)PyBytes_GET_SIZE(PyList_GET_ITEM(rcpts, k)) + 2;
        }
        ocap += (size_t)PyList_GET_SIZE(rcpts) + 1;
    }
    if (!(jobs = PyMem_Calloc((size_t)n + 1, sizeof(*jobs))) || !(lines = PyMem_Malloc(lcap + 1)) ||
        !(offs = PyMem_Malloc((ocap + 1) * sizeof(*offs))) ||
        !(wbuf = PyMem_Malloc(MX_ENGINE_WBUF_MIN))) {
        PyErr_NoMemory();
        goto done;
    }
    for (i = 0; i < n; i++) {
        PyObject *mail, *rcpts, *body;
        const char *mode;
        int rset, md;
        mx_job *j = &jobs[i];
        mx_body_scan_state sc;

        (void)PyArg_ParseTuple(PySequence_Fast_GET_ITEM(fast, i), "OO!sSp", &mail, &PyList_Type,
                               &rcpts, &mode, &body, &rset);
        for (md = 0; md < 4 && strcmp(mode, modes[md]); md++)
            ;
        if (md == 4 || (mail != Py_None && !PyBytes_Check(mail))) {
            PyErr_SetString(PyExc_ValueError, "mode: none, data, bdat or binary; mail: bytes or None");
            goto done;
        }
        if (mail != Py_None) {
            j->mail = lines + llen;
            memcpy(lines + llen, PyBytes_AS_STRING(mail), (size_t)PyBytes_GET_SIZE(mail));
            llen += (size_t)PyBytes_GET_SIZE(mail);
            memcpy(lines + llen, "\r\n", 2);
            llen += 2;
            j->mail_len = (size_t)PyBytes_GET_SIZE(mail) + 2;
        }
        j->rcpt = lines + llen;
        j->rcpt_off = offs + olen;
        j->nrcpt = (size_t)PyList_GET_SIZE(rcpts);
        offs[olen++] = 0;
        for (Py_ssize_t k = 0; k < PyList_GET_SIZE(rcpts); k++) {
            PyObject *r = PyList_GET_ITEM(rcpts, k);
            memcpy(lines + llen, PyBytes_AS_STRING(r), (size_t)PyBytes_GET_SIZE(r));
            llen += (size_t)PyBytes_GET_SIZE(r);
            memcpy(lines + llen, "\r\n", 2);
            llen += 2;
            offs[olen] = offs[olen - 1] + (size_t)PyBytes_GET_SIZE(r) + 2;
            olen++;
        }
        j->mode = (mx_body_mode)md;
        j->rset = rset;
        j->body = (const unsigned char *)PyBytes_AS_STRING(body);
        j->body_len = (size_t)PyBytes_GET_SIZE(body);
        j->accepted_before = !j->mail && !j->nrcpt;
        mx_body_scan_init(&sc);
        mx_body_scan(&sc, j->body, j->body_len);
        mx_body_scan_finish(&sc);
        j->size = md == MX_BODY_BINARY ? j->body_len : sc.info.size;
    }
    t.replies = replies;
    t.fail_after = (size_t)fail_after;
    t.broken = broken;
    if (!(t.reads = PyList_New(0)))
        goto done;
    mx_engine_init(&e, jobs, (size_t)n, &io, wbuf, MX_ENGINE_WBUF_MIN);
    e.pipelining = pipelining;
    e.stop_on_error = stop;
    if (mx_engine_run(&e) < 0)
        mx_engine_drain(&e);
    if (PyErr_Occurred() || !(outs = PyList_New(n)))
        goto done;
    for (i = 0; i < n; i++) {
        int maybe;
        mx_outcome oc = mx_engine_outcome(&e, (size_t)i, &maybe);
        PyObject *o = Py_BuildValue("(sO)", outcomes[oc], maybe ? Py_True : Py_False);
        if (!o)
            goto done;
        PyList_SET_ITEM(outs, i, o);
    }
    res = Py_BuildValue("(y#OOsn)", t.wire ? t.wire : "", (Py_ssize_t)t.wlen, t.reads, outs,
                        fails[e.failed], e.failed ? (Py_ssize_t)e.fail_job : (Py_ssize_t)-1);
done:
    mx_engine_free(&e);
    Py_XDECREF(outs);
    Py_XDECREF(t.reads);
    PyMem_Free(t.wire);
    PyMem_Free(jobs);
    PyMem_Free(lines);
    PyMem_Free(offs);
    PyMem_Free(wbuf);
    Py_DECREF(fast);
    return res;
}

static PyMethodDef th_methods[] = {
    {"_reply_parse", th_reply_parse, METH_VARARGS, "test hook: reply.c"},
    {"_body_encode", th_body_encode, METH_VARARGS, "test hook: body.c encoder"},
    {"_body_scan", th_body_scan, METH_VARARGS, "test hook: body.c SIZE/8-bit scan"},
    {"_ehlo_parse", th_ehlo_parse, METH_VARARGS, "test hook: ehlo.c"},
    {"_cmd_path", th_cmd_path, METH_VARARGS, "test hook: cmd.c MAIL/RCPT"},
    {"_b64_decode", th_b64_decode, METH_VARARGS, "test hook: sasl.c base64"},
    {"_sasl_plain", th_sasl_plain, METH_VARARGS, "test hook: sasl.c PLAIN"},
    {"_sasl_oauth", th_sasl_oauth, METH_VARARGS, "test hook: sasl.c XOAUTH2/OAUTHBEARER"},
    {"_sasl_challenge", th_sasl_challenge, METH_VARARGS, "test hook: sasl.c 334 decoding"},
    {"_ehlo_auth_list", th_ehlo_auth_list, METH_VARARGS, "test hook: ehlo.c AUTH union"},
    {"_verdict", th_verdict, METH_VARARGS, "test hook: verdict.c"},
    {"_engine_run", (PyCFunction)(void (*)(void))th_engine_run, METH_VARARGS | METH_KEYWORDS,
     "test hook: engine.c against a scripted server"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot th_slots[] = {
    {0, NULL},
};

static PyModuleDef th_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mailexpress._testhooks",
    .m_doc = "Test hooks into the pure protocol files (for the test suite only).",
    .m_size = 0,
    .m_methods = th_methods,
    .m_slots = th_slots,
};

PyMODINIT_FUNC
PyInit__testhooks(void)
{
    return PyModuleDef_Init(&th_module_def);
}
