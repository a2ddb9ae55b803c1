"""Token sources for XOAUTH2/OAUTHBEARER: where the access token comes from.

* `MsalSource`: the OAuth client-credentials flow through MSAL
  (``oauth_tenant``, ``oauth_client_id`` and a client secret or certificate;
  extra ``mailexpress[oauth]``).  One per configuration identity, kept in a
  module-level table, so every connection of a bulk run shares MSAL's token
  cache and the token endpoint is asked once while the token lasts.
* `CredentialSource`: anything with ``get_token(scope)`` (every
  ``azure.identity`` credential) returning ``.token`` and ``.expires_on``.
* `CallableSource`: a callable returning a token ``str`` or
  ``(token, expires_at)`` (seconds since the epoch, or an aware datetime).

`TokenSource.get` hands out a cached token until `REFRESH_MARGIN` seconds
before it expires, then asks the provider again.  A provider that fails,
returns nothing usable or an expired token raises `AuthError` (stage AUTH)
naming the provider and the fix, before anything is sent to the mail
server.  Tokens and secrets never show in ``repr``, messages or logs.

MSAL, azure-identity and cryptography are imported only when used.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AuthError

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["AccessToken", "TokenSource", "MsalSource", "CredentialSource", "CallableSource",
           "source_for", "REFRESH_MARGIN"]

log = logging.getLogger("mailexpress")

#: a cached token is renewed this many seconds before it expires
REFRESH_MARGIN = 300.0

# Hosts of Microsoft's own clouds: MSAL validates these itself; any other
# authority (ADFS-like test endpoints) is used as given.
_MICROSOFT_AUTHORITIES = {
    "login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn", "login.microsoftonline.de", "login.windows.net",
}

_AADSTS = re.compile(r"AADSTS(\d+)")
# the characters of an RFC 6750 b64token (JWTs and opaque tokens alike)
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class AccessToken:
    """A bearer token and when it expires (seconds since the epoch, or None
    when the provider did not say).  ``repr`` never shows the token."""

    token: str = field(repr=False)
    expires_at: float | None = None

    def __repr__(self) -> str:
        return f"AccessToken(token='<redacted>', expires_at={self.expires_at!r})"

    def expires_in(self, now: float | None = None) -> float | None:
        if self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)


def _fail(source: TokenSource, what: str, fix: str, *, code: str | None = None) -> AuthError:
    exc = AuthError(f"no token from {source.name}: {what}; {fix}; nothing was sent to the server",
                    stage="AUTH")
    exc.provider = source.name
    exc.provider_code = code
    return exc


def _jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (unverified: only to know when to renew)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


class TokenSource:
    """Where tokens come from: caches one, renews it before it expires.

    Subclasses implement `_fetch`.  ``requests`` counts the times the
    provider was asked (the token endpoint, for MSAL: its own cache may
    still answer).  Thread-safe: one fetch at a time; threads that wait
    get the token the first one fetched.
    """

    #: names the provider in messages (never a secret)
    name: str = "the token provider"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: AccessToken | None = None
        self.requests = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def get(self, *, force: bool = False) -> AccessToken:
        """A token valid for at least `REFRESH_MARGIN` more seconds when
        the provider allows (``force``: ask the provider even when a cached
        token is still good)."""
        with self._lock:
            now = time.time()
            cached = self._cached
            if (not force and cached is not None and cached.expires_at is not None
                    and cached.expires_at - now > REFRESH_MARGIN):
                return cached
            self.requests += 1
            token = self._check(self._fetch(), now)
            # a token of unknown lifetime is not kept: the provider is asked each time
            self._cached = token if token.expires_at is not None else None
            return token

    def invalidate(self) -> None:
        """Forget the cached token (the server refused it)."""
        with self._lock:
            self._cached = None

    def _fetch(self) -> AccessToken:
        raise NotImplementedError

    def _check(self, token: AccessToken, now: float) -> AccessToken:
        value = token.token
        if not isinstance(value, str):
            raise _fail(self, f"the token is a {type(value).__name__}, not a str",
                        "return the access token as a str")
        if not value:
            raise _fail(self, "the token is empty", "check the provider's configuration")
        if not _B64TOKEN.fullmatch(value):
            raise _fail(self, "the token has characters a bearer token cannot have "
                        "(spaces, control characters, ...)",
                        "return the bare access token, without 'Bearer ' or quotes")
        if token.expires_at is not None and token.expires_at <= now:
            ago = int(now - token.expires_at)
            raise _fail(self, f"the token expired {ago} s ago",
                        "the provider must return a fresh token (check its cache and this "
                        "machine's clock)")
        return token


class CallableSource(TokenSource):
    """A callable returning a token str or (token, expires_at)."""

    def __init__(self, func: Any) -> None:
        super().__init__()
        self._func = func
        from ..config import describe_provider
        self.name = f"token_provider {describe_provider(func)}"

    def _fetch(self) -> AccessToken:
        try:
            value = self._func()
        except Exception as exc:
            raise _fail(self, f"it raised {type(exc).__name__}: {exc}",
                        "fix the provider (its exception is this error's cause)") from exc
        if isinstance(value, tuple) and len(value) == 2:
            token, expires = value
            return AccessToken(token, _expiry(self, expires))
        if isinstance(value, str):
            return AccessToken(value, _jwt_expiry(value))
        raise _fail(self, f"it returned {type(value).__name__}",
                    "return a token str or a tuple (token, expires_at)")


def _expiry(source: TokenSource, value: Any) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise _fail(source, "expires_at is a naive datetime",
                        "give an aware datetime (tzinfo=timezone.utc) or seconds since the epoch")
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise _fail(source, f"expires_at is a {type(value).__name__}",
                "give seconds since the epoch (int or float) or an aware datetime")


class CredentialSource(TokenSource):
    """An object with ``get_token(scope)`` (azure.identity credentials)."""

    def __init__(self, credential: Any, scope: str) -> None:
        super().__init__()
        self._credential = credential
        self._scope = scope
        from ..config import describe_provider
        self.name = f"token_provider {describe_provider(credential)}"

    def _fetch(self) -> AccessToken:
        try:
            result = self._credential.get_token(self._scope)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            first = text[0] if text else ""
            m = _AADSTS.search(str(exc))
            code = f"AADSTS{m.group(1)}" if m else None
            raise _fail(self, f"get_token({self._scope!r}) raised {type(exc).__name__}: {first}",
                        _FIXES.get(code or "", "check the credential's environment "
                                   "(its exception is this error's cause)"), code=code) from exc
        token = getattr(result, "token", None)
        expires = getattr(result, "expires_on", None)
        if token is None or expires is None:
            raise _fail(self, f"get_token returned a {type(result).__name__}",
                        "return an object with .token and .expires_on (azure.core AccessToken)")
        return AccessToken(token, _expiry(self, expires))


# What to do about the token endpoint's errors (AADSTS codes).
_FIXES: dict[str, str] = {
    "AADSTS7000215": "the client secret is wrong: use the secret's Value (not its Secret ID) "
                     "from the app registration's Certificates & secrets",
    "AADSTS7000222": "the client secret has expired: add a new one under Certificates & secrets "
                     "and update the secret mailexpress reads",
    "AADSTS700016": "the application was not found in the tenant: check oauth_client_id (the "
                    "Application (client) ID) and oauth_tenant, and that an admin consented",
    "AADSTS90002": "the tenant was not found: check oauth_tenant (the Directory (tenant) ID or a "
                   "verified domain) and oauth_authority",
    "AADSTS900023": "the tenant is malformed: oauth_tenant is the Directory (tenant) ID (a GUID) "
                    "or a verified domain",
    "AADSTS700027": "the certificate was not accepted: upload it (public part) under the app "
                    "registration's Certificates & secrets",
    "AADSTS70011": "the scope is not valid: app-only SMTP needs oauth_scope = "
                   "'https://outlook.office365.com/.default'",
    "AADSTS7000218": "the request needs a credential: set oauth_client_secret_env, "
                     "oauth_client_secret_file or oauth_certificate_file",
    "AADSTS65001": "admin consent is missing: grant admin consent for SMTP.SendAsApp",
}


def _secret_key(config: Config) -> tuple[str, ...]:
    """What identifies the credential, without keeping the secret itself."""
    if config.oauth_client_secret is not None:
        digest = hashlib.sha256(config.oauth_client_secret.reveal().encode("utf-8")).hexdigest()
        return ("secret", digest)
    assert config.oauth_certificate_file is not None
    path = config.oauth_certificate_file
    try:
        mtime = os.stat(path).st_mtime_ns
    except OSError:
        mtime = -1
    return ("certificate", os.path.abspath(path), str(mtime))


class MsalSource(TokenSource):
    """The client-credentials flow through MSAL (``ConfidentialClientApplication``)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        assert config.oauth_client_id is not None and config.oauth_tenant is not None
        self.client_id = config.oauth_client_id
        self.tenant = config.oauth_tenant
        self.scope = config.oauth_scope
        self.authority = config.oauth_authority.rstrip("/") + "/" + self.tenant
        self.name = f"MSAL (tenant {self.tenant}, client {self.client_id})"
        self._secret = config.oauth_client_secret
        self._certificate = config.oauth_certificate_file
        self.thumbprint: str | None = None
        self._app: Any = None

    def _credential(self) -> Any:
        if self._secret is not None:
            return self._secret.reveal()
        assert self._certificate is not None
        key_pem, cert_pem, self.thumbprint = _load_certificate(self, self._certificate)
        return {"private_key": key_pem, "thumbprint": self.thumbprint, "public_certificate": cert_pem}

    def _application(self) -> Any:
        if self._app is not None:
            return self._app
        try:
            import msal  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            raise _fail(self, "MSAL is not installed", "pip install 'mailexpress[oauth]'") from None
        host = self.authority.split("/")[2].lower()
        microsoft = host in _MICROSOFT_AUTHORITIES
        try:
            self._app = msal.ConfidentialClientApplication(
                self.client_id, client_credential=self._credential(), authority=self.authority,
                validate_authority=microsoft, instance_discovery=microsoft, timeout=30,
                token_cache=msal.TokenCache())
        except AuthError:
            raise
        except Exception as exc:
            raise self._exception(exc) from None
        return self._app

    def _exception(self, exc: BaseException) -> AuthError:
        """An exception from inside MSAL (discovery failed, endpoint unreachable)."""
        chain: list[BaseException] = []
        e: BaseException | None = exc
        while e is not None and len(chain) < 5:
            chain.append(e)
            e = e.__cause__ or e.__context__
        text = " ".join(str(x) for x in chain)
        m = _AADSTS.search(text)
        code = f"AADSTS{m.group(1)}" if m else None
        if code:
            return _fail(self, f"the authority {self.authority} answered {code}",
                         _FIXES.get(code, "see the error code's description"), code=code)
        names = {type(x).__name__ for x in chain}
        if names & {"ConnectionError", "SSLError", "Timeout", "ConnectTimeout", "ReadTimeout"}:
            what = f"cannot reach {self.authority} ({type(chain[-1]).__name__})"
            fix = "check oauth_authority, the network and proxy (HTTPS_PROXY), and the CA bundle"
        elif "authority configuration" in text or "OIDC Discovery" in text:
            what = f"the authority {self.authority} has no OpenID configuration"
            fix = "check oauth_tenant (the Directory (tenant) ID) and oauth_authority"
        else:
            what = f"MSAL failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            fix = "check the oauth_* settings"
        return _fail(self, what, fix)

    def _fetch(self) -> AccessToken:
        app = self._application()
        try:
            result = app.acquire_token_for_client(scopes=[self.scope])
        except Exception as exc:
            raise self._exception(exc) from None
        if not isinstance(result, dict):
            raise _fail(self, "MSAL returned no result", "check the oauth_* settings")
        if "access_token" in result:
            source = result.get("token_source", "identity_provider")
            log.debug("token for %s from %s, expires in %s s", self.name, source,
                      result.get("expires_in"))
            expires_in = result.get("expires_in")
            expires = time.time() + float(expires_in) if isinstance(expires_in, (int, float)) else None
            return AccessToken(result["access_token"], expires)
        codes = result.get("error_codes") or []
        description = str(result.get("error_description") or "")
        m = _AADSTS.search(description)
        code = (f"AADSTS{codes[0]}" if codes and isinstance(codes[0], int) else
                f"AADSTS{m.group(1)}" if m else None)
        first = description.splitlines()[0] if description else ""
        what = f"the token endpoint answered {result.get('error', 'an error')}"
        if first:
            what += f": {first}"
        fix = _FIXES.get(code or "", "see the error code's description")
        if code == "AADSTS700027" and self.thumbprint:
            fix += f" (its SHA-1 thumbprint is {self.thumbprint})"
        raise _fail(self, what, fix, code=code)


