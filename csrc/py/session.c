/* session.c - the Session type: construction, the getters, the tables of
 * methods and properties, and the type's registration.  See session.h for
 * what the other files of csrc/py/ do. */
#include "session.h"

#include <string.h>
#include <sys/socket.h>

#include "tls.h"

const char *const stage_names[STG_COUNT] = {
    "CONNECT", "TLS", "EHLO", "STARTTLS", "AUTH", "MAIL",
    "RCPT", "DATA", "END_OF_DATA", "RSET", "NOOP", "QUIT",
};

const char *const timeout_names[TO_COUNT] = {
    "connect", "banner", "tls", "ehlo", "starttls", "auth", "mail",
    "rcpt", "data", "data_block", "end_of_data", "command", "quit",
};

const int64_t timeout_defaults_ms[TO_COUNT] = {
    30000,   /* connect: not in the RFC; a dead host should fail fast */
    300000,  /* banner: §4.5.3.2.1 initial 220 message, 5 minutes */
    60000,   /* tls: the handshake */
    300000,  /* ehlo: as a command, 5 minutes */
    120000,  /* starttls */
    120000,  /* auth: allows for tarpits (Exchange AuthTarpitInterval 5 s) */
    300000,  /* mail: §4.5.3.2.2, 5 minutes */
    300000,  /* rcpt: §4.5.3.2.3, 5 minutes */
    120000,  /* data: §4.5.3.2.4 DATA initiation, 2 minutes */
    180000,  /* data_block: §4.5.3.2.5, 3 minutes per write */
    600000,  /* end_of_data: §4.5.3.2.6 DATA termination, 10 minutes */
    300000,  /* command: RSET, NOOP, ... */
    5000,    /* quit: nothing is at stake any more; an unanswered QUIT after
              * a completed send must not hold the caller (issue 14) */
};

const char *const state_names[S_COUNT] = {
    "NEW", "CONNECTED", "READY", "MAIL", "RCPT", "CLOSED", "ERROR",
};

/* ---- construction --------------------------------------------------------- */

char *
dup_opt(PyObject *o, const char *field, int *bad)
{
    Py_ssize_t n;
    char *r;

    if (!o || o == Py_None)
        return NULL;
    if (!PyUnicode_Check(o) && !PyBytes_Check(o) && !PyObject_HasAttrString(o, "__fspath__")) {
        PyErr_Format(PyExc_TypeError, "%s must be a str or path", field);
        *bad = 1;
        return NULL;
    }
    if (PyUnicode_Check(o)) {
        const char *p = PyUnicode_AsUTF8AndSize(o, &n);
        if (!p) {
            *bad = 1;
            return NULL;
        }
        if ((size_t)n != strlen(p)) {
            PyErr_Format(PyExc_ValueError, "%s contains a NUL character", field);
            *bad = 1;
            return NULL;
        }
        r = PyMem_RawMalloc((size_t)n + 1);
        if (!r) {
            PyErr_NoMemory();
            *bad = 1;
            return NULL;
        }
        memcpy(r, p, (size_t)n + 1);
        return r;
    } else {
        PyObject *b = NULL;
        if (!PyUnicode_FSConverter(o, &b)) {
            *bad = 1;
            return NULL;
        }
        n = PyBytes_GET_SIZE(b);
        r = PyMem_RawMalloc((size_t)n + 1);
        if (!r) {
            Py_DECREF(b);
            PyErr_NoMemory();
            *bad = 1;
            return NULL;
        }
        memcpy(r, PyBytes_AS_STRING(b), (size_t)n + 1);
        Py_DECREF(b);
        return r;
    }
}

