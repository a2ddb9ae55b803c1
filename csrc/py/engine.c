/* engine.c - the send engine's phase 2, the wire: commands staged in the
 * connection's write buffer and written once per group, replies read in
 * order against a queue of what they answer, and after a failure the
 * replies already sent drained before anything is decided.  Runs with the
 * GIL released (taken back only to read a chunk of a file body).  See
 * engine.h for the three phases. */
#include "engine.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "body.h"
#include "cmd.h"

const stage kind_stage[] = {
    STG_MAIL, STG_RCPT, STG_DATA, STG_END_OF_DATA, STG_END_OF_DATA, STG_RSET,
    STG_END_OF_DATA, STG_RSET,
};
const timeout_key kind_timeout[] = {
    TO_MAIL, TO_RCPT, TO_DATA, TO_END_OF_DATA, TO_END_OF_DATA, TO_COMMAND,
    TO_END_OF_DATA, TO_COMMAND,
};
const mx_after kind_after[] = {
    MX_AFTER_MAIL, MX_AFTER_RCPT, MX_AFTER_DATA, MX_AFTER_END_OF_DATA, MX_AFTER_BDAT,
    MX_AFTER_RSET, MX_AFTER_END_OF_DATA, MX_AFTER_RSET,
};

void
batch_fail(batch *b, fail_kind k, stage stg, size_t jobi, const char *why)
{
    if (b->failed)
        return;
    b->failed = k;
    b->fail_stage = stg;
    b->fail_job = jobi;
    snprintf(b->why, sizeof(b->why), "%s", why ? why : "");
}

/* Writes what is staged.  When no reply is outstanding, anything the
 * server already said is out of turn (see send_cmd).  0 or -1. */
static int
out_flush(Session *s, batch *b, size_t jobi, stage stg)
{
    size_t maybe;

    if (!b->wlen)
        return 0;
    if (b->qwritten == 0 && b->check_desync) {
        /* the first write since the last reply was read (not every 64 KiB
         * of a body): nothing is outstanding, so any byte is out of turn */
        b->check_desync = 0;
        if (mx_conn_in_step(&s->c) < 0) {
            batch_fail(b, F_IO, stg, jobi, NULL);
            return -1;
        }
    }
    if (mx_conn_write(&s->c, s->c.wbuf, b->wlen, deadline_for(s, TO_DATA_BLOCK), &maybe) < 0) {
        b->sent += maybe;
        /* the peer broke the stream (not a timeout): what it sent is still readable */
        b->write_failed = s->c.err.kind == MX_E_IO || s->c.err.kind == MX_E_EOF ||
                          s->c.err.kind == MX_E_TLS;
        batch_fail(b, F_IO, stg, jobi, NULL);
        return -1;
    }
    b->sent += b->wlen;
    b->wlen = 0;
    b->qwritten = b->qlen;
    return 0;
}

static int
out_put(Session *s, batch *b, const void *p, size_t n, size_t jobi, stage stg)
{
    if (b->wlen + n > MX_WBUF && out_flush(s, b, jobi, stg) < 0)
        return -1;
    memcpy(s->c.wbuf + b->wlen, p, n);
    b->wlen += n;
    return 0;
}

static void
push(batch *b, size_t jobi, rkind kind, size_t rcpt)
{
    expect *e = &b->q[(b->qhead + b->qlen) % (MX_PIPELINE_MAX + 4)];

    e->job = jobi;
    e->kind = kind;
    e->rcpt = rcpt;
    e->end = kind == K_BDAT ? UINT64_MAX : b->sent + b->wlen;
    b->qlen++;
}

/* Stages one command line (CRLF included) and what will answer it. */
static int
stage_line(Session *s, batch *b, const char *line, size_t len, size_t jobi,
           rkind kind, size_t rcpt)
{
    mx_conn_record(&s->c, MX_TR_CLIENT, line, len - 2);
    if (out_put(s, b, line, len, jobi, kind_stage[kind]) < 0)
        return -1;
    push(b, jobi, kind, rcpt);
    return 0;
}

