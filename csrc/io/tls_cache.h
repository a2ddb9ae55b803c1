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

/* A session to offer to the peer of key, or NULL; the caller owns the
 * reference it gets.  The newest resumable, unexpired one is chosen; a TLS
 * 1.3 ticket leaves the cache when taken (RFC 8446 §C.4: one use each; the
 * server sends new ones), a TLS 1.2 session stays for the next connection.
 * Expired or unresumable entries met on the way are dropped. */
SSL_SESSION *mx_tls_cache_take(mx_tls_cache *c, const char *key);

/* Stores sess for key, taking over the caller's reference.  Beyond
 * MX_TLS_CACHE_PER_KEY for the key, or MX_TLS_CACHE_SLOTS in all, the
 * oldest entry goes.  An unresumable session is freed, not stored. */
void mx_tls_cache_put(mx_tls_cache *c, const char *key, SSL_SESSION *sess);

/* Removes the entry holding sess, if any (the server refused to resume it,
 * or the handshake that offered it failed). */
void mx_tls_cache_drop(mx_tls_cache *c, SSL_SESSION *sess);

#endif
