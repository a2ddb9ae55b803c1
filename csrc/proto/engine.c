/* engine.c - pure: the send engine (see engine.h).  Commands are staged in
 * the output buffer and written once per group; replies are read in order
 * against a queue of what they answer; after a failure the replies already
 * sent are drained before anything is decided. */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "body.h"
#include "cmd.h"

const mx_after mx_kind_after[MX_K_COUNT] = {
    MX_AFTER_MAIL, MX_AFTER_RCPT, MX_AFTER_DATA, MX_AFTER_END_OF_DATA, MX_AFTER_BDAT,
    MX_AFTER_RSET, MX_AFTER_END_OF_DATA, MX_AFTER_RSET,
};

static void
fail(mx_engine *e, mx_fail k, mx_kind kind, size_t jobi, const char *why)
{
    if (e->failed)
        return;
    e->failed = k;
    e->fail_kind = kind;
    e->fail_job = jobi;
    snprintf(e->why, sizeof(e->why), "%s", why ? why : "");
}

void
mx_engine_init(mx_engine *e, mx_job *jobs, size_t n, const mx_engine_io *io,
               unsigned char *wbuf, size_t wcap)
{
    size_t i;

    memset(e, 0, sizeof(*e));
    e->jobs = jobs;
    e->n = n;
    e->io = io;
    e->wbuf = wbuf;
    e->wcap = wcap;
    e->cur = e->gate = MX_NONE;
    e->check_desync = 1;
    e->wkind = MX_K_COUNT;
    for (i = 0; i < n; i++) {
        mx_job *j = &jobs[i];
        j->step = 0;
        j->mail_ok = j->mail ? -1 : 1;
        j->rcpt_seen = 0;
        j->accepted = j->accepted_before;
        j->serial = j->nrcpt + 2 > MX_PIPELINE_MAX;
        j->finished = j->body_done = j->gated = 0;
        j->end_off = 0;
        j->first_reply = MX_NONE;
        j->data_code = j->final_code = 0;
    }
}

void
mx_engine_free(mx_engine *e)
{
    free(e->replies);
    free(e->text);
    e->replies = NULL;
    e->text = NULL;
}

static void
record(mx_engine *e, char dir, const char *text, size_t len)
{
    if (e->io->record)
        e->io->record(e->io->ctx, dir, text, len);
}

/* Writes what is staged.  When no reply is outstanding, anything the
 * server already said is out of turn.  0 or -1. */
static int
out_flush(mx_engine *e, size_t jobi, mx_kind kind)
{
    size_t maybe = 0;
    int broken = 0;
    mx_kind wait = e->wkind;

    if (!e->wlen)
        return 0;
    if (e->per_command && wait != MX_K_COUNT)
        kind = wait;
    if (e->qwritten == 0 && e->check_desync) {
        /* the first write since the last reply was read (not every chunk
         * of a body): nothing is outstanding, so any byte is out of turn */
        e->check_desync = 0;
        if (e->io->in_step(e->io->ctx) < 0) {
            fail(e, MX_F_IO, kind, jobi, NULL);
            return -1;
        }
    }
    if (e->io->write(e->io->ctx, e->wbuf, e->wlen, wait, &maybe, &broken) < 0) {
        e->sent += maybe < e->wlen ? maybe : e->wlen;
        e->write_failed = broken;
        fail(e, MX_F_IO, kind, jobi, NULL);
        return -1;
    }
    e->sent += e->wlen;
    e->wlen = 0;
    e->wkind = MX_K_COUNT;
    e->qwritten = e->qlen;
    return 0;
}

static void
push(mx_engine *e, size_t jobi, mx_kind kind, size_t rcpt)
{
    mx_expect *x = &e->q[(e->qhead + e->qlen) % MX_ENGINE_QCAP];

    x->job = jobi;
    x->kind = kind;
    x->rcpt = rcpt;
    x->end = kind == MX_K_BDAT ? UINT64_MAX : e->sent + e->wlen;
    e->qlen++;
}