def _load_certificate(source: TokenSource, path: str) -> tuple[str, str, str]:
    """(private key PEM, certificate PEM, SHA-1 thumbprint in hex) of a PEM
    certificate whose key is inside it or beside it."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
    except ImportError:
        raise _fail(source, "the cryptography package is not installed",
                    "pip install 'mailexpress[oauth]'") from None
    from ..config import certificate_key_file
    key_path = certificate_key_file(path)
    if key_path is None:
        raise _fail(source, f"no private key in {path} nor beside it",
                    "put the key in the PEM file or in a .key file of the same name")
    try:
        cert_text = Path(path).read_bytes()
        key_text = Path(key_path).read_bytes()
    except OSError as exc:
        raise _fail(source, f"cannot read {exc.filename}: {exc.strerror}",
                    "check oauth_certificate_file") from None
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", cert_text, re.S)
    if not blocks:
        raise _fail(source, f"no certificate in {path}", "check oauth_certificate_file")
    key_block = re.search(rb"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.+?-----END \1PRIVATE KEY-----",
                          key_text, re.S)
    if key_block is None:
        raise _fail(source, f"no private key in {key_path}", "check oauth_certificate_file")
    try:
        cert = x509.load_pem_x509_certificate(blocks[0])
        key = serialization.load_pem_private_key(key_block.group(0), password=None)
    except TypeError:
        raise _fail(source, f"the private key in {key_path} is encrypted",
                    f"store it unencrypted, readable only by this account: openssl pkey "
                    f"-in {key_path} -out app.key; chmod 600 app.key") from None
    except ValueError as exc:
        raise _fail(source, f"cannot load the certificate or key: {exc}",
                    "check oauth_certificate_file (PEM)") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, pub) != cert.public_key().public_bytes(der, pub):
        raise _fail(source, f"the private key in {key_path} does not belong to the certificate "
                    f"in {path}", "use the key the certificate was made with")
    if cert.not_valid_after_utc.timestamp() <= time.time():
        raise _fail(source, f"the certificate in {path} expired on "
                    f"{cert.not_valid_after_utc:%Y-%m-%d}",
                    "make a new one and upload it to the app registration")
    thumbprint = cert.fingerprint(hashes.SHA1()).hex().upper()   # what the portal shows
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode("ascii")
    return key_pem, blocks[0].decode("ascii"), thumbprint


# One MSAL source per configuration identity, for the life of the process:
# every connection of a bulk run (and every send_as) shares its token cache.
_MSAL_SOURCES: dict[tuple[str, ...], MsalSource] = {}
# token_provider objects wrapped once, while they live
_PROVIDER_SOURCES: weakref.WeakKeyDictionary[Any, TokenSource] = weakref.WeakKeyDictionary()
_SOURCES_LOCK = threading.Lock()


def source_for(config: Config) -> TokenSource | None:
    """The token source the config names (None when it names none)."""
    provider = config.token_provider
    if provider is not None:
        if isinstance(provider, TokenSource):
            return provider
        with _SOURCES_LOCK:
            try:
                found = _PROVIDER_SOURCES.get(provider)
            except TypeError:           # not weak-referenceable or not hashable
                found = None
            if found is None:
                found = (CredentialSource(provider, config.oauth_scope)
                         if callable(getattr(provider, "get_token", None))
                         else CallableSource(provider))
                try:
                    _PROVIDER_SOURCES[provider] = found
                except TypeError:
                    pass
            return found
    if config.oauth_client_id is None:
        return None
    key = (config.oauth_authority.rstrip("/").lower(), config.oauth_tenant or "",
           config.oauth_client_id, config.oauth_scope, *_secret_key(config))
    with _SOURCES_LOCK:
        source = _MSAL_SOURCES.get(key)
        if source is None:
            source = _MSAL_SOURCES[key] = MsalSource(config)
        return source
