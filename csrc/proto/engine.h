/* engine.h - pure: the send engine.  Jobs and replies as C data; no Python,
 * no sockets, no session.  Every command of a mail transaction runs on it:
 * one command (mail(), rcpt(), data(), rset()), a probe (try_sender: MAIL,
 * RCPT, RSET) and one or many whole messages (send_raw, send_many_raw).
 *
 * The engine decides what to send and what each reply means; its driver
 * (csrc/py/drive.c; the fuzz harness csrc/fuzz/fuzz_engine.c) does the I/O
 * through mx_engine_io: it writes the bytes the engine staged, reads one
 * parsed reply (proto/reply) when asked, hands over the next chunk of a body
 * pulled from a file, and keeps the transcript lines the engine reports.
 * The engine never blocks on its own and never holds more than its output
 * buffer (wcap bytes, handed in) of wire bytes.
 *
 * The rules it keeps:
 *  - what a reply means after a command is mx_verdict_of (proto/verdict.c):
 *    a 421 ends the session whatever it answers; a 3xx where none belongs
 *    or a 2xx to DATA is out of step; DATA asks for 354;
 *  - with pipelining a whole message is staged at once (MAIL, RCPT..., BDAT
 *    n LAST and its bytes, or DATA, whose body waits for 354), at most
 *    MX_PIPELINE_MAX replies outstanding; a job with more recipients, and
 *    every job without pipelining, goes one command at a time;
 *  - a BDAT body over MX_BDAT_BLIND_MAX waits for the RCPT replies;
 *  - a MAIL staged behind a BDAT whose answer is unknown goes behind an RSET
 *    (K_GUARD): a refused BDAT LAST may leave the transaction open;
 *  - before a write when nothing is outstanding, the desync check;
 *  - after a write the peer broke (or a body source that failed), drain
 *    reads the replies to what may have reached the server before anything
 *    is decided; a 421 read there becomes the failure;
 *  - outcomes: a job whose final reply came is sent or refused with it; the
 *    first whose fate the server never told carries the failure; one whose
 *    body went out whole is unknown; any other is not sent (retry safe);
 *    after a 421 nothing from the job it answered on was taken.
 */
#ifndef MX_ENGINE_H
#define MX_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "reply.h"
#include "verdict.h"

/* Replies outstanding at most: more could fill the TCP window both ways
 * (we write while the server's replies pile up unread); msmtp stops at 100
 * for the same reason.  A message with more recipients goes one command at
 * a time.  (The fuzz build sets it and MX_BDAT_BLIND_MAX small.) */
#ifndef MX_PIPELINE_MAX
#define MX_PIPELINE_MAX 100
#endif
#define MX_ENGINE_QCAP (MX_PIPELINE_MAX + 4)

/* A BDAT body larger than this waits for the RCPT replies, so a big
 * message to refused recipients is not sent for nothing. */
#ifndef MX_BDAT_BLIND_MAX
#define MX_BDAT_BLIND_MAX (1024 * 1024)
#endif

/* The output buffer must hold at least this much: a MAIL or RCPT line is
 * at most MX_PATH_MAX + 1100 octets (csrc/py formats them so); a longer
 * line fails the engine (MX_F_INTERNAL) instead of overrunning. */
#define MX_ENGINE_WBUF_MIN 4096

typedef enum { MX_BODY_NONE, MX_BODY_DATA, MX_BODY_BDAT, MX_BODY_BINARY } mx_body_mode;

/* What a reply answers.  K_GUARD: the RSET before a MAIL that follows a
 * BDAT whose answer was unknown when the MAIL was staged; K_EMPTY: the "."
 * ending a DATA the server opened although no recipient was accepted. */
typedef enum {
    MX_K_MAIL, MX_K_RCPT, MX_K_DATA, MX_K_EOD, MX_K_BDAT, MX_K_RSET, MX_K_EMPTY,
    MX_K_GUARD, MX_K_COUNT
} mx_kind;

extern const mx_after mx_kind_after[MX_K_COUNT];

typedef struct {
    /* set by the caller (then mx_engine_init) */
    const char *mail;            /* the MAIL line, CRLF included; NULL: MAIL
                                  * was accepted before (rcpt(), data()) */
    size_t mail_len;
    const char *rcpt;            /* RCPT lines back to back, CRLF included */
    const size_t *rcpt_off;      /* line k is rcpt[rcpt_off[k] .. rcpt_off[k+1]) */
    size_t nrcpt;
    size_t accepted_before;      /* recipients accepted before (data()) */
    mx_body_mode mode;           /* NONE: no data phase */
    uint64_t size;               /* BDAT: octets on the wire; DATA: as scanned */
    const unsigned char *body;   /* the whole body; NULL: pulled (io.pull) */
    size_t body_len;
    int rset;                    /* end with RSET whatever was answered (a probe) */
    int skip;                    /* failed before: nothing of it is sent */
    /* the engine's */
    size_t step;                 /* next line to stage; nrcpt + 1 = the data phase */
    int mail_ok;                 /* -1 unknown */
    size_t rcpt_seen, accepted;
    int serial;                  /* one command at a time */
    int finished;                /* its last reply was read */
    int body_done;               /* all of its body was staged */
    int gated;                   /* waits for replies before its body */
    uint64_t end_off;            /* stream offset just after its body */
    size_t first_reply;          /* index of its first stored reply, or MX_NONE */
    int data_code;               /* a refusal of DATA (0: none) */
    int final_code;              /* the reply to its end of data / BDAT (0: none) */
} mx_job;

