/* libFuzzer harness: engine.c, the pure send engine.  The input decides a
 * job list and the server: options (pipelining, stop_on_error, buffer
 * size, a failing desync check, a write that fails after k bytes, broken
 * or timed out), 1..8 jobs (with or without MAIL, 0..8 recipients, no data
 * phase / DATA / BDAT / BINARYMIME, a probe's RSET, a body given whole or
 * pulled in chunks, larger than MX_BDAT_BLIND_MAX, a source that fails or
 * changes size), then one byte per reply (2xx, 354, a 3xx where none
 * belongs, 421, 4xx, 5xx, a reply that cannot be parsed; the input's end
 * is EOF).
 *
 * The harness parses what the engine writes as a server would (command
 * lines, BDAT chunks, a DATA body up to its end marker) and checks:
 *  - every reply is asked for a command that reached the server whole, in
 *    order, of the kind the engine says it answers;
 *  - a write never exceeds the engine's buffer and begins with the command
 *    (or body bytes) it says; nothing is written after a 421 was read; the
 *    desync check is asked only with nothing unanswered;
 *  - the engine terminates within a bound of steps;
 *  - every job ends in exactly one outcome, none without one; a job is
 *    reported sent only if a 2xx answered its end of data (or BDAT), as the
 *    harness saw it on the wire; the replies kept are the ones read.
 *
 * Built with small MX_PIPELINE_MAX and MX_BDAT_BLIND_MAX (run.sh) so that
 * serial jobs and gated BDAT bodies are cheap to reach. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "body.h"
#include "engine.h"

#define MAXJ 8
#define MAXR 8
#define STEP_BOUND 200000
#define EXPQ 4096

typedef struct {
    size_t total, made, chunk;   /* pulled body: bytes to make, made, per call */
    long fail_at;                /* call that fails (-1: none) */
    long calls;
    int ended;
    unsigned char buf[512];
} source;

typedef struct {
    const uint8_t *in;
    size_t len, pos;
    size_t wcap, fail_after, written;   /* fail_after: 0 never */
    int broken, in_step_fail_at, in_step_calls;
    int saw_421, steps;
    mx_reply reply;
    /* the server's view of the stream */
    enum { P_CMD, P_AWAIT, P_BODY, P_RAW } mode;
    char line[4096];
    size_t llen;
    uint64_t raw_left;
    mx_kind exp[EXPQ];
    size_t ehead, elen;
    /* what was read */
    int codes[4096];
    size_t ncodes;
    size_t ok_final;             /* 2xx replies to an end of data / BDAT */
    source src[MAXJ];
} fz;

static uint8_t
take(fz *f)
{
    return f->pos < f->len ? f->in[f->pos++] : 0;
}

static void
expect_push(fz *f, mx_kind k)
{
    if (f->elen >= EXPQ)
        abort();
    f->exp[(f->ehead + f->elen++) % EXPQ] = k;
}

/* The server parses one complete command line. */
static void
on_line(fz *f)
{
    unsigned long long n;

    if (f->llen == 0)
        abort();                          /* an empty command line */
    f->line[f->llen] = '\0';
    if (!strncmp(f->line, "MAIL FROM:", 10))
        expect_push(f, MX_K_MAIL);
    else if (!strncmp(f->line, "RCPT TO:", 8))
        expect_push(f, MX_K_RCPT);
    else if (!strcmp(f->line, "RSET"))
        expect_push(f, MX_K_RSET);
    else if (!strcmp(f->line, "DATA")) {
        expect_push(f, MX_K_DATA);
        f->mode = P_AWAIT;
        return;
    } else if (sscanf(f->line, "BDAT %llu LAST", &n) == 1) {
        f->raw_left = n;
        f->mode = P_RAW;
        if (n == 0) {
            expect_push(f, MX_K_BDAT);
            f->mode = P_CMD;
        }
        return;
    } else
        abort();                          /* a line the engine never writes */
}

static void
on_bytes(fz *f, const unsigned char *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        unsigned char c = p[i];
        switch (f->mode) {
        case P_AWAIT:
            abort();                      /* bytes after DATA before its reply */
        case P_RAW:
            if (--f->raw_left == 0) {
                expect_push(f, MX_K_BDAT);
                f->mode = P_CMD;
            }
            break;
        case P_BODY:
            /* a line "." alone ends it; CRLF line ends only */
            if (c == '\n') {
                if (f->llen == 0 || f->line[f->llen - 1] != '\r')
                    abort();              /* a bare LF in a DATA body */
                if (f->llen == 2 && f->line[0] == '.') {
                    expect_push(f, MX_K_EOD);
                    f->mode = P_CMD;
                }
                f->llen = 0;
            } else if (f->llen < sizeof(f->line) - 1) {
                f->line[f->llen++] = (char)c;
            }
            break;
        case P_CMD:
            if (c == '\n') {
                if (f->llen == 0 || f->line[f->llen - 1] != '\r')
                    abort();
                f->llen--;
                on_line(f);
                f->llen = 0;
            } else {
                if (f->llen >= sizeof(f->line) - 1)
                    abort();              /* a command line without end */
                f->line[f->llen++] = (char)c;
            }
            break;
        }
    }
}

