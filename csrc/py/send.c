/* send.c - whole messages on the send engine: phase 1 (prepare: arguments
 * checked, envelope formatted, body scanned, GIL held), phase 2 (the engine,
 * proto/engine.c, driven by drive.c with the GIL released), phase 3 (each
 * job's mx_engine_outcome as a Python outcome); send_raw, send_many_raw, and
 * _send_records: the bulk path's form, where a sent message's outcome is
 * results.record's compact tuple made here, without per-message dicts.
 *
 * Outcomes: a message whose final reply (or a refused sender, or every
 * recipient refused) came has that outcome; after a session failure the
 * first one the server never told about gets the exception; one whose body
 * went out whole is "outcome unknown" (delivered=None); any other is "not
 * sent" (delivered=False, retry_safe=True). */
#include "drive.h"

#include <stdio.h>
#include <string.h>

#include "body.h"
#include "cmd.h"

/* ---- phase 1: prepare ---------------------------------------------------- */

/* A body at least this long is scanned with the GIL released.  A shorter
 * one (a few µs of scanning at most) keeps it: a thread that gives the GIL
 * up while another waits for it may wait the whole switch interval (5 ms)
 * to get it back, once per message of a batch. */
#define MX_SCAN_UNLOCKED (256 * 1024)

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
scan_file(PyObject *file, mx_body_scan_state *scan, drive *b)
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
prepare_job(Session *s, drive *b, pjob *j, mx_job *mj, int prepared)
{
    PyObject *from, *to, *body, *mopts = Py_None, *ropts = Py_None;
    char cmd[MX_PATH_MAX + 1100], extra[128];
    char *rl = NULL;
    size_t len, rlen = 0, rcap = 0, cap = 0, elen = 0, i;
    int non_ascii = 0;
    mx_body_scan_state scan;

    if (prepared) {
        /* compose.Prepared: (envelope_from, recipients, data, message_id) */
        if (!PyTuple_Check(j->item) || PyTuple_GET_SIZE(j->item) < 3) {
            PyErr_SetString(PyExc_TypeError, "each prepared message must be a tuple "
                            "(envelope_from, recipients, data[, message_id])");
            goto bad;
        }
        from = PyTuple_GET_ITEM(j->item, 0);
        to = PyTuple_GET_ITEM(j->item, 1);
        body = PyTuple_GET_ITEM(j->item, 2);
    } else if (!PyTuple_Check(j->item)) {
        PyErr_SetString(PyExc_TypeError, "each message must be a tuple "
                        "(from_addr, to_addrs, msg[, mail_options[, rcpt_options]])");
        goto bad;
    } else if (!PyArg_ParseTuple(j->item, "OOO|OO:message", &from, &to, &body, &mopts, &ropts))
        goto bad;
    if (PyUnicode_Check(body)) {
        PyErr_SetString(PyExc_TypeError, "msg must be bytes or a binary file; encode it first");
        goto bad;
    }
    j->rcpts = PyUnicode_Check(to) ? PyTuple_Pack(1, to)
                                   : PySequence_Fast(to, "to_addrs must be a str or a sequence of str");
    if (!j->rcpts)
        goto bad;
    mj->nrcpt = (size_t)PySequence_Fast_GET_SIZE(j->rcpts);
    if (!mj->nrcpt) {
        raise_exc(s, MX_EXC_INPUT, STG_RCPT, NULL, NULL, "no recipients given; nothing was sent");
        goto bad;
    }
    for (i = 0; i < mj->nrcpt; i++) {
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
        if (j->view.len >= MX_SCAN_UNLOCKED) {
            Py_BEGIN_ALLOW_THREADS
            mx_body_scan(&scan, j->view.buf, (size_t)j->view.len);
            Py_END_ALLOW_THREADS
        } else {
            mx_body_scan(&scan, j->view.buf, (size_t)j->view.len);
        }
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
    mj->size = scan.info.size;
    mj->mode = (s->caps.ext & MX_EXT_CHUNKING) ? MX_BODY_BDAT : MX_BODY_DATA;
    if (scan.info.has_nul) {
        if (!(s->caps.ext & MX_EXT_CHUNKING) || !(s->caps.ext & MX_EXT_BINARYMIME)) {
            raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                      "the message contains NUL bytes, which only BINARYMIME with CHUNKING "
                      "can carry, and the server does not offer them; encode the binary "
                      "parts (base64) first; nothing was sent");
            goto bad;
        }
        mj->mode = MX_BODY_BINARY;
        mj->size = j->file ? scan.info.raw_size : (uint64_t)j->view.len;
    }
    if (scan.info.has_8bit && mj->mode != MX_BODY_BINARY && !(s->caps.ext & MX_EXT_8BITMIME)) {
        raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                  "the message has 8-bit bytes but the server does not offer 8BITMIME "
                  "(RFC 6152); encode the body (quoted-printable or base64), or let "
                  "send_as build it, which does; nothing was sent");
        goto bad;
    }
    extra[0] = '\0';
    if (s->caps.ext & MX_EXT_SIZE) {
        if (s->caps.size && mj->size > s->caps.size) {
            raise_exc(s, MX_EXC_NOT_SUPPORTED, STG_MAIL, NULL, NULL,
                      "the message is %llu octets but the server accepts at most "
                      "%llu (SIZE); nothing was sent",
                      (unsigned long long)mj->size, (unsigned long long)s->caps.size);
            goto bad;
        }
        elen += (size_t)snprintf(extra + elen, sizeof(extra) - elen, "SIZE=%llu",
                                 (unsigned long long)mj->size);
    }
    if (mj->mode == MX_BODY_BINARY)
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
    if (!(j->ends = PyMem_RawMalloc((mj->nrcpt + 1) * sizeof(size_t)))) {
        PyErr_NoMemory();
        goto bad;
    }
    {
        /* line k ends after its CRLF; lines hold no CR or LF of their own */
        size_t k = 0, p;
        for (p = 0; p + 1 < len && k <= mj->nrcpt; p++)
            if (j->lines[p] == '\r' && j->lines[p + 1] == '\n')
                j->ends[k++] = p + 2;
    }
    mj->mail = j->lines;
    mj->mail_len = j->ends[0];
    mj->rcpt = j->lines;
    mj->rcpt_off = j->ends;
    if (j->have_view) {
        mj->body = j->view.buf ? j->view.buf : (const void *)"";
        mj->body_len = (size_t)j->view.len;
    }
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

