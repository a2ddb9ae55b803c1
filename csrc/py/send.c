/* send.c - the send engine's Python side: phase 1 (prepare: arguments
 * checked, envelope formatted, body scanned, GIL held), phase 3 (outcomes),
 * and the methods that run on it: send_raw, send_many_raw; and try_sender's
 * pipelined MAIL/RCPT/RSET.  Phase 2 is engine.c. */
#include "engine.h"

#include <stdio.h>
#include <string.h>

#include "body.h"
#include "cmd.h"

/* ---- phase 1: prepare ---------------------------------------------------- */

/* Appends to a PyMem_Raw buffer, growing it; -1 raised. */
static int
grow_put(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n > *cap) {
        size_t nc = *cap ? *cap : 1024;
        char *nb;
        while (nc < *len + n)
            nc *= 2;
        if (!(nb = PyMem_RawRealloc(*buf, nc))) {
            PyErr_NoMemory();
            return -1;
        }
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    return 0;
}

/* Scans a seekable binary file from where it stands and goes back there.
 * -1 raised. */
static int
scan_file(PyObject *file, mx_body_scan_state *scan, batch *b)
{
    PyObject *pos = NULL, *r;
    int rc = -1;

    r = PyObject_CallMethod(file, "seekable", NULL);
    if (!r)
        return -1;
    if (!PyObject_IsTrue(r)) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_TypeError,
                        "a file body must be seekable (it is read twice: once for SIZE, "
                        "once to send); read it into bytes first");
        return -1;
    }
    Py_DECREF(r);
    if (!(pos = PyObject_CallMethod(file, "tell", NULL)))
        return -1;
    for (;;) {
        Py_ssize_t n;
        if ((n = readinto_chunk(file, b->fobj)) < 0)
            goto done;
        if (n == 0)
            break;
        mx_body_scan(scan, b->fbuf.buf, (size_t)n);
    }
    if (!(r = PyObject_CallMethod(file, "seek", "O", pos)))
        goto done;
    Py_DECREF(r);
    rc = 0;
done:
    Py_DECREF(pos);
    return rc;
}

/* Checks one message and formats its envelope.  0 ready; 1 refused before
 * sending (j->outcome holds the exception); -1 raised (out of memory). */