static int
parse_timeouts(Session *s, PyObject *timeouts)
{
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    int i;

    for (i = 0; i < TO_COUNT; i++)
        s->timeout_ms[i] = timeout_defaults_ms[i];
    if (!timeouts || timeouts == Py_None)
        return 0;
    if (!PyDict_Check(timeouts)) {
        PyErr_SetString(PyExc_TypeError, "timeouts must be a dict");
        return -1;
    }
    while (PyDict_Next(timeouts, &pos, &key, &value)) {
        const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        double secs;
        for (i = 0; name && i < TO_COUNT; i++)
            if (strcmp(name, timeout_names[i]) == 0)
                break;
        if (!name || i == TO_COUNT) {
            PyErr_Format(PyExc_ValueError,
                         "timeouts: unknown stage %R; known: connect, banner, "
                         "tls, ehlo, starttls, auth, mail, rcpt, data, "
                         "data_block, end_of_data, command, quit", key);
            return -1;
        }
        if (value == Py_None) {
            s->timeout_ms[i] = -1;
            continue;
        }
        secs = PyFloat_AsDouble(value);
        if (secs == -1.0 && PyErr_Occurred())
            return -1;
        if (!(secs > 0) || secs > 86400.0 * 7) {
            PyErr_Format(PyExc_ValueError,
                         "timeouts[%R] must be a number of seconds between 0 "
                         "and 604800, or None", key);
            return -1;
        }
        s->timeout_ms[i] = (int64_t)(secs * 1000.0 + 0.5);
        if (s->timeout_ms[i] == 0)
            s->timeout_ms[i] = 1;
    }
    return 0;
}

/* The mechanisms auth_mechanisms may name (and allows by default). */
#define MX_AUTH_ALL (MX_AUTH_PLAIN | MX_AUTH_LOGIN | MX_AUTH_XOAUTH2 | \
                     MX_AUTH_OAUTHBEARER | MX_AUTH_NTLM | MX_AUTH_GSSAPI)

static int
parse_mechanisms(PyObject *seq, unsigned *mask)
{
    PyObject *fast;
    Py_ssize_t i, n;

    *mask = MX_AUTH_ALL;
    if (!seq || seq == Py_None)
        return 0;
    if (PyUnicode_Check(seq)) {
        PyErr_SetString(PyExc_TypeError, "auth_mechanisms must be a sequence of names");
        return -1;
    }
    fast = PySequence_Fast(seq, "auth_mechanisms must be a sequence of names");
    if (!fast)
        return -1;
    *mask = 0;
    n = PySequence_Fast_GET_SIZE(fast);
    for (i = 0; i < n; i++) {
        const char *name;
        Py_ssize_t len;
        unsigned bit;
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        name = PyUnicode_Check(item) ? PyUnicode_AsUTF8AndSize(item, &len) : NULL;
        bit = name ? mx_auth_mech_bit(name, (size_t)len) : 0;
        if (!(bit & MX_AUTH_ALL)) {
            PyErr_Format(PyExc_ValueError,
                         "auth_mechanisms: %R is not supported; allowed: 'PLAIN', "
                         "'LOGIN', 'XOAUTH2', 'OAUTHBEARER', 'NTLM', 'GSSAPI'", item);
            Py_DECREF(fast);
            return -1;
        }
        *mask |= bit;
    }
    Py_DECREF(fast);
    return 0;
}

