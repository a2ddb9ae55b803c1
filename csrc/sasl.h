/* sasl.h - SASL PLAIN and LOGIN (RFC 4616, draft-murchison-sasl-login)
 * and strict base64 (RFC 4648 §4).  Pure. */
#ifndef MX_SASL_H
#define MX_SASL_H

#include <stddef.h>

/* A SASL credential (user name or password) in octets; longer is refused.
 * RFC 4616 allows 255 octets per field. */
#define MX_SASL_FIELD_MAX 255
/* A decoded 334 challenge: LOGIN's are "Username:" / "Password:". */
#define MX_SASL_CHALLENGE_MAX 512

typedef enum {
    MX_SASL_OK = 0,
    MX_SASL_E_TOO_LONG = -1,   /* input or output does not fit */
    MX_SASL_E_NUL = -2,        /* a NUL inside a PLAIN field */
    MX_SASL_E_BASE64 = -3      /* not valid base64 */
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

/* Checks a 334 challenge decodes to at most MX_SASL_CHALLENGE_MAX octets. */
mx_sasl_status mx_sasl_check_challenge(const char *b64, size_t n);

/* Overwrites n bytes in a way the compiler may not drop. */
void mx_wipe(void *p, size_t n);

const char *mx_sasl_strerror(mx_sasl_status st);

#endif
