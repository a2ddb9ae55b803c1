/* steps.c - the step methods on the send engine: mail, rcpt, data, rset
 * (one command, one job) and try_sender (MAIL, RCPT, RSET: one probe job,
 * pipelined when the server offers PIPELINING).  The engine (proto/engine.c)
 * writes the command, reads and judges the reply (proto/verdict.c); here
 * only the arguments, the state transitions and the Python results. */
#include "drive.h"

#include <string.h>

#include "body.h"

/* Runs the job(s) set up in d one command at a time (or pipelined, when
 * `pipelined`); 0, or -1 raised (I/O failure, 421, a reply out of step:
 * the session is unusable). */
static int
run_step(drive *d, int pipelined)
{
    if (drive_run(d, 0, 1, 0, !pipelined) == 0)
        return 0;
    drive_raise(d);
    return -1;
}

/* The stored reply to job 0's command of kind k as a Reply; NULL raised. */
static PyObject *
step_reply(drive *d, mx_kind k)
{
    const mx_sreply *r = mx_engine_reply(&d->e, 0, k);

    if (!r) {
        PyErr_SetString(PyExc_SystemError, "mailexpress: a step without its reply");
        return NULL;
    }
    return drive_reply(d, r);
}

/* MAIL (rcpt NULL) or RCPT: formats the command and runs it; a 2xx moves
 * the state to `accepted`.  Returns the Reply (accepted or refused), or
 * NULL raised (bad input, I/O failure, 421). */
static PyObject *
path_step(Session *s, const char *verb, PyObject *addr, PyObject *opts, stage stg,
          sstate accepted)
{
    char cmd[MX_PATH_MAX + 1100];
    size_t len, off[2];
    drive d;
    PyObject *res = NULL;
    mx_kind k = stg == STG_MAIL ? MX_K_MAIL : MX_K_RCPT;

    if (format_path(s, verb, addr, opts, NULL, stg, cmd, sizeof(cmd), &len, NULL) < 0)
        return NULL;
    if (drive_init(&d, s, 1, 0) < 0)
        goto done;
    if (k == MX_K_MAIL) {
        d.jobs[0].mail = cmd;
        d.jobs[0].mail_len = len;
    } else {
        off[0] = 0;
        off[1] = len;
        d.jobs[0].rcpt = cmd;
        d.jobs[0].rcpt_off = off;
        d.jobs[0].nrcpt = 1;
    }
    if (run_step(&d, 0) < 0)
        goto done;
    if ((res = step_reply(&d, k)) && mx_engine_reply(&d.e, 0, k)->code / 100 == 2)
        set_state(s, accepted);
done:
    drive_free(&d);
    return res;
}

MX_DOC(mail_doc,
"mail(sender, options=()) -> Reply\n\n"
"Sends MAIL FROM and returns the reply, accepted or not (like smtplib's\n"
"mail()); raises only when the exchange itself fails.");

PyObject *
Session_mail(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"sender", "options", NULL};
    PyObject *sender, *opts = Py_None, *res = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwlist, &sender, &opts))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    if (need_ready(s, "MAIL") == 0)
        res = path_step(s, "MAIL FROM", sender, opts, STG_MAIL, S_MAIL);
    leave(s);
    return res;
}

MX_DOC(rcpt_doc,
"rcpt(recipient, options=()) -> Reply\n\n"
"Sends RCPT TO and returns the reply, accepted or not.");

PyObject *
Session_rcpt(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"recipient", "options", NULL};
    PyObject *rcpt, *opts = Py_None, *res = NULL;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|O", kwlist, &rcpt, &opts))
        return NULL;
    if (enter(s, 1) < 0)
        return NULL;
    if (s->state != S_MAIL && s->state != S_RCPT)
        raise_exc(s, MX_EXC_STATE, STG_RCPT, NULL, NULL,
                  "RCPT needs an accepted MAIL first (state %s)", state_names[s->state]);
    else
        res = path_step(s, "RCPT TO", rcpt, opts, STG_RCPT, S_RCPT);
    leave(s);
    return res;
}

/* DATA, the body and the final reply (the engine sends RSET after a
 * refused DATA so the session can go on).  Returns a new Reply (2xx) or
 * NULL raised.  The transaction is over either way. */