static int
Session_init(Session *s, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {
        "host", "port", "security", "server_name", "verify", "ca_file",
        "client_cert", "client_key", "min_tls_version", "ehlo_name",
        "timeouts", "allow_insecure_auth", "helo_fallback",
        "auth_mechanisms", "transcript", "tls_context", NULL};
    PyObject *host = NULL, *server_name = Py_None, *ca = Py_None,
             *cert = Py_None, *key = Py_None, *timeouts = Py_None,
             *mechs = Py_None, *ehlo = NULL, *tls_ctx = Py_None;
    const char *security = "starttls", *min_tls = "1.2";
    int port = 587, verify = 1, insecure = 0, helo = 0, transcript = 1, bad = 0;

    if (s->state != S_NEW || s->host) {
        PyErr_SetString(PyExc_RuntimeError, "Session.__init__ called twice");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kw, "U|i$sOpOOOsUOppOpO", kwlist,
                                     &host, &port, &security, &server_name,
                                     &verify, &ca, &cert, &key, &min_tls, &ehlo,
                                     &timeouts, &insecure, &helo, &mechs,
                                     &transcript, &tls_ctx))
        return -1;
    if (tls_ctx != Py_None) {
        mx_tls_ctx *shared = PyCapsule_GetPointer(tls_ctx, MX_TLS_CTX_CAPSULE);
        if (!shared)
            return -1;
        mx_tls_ctx_ref(shared);
        s->ctx = shared;
    }
    if (port < 1 || port > 65535) {
        PyErr_Format(PyExc_ValueError, "port %d is not between 1 and 65535", port);
        return -1;
    }
    if (strcmp(security, "starttls") == 0)
        s->security = SEC_STARTTLS;
    else if (strcmp(security, "ssl") == 0)
        s->security = SEC_SSL;
    else if (strcmp(security, "none") == 0)
        s->security = SEC_NONE;
    else {
        PyErr_Format(PyExc_ValueError,
                     "security '%s' is not one of 'starttls', 'ssl', 'none'",
                     security);
        return -1;
    }
    if (strcmp(min_tls, "1.2") == 0)
        s->min_tls = TLS1_2_VERSION;
    else if (strcmp(min_tls, "1.3") == 0)
        s->min_tls = TLS1_3_VERSION;
    else {
        PyErr_SetString(PyExc_ValueError, "min_tls_version must be '1.2' or '1.3'");
        return -1;
    }
    snprintf(s->port, sizeof(s->port), "%d", port);
    s->verify = verify;
    s->allow_insecure_auth = insecure;
    s->helo_fallback = helo;
    s->c.record = transcript;
    if (parse_timeouts(s, timeouts) < 0 || parse_mechanisms(mechs, &s->auth_allowed) < 0)
        return -1;
    s->host = dup_opt(host, "host", &bad);
    s->server_name = dup_opt(server_name == Py_None ? host : server_name,
                             "server_name", &bad);
    s->ehlo_name = ehlo ? dup_opt(ehlo, "ehlo_name", &bad) : NULL;
    s->ca_file = dup_opt(ca, "ca_file", &bad);
    s->cert_file = dup_opt(cert, "client_cert", &bad);
    s->key_file = dup_opt(key, "client_key", &bad);
    if (bad)
        return -1;
    if (!s->host || !s->host[0]) {
        PyErr_SetString(PyExc_ValueError, "host must not be empty");
        return -1;
    }
    if (!s->ehlo_name) {
        s->ehlo_name = PyMem_RawMalloc(10);
        if (!s->ehlo_name) {
            PyErr_NoMemory();
            return -1;
        }
        memcpy(s->ehlo_name, "localhost", 10);
    }
    if (mx_cmd_check_domain(s->ehlo_name, strlen(s->ehlo_name)) != MX_CMD_OK) {
        PyErr_Format(PyExc_ValueError, "ehlo_name %R %s", ehlo,
                     mx_cmd_strerror(mx_cmd_check_domain(s->ehlo_name,
                                                         strlen(s->ehlo_name))));
        return -1;
    }
    return 0;
}

static PyObject *
Session_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    Session *s = (Session *)tp->tp_alloc(tp, 0);

    (void)args;
    (void)kw;
    if (!s)
        return NULL;
    s->state = S_NEW;
    if (mx_conn_init(&s->c) < 0 || !(s->lock = PyThread_allocate_lock())) {
        Py_DECREF(s);
        return PyErr_NoMemory();
    }
    return (PyObject *)s;
}

/* The Python objects a Session holds, for the cycle collector: a subclass
 * instance can reach itself through them (a Reply it was given, say). */
static int
Session_traverse(Session *s, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(s));
    Py_VISIT(s->caps_dict);
    Py_VISIT(s->banner);
    Py_VISIT(s->ehlo_reply);
    Py_VISIT(s->tls_version_s);
    Py_VISIT(s->tls_cipher_s);
    Py_VISIT(s->peer_der);
    Py_VISIT(s->peer_info);
    return 0;
}

static int
Session_clear(Session *s)
{
    Py_CLEAR(s->caps_dict);
    Py_CLEAR(s->banner);
    Py_CLEAR(s->ehlo_reply);
    Py_CLEAR(s->tls_version_s);
    Py_CLEAR(s->tls_cipher_s);
    Py_CLEAR(s->peer_der);
    Py_CLEAR(s->peer_info);
    return 0;
}

static void
Session_dealloc(Session *s)
{
    PyTypeObject *tp = Py_TYPE(s);

    PyObject_GC_UnTrack(s);
    mx_conn_free(&s->c);
    mx_tls_ctx_unref(s->ctx);
    if (s->lock)
        PyThread_free_lock(s->lock);
    PyMem_RawFree(s->host);
    PyMem_RawFree(s->server_name);
    PyMem_RawFree(s->ehlo_name);
    PyMem_RawFree(s->ca_file);
    PyMem_RawFree(s->cert_file);
    PyMem_RawFree(s->key_file);
    (void)Session_clear(s);
    tp->tp_free((PyObject *)s);
    Py_DECREF(tp);
}

