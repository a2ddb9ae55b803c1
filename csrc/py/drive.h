/* drive.h - private to csrc/py/: the send engine's driver.  The engine
 * (proto/engine.h) is pure; this is the loop that does its I/O on a
 * Session: writes and reads through io/conn with deadlines and the GIL
 * released, taking the GIL back only to read a chunk of a file body.
 *
 * Who runs on it: send.c (send_raw, send_many_raw: phase 1 prepares the
 * jobs with the GIL held, phase 2 is mx_engine_run here, phase 3 turns
 * mx_engine_outcome into Python outcomes) and steps.c (mail, rcpt, data,
 * rset, try_sender: one command or one probe, one job). */
#ifndef MX_PY_DRIVE_H
#define MX_PY_DRIVE_H

#include "session.h"
#include "engine.h"

/* Bytes read from a file body per call. */
#define MX_FILE_CHUNK 65536

/* per engine kind: the stage named in errors, the timeout of its reply */
extern const stage kind_stage[MX_K_COUNT];
extern const timeout_key kind_timeout[MX_K_COUNT];

/* The Python side of one job. */
typedef struct {
    PyObject *item;            /* the caller's tuple (owned) */
    PyObject *rcpts;           /* a fast sequence (owned) */
    PyObject *file;            /* a binary file body (borrowed from item), or NULL */
    Py_buffer view;            /* a bytes-like body */
    int have_view;
    PyObject *outcome;         /* set when prepare fails, or the file reader's error */
    char *lines;               /* MAIL, then each RCPT, CRLF-terminated */
    size_t *ends;              /* ends[k]: where line k ends (0 = MAIL) */
} pjob;

typedef struct {
    Session *s;
    mx_engine e;
    mx_engine_io io;
    mx_job *jobs;
    pjob *pj;
    size_t n;
    PyThreadState *ts;         /* while the GIL is released */
    PyObject *fobj;            /* a bytearray of MX_FILE_CHUNK, for file bodies */
    Py_buffer fbuf;            /* held on fobj: it cannot move or shrink */
} drive;

/* Allocates n jobs (zeroed) and, with files, the file buffer.  0, or -1
 * raised; drive_free either way. */
int drive_init(drive *d, Session *s, size_t n, int files);
/* Starts the engine on the jobs as set up (mx_engine_init), with the
 * session's PIPELINING unless `serial`, runs it with the GIL released and,
 * with `drain`, drains after a failure.  0, or -1 (d->e.failed). */
int drive_run(drive *d, int stop_on_error, int per_command, int drain, int serial);
/* The exception for d->e.failed (raised then taken back), or NULL raised;
 * the session is unusable after it. */
PyObject *drive_fatal(drive *d);
/* Raises it instead.  NULL. */
PyObject *drive_raise(drive *d);
/* A Reply for a stored reply, or NULL raised. */
PyObject *drive_reply(drive *d, const mx_sreply *r);
void drive_free(drive *d);

/* file.readinto() on a fresh view of fobj; see drive.c.  The count, or -1
 * raised. */
Py_ssize_t readinto_chunk(PyObject *file, PyObject *fobj);

#endif
