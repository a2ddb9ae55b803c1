/* libFuzzer harness: render.c.  The first byte picks the output capacity
 * (the buffer is exactly that big, so ASan sees any write past it) and what
 * is rendered; the rest is the input.  Checked:
 *  - nothing is written past the capacity; too little room is NOSPACE;
 *  - a header value with CR, LF, NUL or another line end of str.splitlines
 *    (VT, FF, FS, GS, RS) is REFUSED, and no rendered header holds a control
 *    character but TAB other than its folding CRLF SP and its last CRLF
 *    (mime.py writes the others as encoded words: the renderer declines);
 *  - an unstructured header unfolds to "Name: value", an address header to
 *    "To: a1, a2", each address's addr-spec is where the renderer says;
 *  - a text part's body is its pieces (HTML-escaped where asked), with CR
 *    LF, CR and LF made CRLF and a last CRLF; no line passes 998 octets. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "render.h"

#define CHECK(x) do { if (!(x)) abort(); } while (0)

static int
has_line_break(const uint8_t *p, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (p[i] == '\r' || p[i] == '\n' || p[i] == 0 || p[i] == 0x0b || p[i] == 0x0c
            || (p[i] >= 0x1c && p[i] <= 0x1e))
            return 1;
    return 0;
}

/* A header block: CR and LF only as CRLF, CRLF followed by SP except the
 * last; no other control character but TAB; no line over 998.  Unfolded
 * (CRLF before SP removed) into un; returns its length. */
static size_t
check_header(const uint8_t *h, size_t n, uint8_t *un)
{
    size_t i, u = 0, line = 0;

    CHECK(n >= 2 && h[n - 2] == '\r' && h[n - 1] == '\n');
    for (i = 0; i < n - 2; i++) {
        CHECK(h[i] != 0);
        if (h[i] == '\r') {
            CHECK(h[i + 1] == '\n' && i + 2 < n - 2 && h[i + 2] == ' ');
            CHECK(line <= MX_RENDER_LINE_MAX);
            line = 0;
            i++;
            continue;
        }
        CHECK(h[i] != '\n' && (h[i] >= 0x20 || h[i] == '\t') && h[i] != 0x7f);
        un[u++] = h[i];
        line++;
    }
    CHECK(line <= MX_RENDER_LINE_MAX);
    return u;
}

static void
fuzz_unstructured(const uint8_t *v, size_t n, size_t cap)
{
    uint8_t *buf = malloc(cap ? cap : 1), *un = malloc(n + 16);
    mx_out o;
    mx_render_status st;

    CHECK(buf && un);
    mx_out_init(&o, buf, cap);
    st = mx_render_unstructured(&o, "Subject", 7, v, n);
    CHECK(o.len <= cap);
    if (has_line_break(v, n))
        CHECK(st == MX_RENDER_REFUSED);
    if (st == MX_RENDER_OK) {
        size_t u = check_header(buf, o.len, un);
        CHECK(u == 9 + n && memcmp(un, "Subject: ", 9) == 0 && memcmp(un + 9, v, n) == 0);
    } else if (st == MX_RENDER_NOSPACE) {
        CHECK(cap < 3 * n + 16);                /* it fits in this much */
    }
    free(buf);
    free(un);
}

static void
fuzz_addresses(const uint8_t *v, size_t n, size_t cap)
{
    uint8_t *buf = malloc(cap ? cap : 1), *un = malloc(2 * n + 16), *want = malloc(2 * n + 16);
    mx_out o;
    mx_fold f;
    size_t start = 0, i, w = 0, off, len;
    mx_render_status st = MX_RENDER_OK;
    int refused = 0;

    CHECK(buf && un && want);
    mx_out_init(&o, buf, cap);
    mx_render_addr_begin(&f, &o, "To", 2);
    memcpy(want, "To: ", 4);
    w = 4;
    /* addresses separated by ',' in the input */
    for (i = 0; i <= n && st == MX_RENDER_OK; i++) {
        if (i < n && v[i] != ',')
            continue;
        if (has_line_break(v + start, i - start))
            refused = 1;
        st = mx_render_addr(&f, v + start, i - start, i < n, &off, &len);
        if (st == MX_RENDER_OK) {
            CHECK(off + len <= i - start);
            CHECK(mx_render_addr_parse(v + start + off, len, &off, &len) == MX_RENDER_OK);
            memcpy(want + w, v + start, i - start);
            w += i - start;
            if (i < n) {
                memcpy(want + w, ", ", 2);
                w += 2;
            }
        }
        start = i + 1;
    }
    if (refused)
        CHECK(st != MX_RENDER_OK);
    if (st == MX_RENDER_OK) {
        mx_render_addr_end(&f);
        st = mx_out_status(&o);
    }
    CHECK(o.len <= cap);
    if (st == MX_RENDER_OK) {
        size_t u = check_header(buf, o.len, un);
        CHECK(u == w && memcmp(un, want, w) == 0);
    }
    free(buf);
    free(un);
    free(want);
}

