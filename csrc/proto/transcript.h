/* transcript.h - what was said on one connection, for evidence and logs.
 *
 * Credentials never enter it: the session hands in the redacted form of
 * every AUTH line, so there is nothing to scrub afterwards.  Bounded: past
 * MX_TRANSCRIPT_MAX bytes further entries are counted, not stored. */
#ifndef MX_TRANSCRIPT_H
#define MX_TRANSCRIPT_H

#include <stddef.h>
#include <stdint.h>

#define MX_TRANSCRIPT_MAX (1u << 20)

typedef enum {
    MX_TR_CLIENT = 'C',    /* a command we sent */
    MX_TR_SERVER = 'S',    /* a reply line we received */
    MX_TR_INFO = '*'       /* an event: connected, TLS up, body sent, ... */
} mx_tr_dir;

typedef struct {
    char *buf;             /* entries: u32 ms, u8 dir, u32 len, text */
    size_t len, cap;
    size_t dropped;        /* entries not stored because of the bound */
} mx_transcript;

void mx_transcript_init(mx_transcript *t);
void mx_transcript_free(mx_transcript *t);
void mx_transcript_clear(mx_transcript *t);
/* Adds one entry; a trailing CRLF in text is not stored.  Returns 0, or -1
 * when out of memory (the entry is then counted as dropped). */
int mx_transcript_add(mx_transcript *t, uint32_t ms, mx_tr_dir dir,
                      const char *text, size_t len);
/* The same for one entry made of head (not stripped) and text: a reply
 * line is its code and separator, then its text, without a copy. */
int mx_transcript_add2(mx_transcript *t, uint32_t ms, mx_tr_dir dir,
                       const char *head, size_t hlen, const char *text, size_t len);

/* 1 when mx_transcript_add2 would store this entry (same arguments, the
 * trailing CRLF not counted), 0 when it would only count it as dropped.
 * Lets a caller skip the work of an entry that will not be kept (its
 * timestamp, its formatting) once the transcript is full, and still hand
 * it to mx_transcript_add2, which keeps the dropped count exact. */
int mx_transcript_keeps(const mx_transcript *t, size_t hlen, const char *text, size_t len);

/* Iteration: *pos starts at 0; returns 1 and fills the fields per entry,
 * 0 at the end. */
int mx_transcript_next(const mx_transcript *t, size_t *pos, uint32_t *ms,
                       char *dir, const char **text, size_t *len);

#endif
