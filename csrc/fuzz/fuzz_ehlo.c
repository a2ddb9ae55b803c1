/* libFuzzer harness: ehlo.c on whatever reply.c accepts. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "ehlo.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static mx_reply_parser p;
    static mx_reply r;
    mx_caps caps;
    size_t used, i;

    mx_reply_parser_init(&p);
    if (mx_reply_parse(&p, data, size, &used, &r) != MX_REPLY_COMPLETE)
        return 0;
    mx_ehlo_parse(&r, &caps);
    if ((caps.auth & ~0x7fu) != 0)
        abort();
    for (i = 0; i < r.nlines; i++) {
        size_t kw, plen;
        const char *params;
        mx_ehlo_split(r.text + r.line_off[i], r.line_len[i], &kw, &params, &plen);
        if (kw > r.line_len[i] || params + plen != r.text + r.line_off[i] + r.line_len[i])
            abort();
    }
    return 0;
}