static int
stage_simple(Session *s, batch *b, const char *verb, size_t jobi, rkind kind)
{
    char cmd[16];
    size_t len;

    (void)mx_cmd_simple(cmd, sizeof(cmd), &len, verb);
    return stage_line(s, b, cmd, len, jobi, kind, 0);
}

/* file.readinto() on a fresh memoryview of the engine's file buffer (a
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

/* The next piece of a body: the rest of the buffer, or a chunk read from
 * the file with the GIL taken back for the call.  Returns its length (0 at
 * the end), or -1 with the batch failed. */
static Py_ssize_t
body_chunk(batch *b, job *j, size_t done, const unsigned char **p)
{
    Py_ssize_t n;

    if (!j->file) {
        *p = (const unsigned char *)j->view.buf + done;
        return j->view.len - (Py_ssize_t)done;
    }
    PyEval_RestoreThread(b->ts);
    n = readinto_chunk(j->file, b->fobj);
    if (n < 0) {
        /* the reader's exception is kept and becomes this message's outcome */
        j->outcome = take_raised();
    }
    b->ts = PyEval_SaveThread();
    if (n < 0) {
        batch_fail(b, F_SOURCE, STG_END_OF_DATA, (size_t)(j - b->jobs),
                   "reading the message file failed while it was being sent");
        return -1;
    }
    *p = b->fbuf.buf;
    return n;
}

/* Stages a message's body: after 354 (DATA: stuffed, "." at the end) or as
 * BDAT n LAST with exactly n octets (normalised; BINARYMIME: as given). */
static int
stage_body(Session *s, batch *b, size_t jobi)
{
    job *j = &b->jobs[jobi];
    mx_body_enc enc;
    uint64_t total = 0;
    size_t done = 0;

    if (j->mode == B_DATA) {
        mx_body_init(&enc);
    } else {
        char hdr[48];
        int hl = snprintf(hdr, sizeof(hdr), "BDAT %llu LAST\r\n", (unsigned long long)j->size);
        mx_body_init_bdat(&enc);
        if (stage_line(s, b, hdr, (size_t)hl, jobi, K_BDAT, 0) < 0)
            return -1;
        /* A refused BDAT LAST does not always end the transaction (a server
         * may keep the sender: "503 5.5.2 Sender already specified" to the
         * next MAIL, whose RCPTs and body would then join the old
         * transaction).  A MAIL staged before this BDAT's answer is read goes
         * behind an RSET; one staged after it, only if it was refused. */
        if (b->pipelining) {
            b->guard = 1;
            b->guard_job = jobi;
        }
    }
    mx_conn_recordf(&s->c, MX_TR_INFO, "body: %llu octets%s", (unsigned long long)j->size,
            j->mode == B_BINARY ? ", binary" : "");
    for (;;) {
        const unsigned char *p;
        Py_ssize_t n = body_chunk(b, j, done, &p);

        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (size_t)n;
        while (n > 0) {
            size_t room, used, out;

            if (MX_WBUF - b->wlen < MX_BODY_STEP_MAX &&
                out_flush(s, b, jobi, STG_END_OF_DATA) < 0)
                return -1;
            room = MX_WBUF - b->wlen;
            if (j->mode == B_BINARY) {
                out = used = (size_t)n < room ? (size_t)n : room;
                memcpy(s->c.wbuf + b->wlen, p, out);
            } else {
                out = mx_body_encode(&enc, p, (size_t)n, &used, s->c.wbuf + b->wlen, room);
            }
            total += out;
            if (j->mode != B_DATA && total > j->size)
                goto changed;
            b->wlen += out;
            p += used;
            n -= (Py_ssize_t)used;
        }
        if (!j->file)
            break;
    }
    if (MX_WBUF - b->wlen < MX_BODY_FINISH_MAX && out_flush(s, b, jobi, STG_END_OF_DATA) < 0)
        return -1;
    if (j->mode != B_BINARY) {
        size_t out = mx_body_finish(&enc, s->c.wbuf + b->wlen, MX_WBUF - b->wlen);
        total += j->mode == B_DATA ? 0 : out;
        b->wlen += out;
    }
    if (j->mode != B_DATA && total != j->size)
        goto changed;
    j->end_off = b->sent + b->wlen;
    if (j->mode == B_DATA) {
        mx_conn_record(&s->c, MX_TR_CLIENT, ".", 1);
        push(b, jobi, K_EOD, 0);
    } else {
        /* BDAT n LAST is answered once its n octets are in */
        b->q[(b->qhead + b->qlen - 1) % (MX_PIPELINE_MAX + 4)].end = j->end_off;
    }
    j->body_done = 1;
    return 0;
changed:
    batch_fail(b, F_SOURCE, STG_END_OF_DATA, jobi,
               "the message changed while it was being sent (its size no longer "
               "matches BDAT); the connection was closed so it cannot be delivered");
    return -1;
}

