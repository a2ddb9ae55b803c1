/* cmd.c - SMTP command formatting; see cmd.h. */
#include "cmd.h"

#include <string.h>

static int
is_control(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* Appends n bytes at *pos, if they fit in cap. */
static mx_cmd_status
put(char *out, size_t cap, size_t *pos, const char *s, size_t n)
{
    if (n > cap || *pos > cap - n)
        return MX_CMD_E_TOO_LONG;
    memcpy(out + *pos, s, n);
    *pos += n;
    return MX_CMD_OK;
}

mx_cmd_status
mx_cmd_check_address(const char *addr, size_t len)
{
    size_t i;

    /* the empty reverse-path "<>" is allowed (bounces, probes) */
    if (len > MX_PATH_MAX - 2)
        return MX_CMD_E_TOO_LONG;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)addr[i];
        if (is_control(c))
            return MX_CMD_E_CONTROL;
        if (c == '<' || c == '>' || c == ' ')
            return MX_CMD_E_SYNTAX;
    }
    return MX_CMD_OK;
}

mx_cmd_status
mx_cmd_check_params(const char *params, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)params[i];
        if (is_control(c))
            return MX_CMD_E_CONTROL;
    }
    return MX_CMD_OK;
}

mx_cmd_status
mx_cmd_check_domain(const char *name, size_t len)
{
    size_t i;

    if (len == 0)
        return MX_CMD_E_EMPTY;
    if (len > MX_DOMAIN_MAX)
        return MX_CMD_E_TOO_LONG;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (is_control(c))
            return MX_CMD_E_CONTROL;
        if (c == ' ' || c == '<' || c == '>')
            return MX_CMD_E_SYNTAX;
    }
    return MX_CMD_OK;
}

mx_cmd_status
mx_cmd_simple(char *out, size_t cap, size_t *len, const char *verb)
{
    size_t pos = 0;
    mx_cmd_status st;

    if ((st = put(out, cap, &pos, verb, strlen(verb))) != MX_CMD_OK ||
        (st = put(out, cap, &pos, "\r\n", 2)) != MX_CMD_OK)
        return st;
    *len = pos;
    return MX_CMD_OK;
}

mx_cmd_status
mx_cmd_hello(char *out, size_t cap, size_t *len, const char *verb,
             const char *name, size_t name_len)
{
    size_t pos = 0;
    mx_cmd_status st;

    if ((st = mx_cmd_check_domain(name, name_len)) != MX_CMD_OK)
        return st;
    if ((st = put(out, cap, &pos, verb, strlen(verb))) != MX_CMD_OK ||
        (st = put(out, cap, &pos, " ", 1)) != MX_CMD_OK ||
        (st = put(out, cap, &pos, name, name_len)) != MX_CMD_OK ||
        (st = put(out, cap, &pos, "\r\n", 2)) != MX_CMD_OK)
        return st;
    *len = pos;
    return MX_CMD_OK;
}

mx_cmd_status
mx_cmd_path(char *out, size_t cap, size_t *len, const char *verb,
            const char *addr, size_t addr_len, const char *params,
            size_t params_len)
{
    size_t pos = 0;
    mx_cmd_status st;

    if ((st = mx_cmd_check_address(addr, addr_len)) != MX_CMD_OK ||
        (st = mx_cmd_check_params(params, params_len)) != MX_CMD_OK)
        return st;
    if ((st = put(out, cap, &pos, verb, strlen(verb))) != MX_CMD_OK ||
        (st = put(out, cap, &pos, ":<", 2)) != MX_CMD_OK ||
        (st = put(out, cap, &pos, addr, addr_len)) != MX_CMD_OK ||
        (st = put(out, cap, &pos, ">", 1)) != MX_CMD_OK)
        return st;
    if (params_len) {
        if ((st = put(out, cap, &pos, " ", 1)) != MX_CMD_OK ||
            (st = put(out, cap, &pos, params, params_len)) != MX_CMD_OK)
            return st;
    }
    if ((st = put(out, cap, &pos, "\r\n", 2)) != MX_CMD_OK)
        return st;
    *len = pos;
    return MX_CMD_OK;
}

mx_cmd_status
mx_cmd_auth(char *out, size_t cap, size_t *len, const char *mech,
            const char *payload, size_t payload_len)
{
    size_t pos = 0;
    mx_cmd_status st;

    if ((st = mx_cmd_check_params(payload, payload_len)) != MX_CMD_OK)
        return st;
    if (mech) {
        if ((st = put(out, cap, &pos, "AUTH ", 5)) != MX_CMD_OK ||
            (st = put(out, cap, &pos, mech, strlen(mech))) != MX_CMD_OK)
            return st;
        if (payload_len &&
            ((st = put(out, cap, &pos, " ", 1)) != MX_CMD_OK ||
             (st = put(out, cap, &pos, payload, payload_len)) != MX_CMD_OK))
            return st;
    } else if ((st = put(out, cap, &pos, payload, payload_len)) != MX_CMD_OK) {
        return st;
    }
    if ((st = put(out, cap, &pos, "\r\n", 2)) != MX_CMD_OK)
        return st;
    *len = pos;
    return MX_CMD_OK;
}

const char *
mx_cmd_strerror(mx_cmd_status st)
{
    switch (st) {
    case MX_CMD_OK: return "ok";
    case MX_CMD_E_CONTROL: return "contains CR, LF, NUL or another control character";
    case MX_CMD_E_TOO_LONG: return "is too long for an SMTP command (paths: 254 octets, domains: 255)";
    case MX_CMD_E_EMPTY: return "is empty";
    case MX_CMD_E_SYNTAX: return "contains '<', '>' or a space";
    }
    return "is invalid";
}