/* Whether two stored replies make equal Reply objects. */
static int
same_reply(const mx_engine *e, const mx_sreply *a, const mx_sreply *b)
{
    return a->code == b->code && kind_stage[a->kind] == kind_stage[b->kind] &&
           a->len == b->len && strcmp(a->enhanced, b->enhanced) == 0 &&
           memcmp(e->text + a->off, e->text + b->off, a->len) == 0;
}

/* The last Reply the outcomes of a batch were given, and the stored reply
 * behind it.  Replies are immutable and "equal ones may be one object"
 * (reply.py): a batch's consecutive equal replies (every "250 2.0.0 Ok")
 * share one, instead of a Reply, its lines tuple and their strings made
 * per message, objects the cyclic GC would count and traverse again and
 * again while the outcome list grows. */
typedef struct {
    const mx_sreply *reply;
    PyObject *obj;             /* owned */
} reply_share;

/* The Reply of stored reply r: rs's, when equal.  New reference or NULL
 * raised. */
static PyObject *
shared_reply(drive *d, reply_share *rs, const mx_sreply *r)
{
    if (!rs->reply || !same_reply(&d->e, rs->reply, r)) {
        PyObject *rep = drive_reply(d, r);
        if (!rep)
            return NULL;
        Py_XSETREF(rs->obj, rep);
        rs->reply = r;
    }
    return Py_NewRef(rs->obj);
}

/* The outcome of a job the server decided: (refused, reply) or the refusal
 * as an exception instance, its replies through rs.  New reference or NULL
 * raised. */
