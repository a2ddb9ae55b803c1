/* tls_cache.h - a client TLS session cache for resumption: a small bounded
 * table of SSL_SESSION references keyed by a string naming the peer (host,
 * port, the name checked and the verify setting; see mx_tls_cache_key).
 * One cache belongs to one client context and is shared by every
 * connection made from it, in any thread: each call takes the cache's
 * mutex and none blocks on I/O, so they are made with the GIL released
 * (the new-session callback runs inside SSL_read).  No Python. */
#ifndef MX_TLS_CACHE_H
#define MX_TLS_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#define MX_TLS_CACHE_SLOTS 32     /* sessions held in all */
#define MX_TLS_CACHE_PER_KEY 4    /* sessions held for one peer */
#define MX_TLS_CACHE_KEY_MAX 600  /* bytes of a key, NUL included */

typedef struct mx_tls_cache mx_tls_cache;

/* A new, empty cache, or NULL (out of memory). */
mx_tls_cache *mx_tls_cache_new(void);

/* Frees the cache and the sessions it holds. */
void mx_tls_cache_free(mx_tls_cache *c);

/* Writes the key for a peer into out: 0, or -1 when it would not fit
 * (such a peer is simply not cached). */
int mx_tls_cache_key(char *out, size_t cap, const char *host, const char *port,
                     const char *server_name, int verify);

/* A session to offer to the peer of key, or NULL; the caller owns it (a
 * copy of the entry) and *id names the entry for mx_tls_cache_drop.  Among the resumable, unexpired ones the least
 * offered, then the newest, is chosen, and it stays cached: a TLS 1.3
 * ticket not yet used is preferred (RFC 8446 §C.4 asks for one use each;
 * servers such as Python's send new ones on every handshake), but when the
 * server sends none after a resumption (Postfix) the last one is offered
 * again rather than falling back to full handshakes; a server that takes
 * each ticket once refuses it and it is dropped (mx_tls_cache_drop).  The
 * privacy reason for single use (linking connections) does not apply to
 * an authenticated submission client.  Expired or unresumable entries met
 * on the way are dropped. */
SSL_SESSION *mx_tls_cache_take(mx_tls_cache *c, const char *key, uint64_t *id);

/* Stores sess for key, taking over the caller's reference.  Beyond
 * MX_TLS_CACHE_PER_KEY for the key, or MX_TLS_CACHE_SLOTS in all, the
 * oldest entry goes.  An unresumable session is freed, not stored. */
void mx_tls_cache_put(mx_tls_cache *c, const char *key, SSL_SESSION *sess);

/* Removes the entry id (from mx_tls_cache_take), if still there: the
 * server refused to resume it, or the handshake that offered it failed. */
void mx_tls_cache_drop(mx_tls_cache *c, uint64_t id);

#endif
