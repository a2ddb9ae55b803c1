"""The emulator's AUTH command: PLAIN and LOGIN with Exchange's refusals
(Basic disabled, retired, SMTP AUTH off for the tenant or mailbox, the
transient PRX4), XOAUTH2 and OAUTHBEARER against the emulator's token
issuer, NTLM through pyspnego.  A base class of `ConnectorEmulator`, which
holds the settings it reads (see its knobs)."""
from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from .sasl import NtlmAcceptor, OAuthBlobError, error_challenge, ntlm_local, parse_oauthbearer, parse_xoauth2
from .tokens import EXCHANGE_SCOPE, TestIssuer, TokenRejected

if TYPE_CHECKING:
    from .emulator import User, _Conn, _SessionState

__all__ = ["AuthAttempt", "AuthServer"]


@dataclass(frozen=True)
class AuthAttempt:
    """One AUTH exchange as the emulator judged it.  ``outcome`` is
    ``"ok"``, ``"refused"`` (5xx), ``"temporary"`` (4xx) or ``"cancelled"``;
    ``reason`` says why (e.g. ``"expired"``, ``"no_role"``,
    ``"bad_password"``, ``"basic_auth_disabled"``)."""

    mechanism: str
    user: str | None
    outcome: str
    reason: str
    reply: str