/* A job is over; with stop_on_error, a message not accepted at all stops
 * the batch (nothing after it is started). */
static void
job_over(batch *b, job *j, int accepted_for_delivery)
{
    j->finished = 1;
    if (!accepted_for_delivery && b->stop_on_error)
        b->stopped = 1;
}

/* A job whose replies so far leave nothing to send: ends it (RSET when
 * the server may hold a transaction open). */
static int
stage_close(Session *s, batch *b, size_t jobi)
{
    job *j = &b->jobs[jobi];

    if (j->mail_ok == 1)
        return stage_simple(s, b, "RSET", jobi, K_RSET);
    job_over(b, j, 0);
    return 0;
}

/* Stages the data phase of a job whose envelope replies are all known (or
 * not needed): BDAT with its body, DATA, or the end of the transaction. */
static int
stage_data(Session *s, batch *b, size_t jobi, int replies_known)
{
    job *j = &b->jobs[jobi];

    if (replies_known && (j->mail_ok != 1 || !j->accepted))
        return stage_close(s, b, jobi);
    if (j->mode == B_DATA) {
        b->gate = jobi;            /* the body waits for 354 */
        return stage_simple(s, b, "DATA", jobi, K_DATA);
    }
    if (!replies_known && j->size > MX_BDAT_BLIND_MAX) {
        b->gate = jobi;            /* the body waits for the RCPT replies */
        j->gated = 1;
        return 0;
    }
    return stage_body(s, b, jobi);
}

/* Stages as much as the rules allow: a whole message at a time when
 * pipelining (while the queue has room), one command at a time otherwise;
 * nothing while a job waits at its gate. */
static int
stage_more(Session *s, batch *b)
{
    for (;;) {
        job *j;
        int one_by_one;

        if (b->failed || b->gate != NONE)
            return 0;
        if (b->cur == NONE) {
            if (b->next >= b->n || b->stopped)
                return 0;
            j = &b->jobs[b->next];
            if (j->outcome) {          /* failed in prepare */
                b->next++;
                continue;
            }
            one_by_one = !b->pipelining || j->serial;
            if (b->qlen && (one_by_one || b->stop_on_error ||
                            b->qlen + j->nrcpt + 2 > MX_PIPELINE_MAX))
                return 0;
            b->cur = b->next++;
            j->step = 0;
        }
        j = &b->jobs[b->cur];
        one_by_one = !b->pipelining || j->serial;
        if (one_by_one && b->qlen)
            return 0;
        if (j->step == 0) {
            if (b->guard) {
                b->guard = 0;
                if (stage_simple(s, b, "RSET", b->cur, K_GUARD) < 0)
                    return -1;
                if (one_by_one)
                    return 0;      /* its answer first */
            }
            if (stage_line(s, b, j->lines, j->ends[0], b->cur, K_MAIL, 0) < 0)
                return -1;
            j->step = 1;
        } else if (j->step <= j->nrcpt) {
            if (one_by_one && j->mail_ok != 1) {
                job_over(b, j, 0);     /* the sender was refused: no RCPT */
                b->cur = NONE;
                continue;
            }
            if (stage_line(s, b, j->lines + j->ends[j->step - 1],
                           j->ends[j->step] - j->ends[j->step - 1], b->cur, K_RCPT,
                           j->step - 1) < 0)
                return -1;
            j->step++;
        } else {
            size_t jobi = b->cur;
            b->cur = NONE;
            if (stage_data(s, b, jobi, one_by_one) < 0)
                return -1;
        }
    }
}

