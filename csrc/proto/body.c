/* body.c - streaming body encoder; see body.h. */
#include "body.h"

#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Word-at-a-time search (the classic "has zero byte" test): eight bytes are
 * checked for CR and LF in a handful of operations, so the plain part of a
 * line is skipped at memcpy-like speed instead of byte by byte. */
#define ONES UINT64_C(0x0101010101010101)
#define HIGHS UINT64_C(0x8080808080808080)
#define HAS_BYTE(w, c) ((((w) ^ (ONES * (c))) - ONES) & ~((w) ^ (ONES * (c))) & HIGHS)

/* How many bytes of p[0..n) come before the first CR or LF.  With flags,
 * also notes a byte >= 0x80 (bit 0) or a NUL (bit 1) among them.  Sixteen
 * bytes a step with SSE2 (every x86-64 has it), eight with plain C. */
static size_t
plain_run(const unsigned char *p, size_t n, unsigned *flags)
{
    size_t i = 0;
    uint64_t high = 0, nul = 0;

#ifdef __SSE2__
    {
        const __m128i cr = _mm_set1_epi8('\r'), lf = _mm_set1_epi8('\n');
        const __m128i zero = _mm_setzero_si128();
        int hi = 0, nz = 0;

        while (i + 16 <= n) {
            __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + i));
            int stop = _mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, cr), _mm_cmpeq_epi8(v, lf)));
            if (stop) {
                /* the bytes before the first CR/LF of this block */
                unsigned before = ((unsigned)1 << __builtin_ctz((unsigned)stop)) - 1u;
                if (flags) {
                    hi |= _mm_movemask_epi8(v) & (int)before;
                    nz |= _mm_movemask_epi8(_mm_cmpeq_epi8(v, zero)) & (int)before;
                }
                i += (size_t)__builtin_ctz((unsigned)stop);
                if (flags)
                    *flags |= (hi ? 1u : 0u) | (nz ? 2u : 0u);
                return i;
            }
            if (flags) {
                hi |= _mm_movemask_epi8(v);
                nz |= _mm_movemask_epi8(_mm_cmpeq_epi8(v, zero));
            }
            i += 16;
        }
        high = (uint64_t)hi;
        nul = (uint64_t)nz;
    }
#endif
    while (i + 8 <= n) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (HAS_BYTE(w, '\r') || HAS_BYTE(w, '\n'))
            break;
        if (flags) {
            high |= w & HIGHS;
            nul |= HAS_BYTE(w, 0);
        }
        i += 8;
    }
    while (i < n && p[i] != '\r' && p[i] != '\n') {
        if (flags) {
            high |= p[i] & 0x80;
            nul |= p[i] == 0;
        }
        i++;
    }
    if (flags)
        *flags |= (high ? 1u : 0u) | (nul ? 2u : 0u);
    return i;
}

/* How many bytes of p[0..n) are already in wire form, from a point that
 * is not inside a line ending and (when stuffing) not at a line-starting
 * dot: text whose lines end in CRLF, up to the first bare CR or LF, a CR
 * whose LF is not in view yet, or (stuff) a line starting with a dot - the
 * run then ends after that line's CRLF.  Such a run is copied as it is.
 * flags as in plain_run. */
static size_t
wire_run(const unsigned char *p, size_t n, int stuff, unsigned *flags)
{
    size_t i = 0;

    for (;;) {
        i += plain_run(p + i, n - i, flags);
        if (i == n || p[i] == '\n' || i + 2 >= n || p[i + 1] != '\n')
            return i;               /* end, bare LF, CR at the edge, bare CR */
        i += 2;                     /* CRLF */
        if (stuff && p[i] == '.')
            return i;
    }
}

void
mx_body_init(mx_body_enc *e)
{
    e->at_line_start = 1;
    e->pending_cr = 0;
    e->stuff = 1;
}

void
mx_body_init_bdat(mx_body_enc *e)
{
    mx_body_init(e);
    e->stuff = 0;
}

size_t
mx_body_encode(mx_body_enc *e, const unsigned char *in, size_t in_len,
               size_t *consumed, unsigned char *out, size_t out_cap)
{
    size_t i = 0, o = 0;

    while (i < in_len) {
        unsigned char c = in[i];

        if (out_cap - o < MX_BODY_STEP_MAX)
            break;
        if (!e->pending_cr && !(e->stuff && e->at_line_start && c == '.')) {
            /* the common case: lines already ending in CRLF, copied whole */
            size_t room = out_cap - o, lim = in_len - i < room ? in_len - i : room;
            size_t run = wire_run(in + i, lim, e->stuff, NULL);
            if (run) {
                memcpy(out + o, in + i, run);
                o += run;
                i += run;
                e->at_line_start = in[i - 1] == '\n';
                continue;
            }
        }
        if (e->pending_cr) {
            /* a CR alone or a CRLF: both end the line as CRLF */
            out[o++] = '\r';
            out[o++] = '\n';
            e->pending_cr = 0;
            e->at_line_start = 1;
            if (c == '\n') {
                i++;
                continue;
            }
        }
        if (c == '\r') {
            e->pending_cr = 1;
            i++;
            continue;
        }
        if (c == '\n') {
            out[o++] = '\r';
            out[o++] = '\n';
            e->at_line_start = 1;
            i++;
            continue;
        }
        if (e->stuff && e->at_line_start && c == '.')
            out[o++] = '.';
        e->at_line_start = 0;
        /* copy the rest of the line in one run */
        {
            size_t room = out_cap - o, lim = in_len - i < room ? in_len - i : room;
            size_t run = plain_run(in + i, lim, NULL);
            memcpy(out + o, in + i, run);
            o += run;
            i += run;
        }
    }
    *consumed = i;
    return o;
}

size_t
mx_body_finish(mx_body_enc *e, unsigned char *out, size_t out_cap)
{
    size_t o = 0;

    if (out_cap < MX_BODY_FINISH_MAX)
        return 0;
    if (e->pending_cr || !e->at_line_start) {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    if (e->stuff) {
        out[o++] = '.';
        out[o++] = '\r';
        out[o++] = '\n';
    }
    e->pending_cr = 0;
    e->at_line_start = 1;
    return o;
}

void
mx_body_scan_init(mx_body_scan_state *s)
{
    memset(s, 0, sizeof(*s));
    s->at_line_start = 1;
}

void
mx_body_scan(mx_body_scan_state *s, const unsigned char *p, size_t n)
{
    size_t i = 0;
    uint64_t size = s->info.size;
    unsigned flags = 0;

    while (i < n) {
        unsigned char c = p[i];

        if (s->pending_cr) {
            size += 2;
            s->pending_cr = 0;
            s->at_line_start = 1;
            if (c == '\n') {
                i++;
                continue;
            }
        }
        if (c == '\r') {
            s->pending_cr = 1;
            i++;
        } else if (c == '\n') {
            size += 2;
            s->at_line_start = 1;
            i++;
        } else {
            size_t run = wire_run(p + i, n - i, 0, &flags);
            size += run;
            i += run;
            s->at_line_start = p[i - 1] == '\n';
        }
    }
    if (flags & 1)
        s->info.has_8bit = 1;
    if (flags & 2)
        s->info.has_nul = 1;
    s->info.size = size;
    s->info.raw_size += n;
}

void
mx_body_scan_finish(mx_body_scan_state *s)
{
    if (s->pending_cr || !s->at_line_start)
        s->info.size += 2;
    s->pending_cr = 0;
    s->at_line_start = 1;
}
