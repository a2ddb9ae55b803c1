/* reply.c - sans-I/O SMTP reply parser; see reply.h. */
#include "reply.h"

#include <string.h>

/* the bounds in the error texts, from the constants themselves */
#define MX_STR_(x) #x
#define MX_STR(x) MX_STR_(x)

void
mx_reply_parser_init(mx_reply_parser *p)
{
    p->started = 0;
    p->line_len = 0;
}

static int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Reads "c.sss.ddd" at the start of text.  Kept only when its class digit is
 * the reply's own first digit (the rule Postfix's smtp_chat.c applies), so a
 * "250 1.2.3 text" does not pass for an enhanced code. */
static void
parse_enhanced(const char *t, size_t n, int code, char *out)
{
    size_t i = 0, part, digits;

    out[0] = '\0';
    if (n < 5 || t[0] != (char)('0' + code / 100))
        return;
    if (t[0] != '2' && t[0] != '4' && t[0] != '5')
        return;
    i = 1;
    for (part = 0; part < 2; part++) {
        if (i >= n || t[i] != '.')
            return;
        i++;
        for (digits = 0; i < n && is_digit((unsigned char)t[i]); i++)
            digits++;
        if (digits < 1 || digits > 3)
            return;
    }
    if (i < n && t[i] != ' ' && t[i] != '\t')
        return;
    /* i <= 1 + 2 * 4 = 9 < MX_ENHANCED_MAX */
    memcpy(out, t, i);
    out[i] = '\0';
}

/* Checks one line (terminator already removed) and appends it to out.
 * Returns MX_REPLY_COMPLETE for a last line, MX_REPLY_INCOMPLETE for a
 * continuation line, or an error. */
static mx_reply_status
take_line(mx_reply_parser *p, mx_reply *out)
{
    const unsigned char *l = (const unsigned char *)p->line;
    size_t n = p->line_len, i, tlen;
    int code, last;

    if (n < 3 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '5' ||
        !is_digit(l[2]))
        return MX_REPLY_E_SYNTAX;
    code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
    if (n == 3)
        last = 1;                       /* "250" alone: a last line, no text */
    else if (l[3] == ' ')
        last = 1;
    else if (l[3] == '-')
        last = 0;
    else
        return MX_REPLY_E_SYNTAX;
    tlen = n > 4 ? n - 4 : 0;
    for (i = 4; i < n; i++) {
        if ((l[i] < 0x20 && l[i] != '\t') || l[i] == 0x7f)
            return MX_REPLY_E_BAD_BYTE;
    }
    if (!p->started) {
        memset(out->enhanced, 0, sizeof(out->enhanced));
        out->code = code;
        out->nlines = 0;
        out->text_len = 0;
        p->started = 1;
    } else if (code != out->code) {
        return MX_REPLY_E_MISMATCH;
    }
    if (out->nlines >= MX_REPLY_LINES_MAX)
        return MX_REPLY_E_TOO_MANY_LINES;
    if (tlen > MX_REPLY_TEXT_MAX - out->text_len)
        return MX_REPLY_E_TOO_LONG;
    if (tlen)
        memcpy(out->text + out->text_len, l + 4, tlen);
    out->line_off[out->nlines] = out->text_len;
    out->line_len[out->nlines] = tlen;
    if (out->nlines == 0)
        parse_enhanced(out->text, tlen, code, out->enhanced);
    out->nlines++;
    out->text_len += tlen;
    return last ? MX_REPLY_COMPLETE : MX_REPLY_INCOMPLETE;
}

mx_reply_status
mx_reply_parse(mx_reply_parser *p, const unsigned char *buf, size_t len,
               size_t *consumed, mx_reply *out)
{
    size_t i = 0;

    *consumed = 0;
    while (i < len) {
        const unsigned char *nl = memchr(buf + i, '\n', len - i);
        size_t take = nl ? (size_t)(nl - (buf + i)) : len - i;

        /* the line so far, without its LF, must fit the line buffer */
        if (take > MX_REPLY_LINE_MAX - p->line_len) {
            *consumed = i;
            return MX_REPLY_E_LINE_TOO_LONG;
        }
        memcpy(p->line + p->line_len, buf + i, take);
        p->line_len += take;
        i += take;
        if (!nl)
            break;
        i++;                                    /* the LF */
        if (p->line_len > 0 && p->line[p->line_len - 1] == '\r')
            p->line_len--;                      /* CRLF; a bare LF is tolerated */
        mx_reply_status st = take_line(p, out);
        p->line_len = 0;
        if (st != MX_REPLY_INCOMPLETE) {
            *consumed = i;
            if (st == MX_REPLY_COMPLETE)
                p->started = 0;
            return st;
        }
    }
    *consumed = i;
    return MX_REPLY_INCOMPLETE;
}

const char *
mx_reply_strerror(mx_reply_status st)
{
    switch (st) {
    case MX_REPLY_INCOMPLETE: return "reply incomplete";
    case MX_REPLY_COMPLETE: return "reply complete";
    case MX_REPLY_E_SYNTAX: return "reply line does not start with a valid 3-digit code (2xx-5xx)";
    case MX_REPLY_E_MISMATCH: return "lines of one multi-line reply carry different codes";
    case MX_REPLY_E_LINE_TOO_LONG: return "reply line longer than " MX_STR(MX_REPLY_LINE_MAX) " octets";
    case MX_REPLY_E_TOO_MANY_LINES: return "reply has more than " MX_STR(MX_REPLY_LINES_MAX) " lines";
    case MX_REPLY_E_TOO_LONG: return "reply text longer than " MX_STR(MX_REPLY_TEXT_MAX) " octets";
    case MX_REPLY_E_BAD_BYTE: return "reply contains a NUL, bare CR or other control byte";
    }
    return "unknown reply parser status";
}
