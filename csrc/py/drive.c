/* drive.c - the send engine's driver on a Session (see drive.h): the
 * engine's writes and reads go through io/conn with deadlines and the GIL
 * released; a file body's chunks are read with the GIL taken back for the
 * call.  Failures become exceptions here (errors.c). */
#include "drive.h"

#include <errno.h>
#include <string.h>

const stage kind_stage[MX_K_COUNT] = {
    STG_MAIL, STG_RCPT, STG_DATA, STG_END_OF_DATA, STG_END_OF_DATA, STG_RSET,
    STG_END_OF_DATA, STG_RSET,
};
const timeout_key kind_timeout[MX_K_COUNT] = {
    TO_MAIL, TO_RCPT, TO_DATA, TO_END_OF_DATA, TO_END_OF_DATA, TO_COMMAND,
    TO_END_OF_DATA, TO_COMMAND,
};

static int
io_in_step(void *ctx)
{
    drive *d = ctx;
    return mx_conn_in_step(&d->s->c);
}

static int
io_write(void *ctx, const unsigned char *p, size_t n, mx_kind wait, size_t *maybe, int *broken)
{
    drive *d = ctx;
    Session *s = d->s;
    timeout_key k = d->e.per_command && wait != MX_K_COUNT ? kind_timeout[wait] : TO_DATA_BLOCK;

    if (mx_conn_write(&s->c, p, n, deadline_for(s, k), maybe) == 0)
        return 0;
    /* the peer broke the stream (not a timeout): what it sent is still readable */
    *broken = s->c.err.kind == MX_E_IO || s->c.err.kind == MX_E_EOF || s->c.err.kind == MX_E_TLS;
    return -1;
}

/* The next reply.  Of a pipelined group, most are already read: those
 * are parsed without working out a deadline (a clock read each). */
static const mx_reply *
io_read(void *ctx, mx_kind k)
{
    drive *d = ctx;
    Session *s = d->s;
    int rc = mx_conn_buffered_reply(&s->c);

    if (rc < 0 || (rc == 0 && mx_conn_recv_reply(&s->c, deadline_for(s, kind_timeout[k])) < 0))
        return NULL;
    return s->c.reply;
}

/* file.readinto() on a fresh memoryview of the driver's file buffer (a
 * bytearray), released as soon as the call returns: a reader that keeps
 * its argument gets ValueError when it uses it later, never memory the
 * engine has moved on from or freed.  (If the reader took a buffer of the
 * view and kept it, the view cannot be released, but that buffer keeps the
 * bytearray alive.)  The count, or -1 raised. */
Py_ssize_t
readinto_chunk(PyObject *file, PyObject *fobj)
{
    PyObject *view = PyMemoryView_FromObject(fobj), *r;
    Py_ssize_t n = -1;

    if (!view)
        return -1;
    r = PyObject_CallMethod(file, "readinto", "O", view);
    if (r) {
        n = r == Py_None ? -1 : PyLong_AsSsize_t(r);
        Py_DECREF(r);
        if ((n < 0 || n > MX_FILE_CHUNK) && !PyErr_Occurred())
            PyErr_SetString(PyExc_OSError, "readinto() returned no count (a non-blocking file?)");
        if (n > MX_FILE_CHUNK)
            n = -1;
    }
    {
        PyObject *type, *value, *tb;
        PyObject *rel;

        PyErr_Fetch(&type, &value, &tb);
        rel = PyObject_CallMethod(view, "release", NULL);
        if (rel)
            Py_DECREF(rel);
        else
            PyErr_Clear();
        PyErr_Restore(type, value, tb);
    }
    Py_DECREF(view);
    return n;
}

/* The next chunk of a file body, with the GIL taken back for the call; the
 * reader's exception is kept and becomes this message's outcome. */
static long
io_pull(void *ctx, size_t jobi, const unsigned char **p)
{
    drive *d = ctx;
    pjob *pj = &d->pj[jobi];
    Py_ssize_t n = -1;

    PyEval_RestoreThread(d->ts);
    if (pj->file && d->fobj)
        n = readinto_chunk(pj->file, d->fobj);
    else
        PyErr_SetString(PyExc_SystemError, "mailexpress: a pulled body without a file");
    if (n < 0)
        pj->outcome = take_raised();
    d->ts = PyEval_SaveThread();
    *p = d->fbuf.buf;
    return n < 0 ? -1 : (long)n;
}

static void
io_record(void *ctx, char dir, const char *text, size_t len)
{
    drive *d = ctx;
    mx_conn_record(&d->s->c, (mx_tr_dir)dir, text, len);
}

int
drive_init(drive *d, Session *s, size_t n, int files)
{
    memset(d, 0, sizeof(*d));
    d->s = s;
    d->n = n;
    d->io.ctx = d;
    d->io.in_step = io_in_step;
    d->io.write = io_write;
    d->io.read = io_read;
    d->io.pull = io_pull;
    d->io.record = io_record;
    if (!(d->jobs = PyMem_RawCalloc(n ? n : 1, sizeof(mx_job))) ||
        !(d->pj = PyMem_RawCalloc(n ? n : 1, sizeof(pjob)))) {
        PyErr_NoMemory();
        return -1;
    }
    if (files && (!(d->fobj = PyByteArray_FromStringAndSize(NULL, MX_FILE_CHUNK)) ||
                  PyObject_GetBuffer(d->fobj, &d->fbuf, PyBUF_WRITABLE) < 0))
        return -1;
    return 0;
}

