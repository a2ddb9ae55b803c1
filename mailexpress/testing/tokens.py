"""The emulator's own token issuer: JWTs shaped like the app-only tokens
Microsoft Entra ID issues for Exchange Online (claims ``aud``, ``iss``,
``tid``, ``appid``, ``oid``, ``roles`` or ``scp``), signed HS256 with a key
that only this issuer (one per emulator) knows.

Standard library only (hmac, hashlib, json, base64): the ``testing`` extra
gains no dependency.  These tokens prove nothing outside the emulator that
issued them.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

__all__ = ["EXCHANGE_AUDIENCE", "EXCHANGE_SCOPE", "AccessToken", "EmulatorTokenProvider", "TestIssuer",
           "TokenRejected"]

EXCHANGE_AUDIENCE = "https://outlook.office365.com"
EXCHANGE_SCOPE = EXCHANGE_AUDIENCE + "/.default"
# Exchange Online's own application id: Entra also issues tokens with it as aud
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"


class TokenRejected(Exception):
    """The token is not one this issuer accepts; ``reason`` is one of
    ``malformed``, ``unsupported_alg``, ``bad_signature``, ``expired``,
    ``not_yet_valid``, ``wrong_audience``, ``wrong_issuer``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class AccessToken(NamedTuple):
    """The shape of ``azure.core.credentials.AccessToken``."""

    token: str
    expires_on: int

    def __repr__(self) -> str:
        return f"AccessToken(token='<redacted>', expires_on={self.expires_on})"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TestIssuer:
    """A tenant's token endpoint, reduced to what a test needs.

    ``app_roles`` are the application permissions the tenant's admin
    consented to for the app (``SMTP.SendAsApp`` unless a test models an
    app registration without it).
    """

    __test__ = False    # not a pytest test class

    def __init__(self, *, tenant_id: str | None = None, app_id: str | None = None,
                 app_roles: Iterable[str] = ("SMTP.SendAsApp",), key: bytes | None = None) -> None:
        self.tenant_id = tenant_id or str(uuid.uuid4())
        self.app_id = app_id or str(uuid.uuid4())
        self.service_principal_id = str(uuid.uuid4())   # the enterprise application's object id
        self.app_roles = tuple(app_roles)
        self._key = key or secrets.token_bytes(32)
        self.kid = _b64url(hashlib.sha256(self._key).digest()[:9])

    def __repr__(self) -> str:
        return f"TestIssuer(tenant_id={self.tenant_id!r}, app_id={self.app_id!r}, key='<redacted>')"

    @property
    def issuer(self) -> str:
        return f"https://sts.windows.net/{self.tenant_id}/"

    def issue(self, user: str | None = None, *, audience: str = EXCHANGE_AUDIENCE, expires_in: int = 3600,
              roles: Iterable[str] | None = None, scope: str | Iterable[str] | None = None,
              app_id: str | None = None, tenant_id: str | None = None, issuer: str | None = None,
              key: bytes | None = None, not_before: int | None = None,
              extra_claims: dict[str, Any] | None = None) -> str:
        """A signed token.  Without ``scope`` it is an app-only token with
        ``roles`` (default: the consented ``app_roles``); with ``scope``
        (e.g. ``"SMTP.Send"``) a delegated token for ``user`` (claims
        ``scp``, ``upn``).  ``key`` signs with another key (a bad signature);
        ``expires_in`` may be negative (already expired)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": audience, "iss": issuer or self.issuer, "iat": now - 5,
            "nbf": not_before if not_before is not None else now - 5, "exp": now + expires_in,
            "appid": app_id or self.app_id, "app_displayname": "mailexpress test app",
            "appidacr": "1", "idp": issuer or self.issuer, "oid": self.service_principal_id,
            "sub": self.service_principal_id, "tid": tenant_id or self.tenant_id,
            "uti": _b64url(secrets.token_bytes(16)), "ver": "1.0",
        }
        if scope is not None:
            claims["scp"] = scope if isinstance(scope, str) else " ".join(scope)
            if user:
                claims["upn"] = claims["unique_name"] = user
        else:
            claims["roles"] = list(self.app_roles if roles is None else roles)
        claims.update(extra_claims or {})
        header = {"typ": "JWT", "alg": "HS256", "kid": self.kid}
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = hmac.new(key or self._key, signing_input.encode("ascii"), hashlib.sha256).digest()
        return signing_input + "." + _b64url(sig)

    def validate(self, token: str, *, audiences: Iterable[str] = (EXCHANGE_AUDIENCE, EXCHANGE_APP_ID),
                 now: float | None = None) -> dict[str, Any]:
        """The claims of a token this issuer signed and that is valid now,
        for one of ``audiences``; raises `TokenRejected` otherwise."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRejected("malformed", "not three dot-separated parts")
        try:
            header = json.loads(_unb64url(parts[0]))
            claims = json.loads(_unb64url(parts[1]))
            sig = _unb64url(parts[2])
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenRejected("malformed", str(exc)) from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenRejected("malformed", "header and payload must be JSON objects")
        if header.get("alg") != "HS256":
            raise TokenRejected("unsupported_alg", f"alg {header.get('alg')!r}")
        want = hmac.new(self._key, (parts[0] + "." + parts[1]).encode("ascii"), hashlib.sha256).digest()
        if not hmac.compare_digest(want, sig):
            raise TokenRejected("bad_signature")
        t = time.time() if now is None else now
        for name in ("exp", "nbf"):
            if not isinstance(claims.get(name), (int, float)):
                raise TokenRejected("malformed", f"no numeric {name}")
        if claims["exp"] <= t:
            raise TokenRejected("expired", f"expired {int(t - claims['exp'])} s ago")
        if claims["nbf"] > t:
            raise TokenRejected("not_yet_valid")
        if claims.get("aud") not in tuple(audiences):
            raise TokenRejected("wrong_audience", f"aud {claims.get('aud')!r}")
        if claims.get("iss") != self.issuer or claims.get("tid") != self.tenant_id:
            raise TokenRejected("wrong_issuer", f"iss {claims.get('iss')!r}")
        return claims


class EmulatorTokenProvider:
    """A ``token_provider`` for mailexpress: ``get_token(scope)`` as an
    azure-identity credential has, and callable (returning
    ``(token, expires_at)``) as a plain provider.  The token's audience is
    the scope's resource, so asking for the wrong scope gives a token
    Exchange refuses, as in real life.  ``requests`` counts the tokens
    issued."""

    def __init__(self, issue: Callable[..., str], user: str, *, expires_in: int = 3600,
                 **token_options: Any) -> None:
        self._issue = issue
        self.user = user
        self.expires_in = expires_in
        self.token_options = token_options
        self.requests = 0
        self.scopes: list[str] = []

    def __repr__(self) -> str:
        return f"EmulatorTokenProvider(user={self.user!r}, requests={self.requests})"

    def get_token(self, *scopes: str, **_kwargs: Any) -> AccessToken:
        scope = scopes[0] if scopes else EXCHANGE_SCOPE
        self.requests += 1
        self.scopes.append(scope)
        audience = scope[:-len("/.default")] if scope.endswith("/.default") else scope
        options = {"audience": audience, **self.token_options}
        token = self._issue(self.user, expires_in=self.expires_in, **options)
        return AccessToken(token, int(time.time()) + self.expires_in)

    def __call__(self) -> tuple[str, int]:
        token, expires_on = self.get_token(EXCHANGE_SCOPE)
        return token, expires_on