#define MX_NONE ((size_t)-1)

/* A reply kept: its text (lines joined by '\n') is in the engine's arena. */
typedef struct {
    size_t job, rcpt;
    mx_kind kind;
    int code;
    char enhanced[MX_ENHANCED_MAX];
    size_t off, len;
} mx_sreply;

typedef struct {
    size_t job, rcpt;
    mx_kind kind;
    uint64_t end;                /* stream offset just after the command it
                                  * answers (a BDAT: after its body) */
} mx_expect;

typedef enum {
    MX_F_NONE,
    MX_F_IO,                     /* a write or read failed (the driver knows why) */
    MX_F_421,                    /* the server closes */
    MX_F_PROTOCOL,               /* a reply that cannot answer its command (why) */
    MX_F_SOURCE,                 /* a body source failed or changed size (why) */
    MX_F_NOMEM,                  /* out of memory keeping replies */
    MX_F_INTERNAL                /* the engine stalled (why); a bug */
} mx_fail;

/* The driver.  Each returns as described; the engine does the rest. */
typedef struct {
    void *ctx;
    /* Nothing is outstanding: 0 when no byte came unasked, -1 otherwise. */
    int (*in_step)(void *ctx);
    /* Writes all of p[0..n).  `wait` is the command the write begins with
     * (MX_K_COUNT: body bytes).  0, or -1 with *maybe = how many bytes may
     * have reached the server and *broken = the peer broke the stream (its
     * replies are still readable), not a timeout. */
    int (*write)(void *ctx, const unsigned char *p, size_t n, mx_kind wait,
                 size_t *maybe, int *broken);
    /* One whole reply to a command of kind `k`, or NULL when reading failed. */
    const mx_reply *(*read)(void *ctx, mx_kind k);
    /* The next chunk of job i's body (*p, valid until the next call): its
     * length, 0 at the end, -1 when the source failed. */
    long (*pull)(void *ctx, size_t job, const unsigned char **p);
    /* A transcript line: dir 'C' a command, '*' an event; no CRLF. */
    void (*record)(void *ctx, char dir, const char *text, size_t len);
} mx_engine_io;

typedef struct {
    /* set by mx_engine_init; options may be changed before mx_engine_run */
    mx_job *jobs;
    size_t n;
    const mx_engine_io *io;
    unsigned char *wbuf;
    size_t wcap;
    int pipelining, stop_on_error;
    int per_command;             /* a write fails on, and waits as, the first
                                  * command in it (the step methods) */
    /* state */
    size_t next, cur, gate;      /* job indexes, or MX_NONE */
    int stopped;                 /* stop_on_error: a job was not accepted */
    int guard;                   /* the next MAIL needs an RSET before it */
    size_t guard_job;            /* the job whose BDAT set guard */
    mx_expect q[MX_ENGINE_QCAP];
    size_t qhead, qlen, qwritten;
    int check_desync;            /* a reply was read since the last check */
    size_t wlen;                 /* bytes staged in wbuf */
    mx_kind wkind;               /* the first command staged in wbuf */
    uint64_t sent;               /* bytes that may have reached the server */
    int write_failed;            /* the failure was a write the peer broke */
    mx_sreply *replies;
    size_t nreplies, rcap;
    char *text;
    size_t tlen, tcap;
    mx_fail failed;
    mx_kind fail_kind;           /* the command it failed on (its stage) */
    size_t fail_job;
    char why[160];
} mx_engine;

/* Clears the jobs' engine fields and the engine; the buffer must hold at
 * least MX_ENGINE_WBUF_MIN bytes.  Nothing is allocated yet. */
void mx_engine_init(mx_engine *e, mx_job *jobs, size_t n, const mx_engine_io *io,
                    unsigned char *wbuf, size_t wcap);
/* Runs until every job is over (0) or the session failed (-1, e->failed). */
int mx_engine_run(mx_engine *e);
/* After a failure: reads what the server already answered to bytes that
 * reached it (only after a write the peer broke or a source failure), then
 * pins the failure on the first job whose fate the server never told. */
void mx_engine_drain(mx_engine *e);
void mx_engine_free(mx_engine *e);

typedef enum {
    MX_O_NONE,           /* no outcome: a bug (the fuzz harness checks it) */
    MX_O_SKIPPED,        /* job.skip */
    MX_O_SENT,           /* the final reply to its end of data was 2xx */
    MX_O_DONE,           /* no data phase, all its replies came */
    MX_O_REFUSED_MAIL, MX_O_REFUSED_RCPT, MX_O_REFUSED_DATA, MX_O_REFUSED_END,
    MX_O_NO_FINAL,       /* finished without a final reply: a bug */
    MX_O_FAILED,         /* the session failure is pinned on it */
    MX_O_UNKNOWN,        /* body went out whole, no final reply */
    MX_O_NOT_SENT,       /* the session failed before it went out: retry safe */
    MX_O_STOPPED         /* stop_on_error kept it from starting */
} mx_outcome;

/* Job i's outcome after mx_engine_run (and mx_engine_drain after a
 * failure); *maybe: its body may have reached the server whole. */
mx_outcome mx_engine_outcome(const mx_engine *e, size_t i, int *maybe);

/* Job i's stored reply to a command of kind k (the first one), or NULL. */
const mx_sreply *mx_engine_reply(const mx_engine *e, size_t i, mx_kind k);

#endif