static int
prepare_job(Session *s, batch *b, job *j)
{
    PyObject *from, *to, *body, *mopts = Py_None, *ropts = Py_None;
    char cmd[MX_PATH_MAX + 1100], extra[128];
    char *rl = NULL;
    size_t len, rlen = 0, rcap = 0, cap = 0, elen = 0, i;
    int non_ascii = 0;
    mx_body_scan_state scan;

    if (!PyTuple_Check(j->item)) {
        PyErr_SetString(PyExc_TypeError, "each message must be a tuple "
                        "(from_addr, to_addrs, msg[, mail_options[, rcpt_options]])");
        goto bad;
    }
    if (!PyArg_ParseTuple(j->item, "OOO|OO:message", &from, &to, &body, &mopts, &ropts))
        goto bad;
    if (PyUnicode_Check(body)) {
        PyErr_SetString(PyExc_TypeError, "msg must be bytes or a binary file; encode it first");
        goto bad;
    }
    j->rcpts = PyUnicode_Check(to) ? PyTuple_Pack(1, to)
                                   : PySequence_Fast(to, "to_addrs must be a str or a sequence of str");
    if (!j->rcpts)
        goto bad;
    j->nrcpt = (size_t)PySequence_Fast_GET_SIZE(j->rcpts);
    if (!j->nrcpt) {
        raise_exc(s, MX_EXC_INPUT, STG_RCPT, NULL, NULL, "no recipients given; nothing was sent");
        goto bad;
    }
    for (i = 0; i < j->nrcpt; i++) {
        if (format_path(s, "RCPT TO", PySequence_Fast_GET_ITEM(j->rcpts, (Py_ssize_t)i), ropts,
                        NULL, STG_RCPT, cmd, sizeof(cmd), &len, &non_ascii) < 0 ||
            grow_put(&rl, &rlen, &rcap, cmd, len) < 0)
            goto bad;
    }
    if (format_path(s, "MAIL FROM", from, mopts, NULL, STG_MAIL, cmd, sizeof(cmd), &len,
                    &non_ascii) < 0)
        goto bad;
    mx_body_scan_init(&scan);
    if (PyObject_CheckBuffer(body)) {
        if (PyObject_GetBuffer(body, &j->view, PyBUF_SIMPLE) < 0)
            goto bad;
        j->have_view = 1;
        Py_BEGIN_ALLOW_THREADS
        mx_body_scan(&scan, j->view.buf, (size_t)j->view.len);
        Py_END_ALLOW_THREADS
    } else if (PyObject_HasAttrString(body, "readinto")) {
        j->file = body;
        if (scan_file(body, &scan, b) < 0)
            goto bad;
    } else {
        PyErr_Format(PyExc_TypeError, "msg must be bytes-like or a binary file object, not %.100s",
                     Py_TYPE(body)->tp_name);
        goto bad;
    }
    mx_body_scan_finish(&scan);
    j->size = scan.info.size;
    j->mode = (s->caps.ext & MX_EXT_CHUNKING) ? B_BDAT : B_DATA;
    if (scan.info.has_nul) {
        if (!(s->caps.ext & MX_EXT_CHUNKING) || !(s->caps.ext & MX_EXT_BINARYMIME)) {
            raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                      "the message contains NUL bytes, which only BINARYMIME with CHUNKING "
                      "can carry, and the server does not offer them; encode the binary "
                      "parts (base64) first; nothing was sent");
            goto bad;
        }
        j->mode = B_BINARY;
        j->size = j->file ? scan.info.raw_size : (uint64_t)j->view.len;
    }
    if (scan.info.has_8bit && j->mode != B_BINARY && !(s->caps.ext & MX_EXT_8BITMIME)) {
        raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                  "the message has 8-bit bytes but the server does not offer 8BITMIME "
                  "(RFC 6152); encode the body (quoted-printable or base64), or let "
                  "send_as build it, which does; nothing was sent");
        goto bad;
    }
    extra[0] = '\0';
    if (s->caps.ext & MX_EXT_SIZE) {
        if (s->caps.size && j->size > s->caps.size) {
            raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                      "the message is %llu octets but the server accepts at most "
                      "%llu (SIZE); nothing was sent",
                      (unsigned long long)j->size, (unsigned long long)s->caps.size);
            goto bad;
        }
        elen += (size_t)snprintf(extra + elen, sizeof(extra) - elen, "SIZE=%llu",
                                 (unsigned long long)j->size);
    }
    if (j->mode == B_BINARY)
        elen += (size_t)snprintf(extra + elen, sizeof(extra) - elen, "%sBODY=BINARYMIME",
                                 elen ? " " : "");
    else if (scan.info.has_8bit && (s->caps.ext & MX_EXT_8BITMIME))
        elen += (size_t)snprintf(extra + elen, sizeof(extra) - elen, "%sBODY=8BITMIME",
                                 elen ? " " : "");
    if (non_ascii) {
        if (!(s->caps.ext & MX_EXT_SMTPUTF8)) {
            raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                      "an address is not ASCII but the server does not offer "
                      "SMTPUTF8; nothing was sent");
            goto bad;
        }
        elen += (size_t)snprintf(extra + elen, sizeof(extra) - elen, "%sSMTPUTF8",
                                 elen ? " " : "");
    }
    if (format_path(s, "MAIL FROM", from, mopts, extra, STG_MAIL, cmd, sizeof(cmd), &len, NULL) < 0)
        goto bad;
    {
        size_t mlen = len;
        len = 0;
        if (grow_put(&j->lines, &len, &cap, cmd, mlen) < 0 ||
            grow_put(&j->lines, &len, &cap, rl ? rl : "", rlen) < 0)
            goto bad;
    }
    if (!(j->ends = PyMem_RawMalloc((j->nrcpt + 1) * sizeof(size_t)))) {
        PyErr_NoMemory();
        goto bad;
    }
    {
        /* line k ends after its CRLF; lines hold no CR or LF of their own */
        size_t k = 0, p;
        for (p = 0; p + 1 < len && k <= j->nrcpt; p++)
            if (j->lines[p] == '\r' && j->lines[p + 1] == '\n')
                j->ends[k++] = p + 2;
    }
    j->serial = j->nrcpt + 2 > MX_PIPELINE_MAX;
    j->mail_ok = -1;
    PyMem_RawFree(rl);
    return 0;
bad:
    PyMem_RawFree(rl);
    if (PyErr_ExceptionMatches(PyExc_MemoryError))
        return -1;
    j->outcome = take_raised();
    return j->outcome ? 1 : -1;
}

