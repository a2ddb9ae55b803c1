/* libFuzzer harness: ehlo.c on whatever reply.c accepts, including the
 * union of AUTH / X-EXPS mechanisms. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ehlo.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static mx_reply_parser p;
    static mx_reply r;
    static char list[MX_REPLY_TEXT_MAX + 1];
    mx_caps caps;
    size_t used, i, n, cap;

    mx_reply_parser_init(&p);
    if (mx_reply_parse(&p, data, size, &used, &r) != MX_REPLY_COMPLETE)
        return 0;
    mx_ehlo_parse(&r, &caps);
    if ((caps.auth & ~0xffu) != 0)
        abort();
    /* the union fits, is NUL-terminated, upper case, single-spaced */
    cap = size ? 1 + data[0] % sizeof(list) : sizeof(list);
    n = mx_ehlo_auth_list(&r, list, cap);
    if (n >= cap || strlen(list) != n || (n && !(caps.ext & 0x0200u)))
        abort();
    for (i = 0; i < n; i++)
        if ((list[i] >= 'a' && list[i] <= 'z') || (list[i] == ' ' && (i == 0 || i + 1 == n ||
                                                                     list[i + 1] == ' ')))
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
