/* body.h - streaming DATA body encoder (RFC 5321 §4.5.2, §2.3.8).  Pure.
 *
 * Turns message bytes into what goes on the wire after "354": every bare CR
 * and bare LF becomes CRLF, a "." at the start of a line is doubled, and
 * mx_body_finish() closes the body with exactly one CRLF "." CRLF.  The
 * state carries over between calls, so a body of any size streams through
 * a fixed buffer: output space is what bounds each step (the lesson of
 * CVE-2018-0500: size buffers from the output side). */
#ifndef MX_BODY_H
#define MX_BODY_H

#include <stddef.h>
#include <stdint.h>

/* Output space one input byte can need: a held CR turned into CRLF plus a
 * stuffed dot and the byte itself. */
#define MX_BODY_STEP_MAX 4
/* Output of mx_body_finish at most: CRLF for a held CR or the last line,
 * then ".\r\n". */
#define MX_BODY_FINISH_MAX 5

typedef struct {
    int at_line_start;     /* next byte begins a line */
    int pending_cr;        /* a CR was read; its LF (if any) not yet seen */
    int stuff;             /* DATA: double leading dots, end with "." */
} mx_body_enc;

/* For DATA: line ends made CRLF, leading dots doubled, "." at the end. */
void mx_body_init(mx_body_enc *e);
/* For BDAT (RFC 3030): line ends made CRLF, nothing stuffed; finish adds
 * only the CRLF a last unterminated line needs, so the output is exactly
 * mx_body_scan's size. */
void mx_body_init_bdat(mx_body_enc *e);

/* Encodes as much of in[0..in_len) as fits into out[0..out_cap).  Returns
 * the bytes written; *consumed the input bytes used.  Makes progress
 * whenever out_cap >= MX_BODY_STEP_MAX. */
size_t mx_body_encode(mx_body_enc *e, const unsigned char *in, size_t in_len,
                      size_t *consumed, unsigned char *out, size_t out_cap);

/* Writes the end of the body (out_cap >= MX_BODY_FINISH_MAX); returns bytes.
 * For BDAT that is at most a CRLF. */
size_t mx_body_finish(mx_body_enc *e, unsigned char *out, size_t out_cap);

typedef struct {
    uint64_t size;         /* message size per RFC 1870: CRLF-normalised,
                              final CRLF included, without dot-stuffing */
    int has_8bit;          /* a byte >= 0x80 */
    int has_nul;           /* a NUL byte (needs BINARYMIME) */
    uint64_t raw_size;     /* bytes scanned, as given */
} mx_body_info;

/* One pass over a whole message: its SIZE value and whether it needs
 * 8BITMIME.  Callers with a stream may call it per chunk with the same
 * state (init with mx_body_scan_init). */
typedef struct {
    mx_body_info info;
    int pending_cr;
    int at_line_start;
} mx_body_scan_state;

void mx_body_scan_init(mx_body_scan_state *s);
void mx_body_scan(mx_body_scan_state *s, const unsigned char *p, size_t n);
void mx_body_scan_finish(mx_body_scan_state *s);

#endif