static int
store_reply(Session *s, batch *b, const expect *e)
{
    sreply *r;
    size_t i, need = s->c.reply->text_len + s->c.reply->nlines;
    job *j = &b->jobs[e->job];

    if (b->nreplies == b->rcap) {
        size_t cap = b->rcap ? 2 * b->rcap : 64;
        sreply *nr = PyMem_RawRealloc(b->replies, cap * sizeof(*nr));
        if (!nr)
            goto oom;
        b->replies = nr;
        b->rcap = cap;
    }
    if (b->tlen + need > b->tcap) {
        size_t cap = b->tcap ? 2 * b->tcap : 8192;
        char *nt;
        while (cap < b->tlen + need)
            cap *= 2;
        if (!(nt = PyMem_RawRealloc(b->text, cap)))
            goto oom;
        b->text = nt;
        b->tcap = cap;
    }
    r = &b->replies[b->nreplies];
    r->job = e->job;
    r->kind = e->kind;
    r->rcpt = e->rcpt;
    r->code = s->c.reply->code;
    memcpy(r->enhanced, s->c.reply->enhanced, sizeof(r->enhanced));
    r->off = b->tlen;
    for (i = 0; i < s->c.reply->nlines; i++) {
        if (i)
            b->text[b->tlen++] = '\n';
        memcpy(b->text + b->tlen, s->c.reply->text + s->c.reply->line_off[i], s->c.reply->line_len[i]);
        b->tlen += s->c.reply->line_len[i];
    }
    r->len = b->tlen - r->off;
    if (j->first_reply == NONE)
        j->first_reply = b->nreplies;
    b->nreplies++;
    return 0;
oom:
    mx_error_set(&s->c.err, MX_E_IO, ENOMEM, "out of memory keeping replies");
    batch_fail(b, F_IO, kind_stage[e->kind], e->job, NULL);
    return -1;
}

/* Reads the reply the queue's head expects and acts on it. */
static int
read_next(Session *s, batch *b)
{
    expect e = b->q[b->qhead];
    job *j = &b->jobs[e.job];
    int code, cls;
    mx_verdict v;

    b->qhead = (b->qhead + 1) % (MX_PIPELINE_MAX + 4);
    b->qlen--;
    b->check_desync = 1;
    if (b->qwritten)
        b->qwritten--;
    if (mx_conn_recv_reply(&s->c, deadline_for(s, kind_timeout[e.kind])) < 0) {
        batch_fail(b, F_IO, kind_stage[e.kind], e.job, NULL);
        return -1;
    }
    code = s->c.reply->code;
    cls = code / 100;
    v = mx_verdict_of(kind_after[e.kind], code);
    if (v == MX_V_CLOSING) {
        /* while draining after a failure, the 421 is what really ended it */
        b->failed = F_NONE;
        batch_fail(b, F_421, kind_stage[e.kind], e.job, NULL);
        return -1;
    }
    if (v == MX_V_OUT_OF_STEP) {
        char why[96];
        mx_verdict_why(kind_after[e.kind], code, why, sizeof(why));
        batch_fail(b, F_PROTOCOL, kind_stage[e.kind], e.job, why);
        return -1;
    }
    if (store_reply(s, b, &e) < 0)
        return -1;
    switch (e.kind) {
    case K_MAIL:
        j->mail_ok = cls == 2;
        break;
    case K_RCPT:
        j->rcpt_seen++;
        if (j->mail_ok == 1 && cls == 2)
            j->accepted++;
        if (j->gated && j->rcpt_seen == j->nrcpt && !b->failed) {
            size_t jobi = e.job;
            j->gated = 0;
            b->gate = NONE;
            if (stage_data(s, b, jobi, 1) < 0)
                return -1;
        }
        break;
    case K_DATA:
        b->gate = NONE;
        if (b->failed) {
            /* draining: nothing more is written; a refusal ends the job,
             * a 354 leaves its body unsent */
            if (code != 354)
                job_over(b, j, 0);
            break;
        }
        if (code == 354) {
            if (j->accepted && j->mail_ok == 1)
                return stage_body(s, b, e.job);
            /* the server opened DATA though nothing was accepted: end it
             * empty; its answer closes the transaction */
            return stage_simple(s, b, ".", e.job, K_EMPTY);
        }
        return stage_close(s, b, e.job);    /* DATA refused */
    case K_BDAT:
        /* answered before the next MAIL was staged (always so without
         * PIPELINING): an RSET only if it was refused */
        if (!b->pipelining || (b->guard && b->guard_job == e.job))
            b->guard = cls != 2 && j->mail_ok == 1;
        job_over(b, j, cls == 2 && j->mail_ok == 1 && j->accepted);
        break;
    case K_EOD:
        job_over(b, j, cls == 2 && j->mail_ok == 1 && j->accepted);
        break;
    case K_RSET:
    case K_EMPTY:
        job_over(b, j, 0);
        break;
    case K_GUARD:
        break;                     /* the job whose MAIL follows is not over */
    }
    return 0;
}