static PyObject *
data_step(Session *s, const unsigned char *p, size_t n)
{
    drive d;
    mx_job *j;
    mx_body_scan_state scan;
    PyObject *r, *res = NULL;

    if (drive_init(&d, s, 1, 0) < 0)
        goto done;
    j = &d.jobs[0];
    j->accepted_before = 1;        /* state RCPT: a recipient was accepted */
    j->mode = MX_BODY_DATA;
    j->body = p ? p : (const unsigned char *)"";
    j->body_len = n;
    mx_body_scan_init(&scan);
    Py_BEGIN_ALLOW_THREADS
    mx_body_scan(&scan, j->body, n);
    mx_body_scan_finish(&scan);
    Py_END_ALLOW_THREADS
    j->size = scan.info.size;
    if (run_step(&d, 0) < 0)
        goto done;
    set_state(s, S_READY);
    if (j->data_code) {
        if ((r = step_reply(&d, MX_K_DATA))) {
            raise_exc(s, MX_EXC_DATA, STG_DATA, r, NULL,
                      "the server refused DATA; the message was not sent");
            Py_DECREF(r);
        }
    } else if (j->final_code / 100 == 2) {
        res = step_reply(&d, MX_K_EOD);
    } else if ((r = step_reply(&d, MX_K_EOD))) {
        raise_exc(s, MX_EXC_DATA, STG_END_OF_DATA, r, NULL,
                  "the server refused the message at end of data");
        Py_DECREF(r);
    }
done:
    drive_free(&d);
    return res;
}

MX_DOC(data_doc,
"data(body) -> Reply\n\n"
"Sends DATA, then the body (any bytes-like object) with bare CR and LF\n"
"turned into CRLF and leading dots doubled, then the end-of-data marker.\n"
"Returns the final 2xx reply; raises DataRefused (stage DATA or\n"
"END_OF_DATA) otherwise.  The message is sent only if this returns.");

PyObject *
Session_data(Session *s, PyObject *arg)
{
    Py_buffer view;
    PyObject *res = NULL;

    if (PyUnicode_Check(arg)) {
        PyErr_SetString(PyExc_TypeError,
                        "data() takes bytes; encode the message first (or use send_message)");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (enter(s, 1) < 0)
        goto release;
    if (s->state != S_RCPT)
        raise_exc(s, MX_EXC_STATE, STG_DATA, NULL, NULL,
                  "DATA needs at least one accepted recipient (state %s)",
                  state_names[s->state]);
    else
        res = data_step(s, view.buf, (size_t)view.len);
    leave(s);
release:
    PyBuffer_Release(&view);
    return res;
}

PyObject *
Session_rset(Session *s, PyObject *unused)
{
    drive d;
    PyObject *res = NULL;

    (void)unused;
    if (enter(s, 1) < 0)
        return NULL;
    if (drive_init(&d, s, 1, 0) == 0) {
        d.jobs[0].rset = 1;
        if (run_step(&d, 0) == 0 && (res = step_reply(&d, MX_K_RSET)) &&
            mx_engine_reply(&d.e, 0, MX_K_RSET)->code / 100 == 2 && s->state != S_CONNECTED) {
            s->txn_open = 0;
            set_state(s, S_READY);
        }
    }
    drive_free(&d);
    leave(s);
    return res;
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
    PyObject *mail_r = NULL, *rcpt_r = NULL;
    char mline[MX_PATH_MAX + 1100], rline[MX_PATH_MAX + 1100];
    size_t mlen, off[2] = {0, 0};
    const mx_sreply *r;
    int pipelined;
    drive d;

    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO|O", kwlist, &sender, &rcpt, &opts))
        return NULL;
    memset(&d, 0, sizeof(d));
    if (enter(s, 1) < 0)
        return NULL;
    if (need_ready(s, "try_sender") < 0)
        goto done;
    pipelined = (s->caps.ext & MX_EXT_PIPELINING) != 0;
    if (format_path(s, "MAIL FROM", sender, opts, NULL, STG_MAIL, mline, sizeof(mline), &mlen,
                    NULL) < 0 ||
        format_path(s, "RCPT TO", rcpt, NULL, NULL, STG_RCPT, rline, sizeof(rline), &off[1],
                    NULL) < 0)
        goto done;
    if (drive_init(&d, s, 1, 0) < 0)
        goto done;
    d.jobs[0].mail = mline;
    d.jobs[0].mail_len = mlen;
    d.jobs[0].rcpt = rline;
    d.jobs[0].rcpt_off = off;
    d.jobs[0].nrcpt = 1;
    d.jobs[0].rset = 1;
    if (run_step(&d, pipelined) < 0)
        goto done;
    if (!(mail_r = step_reply(&d, MX_K_MAIL)))
        goto done;
    if ((r = mx_engine_reply(&d.e, 0, MX_K_RCPT)) && !(rcpt_r = drive_reply(&d, r)))
        goto done;
    if (!(r = mx_engine_reply(&d.e, 0, MX_K_RSET)) || r->code / 100 != 2) {
        fail_protocol(s, STG_RSET, "the server refused RSET; the transaction state is unknown");
        goto done;
    }
    set_state(s, S_READY);
    res = Py_BuildValue("(OOO)", mail_r, rcpt_r ? rcpt_r : Py_None, pipelined ? Py_True : Py_False);
done:
    Py_XDECREF(mail_r);
    Py_XDECREF(rcpt_r);
    drive_free(&d);
    leave(s);
    return res;
}
