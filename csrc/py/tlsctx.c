/* tlsctx.c - the TLS side of the binding: the shared client context
 * (_core.tls_context()), the Session's own context on first use, the
 * handshake, and the TLS facts the getters show. */
#include "session.h"

#include <errno.h>
#include <string.h>

#include "tls.h"


/* Creates the TLS context on first use.  0, or -1 raised (ConfigError). */
int
ensure_ctx(Session *s, stage stg)
{
    mx_tls_opts o;

    if (s->ctx)
        return 0;
    o.verify = s->verify;
    o.ca_file = s->ca_file;
    o.cert_file = s->cert_file;
    o.key_file = s->key_file;
    o.min_version = s->min_tls;
    /* a Session connects once: a cache of its own would never be read
     * (connect() and the bulk path share one through tls_context=) */
    o.session_cache = 0;
    s->ctx = mx_tls_ctx_new(&o, &s->c.err);
    if (!s->ctx) {
        raise_exc(s, MX_EXC_CONFIG, stg, NULL, NULL, "%s", s->c.err.msg);
        return -1;
    }
    return 0;
}

/* _core.tls_context(verify=True, ca_file=None, client_cert=None,
 * client_key=None, min_tls_version="1.2", session_cache=True) -> capsule:
 * one client context (trust store loaded once) and its session cache for
 * many Sessions, passed as tls_context=.  Loading the system store costs
 * tens of milliseconds; sharing it is what makes a second connection cheap,
 * and the cache makes its handshake a resumption (a TLS 1.3 ticket or a TLS
 * 1.2 session) for the same host, port, server name and verify setting.
 * session_cache=False: every handshake is a full one (a baseline). */
static void
tls_capsule_free(PyObject *cap)
{
    mx_tls_ctx *ctx = PyCapsule_GetPointer(cap, MX_TLS_CTX_CAPSULE);

    mx_tls_ctx_unref(ctx);      /* Sessions made with it hold their own */
}

PyObject *
mx_tls_context_new(PyObject *module, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"verify", "ca_file", "client_cert", "client_key",
                             "min_tls_version", "session_cache", NULL};
    PyObject *ca = Py_None, *cert = Py_None, *key = Py_None, *cap;
    const char *min_tls = "1.2";
    char *ca_s = NULL, *cert_s = NULL, *key_s = NULL;
    int verify = 1, cache = 1, bad = 0;
    mx_tls_opts o;
    mx_error err;
    mx_tls_ctx *ctx;

    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|$pOOOsp", kwlist, &verify, &ca, &cert,
                                     &key, &min_tls, &cache))
        return NULL;
    if (strcmp(min_tls, "1.2") != 0 && strcmp(min_tls, "1.3") != 0) {
        PyErr_SetString(PyExc_ValueError, "min_tls_version must be '1.2' or '1.3'");
        return NULL;
    }
    ca_s = dup_opt(ca, "ca_file", &bad);
    cert_s = dup_opt(cert, "client_cert", &bad);
    key_s = dup_opt(key, "client_key", &bad);
    cap = NULL;
    if (bad)
        goto done;
    memset(&err, 0, sizeof(err));
    o.verify = verify;
    o.ca_file = ca_s;
    o.cert_file = cert_s;
    o.key_file = key_s;
    o.min_version = strcmp(min_tls, "1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
    o.session_cache = cache;
    Py_BEGIN_ALLOW_THREADS
    ctx = mx_tls_ctx_new(&o, &err);
    Py_END_ALLOW_THREADS
    if (!ctx) {
        mx_state *st = PyModule_GetState(module);
        if (st)
            PyErr_SetString(st->exc[MX_EXC_CONFIG], err.msg);
        goto done;
    }
    if (!(cap = PyCapsule_New(ctx, MX_TLS_CTX_CAPSULE, tls_capsule_free)))
        mx_tls_ctx_unref(ctx);
done:
    PyMem_RawFree(ca_s);
    PyMem_RawFree(cert_s);
    PyMem_RawFree(key_s);
    return cap;
}

/* The peer certificate's facts as a dict, or None (new reference); NULL
 * raised.  GIL held, on an SSL no other thread uses. */
static PyObject *
cert_info_dict(SSL *ssl)
{
    mx_cert_info *info;
    PyObject *res = NULL, *san = NULL;
    int i;

    info = PyMem_Malloc(sizeof(*info));
    if (!info)
        return PyErr_NoMemory();
    if (mx_tls_cert_info(ssl, info) < 0) {
        PyMem_Free(info);
        Py_RETURN_NONE;
    }
    san = PyList_New(0);
    for (i = 0; san && i < info->nsan; i++) {
        PyObject *v = PyUnicode_DecodeUTF8(info->san[i], (Py_ssize_t)strlen(info->san[i]), "replace");
        if (!v || PyList_Append(san, v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(san);
            break;
        }
        Py_DECREF(v);
    }
    if (san)
        res = Py_BuildValue("{s:s,s:s,s:L,s:L,s:O,s:l,s:s}",
                            "subject", info->subject, "issuer", info->issuer,
                            "not_before", (long long)info->not_before,
                            "not_after", (long long)info->not_after,
                            "san", san, "verify_code", info->verify_code,
                            "verify_message", info->verify_text);
    Py_XDECREF(san);
    PyMem_Free(info);
    return res;
}

/* Takes the TLS facts the getters show, right after the handshake (GIL and
 * lock held, before any other use of s->c.ssl).  0, or -1 raised. */
static int
take_tls_facts(Session *s)
{
    unsigned char *der = NULL;
    int len;

    Py_XSETREF(s->tls_version_s, PyUnicode_FromString(SSL_get_version(s->c.ssl)));
    Py_XSETREF(s->tls_cipher_s, PyUnicode_FromString(SSL_get_cipher_name(s->c.ssl)));
    if ((len = mx_tls_cert_der(s->c.ssl, &der)) < 0) {
        Py_XSETREF(s->peer_der, Py_NewRef(Py_None));
    } else {
        Py_XSETREF(s->peer_der, PyBytes_FromStringAndSize((const char *)der, len));
        OPENSSL_free(der);
    }
    Py_XSETREF(s->peer_info, cert_info_dict(s->c.ssl));
    s->tls_resumed = SSL_session_reused(s->c.ssl);
    if (!s->tls_version_s || !s->tls_cipher_s || !s->peer_der || !s->peer_info)
        return -1;
    return 0;
}

/* Handshake on the open socket, GIL released.  implicit: it opens the
 * connection (security = "ssl"; see mx_tls_handshake).  0, or -1
 * (s->c.err). */
int
handshake(Session *s, int implicit)
{
    int64_t dl = deadline_for(s, TO_TLS);
    mx_tls_peer peer = {s->host, s->port, s->server_name, s->verify};
    SSL *ssl;

    Py_BEGIN_ALLOW_THREADS
    ssl = mx_tls_handshake(s->ctx, s->c.fd, &peer, implicit, dl, &s->c.err);
    Py_END_ALLOW_THREADS
    s->tls_resumed = 0;
    if (!ssl)
        return -1;
    s->c.ssl = ssl;
    if (take_tls_facts(s) < 0) {
        PyErr_Clear();
        mx_error_set(&s->c.err, MX_E_NOMEM, ENOMEM, "out of memory after the TLS handshake");
        return -1;
    }
    mx_conn_recordf(&s->c, MX_TR_INFO, "TLS established: %s, %s%s", SSL_get_version(ssl),
            SSL_get_cipher_name(ssl), s->tls_resumed ? ", resumed" : "");
    return 0;
}

