/* transcript.c - bounded session transcript; see transcript.h. */
#include "transcript.h"

#include <stdlib.h>
#include <string.h>

#define HDR 9   /* u32 ms + u8 dir + u32 len */

void
mx_transcript_init(mx_transcript *t)
{
    t->buf = NULL;
    t->len = t->cap = 0;
    t->dropped = 0;
}

void
mx_transcript_free(mx_transcript *t)
{
    free(t->buf);
    mx_transcript_init(t);
}

void
mx_transcript_clear(mx_transcript *t)
{
    t->len = 0;
    t->dropped = 0;
}

int
mx_transcript_add(mx_transcript *t, uint32_t ms, mx_tr_dir dir,
                  const char *text, size_t len)
{
    return mx_transcript_add2(t, ms, dir, NULL, 0, text, len);
}

/* The length of text without its trailing CR and LF characters. */
static size_t
stripped(const char *text, size_t len)
{
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        len--;
    return len;
}

/* Whether an entry of hlen + len bytes (stripped) fits under the bound. */
static int
fits(const mx_transcript *t, size_t hlen, size_t len)
{
    return hlen <= MX_TRANSCRIPT_MAX && len <= MX_TRANSCRIPT_MAX - hlen &&
           t->len + HDR + hlen + len <= MX_TRANSCRIPT_MAX;
}

int
mx_transcript_keeps(const mx_transcript *t, size_t hlen, const char *text, size_t len)
{
    /* full: not even an empty entry fits (the common case in a long run) */
    if (t->len + HDR > MX_TRANSCRIPT_MAX)
        return 0;
    return fits(t, hlen, stripped(text, len));
}

int
mx_transcript_add2(mx_transcript *t, uint32_t ms, mx_tr_dir dir,
                   const char *head, size_t hlen, const char *text, size_t len)
{
    uint32_t l32;
    unsigned char d = (unsigned char)dir;

    if (t->len + HDR > MX_TRANSCRIPT_MAX) {
        t->dropped++;             /* full: no entry fits, whatever its length */
        return 0;
    }
    len = stripped(text, len);
    if (!fits(t, hlen, len)) {
        t->dropped++;
        return 0;
    }
    len += hlen;      /* from here on: the whole entry */
    if (t->len + HDR + len > t->cap) {
        size_t ncap = t->cap ? t->cap : 4096;
        char *nb;
        while (ncap < t->len + HDR + len)
            ncap *= 2;
        if (ncap > MX_TRANSCRIPT_MAX)
            ncap = MX_TRANSCRIPT_MAX;
        nb = realloc(t->buf, ncap);
        if (!nb) {
            t->dropped++;
            return -1;
        }
        t->buf = nb;
        t->cap = ncap;
    }
    l32 = (uint32_t)len;
    memcpy(t->buf + t->len, &ms, 4);
    memcpy(t->buf + t->len + 4, &d, 1);
    memcpy(t->buf + t->len + 5, &l32, 4);
    if (hlen)
        memcpy(t->buf + t->len + HDR, head, hlen);
    if (len > hlen)
        memcpy(t->buf + t->len + HDR + hlen, text, len - hlen);
    t->len += HDR + len;
    return 0;
}

int
mx_transcript_next(const mx_transcript *t, size_t *pos, uint32_t *ms,
                   char *dir, const char **text, size_t *len)
{
    uint32_t l32;
    unsigned char d;

    if (*pos + HDR > t->len)
        return 0;
    memcpy(ms, t->buf + *pos, 4);
    memcpy(&d, t->buf + *pos + 4, 1);
    memcpy(&l32, t->buf + *pos + 5, 4);
    *dir = (char)d;
    *text = t->buf + *pos + HDR;
    *len = l32;
    *pos += HDR + l32;
    return 1;
}
