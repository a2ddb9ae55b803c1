/* sasl.c - SASL client messages and base64; see sasl.h. */
#include "sasl.h"

#include <string.h>

static const char b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

mx_sasl_status
mx_b64_encode(const unsigned char *in, size_t n, char *out, size_t cap,
              size_t *out_len)
{
    size_t i, o = 0, need;

    if (n > (((size_t)-1) / 4) * 3 - 3)
        return MX_SASL_E_TOO_LONG;
    need = ((n + 2) / 3) * 4 + 1;
    if (need > cap)
        return MX_SASL_E_TOO_LONG;
    for (i = 0; i + 2 < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64chars[(v >> 18) & 63];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = b64chars[(v >> 6) & 63];
        out[o++] = b64chars[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < n)
            v |= (unsigned)in[i + 1] << 8;
        out[o++] = b64chars[(v >> 18) & 63];
        out[o++] = b64chars[(v >> 12) & 63];
        out[o++] = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    *out_len = o;
    return MX_SASL_OK;
}

static int
b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

mx_sasl_status
mx_b64_decode(const char *in, size_t n, unsigned char *out, size_t cap,
              size_t *out_len)
{
    size_t i, o = 0;

    if (n % 4)
        return MX_SASL_E_BASE64;
    for (i = 0; i < n; i += 4) {
        int v[4], k, pad = 0;
        for (k = 0; k < 4; k++) {
            unsigned char c = (unsigned char)in[i + k];
            if (c == '=') {
                /* padding: only in the last group, only at its end */
                if (i + 4 != n || k < 2)
                    return MX_SASL_E_BASE64;
                pad++;
                v[k] = 0;
            } else {
                if (pad)
                    return MX_SASL_E_BASE64;
                if ((v[k] = b64val(c)) < 0)
                    return MX_SASL_E_BASE64;
            }
        }
        /* RFC 4648 §3.5: the bits padding leaves over must be zero */
        if ((pad == 2 && (v[1] & 15)) || (pad == 1 && (v[2] & 3)))
            return MX_SASL_E_BASE64;
        if ((size_t)(3 - pad) > cap - o)
            return MX_SASL_E_TOO_LONG;
        out[o++] = (unsigned char)(v[0] << 2 | v[1] >> 4);
        if (pad < 2)
            out[o++] = (unsigned char)((v[1] & 15) << 4 | v[2] >> 2);
        if (pad < 1)
            out[o++] = (unsigned char)((v[2] & 3) << 6 | v[3]);
    }
    *out_len = o;
    return MX_SASL_OK;
}

mx_sasl_status
mx_sasl_plain_raw(const char *authzid, size_t authzid_len, const char *user,
                  size_t user_len, const char *pass, size_t pass_len,
                  unsigned char *out, size_t cap, size_t *out_len)
{
    size_t n = 0;

    if (authzid_len > MX_SASL_FIELD_MAX || user_len > MX_SASL_FIELD_MAX ||
        pass_len > MX_SASL_FIELD_MAX)
        return MX_SASL_E_TOO_LONG;
    if (memchr(authzid, 0, authzid_len) || memchr(user, 0, user_len) ||
        memchr(pass, 0, pass_len))
        return MX_SASL_E_NUL;
    if (authzid_len + user_len + pass_len + 2 > cap)
        return MX_SASL_E_TOO_LONG;
    memcpy(out + n, authzid, authzid_len);
    n += authzid_len;
    out[n++] = 0;
    memcpy(out + n, user, user_len);
    n += user_len;
    out[n++] = 0;
    memcpy(out + n, pass, pass_len);
    n += pass_len;
    *out_len = n;
    return MX_SASL_OK;
}

mx_sasl_status
mx_sasl_plain(const char *authzid, size_t authzid_len, const char *user,
              size_t user_len, const char *pass, size_t pass_len, char *out,
              size_t cap, size_t *out_len)
{
    unsigned char raw[3 * MX_SASL_FIELD_MAX + 2];
    size_t n = 0;
    mx_sasl_status st;

    st = mx_sasl_plain_raw(authzid, authzid_len, user, user_len, pass, pass_len,
                           raw, sizeof(raw), &n);
    if (st == MX_SASL_OK)
        st = mx_b64_encode(raw, n, out, cap, out_len);
    mx_wipe(raw, sizeof(raw));
    return st;
}

/* ---- OAuth 2.0 bearer tokens (XOAUTH2, OAUTHBEARER) ----------------------- */

mx_sasl_status
mx_sasl_check_field(const char *p, size_t n)
{
    size_t i;

    if (n > MX_SASL_FIELD_MAX)
        return MX_SASL_E_TOO_LONG;
    for (i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
            return p[i] ? MX_SASL_E_CONTROL : MX_SASL_E_NUL;
    return MX_SASL_OK;
}

/* RFC 6750 §2.1 b64token is narrower; any visible ASCII is let through so
 * that the server, not we, judges an odd token. */
mx_sasl_status
mx_sasl_check_token(const char *p, size_t n)
{
    size_t i;

    if (n == 0)
        return MX_SASL_E_EMPTY;
    if (n > MX_SASL_BLOB_MAX)
        return MX_SASL_E_TOO_LONG;
    for (i = 0; i < n; i++)
        if ((unsigned char)p[i] <= 0x20 || (unsigned char)p[i] >= 0x7f)
            return MX_SASL_E_TOKEN;
    return MX_SASL_OK;
}

size_t
mx_sasl_oauth_size(size_t user_len, size_t host_len, size_t token_len)
{
    /* "n,a=" user*3 "," ^Ahost= host ^Aport=65535 ^Aauth=Bearer  token ^A^A;
     * XOAUTH2's "user=" user "^Aauth=Bearer " token "^A^A" is shorter */
    return 4 + 3 * user_len + 1 + 6 + host_len + 11 + 13 + token_len + 2;
}

static int
put(unsigned char *out, size_t cap, size_t *pos, const char *p, size_t n)
{
    if (n > cap - *pos)
        return -1;
    memcpy(out + *pos, p, n);
    *pos += n;
    return 0;
}

mx_sasl_status
mx_sasl_xoauth2(const char *user, size_t user_len, const char *token,
                size_t token_len, unsigned char *out, size_t cap,
                size_t *out_len)
{
    size_t pos = 0;
    mx_sasl_status st;

    if ((st = mx_sasl_check_field(user, user_len)) != MX_SASL_OK ||
        (st = mx_sasl_check_token(token, token_len)) != MX_SASL_OK)
        return st;
    if (put(out, cap, &pos, "user=", 5) < 0 ||
        put(out, cap, &pos, user, user_len) < 0 ||
        put(out, cap, &pos, "\x01" "auth=Bearer ", 13) < 0 ||
        put(out, cap, &pos, token, token_len) < 0 ||
        put(out, cap, &pos, "\x01\x01", 2) < 0) {
        mx_wipe(out, pos);
        return MX_SASL_E_TOO_LONG;
    }
    *out_len = pos;
    return MX_SASL_OK;
}

mx_sasl_status
mx_sasl_oauthbearer(const char *user, size_t user_len, const char *host,
                    size_t host_len, unsigned port, const char *token,
                    size_t token_len, unsigned char *out, size_t cap,
                    size_t *out_len)
{
    size_t pos = 0, i;
    mx_sasl_status st;
    int bad;

    if ((st = mx_sasl_check_field(user, user_len)) != MX_SASL_OK ||
        (st = mx_sasl_check_field(host, host_len)) != MX_SASL_OK ||
        (st = mx_sasl_check_token(token, token_len)) != MX_SASL_OK)
        return st;
    if (port > 65535)
        return MX_SASL_E_TOO_LONG;
    bad = put(out, cap, &pos, "n,a=", 4) < 0;
    for (i = 0; !bad && i < user_len; i++) {
        /* RFC 5801 saslname: ',' and '=' are escaped */
        if (user[i] == ',')
            bad = put(out, cap, &pos, "=2C", 3) < 0;
        else if (user[i] == '=')
            bad = put(out, cap, &pos, "=3D", 3) < 0;
        else
            bad = put(out, cap, &pos, user + i, 1) < 0;
    }
    bad = bad || put(out, cap, &pos, ",", 1) < 0;
    if (!bad && host_len)
        bad = put(out, cap, &pos, "\x01host=", 6) < 0 ||
              put(out, cap, &pos, host, host_len) < 0;
    if (!bad && port) {
        char digits[8];
        size_t nd = 0;
        unsigned v = port;
        char rev[8];
        do {
            rev[nd++] = (char)('0' + v % 10);
            v /= 10;
        } while (v);
        for (i = 0; i < nd; i++)
            digits[i] = rev[nd - 1 - i];
        bad = put(out, cap, &pos, "\x01port=", 6) < 0 ||
              put(out, cap, &pos, digits, nd) < 0;
    }
    bad = bad || put(out, cap, &pos, "\x01" "auth=Bearer ", 13) < 0 ||
          put(out, cap, &pos, token, token_len) < 0 ||
          put(out, cap, &pos, "\x01\x01", 2) < 0;
    if (bad) {
        mx_wipe(out, pos);
        return MX_SASL_E_TOO_LONG;
    }
    *out_len = pos;
    return MX_SASL_OK;
}

mx_sasl_status
mx_sasl_decode_challenge(const char *b64, size_t n, unsigned char *out,
                         size_t cap, size_t *out_len)
{
    if (n > (MX_SASL_BLOB_MAX / 3) * 4 + 4)
        return MX_SASL_E_TOO_LONG;
    if (cap > MX_SASL_BLOB_MAX)
        cap = MX_SASL_BLOB_MAX;
    *out_len = 0;
    return n ? mx_b64_decode(b64, n, out, cap, out_len) : MX_SASL_OK;
}

mx_sasl_status
mx_sasl_check_challenge(const char *b64, size_t n)
{
    unsigned char buf[MX_SASL_CHALLENGE_MAX];
    size_t len;

    if (n > (MX_SASL_CHALLENGE_MAX / 3) * 4)
        return MX_SASL_E_TOO_LONG;
    return mx_b64_decode(b64, n, buf, sizeof(buf), &len);
}

/* memset through a volatile pointer: the store cannot be proven dead */
static void *(*const volatile memset_v)(void *, int, size_t) = memset;

void
mx_wipe(void *p, size_t n)
{
    if (p && n)
        memset_v(p, 0, n);
}

const char *
mx_sasl_strerror(mx_sasl_status st)
{
    switch (st) {
    case MX_SASL_OK: return "ok";
    case MX_SASL_E_TOO_LONG: return "longer than 255 octets";
    case MX_SASL_E_NUL: return "contains a NUL character";
    case MX_SASL_E_BASE64: return "is not valid base64";
    case MX_SASL_E_CONTROL: return "contains a control character";
    case MX_SASL_E_TOKEN: return "is not a bearer token (printable ASCII without spaces)";
    case MX_SASL_E_EMPTY: return "is empty";
    }
    return "invalid";
}