/* ---- properties ----------------------------------------------------------- */

static PyObject *
Session_get_state(Session *s, void *c)
{
    (void)c;
    return PyUnicode_FromString(state_names[s->state]);
}

static PyObject *
Session_get_capabilities(Session *s, void *c)
{
    (void)c;
    if (!s->caps_dict)
        return PyDict_New();
    return PyDict_Copy(s->caps_dict);
}

static PyObject *
Session_get_banner(Session *s, void *c)
{
    (void)c;
    return Py_NewRef(s->banner ? s->banner : Py_None);
}

static PyObject *
Session_get_ehlo_reply(Session *s, void *c)
{
    (void)c;
    return Py_NewRef(s->ehlo_reply ? s->ehlo_reply : Py_None);
}

static PyObject *
Session_get_tls_active(Session *s, void *c)
{
    (void)c;
    return PyBool_FromLong(s->c.ssl != NULL);
}

static PyObject *
Session_get_authenticated(Session *s, void *c)
{
    (void)c;
    return PyBool_FromLong(s->authenticated);
}

static PyObject *
Session_get_esmtp(Session *s, void *c)
{
    (void)c;
    return PyBool_FromLong(s->esmtp);
}

static PyObject *
Session_get_tls_version(Session *s, void *c)
{
    (void)c;
    return Py_NewRef(s->c.ssl && s->tls_version_s ? s->tls_version_s : Py_None);
}

static PyObject *
Session_get_tls_cipher(Session *s, void *c)
{
    (void)c;
    return Py_NewRef(s->c.ssl && s->tls_cipher_s ? s->tls_cipher_s : Py_None);
}

static PyObject *
Session_get_tls_resumed(Session *s, void *c)
{
    (void)c;
    return PyBool_FromLong(s->c.ssl != NULL && s->tls_resumed);
}

static PyObject *
Session_get_peer_certificate(Session *s, void *c)
{
    (void)c;
    return Py_NewRef(s->c.ssl && s->peer_der ? s->peer_der : Py_None);
}

static PyObject *
Session_get_peer_cert_info(Session *s, void *c)
{
    (void)c;
    if (!s->c.ssl || !s->peer_info || s->peer_info == Py_None)
        Py_RETURN_NONE;
    return PyDict_Copy(s->peer_info);
}

/* The getters below copy what a running method writes with the GIL
 * released, under the lock, with no call into Python while they hold it: an
 * allocation of a Python object may run the GC and let another thread run,
 * which would then find the Session "in use" because a getter holds it. */

static PyObject *
Session_get_transcript(Session *s, void *c)
{
    mx_transcript snap = {NULL, 0, 0, 0};
    PyObject *list = NULL, *t = NULL;
    size_t pos = 0, len;
    uint32_t ms;
    char dir;
    const char *text;
    int nomem = 0;

    (void)c;
    /* written with the GIL released by whatever method runs: the lock */
    if (enter(s, 0) < 0)
        return NULL;
    snap.dropped = s->c.tr.dropped;
    if (s->c.tr.len) {
        snap.buf = malloc(s->c.tr.len);
        if (snap.buf) {
            memcpy(snap.buf, s->c.tr.buf, s->c.tr.len);
            snap.len = snap.cap = s->c.tr.len;
        } else {
            nomem = 1;
        }
    }
    leave(s);
    if (nomem) {
        PyErr_NoMemory();
        goto fail;
    }
    list = PyList_New(0);
    if (!list)
        goto fail;
    while (mx_transcript_next(&snap, &pos, &ms, &dir, &text, &len)) {
        t = Py_BuildValue("(kC" "s#)", (unsigned long)ms, (int)dir, text, (Py_ssize_t)len);
        if (!t) {
            /* undecodable server bytes: replace rather than fail */
            PyErr_Clear();
            PyObject *u = PyUnicode_DecodeUTF8(text, (Py_ssize_t)len, "replace");
            t = u ? Py_BuildValue("(kCN)", (unsigned long)ms, (int)dir, u) : NULL;
        }
        if (!t || PyList_Append(list, t) < 0)
            goto fail;
        Py_CLEAR(t);
    }
    if (snap.dropped) {
        t = Py_BuildValue("(kCN)", (unsigned long)mx_conn_elapsed(&s->c), (int)'*',
                          PyUnicode_FromFormat("%zu transcript entries not kept (limit 1 MiB)",
                                               snap.dropped));
        if (!t || PyList_Append(list, t) < 0)
            goto fail;
        Py_CLEAR(t);
    }
    free(snap.buf);
    return list;
fail:
    Py_XDECREF(t);
    Py_XDECREF(list);
    free(snap.buf);
    return NULL;
}

