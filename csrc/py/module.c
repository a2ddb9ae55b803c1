/* module.c - mailexpress._core: PEP 489 multi-phase init, module state.
 *
 * Nothing mutable lives in static storage: the Session type is a heap type
 * and the exception classes and the Reply class are held in module state,
 * so each (sub)interpreter that imports the module gets its own. */
#include "module.h"
#include "session.h"

#include <openssl/opensslv.h>
#include <openssl/crypto.h>

#ifndef OPENSSL_THREADS
#error "mailexpress needs an OpenSSL built with thread support"
#endif

static const char *const exc_names[MX_EXC_COUNT] = {
    [MX_EXC_ERROR] = "Error",
    [MX_EXC_CONFIG] = "ConfigError",
    [MX_EXC_INPUT] = "InputError",
    [MX_EXC_CONNECT] = "ConnectError",
    [MX_EXC_CONNECTION_LOST] = "ConnectionLost",
    [MX_EXC_SERVICE_UNAVAILABLE] = "ServiceUnavailable",
    [MX_EXC_TIMEOUT] = "TimeoutError",
    [MX_EXC_TLS] = "TLSError",
    [MX_EXC_CERTIFICATE] = "CertificateError",
    [MX_EXC_REFUSED] = "RefusedError",
    [MX_EXC_AUTH] = "AuthError",
    [MX_EXC_INSECURE_AUTH] = "InsecureAuthError",
    [MX_EXC_SENDER] = "SenderRefused",
    [MX_EXC_RECIPIENTS] = "RecipientsRefused",
    [MX_EXC_DATA] = "DataRefused",
    [MX_EXC_PROTOCOL] = "ProtocolError",
    [MX_EXC_NOT_SUPPORTED] = "NotSupportedError",
    [MX_EXC_STATE] = "StateError",
    [MX_EXC_BUSY] = "ConcurrentUseError",
};

mx_state *
mx_get_state(PyTypeObject *tp)
{
    PyObject *m = PyType_GetModuleByDef(tp, &mx_module_def);

    return m ? (mx_state *)PyModule_GetState(m) : NULL;
}

/* Step 1: refuse to run against an OpenSSL other than the one we were
 * compiled for (a different major version changes ABI and behaviour). */
static int
exec_check_openssl(PyObject *m)
{
    unsigned long built = OPENSSL_VERSION_NUMBER, run = OpenSSL_version_num();

    if ((built >> 28) != (run >> 28)) {
        PyErr_Format(PyExc_ImportError,
                     "mailexpress._core was built against OpenSSL %s but runs "
                     "with %s; rebuild it (pip install --force-reinstall "
                     "--no-binary mailexpress mailexpress)",
                     OPENSSL_VERSION_TEXT, OpenSSL_version(OPENSSL_VERSION));
        return -1;
    }
    if (PyModule_AddStringConstant(m, "OPENSSL_VERSION",
                                   OpenSSL_version(OPENSSL_VERSION)) < 0)
        return -1;
    return 0;
}

/* Step 2: the exception classes and Reply, from the pure-Python modules. */
static int
exec_lookup_classes(PyObject *m)
{
    mx_state *st = PyModule_GetState(m);
    PyObject *errors = NULL, *reply = NULL, *stage_cls = NULL;
    int i, rc = -1;

    errors = PyImport_ImportModule("mailexpress.errors");
    if (!errors)
        goto done;
    for (i = 0; i < MX_EXC_COUNT; i++) {
        st->exc[i] = PyObject_GetAttrString(errors, exc_names[i]);
        if (!st->exc[i])
            goto done;
    }
    reply = PyImport_ImportModule("mailexpress.reply");
    if (!reply)
        goto done;
    st->reply_cls = PyObject_GetAttrString(reply, "Reply");
    if (!st->reply_cls)
        goto done;
    if (!(stage_cls = PyObject_GetAttrString(reply, "Stage")) ||
        !(st->stages = PyTuple_New(STG_COUNT)))
        goto done;
    for (i = 0; i < STG_COUNT; i++) {
        PyObject *member = PyObject_GetAttrString(stage_cls, stage_names[i]);
        if (!member)
            goto done;
        PyTuple_SET_ITEM(st->stages, i, member);
    }
    if (!(st->reply_attrs = PyTuple_New(4)))
        goto done;
    for (i = 0; i < 4; i++) {
        static const char *const names[4] = {"code", "enhanced", "lines", "stage"};
        PyObject *name = PyUnicode_InternFromString(names[i]);
        if (!name)
            goto done;
        PyTuple_SET_ITEM(st->reply_attrs, i, name);
    }
    rc = 0;
done:
    Py_XDECREF(errors);
    Py_XDECREF(reply);
    Py_XDECREF(stage_cls);
    return rc;
}

