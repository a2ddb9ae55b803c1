/* render.c - the ordinary message's bytes, written from pieces; see render.h.
 *
 * Each rule here is mime.py's, for the inputs this file takes; where mime.py
 * would encode (RFC 2047 words, quoted-printable, base64) this file declines
 * and mime.py builds the message. */
#include "render.h"

#include <stdint.h>
#include <string.h>

void
mx_out_init(mx_out *o, unsigned char *buf, size_t cap)
{
    o->p = buf;
    o->len = 0;
    o->cap = cap;
    o->line_start = 0;
    o->longest = 0;
    o->err = MX_RENDER_OK;
}

/* Room for n more bytes; sets err when there is none. */
static int
room(mx_out *o, size_t n)
{
    if (o->err != MX_RENDER_OK)
        return 0;
    if (n > o->cap - o->len) {
        o->err = MX_RENDER_NOSPACE;
        return 0;
    }
    return 1;
}

void
mx_out_put(mx_out *o, const void *s, size_t n)
{
    if (!room(o, n))
        return;
    if (n)
        memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void
line_ends_at(mx_out *o, size_t end)
{
    size_t n = end - o->line_start;

    if (n > o->longest)
        o->longest = n;
}

void
mx_out_crlf(mx_out *o)
{
    if (!room(o, 2))
        return;
    line_ends_at(o, o->len);
    o->p[o->len++] = '\r';
    o->p[o->len++] = '\n';
    o->line_start = o->len;
}

void
mx_out_put_lines(mx_out *o, const void *s, size_t n)
{
    const unsigned char *nl;
    size_t start = o->len, at;

    mx_out_put(o, s, n);
    if (o->err != MX_RENDER_OK)
        return;
    /* each LF ends a line (the builder's pieces end their lines with CRLF) */
    at = start;
    while (at < o->len && (nl = memchr(o->p + at, '\n', o->len - at)) != NULL) {
        size_t end = (size_t)(nl - o->p);
        line_ends_at(o, end > o->line_start && o->p[end - 1] == '\r' ? end - 1 : end);
        o->line_start = end + 1;
        at = end + 1;
    }
}

mx_render_status
mx_out_status(const mx_out *o)
{
    if (o->err != MX_RENDER_OK)
        return o->err;
    if (o->longest > MX_RENDER_LINE_MAX || o->len - o->line_start > MX_RENDER_LINE_MAX)
        return MX_RENDER_DECLINED;
    return MX_RENDER_OK;
}

/* ---- headers ------------------------------------------------------------- */

static int
is_crlfnul(unsigned char c)
{
    return c == '\r' || c == '\n' || c == 0;
}

/* What mime._BAD refuses in an ASCII header value: CR, LF, NUL and the other
 * line ends of str.splitlines (VT, FF, FS, GS, RS), which EmailMessage
 * refuses too.  (NEL, LS and PS are not ASCII: declined, and refused there.) */
static int
is_line_break(unsigned char c)
{
    return is_crlfnul(c) || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e);
}

/* mime._CTL in ASCII: the other control characters but TAB (and DEL), which
 * mime.py writes as encoded words */
static int
is_other_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t' && !is_line_break(c)) || c == 0x7f;
}

static void
fold_begin(mx_fold *h, mx_out *o, const char *name, size_t nlen)
{
    h->o = o;
    mx_out_put(o, name, nlen);
    mx_out_put(o, ":", 1);
    h->width = nlen + 1;
    h->first = 1;
}

/* One token, with a comma after it when `comma`: a folding line break goes
 * before a non-empty token that would take the line past MX_RENDER_FOLD
 * (mime._fold). */
static void
fold_token(mx_fold *h, const unsigned char *tok, size_t n, int comma)
{
    size_t tn = n + (comma ? 1 : 0);

    if (!h->first && n > 0 && h->width + 1 + tn > MX_RENDER_FOLD) {
        mx_out_crlf(h->o);
        h->width = 0;
    }
    h->first = 0;
    mx_out_put(h->o, " ", 1);
    mx_out_put(h->o, tok, n);
    if (comma)
        mx_out_put(h->o, ",", 1);
    h->width += 1 + tn;
}

mx_render_status
mx_render_unstructured(mx_out *o, const char *name, size_t nlen, const unsigned char *v,
                       size_t vlen)
{
    mx_fold h;
    size_t i, start, word = 0;

    for (i = 0; i < vlen; i++)
        if (is_line_break(v[i]))
            return MX_RENDER_REFUSED;
    for (i = 0; i < vlen; i++) {
        if (v[i] >= 0x80 || is_other_ctl(v[i]))
            return MX_RENDER_DECLINED;          /* encoded words */
        if (v[i] == '=' && i + 1 < vlen && v[i + 1] == '?')
            return MX_RENDER_DECLINED;          /* looks like an encoded word */
        word = v[i] == ' ' ? 0 : word + 1;
        if (word > MX_RENDER_WORD_MAX)
            return MX_RENDER_DECLINED;
    }
    if (vlen && (v[0] == ' ' || v[0] == '\t'))
        return MX_RENDER_DECLINED;              /* leading white space: encoded words */
    fold_begin(&h, o, name, nlen);
    start = 0;
    for (i = 0; i <= vlen; i++) {
        if (i == vlen || v[i] == ' ') {
            fold_token(&h, v + start, i - start, 0);
            start = i + 1;
        }
    }
    mx_out_crlf(o);
    return mx_out_status(o);
}