static void
step(fz *f)
{
    if (++f->steps > STEP_BOUND)
        abort();                          /* the engine does not terminate */
}

static int
io_in_step(void *ctx)
{
    fz *f = ctx;

    step(f);
    if (f->elen)
        abort();                          /* asked with a command unanswered */
    return ++f->in_step_calls == f->in_step_fail_at ? -1 : 0;
}

static int
io_write(void *ctx, const unsigned char *p, size_t n, mx_kind wait, size_t *maybe, int *broken)
{
    static const char *const verbs[MX_K_COUNT] = {
        "MAIL", "RCPT", "DATA", ".", "BDAT", "RSET", ".", "RSET",
    };
    fz *f = ctx;

    step(f);
    if (n == 0 || n > f->wcap || f->saw_421)
        abort();
    /* `wait` is the command the write begins with, or body bytes */
    if (wait == MX_K_COUNT) {
        if (f->mode != P_BODY && f->mode != P_RAW)
            abort();
    } else if (f->llen || (f->mode != P_CMD && !(f->mode == P_BODY && wait == MX_K_EMPTY)) ||
               n < strlen(verbs[wait]) || memcmp(p, verbs[wait], strlen(verbs[wait]))) {
        abort();
    }
    if (f->fail_after && f->written + n >= f->fail_after) {
        size_t part = f->fail_after - f->written;
        on_bytes(f, p, part);
        f->written += part;
        *maybe = part;
        *broken = f->broken;
        return -1;
    }
    on_bytes(f, p, n);
    f->written += n;
    return 0;
}

static const int codes[] = {250, 251, 235, 354, 334, 300, 421, 450, 451, 452,
                            503, 550, 552, 554, 220, -1};

static const mx_reply *
io_read(void *ctx, mx_kind k)
{
    fz *f = ctx;
    mx_kind want;
    int code;

    step(f);
    if (!f->elen)
        abort();                          /* a reply to nothing that reached the server */
    want = f->exp[f->ehead];
    f->ehead = (f->ehead + 1) % EXPQ;
    f->elen--;
    if ((k == MX_K_GUARD ? MX_K_RSET : k == MX_K_EMPTY ? MX_K_EOD : k) != want)
        abort();                          /* the queue and the wire disagree */
    if (f->pos >= f->len)
        return NULL;                      /* EOF */
    code = codes[take(f) % (sizeof(codes) / sizeof(codes[0]))];
    if (code < 0)
        return NULL;                      /* a reply that does not parse */
    if (want == MX_K_DATA)
        f->mode = code == 354 ? P_BODY : P_CMD;
    if (code == 421)
        f->saw_421 = 1;
    if ((k == MX_K_EOD || k == MX_K_BDAT) && code / 100 == 2)
        f->ok_final++;
    if (f->ncodes < sizeof(f->codes) / sizeof(f->codes[0]))
        f->codes[f->ncodes++] = code;
    f->reply.code = code;
    return &f->reply;
}