/* Stages one command line (CRLF included) and what will answer it. */
static int
stage_line(mx_engine *e, const char *line, size_t len, size_t jobi, mx_kind kind, size_t rcpt)
{
    if (len < 2 || len > e->wcap) {
        fail(e, MX_F_INTERNAL, kind, jobi, "internal error: a command longer than the buffer");
        return -1;
    }
    if (e->qlen >= MX_ENGINE_QCAP) {
        fail(e, MX_F_INTERNAL, kind, jobi, "internal error: the reply queue is full");
        return -1;
    }
    record(e, 'C', line, len - 2);
    if (e->wlen + len > e->wcap && out_flush(e, jobi, kind) < 0)
        return -1;
    if (!e->wlen)
        e->wkind = kind;
    memcpy(e->wbuf + e->wlen, line, len);
    e->wlen += len;
    push(e, jobi, kind, rcpt);
    return 0;
}

static int
stage_simple(mx_engine *e, const char *verb, size_t jobi, mx_kind kind)
{
    char cmd[16];
    size_t len;

    (void)mx_cmd_simple(cmd, sizeof(cmd), &len, verb);
    return stage_line(e, cmd, len, jobi, kind, 0);
}

/* The next piece of a body: the whole of it, or a chunk pulled from the
 * driver.  Its length (0 at the end), or -1 with the engine failed. */
static long
body_chunk(mx_engine *e, size_t jobi, size_t done, const unsigned char **p)
{
    mx_job *j = &e->jobs[jobi];
    long n;

    if (j->body) {
        *p = j->body + done;
        return (long)(j->body_len - done);
    }
    n = e->io->pull(e->io->ctx, jobi, p);
    if (n < 0) {
        fail(e, MX_F_SOURCE, MX_K_EOD, jobi,
             "reading the message file failed while it was being sent");
        return -1;
    }
    return n;
}

/* "body: <size> octets[, binary]" into out (48 bytes or more), without
 * printf: it is said for every message.  Its length. */
static size_t
body_info(char *out, uint64_t size, int binary)
{
    char digits[20];
    size_t nd = 0, len = 6;

    memcpy(out, "body: ", 6);
    do {
        digits[nd++] = (char)('0' + size % 10);
        size /= 10;
    } while (size);
    while (nd)
        out[len++] = digits[--nd];
    memcpy(out + len, " octets", 7);
    len += 7;
    if (binary) {
        memcpy(out + len, ", binary", 8);
        len += 8;
    }
    return len;
}

/* Stages a message's body: after 354 (DATA: stuffed, "." at the end) or as
 * BDAT n LAST with exactly n octets (normalised; BINARYMIME: as given). */
