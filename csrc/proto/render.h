/* render.h - the ordinary message's bytes, written from pieces.  Pure: no
 * Python, no I/O, no allocation; everything goes into a caller-owned,
 * bounded output buffer.
 *
 * The twin of mailexpress/mime.py's fast builder for the cases it covers
 * without encoding: ASCII header values, plain addresses and
 * `Display Name <addr>` of atoms, 7bit/8bit text parts.  Its output is
 * byte-identical to mime.py's for the same input (tests/test_mime.py checks
 * it); anything else (a value needing RFC 2047 encoded words, a body needing
 * quoted-printable or base64, a line over 998 octets) is MX_RENDER_DECLINED
 * and the caller builds it in Python.  CR, LF and NUL in a header value, and
 * the other line ends of str.splitlines (VT, FF, FS, GS, RS), are
 * MX_RENDER_REFUSED: they never reach a header.  Other control characters
 * (but TAB) are declined: mime.py writes them as encoded words.
 *
 * The bytes are the message as given to the engine: CRLF line ends, not
 * dot-stuffed (proto/body.c stuffs on the wire). */
#ifndef MX_RENDER_H
#define MX_RENDER_H

#include <stddef.h>

/* header lines are folded before a token that would pass this (RFC 5322 2.1.1) */
#define MX_RENDER_FOLD 78
/* no line of the output passes this many octets (RFC 5322 2.1.1, 5321 4.5.3.1.6) */
#define MX_RENDER_LINE_MAX 998
/* an unstructured header's word longer than this goes as encoded words (mime.unstructured) */
#define MX_RENDER_WORD_MAX 900
/* a display name longer than this goes as encoded words (mime._address) */
#define MX_RENDER_DISPLAY_MAX 60

typedef enum {
    MX_RENDER_OK = 0,
    MX_RENDER_NOSPACE = -1,    /* the output buffer is full: give a bigger one */
    MX_RENDER_REFUSED = -2,    /* CR, LF, NUL or another line break in a header value */
    MX_RENDER_DECLINED = -3,   /* needs what only the Python builder does */
} mx_render_status;

/* A bounded output buffer.  A write that does not fit sets err and writes
 * nothing more; line_start tracks the longest line written. */
typedef struct {
    unsigned char *p;
    size_t len, cap;
    size_t line_start;         /* offset where the current line began */
    size_t longest;            /* longest line so far, CRLF not counted */
    mx_render_status err;
} mx_out;

void mx_out_init(mx_out *o, unsigned char *buf, size_t cap);
/* Appends n bytes that hold no line end. */
void mx_out_put(mx_out *o, const void *s, size_t n);
/* Appends bytes that may hold CRLF line ends (constant pieces made by
 * the builder), keeping the line bookkeeping. */
void mx_out_put_lines(mx_out *o, const void *s, size_t n);
/* Ends the line with CRLF. */
void mx_out_crlf(mx_out *o);
/* MX_RENDER_OK, or the first error, or MX_RENDER_DECLINED when a line
 * passed MX_RENDER_LINE_MAX. */
mx_render_status mx_out_status(const mx_out *o);

/* "Name: value" folded at MX_RENDER_FOLD where spaces are, as
 * mime.unstructured writes an ASCII value. */
mx_render_status mx_render_unstructured(mx_out *o, const char *name, size_t nlen,
                                        const unsigned char *v, size_t vlen);

/* An address header, one address at a time:
 *   mx_render_addr_begin(&h, o, "To", 2);
 *   mx_render_addr(&h, v, vlen, more, &off, &len);   -- for each address
 *   mx_render_addr_end(&h);
 * An address is a plain addr-spec or `Display Name <addr-spec>` whose name
 * is atoms separated by single spaces (at most MX_RENDER_DISPLAY_MAX
 * octets); anything else is declined.  `more`: another address follows
 * (a comma is written).  *off and *len: where the addr-spec is in v (the
 * envelope recipient). */
typedef struct {
    mx_out *o;
    size_t width;              /* octets on the current header line */
    int first;                 /* no token written yet */
} mx_fold;

void mx_render_addr_begin(mx_fold *h, mx_out *o, const char *name, size_t nlen);
mx_render_status mx_render_addr(mx_fold *h, const unsigned char *v, size_t vlen, int more,
                                size_t *off, size_t *len);
void mx_render_addr_end(mx_fold *h);

/* Checks an address as mx_render_addr would take it, without writing:
 * MX_RENDER_OK with the addr-spec's place, or why not. */
mx_render_status mx_render_addr_parse(const unsigned char *v, size_t vlen, size_t *off,
                                      size_t *len);

/* One piece of a text part's body: UTF-8, HTML-escaped when `escape`. */
typedef struct {
    const unsigned char *p;
    size_t len;
    int escape;
} mx_seg;

/* A text part as mime.text_part writes it when it needs no
 * quoted-printable or base64: Content-Type text/<subtype> (charset
 * utf-8), Content-Transfer-Encoding 7bit (8bit when a byte is not ASCII and
 * eight_bit), a blank line, then the pieces one after the other with
 * CR LF, CR and LF made CRLF and a last line end added.  Declined for a
 * NUL, a line over MX_RENDER_LINE_MAX octets, or non-ASCII without
 * eight_bit. */
mx_render_status mx_render_text(mx_out *o, const mx_seg *segs, size_t nsegs,
                                const char *subtype, size_t sublen, int eight_bit);

#endif
