/* reply.h - sans-I/O parser for SMTP replies (RFC 5321 §4.2).
 *
 * Bytes in, complete replies out.  No sockets, no Python, no globals, no
 * allocation: the parser and the reply it fills live in memory the caller
 * owns, and every bound below is a fixed array size.
 */
#ifndef MX_REPLY_H
#define MX_REPLY_H

#include <stddef.h>

/* One reply line, code and CRLF included.  RFC 5321 §4.5.3.1.5 allows 512
 * octets; real servers exceed it: long EHLO AUTH lists, banners with a full
 * date and a build string, and Exchange Online's refusals at end of data
 * ("554 5.2.252 SendAsDenied; ... Cannot submit message. ..." with its
 * diagnostic tail is one line of 1,500 octets and more).  A refusal cut
 * short, or a long one taken for a malformed reply, would turn a clear
 * "refused" into "fate unknown", so the bound is generous: 64 KiB.  A longer
 * line is an error, never clipped: a shortened reply would hide what the
 * server said. */
#define MX_REPLY_LINE_MAX 65536

/* Lines in one reply.  msmtp stops at 50; the longest EHLO answer we know of
 * (Exchange Online) has 12.  128 leaves room for chatty banners. */
#define MX_REPLY_LINES_MAX 128

/* The text of all lines of one reply together (codes and CRLFs excluded):
 * 256 KiB, four lines at the line bound, bounds memory for endless
 * continuation lines.  The parser and the reply of a connection are mapped
 * pages (io/conn.c): only the pages a reply writes become resident, so the
 * bound costs nothing until a reply uses it. */
#define MX_REPLY_TEXT_MAX 262144

/* An enhanced status code "c.sss.ddd" (RFC 3463: up to 3 digits each). */
#define MX_ENHANCED_MAX 12

typedef struct {
    int code;                          /* 200..559, the same on every line */
    char enhanced[MX_ENHANCED_MAX];    /* "5.7.1", or "" when absent */
    size_t nlines;
    size_t line_off[MX_REPLY_LINES_MAX];   /* into text */
    size_t line_len[MX_REPLY_LINES_MAX];
    size_t text_len;
    char text[MX_REPLY_TEXT_MAX];      /* lines' text, back to back, not NUL-terminated */
} mx_reply;

typedef enum {
    MX_REPLY_INCOMPLETE = 0,     /* all input consumed, reply not finished */
    MX_REPLY_COMPLETE = 1,       /* *out holds a whole reply */
    MX_REPLY_E_SYNTAX = -1,      /* a line does not start with a valid code */
    MX_REPLY_E_MISMATCH = -2,    /* lines of one reply carry different codes */
    MX_REPLY_E_LINE_TOO_LONG = -3,
    MX_REPLY_E_TOO_MANY_LINES = -4,
    MX_REPLY_E_TOO_LONG = -5,
    MX_REPLY_E_BAD_BYTE = -6     /* NUL, bare CR or another control byte */
} mx_reply_status;

typedef struct {
    int started;                 /* a line of the current reply was completed */
    size_t line_len;             /* bytes held in line[] */
    char line[MX_REPLY_LINE_MAX];
} mx_reply_parser;

void mx_reply_parser_init(mx_reply_parser *p);

/* Consumes bytes from buf[0..len) until one reply is complete or the input
 * runs out.  *consumed tells how many bytes were used: bytes after a complete
 * reply are left for the next call (pipelined replies, or - after STARTTLS -
 * evidence of response injection).  On an error the parser must not be fed
 * again before mx_reply_parser_init. */
mx_reply_status mx_reply_parse(mx_reply_parser *p, const unsigned char *buf,
                               size_t len, size_t *consumed, mx_reply *out);

/* A static English description of an error status. */
const char *mx_reply_strerror(mx_reply_status st);

#endif
