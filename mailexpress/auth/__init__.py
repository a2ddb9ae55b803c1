"""Authentication: which SASL mechanism, with which credentials.

`authenticate` is what `mailexpress.connect` calls after EHLO (and
STARTTLS).  It picks the mechanism the way Exchange's own clients do:

* ``auth_mechanisms = "automatic"`` (the default): in the order XOAUTH2,
  OAUTHBEARER (when a token source is configured), GSSAPI (when a Kerberos
  ticket is available), NTLM (with the password, when pyspnego is
  installed), LOGIN, PLAIN -- the first the server offers;
* an explicit list pins both the allowed set and the order.

A mechanism the server advertises but then does not know (``504``) gives
way to the next one.  Once the server has refused the credentials (any
other 4xx/5xx) nothing else is tried: a second mechanism would not make a
wrong secret right, and would only send it again.  Tokens come from
`mailexpress.auth.tokens` before anything goes to the server, so a token
that cannot be had is an `AuthError` with nothing sent.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import AUTH_MECHANISMS
from ..errors import AuthError, NotSupportedError
from ..reply import Reply

if TYPE_CHECKING:
    from .._core import Session
    from ..config import Config

__all__ = ["AuthResult", "authenticate", "plan", "TOKEN_MECHANISMS"]

log = logging.getLogger("mailexpress")

TOKEN_MECHANISMS = ("XOAUTH2", "OAUTHBEARER")
BASIC_MECHANISMS = ("LOGIN", "PLAIN")


@dataclass(frozen=True)
class AuthResult:
    """How the session authenticated: the mechanism used, the server's
    final reply, and every mechanism the server offered."""

    mechanism: str
    reply: Reply
    offered: tuple[str, ...]


def offered_mechanisms(session: Session) -> tuple[str, ...]:
    return tuple(session.capabilities.get("AUTH", "").upper().split())


def plan(config: Config, offered: Sequence[str], *,
         kerberos_ticket: Callable[[], bool] | None = None,
         spnego_available: Callable[[], bool] | None = None) -> list[str]:
    """The mechanisms to try, in order: offered, allowed, and with the
    credentials they need.  Pure apart from the two probes (which default
    to asking pyspnego/gssapi, lazily, and only when they matter)."""
    if kerberos_ticket is None or spnego_available is None:
        from . import spnego as _sp
        kerberos_ticket = kerberos_ticket or _sp.kerberos_ticket_available
        spnego_available = spnego_available or _sp.available
    offered_set = set(offered)
    pinned = config.auth_pinned
    order = config.auth_mechanisms if pinned else AUTH_MECHANISMS
    has_password = config.password is not None
    out: list[str] = []
    for mech in order:
        if mech not in offered_set:
            continue
        if mech in TOKEN_MECHANISMS:
            usable = config.has_token_source
        elif mech == "GSSAPI":
            # automatic: only with a ticket already there; pinned: the ticket
            # cache, or username + password for pyspnego to get one
            usable = spnego_available() and (pinned or kerberos_ticket())
        elif mech == "NTLM":
            usable = has_password and config.username is not None and (pinned or spnego_available())
        else:
            usable = has_password and config.username is not None
        if usable:
            out.append(mech)
    return out


def _no_mechanism(config: Config, session: Session, offered: tuple[str, ...]) -> NotSupportedError:
    if not offered:
        tls = session.tls_active
        return NotSupportedError("the server offers no AUTH" + (
            "" if tls else " before TLS (many servers offer it only after STARTTLS)"),
            stage="AUTH", reply=session.ehlo_reply)
    shown = " ".join(offered)
    if config.auth_pinned:
        msg = (f"the server offers AUTH {shown} but none of the allowed mechanisms "
               f"(auth_mechanisms = {config.auth_mechanisms}); allow one it offers, or "
               "set auth_mechanisms = 'automatic'")
    elif config.has_token_source:
        msg = (f"the server offers AUTH {shown} but none of the allowed mechanisms for the "
               "configured token (XOAUTH2, OAUTHBEARER); this server does not take OAuth tokens")
    else:
        msg = (f"the server offers AUTH {shown} but none of the allowed mechanisms (PLAIN, LOGIN); "
               "basic authentication is off on this connector")
        hints = []
        if set(TOKEN_MECHANISMS) & set(offered):
            hints.append("it takes OAuth tokens: configure oauth_tenant and oauth_client_id, or "
                         "token_provider= (docs/oauth.md)")
        if "NTLM" in offered:
            hints.append("NTLM needs pyspnego: pip install 'mailexpress[windows-auth]'")
        if "GSSAPI" in offered:
            hints.append("GSSAPI (Kerberos) needs a ticket: kinit, or auth_mechanisms = ['GSSAPI'] "
                         "with username and password")
        if hints:
            msg += "; " + "; ".join(hints)
    return NotSupportedError(msg, stage="AUTH", reply=session.ehlo_reply)


def _unknown_mechanism(exc: AuthError) -> bool:
    """The server does not know the mechanism after all: not a verdict on
    the credentials, so the next mechanism may be tried."""
    return exc.code == 504


def _run(session: Session, config: Config, mech: str) -> Reply:
    if mech in TOKEN_MECHANISMS:
        from .tokens import source_for
        source = source_for(config)
        assert source is not None and config.username is not None
        token = source.get()        # raises AuthError before anything is sent
        try:
            return session.auth_oauth(config.username, token.token, mech)
        except AuthError as exc:
            if exc.code is not None and exc.code >= 500 and exc.code != 504:
                source.invalidate()     # refused: the next connection asks anew
            raise
    password = config.password.reveal() if config.password is not None else None
    hostname = config.server_name or config.host
    if mech == "NTLM":
        from .spnego import NtlmStep
        assert config.username is not None and password is not None
        ntlm = NtlmStep(config.username, password, hostname=hostname,
                        service=config.kerberos_service)
        return session.auth("NTLM", ntlm, secret=True)
    if mech == "GSSAPI":
        from .spnego import GssapiStep, kerberos_ticket_available
        # the ticket in the cache when there is one (kinit, KRB5CCNAME); else
        # username + password, with which pyspnego gets a ticket
        if password is None or kerberos_ticket_available():
            user, password = None, None
        else:
            user = config.username
        gss = GssapiStep(user, password, hostname=hostname, service=config.kerberos_service)
        return session.auth("GSSAPI", gss, secret=False)
    assert config.username is not None and password is not None
    return session.login(config.username, password, mech)


def authenticate(session: Session, config: Config) -> AuthResult:
    """Authenticates ``session`` as ``config`` says (see the module doc).

    Raises `NotSupportedError` (naming ``auth_mechanisms`` and what the
    server offers) when no mechanism fits, `AuthError` when the token
    source fails or the server refuses, `InsecureAuthError` when a secret
    would go out without TLS.
    """
    offered = offered_mechanisms(session)
    candidates = plan(config, offered)
    if not candidates:
        raise _no_mechanism(config, session, offered)
    unknown: list[tuple[str, AuthError]] = []
    for i, mech in enumerate(candidates):
        try:
            reply = _run(session, config, mech)
        except AuthError as exc:
            if exc.mechanism is None:
                exc.mechanism = mech
            if _unknown_mechanism(exc) and i + 1 < len(candidates):
                log.info("the server advertised AUTH %s but does not know it (%s); trying %s",
                         mech, exc.reply, candidates[i + 1])
                unknown.append((mech, exc))
                continue
            if _unknown_mechanism(exc):
                unknown.append((mech, exc))
                raise _all_unknown(config, session, offered, unknown) from exc
            raise
        log.info("authenticated with AUTH %s", mech)
        return AuthResult(mech, reply, offered)
    raise AssertionError("unreachable")


def _all_unknown(config: Config, session: Session, offered: tuple[str, ...],
                 unknown: list[tuple[str, AuthError]]) -> NotSupportedError:
    tried = ", ".join(m for m, _ in unknown)
    base = _no_mechanism(config, session, tuple(m for m in offered if m not in dict(unknown)))
    msg = f"the server advertised but does not know AUTH {tried} (504)"
    if not config.auth_pinned and not config.has_token_source and not (
            set(BASIC_MECHANISMS) & set(offered)):
        msg += ("; none of the allowed mechanisms (PLAIN, LOGIN) is offered: basic "
                "authentication is off on this connector")
    elif base.message and "offers no AUTH" not in base.message:
        msg += "; " + base.message
    exc = NotSupportedError(msg, stage="AUTH", reply=unknown[-1][1].reply)
    exc.mechanism = unknown[-1][0]       # type: ignore[attr-defined]
    return exc


def describe(result: AuthResult | None) -> dict[str, Any]:
    """For reports: the mechanism used and those offered."""
    if result is None:
        return {"mechanism": None, "offered": []}
    return {"mechanism": result.mechanism, "offered": list(result.offered)}
