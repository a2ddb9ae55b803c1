/* render_msg.h - what csrc/py/render.c (assembling a message, the module
 * functions) and csrc/py/render_input.c (reading a mapping or a Template row
 * into a message) share.  Private to the binding of proto/render.c. */
#ifndef MX_RENDER_MSG_H
#define MX_RENDER_MSG_H

#include "module.h"

#include "render.h"

/* placeholders in one templated field, at most (more: built in Python) */
#define MAX_VALUES 64
/* a templated header's text, at most (more: built in Python) */
#define FIELD_MAX 4096
/* the output buffer grows up to this (bigger: built in Python) */
#define OUT_MAX ((size_t)64 << 20)

/* What is the same for every message of a call. */
typedef struct {
    const char *head, *mid, *post, *date, *id_prefix, *id_suffix;
    Py_ssize_t headlen, midlen, postlen, datelen, id_prefixlen, id_suffixlen;
    PyObject *mail_from;           /* str, borrowed */
    PyObject *counter;             /* iterator of ints, borrowed */
    PyTypeObject *prepared;        /* a tuple subclass of 4 fields */
    int eight_bit;
    unsigned char *buf;            /* scratch output, PyMem_Raw */
    size_t cap;
} ctx;

/* Values kept alive while their bytes are in use. */
typedef struct {
    PyObject *held[3 * MAX_VALUES];
    int n;
} holds;

/* One text part of a message. */
typedef struct {
    const char *fixed;             /* the whole part, made once; or NULL: the pieces */
    Py_ssize_t fixed_len;
    size_t seg0, nseg;             /* its pieces in message.segs */
    const char *subtype;
    Py_ssize_t sublen;
} mpart;

/* How one message goes: the To addresses, the subject, the MIME part. */
typedef struct {
    PyObject *to[MAX_VALUES];      /* str, borrowed (items) */
    int nto;
    PyObject *cc[MAX_VALUES];      /* a Cc header and recipients (items) */
    int ncc;
    PyObject *bcc[MAX_VALUES];     /* recipients only (items) */
    int nbcc;
    const unsigned char *to_text;  /* a rendered template "to" */
    size_t to_len;
    const unsigned char *subject;  /* NULL: subject_line */
    size_t subject_len;
    const char *subject_line;      /* a whole constant Subject line */
    Py_ssize_t subject_line_len;
    const char *mime_static;       /* the MIME part after MIME-Version, or NULL: parts */
    Py_ssize_t mime_static_len;
    mpart parts[2];                /* one text part, or multipart/alternative of two */
    int nparts;
    mx_seg segs[2 * MAX_VALUES + 2];
    size_t nsegs;
} message;

/* render.c */
void mxr_holds_clear(holds *h);
/* Renders one message into c->buf and makes its Prepared: a new reference,
 * Py_None (not for us) or NULL raised. */
PyObject *mxr_render_one(ctx *c, message *m);

/* render_input.c */
/* The UTF-8 of a str (ASCII only when ascii_only): 1, 0 not for us, -1 raised. */
int mxr_utf8_of(PyObject *s, int ascii_only, const unsigned char **p, Py_ssize_t *n);
/* A send_many mapping / a Template row (spec) rendered: as mxr_render_one. */
PyObject *mxr_item_one(ctx *c, PyObject *item);
PyObject *mxr_template_one(ctx *c, PyObject *spec, PyObject *row);

#endif
