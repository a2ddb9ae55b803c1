"""NTLM and Kerberos (SASL GSSAPI, RFC 4752) as step functions for
``Session.auth``, through pyspnego (extra ``mailexpress[windows-auth]``).

No NTLM or Kerberos crypto here: pyspnego (and MIT Kerberos under it, via
python-gssapi) does it.  This module only frames the SASL exchange:

* NTLM: the NEGOTIATE message as the initial response, the AUTHENTICATE
  message in answer to the server's CHALLENGE (two round trips).
* GSSAPI: the Kerberos AP-REQ as the initial response; the server's AP-REP
  (mutual authentication) answered with an empty response; then RFC 4752's
  security-layer negotiation: the server's wrapped 4 octets (layers it
  offers, maximum message size) are unwrapped, and the client answers,
  wrapped with integrity only, "no security layer" (bit 1) and size 0 —
  TLS protects the session.  No authorization identity is sent: the
  server takes the ticket's principal (what msmtp/GNU SASL and MailKit do).

Credentials: for Kerberos the ticket cache (``KRB5CCNAME``, ``kinit``), or
username and password (pyspnego gets a ticket with them); for NTLM the
username (``DOMAIN\\user`` or ``user@domain``) and password.
"""
from __future__ import annotations

import importlib.util
from typing import Any

from ..errors import AuthError

__all__ = ["NtlmStep", "GssapiStep", "available", "kerberos_ticket_available"]

_EXTRA = "pip install 'mailexpress[windows-auth]'"

# RFC 4752 section 3.3: security layer bits
_NO_SECURITY_LAYER = 0x01


def available() -> bool:
    """pyspnego is installed (without importing it)."""
    return importlib.util.find_spec("spnego") is not None


def kerberos_ticket_available() -> bool:
    """A Kerberos ticket-granting ticket in the default credential cache
    (``KRB5CCNAME``) that has not expired."""
    if importlib.util.find_spec("gssapi") is None:
        return False
    try:
        import gssapi
    except ImportError:
        return False
    try:
        creds = gssapi.Credentials(usage="initiate", mechs=[gssapi.MechType.kerberos])
        lifetime = creds.lifetime
    except Exception:       # GSSError: no credential cache, no TGT, expired
        return False
    return lifetime is None or lifetime > 0


def _failed(mechanism: str, what: str, fix: str, cause: BaseException | None = None) -> AuthError:
    exc = AuthError(f"{mechanism}: {what}; {fix}", stage="AUTH")
    exc.mechanism = mechanism
    if cause is not None:
        exc.__cause__ = cause
    return exc


def _client(mechanism: str, protocol: str, username: str | None, password: str | None,
            hostname: str, service: str) -> Any:
    try:
        import spnego
    except ImportError:
        raise _failed(mechanism, "pyspnego is not installed", _EXTRA) from None
    try:
        return spnego.client(username, password, hostname=hostname, service=service,
                             protocol=protocol,
                             context_req=spnego.ContextReq.mutual_auth | spnego.ContextReq.integrity
                             | spnego.ContextReq.sequence_detect)
    except Exception as exc:
        raise _failed(mechanism, f"cannot set up the {protocol} client: {type(exc).__name__}: {exc}",
                      _EXTRA if "not available" in str(exc).lower() else "check the credentials",
                      exc) from None


class NtlmStep:
    """SASL NTLM for ``Session.auth("NTLM", step)``."""

    mechanism = "NTLM"
    secret = True           # the NTLM response is password-derived: TLS only

    def __init__(self, username: str, password: str, *, hostname: str, service: str) -> None:
        self._ctx = _client("NTLM", "ntlm", username, password, hostname, service)
        try:
            self.initial: bytes = self._ctx.step() or b""        # NEGOTIATE
        except Exception as exc:
            raise _failed("NTLM", f"pyspnego failed: {type(exc).__name__}: {exc}",
                          "check username (DOMAIN\\user or user@domain)", exc) from None

    def __call__(self, challenge: bytes | None) -> bytes | None:
        if challenge is None:
            return self.initial
        if self._ctx.complete:
            return None
        # CHALLENGE in, AUTHENTICATE out; pyspnego's errors go back through
        # Session.auth, which cancels the exchange with "*"
        return self._ctx.step(challenge) or b""


class GssapiStep:
    """SASL GSSAPI (Kerberos V5, RFC 4752) for ``Session.auth("GSSAPI", step, secret=False)``."""

    mechanism = "GSSAPI"
    secret = False          # a Kerberos ticket exposes no reusable secret

    def __init__(self, username: str | None, password: str | None, *, hostname: str,
                 service: str) -> None:
        self.spn = f"{service}/{hostname}"
        self._ctx = _client("GSSAPI", "kerberos", username, password, hostname, service)
        try:
            self.initial: bytes = self._ctx.step() or b""        # AP-REQ
        except Exception as exc:
            raise _failed("GSSAPI", f"no Kerberos service ticket for {self.spn}: "
                          f"{type(exc).__name__}: {_first_line(exc)}",
                          "kinit first (or give username and password), and check that the "
                          f"server's principal is {self.spn} (kerberos_service, server_name)",
                          exc) from None
        self.layer_sent = False

    def __call__(self, challenge: bytes | None) -> bytes | None:
        if challenge is None:
            return self.initial
        if not self._ctx.complete:
            # the server's AP-REP (mutual authentication); nothing to answer
            # once the context is complete (RFC 4752 section 3.1)
            return self._ctx.step(challenge) or b""
        if self.layer_sent:
            raise _failed("GSSAPI", "the server sent another challenge after the security "
                          "layer was agreed", "this is a server fault")
        offer = self._ctx.unwrap(challenge).data
        if len(offer) != 4:
            raise _failed("GSSAPI", f"the security-layer offer is {len(offer)} octets, not 4",
                          "this is a server fault (RFC 4752 section 3.1)")
        if not offer[0] & _NO_SECURITY_LAYER:
            raise _failed("GSSAPI", "the server insists on a Kerberos security layer",
                          "allow 'no security layer' on the server (TLS protects the session)")
        self.layer_sent = True
        # layer 1 (none), max size 0, no authorization identity; integrity only
        return bytes(self._ctx.wrap(bytes([_NO_SECURITY_LAYER, 0, 0, 0]), encrypt=False).data)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
