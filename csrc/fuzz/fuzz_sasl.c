/* libFuzzer harness: sasl.c base64 decoding of 334 challenges and a
 * decode/encode round trip. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sasl.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char dec[4096];
    char enc[8192];
    size_t dlen, elen;

    (void)mx_sasl_check_challenge((const char *)data, size);
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