/* ---- phase 3: outcomes --------------------------------------------------- */

/* A Reply for a stored reply (lines joined by '\n' in the arena). */
static PyObject *
make_sreply(Session *s, batch *b, const sreply *r)
{
    mx_state *st = state_of(s);
    PyObject *lines, *res;
    const char *p = b->text + r->off, *end = p + r->len;
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
    res = PyObject_CallFunction(st->reply_cls, "isOs", r->code,
                                r->enhanced[0] ? r->enhanced : NULL, lines,
                                stage_names[kind_stage[r->kind]]);
    Py_DECREF(lines);
    return res;
}

/* The outcome of a job whose replies all came: (refused, reply) or the
 * refusal as an exception instance.  New reference or NULL raised. */
static PyObject *
finished_outcome(Session *s, batch *b, size_t jobi)
{
    job *j = &b->jobs[jobi];
    PyObject *refused = PyDict_New(), *mail_r = NULL, *data_r = NULL, *final_r = NULL;
    PyObject *res = NULL, *extra = NULL;
    int data_code = 0, final_code = 0;
    size_t k;

    if (!refused)
        return NULL;
    for (k = j->first_reply; k != NONE && k < b->nreplies && b->replies[k].job == jobi; k++) {
        const sreply *r = &b->replies[k];
        PyObject *rep;

        if ((r->kind == K_RCPT && (r->code / 100 == 2 || j->mail_ok != 1)) ||
            r->kind == K_RSET || r->kind == K_EMPTY || r->kind == K_GUARD ||
            (r->kind == K_DATA && r->code == 354))
            continue;
        if (!(rep = make_sreply(s, b, r)))
            goto done;
        if (r->kind == K_RCPT) {
            int bad = PyDict_SetItem(refused, PySequence_Fast_GET_ITEM(j->rcpts,
                                     (Py_ssize_t)r->rcpt), rep) < 0;
            Py_DECREF(rep);
            if (bad)
                goto done;
        } else if (r->kind == K_MAIL) {
            mail_r = rep;
        } else if (r->kind == K_DATA) {
            data_r = rep;
            data_code = r->code;
        } else {
            final_r = rep;
            final_code = r->code;
        }
    }
    if (!(extra = Py_BuildValue("{s:O}", "delivered", Py_False)))
        goto done;
    if (j->mail_ok != 1) {
        if (PyDict_SetItemString(extra, "sender", PyTuple_GET_ITEM(j->item, 0)) == 0)
            res = make_exc(s, MX_EXC_SENDER, STG_MAIL, mail_r, extra, "the server refused the sender");
    } else if (!j->accepted) {
        if (PyDict_SetItemString(extra, "replies", refused) == 0)
            res = make_exc(s, MX_EXC_RECIPIENTS, STG_RCPT, NULL, extra,
                           "the server refused every recipient; the message was not sent");
    } else if (data_code) {
        res = make_exc(s, MX_EXC_DATA, STG_DATA, data_r, extra,
                       "the server refused DATA; the message was not sent");
    } else if (!final_r) {
        PyErr_SetString(PyExc_SystemError, "mailexpress: a finished message without a final reply");
    } else if (final_code / 100 == 2) {
        res = PyTuple_Pack(2, refused, final_r);
    } else {
        res = make_exc(s, MX_EXC_DATA, STG_END_OF_DATA, final_r, extra,
                       "the server refused the message at end of data");
    }
done:
    Py_DECREF(refused);
    Py_XDECREF(mail_r);
    Py_XDECREF(data_r);
    Py_XDECREF(final_r);
    Py_XDECREF(extra);
    return res;
}

/* The exception that ended the session (raised by the fail_* helpers, then
 * taken back), or NULL raised. */
static PyObject *
fatal_exception(Session *s, batch *b)
{
    job *j = &b->jobs[b->fail_job];

    switch (b->failed) {
    case F_IO: fail_io(s, b->fail_stage); break;
    case F_421: fail_421(s, b->fail_stage); break;
    case F_PROTOCOL: fail_protocol(s, b->fail_stage, b->why); break;
    case F_SOURCE:
        poison(s, b->why);
        if (j->outcome) {             /* the file reader's own exception */
            PyObject *o = j->outcome;
            j->outcome = NULL;
            return o;
        }
        raise_exc(s, MX_EXC_INPUT, b->fail_stage, NULL, NULL, "%s", b->why);
        break;
    default:
        PyErr_SetString(PyExc_SystemError, "mailexpress: no failure to report");
    }
    return take_raised();
}