/* connect() fills the attempts with the GIL released: the lock. */
static PyObject *
Session_get_connect_attempts(Session *s, void *c)
{
    mx_attempts snap;
    PyObject *list;
    int i;

    (void)c;
    if (enter(s, 0) < 0)
        return NULL;
    snap = s->attempts;
    leave(s);
    list = PyList_New(0);
    for (i = 0; list && i < snap.n; i++) {
        mx_attempt *a = &snap.a[i];
        PyObject *d = Py_BuildValue("{s:s,s:s,s:N,s:L}", "address", a->addr,
                                    "family", a->family == AF_INET6 ? "IPv6" : "IPv4",
                                    "error", a->sys_errno ? PyUnicode_FromString(strerror(a->sys_errno))
                                                          : Py_NewRef(Py_None),
                                    "ms", (long long)a->ms);
        if (!d || PyList_Append(list, d) < 0) {
            Py_XDECREF(d);
            Py_CLEAR(list);
        } else {
            Py_DECREF(d);
        }
    }
    return list;
}

static PyObject *
Session_get_resolve_ms(Session *s, void *c)
{
    long long ms;

    (void)c;
    if (enter(s, 0) < 0)
        return NULL;
    ms = (long long)s->attempts.resolve_ms;
    leave(s);
    return PyLong_FromLongLong(ms);
}

static PyObject *
Session_get_peer_address(Session *s, void *c)
{
    (void)c;
    if (!s->peer_addr[0])
        Py_RETURN_NONE;
    return Py_BuildValue("(si)", s->peer_addr, s->peer_port);
}

static PyObject *
Session_get_max_size(Session *s, void *c)
{
    (void)c;
    if (!(s->caps.ext & MX_EXT_SIZE) || !s->caps.size)
        Py_RETURN_NONE;
    return PyLong_FromUnsignedLongLong(s->caps.size);
}