class AuthServer:
    """AUTH for `ConnectorEmulator` (the settings below are its knobs)."""

    users: dict[str, User]
    auth_mechanisms: tuple[str, ...]
    other_mechanisms: tuple[str, ...]
    auth_before_tls: bool
    flavour: str
    hostname: str
    auth_delay: float
    basic_auth: str
    smtp_client_auth_disabled: str | None
    auth_temporary_failures: int
    integrated_auth: bool
    issuer: TestIssuer
    mailbox_grants: dict[str, set[str]]
    auth_log: list[AuthAttempt]
    _ntlm: NtlmAcceptor | None
    _ntlm_error: str | None
    _lock: threading.Lock

    def _offered(self, s: _SessionState) -> list[str]:
        """AUTH mechanisms in EHLO: Integrated Windows ones always, the
        others after TLS (or before it, when misconfigured so).  NTLM only
        when the emulator answers it (integrated_auth): advertised and
        refused with 504, it would cost every client with pyspnego a round
        trip (AUTH NTLM -> 504 -> the next mechanism) that no test wants."""
        mechs = [m for m in self.other_mechanisms if m != "NTLM" or self.integrated_auth]
        if s.tls or self.auth_before_tls:
            mechs += [m for m in self.auth_mechanisms if m not in mechs]
        return mechs

    def _find_user(self, name: str) -> User | None:
        name = name.lower()
        found = self.users.get(name)
        if found is None:
            found = next((u for u in self.users.values() if u.address.lower() == name), None)
        return found

    def _tag(self, with_id: bool = False) -> str:
        """Exchange Online's bracketed trailer: [server] or [server time id]."""
        if self.flavour != "online":
            return ""
        if not with_id:
            return f" [{self.hostname}]"
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return f" [{self.hostname} {now} {secrets.token_hex(8).upper()}]"

    def _auth_end(self, conn: _Conn, s: _SessionState, mech: str, name: str | None, reason: str,
                  reply: str, user: User | None = None) -> None:
        outcome = "ok" if reply.startswith("2") else "temporary" if reply.startswith("4") else (
            "cancelled" if reason == "cancelled" else "refused")
        if user is not None and outcome == "ok":
            s.user = user
        with self._lock:
            self.auth_log.append(AuthAttempt(mech, name, outcome, reason, reply))
        conn.send(reply)

    def _temporary(self) -> bool:
        with self._lock:
            if self.auth_temporary_failures > 0:
                self.auth_temporary_failures -= 1
                return True
        return False

    def _decode(self, conn: _Conn, s: _SessionState, mech: str, text: bytes) -> bytes | None:
        """A client response: base64 ('=' is empty); '*' cancels."""
        if text == b"*":
            self._auth_end(conn, s, mech, None, "cancelled", "501 5.0.0 Authentication cancelled")
            return None
        if text == b"=":
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            self._auth_end(conn, s, mech, None, "bad_base64", "501 5.5.2 Cannot decode argument")
            return None

    def _ask(self, conn: _Conn, s: _SessionState, mech: str, challenge: str) -> bytes | None:
        """Sends ``334 <challenge>`` and returns the decoded answer."""
        conn.send(f"334 {challenge}")
        raw = conn.readline()
        if raw is None:
            raise ConnectionAbortedError("the client closed during AUTH")
        return self._decode(conn, s, mech, raw.strip())

    def _cmd_auth(self, conn: _Conn, s: _SessionState, arg: str) -> bool | None:
        parts = arg.split()
        mech = parts[0].upper() if parts else ""
        if s.user is not None:
            conn.send("503 5.5.2 Already authenticated")
            return None
        if s.mail_from is not None:
            conn.send("503 5.5.1 Bad sequence of commands")
            return None
        handlers = {"PLAIN": self._auth_plain, "LOGIN": self._auth_login, "XOAUTH2": self._auth_oauth,
                    "OAUTHBEARER": self._auth_oauth}
        if self.integrated_auth:
            handlers["NTLM"] = self._auth_ntlm
        handler = handlers.get(mech)
        if mech not in self._offered(s) or handler is None:
            conn.send("504 5.7.4 Unrecognized authentication type")
            return None
        if len(parts) > 2:
            conn.send("501 5.5.4 Invalid arguments")
            return None
        initial = None
        if len(parts) == 2:
            initial = self._decode(conn, s, mech, parts[1].encode("ascii", "replace"))
            if initial is None:
                return None
        handler(conn, s, mech, initial)
        return None

    # -- PLAIN and LOGIN (basic authentication) ----------------------------------

    def _auth_plain(self, conn: _Conn, s: _SessionState, mech: str, initial: bytes | None) -> None:
        payload = initial if initial is not None else self._ask(conn, s, mech, "")
        if payload is None:
            return
        fields = payload.split(b"\0")
        if len(fields) != 3:
            self._auth_end(conn, s, mech, None, "bad_message", "501 5.5.2 Cannot decode argument")
            return
        self._basic(conn, s, mech, fields[1].decode("utf-8", "replace"), fields[2].decode("utf-8", "replace"))

    def _auth_login(self, conn: _Conn, s: _SessionState, mech: str, initial: bytes | None) -> None:
        creds = []
        if initial is not None:
            creds.append(initial.decode("utf-8", "replace"))
        for prompt in ("VXNlcm5hbWU6", "UGFzc3dvcmQ6")[len(creds):]:   # "Username:", "Password:"
            answer = self._ask(conn, s, mech, prompt)
            if answer is None:
                return
            creds.append(answer.decode("utf-8", "replace"))
        self._basic(conn, s, mech, creds[0], creds[1])

    def _basic(self, conn: _Conn, s: _SessionState, mech: str, username: str, password: str) -> None:
        if self.auth_delay:
            time.sleep(self.auth_delay)
        if self._temporary():
            self._auth_end(conn, s, mech, username, "temporary",
                           "451 4.7.0 Temporary server error. Please try again later. PRX4")
            return
        if self.basic_auth == "retired":
            self._auth_end(conn, s, mech, username, "basic_auth_retired",
                           "550 5.7.30 Basic authentication is not supported for Client Submission.")
            return
        if self.basic_auth == "disabled":
            self._auth_end(conn, s, mech, username, "basic_auth_disabled",
                           "535 5.7.139 Authentication unsuccessful, basic authentication is disabled."
                           + self._tag())
            return
        user = self._find_user(username)
        if user is None or not secrets.compare_digest(user.password.encode(), password.encode()):
            self._auth_end(conn, s, mech, username, "bad_password",
                           "535 5.7.139 Authentication unsuccessful, the user credentials were incorrect."
                           + self._tag() if self.flavour == "online" else "535 5.7.3 Authentication unsuccessful")
            return
        self._accept(conn, s, mech, username, user)

    def _accept(self, conn: _Conn, s: _SessionState, mech: str, name: str, user: User) -> None:
        if self.smtp_client_auth_disabled:
            where = self.smtp_client_auth_disabled.capitalize()
            self._auth_end(conn, s, mech, name, f"smtp_auth_disabled_{self.smtp_client_auth_disabled}",
                           f"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled "
                           f"for the {where}. Visit https://aka.ms/smtp_auth_disabled for more information."
                           + self._tag())
            return
        self._auth_end(conn, s, mech, name, "ok", "235 2.7.0 Authentication successful", user)

    # -- XOAUTH2 and OAUTHBEARER ------------------------------------------------------

    def _auth_oauth(self, conn: _Conn, s: _SessionState, mech: str, initial: bytes | None) -> None:
        blob = initial if initial is not None else self._ask(conn, s, mech, "")
        if blob is None:
            return
        try:
            name, token = (parse_xoauth2 if mech == "XOAUTH2" else parse_oauthbearer)(blob)
        except OAuthBlobError:
            self._auth_end(conn, s, mech, None, "bad_message", "501 5.5.2 Cannot decode argument")
            return
        if self._temporary():
            self._auth_end(conn, s, mech, name, "temporary",
                           "451 4.7.0 Temporary server error. Please try again later. PRX4")
            return
        refused = "535 5.7.3 Authentication unsuccessful" + self._tag(with_id=True)
        try:
            claims = self.issuer.validate(token)
        except TokenRejected as exc:
            # RFC 7628 3.2.2 (and Google's XOAUTH2): an error challenge, the
            # client's dummy response (%x01, or an empty line for XOAUTH2), then 535
            config_url = (f"https://login.microsoftonline.com/{self.issuer.tenant_id}/v2.0/"
                          ".well-known/openid-configuration")
            conn.send(f"334 {error_challenge(mech, EXCHANGE_SCOPE, config_url)}")
            raw = conn.readline()
            if raw is None:
                raise ConnectionAbortedError("the client closed during AUTH") from None
            dummy = b"" if mech == "XOAUTH2" else b"AQ=="
            if raw.rstrip(b"\r\n") != dummy:
                self._auth_end(conn, s, mech, name, "bad_dummy_response",
                               "501 5.5.2 Expected the dummy response to the error challenge")
                return
            self._auth_end(conn, s, mech, name, exc.reason, refused)
            return
        user = self._find_user(name)
        if user is None:
            self._auth_end(conn, s, mech, name, "unknown_mailbox", refused)
            return
        if "scp" in claims:
            if "SMTP.Send" not in str(claims["scp"]).split():
                reason = "no_scope"
            elif str(claims.get("upn", "")).lower() not in (user.address.lower(), user.username.lower()):
                reason = "other_mailbox"
            else:
                reason = ""
        elif "SMTP.SendAsApp" not in (claims.get("roles") or []):
            reason = "no_role"
        elif user.address.lower() not in self.mailbox_grants.get(str(claims.get("oid")), set()):
            reason = "no_mailbox_permission"
        else:
            reason = ""
        if reason:
            self._auth_end(conn, s, mech, name, reason, refused)
            return
        self._accept(conn, s, mech, name, user)

    # -- NTLM (Integrated Windows authentication) -----------------------------------

    def _auth_ntlm(self, conn: _Conn, s: _SessionState, mech: str, initial: bytes | None) -> None:
        if self._ntlm is None:
            self._auth_end(conn, s, mech, None, "no_pyspnego",
                           f"454 4.7.0 Temporary authentication failure: the emulator answers NTLM "
                           f"through pyspnego: {self._ntlm_error or 'not set up'}")
            return
        ctx = self._ntlm.context()
        # MS-SMTPNTLM: without an initial response the server says "NTLM supported"
        negotiate = initial if initial is not None else self._ask(conn, s, mech, "NTLM supported")
        if negotiate is None:
            return
        try:
            challenge = self._ntlm.step(ctx, negotiate)
        except Exception:       # pyspnego's SpnegoError and its parse errors
            self._auth_end(conn, s, mech, None, "bad_message", "535 5.7.3 Authentication unsuccessful")
            return
        answer = self._ask(conn, s, mech, base64.b64encode(challenge or b"").decode("ascii"))
        if answer is None:
            return
        try:
            self._ntlm.step(ctx, answer)
            principal = str(ctx.client_principal or "")
        except Exception:       # the logon was denied (wrong password, unknown user)
            self._auth_end(conn, s, mech, None, "bad_password", "535 5.7.3 Authentication unsuccessful")
            return
        if self._temporary():
            self._auth_end(conn, s, mech, principal, "temporary",
                           "451 4.7.0 Temporary server error. Please try again later. PRX4")
            return
        user = self._find_user(principal) or next(
            (u for u in self.users.values() if ntlm_local(principal) in (ntlm_local(u.username),
                                                                         ntlm_local(u.address))), None)
        if user is None:
            self._auth_end(conn, s, mech, principal, "unknown_user", "535 5.7.3 Authentication unsuccessful")
            return
        self._accept(conn, s, mech, principal, user)
