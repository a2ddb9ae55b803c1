/* wire.c - the Session's lock, its state, and its steps on the wire with the
 * GIL released (io/conn.c does the I/O; this file only brackets it). */
#include "session.h"

/* The one place the protocol state changes. */
void
set_state(Session *s, sstate next)
{
    s->state = next;
    if (next != S_READY && next != S_MAIL && next != S_RCPT)
        s->txn_open = 0;           /* no connection, or a new one: no transaction */
}

/* The deadline for one step: the stage timeout, capped by the overall one. */
int64_t
deadline_for(Session *s, timeout_key k)
{
    int64_t dl = 0;

    if (s->timeout_ms[k] >= 0)
        dl = mx_now_ms() + s->timeout_ms[k];
    s->deadline_hit = 0;
    if (s->deadline && (!dl || s->deadline < dl)) {
        dl = s->deadline;
        s->deadline_hit = 1;
    }
    return dl;
}

/* Takes the session's lock and checks it can be used.  0, or -1 raised. */
int
enter(Session *s, int need_connection)
{
    if (!PyThread_acquire_lock(s->lock, NOWAIT_LOCK)) {
        raise_exc(s, MX_EXC_BUSY, STG_CONNECT, NULL, NULL,
                  "this Session is in use by another thread; use one Session "
                  "per thread");
        return -1;
    }
    if (need_connection) {
        const char *why = NULL;
        if (s->state == S_ERROR)
            why = s->failure;
        else if (s->state == S_CLOSED)
            why = "the session is closed";
        else if (s->state == S_NEW)
            why = "the session is not connected; call connect() first";
        if (why) {
            PyThread_release_lock(s->lock);
            raise_exc(s, MX_EXC_STATE, STG_CONNECT, NULL, NULL,
                      "session unusable: %s", why);
            return -1;
        }
    }
    return 0;
}

void
leave(Session *s)
{
    PyThread_release_lock(s->lock);
}

/* Sends a command (recorded as `shown` when given) and reads its reply,
 * GIL released.  0, or -1 with s->c.err set. */
int
exchange(Session *s, const char *line, size_t len, const char *shown, timeout_key k)
{
    int rc;

    Py_BEGIN_ALLOW_THREADS
    rc = mx_conn_send(&s->c, line, len, shown, deadline_for(s, k));
    if (rc == 0)
        rc = mx_conn_recv_reply(&s->c, deadline_for(s, k));
    Py_END_ALLOW_THREADS
    return rc;
}

/* Several command lines in one write (RFC 2920 pipelining), GIL released.
 * 0, or -1 with s->c.err set. */
int
send_lines(Session *s, const char *buf, size_t len, timeout_key k)
{
    int rc;

    Py_BEGIN_ALLOW_THREADS
    rc = mx_conn_send(&s->c, buf, len, NULL, deadline_for(s, k));
    Py_END_ALLOW_THREADS
    return rc;
}

/* Reads one reply with the GIL released; 0 or -1 with s->c.err set. */
int
recv_only(Session *s, timeout_key k)
{
    int rc;

    Py_BEGIN_ALLOW_THREADS
    rc = mx_conn_recv_reply(&s->c, deadline_for(s, k));
    Py_END_ALLOW_THREADS
    return rc;
}