static int
stage_body(mx_engine *e, size_t jobi)
{
    mx_job *j = &e->jobs[jobi];
    mx_body_enc enc;
    uint64_t total = 0;
    size_t done = 0, il;
    char info[64];

    if (j->mode == MX_BODY_DATA) {
        mx_body_init(&enc);
    } else {
        char hdr[48];
        int hl = snprintf(hdr, sizeof(hdr), "BDAT %llu LAST\r\n", (unsigned long long)j->size);
        mx_body_init_bdat(&enc);
        if (stage_line(e, hdr, (size_t)hl, jobi, MX_K_BDAT, 0) < 0)
            return -1;
        /* A refused BDAT LAST does not always end the transaction (a server
         * may keep the sender: "503 5.5.2 Sender already specified" to the
         * next MAIL, whose RCPTs and body would then join the old
         * transaction).  A MAIL staged before this BDAT's answer is read goes
         * behind an RSET; one staged after it, only if it was refused. */
        if (e->pipelining) {
            e->guard = 1;
            e->guard_job = jobi;
        }
    }
    il = body_info(info, j->size, j->mode == MX_BODY_BINARY);
    record(e, '*', info, il);
    for (;;) {
        const unsigned char *p;
        long n = body_chunk(e, jobi, done, &p);

        if (n < 0)
            return -1;
        if (n == 0)
            break;
        done += (size_t)n;
        while (n > 0) {
            size_t room, used, out;

            if (e->wcap - e->wlen < MX_BODY_STEP_MAX && out_flush(e, jobi, MX_K_EOD) < 0)
                return -1;
            room = e->wcap - e->wlen;
            if (j->mode == MX_BODY_BINARY) {
                out = used = (size_t)n < room ? (size_t)n : room;
                memcpy(e->wbuf + e->wlen, p, out);
            } else {
                out = mx_body_encode(&enc, p, (size_t)n, &used, e->wbuf + e->wlen, room);
            }
            total += out;
            if (j->mode != MX_BODY_DATA && total > j->size)
                goto changed;
            e->wlen += out;
            p += used;
            n -= (long)used;
        }
        if (j->body)
            break;
    }
    if (e->wcap - e->wlen < MX_BODY_FINISH_MAX && out_flush(e, jobi, MX_K_EOD) < 0)
        return -1;
    if (j->mode != MX_BODY_BINARY) {
        size_t out = mx_body_finish(&enc, e->wbuf + e->wlen, e->wcap - e->wlen);
        total += j->mode == MX_BODY_DATA ? 0 : out;
        e->wlen += out;
    }
    if (j->mode != MX_BODY_DATA && total != j->size)
        goto changed;
    j->end_off = e->sent + e->wlen;
    if (j->mode == MX_BODY_DATA) {
        record(e, 'C', ".", 1);
        push(e, jobi, MX_K_EOD, 0);
    } else {
        /* BDAT n LAST is answered once its n octets are in */
        e->q[(e->qhead + e->qlen - 1) % MX_ENGINE_QCAP].end = j->end_off;
    }
    j->body_done = 1;
    return 0;
changed:
    fail(e, MX_F_SOURCE, MX_K_EOD, jobi,
         "the message changed while it was being sent (its size no longer "
         "matches BDAT); the connection was closed so it cannot be delivered");
    return -1;
}

/* A job is over; with stop_on_error, a message not accepted at all stops
 * the batch (nothing after it is started). */
static void
job_over(mx_engine *e, mx_job *j, int accepted_for_delivery)
{
    j->finished = 1;
    if (!accepted_for_delivery && e->stop_on_error)
        e->stopped = 1;
}

/* A job whose replies so far leave nothing to send: ends it (RSET when
 * the server may hold a transaction open). */
static int
stage_close(mx_engine *e, size_t jobi)
{
    mx_job *j = &e->jobs[jobi];

    if (j->mail_ok == 1)
        return stage_simple(e, "RSET", jobi, MX_K_RSET);
    job_over(e, j, 0);
    return 0;
}

/* Stages the data phase of a job whose envelope replies are all known (or
 * not needed): BDAT with its body, DATA, the end of the transaction, or
 * for a job without a data phase its RSET (a probe) or nothing. */
static int
stage_data(mx_engine *e, size_t jobi, int replies_known)
{
    mx_job *j = &e->jobs[jobi];

    if (j->mode == MX_BODY_NONE) {
        if (j->rset)
            return stage_simple(e, "RSET", jobi, MX_K_RSET);
        if (!j->mail && !j->nrcpt)
            job_over(e, j, 1);     /* nothing to say */
        return 0;                  /* over when its last reply is read */
    }
    if (replies_known && (j->mail_ok != 1 || !j->accepted))
        return stage_close(e, jobi);
    if (j->mode == MX_BODY_DATA) {
        e->gate = jobi;            /* the body waits for 354 */
        return stage_simple(e, "DATA", jobi, MX_K_DATA);
    }
    if (!replies_known && j->size > MX_BDAT_BLIND_MAX && j->rcpt_seen < j->nrcpt) {
        e->gate = jobi;            /* the body waits for the RCPT replies */
        j->gated = 1;
        return 0;
    }
    return stage_body(e, jobi);
}

