/* verdict.h - pure: what a reply means after a command.  The one place for
 * the rules every caller used to write again: a 421 closes the session
 * whatever it answers; a 3xx belongs only after AUTH (334) and DATA (354),
 * anywhere else the server is out of step; DATA must not be answered 2xx. */
#ifndef MX_VERDICT_H
#define MX_VERDICT_H

typedef enum {
    MX_AFTER_GREETING, MX_AFTER_EHLO, MX_AFTER_STARTTLS, MX_AFTER_AUTH,
    MX_AFTER_MAIL, MX_AFTER_RCPT, MX_AFTER_DATA, MX_AFTER_END_OF_DATA,
    MX_AFTER_BDAT, MX_AFTER_RSET, MX_AFTER_NOOP, MX_AFTER_QUIT,
    MX_AFTER_COUNT
} mx_after;

typedef enum {
    MX_V_ACCEPTED,      /* 2xx */
    MX_V_CONTINUE,      /* the 3xx this command asks for: 334 to AUTH, 354 to DATA */
    MX_V_REFUSED,       /* 4xx or 5xx other than 421: the session goes on */
    MX_V_CLOSING,       /* 421: the server closes; nothing after it was taken */
    MX_V_OUT_OF_STEP    /* a reply that cannot answer this command */
} mx_verdict;

mx_verdict mx_verdict_of(mx_after after, int code);

/* "a 250 reply cannot answer DATA"-style text for MX_V_OUT_OF_STEP, into
 * out (cap >= 96). */
void mx_verdict_why(mx_after after, int code, char *out, size_t cap);

#endif