static long
io_pull(void *ctx, size_t job, const unsigned char **p)
{
    fz *f = ctx;
    source *s = &f->src[job];
    size_t n, i;

    step(f);
    if (job >= MAXJ || s->ended)
        abort();                          /* pulled past its end */
    if (s->calls++ == s->fail_at) {
        s->ended = 1;
        return -1;
    }
    n = s->total - s->made;
    if (n > s->chunk)
        n = s->chunk;
    for (i = 0; i < n; i++, s->made++)   /* lines of 39 'a' and CRLF */
        s->buf[i] = s->made % 41 == 39 ? '\r' : s->made % 41 == 40 ? '\n' : 'a';
    *p = s->buf;
    if (!n)
        s->ended = 1;
    return (long)n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char mail[] = "MAIL FROM:<a@example.org>\r\n";
    static const char rcpt[] = "RCPT TO:<b@example.org>\r\n";
    char rl[MAXJ][MAXR * (sizeof(rcpt) - 1)];
    size_t off[MAXJ][MAXR + 1];
    mx_job jobs[MAXJ];
    mx_engine e;
    mx_engine_io io;
    fz *f = calloc(1, sizeof(*f));
    size_t n, i, k, sent = 0;
    uint8_t o;
    int guard;

    if (!f)
        abort();
    f->in = data;
    f->len = size;
    o = take(f);
    f->wcap = (o & 4) ? MX_ENGINE_WBUF_MIN : 3 * MX_ENGINE_WBUF_MIN;
    f->in_step_fail_at = (o >> 3) & 3 ? take(f) % 8 : 0;
    if (o & 32) {
        f->fail_after = 1 + take(f) * 37u;
        f->broken = (o & 64) != 0;
    }
    k = take(f);
    n = 1 + k % MAXJ;
    guard = (k & 128) != 0;        /* a refused BDAT LAST left by an earlier call */
    memset(jobs, 0, sizeof(jobs));
    for (i = 0; i < n; i++) {
        mx_job *j = &jobs[i];
        uint8_t a = take(f), b = take(f);
        size_t blen = b & 63;

        j->mail = (a & 1) || i ? mail : NULL;
        j->mail_len = sizeof(mail) - 1;
        j->nrcpt = (a >> 1) % (MAXR + 1);
        for (k = 0; k < j->nrcpt; k++) {
            memcpy(rl[i] + k * (sizeof(rcpt) - 1), rcpt, sizeof(rcpt) - 1);
            off[i][k] = k * (sizeof(rcpt) - 1);
        }
        off[i][j->nrcpt] = j->nrcpt * (sizeof(rcpt) - 1);
        j->rcpt = rl[i];
        j->rcpt_off = off[i];
        j->mode = (mx_body_mode)((a >> 5) & 3);
        j->rset = j->mode == MX_BODY_NONE && (b & 64);
        j->accepted_before = !j->mail && !j->nrcpt;
        j->skip = (a & 0x80) && (b & 0x80);
        if (j->mode == MX_BODY_NONE)
            continue;
        if (b & 0x80) {                   /* pulled, maybe over MX_BDAT_BLIND_MAX */
            source *s = &f->src[i];
            uint8_t c = take(f);
            s->total = (size_t)(c & 15) * (MX_BDAT_BLIND_MAX / 8) + (size_t)take(f) * 41;
            s->chunk = 1 + (size_t)take(f) * 2;
            s->fail_at = (c & 16) ? (long)(c >> 5) : -1;
            /* lines end in CRLF except maybe the last: BDAT adds its CRLF */
            j->size = s->total + (s->total % 41 ? 2 - (s->total % 41 == 40) : 0);
            if (j->mode == MX_BODY_BINARY)
                j->size = s->total;
            if (c & 128)                  /* the source changed */
                j->size += 1;
        } else {                          /* given whole: bytes of the input */
            mx_body_scan_state sc;
            const unsigned char *p = data + (f->pos < size ? f->pos : size);
            if (blen > size - (f->pos < size ? f->pos : size))
                blen = size - f->pos;
            f->pos += blen;
            j->body = p;
            j->body_len = blen;
            mx_body_scan_init(&sc);
            mx_body_scan(&sc, p, blen);
            mx_body_scan_finish(&sc);
            j->size = j->mode == MX_BODY_BINARY ? blen : sc.info.size;
        }
    }
    io.ctx = f;
    io.in_step = io_in_step;
    io.write = io_write;
    io.read = io_read;
    io.pull = io_pull;
    io.record = NULL;
    {
        unsigned char *wbuf = malloc(f->wcap);
        if (!wbuf)
            abort();
        mx_engine_init(&e, jobs, n, &io, wbuf, f->wcap);
        e.pipelining = (o & 1) != 0;
        e.stop_on_error = (o & 2) != 0;
        e.per_command = (o & 128) != 0;
        e.guard = guard;
        e.guard_job = MX_NONE;
        if (mx_engine_run(&e) < 0) {
            if (!e.failed || e.failed == MX_F_INTERNAL)
                abort();                  /* a stall, a full queue: bugs */
            mx_engine_drain(&e);
        } else if (e.failed) {
            abort();
        }
        free(wbuf);
    }
    /* the replies kept are the ones read, in order (a 421 or a reply out
     * of step ends the session and is not kept) */
    if (e.nreplies > f->ncodes)
        abort();
    for (k = 0; k < e.nreplies; k++)
        if (e.replies[k].code != f->codes[k] || e.replies[k].job >= n)
            abort();
    for (i = 0; i < n; i++) {
        int maybe;
        mx_outcome oc = mx_engine_outcome(&e, i, &maybe);

        if (oc == MX_O_NONE || oc == MX_O_NO_FINAL || (oc == MX_O_SKIPPED) != jobs[i].skip)
            abort();
        if (oc == MX_O_SENT) {
            const mx_sreply *r;
            sent++;
            r = mx_engine_reply(&e, i, jobs[i].mode == MX_BODY_DATA ? MX_K_EOD : MX_K_BDAT);
            if (!r || r->code / 100 != 2 || !jobs[i].body_done || jobs[i].end_off > e.sent)
                abort();
        }
        if (oc == MX_O_DONE && jobs[i].mode != MX_BODY_NONE)
            abort();
        if (oc == MX_O_STOPPED && (!e.stop_on_error || e.failed))
            abort();
        if ((oc == MX_O_FAILED) != (e.failed && i == e.fail_job && !jobs[i].skip &&
                                    !jobs[i].finished && oc != MX_O_REFUSED_MAIL &&
                                    oc != MX_O_REFUSED_RCPT))
            abort();
    }
    if (sent > f->ok_final)
        abort();
    mx_engine_free(&e);
    free(f);
    return 0;
}
