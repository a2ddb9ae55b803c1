/* engine.h - private to csrc/py/: the send engine's jobs, replies and
 * batch, shared by engine.c (phase 2, the wire) and send.c (phases 1 and 3,
 * the Python side).
 *
 * send_raw() and send_many() both come here.  Three phases:
 *  1. prepare (GIL held): every message's arguments are checked and its
 *     MAIL/RCPT lines formatted and its body scanned (SIZE, 8-bit, NUL)
 *     before a byte is sent; a message that fails here gets its exception
 *     as its outcome and is skipped.
 *  2. the wire (GIL released for the whole batch; taken back only to read
 *     a chunk of a file body): commands are staged into s->c.wbuf and written
 *     in one write per group; replies are read in order against a queue of
 *     what they answer.  With PIPELINING the next message's envelope goes in
 *     the same write as the end of the previous one (RFC 2920 §3.1), and with
 *     CHUNKING a whole message is MAIL, RCPT..., BDAT n LAST and its bytes
 *     (RFC 3030), so a run of messages needs no round trip of its own.
 *     Replies are kept as C data (text in an arena).
 *  3. outcomes (GIL held): per message, (refused, reply) or an exception
 *     instance.  A failure of the session (I/O, 421, a reply that cannot
 *     belong) ends the batch; after a write the peer broke, drain() first
 *     reads the replies already sent.  Then a message whose final reply (or
 *     a refused sender, or every recipient refused) came has that outcome;
 *     the first one the server never told about gets the exception; one
 *     whose body went out whole (j->end_off <= b->sent) is "outcome unknown"
 *     (delivered=None); any other is "not sent" (delivered=False, safe to
 *     retry); after a 421 everything from the message it answered on is "not
 *     sent", since the server answers in turn and then closes.
 */

#ifndef MX_PY_ENGINE_H
#define MX_PY_ENGINE_H

#include "session.h"

/* Replies outstanding at most: more could fill the TCP window both ways
 * (we write while the server's replies pile up unread); msmtp stops at 100
 * for the same reason.  A message with more recipients goes one command at
 * a time. */
#define MX_PIPELINE_MAX 100

/* A BDAT body larger than this waits for the RCPT replies, so a big
 * message to refused recipients is not sent for nothing. */
#define MX_BDAT_BLIND_MAX (1024 * 1024)

/* Bytes read from a file body per call. */
#define MX_FILE_CHUNK 65536

typedef enum { B_DATA, B_BDAT, B_BINARY } body_mode;
/* K_GUARD: an RSET staged before a MAIL that follows a BDAT whose answer
 * was not known when the MAIL was staged (see stage_more) */
typedef enum { K_MAIL, K_RCPT, K_DATA, K_EOD, K_BDAT, K_RSET, K_EMPTY, K_GUARD } rkind;

/* per rkind: the stage named in errors, the timeout, what the reply answers */
extern const stage kind_stage[];
extern const timeout_key kind_timeout[];
extern const mx_after kind_after[];

typedef struct {
    /* prepare */
    PyObject *item;            /* the caller's tuple (owned) */
    PyObject *rcpts;           /* a fast sequence (owned) */
    PyObject *file;            /* a binary file body (borrowed from item), or NULL */
    Py_buffer view;            /* a bytes-like body */
    int have_view;
    PyObject *outcome;         /* set when prepare fails, and in phase 3 */
    char *lines;               /* MAIL, then each RCPT, CRLF-terminated */
    size_t *ends;              /* ends[k]: where line k ends (0 = MAIL) */
    size_t nrcpt;
    uint64_t size;             /* body octets on the wire (BDAT) */
    body_mode mode;
    int serial;                /* one command at a time */
    /* wire */
    size_t step;               /* next line to stage; nrcpt + 1 = the body */
    int mail_ok;               /* -1 unknown */
    size_t rcpt_seen, accepted;
    int finished;              /* its last reply was read */
    int body_done;             /* all of its body was staged */
    uint64_t end_off;          /* stream offset just after its body (body_done) */
    int gated;                 /* waits for replies before its body */
    size_t first_reply;        /* index of its first stored reply */
} job;

typedef struct {
    size_t job, rcpt;
    rkind kind;
    int code;
    char enhanced[MX_ENHANCED_MAX];
    size_t off, len;           /* lines joined by '\n' in the arena */
} sreply;

typedef struct {
    size_t job, rcpt;
    rkind kind;
    uint64_t end;              /* stream offset just after the command it answers
                                * (a BDAT: after the body; unknown: UINT64_MAX) */
} expect;

typedef enum { F_NONE, F_IO, F_421, F_PROTOCOL, F_SOURCE } fail_kind;

typedef struct {
    job *jobs;
    size_t n, next, cur, gate;     /* cur/gate: a job index or NONE */
    int pipelining, stop_on_error, stopped;
    int guard;                     /* the next MAIL needs an RSET before it */
    size_t guard_job;              /* the job whose BDAT set guard */
    expect q[MX_PIPELINE_MAX + 4];
    size_t qhead, qlen, qwritten;
    int check_desync;              /* a reply was read since the last check */
    size_t wlen;                   /* bytes staged in s->c.wbuf */
    uint64_t sent;                 /* bytes written that may have reached the
                                    * server (stream offsets count from 0) */
    int write_failed;              /* the failure was a write the peer broke */
    sreply *replies;
    size_t nreplies, rcap;
    char *text;
    size_t tlen, tcap;
    fail_kind failed;
    stage fail_stage;
    size_t fail_job;
    char why[160];
    PyThreadState *ts;             /* while the GIL is released */
    PyObject *fobj;                /* a bytearray of MX_FILE_CHUNK, for file bodies */
    Py_buffer fbuf;                /* held on fobj: it cannot move or shrink */
} batch;

#define NONE ((size_t)-1)

/* engine.c */
void batch_fail(batch *b, fail_kind k, stage stg, size_t jobi, const char *why);
int run_wire(Session *s, batch *b);
void drain(Session *s, batch *b);
int job_refused(const job *j);
Py_ssize_t readinto_chunk(PyObject *file, PyObject *fobj);

#endif