static PyObject *
decided_outcome(drive *d, size_t jobi, mx_outcome oc, reply_share *rs)
{
    mx_engine *e = &d->e;
    mx_job *j = &d->jobs[jobi];
    pjob *pj = &d->pj[jobi];
    PyObject *refused = PyDict_New(), *mail_r = NULL, *data_r = NULL, *final_r = NULL;
    PyObject *res = NULL, *extra = NULL;
    Session *s = d->s;
    size_t k;

    if (!refused)
        return NULL;
    for (k = j->first_reply; k != MX_NONE && k < e->nreplies && e->replies[k].job == jobi; k++) {
        const mx_sreply *r = &e->replies[k];
        PyObject *rep;

        if ((r->kind == MX_K_RCPT && (r->code / 100 == 2 || j->mail_ok != 1)) ||
            r->kind == MX_K_RSET || r->kind == MX_K_EMPTY || r->kind == MX_K_GUARD ||
            (r->kind == MX_K_DATA && r->code == 354) ||
            (oc == MX_O_SENT && (r->kind == MX_K_MAIL || r->kind == MX_K_DATA)))
            continue;       /* (a sent message's outcome needs no MAIL or DATA reply) */
        if (!(rep = shared_reply(d, rs, r)))
            goto done;
        if (r->kind == MX_K_RCPT) {
            int bad = PyDict_SetItem(refused, PySequence_Fast_GET_ITEM(pj->rcpts,
                                     (Py_ssize_t)r->rcpt), rep) < 0;
            Py_DECREF(rep);
            if (bad)
                goto done;
        } else if (r->kind == MX_K_MAIL) {
            Py_XSETREF(mail_r, rep);
        } else if (r->kind == MX_K_DATA) {
            Py_XSETREF(data_r, rep);
        } else {
            Py_XSETREF(final_r, rep);
        }
    }
    if (oc != MX_O_SENT && !(extra = Py_BuildValue("{s:O}", "delivered", Py_False)))
        goto done;
    switch (oc) {
    case MX_O_REFUSED_MAIL:
        if (PyDict_SetItemString(extra, "sender", PyTuple_GET_ITEM(pj->item, 0)) == 0)
            res = make_exc(s, MX_EXC_SENDER, STG_MAIL, mail_r, extra, "the server refused the sender");
        break;
    case MX_O_REFUSED_RCPT:
        if (PyDict_SetItemString(extra, "replies", refused) == 0)
            res = make_exc(s, MX_EXC_RECIPIENTS, STG_RCPT, NULL, extra,
                           "the server refused every recipient; the message was not sent");
        break;
    case MX_O_REFUSED_DATA:
        res = make_exc(s, MX_EXC_DATA, STG_DATA, data_r, extra,
                       "the server refused DATA; the message was not sent");
        break;
    case MX_O_SENT:
        if (final_r)
            res = PyTuple_Pack(2, refused, final_r);
        break;
    case MX_O_REFUSED_END:
        if (final_r)
            res = make_exc(s, MX_EXC_DATA, STG_END_OF_DATA, final_r, extra,
                           "the server refused the message at end of data");
        break;
    default:
        break;
    }
    if (!res && !PyErr_Occurred())
        PyErr_SetString(PyExc_SystemError, "mailexpress: a finished message without a final reply");
done:
    Py_DECREF(refused);
    Py_XDECREF(mail_r);
    Py_XDECREF(data_r);
    Py_XDECREF(final_r);
    Py_XDECREF(extra);
    return res;
}

/* _send_records: what the jobs of one batch share in their records. */
typedef struct {
    const mx_sreply *reply;    /* the stored reply behind reply_obj */
    PyObject *reply_obj;       /* the last final Reply made (owned) */
    PyObject *sender;          /* the last envelope sender (owned) */
    PyObject *elapsed;         /* the batch's elapsed_ms (owned) */
} rec_share;

static void
rec_share_clear(rec_share *sh)
{
    Py_CLEAR(sh->reply_obj);
    Py_CLEAR(sh->sender);
    Py_CLEAR(sh->elapsed);
    sh->reply = NULL;
}

/* A sent job as results.record's tuple: (envelope_from, recipients (the
 * one str, or a tuple), message_id, reply, refused (a dict, or None when
 * empty), elapsed_ms).  A final reply equal to the previous job's is the
 * same object, and so is an equal sender.  New reference or NULL raised. */