static void
fuzz_text(const uint8_t *v, size_t n, size_t cap, int escape, int eight_bit)
{
    uint8_t *buf = malloc(cap ? cap : 1), *cat = malloc(6 * n + 1), *norm = malloc(12 * n + 3);
    mx_seg segs[64];
    size_t nsegs = 0, start = 0, i, c = 0, m = 0, line = 0, longest = 0;
    mx_out o;
    mx_render_status st;
    int high = 0, nul = 0;

    CHECK(buf && cat && norm);
    /* pieces separated by 0xff; every other one escaped when asked */
    for (i = 0; i <= n && nsegs < 64; i++) {
        if (i < n && v[i] != 0xff)
            continue;
        segs[nsegs].p = v + start;
        segs[nsegs].len = i - start;
        segs[nsegs].escape = escape && (nsegs & 1);
        nsegs++;
        start = i + 1;
    }
    /* the expected body: escaped, joined, normalised */
    for (i = 0; i < nsegs; i++) {
        size_t k;
        for (k = 0; k < segs[i].len; k++) {
            uint8_t ch = segs[i].p[k];
            const char *e = NULL;
            if (segs[i].escape) {
                e = ch == '&' ? "&amp;" : ch == '<' ? "&lt;" : ch == '>' ? "&gt;"
                    : ch == '"' ? "&quot;" : ch == '\'' ? "&#x27;" : NULL;
            }
            if (e) {
                memcpy(cat + c, e, strlen(e));
                c += strlen(e);
            } else {
                cat[c++] = ch;
            }
        }
    }
    for (i = 0; i < c; i++) {
        if (cat[i] == '\r' || cat[i] == '\n') {
            if (cat[i] == '\r' && i + 1 < c && cat[i + 1] == '\n')
                i++;
            norm[m++] = '\r';
            norm[m++] = '\n';
            longest = line > longest ? line : longest;
            line = 0;
            continue;
        }
        nul |= cat[i] == 0;
        high |= cat[i] >= 0x80;
        norm[m++] = cat[i];
        line++;
    }
    if (!(m >= 2 && norm[m - 2] == '\r' && norm[m - 1] == '\n')) {
        norm[m++] = '\r';
        norm[m++] = '\n';
        longest = line > longest ? line : longest;
    }
    mx_out_init(&o, buf, cap);
    st = mx_render_text(&o, segs, nsegs, "plain", 5, eight_bit);
    CHECK(o.len <= cap);
    if (nul || longest > MX_RENDER_LINE_MAX || (high && !eight_bit)) {
        CHECK(st == MX_RENDER_DECLINED);
    } else if (st == MX_RENDER_OK) {
        static const char head7[] = "Content-Type: text/plain; charset=\"utf-8\"\r\n"
                                    "Content-Transfer-Encoding: 7bit\r\n\r\n";
        size_t hl = sizeof head7 - 1;
        CHECK(o.len == hl + m);
        CHECK(memcmp(buf, head7, hl - 8) == 0);
        CHECK(memcmp(buf + hl - 8, high ? "8bit" : "7bit", 4) == 0);
        CHECK(memcmp(buf + hl - 4, "\r\n\r\n", 4) == 0);
        CHECK(memcmp(buf + hl, norm, m) == 0);
    } else {
        CHECK(st == MX_RENDER_NOSPACE);
    }
    free(buf);
    free(cat);
    free(norm);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t cap;

    if (size < 1)
        return 0;
    /* low 3 bits: what; the rest: the capacity, small or ample */
    cap = (data[0] >> 3) & 16 ? (size_t)(data[0] >> 3) * 7 : 16 * size + 512;
    switch (data[0] & 7) {
    case 0:
    case 1:
        fuzz_unstructured(data + 1, size - 1, cap);
        break;
    case 2:
    case 3:
        fuzz_addresses(data + 1, size - 1, cap);
        break;
    default:
        fuzz_text(data + 1, size - 1, cap, data[0] & 1, (data[0] >> 1) & 1);
        break;
    }
    return 0;
}