/* Stages as much as the rules allow: a whole message at a time when
 * pipelining (while the queue has room), one command at a time otherwise;
 * nothing while a job waits at its gate. */
static int
stage_more(mx_engine *e)
{
    for (;;) {
        mx_job *j;
        int one_by_one;

        if (e->failed || e->gate != MX_NONE)
            return 0;
        if (e->cur == MX_NONE) {
            if (e->next >= e->n || e->stopped)
                return 0;
            j = &e->jobs[e->next];
            if (j->skip) {
                e->next++;
                continue;
            }
            one_by_one = !e->pipelining || j->serial;
            if (e->qlen && (one_by_one || e->stop_on_error ||
                            e->qlen + j->nrcpt + 2 > MX_PIPELINE_MAX))
                return 0;
            e->cur = e->next++;
            j->step = 0;
        }
        j = &e->jobs[e->cur];
        one_by_one = !e->pipelining || j->serial;
        if (one_by_one && e->qlen)
            return 0;
        if (j->step == 0) {
            if (j->mail && e->guard) {
                e->guard = 0;
                if (stage_simple(e, "RSET", e->cur, MX_K_GUARD) < 0)
                    return -1;
                if (one_by_one)
                    return 0;      /* its answer first */
            }
            if (j->mail && stage_line(e, j->mail, j->mail_len, e->cur, MX_K_MAIL, 0) < 0)
                return -1;
            j->step = 1;
        } else if (j->step <= j->nrcpt) {
            if (one_by_one && j->mail_ok != 1) {
                if (j->rset) {     /* a probe: no RCPT, but its RSET */
                    j->step = j->nrcpt + 1;
                    continue;
                }
                job_over(e, j, 0);     /* the sender was refused: no RCPT */
                e->cur = MX_NONE;
                continue;
            }
            if (stage_line(e, j->rcpt + j->rcpt_off[j->step - 1],
                           j->rcpt_off[j->step] - j->rcpt_off[j->step - 1], e->cur, MX_K_RCPT,
                           j->step - 1) < 0)
                return -1;
            j->step++;
        } else {
            size_t jobi = e->cur;
            e->cur = MX_NONE;
            if (stage_data(e, jobi, one_by_one) < 0)
                return -1;
        }
    }
}

static int
store_reply(mx_engine *e, const mx_expect *x, const mx_reply *rep)
{
    mx_sreply *r;
    size_t i, need = rep->text_len + rep->nlines;
    mx_job *j = &e->jobs[x->job];

    if (e->nreplies == e->rcap) {
        size_t cap = e->rcap ? 2 * e->rcap : 64;
        mx_sreply *nr = realloc(e->replies, cap * sizeof(*nr));
        if (!nr)
            goto oom;
        e->replies = nr;
        e->rcap = cap;
    }
    if (e->tlen + need > e->tcap) {
        size_t cap = e->tcap ? 2 * e->tcap : 8192;
        char *nt;
        while (cap < e->tlen + need)
            cap *= 2;
        if (!(nt = realloc(e->text, cap)))
            goto oom;
        e->text = nt;
        e->tcap = cap;
    }
    r = &e->replies[e->nreplies];
    r->job = x->job;
    r->kind = x->kind;
    r->rcpt = x->rcpt;
    r->code = rep->code;
    memcpy(r->enhanced, rep->enhanced, sizeof(r->enhanced));
    r->off = e->tlen;
    for (i = 0; i < rep->nlines; i++) {
        if (i)
            e->text[e->tlen++] = '\n';
        memcpy(e->text + e->tlen, rep->text + rep->line_off[i], rep->line_len[i]);
        e->tlen += rep->line_len[i];
    }
    r->len = e->tlen - r->off;
    if (j->first_reply == MX_NONE)
        j->first_reply = e->nreplies;
    e->nreplies++;
    return 0;
oom:
    fail(e, MX_F_NOMEM, x->kind, x->job, "out of memory keeping replies");
    return -1;
}

