/* body.c - streaming body encoder; see body.h. */
#include "body.h"

#include <string.h>

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
            size_t room = out_cap - o, j = i;
            while (j < in_len && j - i < room && in[j] != '\r' && in[j] != '\n')
                j++;
            memcpy(out + o, in + i, j - i);
            o += j - i;
            i = j;
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
    size_t i;
    uint64_t size = s->info.size;

    for (i = 0; i < n; i++) {
        unsigned char c = p[i];

        if (s->pending_cr) {
            size += 2;
            s->pending_cr = 0;
            s->at_line_start = 1;
            if (c == '\n')
                continue;
        }
        if (c == '\r') {
            s->pending_cr = 1;
        } else if (c == '\n') {
            size += 2;
            s->at_line_start = 1;
        } else {
            if (c >= 0x80)
                s->info.has_8bit = 1;
            else if (c == 0)
                s->info.has_nul = 1;
            size += 1;
            s->at_line_start = 0;
        }
    }
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
