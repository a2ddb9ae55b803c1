/* libFuzzer harness: body.c.  The first byte picks the input chunk and the
 * output capacity; the encoded stream must un-stuff to the CRLF-normalised
 * input, hold no bare CR or LF, end with exactly one CRLF.CRLF, and match
 * the scanner's SIZE.  The BDAT encoding (no stuffing, no end marker) of the
 * same input, in the same chunks, must be the normalised message exactly. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "body.h"

/* Encodes data in pieces of `chunk` bytes into windows of `cap` bytes, then
 * finishes; returns the wire length.  wire holds wcap bytes. */
static size_t
encode_all(mx_body_enc *enc, const uint8_t *data, size_t size, size_t chunk, size_t cap,
           unsigned char *wire, size_t wcap)
{
    size_t pos = 0, w = 0;

    while (pos < size) {
        size_t used = 0, avail = size - pos, n;
        if (avail > chunk)
            avail = chunk;
        if (w + cap > wcap)
            abort();
        n = mx_body_encode(enc, data + pos, avail, &used, wire + w, cap);
        if (n > cap || (n == 0 && used == 0))
            abort();
        w += n;
        pos += used;
    }
    if (w + MX_BODY_FINISH_MAX > wcap)
        abort();
    return w + mx_body_finish(enc, wire + w, MX_BODY_FINISH_MAX);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    unsigned char *wire, *norm;
    size_t chunk, cap, w, nlen = 0, i, wcap;
    mx_body_enc enc;
    mx_body_scan_state scan;

    if (size < 1)
        return 0;
    chunk = 1 + (data[0] & 15);
    cap = MX_BODY_STEP_MAX + (data[0] >> 4);
    data++;
    size--;
    wcap = 2 * size + cap + MX_BODY_FINISH_MAX;   /* room for one whole window */
    wire = malloc(wcap);
    norm = malloc(2 * size + 3);
    if (!wire || !norm)
        abort();
    mx_body_init(&enc);
    w = encode_all(&enc, data, size, chunk, cap, wire, wcap);

    /* the expected message: CR, LF and CRLF all become CRLF; a last CRLF */
    for (i = 0; i < size; i++) {
        if (data[i] == '\r') {
            norm[nlen++] = '\r';
            norm[nlen++] = '\n';
            if (i + 1 < size && data[i + 1] == '\n')
                i++;
        } else if (data[i] == '\n') {
            norm[nlen++] = '\r';
            norm[nlen++] = '\n';
        } else {
            norm[nlen++] = data[i];
        }
    }
    if (nlen && !(nlen >= 2 && norm[nlen - 2] == '\r' && norm[nlen - 1] == '\n')) {
        norm[nlen++] = '\r';
        norm[nlen++] = '\n';
    }
    mx_body_scan_init(&scan);
    mx_body_scan(&scan, data, size);
    mx_body_scan_finish(&scan);
    if (scan.info.size != nlen)
        abort();
    /* un-stuff the wire and compare */
    {
        size_t r = 0, o = 0;
        int bol = 1;
        if (w < 3 || memcmp(wire + w - 3, ".\r\n", 3) != 0)
            abort();
        if (w > 3 && (w < 5 || memcmp(wire + w - 5, "\r\n", 2) != 0))
            abort();
        for (r = 0; r < w - 3; r++) {
            unsigned char c = wire[r];
            if (c == '\r' && (r + 1 >= w || wire[r + 1] != '\n'))
                abort();
            if (c == '\n' && (r == 0 || wire[r - 1] != '\r'))
                abort();
            if (bol && c == '.') {
                if (r + 1 >= w - 3 || wire[r + 1] != '.')
                    abort();   /* a lone dot at line start before the end marker */
                r++;
            }
            if (o >= nlen || norm[o] != wire[r])
                abort();
            o++;
            bol = (c == '\n');
        }
        if (o != nlen)
            abort();
    }
    /* BDAT: the wire is the normalised message, byte for byte */
    mx_body_init_bdat(&enc);
    w = encode_all(&enc, data, size, chunk, cap, wire, wcap);
    if (w != nlen || memcmp(wire, norm, nlen) != 0)
        abort();
    free(wire);
    free(norm);
    return 0;
}