/* Outcomes for every job, in order: a list.  NULL raised. */
static PyObject *
batch_outcomes(Session *s, batch *b)
{
    PyObject *list = PyList_New((Py_ssize_t)b->n), *fatal = NULL;
    PyObject *fatal_type;
    size_t i;
    mx_state *st = state_of(s);

    if (!list)
        return NULL;
    if (b->failed && !(fatal = fatal_exception(s, b)))
        goto fail;
    if (!st)
        goto fail;
    fatal_type = fatal && PyObject_IsInstance(fatal, st->exc[MX_EXC_ERROR]) == 1
                     ? (PyObject *)Py_TYPE(fatal) : st->exc[MX_EXC_CONNECTION_LOST];
    for (i = 0; i < b->n; i++) {
        job *j = &b->jobs[i];
        PyObject *o = NULL;

        /* its body may have reached the server whole: only then can the
         * server have taken it.  A 421 answers this job's command in turn
         * and the server closes: nothing of this job or after it was taken */
        int maybe = j->body_done && j->end_off <= b->sent &&
                    !(b->failed == F_421 && i >= b->fail_job);

        if (j->outcome) {
            o = j->outcome;
            j->outcome = NULL;
        } else if (j->finished || (b->failed && job_refused(j))) {
            o = finished_outcome(s, b, i);
        } else if (b->failed && i == b->fail_job) {
            if (PyObject_SetAttrString(fatal, "delivered", maybe ? Py_None : Py_False) < 0 ||
                PyObject_SetAttrString(fatal, "retry_safe", maybe ? Py_False : Py_True) < 0)
                goto fail;
            Py_INCREF(fatal);
            o = fatal;
        } else if (b->failed) {
            PyObject *extra = Py_BuildValue("{s:O,s:O}", "delivered", maybe ? Py_None : Py_False,
                                            "retry_safe", maybe ? Py_False : Py_True);
            if (!extra)
                goto fail;
            if (maybe)
                o = make_exc_cls(fatal_type, STG_END_OF_DATA, NULL, extra,
                                 "the session failed after this message was sent, before the "
                                 "server's final answer: it may or may not have been delivered "
                                 "(%S)", fatal);
            else
                o = make_exc_cls(fatal_type, STG_MAIL, NULL, extra,
                                 "not sent: the session failed before this message went out "
                                 "whole, so the server cannot have taken it; it is safe to "
                                 "send again (%S)", fatal);
            Py_DECREF(extra);
        } else if (!b->stopped) {
            PyErr_SetString(PyExc_SystemError, "mailexpress: a message left without an outcome");
        } else {
            PyObject *extra = Py_BuildValue("{s:O,s:O}", "delivered", Py_False, "retry_safe", Py_True);
            if (!extra)
                goto fail;
            o = make_exc(s, MX_EXC_STATE, STG_MAIL, NULL, extra,
                         "not sent: an earlier message was refused and stop_on_error is set");
            Py_DECREF(extra);
        }
        if (!o)
            goto fail;
        PyList_SET_ITEM(list, (Py_ssize_t)i, o);
    }
    Py_XDECREF(fatal);
    return list;
fail:
    Py_XDECREF(fatal);
    Py_DECREF(list);
    return NULL;
}

/* ---- the methods ------------------------------------------------------------ */

static void
batch_free(batch *b)
{
    size_t i;

    for (i = 0; b->jobs && i < b->n; i++) {
        job *j = &b->jobs[i];
        if (j->have_view)
            PyBuffer_Release(&j->view);
        Py_XDECREF(j->item);
        Py_XDECREF(j->rcpts);
        Py_XDECREF(j->outcome);
        PyMem_RawFree(j->lines);
        PyMem_RawFree(j->ends);
    }
    PyMem_RawFree(b->jobs);
    PyMem_RawFree(b->replies);
    PyMem_RawFree(b->text);
    if (b->fbuf.obj)
        PyBuffer_Release(&b->fbuf);
    Py_XDECREF(b->fobj);
}

/* Runs the three phases over `items` (a list of message tuples); the lock
 * is held by the caller and the session is READY.  A list of outcomes, or
 * NULL raised (out of memory, or a bad argument before anything was sent). */
