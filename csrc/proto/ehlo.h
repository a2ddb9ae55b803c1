/* ehlo.h - parsing of EHLO capability lines (RFC 5321 §4.1.1.1). Pure. */
#ifndef MX_EHLO_H
#define MX_EHLO_H

#include <stddef.h>
#include <stdint.h>

#include "reply.h"

/* extensions we act on */
#define MX_EXT_STARTTLS            0x0001u
#define MX_EXT_PIPELINING          0x0002u
#define MX_EXT_8BITMIME            0x0004u
#define MX_EXT_SMTPUTF8            0x0008u
#define MX_EXT_CHUNKING            0x0010u
#define MX_EXT_BINARYMIME          0x0020u
#define MX_EXT_DSN                 0x0040u
#define MX_EXT_ENHANCEDSTATUSCODES 0x0080u
#define MX_EXT_SIZE                0x0100u
#define MX_EXT_AUTH                0x0200u

/* SASL mechanisms; MX_AUTH_OTHER marks any we do not know */
#define MX_AUTH_PLAIN    0x01u
#define MX_AUTH_LOGIN    0x02u
#define MX_AUTH_CRAM_MD5 0x04u
#define MX_AUTH_XOAUTH2  0x08u
#define MX_AUTH_GSSAPI   0x10u
#define MX_AUTH_NTLM     0x20u
#define MX_AUTH_OTHER    0x40u
#define MX_AUTH_OAUTHBEARER 0x80u

/* Distinct mechanisms kept by mx_ehlo_auth_list; more are left out. */
#define MX_EHLO_MECHS_MAX 64

typedef struct {
    unsigned ext;       /* MX_EXT_* */
    unsigned auth;      /* MX_AUTH_* */
    uint64_t size;      /* SIZE limit; 0 = none declared; saturates at UINT64_MAX */
} mx_caps;

/* Splits one capability line into keyword and parameters.  The keyword is
 * what precedes the first space or '=' (the old "AUTH=LOGIN" form). */
void mx_ehlo_split(const char *line, size_t len, size_t *kw_len,
                   const char **params, size_t *params_len);

/* Fills caps from an EHLO reply; the first line (the greeting) is skipped.
 * Mechanisms are read from every "AUTH x y", "AUTH=x y" (pre-RFC 2554
 * clients' form, Exchange 2003 sends both) and "X-EXPS x y" / "X-EXPS=x"
 * (Exchange's own) line; any of them sets MX_EXT_AUTH. */
void mx_ehlo_parse(const mx_reply *r, mx_caps *caps);

/* The union of the mechanisms of those lines, upper case, space separated,
 * in first-seen order without duplicates, into out (NUL-terminated, also
 * when cap is too small: names that do not fit are left out, as are more
 * than MX_EHLO_MECHS_MAX).  Returns the length, 0 when none. */
size_t mx_ehlo_auth_list(const mx_reply *r, char *out, size_t cap);

/* Mechanism bit for a name ("PLAIN" -> MX_AUTH_PLAIN), case-insensitive;
 * 0 when unknown. */
unsigned mx_auth_mech_bit(const char *name, size_t len);

/* Name of a single mechanism bit, or NULL. */
const char *mx_auth_mech_name(unsigned bit);

#endif