/* A job without a data phase is over once its last reply came. */
static void
over_if_last(mx_engine *e, mx_job *j)
{
    if (j->mode == MX_BODY_NONE && !j->rset && j->step > j->nrcpt &&
        j->rcpt_seen == j->nrcpt)
        job_over(e, j, j->mail_ok == 1);
}

/* Reads the reply the queue's head expects and acts on it. */
static int
read_next(mx_engine *e)
{
    mx_expect x = e->q[e->qhead];
    mx_job *j = &e->jobs[x.job];
    const mx_reply *rep;
    int code, cls;
    mx_verdict v;

    e->qhead = (e->qhead + 1) % MX_ENGINE_QCAP;
    e->qlen--;
    e->check_desync = 1;
    if (e->qwritten)
        e->qwritten--;
    if (!(rep = e->io->read(e->io->ctx, x.kind))) {
        fail(e, MX_F_IO, x.kind, x.job, NULL);
        return -1;
    }
    code = rep->code;
    cls = code / 100;
    v = mx_verdict_of(mx_kind_after[x.kind], code);
    if (v == MX_V_CLOSING) {
        /* while draining after a failure, the 421 is what really ended it */
        e->failed = MX_F_NONE;
        fail(e, MX_F_421, x.kind, x.job, NULL);
        return -1;
    }
    if (v == MX_V_OUT_OF_STEP) {
        char why[96];
        mx_verdict_why(mx_kind_after[x.kind], code, why, sizeof(why));
        fail(e, MX_F_PROTOCOL, x.kind, x.job, why);
        return -1;
    }
    if (store_reply(e, &x, rep) < 0)
        return -1;
    switch (x.kind) {
    case MX_K_MAIL:
        j->mail_ok = cls == 2;
        if (!j->nrcpt)
            over_if_last(e, j);
        break;
    case MX_K_RCPT:
        j->rcpt_seen++;
        if (j->mail_ok == 1 && cls == 2)
            j->accepted++;
        over_if_last(e, j);
        if (j->gated && j->rcpt_seen == j->nrcpt && !e->failed) {
            j->gated = 0;
            e->gate = MX_NONE;
            if (stage_data(e, x.job, 1) < 0)
                return -1;
        }
        break;
    case MX_K_DATA:
        e->gate = MX_NONE;
        if (code != 354)
            j->data_code = code;
        if (e->failed) {
            /* draining: nothing more is written; a refusal ends the job,
             * a 354 leaves its body unsent */
            if (code != 354)
                job_over(e, j, 0);
            break;
        }
        if (code == 354) {
            if (j->accepted && j->mail_ok == 1)
                return stage_body(e, x.job);
            /* the server opened DATA though nothing was accepted: end it
             * empty; its answer closes the transaction */
            return stage_simple(e, ".", x.job, MX_K_EMPTY);
        }
        return stage_close(e, x.job);    /* DATA refused */
    case MX_K_BDAT:
        /* answered before the next MAIL was staged (always so without
         * PIPELINING): an RSET only if it was refused */
        if (!e->pipelining || (e->guard && e->guard_job == x.job))
            e->guard = cls != 2 && j->mail_ok == 1;
        j->final_code = code;
        job_over(e, j, cls == 2 && j->mail_ok == 1 && j->accepted);
        break;
    case MX_K_EOD:
        j->final_code = code;
        job_over(e, j, cls == 2 && j->mail_ok == 1 && j->accepted);
        break;
    case MX_K_RSET:
    case MX_K_EMPTY:
        job_over(e, j, 0);
        break;
    case MX_K_GUARD:
    case MX_K_COUNT:
        break;                     /* the job whose MAIL follows is not over */
    }
    return 0;
}

