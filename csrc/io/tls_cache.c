/* tls_cache.c - the client session cache; see tls_cache.h. */
#include "tls_cache.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    SSL_SESSION *sess;           /* NULL: free slot */
    uint64_t stamp;              /* when stored: the higher, the newer; the id */
    unsigned uses;               /* times offered */
    char key[MX_TLS_CACHE_KEY_MAX];
} slot;

struct mx_tls_cache {
    pthread_mutex_t mu;
    uint64_t clock;
    slot slots[MX_TLS_CACHE_SLOTS];
};

mx_tls_cache *
mx_tls_cache_new(void)
{
    mx_tls_cache *c = calloc(1, sizeof(*c));

    if (!c)
        return NULL;
    if (pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

static void
clear_slot(slot *s)
{
    SSL_SESSION_free(s->sess);
    s->sess = NULL;
    s->key[0] = '\0';
}

void
mx_tls_cache_free(mx_tls_cache *c)
{
    int i;

    if (!c)
        return;
    for (i = 0; i < MX_TLS_CACHE_SLOTS; i++)
        if (c->slots[i].sess)
            clear_slot(&c->slots[i]);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

int
mx_tls_cache_key(char *out, size_t cap, const char *host, const char *port,
                 const char *server_name, int verify)
{
    /* '\n' cannot occur in any part: host and names are checked, port is
     * digits; the verify flag first keeps the parts apart anyway */
    int n = snprintf(out, cap, "%d\n%s\n%s\n%s", verify ? 1 : 0, host ? host : "",
                     port ? port : "", server_name ? server_name : "");

    if (n < 0 || (size_t)n >= cap) {
        if (cap)
            out[0] = '\0';
        return -1;
    }
    return 0;
}

/* Still worth offering: resumable and within its lifetime. */
static int
usable(const SSL_SESSION *sess, time_t now)
{
    long t = SSL_SESSION_get_time(sess), life = SSL_SESSION_get_timeout(sess);

    return SSL_SESSION_is_resumable(sess) && t > 0 && life > 0 && (long)now - t < life;
}

SSL_SESSION *
mx_tls_cache_take(mx_tls_cache *c, const char *key, uint64_t *id)
{
    time_t now = time(NULL);
    slot *best = NULL;
    SSL_SESSION *sess = NULL;
    int i;

    *id = 0;
    if (!c || !key[0])
        return NULL;
    pthread_mutex_lock(&c->mu);
    for (i = 0; i < MX_TLS_CACHE_SLOTS; i++) {
        slot *s = &c->slots[i];
        if (!s->sess || strcmp(s->key, key) != 0)
            continue;
        if (!usable(s->sess, now)) {
            clear_slot(s);
            continue;
        }
        /* the least used, then the newest */
        if (!best || s->uses < best->uses || (s->uses == best->uses && s->stamp > best->stamp))
            best = s;
    }
    /* a copy: once a TLS 1.3 handshake has resumed a session, OpenSSL
     * marks that object unresumable (the client cache mode removes it:
     * RFC 8446's one use), which would spoil the entry; and connections in
     * other threads may be using the same entry */
    if (best && (sess = SSL_SESSION_dup(best->sess))) {
        best->uses++;
        *id = best->stamp;
    }
    pthread_mutex_unlock(&c->mu);
    return sess;
}

void
mx_tls_cache_put(mx_tls_cache *c, const char *key, SSL_SESSION *sess)
{
    slot *oldest_key = NULL, *oldest = NULL, *empty = NULL, *dst;
    int i, same = 0;

    if (!c || !key[0] || strlen(key) >= MX_TLS_CACHE_KEY_MAX || !SSL_SESSION_is_resumable(sess)) {
        SSL_SESSION_free(sess);
        return;
    }
    pthread_mutex_lock(&c->mu);
    for (i = 0; i < MX_TLS_CACHE_SLOTS; i++) {
        slot *s = &c->slots[i];
        if (!s->sess) {
            if (!empty)
                empty = s;
            continue;
        }
        if (!oldest || s->stamp < oldest->stamp)
            oldest = s;
        if (strcmp(s->key, key) == 0) {
            same++;
            if (!oldest_key || s->stamp < oldest_key->stamp)
                oldest_key = s;
        }
    }
    if (same >= MX_TLS_CACHE_PER_KEY)
        dst = oldest_key;
    else
        dst = empty ? empty : oldest;
    if (dst->sess)
        clear_slot(dst);
    dst->sess = sess;
    dst->stamp = ++c->clock;
    dst->uses = 0;
    memcpy(dst->key, key, strlen(key) + 1);   /* fits: checked above */
    pthread_mutex_unlock(&c->mu);
}

void
mx_tls_cache_drop(mx_tls_cache *c, uint64_t id)
{
    int i;

    if (!c || !id)
        return;
    pthread_mutex_lock(&c->mu);
    for (i = 0; i < MX_TLS_CACHE_SLOTS; i++)
        if (c->slots[i].sess && c->slots[i].stamp == id)
            clear_slot(&c->slots[i]);
    pthread_mutex_unlock(&c->mu);
}