/* Step 3: the Session type. */
static int
exec_types(PyObject *m)
{
    return mx_session_add_type(m, PyModule_GetState(m));
}

static int
mx_traverse(PyObject *m, visitproc visit, void *arg)
{
    mx_state *st = PyModule_GetState(m);
    int i;

    Py_VISIT(st->session_type);
    Py_VISIT(st->reply_cls);
    Py_VISIT(st->stages);
    Py_VISIT(st->reply_attrs);
    for (i = 0; i < MX_EXC_COUNT; i++)
        Py_VISIT(st->exc[i]);
    return 0;
}

static int
mx_clear(PyObject *m)
{
    mx_state *st = PyModule_GetState(m);
    int i;

    Py_CLEAR(st->session_type);
    Py_CLEAR(st->reply_cls);
    Py_CLEAR(st->stages);
    Py_CLEAR(st->reply_attrs);
    for (i = 0; i < MX_EXC_COUNT; i++)
        Py_CLEAR(st->exc[i]);
    return 0;
}

static void
mx_free(void *m)
{
    mx_clear((PyObject *)m);
}

static PyModuleDef_Slot mx_slots[] = {
    {Py_mod_exec, exec_check_openssl},
    {Py_mod_exec, exec_lookup_classes},
    {Py_mod_exec, exec_types},
    {0, NULL},
};

static PyMethodDef mx_methods[] = {
    {"tls_context", (PyCFunction)(void (*)(void))mx_tls_context_new, METH_VARARGS | METH_KEYWORDS,
     "tls_context(*, verify=True, ca_file=None, client_cert=None, client_key=None,\n"
     "            min_tls_version='1.2') -> capsule\n\n"
     "One client TLS context (trust store loaded once) to share between\n"
     "Sessions through their tls_context= argument."},
    {"pack_records", mx_pack_records, METH_VARARGS,
     "pack_records(pending, columns, blob, kind, obj, tables, index, prefix, last) -> last\n\n"
     "results.Outcomes.compact: each pending {index: record} into the columns\n"
     "(sender, reply, elapsed, roff, rlen, mid, dom arrays), or kept whole in\n"
     "obj; returns the last (sender, ix, reply, ix, domain, ix) seen."},
    {"render_items", (PyCFunction)(void (*)(void))mx_render_items, METH_FASTCALL,
     "render_items(consts, items, date, counter, id_prefix, eight_bit, prepared)\n"
     "-> list[Prepared | None]\n\n"
     "Each send_many mapping's message rendered in C (csrc/proto/render.c), or\n"
     "None when it needs the Python builder (compose.prepare_items)."},
    {"render_rows", (PyCFunction)(void (*)(void))mx_render_rows, METH_FASTCALL,
     "render_rows(spec, consts, rows, date, counter, id_prefix, eight_bit, prepared)\n"
     "-> list[Prepared | None]\n\n"
     "Each Template row's message rendered in C, or None (template.py builds it)."},
    {NULL, NULL, 0, NULL},
};

PyModuleDef mx_module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mailexpress._core",
    .m_doc = "The C core of mailexpress: SMTP submission over OpenSSL.",
    .m_size = sizeof(mx_state),
    .m_methods = mx_methods,
    .m_slots = mx_slots,
    .m_traverse = mx_traverse,
    .m_clear = mx_clear,
    .m_free = mx_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&mx_module_def);
}