int
drive_run(drive *d, int stop_on_error, int per_command, int drain, int serial)
{
    Session *s = d->s;
    int rc;

    mx_engine_init(&d->e, d->jobs, d->n, &d->io, s->c.wbuf, MX_WBUF);
    d->e.pipelining = !serial && (s->caps.ext & MX_EXT_PIPELINING) != 0;
    d->e.stop_on_error = stop_on_error;
    d->e.per_command = per_command;
    d->e.guard = s->txn_open;      /* carried over from the last call */
    d->e.guard_job = MX_NONE;
    d->ts = PyEval_SaveThread();
    rc = mx_engine_run(&d->e);
    if (rc < 0 && drain) {
        mx_error kept = s->c.err;
        mx_engine_drain(&d->e);
        if (d->e.failed != MX_F_421)
            s->c.err = kept;       /* the failure is the first one */
    }
    PyEval_RestoreThread(d->ts);
    d->ts = NULL;
    s->txn_open = rc == 0 && d->e.guard;
    return rc;
}

PyObject *
drive_raise(drive *d)
{
    Session *s = d->s;
    mx_engine *e = &d->e;
    stage stg = kind_stage[e->fail_kind];

    switch (e->failed) {
    case MX_F_NOMEM:
        mx_error_set(&s->c.err, MX_E_IO, ENOMEM, "%s", e->why);
        return fail_io(s, stg);
    case MX_F_INTERNAL:
        mx_error_set(&s->c.err, MX_E_PROTOCOL, 0, "%s", e->why);
        return fail_io(s, stg);
    case MX_F_IO:
        return fail_io(s, stg);
    case MX_F_421:
        return fail_421(s, stg);
    case MX_F_PROTOCOL:
        return fail_protocol(s, stg, e->why);
    case MX_F_SOURCE:
        poison(s, e->why);
        if (d->pj[e->fail_job].outcome) {     /* the file reader's own exception */
            PyObject *o = d->pj[e->fail_job].outcome;
            d->pj[e->fail_job].outcome = NULL;
            PyErr_SetObject((PyObject *)Py_TYPE(o), o);
            Py_DECREF(o);
            return NULL;
        }
        return raise_exc(s, MX_EXC_INPUT, stg, NULL, NULL, "%s", e->why);
    case MX_F_NONE:
        break;
    }
    PyErr_SetString(PyExc_SystemError, "mailexpress: no failure to report");
    return NULL;
}

PyObject *
drive_fatal(drive *d)
{
    mx_engine *e = &d->e;

    if (e->failed == MX_F_SOURCE && d->pj[e->fail_job].outcome) {
        PyObject *o = d->pj[e->fail_job].outcome;
        poison(d->s, e->why);
        d->pj[e->fail_job].outcome = NULL;
        return o;
    }
    drive_raise(d);
    return take_raised();
}

/* A Reply made without its Python __new__ (the fields set as
 * object.__setattr__ sets them; replies equal to one before are shared by
 * the callers, not here).  New reference or NULL raised. */
static PyObject *
new_reply(mx_state *st, int code, const char *enhanced, PyObject *lines, stage stg)
{
    PyObject *vals[4], *self, *args = PyTuple_New(0);
    int i, bad = 0;

    if (!args)
        return NULL;
    self = PyBaseObject_Type.tp_new((PyTypeObject *)st->reply_cls, args, NULL);
    Py_DECREF(args);
    if (!self)
        return NULL;
    vals[0] = PyLong_FromLong(code);
    vals[1] = enhanced ? PyUnicode_FromString(enhanced) : Py_NewRef(Py_None);
    vals[2] = Py_NewRef(lines);
    vals[3] = Py_NewRef(PyTuple_GET_ITEM(st->stages, stg));
    for (i = 0; i < 4; i++) {
        if (!bad && (!vals[i] || PyObject_GenericSetAttr(self, PyTuple_GET_ITEM(st->reply_attrs, i),
                                                           vals[i]) < 0))
            bad = 1;
        Py_XDECREF(vals[i]);
    }
    if (bad)
        Py_CLEAR(self);
    return self;
}

PyObject *
drive_reply(drive *d, const mx_sreply *r)
{
    mx_state *st = state_of(d->s);
    PyObject *lines, *res;
    const char *p = d->e.text + r->off, *end = p + r->len;
    Py_ssize_t n = 1, i = 0;

    if (!st)
        return NULL;
    for (const char *q = p; q < end; q++)
        n += *q == '\n';
    if (!(lines = PyTuple_New(n)))
        return NULL;
    for (;;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        PyObject *l = PyUnicode_DecodeUTF8(p, stop - p, "replace");
        if (!l) {
            Py_DECREF(lines);
            return NULL;
        }
        PyTuple_SET_ITEM(lines, i++, l);
        if (!nl)
            break;
        p = nl + 1;
    }
    res = new_reply(st, r->code, r->enhanced[0] ? r->enhanced : NULL, lines, kind_stage[r->kind]);
    Py_DECREF(lines);
    return res;
}

void
drive_free(drive *d)
{
    size_t i;

    for (i = 0; d->pj && i < d->n; i++) {
        pjob *j = &d->pj[i];
        if (j->have_view)
            PyBuffer_Release(&j->view);
        Py_XDECREF(j->item);
        Py_XDECREF(j->rcpts);
        Py_XDECREF(j->outcome);
        PyMem_RawFree(j->lines);
        PyMem_RawFree(j->ends);
    }
    mx_engine_free(&d->e);
    PyMem_RawFree(d->jobs);
    PyMem_RawFree(d->pj);
    if (d->fbuf.obj)
        PyBuffer_Release(&d->fbuf);
    Py_XDECREF(d->fobj);
}
