/* verdict.c - pure: what a reply means after a command (see verdict.h). */
#include <stddef.h>
#include <stdio.h>

#include "verdict.h"

/* Per command: the 3xx code it asks for (0: none), and whether a 2xx is
 * out of step (DATA asks for 354; a 250 means the server skipped the body). */
static const struct {
    const char *name;
    int cont;
    int no_2xx;
} rules[MX_AFTER_COUNT] = {
    [MX_AFTER_GREETING] = {"the greeting", 0, 0},
    [MX_AFTER_EHLO] = {"EHLO", 0, 0},
    [MX_AFTER_STARTTLS] = {"STARTTLS", 0, 0},
    [MX_AFTER_AUTH] = {"AUTH", 334, 0},
    [MX_AFTER_MAIL] = {"MAIL", 0, 0},
    [MX_AFTER_RCPT] = {"RCPT", 0, 0},
    [MX_AFTER_DATA] = {"DATA", 354, 1},
    [MX_AFTER_END_OF_DATA] = {"END_OF_DATA", 0, 0},
    [MX_AFTER_BDAT] = {"END_OF_DATA", 0, 0},
    [MX_AFTER_RSET] = {"RSET", 0, 0},
    [MX_AFTER_NOOP] = {"NOOP", 0, 0},
    [MX_AFTER_QUIT] = {"QUIT", 0, 0},
};

mx_verdict
mx_verdict_of(mx_after after, int code)
{
    if (code == 421)
        return MX_V_CLOSING;
    switch (code / 100) {
    case 2:
        return rules[after].no_2xx ? MX_V_OUT_OF_STEP : MX_V_ACCEPTED;
    case 3:
        return code == rules[after].cont ? MX_V_CONTINUE : MX_V_OUT_OF_STEP;
    case 4:
    case 5:
        return MX_V_REFUSED;
    default:
        return MX_V_OUT_OF_STEP;
    }
}

void
mx_verdict_why(mx_after after, int code, char *out, size_t cap)
{
    if (code / 100 == 2 && rules[after].no_2xx)
        snprintf(out, cap, "the server did not answer DATA with 354; the body was not sent");
    else
        snprintf(out, cap, "a %d reply cannot answer %s", code, rules[after].name);
}
