/* ehlo.c - EHLO capability parsing; see ehlo.h. */
#include "ehlo.h"

#include <string.h>

static int
eq_nocase(const char *a, size_t alen, const char *b)
{
    size_t i, blen = strlen(b);

    if (alen != blen)
        return 0;
    for (i = 0; i < alen; i++) {
        char c = a[i];
        if (c >= 'a' && c <= 'z')
            c = (char)(c - 'a' + 'A');
        if (c != b[i])
            return 0;
    }
    return 1;
}

void
mx_ehlo_split(const char *line, size_t len, size_t *kw_len,
              const char **params, size_t *params_len)
{
    size_t i = 0;

    while (i < len && line[i] != ' ' && line[i] != '=')
        i++;
    *kw_len = i;
    while (i < len && (line[i] == ' ' || line[i] == '='))
        i++;
    *params = line + i;
    *params_len = len - i;
}

static const struct {
    const char *name;
    unsigned bit;
} mechs[] = {
    {"PLAIN", MX_AUTH_PLAIN},     {"LOGIN", MX_AUTH_LOGIN},
    {"CRAM-MD5", MX_AUTH_CRAM_MD5}, {"XOAUTH2", MX_AUTH_XOAUTH2},
    {"GSSAPI", MX_AUTH_GSSAPI},   {"NTLM", MX_AUTH_NTLM},
    {"OAUTHBEARER", MX_AUTH_OAUTHBEARER},
};

unsigned
mx_auth_mech_bit(const char *name, size_t len)
{
    size_t i;

    for (i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++)
        if (eq_nocase(name, len, mechs[i].name))
            return mechs[i].bit;
    return 0;
}

const char *
mx_auth_mech_name(unsigned bit)
{
    size_t i;

    for (i = 0; i < sizeof(mechs) / sizeof(mechs[0]); i++)
        if (mechs[i].bit == bit)
            return mechs[i].name;
    return NULL;
}

/* Parses a decimal SIZE value; saturates instead of overflowing, and reads
 * anything that is not a plain number as "no limit declared". */
static uint64_t
parse_size(const char *p, size_t n)
{
    uint64_t v = 0;
    size_t i;

    for (i = 0; i < n && p[i] != ' '; i++) {
        unsigned d;
        if (p[i] < '0' || p[i] > '9')
            return 0;
        d = (unsigned)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return UINT64_MAX;
        v = v * 10 + d;
    }
    return v;
}

static void
parse_auth(const char *p, size_t n, mx_caps *caps)
{
    size_t i = 0;

    while (i < n) {
        size_t start;
        unsigned bit;

        while (i < n && p[i] == ' ')
            i++;
        start = i;
        while (i < n && p[i] != ' ')
            i++;
        if (i == start)
            break;
        bit = mx_auth_mech_bit(p + start, i - start);
        caps->auth |= bit ? bit : MX_AUTH_OTHER;
    }
}

/* Does this capability line list SASL mechanisms? */
static int
is_auth_line(const char *line, size_t kw_len)
{
    return eq_nocase(line, kw_len, "AUTH") || eq_nocase(line, kw_len, "X-EXPS");
}

static const struct {
    const char *name;
    unsigned bit;
} exts[] = {
    {"STARTTLS", MX_EXT_STARTTLS},   {"PIPELINING", MX_EXT_PIPELINING},
    {"8BITMIME", MX_EXT_8BITMIME},   {"SMTPUTF8", MX_EXT_SMTPUTF8},
    {"CHUNKING", MX_EXT_CHUNKING},   {"BINARYMIME", MX_EXT_BINARYMIME},
    {"DSN", MX_EXT_DSN},             {"ENHANCEDSTATUSCODES", MX_EXT_ENHANCEDSTATUSCODES},
    {"SIZE", MX_EXT_SIZE},           {"AUTH", MX_EXT_AUTH},
};

void
mx_ehlo_parse(const mx_reply *r, mx_caps *caps)
{
    size_t li, i;

    memset(caps, 0, sizeof(*caps));
    for (li = 1; li < r->nlines; li++) {
        const char *line = r->text + r->line_off[li];
        const char *params;
        size_t kw_len, params_len;

        mx_ehlo_split(line, r->line_len[li], &kw_len, &params, &params_len);
        if (is_auth_line(line, kw_len)) {
            caps->ext |= MX_EXT_AUTH;
            parse_auth(params, params_len, caps);
            continue;
        }
        for (i = 0; i < sizeof(exts) / sizeof(exts[0]); i++) {
            if (!eq_nocase(line, kw_len, exts[i].name))
                continue;
            caps->ext |= exts[i].bit;
            if (exts[i].bit == MX_EXT_SIZE)
                caps->size = parse_size(params, params_len);
            break;
        }
    }
}

size_t
mx_ehlo_auth_list(const mx_reply *r, char *out, size_t cap)
{
    size_t off[MX_EHLO_MECHS_MAX], len[MX_EHLO_MECHS_MAX];
    size_t nm = 0, pos = 0, li;

    if (cap == 0)
        return 0;
    out[0] = '\0';
    for (li = 1; li < r->nlines; li++) {
        const char *line = r->text + r->line_off[li], *p;
        size_t kw_len, n, i = 0;

        mx_ehlo_split(line, r->line_len[li], &kw_len, &p, &n);
        if (!is_auth_line(line, kw_len))
            continue;
        while (i < n && nm < MX_EHLO_MECHS_MAX) {
            size_t start, wl, k, j;
            int dup = 0;

            while (i < n && p[i] == ' ')
                i++;
            start = i;
            while (i < n && p[i] != ' ')
                i++;
            wl = i - start;
            if (wl == 0)
                break;
            for (k = 0; k < nm && !dup; k++) {
                if (len[k] != wl)
                    continue;
                dup = 1;
                for (j = 0; j < wl; j++) {
                    char c = p[start + j];
                    if (c >= 'a' && c <= 'z')
                        c = (char)(c - 'a' + 'A');
                    if (out[off[k] + j] != c) {
                        dup = 0;
                        break;
                    }
                }
            }
            /* the name, a separating space before it, and the NUL */
            if (dup || wl + (pos ? 1 : 0) + 1 > cap - pos)
                continue;
            if (pos)
                out[pos++] = ' ';
            off[nm] = pos;
            len[nm++] = wl;
            for (j = 0; j < wl; j++) {
                char c = p[start + j];
                out[pos++] = (char)((c >= 'a' && c <= 'z') ? c - 'a' + 'A' : c);
            }
            out[pos] = '\0';
        }
    }
    return pos;
}