int
mx_engine_run(mx_engine *e)
{
    for (;;) {
        size_t was_next = e->next, was_cur = e->cur;

        if (stage_more(e) < 0)
            return -1;
        if (e->wlen) {
            const mx_expect *last = &e->q[(e->qhead + e->qlen - 1) % MX_ENGINE_QCAP];
            if (out_flush(e, last->job, last->kind) < 0)
                return -1;
        }
        if (!e->qlen) {
            /* nothing outstanding: done, unless a one-by-one job just
             * ended without a reply (its sender was refused) */
            if (e->cur == MX_NONE && e->gate == MX_NONE && (e->next >= e->n || e->stopped))
                return 0;
            if (e->next == was_next && e->cur == was_cur && e->cur == MX_NONE) {
                fail(e, MX_F_INTERNAL, MX_K_MAIL, e->next ? e->next - 1 : 0,
                     "internal error: the send engine stalled");
                return -1;
            }
            continue;
        }
        if (read_next(e) < 0)
            return -1;
    }
}

/* Whether a job is decided by what the server already said although not
 * all of its replies came: its sender, or every recipient, was refused. */
static int
job_refused(const mx_job *j)
{
    return j->mail_ok == 0 || (j->mail_ok == 1 && j->nrcpt && j->rcpt_seen == j->nrcpt &&
                               !j->accepted);
}

void
mx_engine_drain(mx_engine *e)
{
    size_t i;

    if (e->write_failed || e->failed == MX_F_SOURCE) {
        while (e->qlen && e->q[e->qhead].end <= e->sent)
            if (read_next(e) < 0)
                break;
    }
    if (e->failed != MX_F_IO)
        return;
    for (i = 0; i < e->next && i < e->n; i++) {
        mx_job *j = &e->jobs[i];
        if (!j->skip && !j->finished && !job_refused(j)) {
            e->fail_job = i;
            break;
        }
    }
}

/* The outcome of a job whose replies decided it. */
static mx_outcome
decided(const mx_job *j)
{
    if (j->mail_ok != 1)
        return MX_O_REFUSED_MAIL;
    if (!j->accepted && (j->nrcpt || j->mode != MX_BODY_NONE))
        return MX_O_REFUSED_RCPT;
    if (j->data_code)
        return MX_O_REFUSED_DATA;
    if (j->mode == MX_BODY_NONE)
        return MX_O_DONE;
    if (!j->final_code)
        return MX_O_NO_FINAL;
    return j->final_code / 100 == 2 ? MX_O_SENT : MX_O_REFUSED_END;
}

mx_outcome
mx_engine_outcome(const mx_engine *e, size_t i, int *maybe)
{
    const mx_job *j = &e->jobs[i];

    /* its body may have reached the server whole: only then can the
     * server have taken it.  A 421 answers this job's command in turn
     * and the server closes: nothing of this job or after it was taken */
    *maybe = j->body_done && j->end_off <= e->sent &&
             !(e->failed == MX_F_421 && i >= e->fail_job);
    if (j->skip)
        return MX_O_SKIPPED;
    if (j->finished || (e->failed && job_refused(j)))
        return decided(j);
    if (e->failed && i == e->fail_job)
        return MX_O_FAILED;
    if (e->failed)
        return *maybe ? MX_O_UNKNOWN : MX_O_NOT_SENT;
    if (e->stopped)
        return MX_O_STOPPED;
    return MX_O_NONE;
}

const mx_sreply *
mx_engine_reply(const mx_engine *e, size_t i, mx_kind k)
{
    size_t r;

    for (r = e->jobs[i].first_reply; r != MX_NONE && r < e->nreplies && e->replies[r].job == i;
         r++)
        if (e->replies[r].kind == k)
            return &e->replies[r];
    return NULL;
}