static int
is_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

/* mime._PLAIN_ADDR's local part: atext and dots */
static int
is_local(unsigned char c)
{
    return is_alnum(c) || (c && strchr(".!#$%&'*+/=?^_`{|}~-", c) != NULL);
}

static int
is_domain(unsigned char c)
{
    return is_alnum(c) || c == '.' || c == '-';
}

/* mime._SIMPLE_NAME_ADDR's display-name words: atext without "=" and "?" */
static int
is_word(unsigned char c)
{
    return is_alnum(c) || (c && strchr("!#$%&'*+-/^_`{|}~", c) != NULL);
}

/* [local]+@[domain]+ exactly */
static int
plain_addr(const unsigned char *v, size_t n)
{
    size_t i = 0;

    while (i < n && is_local(v[i]))
        i++;
    if (i == 0 || i >= n || v[i] != '@')
        return 0;
    if (++i >= n)
        return 0;
    while (i < n && is_domain(v[i]))
        i++;
    return i == n;
}

mx_render_status
mx_render_addr_parse(const unsigned char *v, size_t vlen, size_t *off, size_t *len)
{
    const unsigned char *lt;
    size_t i, p;

    for (i = 0; i < vlen; i++)
        if (is_line_break(v[i]))
            return MX_RENDER_REFUSED;
    lt = vlen ? memchr(v, '<', vlen) : NULL;
    if (lt == NULL) {
        if (!plain_addr(v, vlen))
            return MX_RENDER_DECLINED;
        *off = 0;
        *len = vlen;
        return MX_RENDER_OK;
    }
    p = (size_t)(lt - v);
    /* "word( word)* <addr>" with the name at most MX_RENDER_DISPLAY_MAX */
    if (p < 2 || v[p - 1] != ' ' || v[vlen - 1] != '>' || p - 1 > MX_RENDER_DISPLAY_MAX)
        return MX_RENDER_DECLINED;
    for (i = 0; i < p - 1; i++) {
        if (v[i] == ' ') {
            if (i == 0 || v[i - 1] == ' ' || i + 1 == p - 1)
                return MX_RENDER_DECLINED;
        } else if (!is_word(v[i])) {
            return MX_RENDER_DECLINED;
        }
    }
    if (vlen < p + 2 || !plain_addr(v + p + 1, vlen - p - 2))
        return MX_RENDER_DECLINED;
    *off = p + 1;
    *len = vlen - p - 2;
    return MX_RENDER_OK;
}

void
mx_render_addr_begin(mx_fold *h, mx_out *o, const char *name, size_t nlen)
{
    fold_begin(h, o, name, nlen);
}

mx_render_status
mx_render_addr(mx_fold *h, const unsigned char *v, size_t vlen, int more, size_t *off,
               size_t *len)
{
    mx_render_status st = mx_render_addr_parse(v, vlen, off, len);

    if (st != MX_RENDER_OK)
        return st;
    if (*off == 0) {
        fold_token(h, v, vlen, more);
    } else {
        /* two tokens, as mime._address gives them: the name, then <addr> */
        fold_token(h, v, *off - 2, 0);
        fold_token(h, v + *off - 1, *len + 2, more);
    }
    return mx_out_status(h->o) == MX_RENDER_NOSPACE ? MX_RENDER_NOSPACE : MX_RENDER_OK;
}

void
mx_render_addr_end(mx_fold *h)
{
    mx_out_crlf(h->o);
}

/* ---- text parts ---------------------------------------------------------- */

/* html.escape(s, quote=True) of one byte, or NULL when it stays as it is */
static const char *
escaped(unsigned char c, size_t *n)
{
    switch (c) {
    case '&': *n = 5; return "&amp;";
    case '<': *n = 4; return "&lt;";
    case '>': *n = 4; return "&gt;";
    case '"': *n = 6; return "&quot;";
    case '\'': *n = 6; return "&#x27;";
    default: return NULL;
    }
}

/* Whether p[0..n) holds a byte >= 0x80, eight at a time. */
static int
any_high(const unsigned char *p, size_t n)
{
    const uint64_t mask = 0x8080808080808080ULL;
    uint64_t acc = 0, w;
    size_t i = 0;

    for (; i + 8 <= n; i += 8) {
        memcpy(&w, p + i, 8);
        acc |= w;
    }
    for (; i < n; i++)
        acc |= p[i] & 0x80;
    return (acc & mask) != 0;
}