static PyObject *
send_batch_of(Session *s, PyObject *items, int stop_on_error)
{
    batch b;
    PyObject *res = NULL;
    size_t i;
    int rc;

    memset(&b, 0, sizeof(b));
    b.n = (size_t)PyList_GET_SIZE(items);
    b.cur = b.gate = NONE;
    b.check_desync = 1;
    b.stop_on_error = stop_on_error;
    b.pipelining = (s->caps.ext & MX_EXT_PIPELINING) != 0;
    if (!(b.jobs = PyMem_RawCalloc(b.n ? b.n : 1, sizeof(job)))) {
        PyErr_NoMemory();
        goto done;
    }
    if (!(b.fobj = PyByteArray_FromStringAndSize(NULL, MX_FILE_CHUNK)) ||
        PyObject_GetBuffer(b.fobj, &b.fbuf, PyBUF_WRITABLE) < 0)
        goto done;
    for (i = 0; i < b.n; i++) {
        b.jobs[i].item = Py_NewRef(PyList_GET_ITEM(items, (Py_ssize_t)i));
        b.jobs[i].first_reply = NONE;
        if (prepare_job(s, &b, &b.jobs[i]) < 0)
            goto done;
    }
    b.ts = PyEval_SaveThread();
    rc = run_wire(s, &b);
    if (rc < 0)
        drain(s, &b);
    PyEval_RestoreThread(b.ts);
    if (rc == 0)
        set_state(s, S_READY);
    res = batch_outcomes(s, &b);
done:
    batch_free(&b);
    return res;
}

MX_DOC(sendmail_doc,
"send_raw(from_addr, to_addrs, msg, mail_options=(), rcpt_options=())\n"
"    -> (refused, reply)\n\n"
"One whole transaction.  msg is bytes-like or a seekable binary file.\n"
"Adds SIZE=, BODY=8BITMIME and SMTPUTF8 when the server offers them and\n"
"the message needs them; refuses (before sending) non-ASCII addresses the\n"
"server cannot take.  Uses BDAT when CHUNKING is offered and pipelines\n"
"when PIPELINING is.  refused maps each refused recipient to its Reply;\n"
"reply is the server's final answer.  Raises SenderRefused,\n"
"RecipientsRefused (no recipient accepted; the body was not delivered)\n"
"or DataRefused.");

PyObject *
Session_sendmail(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"from_addr", "to_addrs", "msg", "mail_options",
                             "rcpt_options", NULL};
    PyObject *from, *to, *msg, *mopts = Py_None, *ropts = Py_None;
    PyObject *items = NULL, *outcomes = NULL, *res = NULL, *o;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOO|OO", kwlist, &from, &to,
                                     &msg, &mopts, &ropts))
        return NULL;
    if (!(items = Py_BuildValue("[(OOOOO)]", from, to, msg, mopts, ropts)))
        return NULL;
    if (enter(s, 1) < 0)
        goto release;
    if (need_ready(s, "send_raw") == 0 && (outcomes = send_batch_of(s, items, 0))) {
        o = PyList_GET_ITEM(outcomes, 0);
        if (PyTuple_Check(o))
            res = Py_NewRef(o);
        else
            PyErr_SetObject((PyObject *)Py_TYPE(o), o);
    }
    leave(s);
release:
    Py_DECREF(items);
    Py_XDECREF(outcomes);
    return res;
}

MX_DOC(send_many_doc,
"send_many_raw(messages, stop_on_error=False) -> list\n\n"
"Sends each (from_addr, to_addrs, msg[, mail_options[, rcpt_options]]) in\n"
"turn over this session, pipelined across messages when the server allows,\n"
"and returns one outcome per message, in order: (refused, reply) when it\n"
"was accepted, or the exception that says why not.  An exception's\n"
"`delivered` is False when the message certainly was not delivered and\n"
"None when the session failed between sending it and its final answer;\n"
"`retry_safe` is True on those the session failure kept from going out.\n"
"A refused message does not stop the rest unless stop_on_error is true;\n"
"a failed session (connection lost, 421) stops everything after it.");

PyObject *
Session_send_many(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"messages", "stop_on_error", NULL};
    PyObject *messages, *items, *res = NULL;
    int stop = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p", kwlist, &messages, &stop))
        return NULL;
    if (!(items = PySequence_List(messages)))
        return NULL;
    if (enter(s, 1) == 0) {
        if (need_ready(s, "send_many_raw") == 0)
            res = send_batch_of(s, items, stop);
        leave(s);
    }
    Py_DECREF(items);
    return res;
}