static PyMethodDef Session_methods[] = {
    {"connect", (PyCFunction)Session_connect, METH_NOARGS, connect_doc},
    {"ehlo", (PyCFunction)(void (*)(void))Session_ehlo, METH_VARARGS | METH_KEYWORDS, ehlo_doc},
    {"starttls", (PyCFunction)Session_starttls, METH_NOARGS, starttls_doc},
    {"login", (PyCFunction)(void (*)(void))Session_login, METH_VARARGS | METH_KEYWORDS, login_doc},
    {"auth_oauth", (PyCFunction)(void (*)(void))Session_auth_oauth, METH_VARARGS | METH_KEYWORDS, auth_oauth_doc},
    {"auth", (PyCFunction)(void (*)(void))Session_auth, METH_VARARGS | METH_KEYWORDS, auth_doc},
    {"mail", (PyCFunction)(void (*)(void))Session_mail, METH_VARARGS | METH_KEYWORDS, mail_doc},
    {"rcpt", (PyCFunction)(void (*)(void))Session_rcpt, METH_VARARGS | METH_KEYWORDS, rcpt_doc},
    {"data", (PyCFunction)Session_data, METH_O, data_doc},
    {"rset", (PyCFunction)Session_rset, METH_NOARGS, "rset() -> Reply"},
    {"noop", (PyCFunction)Session_noop, METH_NOARGS, "noop() -> Reply"},
    {"quit", (PyCFunction)Session_quit, METH_NOARGS, quit_doc},
    {"close", (PyCFunction)Session_close, METH_NOARGS,
     "close() -> None\n\nCloses the connection without QUIT."},
    {"send_raw", (PyCFunction)(void (*)(void))Session_sendmail, METH_VARARGS | METH_KEYWORDS, sendmail_doc},
    {"send_many_raw", (PyCFunction)(void (*)(void))Session_send_many, METH_VARARGS | METH_KEYWORDS, send_many_doc},
    {"_send_records", (PyCFunction)(void (*)(void))Session_send_records, METH_VARARGS | METH_KEYWORDS, send_records_doc},
    {"set_deadline", (PyCFunction)Session_set_deadline, METH_O, set_deadline_doc},
    {"try_sender", (PyCFunction)(void (*)(void))Session_try_sender, METH_VARARGS | METH_KEYWORDS, try_sender_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Session_getset[] = {
    {"state", (getter)Session_get_state, NULL, "protocol state name", NULL},
    {"capabilities", (getter)Session_get_capabilities, NULL,
     "EHLO keywords (upper case) mapped to their parameters", NULL},
    {"banner", (getter)Session_get_banner, NULL, "the greeting Reply", NULL},
    {"ehlo_reply", (getter)Session_get_ehlo_reply, NULL, "the last EHLO Reply", NULL},
    {"tls_active", (getter)Session_get_tls_active, NULL, "TLS is up", NULL},
    {"authenticated", (getter)Session_get_authenticated, NULL, "AUTH succeeded", NULL},
    {"esmtp", (getter)Session_get_esmtp, NULL, "EHLO (not HELO) was accepted", NULL},
    {"tls_version", (getter)Session_get_tls_version, NULL, "e.g. 'TLSv1.3'", NULL},
    {"tls_cipher", (getter)Session_get_tls_cipher, NULL, "negotiated cipher", NULL},
    {"tls_resumed", (getter)Session_get_tls_resumed, NULL,
     "the TLS handshake resumed an earlier session (a ticket) instead of a full one", NULL},
    {"peer_certificate", (getter)Session_get_peer_certificate, NULL, "DER bytes", NULL},
    {"peer_cert_info", (getter)Session_get_peer_cert_info, NULL,
     "subject, issuer, validity, SANs, verify result", NULL},
    {"transcript", (getter)Session_get_transcript, NULL,
     "list of (ms, direction, text); credentials redacted at the source", NULL},
    {"connect_attempts", (getter)Session_get_connect_attempts, NULL,
     "the addresses tried by connect()", NULL},
    {"peer_address", (getter)Session_get_peer_address, NULL, "(address, port)", NULL},
    {"resolve_ms", (getter)Session_get_resolve_ms, NULL, "time the name lookup took", NULL},
    {"max_size", (getter)Session_get_max_size, NULL, "SIZE limit or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot Session_slots[] = {
    {Py_tp_doc, "Session(host, port=587, *, security='starttls', ...)\n\n"
                "One SMTP connection.  Low-level: see mailexpress.connect()."},
    {Py_tp_new, Session_new},
    {Py_tp_init, Session_init},
    {Py_tp_dealloc, Session_dealloc},
    {Py_tp_traverse, Session_traverse},
    {Py_tp_clear, Session_clear},
    {Py_tp_methods, Session_methods},
    {Py_tp_getset, Session_getset},
    {0, NULL},
};

static PyType_Spec Session_spec = {
    .name = "mailexpress._core.Session",
    .basicsize = sizeof(Session),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .slots = Session_slots,
};

int
mx_session_add_type(PyObject *module, mx_state *st)
{
    PyObject *names;
    int i;

    st->session_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &Session_spec, NULL);
    if (!st->session_type)
        return -1;
    if (PyModule_AddType(module, st->session_type) < 0)
        return -1;
    names = PyTuple_New(TO_COUNT);
    if (!names)
        return -1;
    for (i = 0; i < TO_COUNT; i++) {
        PyObject *n = PyUnicode_FromString(timeout_names[i]);
        if (!n) {
            Py_DECREF(names);
            return -1;
        }
        PyTuple_SET_ITEM(names, i, n);
    }
    if (PyModule_AddObject(module, "TIMEOUT_STAGES", names) < 0) {
        Py_DECREF(names);
        return -1;
    }
    {
        PyObject *d = PyDict_New();
        for (i = 0; d && i < TO_COUNT; i++) {
            PyObject *v = PyFloat_FromDouble((double)timeout_defaults_ms[i] / 1000.0);
            if (!v || PyDict_SetItemString(d, timeout_names[i], v) < 0) {
                Py_XDECREF(v);
                Py_CLEAR(d);
                break;
            }
            Py_DECREF(v);
        }
        if (!d || PyModule_AddObject(module, "DEFAULT_TIMEOUTS", d) < 0) {
            Py_XDECREF(d);
            return -1;
        }
    }
    return 0;
}