/* What a walk over the pieces carries from one to the next. */
typedef struct {
    unsigned char *out;        /* NULL: only measure */
    size_t n;                  /* output octets */
    size_t line;               /* octets on the current line */
    size_t longest;
    int pending_cr, ended, nul, high;
} walk;

static void
walk_newline(walk *w)
{
    if (w->line > w->longest)
        w->longest = w->line;
    if (w->out) {
        w->out[w->n] = '\r';
        w->out[w->n + 1] = '\n';
    }
    w->n += 2;
    w->line = 0;
    w->ended = 1;
}

static void
walk_bytes(walk *w, const unsigned char *p, size_t k)
{
    if (!k)
        return;
    if (w->out)
        memcpy(w->out + w->n, p, k);
    w->n += k;
    w->line += k;
    w->ended = 0;
}

/* A piece without CR and nothing to escape: line by line (memchr). */
static void
walk_plain(walk *w, const unsigned char *p, size_t len)
{
    size_t i = 0;

    if (!w->out) {
        if (memchr(p, 0, len))
            w->nul = 1;
        if (any_high(p, len))
            w->high = 1;
    }
    if (w->pending_cr && len && p[0] == '\n')
        i = 1;                              /* the LF of a CR LF split between pieces */
    w->pending_cr = 0;
    while (i < len) {
        const unsigned char *nl = memchr(p + i, '\n', len - i);
        if (!nl) {
            walk_bytes(w, p + i, len - i);
            break;
        }
        walk_bytes(w, p + i, (size_t)(nl - p) - i);
        walk_newline(w);
        i = (size_t)(nl - p) + 1;
    }
}

/* Any piece, a byte at a time. */
static void
walk_any(walk *w, const unsigned char *p, size_t len, int escape)
{
    size_t i, k;
    const char *e;

    for (i = 0; i < len; i++) {
        unsigned char c = p[i];
        if (c == '\n' && w->pending_cr) {
            w->pending_cr = 0;                  /* the LF of a CR LF already ended the line */
            continue;
        }
        w->pending_cr = 0;
        if (c == '\r' || c == '\n') {
            w->pending_cr = c == '\r';
            walk_newline(w);
            continue;
        }
        if (escape && (e = escaped(c, &k)) != NULL) {
            walk_bytes(w, (const unsigned char *)e, k);
            continue;
        }
        if (c == 0)
            w->nul = 1;
        else if (c >= 0x80)
            w->high = 1;
        walk_bytes(w, &c, 1);
    }
}

/* Walks the pieces as mime._normalise sees their concatenation: CR LF, CR
 * and LF end a line, a last line end is added.  With w->out NULL it only
 * measures: the output size, the longest line, and whether there is a NUL
 * or a byte >= 0x80. */
static void
text_walk(walk *w, const mx_seg *segs, size_t nsegs)
{
    size_t s;

    for (s = 0; s < nsegs; s++) {
        const unsigned char *p = segs[s].p;
        size_t len = segs[s].len;
        if (len == 0)
            continue;                           /* (a CR before it may pair with a LF after) */
        if (!segs[s].escape && !memchr(p, '\r', len))
            walk_plain(w, p, len);
        else
            walk_any(w, p, len, segs[s].escape);
    }
    if (!w->ended)
        walk_newline(w);
}

mx_render_status
mx_render_text(mx_out *o, const mx_seg *segs, size_t nsegs, const char *subtype,
               size_t sublen, int eight_bit)
{
    static const char ct[] = "Content-Type: text/";
    static const char cs[] = "; charset=\"utf-8\"\r\nContent-Transfer-Encoding: ";
    walk m = {0}, w = {0};
    int high;

    if (o->err != MX_RENDER_OK)
        return o->err;
    text_walk(&m, segs, nsegs);
    high = m.high;
    if (m.nul || m.longest > MX_RENDER_LINE_MAX || (high && !eight_bit))
        return MX_RENDER_DECLINED;              /* quoted-printable or base64 */
    mx_out_put(o, ct, sizeof ct - 1);
    mx_out_put(o, subtype, sublen);
    mx_out_put_lines(o, cs, sizeof cs - 1);
    mx_out_put(o, high ? "8bit" : "7bit", 4);
    mx_out_crlf(o);
    mx_out_crlf(o);
    if (!room(o, m.n))
        return o->err;
    w.out = o->p + o->len;
    text_walk(&w, segs, nsegs);
    if (w.n != m.n)
        return MX_RENDER_DECLINED;              /* cannot happen: the same walk */
    o->len += m.n;
    if (m.longest > o->longest)
        o->longest = m.longest;
    o->line_start = o->len;                     /* the walk ends with a line end */
    return mx_out_status(o);
}
