/* libFuzzer harness: reply.c.  The input is fed whole and then byte by byte
 * from the same start; both must agree, and every reply must be in bounds. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "reply.h"

static void
check(const mx_reply *r)
{
    size_t i;

    if (r->code < 200 || r->code > 559 || r->nlines == 0 || r->nlines > MX_REPLY_LINES_MAX ||
        r->text_len > MX_REPLY_TEXT_MAX)
        abort();
    for (i = 0; i < r->nlines; i++)
        if (r->line_off[i] + r->line_len[i] > r->text_len)
            abort();
}

/* Parses everything; returns the number of complete replies and the final status. */
static int
run(const uint8_t *data, size_t size, size_t step, mx_reply_status *last)
{
    static mx_reply_parser p;   /* harness-local, large: kept off the stack */
    static mx_reply r;
    size_t pos = 0;
    int n = 0;

    mx_reply_parser_init(&p);
    *last = MX_REPLY_INCOMPLETE;
    while (pos < size) {
        size_t used = 0, avail = size - pos;
        if (step && avail > step)
            avail = step;
        *last = mx_reply_parse(&p, data + pos, avail, &used, &r);
        if (used > avail)
            abort();
        pos += used;
        if (*last == MX_REPLY_COMPLETE) {
            check(&r);
            n++;
        } else if (*last != MX_REPLY_INCOMPLETE) {
            break;
        }
    }
    return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mx_reply_status a, b;
    int na = run(data, size, 0, &a), nb = run(data, size, 1, &b);

    if (na != nb || a != b)
        abort();
    return 0;
}