/* Reads one reply of try_sender's group into a new Reply; NULL raised on
 * I/O failure, 421 or a reply that cannot answer the command. */
static PyObject *
group_reply(Session *s, mx_after after, stage stg, timeout_key k)
{
    mx_verdict v;

    if (recv_only(s, k) < 0)
        return fail_io(s, stg);
    if (judge(s, after, stg, &v) < 0)
        return NULL;
    return make_reply(s, stg);
}

MX_DOC(try_sender_doc,
"try_sender(sender, recipient, options=()) -> (mail_reply, rcpt_reply, pipelined)\n\n"
"Asks whether the server would take a message from `sender` to `recipient`\n"
"without sending one: MAIL FROM, RCPT TO, RSET.  With PIPELINING the three\n"
"go in one write and rcpt_reply is the RCPT answer even when MAIL was\n"
"refused (then it is a consequence, typically 503); without, RCPT is sent\n"
"only after an accepted MAIL and rcpt_reply is None otherwise.  The session\n"
"is left with no transaction open.");

PyObject *
Session_try_sender(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"sender", "recipient", "options", NULL};
    PyObject *sender, *rcpt, *opts = Py_None, *res = NULL;
    PyObject *mail_r = NULL, *rcpt_r = NULL, *rset_r = NULL;
    char buf[2 * (MX_PATH_MAX + 1100) + 16];
    size_t len = 0, n;
    int pipelined;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &sender, &rcpt, &opts))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    if (need_ready(s, "try_sender") < 0)
        goto done;
    pipelined = (s->caps.ext & MX_EXT_PIPELINING) != 0;
    if (format_path(s, "MAIL FROM", sender, opts, NULL, STG_MAIL, buf, sizeof(buf), &n, NULL) < 0)
        goto done;
    len = n;
    if (format_path(s, "RCPT TO", rcpt, NULL, NULL, STG_RCPT, buf + len, sizeof(buf) - len, &n, NULL) < 0)
        goto done;
    if (pipelined) {
        len += n;
        (void)mx_cmd_simple(buf + len, sizeof(buf) - len, &n, "RSET");
        len += n;
        if (send_lines(s, buf, len, TO_MAIL) < 0) {
            fail_io(s, STG_MAIL);
            goto done;
        }
        if (!(mail_r = group_reply(s, MX_AFTER_MAIL, STG_MAIL, TO_MAIL)) ||
            !(rcpt_r = group_reply(s, MX_AFTER_RCPT, STG_RCPT, TO_RCPT)) ||
            !(rset_r = group_reply(s, MX_AFTER_RSET, STG_RSET, TO_COMMAND)))
            goto done;
    } else {
        char line[MX_PATH_MAX + 1100];
        memcpy(line, buf + len, n);     /* the RCPT line, for later */
        if (send_lines(s, buf, len, TO_MAIL) < 0) {
            fail_io(s, STG_MAIL);
            goto done;
        }
        if (!(mail_r = group_reply(s, MX_AFTER_MAIL, STG_MAIL, TO_MAIL)))
            goto done;
        if (s->c.reply->code / 100 == 2) {
            set_state(s, S_MAIL);
            if (send_lines(s, line, n, TO_RCPT) < 0) {
                fail_io(s, STG_RCPT);
                goto done;
            }
            if (!(rcpt_r = group_reply(s, MX_AFTER_RCPT, STG_RCPT, TO_RCPT)))
                goto done;
        }
        (void)mx_cmd_simple(line, sizeof(line), &n, "RSET");
        if (send_lines(s, line, n, TO_COMMAND) < 0) {
            fail_io(s, STG_RSET);
            goto done;
        }
        if (!(rset_r = group_reply(s, MX_AFTER_RSET, STG_RSET, TO_COMMAND)))
            goto done;
    }
    if (s->c.reply->code / 100 != 2) {
        fail_protocol(s, STG_RSET, "the server refused RSET; the transaction state is unknown");
        goto done;
    }
    set_state(s, S_READY);
    res = Py_BuildValue("(OOO)", mail_r, rcpt_r ? rcpt_r : Py_None, pipelined ? Py_True : Py_False);
done:
    Py_XDECREF(mail_r);
    Py_XDECREF(rcpt_r);
    Py_XDECREF(rset_r);
    leave(s);
    return res;
}

