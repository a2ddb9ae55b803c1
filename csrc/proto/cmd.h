/* cmd.h - SMTP command formatting (RFC 5321 §4.1).  Pure.
 *
 * Every argument given by a caller is checked before a byte is formatted:
 * CR, LF and NUL (and other control bytes) are refused, which closes the
 * command-injection and SMTP-smuggling family at the source. */
#ifndef MX_CMD_H
#define MX_CMD_H

#include <stddef.h>

/* RFC 5321 §4.5.3.1.3: a path ("<" address ">") is at most 256 octets. */
#define MX_PATH_MAX 256
/* RFC 5321 §4.5.3.1.2: a domain is at most 255 octets. */
#define MX_DOMAIN_MAX 255
/* RFC 4954 §4: an AUTH command line with its initial response may be
 * 12288 octets; no command we send is longer. */
#define MX_CMD_MAX 12288

typedef enum {
    MX_CMD_OK = 0,
    MX_CMD_E_CONTROL = -1,   /* CR, LF, NUL or another control byte */
    MX_CMD_E_TOO_LONG = -2,
    MX_CMD_E_EMPTY = -3,
    MX_CMD_E_SYNTAX = -4     /* '<', '>' or a space where none may be */
} mx_cmd_status;

/* "VERB\r\n" */
mx_cmd_status mx_cmd_simple(char *out, size_t cap, size_t *len, const char *verb);
/* "EHLO name\r\n" / "HELO name\r\n" */
mx_cmd_status mx_cmd_hello(char *out, size_t cap, size_t *len, const char *verb,
                           const char *name, size_t name_len);
/* "MAIL FROM:<addr>[ params]\r\n" / "RCPT TO:<addr>[ params]\r\n";
 * params is a space separated list of ESMTP parameters (may be empty). */
mx_cmd_status mx_cmd_path(char *out, size_t cap, size_t *len, const char *verb,
                          const char *addr, size_t addr_len,
                          const char *params, size_t params_len);
/* "AUTH MECH[ initial]\r\n" or a bare SASL line "payload\r\n" (verb NULL) */
mx_cmd_status mx_cmd_auth(char *out, size_t cap, size_t *len, const char *mech,
                          const char *payload, size_t payload_len);

/* Checks one argument without formatting anything. */
mx_cmd_status mx_cmd_check_address(const char *addr, size_t len);
mx_cmd_status mx_cmd_check_params(const char *params, size_t len);
mx_cmd_status mx_cmd_check_domain(const char *name, size_t len);

const char *mx_cmd_strerror(mx_cmd_status st);

#endif
