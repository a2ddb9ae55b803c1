/* tls.c - OpenSSL transport; see tls.h. */
#define _GNU_SOURCE
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

/* Turns the state after a failed SSL call into *err: the verify result when
 * the certificate was refused, else OpenSSL's library and reason strings
 * ("[SSL: WRONG_VERSION_NUMBER] wrong version number"), else the system
 * error or EOF.  The one place where OpenSSL errors become ours. */
static void
tls_fail(SSL *ssl, int ret, const char *what, mx_error *err)
{
    int sslerr = ssl ? SSL_get_error(ssl, ret) : SSL_ERROR_SSL;
    unsigned long e = ERR_peek_last_error();
    int saved_errno = errno;

    if (ssl && e && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        long vr = SSL_get_verify_result(ssl);
        mx_error_set(err, MX_E_TLS_VERIFY, 0,
                     "%s: certificate verify failed: %s (X509 verify code %ld)",
                     what, X509_verify_cert_error_string(vr), vr);
        err->verify_code = vr;
    } else if (e && ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        mx_error_set(err, MX_E_EOF, 0, "%s: connection closed by the server", what);
    } else if (e) {
        const char *lib = ERR_lib_error_string(e);
        const char *reason = ERR_reason_error_string(e);
        mx_error_set(err, MX_E_TLS, 0, "%s: [%s] %s", what,
                     lib ? lib : "SSL", reason ? reason : "unknown error");
    } else if (sslerr == SSL_ERROR_ZERO_RETURN ||
               (sslerr == SSL_ERROR_SYSCALL && saved_errno == 0)) {
        mx_error_set(err, MX_E_EOF, 0, "%s: connection closed by the server", what);
    } else if (sslerr == SSL_ERROR_SYSCALL) {
        mx_error_set(err, MX_E_IO, saved_errno, "%s: %s", what, strerror(saved_errno));
    } else {
        mx_error_set(err, MX_E_TLS, 0, "%s: TLS error %d", what, sslerr);
    }
    ERR_clear_error();
}

struct mx_tls_ctx {
    SSL_CTX *ssl_ctx;
    mx_tls_cache *cache;       /* NULL: no resumption */
    atomic_int refs;
};

/* What a connection carries for the new-session callback (its app data);
 * freed with the connection (tls_free). */
typedef struct {
    mx_tls_ctx *owner;         /* one reference */
    int verify;
    char key[MX_TLS_CACHE_KEY_MAX];   /* "": not cached */
} tls_link;

/* OpenSSL's new-session callback: a TLS 1.2 handshake ends, or a TLS 1.3
 * ticket arrives (inside SSL_read, in whichever thread reads, with the
 * GIL released).  1: the cache took sess over. */
static int
on_new_session(SSL *ssl, SSL_SESSION *sess)
{
    tls_link *l = SSL_get_app_data(ssl);

    if (!l || !l->owner->cache || !l->key[0] || !SSL_SESSION_is_resumable(sess))
        return 0;
    /* with verify on, only what a verified handshake made is offered again */
    if (l->verify && SSL_get_verify_result(ssl) != X509_V_OK)
        return 0;
    mx_tls_cache_put(l->owner->cache, l->key, sess);
    return 1;
}

void
mx_tls_ctx_ref(mx_tls_ctx *t)
{
    atomic_fetch_add(&t->refs, 1);
}

