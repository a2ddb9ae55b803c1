/* libFuzzer harness: sasl.c base64 decoding of 334 challenges (the 512-octet
 * LOGIN check and the 64 KiB bounded decoder), a decode/encode round trip,
 * and XOAUTH2 / OAUTHBEARER framing of arbitrary fields. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sasl.h"

/* Frames the input cut into user | host | token at the first two 0xff
 * bytes and checks the output against sasl.h's promises. */
static void
frame(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *user = p, *host, *token;
    const uint8_t *a = memchr(data, 0xff, size), *b;
    size_t ulen, hlen, tlen, cap, len = 0;
    unsigned port = size ? data[0] * 257u : 0;
    unsigned char *out;
    mx_sasl_status st;

    if (!a)
        return;
    b = memchr(a + 1, 0xff, size - (size_t)(a + 1 - data));
    if (!b)
        return;
    ulen = (size_t)(a - data);
    host = (const char *)a + 1;
    hlen = (size_t)(b - a - 1);
    token = (const char *)b + 1;
    tlen = size - (size_t)(b + 1 - data);
    cap = mx_sasl_oauth_size(ulen, hlen, tlen);
    out = malloc(cap);
    if (!out)
        return;
    st = mx_sasl_xoauth2(user, ulen, token, tlen, out, cap, &len);
    if (st == MX_SASL_OK) {
        if (len != 5 + ulen + 13 + tlen + 2 || memcmp(out, "user=", 5) != 0 ||
            out[len - 1] != 1 || out[len - 2] != 1)
            abort();
    } else if (mx_sasl_check_field(user, ulen) == MX_SASL_OK &&
               mx_sasl_check_token(token, tlen) == MX_SASL_OK) {
        abort();    /* valid fields must frame into the promised size */
    }
    st = mx_sasl_oauthbearer(user, ulen, host, hlen, port, token, tlen, out, cap, &len);
    if (st == MX_SASL_OK) {
        size_t commas = 0, i;
        if (len > cap || memcmp(out, "n,a=", 4) != 0 || out[len - 1] != 1 || out[len - 2] != 1)
            abort();
        /* the GS2 header has exactly two unescaped commas before the first ^A */
        for (i = 0; i < len && out[i] != 1; i++)
            commas += out[i] == ',';
        if (commas != 2)
            abort();
    } else if (mx_sasl_check_field(user, ulen) == MX_SASL_OK &&
               mx_sasl_check_field(host, hlen) == MX_SASL_OK &&
               mx_sasl_check_token(token, tlen) == MX_SASL_OK) {
        abort();
    }
    mx_wipe(out, cap);
    free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char dec[4096];
    char enc[8192];
    size_t dlen, elen;
    unsigned char *big;

    (void)mx_sasl_check_challenge((const char *)data, size);
    frame(data, size);
    big = malloc(MX_SASL_BLOB_MAX);
    if (big) {
        if (mx_sasl_decode_challenge((const char *)data, size, big, MX_SASL_BLOB_MAX,
                                     &dlen) == MX_SASL_OK && dlen > MX_SASL_BLOB_MAX)
            abort();
        free(big);
    }
    if (size > 4096)
        return 0;
    if (mx_b64_decode((const char *)data, size, dec, sizeof(dec), &dlen) != MX_SASL_OK)
        return 0;
    if (dlen > sizeof(dec))
        abort();
    if (mx_b64_encode(dec, dlen, enc, sizeof(enc), &elen) != MX_SASL_OK)
        abort();
    /* strict decoding means the canonical encoding is the input */
    if (elen != size || memcmp(enc, data, size) != 0)
        abort();
    return 0;
}
