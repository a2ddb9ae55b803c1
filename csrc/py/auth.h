/* auth.h - the one SASL challenge/response loop of SMTP AUTH (RFC 4954),
 * and the steps of the mechanisms that run on it.  Private to session.c.
 *
 * A mechanism is a step function: called once for the initial response,
 * then once per 334 challenge.  PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER have
 * C steps that hand out messages prepared before the exchange; mechanisms
 * implemented in Python (NTLM, GSSAPI through pyspnego) have a step that
 * calls a Python callable.  The loop runs with the GIL held and does its
 * I/O through the session's exchange(), which releases it; so the GIL is
 * held only while a step (C or Python) runs.
 *
 * Every message that may hold a secret lives in a heap buffer (mx_abuf)
 * that is wiped before it is freed. */
#ifndef MX_AUTH_H
#define MX_AUTH_H

#include "module.h"
#include "reply.h"

/* A SASL mechanism name (RFC 4422 §3.1: 1-20 of A-Z 0-9 - _). */
#define MX_MECH_NAME_MAX 20
/* The longest AUTH line (CRLF included) that carries the initial response;
 * a longer response goes after the server's 334.  RFC 4954 §4 allows 12288
 * octets, but Postfix's smtpd reads a command line up to line_length_limit
 * (2048 by default) and drops the rest, which Dovecot then refuses as
 * "535 5.7.8 Invalid base64 data in initial response" (found by
 * tests/interop/test_oauth.py); after the 334 Postfix takes 12288
 * (smtpd_sasl_response_limit).  2048 keeps the one-round-trip form for
 * the usual PLAIN/NTLM messages and for tokens up to ~1.4 KB. */
#define MX_AUTH_IR_LINE_MAX 2048
/* 334 rounds one AUTH may take (GSSAPI needs 3, NTLM 2). */
#define MX_AUTH_ROUNDS_MAX 16

/* A growable heap buffer for secrets: wiped on every reuse and on free. */
typedef struct {
    unsigned char *p;
    size_t len, cap;
} mx_abuf;

/* Makes b hold n octets (old content wiped).  0, or -1 (PyErr_NoMemory). */
int mx_abuf_reserve(mx_abuf *b, size_t n);
int mx_abuf_set(mx_abuf *b, const void *p, size_t n);
void mx_abuf_free(mx_abuf *b);

typedef enum {
    MX_STEP_SEND,    /* send out->p[0..len) (base64; "=" for an empty initial response) */
    MX_STEP_NONE,    /* initial: no initial response; to a challenge: an empty line */
    MX_STEP_DONE,    /* the mechanism has nothing more to say */
    MX_STEP_ERROR    /* a Python exception is set */
} mx_step_rc;

enum { MX_MECH_PLAIN, MX_MECH_LOGIN, MX_MECH_OAUTH, MX_MECH_PYTHON };

typedef struct mx_auth_mech {
    char name[MX_MECH_NAME_MAX + 1];   /* upper case */
    int kind;                          /* MX_MECH_* */
    int bearer;                        /* OAUTHBEARER (dummy response %x01) */
    int answered;                      /* challenges answered so far */
    size_t challenge_max;              /* decoded octets; 0: MX_SASL_BLOB_MAX */
    mx_abuf first, second;             /* PLAIN / OAuth message; LOGIN user, password */
    mx_abuf challenge;                 /* OAuth: the server's error JSON, if any */
    int has_challenge;
    PyObject *step;                    /* Python step (borrowed) */
} mx_auth_mech;

void mx_auth_mech_init(mx_auth_mech *m, int kind, const char *name);
/* Wipes and frees m's buffers. */
void mx_auth_mech_free(mx_auth_mech *m);

/* Mechanism set-up: checks the fields and prepares the messages in m's
 * heap buffers (m is initialised here; free it with mx_auth_mech_free
 * whatever the result).  0 ready; 1 bad input, why says which field and
 * nothing may be sent; -1 a Python exception is set (memory). */
int mx_auth_prepare_basic(mx_auth_mech *m, int login, const char *user, size_t ulen,
                          const char *pass, size_t plen, char *why, size_t whycap);
int mx_auth_prepare_oauth(mx_auth_mech *m, int bearer, const char *user, size_t ulen,
                          const char *host, size_t hlen, unsigned port,
                          const char *token, size_t tlen, char *why, size_t whycap);
/* name: a SASL mechanism name (any case; upper-cased); step: a callable,
 * borrowed for the life of m. */
int mx_auth_prepare_python(mx_auth_mech *m, const char *name, size_t nlen,
                           PyObject *step, char *why, size_t whycap);

/* How the session talks for the loop: send a line (recorded as `shown`, or
 * as itself when shown is NULL) and read the reply into *reply, with the
 * GIL released.  0, or -1 with the session's I/O error set. */
typedef struct {
    void *sess;
    int (*exchange)(void *sess, const char *line, size_t len, const char *shown);
    const mx_reply *reply;
} mx_auth_conv;

typedef enum {
    MX_AUTH_OK,          /* 235 */
    MX_AUTH_REFUSED,     /* a 4xx/5xx reply is in *reply */
    MX_AUTH_IO,          /* exchange() failed */
    MX_AUTH_PROTOCOL,    /* a reply that cannot belong; why says which */
    MX_AUTH_RAISED,      /* a step raised (or memory ran out); after the first
                            line was sent, "*" cancelled the exchange and its
                            reply was read; the exception is set */
    MX_AUTH_RAISED_IO    /* as RAISED, but the cancel's exchange failed: the
                            connection is in an unknown state */
} mx_auth_result;

/* Runs AUTH <name> to its end.  The initial response goes on the AUTH line
 * when that line stays within MX_AUTH_IR_LINE_MAX octets, else after the
 * first 334.  GIL held on entry. */
mx_auth_result mx_auth_run(const mx_auth_conv *c, mx_auth_mech *m, char *why,
                           size_t whycap);

#endif