void
mx_tls_ctx_unref(mx_tls_ctx *t)
{
    if (!t || atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    SSL_CTX_free(t->ssl_ctx);
    mx_tls_cache_free(t->cache);
    free(t);
}

/* Frees a connection made by mx_tls_handshake, and what it carries. */
static void
tls_free(SSL *ssl)
{
    tls_link *l = ssl ? SSL_get_app_data(ssl) : NULL;

    SSL_free(ssl);
    if (l) {
        mx_tls_ctx_unref(l->owner);
        free(l);
    }
}

mx_tls_ctx *
mx_tls_ctx_new(const mx_tls_opts *o, mx_error *err)
{
    mx_tls_ctx *t;
    SSL_CTX *ctx;

    if (!(t = calloc(1, sizeof(*t)))) {
        mx_error_set(err, MX_E_SETUP, 0, "cannot create TLS context: out of memory");
        return NULL;
    }
    atomic_init(&t->refs, 1);
    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        tls_fail(NULL, 0, "cannot create TLS context", err);
        err->kind = MX_E_SETUP;
        free(t);
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (!SSL_CTX_set_min_proto_version(ctx, o->min_version)) {
        tls_fail(NULL, 0, "cannot set the minimum TLS version", err);
        goto error;
    }
    SSL_CTX_set_verify(ctx, o->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    if (o->ca_file) {
        if (!SSL_CTX_load_verify_locations(ctx, o->ca_file, NULL)) {
            char what[320];
            snprintf(what, sizeof(what), "cannot load ca_file %.256s", o->ca_file);
            tls_fail(NULL, 0, what, err);
            goto error;
        }
    } else if (!SSL_CTX_set_default_verify_paths(ctx)) {
        tls_fail(NULL, 0, "cannot load the system trust store", err);
        goto error;
    }
    if (o->cert_file) {
        const char *key = o->key_file ? o->key_file : o->cert_file;
        if (!SSL_CTX_use_certificate_chain_file(ctx, o->cert_file)) {
            char what[320];
            snprintf(what, sizeof(what), "cannot load client_cert %.256s", o->cert_file);
            tls_fail(NULL, 0, what, err);
            goto error;
        }
        if (!SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM)) {
            char what[320];
            snprintf(what, sizeof(what), "cannot load client_key %.256s", key);
            tls_fail(NULL, 0, what, err);
            goto error;
        }
        if (!SSL_CTX_check_private_key(ctx)) {
            tls_fail(NULL, 0, "client_key does not match client_cert", err);
            goto error;
        }
    }
    if (o->session_cache) {
        /* the client side only, and no store of OpenSSL's own: the
         * callback hands each session to our cache, keyed by peer */
        if (!(t->cache = mx_tls_cache_new())) {
            mx_error_set(err, MX_E_SETUP, 0, "cannot create TLS session cache: out of memory");
            goto error;
        }
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
                                            SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(ctx, on_new_session);
    } else {
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    }
    t->ssl_ctx = ctx;
    return t;
error:
    err->kind = MX_E_SETUP;
    SSL_CTX_free(ctx);
    free(t);
    return NULL;
}

static int
is_ip_literal(const char *name)
{
    unsigned char buf[sizeof(struct in6_addr)];

    return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

/* Waits for what the last SSL call asked for; 0 to retry, -1 to give up. */
static int
tls_wait(SSL *ssl, int ret, int fd, int64_t deadline, const char *what,
         int ack_now, mx_error *err)
{
    int e = SSL_get_error(ssl, ret);

    if (e == SSL_ERROR_WANT_READ)
        return mx_net_wait(fd, (short)(POLLIN | (ack_now ? MX_WAIT_ACK_NOW : 0)), deadline, err);
    if (e == SSL_ERROR_WANT_WRITE)
        return mx_net_wait(fd, POLLOUT, deadline, err);
    tls_fail(ssl, ret, what, err);
    return -1;
}

/* The first bytes of an implicit-TLS port, peeked before OpenSSL reads
 * them.  A TLS record starts with its type (0x14..0x18); an SMTP reply with
 * a digit.  Waits for data (deadline).  0: nothing to read yet (retry);
 * 1: not an SMTP reply, OpenSSL takes over; -1: *err set (an SMTP reply:
 * MX_MODE_STARTTLS; or the wait failed). */
static int
sniff_smtp(int fd, int64_t deadline, mx_error *err)
{
    char peek[160], shown[128];
    ssize_t n;
    size_t i, k = 0;
    int cut;

    if (mx_net_wait(fd, POLLIN, deadline, err) < 0)
        return -1;
    n = recv(fd, peek, sizeof(peek), MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return 0;
    if (n <= 0 || peek[0] < '0' || peek[0] > '9')
        return 1;
    /* printable text up to the end of the first line, bounded */
    for (i = 0; i < (size_t)n && k + 1 < sizeof(shown); i++) {
        unsigned char ch = (unsigned char)peek[i];
        if (ch == '\r' || ch == '\n')
            break;
        shown[k++] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    shown[k] = '\0';
    cut = i >= (size_t)n || (peek[i] != '\r' && peek[i] != '\n');
    mx_error_set(err, MX_E_TLS, 0,
                 "this port speaks plain SMTP first, not implicit TLS (it greeted with "
                 "\"%s%s\" where a TLS ServerHello was expected): set security = "
                 "'starttls' (port 587), or use the port that speaks implicit TLS (465)",
                 shown, cut ? "..." : "");
    err->wrong_mode = MX_MODE_STARTTLS;
    return -1;
}

/* Ties ssl to the context's cache for peer (SSL app data) and offers a
 * session cached for it.  Returns the session offered (the caller frees
 * it; *id names its entry), or NULL; -1 in *bad when out of memory. */
static SSL_SESSION *
attach(mx_tls_ctx *t, SSL *ssl, const mx_tls_peer *peer, uint64_t *id, int *bad)
{
    tls_link *l = calloc(1, sizeof(*l));
    SSL_SESSION *offer = NULL;

    *bad = 0;
    *id = 0;
    if (!l || !SSL_set_app_data(ssl, l)) {
        free(l);
        *bad = -1;
        return NULL;
    }
    mx_tls_ctx_ref(t);
    l->owner = t;
    l->verify = peer->verify;
    if (t->cache &&
        mx_tls_cache_key(l->key, sizeof(l->key), peer->host, peer->port, peer->server_name,
                         peer->verify) == 0 &&
        (offer = mx_tls_cache_take(t->cache, l->key, id)) && !SSL_set_session(ssl, offer)) {
        /* not offered after all (say, a version this context refuses) */
        ERR_clear_error();
        mx_tls_cache_drop(t->cache, *id);
        SSL_SESSION_free(offer);
        offer = NULL;
    }
    return offer;
}

SSL *
mx_tls_handshake(mx_tls_ctx *t, int fd, const mx_tls_peer *peer, int implicit,
                 int64_t deadline, mx_error *err)
{
    const char *server_name = peer->server_name;
    int verify = peer->verify;
    SSL *ssl = NULL;
    SSL_SESSION *offer = NULL;
    uint64_t offer_id = 0;
    int ret, sniff = implicit, bad, fl;

    ERR_clear_error();
    if (!server_name || !server_name[0]) {
        mx_error_set(err, MX_E_SETUP, 0, "TLS needs a server name to verify");
        return NULL;
    }
    /* OpenSSL reads and writes the socket itself and we wait in poll
     * (tls_wait): it must not block, whatever plain reads made of it (a
     * blocking socket under SO_RCVTIMEO: see mx_reader) */
    if ((fl = fcntl(fd, F_GETFL)) < 0 ||
        (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)) {
        mx_error_set(err, MX_E_IO, errno, "cannot make the socket non-blocking: %s",
                     strerror(errno));
        return NULL;
    }
    ssl = SSL_new(t->ssl_ctx);
    if (!ssl) {
        tls_fail(NULL, 0, "cannot create TLS connection", err);
        goto error;
    }
    /* the connection's own setting, whatever the context was made with:
     * the cache key says "verified" only of what was */
    SSL_set_verify(ssl, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    offer = attach(t, ssl, peer, &offer_id, &bad);
    if (bad) {
        mx_error_set(err, MX_E_NOMEM, 0, "cannot create TLS connection: out of memory");
        goto error;
    }
    if (sniff) {
        /* reads come from an empty memory BIO until the first bytes of the
         * server were looked at: OpenSSL writes its ClientHello to the
         * socket and then wants to read, and never takes a byte of an SMTP
         * greeting that was already waiting */
        BIO *mem = BIO_new(BIO_s_mem()), *sock = BIO_new_socket(fd, BIO_NOCLOSE);
        if (!mem || !sock) {
            BIO_free(mem);
            BIO_free(sock);
            tls_fail(NULL, 0, "cannot create TLS connection", err);
            goto error;
        }
        BIO_set_mem_eof_return(mem, -1);
        SSL_set_bio(ssl, mem, sock);
    } else if (!SSL_set_fd(ssl, fd)) {
        tls_fail(NULL, 0, "cannot create TLS connection", err);
        goto error;
    }
    if (is_ip_literal(server_name)) {
        /* no SNI for addresses (RFC 6066 §3); check the IP SAN instead */
        if (verify &&
            !X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), server_name)) {
            tls_fail(NULL, 0, "cannot set the address to verify", err);
            goto error;
        }
    } else {
        if (!SSL_set_tlsext_host_name(ssl, server_name)) {
            tls_fail(NULL, 0, "cannot set SNI", err);
            goto error;
        }
        SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        /* set even without verify: the result is then reported, not fatal */
        if (!SSL_set1_host(ssl, server_name)) {
            tls_fail(NULL, 0, "cannot set the host name to verify", err);
            goto error;
        }
    }
    for (;;) {
        ERR_clear_error();
        errno = 0;
        ret = SSL_connect(ssl);
        if (ret == 1)
            break;
        if (sniff && SSL_get_error(ssl, ret) == SSL_ERROR_WANT_READ) {
            /* the ClientHello is out; the first bytes back decide */
            int r = sniff_smtp(fd, deadline, err);
            BIO *sock;
            if (r < 0)
                goto error;
            if (r == 0)
                continue;
            /* TLS bytes (or EOF) came: from now on OpenSSL reads the socket */
            sniff = 0;
            if (!(sock = BIO_new_socket(fd, BIO_NOCLOSE))) {
                tls_fail(NULL, 0, "cannot create TLS connection", err);
                goto error;
            }
            SSL_set0_rbio(ssl, sock);
            continue;
        }
        if (tls_wait(ssl, ret, fd, deadline, "TLS handshake failed", 0, err) < 0)
            goto error;
    }
    if (offer) {
        /* refused (a full handshake was made instead): not offered again */
        if (!SSL_session_reused(ssl))
            mx_tls_cache_drop(t->cache, offer_id);
        SSL_SESSION_free(offer);
    }
    return ssl;
error:
    if (offer) {
        mx_tls_cache_drop(t->cache, offer_id);
        SSL_SESSION_free(offer);
    }
    tls_free(ssl);
    return NULL;
}

/* A ClientHello as OpenSSL would send it, into a malloc'ed *out. 0 or -1. */
static int
client_hello(const char *server_name, unsigned char **out, size_t *len)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = ctx ? SSL_new(ctx) : NULL;
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    size_t pending;
    int rc = -1;

    *out = NULL;
    if (!ssl || !rb || !wb) {
        BIO_free(rb);
        BIO_free(wb);
        goto done;
    }
    SSL_set_bio(ssl, rb, wb);          /* ssl owns both from here */
    SSL_set_verify(ssl, SSL_VERIFY_NONE, NULL);
    if (server_name && server_name[0] && !is_ip_literal(server_name))
        (void)SSL_set_tlsext_host_name(ssl, server_name);
    (void)SSL_connect(ssl);            /* writes the hello, then wants to read */
    pending = BIO_ctrl_pending(wb);
    if (pending == 0 || pending > 65536 || !(*out = malloc(pending)))
        goto done;
    if (BIO_read(wb, *out, (int)pending) != (int)pending) {
        free(*out);
        *out = NULL;
        goto done;
    }
    *len = pending;
    rc = 0;
done:
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    ERR_clear_error();
    return rc;
}

int
mx_tls_probe(int fd, const char *server_name, int64_t deadline)
{
    unsigned char *hello = NULL;
    size_t hlen = 0;
    mx_error e;
    int pfd, res = 0;

    if (client_hello(server_name, &hello, &hlen) < 0)
        return 0;
    pfd = mx_net_connect_same(fd, deadline);
    if (pfd >= 0 && mx_net_write_all(pfd, hello, hlen, deadline, NULL, &e) == 0) {
        unsigned char got[3];
        size_t n = 0;
        while (n < sizeof(got)) {
            ssize_t r = mx_net_read(pfd, got + n, sizeof(got) - n, deadline, 0, &e);
            if (r < 0)
                break;
            n += (size_t)r;
        }
        /* a handshake (22) or alert (21) record of TLS 1.x / SSL 3 */
        res = n == sizeof(got) && (got[0] == 0x16 || got[0] == 0x15) && got[1] == 0x03 &&
              got[2] <= 0x04;
    }
    if (pfd >= 0)
        close(pfd);
    free(hello);
    return res;
}

ssize_t
mx_tls_read(SSL *ssl, int fd, void *buf, size_t cap, int64_t deadline,
            int ack_now, mx_error *err)
{
    /* The first reply after a write is seldom there yet: with nothing held
     * in OpenSSL, wait for the socket first rather than have SSL_read try
     * it (a read that finds nothing, then the poll).  Not when the rest of
     * a group is awaited (ack_now: part of it came, more may be in), nor
     * past the deadline (the read may still find a reply there). */
    if (!ack_now && !SSL_has_pending(ssl) && (!deadline || mx_now_ms() < deadline) &&
        mx_net_wait(fd, POLLIN, deadline, err) < 0)
        return -1;
    for (;;) {
        size_t n = 0;
        int ret;

        ERR_clear_error();
        errno = 0;
        ret = SSL_read_ex(ssl, buf, cap, &n);
        if (ret == 1)
            return (ssize_t)n;
        if (tls_wait(ssl, ret, fd, deadline, "TLS read failed", ack_now, err) < 0)
            return -1;
    }
}

int
mx_tls_write_all(SSL *ssl, int fd, const void *buf, size_t len,
                 int64_t deadline, mx_error *err)
{
    const char *p = buf;

    while (len) {
        size_t n = 0;
        int ret;

        ERR_clear_error();
        errno = 0;
        ret = SSL_write_ex(ssl, p, len, &n);
        if (ret == 1) {
            p += n;
            len -= n;
            continue;
        }
        if (tls_wait(ssl, ret, fd, deadline, "TLS write failed", 0, err) < 0)
            return -1;
    }
    return 0;
}

void
mx_tls_close(SSL *ssl)
{
    if (!ssl)
        return;
    ERR_clear_error();
    (void)SSL_shutdown(ssl);   /* non-blocking: one try, no wait */
    ERR_clear_error();
    tls_free(ssl);
}

static int64_t
asn1_time_to_epoch(const ASN1_TIME *t)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    if (!t || !ASN1_TIME_to_tm(t, &tm))
        return 0;
    return (int64_t)timegm(&tm);
}

int
mx_tls_cert_info(SSL *ssl, mx_cert_info *info)
{
    X509 *cert = SSL_get1_peer_certificate(ssl);
    GENERAL_NAMES *names = NULL;
    int i, n;

    memset(info, 0, sizeof(*info));
    info->verify_code = SSL_get_verify_result(ssl);
    snprintf(info->verify_text, sizeof(info->verify_text), "%s",
             X509_verify_cert_error_string(info->verify_code));
    if (!cert)
        return -1;
    X509_NAME_oneline(X509_get_subject_name(cert), info->subject, sizeof(info->subject));
    X509_NAME_oneline(X509_get_issuer_name(cert), info->issuer, sizeof(info->issuer));
    info->not_before = asn1_time_to_epoch(X509_get0_notBefore(cert));
    info->not_after = asn1_time_to_epoch(X509_get0_notAfter(cert));
    names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    n = names ? sk_GENERAL_NAME_num(names) : 0;
    for (i = 0; i < n && info->nsan < MX_CERT_SAN_MAX; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
        char *dst = info->san[info->nsan];
        size_t cap = sizeof(info->san[0]);

        if (g->type == GEN_DNS) {
            const unsigned char *d = ASN1_STRING_get0_data(g->d.dNSName);
            int len = ASN1_STRING_length(g->d.dNSName);
            if (len < 0 || (size_t)len > cap - 5 || memchr(d, 0, (size_t)len))
                continue;
            memcpy(dst, "DNS:", 4);
            memcpy(dst + 4, d, (size_t)len);
            dst[4 + len] = '\0';
            info->nsan++;
        } else if (g->type == GEN_IPADD) {
            const unsigned char *d = ASN1_STRING_get0_data(g->d.iPAddress);
            int len = ASN1_STRING_length(g->d.iPAddress);
            char addr[INET6_ADDRSTRLEN];
            if ((len == 4 && inet_ntop(AF_INET, d, addr, sizeof(addr))) ||
                (len == 16 && inet_ntop(AF_INET6, d, addr, sizeof(addr)))) {
                snprintf(dst, cap, "IP:%s", addr);
                info->nsan++;
            }
        }
    }
    GENERAL_NAMES_free(names);
    X509_free(cert);
    return 0;
}

int
mx_tls_cert_der(SSL *ssl, unsigned char **der)
{
    X509 *cert = SSL_get1_peer_certificate(ssl);
    int len;

    *der = NULL;
    if (!cert)
        return -1;
    len = i2d_X509(cert, der);
    X509_free(cert);
    return len;
}