static PyObject *
sent_record(drive *d, size_t jobi, rec_share *sh)
{
    mx_engine *e = &d->e;
    mx_job *j = &d->jobs[jobi];
    pjob *pj = &d->pj[jobi];
    const mx_sreply *final = NULL;
    PyObject *refused = NULL, *who = NULL, *sender, *mid, *res = NULL;
    size_t k;

    for (k = j->first_reply; k != MX_NONE && k < e->nreplies && e->replies[k].job == jobi; k++) {
        const mx_sreply *r = &e->replies[k];

        if (r->kind == MX_K_RCPT && r->code / 100 != 2) {
            PyObject *rep = drive_reply(d, r);
            int bad;

            if (!rep || (!refused && !(refused = PyDict_New()))) {
                Py_XDECREF(rep);
                goto done;
            }
            bad = PyDict_SetItem(refused, PySequence_Fast_GET_ITEM(pj->rcpts,
                                 (Py_ssize_t)r->rcpt), rep) < 0;
            Py_DECREF(rep);
            if (bad)
                goto done;
        } else if (r->kind == MX_K_EOD || r->kind == MX_K_BDAT) {
            final = r;
        }
    }
    if (!final) {
        PyErr_SetString(PyExc_SystemError, "mailexpress: a sent message without a final reply");
        goto done;
    }
    if (!sh->reply || !same_reply(e, sh->reply, final)) {
        PyObject *rep = drive_reply(d, final);
        if (!rep)
            goto done;
        Py_XSETREF(sh->reply_obj, rep);
        sh->reply = final;
    }
    sender = PyTuple_GET_ITEM(pj->item, 0);
    if (sh->sender != sender) {
        int eq = sh->sender && PyUnicode_CheckExact(sender) && PyUnicode_CheckExact(sh->sender)
                     ? PyUnicode_Compare(sender, sh->sender) == 0 : 0;
        if (!eq)
            Py_XSETREF(sh->sender, Py_NewRef(sender));
    }
    who = PySequence_Fast_GET_SIZE(pj->rcpts) == 1
              ? Py_NewRef(PySequence_Fast_GET_ITEM(pj->rcpts, 0))
              : PySequence_Tuple(pj->rcpts);
    if (!who)
        goto done;
    mid = PyTuple_GET_SIZE(pj->item) > 3 ? PyTuple_GET_ITEM(pj->item, 3) : Py_None;
    res = PyTuple_Pack(6, sh->sender, who, mid, sh->reply_obj, refused ? refused : Py_None,
                       sh->elapsed);
done:
    Py_XDECREF(refused);
    Py_XDECREF(who);
    return res;
}

/* Outcomes for every job, in order: a list.  With `sh` (_send_records), a
 * sent job's outcome is its record.  NULL raised. */
static PyObject *
batch_outcomes(drive *d, rec_share *sh)
{
    Session *s = d->s;
    mx_engine *e = &d->e;
    PyObject *list = PyList_New((Py_ssize_t)d->n), *fatal = NULL;
    PyObject *fatal_type;
    size_t i;
    mx_state *st = state_of(s);
    reply_share rs = {NULL, NULL};

    if (!list)
        return NULL;
    if (e->failed && !(fatal = drive_fatal(d)))
        goto fail;
    if (!st)
        goto fail;
    fatal_type = fatal && PyObject_IsInstance(fatal, st->exc[MX_EXC_ERROR]) == 1
                     ? (PyObject *)Py_TYPE(fatal) : st->exc[MX_EXC_CONNECTION_LOST];
    for (i = 0; i < d->n; i++) {
        pjob *pj = &d->pj[i];
        PyObject *o = NULL, *extra;
        int maybe;
        mx_outcome oc = mx_engine_outcome(e, i, &maybe);

        if (pj->outcome) {
            o = pj->outcome;
            pj->outcome = NULL;
            PyList_SET_ITEM(list, (Py_ssize_t)i, o);
            continue;
        }
        switch (oc) {
        case MX_O_FAILED:
            if (PyObject_SetAttrString(fatal, "delivered", maybe ? Py_None : Py_False) < 0 ||
                PyObject_SetAttrString(fatal, "retry_safe", maybe ? Py_False : Py_True) < 0)
                goto fail;
            o = Py_NewRef(fatal);
            break;
        case MX_O_UNKNOWN:
        case MX_O_NOT_SENT:
            extra = Py_BuildValue("{s:O,s:O}", "delivered", maybe ? Py_None : Py_False,
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
            break;
        case MX_O_STOPPED:
            extra = Py_BuildValue("{s:O,s:O}", "delivered", Py_False, "retry_safe", Py_True);
            if (!extra)
                goto fail;
            o = make_exc(s, MX_EXC_STATE, STG_MAIL, NULL, extra,
                         "not sent: an earlier message was refused and stop_on_error is set");
            Py_DECREF(extra);
            break;
        case MX_O_NONE:
        case MX_O_SKIPPED:
        case MX_O_DONE:
        case MX_O_NO_FINAL:
            PyErr_SetString(PyExc_SystemError, "mailexpress: a message left without an outcome");
            break;
        case MX_O_SENT:
            o = sh ? sent_record(d, i, sh) : decided_outcome(d, i, oc, &rs);
            break;
        default:
            o = decided_outcome(d, i, oc, &rs);
        }
        if (!o)
            goto fail;
        PyList_SET_ITEM(list, (Py_ssize_t)i, o);
    }
    Py_XDECREF(fatal);
    Py_XDECREF(rs.obj);
    return list;
fail:
    Py_XDECREF(fatal);
    Py_XDECREF(rs.obj);
    Py_DECREF(list);
    return NULL;
}

/* ---- the methods ------------------------------------------------------------ */

/* Runs the three phases over `items` (a list of message tuples); the lock
 * is held by the caller and the session is READY.  A list of outcomes, or
 * NULL raised (out of memory, or a bad argument before anything was sent).
 * With `sh` (_send_records) the items are compose.Prepared tuples or the
 * exceptions that stand for messages that could not be built (kept as their
 * outcome, delivered=False; with stop_on_error the batch ends after the
 * first), and a sent message's outcome is its record. */
static PyObject *
send_batch_of(Session *s, PyObject *items, int stop_on_error, rec_share *sh)
{
    drive d;
    PyObject *res = NULL;
    size_t i, n = (size_t)PyList_GET_SIZE(items);
    int64_t started = mx_now_ms();
    int rc;

    if (sh) {
        for (i = 0; i < n; i++) {
            if (PyExceptionInstance_Check(PyList_GET_ITEM(items, (Py_ssize_t)i)) && stop_on_error) {
                n = i + 1;
                break;
            }
        }
    }
    if (drive_init(&d, s, n, 1) < 0)
        goto done;
    for (i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, (Py_ssize_t)i);

        d.pj[i].item = Py_NewRef(item);
        if (sh && PyExceptionInstance_Check(item)) {
            if (PyObject_SetAttrString(item, "delivered", Py_False) < 0)
                goto done;
            d.pj[i].outcome = Py_NewRef(item);
            d.jobs[i].skip = 1;
            continue;
        }
        rc = prepare_job(s, &d, &d.pj[i], &d.jobs[i], sh != NULL);
        if (rc < 0)
            goto done;
        d.jobs[i].skip = rc > 0;
    }
    rc = drive_run(&d, stop_on_error, 0, 1, 0);
    if (rc == 0)
        set_state(s, S_READY);
    if (sh && !(sh->elapsed = PyLong_FromLongLong((long long)(mx_now_ms() - started))))
        goto done;
    res = batch_outcomes(&d, sh);
done:
    drive_free(&d);
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
    if (need_ready(s, "send_raw") == 0 && (outcomes = send_batch_of(s, items, 0, NULL))) {
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
            res = send_batch_of(s, items, stop, NULL);
        leave(s);
    }
    Py_DECREF(items);
    return res;
}