/* Phase 2, GIL released by the caller.  0, or -1 with b->failed set. */
int
run_wire(Session *s, batch *b)
{
    for (;;) {
        size_t was_next = b->next, was_cur = b->cur;

        if (stage_more(s, b) < 0)
            return -1;
        if (b->wlen) {
            const expect *last = &b->q[(b->qhead + b->qlen - 1) % (MX_PIPELINE_MAX + 4)];
            if (out_flush(s, b, last->job, kind_stage[last->kind]) < 0)
                return -1;
        }
        if (!b->qlen) {
            /* nothing outstanding: done, unless a one-by-one job just
             * ended without a reply (its sender was refused) */
            if (b->cur == NONE && b->gate == NONE && (b->next >= b->n || b->stopped))
                return 0;
            if (b->next == was_next && b->cur == was_cur && b->cur == NONE) {
                mx_error_set(&s->c.err, MX_E_PROTOCOL, 0, "internal error: the send engine stalled");
                batch_fail(b, F_IO, STG_MAIL, b->next ? b->next - 1 : 0, NULL);
                return -1;
            }
            continue;
        }
        if (read_next(s, b) < 0)
            return -1;
    }
}

/* Whether a job is decided by what the server already said although not
 * all of its replies came: its sender, or every recipient, was refused. */
int
job_refused(const job *j)
{
    return j->mail_ok == 0 || (j->mail_ok == 1 && j->nrcpt && j->rcpt_seen == j->nrcpt &&
                                !j->accepted);
}

/* After a failure: reads what the server already answered before deciding
 * anything, so that a message whose final reply came gets it.  Only after
 * a write the peer broke (its replies are still readable, then EOF) or a
 * failure of the caller's file (the server is fine and answers what was
 * written); never after a timeout or a desync.  Only replies to commands
 * that may have reached the server are awaited.  A 421 read here becomes
 * the failure.  Then the failure is pinned on the first message whose fate
 * the server never told.  GIL released. */
void
drain(Session *s, batch *b)
{
    mx_error kept = s->c.err;
    size_t i;

    if (b->write_failed || b->failed == F_SOURCE) {
        while (b->qlen && b->q[b->qhead].end <= b->sent)
            if (read_next(s, b) < 0)
                break;
        if (b->failed != F_421)
            s->c.err = kept;
    }
    if (b->failed != F_IO)
        return;
    for (i = 0; i < b->next && i < b->n; i++) {
        job *j = &b->jobs[i];
        if (!j->outcome && !j->finished && !job_refused(j)) {
            b->fail_job = i;
            break;
        }
    }
}

