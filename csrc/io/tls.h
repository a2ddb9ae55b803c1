/* tls.h - OpenSSL: context, verification, handshake, records, peer info.
 * Knows nothing of SMTP; blocking calls are bounded by deadlines and made
 * with the GIL released.  OpenSSL errors are turned into mx_error text in
 * one place (tls_fail in tls.c). */
#ifndef MX_TLS_H
#define MX_TLS_H

#include <openssl/ssl.h>

#include "net.h"
#include "tls_cache.h"

typedef struct {
    int verify;                /* 1: the chain and name must verify */
    const char *ca_file;       /* NULL: the system trust store */
    const char *cert_file;     /* client certificate chain (PEM), or NULL */
    const char *key_file;      /* its key (PEM); NULL: in cert_file */
    int min_version;           /* TLS1_2_VERSION, TLS1_3_VERSION */
    int session_cache;         /* 1: resume sessions across connections */
} mx_tls_opts;

/* A client context: an SSL_CTX and, with session_cache, the session cache
 * its connections share (tls_cache.h).  Reference counted; any thread may
 * take or drop a reference, and every connection made from it holds one
 * until mx_tls_close (a TLS 1.3 ticket may arrive as long as it is open). */
typedef struct mx_tls_ctx mx_tls_ctx;

/* A new client context with one reference, or NULL with *err set
 * (MX_E_SETUP). */
mx_tls_ctx *mx_tls_ctx_new(const mx_tls_opts *o, mx_error *err);
void mx_tls_ctx_ref(mx_tls_ctx *t);
void mx_tls_ctx_unref(mx_tls_ctx *t);    /* NULL is fine */

/* The peer a handshake is for: the cache key is made of all four, so a
 * session is offered only to the same host, port, name checked and verify
 * setting (and, being per context, the same trust store, client
 * certificate and minimum version). */
typedef struct {
    const char *host, *port;
    const char *server_name;   /* SNI and the name checked; never empty */
    int verify;
} mx_tls_peer;

/* Runs the client handshake on fd.  server_name is used for SNI (host
 * names only, RFC 6066 §3) and for the name check (host name or IP
 * address).  Returns the connection, or NULL with *err set
 * (MX_E_TLS_VERIFY carries the X509 verify code).
 *
 * Resumption: a session cached for the same peer is offered
 * (SSL_session_reused tells afterwards whether the server took it); one the
 * server refused, or whose handshake failed, leaves the cache.  New sessions
 * are cached as they come: at the end of a TLS 1.2 handshake, and for TLS
 * 1.3 when a ticket arrives, which is inside a later mx_tls_read.  With
 * verify on, only sessions of handshakes whose chain and name verified are
 * kept.
 *
 * implicit: the handshake opens the connection (security = "ssl").  Then
 * the first bytes the server sends are looked at (MSG_PEEK) before OpenSSL
 * reads them: an SMTP reply there ("220 ...", or a 5xx to the ClientHello)
 * means the port speaks plain SMTP first, and the error says so
 * (err->wrong_mode = MX_MODE_STARTTLS, MX_E_TLS) instead of OpenSSL's
 * "wrong version number".
 *
 * The socket is made non-blocking first (plain reads may have switched it
 * to blocking mode: see mx_reader in net.h). */
SSL *mx_tls_handshake(mx_tls_ctx *t, int fd, const mx_tls_peer *peer, int implicit,
                      int64_t deadline, mx_error *err);

/* Does the port fd is connected to speak implicit TLS?  Opens a second
 * connection to the same address, sends a TLS ClientHello there (made by
 * OpenSSL on memory BIOs with a throwaway context: nothing is verified, the
 * handshake is never finished) and reads the first bytes back: a TLS
 * handshake or alert record means yes.  fd itself is not touched, so a
 * plain SMTP server that is only slow to greet never sees a byte out of
 * turn on the session's connection.  1: implicit TLS; 0: no, or not known
 * by the deadline. */
int mx_tls_probe(int fd, const char *server_name, int64_t deadline);

/* One read of application data: >0 bytes, or -1 with *err set.  With
 * nothing held in OpenSSL and ack_now 0, it waits for the socket before
 * the first SSL_read (see MX_WAIT_ACK_NOW for ack_now). */
ssize_t mx_tls_read(SSL *ssl, int fd, void *buf, size_t cap, int64_t deadline,
                    int ack_now, mx_error *err);
int mx_tls_write_all(SSL *ssl, int fd, const void *buf, size_t len,
                     int64_t deadline, mx_error *err);
/* Sends close_notify without waiting for the answer, then frees ssl and
 * drops its reference to the context. */
void mx_tls_close(SSL *ssl);

/* What the peer's certificate says, for reports. */
#define MX_CERT_SAN_MAX 32
typedef struct {
    char subject[512];
    char issuer[512];
    int64_t not_before, not_after;   /* seconds since the epoch, UTC */
    int nsan;
    char san[MX_CERT_SAN_MAX][256];  /* "DNS:name" / "IP:address" */
    long verify_code;                /* X509_V_OK = 0 */
    char verify_text[256];
} mx_cert_info;

/* Fills *info; returns 0, or -1 when the peer sent no certificate. */
int mx_tls_cert_info(SSL *ssl, mx_cert_info *info);

/* The peer certificate in DER, malloc'ed into *der (caller frees with
 * OPENSSL_free); returns its length or -1. */
int mx_tls_cert_der(SSL *ssl, unsigned char **der);

#endif
