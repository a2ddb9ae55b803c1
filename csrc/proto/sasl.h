/* sasl.h - SASL client messages: PLAIN and LOGIN (RFC 4616,
 * draft-murchison-sasl-login), XOAUTH2 (Google/Microsoft) and OAUTHBEARER
 * (RFC 7628), and strict base64 (RFC 4648 §4).  Pure: no I/O, no Python;
 * every output goes into a buffer the caller sized. */
#ifndef MX_SASL_H
#define MX_SASL_H

#include <stddef.h>

/* A SASL credential (user name or password) in octets; longer is refused.
 * RFC 4616 allows 255 octets per field. */
#define MX_SASL_FIELD_MAX 255
/* A decoded 334 challenge: LOGIN's are "Username:" / "Password:". */
#define MX_SASL_CHALLENGE_MAX 512
/* One SASL message of any mechanism, decoded: a bearer token, a client
 * response from a Python step (a Kerberos AP-REQ with a large PAC), a
 * server challenge.  64 KiB. */
#define MX_SASL_BLOB_MAX 65536
/* Base64 text of n octets, without the NUL. */
#define MX_B64_LEN(n) ((((n) + 2) / 3) * 4)

typedef enum {
    MX_SASL_OK = 0,
    MX_SASL_E_TOO_LONG = -1,   /* input or output does not fit */
    MX_SASL_E_NUL = -2,        /* a NUL inside a PLAIN field */
    MX_SASL_E_BASE64 = -3,     /* not valid base64 */
    MX_SASL_E_CONTROL = -4,    /* a control character (such as \x01) in a field */
    MX_SASL_E_TOKEN = -5,      /* a bearer token with a space, control or non-ASCII byte */
    MX_SASL_E_EMPTY = -6       /* an empty token */
} mx_sasl_status;

/* Base64 of in[0..n) into out (NUL-terminated); *out_len excludes the NUL. */
mx_sasl_status mx_b64_encode(const unsigned char *in, size_t n, char *out,
                             size_t cap, size_t *out_len);
/* Strict decoding: the alphabet, '=' padding only at the end, length a
 * multiple of 4, zero pad bits (so only the canonical encoding decodes).
 * No whitespace. */
mx_sasl_status mx_b64_decode(const char *in, size_t n, unsigned char *out,
                             size_t cap, size_t *out_len);

/* The PLAIN response, base64 of "authzid NUL user NUL password", into out. */
mx_sasl_status mx_sasl_plain(const char *authzid, size_t authzid_len,
                             const char *user, size_t user_len,
                             const char *pass, size_t pass_len,
                             char *out, size_t cap, size_t *out_len);

/* The raw PLAIN message "authzid NUL user NUL password" (not base64) into
 * out; each field at most MX_SASL_FIELD_MAX octets, no NUL inside. */
mx_sasl_status mx_sasl_plain_raw(const char *authzid, size_t authzid_len,
                                 const char *user, size_t user_len,
                                 const char *pass, size_t pass_len,
                                 unsigned char *out, size_t cap, size_t *out_len);

/* An OAuth user or host: at most MX_SASL_FIELD_MAX octets, no control
 * characters.  A bearer token: 1..MX_SASL_BLOB_MAX printable ASCII octets,
 * no spaces. */
mx_sasl_status mx_sasl_check_field(const char *p, size_t n);
mx_sasl_status mx_sasl_check_token(const char *p, size_t n);

/* Octets the XOAUTH2 / OAUTHBEARER message needs at most for fields of
 * these lengths (what to allocate). */
size_t mx_sasl_oauth_size(size_t user_len, size_t host_len, size_t token_len);

/* XOAUTH2: "user=<user>\x01auth=Bearer <token>\x01\x01" (raw, not base64).
 * user: at most MX_SASL_FIELD_MAX octets without control characters; token:
 * 1..MX_SASL_BLOB_MAX printable ASCII octets without spaces. */
mx_sasl_status mx_sasl_xoauth2(const char *user, size_t user_len,
                               const char *token, size_t token_len,
                               unsigned char *out, size_t cap, size_t *out_len);

/* OAUTHBEARER (RFC 7628 §3.1): the GS2 header "n,a=<user>," (',' and '='
 * in the user escaped as =2C and =3D, RFC 5801), then "\x01host=<host>"
 * when host_len > 0, "\x01port=<port>" when port > 0, and
 * "\x01auth=Bearer <token>\x01\x01".  Fields checked as for XOAUTH2; the
 * host also at most MX_SASL_FIELD_MAX octets. */
mx_sasl_status mx_sasl_oauthbearer(const char *user, size_t user_len,
                                   const char *host, size_t host_len,
                                   unsigned port, const char *token,
                                   size_t token_len, unsigned char *out,
                                   size_t cap, size_t *out_len);

/* Decodes the text of a 334 challenge into out (cap octets); more than
 * MX_SASL_BLOB_MAX decoded octets is MX_SASL_E_TOO_LONG.  An empty text is
 * an empty challenge. */
mx_sasl_status mx_sasl_decode_challenge(const char *b64, size_t n,
                                        unsigned char *out, size_t cap,
                                        size_t *out_len);

/* Checks a 334 challenge decodes to at most MX_SASL_CHALLENGE_MAX octets. */
mx_sasl_status mx_sasl_check_challenge(const char *b64, size_t n);

/* Overwrites n bytes in a way the compiler may not drop. */
void mx_wipe(void *p, size_t n);

const char *mx_sasl_strerror(mx_sasl_status st);

#endif