MX_DOC(send_records_doc,
"_send_records(prepared, stop_on_error=False) -> list\n\n"
"The bulk path's send_many_raw (batches.send_prepared): prepared is a list\n"
"of compose.Prepared tuples (envelope_from, recipients, data, message_id)\n"
"and of the exceptions that stand for messages that could not be built\n"
"(kept as their outcome, delivered set to False; with stop_on_error the\n"
"list ends after the first; a batch of only those does not use the\n"
"session).  A sent message's outcome is results.record's tuple\n"
"(envelope_from, recipients: the one str or a tuple, message_id, reply,\n"
"refused: a dict or None, elapsed_ms: the batch's), equal consecutive\n"
"replies and senders one object; any other is send_many_raw's.");

/* A batch with no message to send (every item stands for one that could
 * not be built): the items as their outcomes, delivered=False, without the
 * session (whatever its state).  NULL raised. */
static PyObject *
unbuilt_only(PyObject *items, int stop_on_error)
{
    Py_ssize_t i, n = PyList_GET_SIZE(items);

    if (stop_on_error && n > 1)
        n = 1;
    for (i = 0; i < n; i++)
        if (PyObject_SetAttrString(PyList_GET_ITEM(items, i), "delivered", Py_False) < 0)
            return NULL;
    return PyList_GetSlice(items, 0, n);
}

PyObject *
Session_send_records(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"prepared", "stop_on_error", NULL};
    PyObject *prepared, *res = NULL;
    rec_share sh = {NULL, NULL, NULL, NULL};
    Py_ssize_t i;
    int stop = 0;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p", kwlist, &prepared, &stop))
        return NULL;
    if (!(prepared = PySequence_List(prepared)))      /* a copy: a file's reader may change it */
        return NULL;
    for (i = 0; i < PyList_GET_SIZE(prepared); i++)
        if (!PyExceptionInstance_Check(PyList_GET_ITEM(prepared, i)))
            break;
    if (i == PyList_GET_SIZE(prepared)) {
        res = unbuilt_only(prepared, stop);
    } else if (enter(s, 1) == 0) {
        if (need_ready(s, "_send_records") == 0)
            res = send_batch_of(s, prepared, stop, &sh);
        leave(s);
    }
    rec_share_clear(&sh);
    Py_DECREF(prepared);
    return res;
}
