/* module.h - what module.c and session.c share: the module state. */
#ifndef MX_MODULE_H
#define MX_MODULE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Exception classes, defined in mailexpress/errors.py and looked up into
 * module state at import.  The order matches exc_names in module.c. */
typedef enum {
    MX_EXC_ERROR,
    MX_EXC_CONFIG,
    MX_EXC_INPUT,
    MX_EXC_CONNECT,
    MX_EXC_CONNECTION_LOST,
    MX_EXC_SERVICE_UNAVAILABLE,
    MX_EXC_TIMEOUT,
    MX_EXC_TLS,
    MX_EXC_CERTIFICATE,
    MX_EXC_REFUSED,
    MX_EXC_AUTH,
    MX_EXC_INSECURE_AUTH,
    MX_EXC_SENDER,
    MX_EXC_RECIPIENTS,
    MX_EXC_DATA,
    MX_EXC_PROTOCOL,
    MX_EXC_NOT_SUPPORTED,
    MX_EXC_STATE,
    MX_EXC_BUSY,
    MX_EXC_COUNT
} mx_exc;

typedef struct {
    PyTypeObject *session_type;
    PyObject *reply_cls;             /* mailexpress.reply.Reply */
    PyObject *stages;                /* reply.Stage's members, in session.h's stage order */
    PyObject *reply_attrs;           /* Reply's fields: code, enhanced, lines, stage */
    PyObject *exc[MX_EXC_COUNT];
} mx_state;

extern PyModuleDef mx_module_def;

/* The state of the module that defined type tp (or a base of it). */
mx_state *mx_get_state(PyTypeObject *tp);

/* session.c */
int mx_session_add_type(PyObject *module, mx_state *st);
/* _core.tls_context(): a capsule named MX_TLS_CTX_CAPSULE around an
 * mx_tls_ctx (io/tls.h: an SSL_CTX and its session cache) */
#define MX_TLS_CTX_CAPSULE "mailexpress._core.tls_context"
PyObject *mx_tls_context_new(PyObject *module, PyObject *args, PyObject *kw);
/* outcomes.c: _core.pack_records (results.Outcomes.compact) */
PyObject *mx_pack_records(PyObject *module, PyObject *args);

/* render.c: messages rendered in C (proto/render.c) */
PyObject *mx_render_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
PyObject *mx_render_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

#endif
