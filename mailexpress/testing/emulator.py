"""An in-process submission server that answers like an Exchange receive
connector (see EXCHANGE.md for where each reply comes from).

It listens on 127.0.0.1 only, one thread per connection, and keeps every
accepted message as the bytes it received.  It is a test peer: strict about
the protocol, generous with diagnostics, small enough to read.
"""
from __future__ import annotations

import email
import email.policy
import secrets
import socket
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import TYPE_CHECKING, Any, Literal

from .auth_server import AuthAttempt, AuthServer
from .certs import TestCertificates, test_certificates
from .sasl import NtlmAcceptor
from .throttling import ThrottlingServer
from .token_endpoint import EntraTokenEndpoint
from .tokens import EmulatorTokenProvider, TestIssuer

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["AuthAttempt", "ConnectorEmulator", "User", "ReceivedMessage", "PRESETS"]

Rights = Literal["self", "authoritative_domain", "any"]

# Largest command line the emulator reads (RFC 5321 allows 512, but AUTH
# lines carry OAuth tokens of tens of KB: up to 64 KiB of token, base64'd).
_MAX_LINE = 96 * 1024
_MAX_DATA_LINE = 1024 * 1024
_MAX_MESSAGE = 64 * 1024 * 1024


@dataclass(frozen=True)
class User:
    """An account of the emulated organisation.

    ``rights`` models the connector permissions: ``"self"`` (own address
    only), ``"authoritative_domain"`` (ms-Exch-SMTP-Accept-Authoritative-
    Domain-Sender) or ``"any"`` (ms-Exch-SMTP-Accept-Any-Sender).
    ``send_as`` lists the header From addresses it holds Send As for.
    """

    username: str
    password: str
    address: str
    rights: Rights = "self"
    send_as: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (f"User(username={self.username!r}, password='********', address={self.address!r}, "
                f"rights={self.rights!r})")


@dataclass
class ReceivedMessage:
    """One accepted message, exactly as it arrived (dot-unstuffed, CRLF)."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    username: str | None
    tls: bool
    helo: str | None
    mail_options: list[str] = field(default_factory=list)

    @property
    def message(self) -> EmailMessage:
        """The message parsed, with line ends as Python's own (LF)."""
        msg = email.message_from_bytes(self.data.replace(b"\r\n", b"\n"), policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


# Named connector set-ups: what an admin gets right, and each way to get it
# wrong.  "rights" is the service account's (when the preset makes it).
_ONLINE: dict[str, Any] = {
    "rights": "self", "flavour": "online", "sender_check_stage": "END_OF_DATA",
    # after STARTTLS only: AUTH LOGIN XOAUTH2; Basic off (the default for
    # every tenant from the end of December 2026)
    "auth_mechanisms": ("LOGIN", "XOAUTH2"), "other_mechanisms": (), "basic_auth": "disabled",
    "chunking": True, "hostname": "BN0PR01CA0001.outlook.office365.com",
    "authoritative_domains": ("corp.example",),
}

PRESETS: dict[str, dict[str, Any]] = {
    # port 587 "Client" connector done right: TLS required, AUTH LOGIN only
    # after STARTTLS, Exchange users only, the account may send as anyone
    "exchange_client": {"rights": "any"},
    "anonymous_allowed": {"rights": "any", "allow_anonymous": True},
    # on-premises connector with Basic off: AUTH GSSAPI NTLM only (Integrated
    # Windows authentication); LOGIN draws 504 5.7.4; NTLM is answered
    "basic_auth_off": {"rights": "any", "auth_mechanisms": ()},
    "auth_before_tls": {"rights": "any", "auth_before_tls": True},
    "no_tls": {"rights": "any", "security": "none"},
    "authoritative_only": {"rights": "authoritative_domain"},
    "no_impersonation": {"rights": "self"},
    "refuse_at_rcpt": {"rights": "authoritative_domain", "sender_check_stage": "RCPT"},
    "send_as_missing": {"rights": "authoritative_domain", "check_header_from": True},
    # a tenant after December 2026: LOGIN -> 535 5.7.139 basic authentication
    # is disabled; XOAUTH2 with the emulator's tokens (basic_auth="enabled"
    # turns Basic back on, as an admin still can)
    "exchange_online": dict(_ONLINE),
    # Set-CASMailbox <mailbox> -SmtpClientAuthenticationDisabled $true
    "exchange_online_smtp_auth_disabled": {**_ONLINE, "smtp_client_auth_disabled": "mailbox"},
    # the app registration lacks SMTP.SendAsApp (or its admin consent)
    "exchange_online_no_sendasapp": {**_ONLINE, "app_roles": ()},
    "expired_certificate": {"rights": "any", "certificate": "expired"},
    "wrong_host_certificate": {"rights": "any", "certificate": "wrong_host"},
}


class _Conn:
    """Line I/O over a socket that may be upgraded to TLS mid-way."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket = sock
        self.buf = bytearray()
        self.pos = 0

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def send_lines(self, code: int, lines: list[str]) -> None:
        """A multi-line reply in one write."""
        out = [f"{code}-{text}" for text in lines[:-1]] + [f"{code} {lines[-1]}"]
        self.sock.sendall("".join(x + "\r\n" for x in out).encode("utf-8"))

    def discard_buffer(self) -> None:
        self.buf = bytearray()
        self.pos = 0

    def read_exact(self, n: int) -> bytes | None:
        """Exactly n bytes (BDAT chunks); None at EOF."""
        while len(self.buf) - self.pos < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        if self.pos > 65536:
            del self.buf[:self.pos]
            self.pos = 0
        return data

    def readline(self, limit: int = _MAX_LINE) -> bytes | None:
        """One line with its terminator; None at EOF or past ``limit``."""
        while True:
            i = self.buf.find(b"\n", self.pos)
            if i >= 0:
                line = bytes(self.buf[self.pos:i + 1])
                self.pos = i + 1
                if self.pos > 65536:
                    del self.buf[:self.pos]
                    self.pos = 0
                return line
            if len(self.buf) - self.pos > limit:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk


class ConnectorEmulator(ThrottlingServer, AuthServer):
    """An Exchange-like client receive connector on 127.0.0.1.

    Typical use::

        with ConnectorEmulator(users=[User("svc", "pw", "svc@corp.example")]) as em:
            cfg = em.config(username="svc", password="pw")
            mx.send_as(cfg, "svc@corp.example", to=["bob@partner.example"], ...)
            em.messages[0].data

    Knobs (all keyword-only):
      security            "starttls" (default), "ssl" (implicit TLS) or "none"
      require_tls         MAIL before STARTTLS draws 530 5.7.0 (default True)
      auth_mechanisms     mechanisms offered after STARTTLS, default ("LOGIN",)
                          like on-premises Exchange; () turns basic auth off;
                          PLAIN, LOGIN, XOAUTH2 and OAUTHBEARER are answered
      other_mechanisms    Integrated Windows authentication, offered before
                          and after TLS, default ("GSSAPI", "NTLM") as
                          Exchange does (NTLM only with integrated_auth)
      integrated_auth     answer NTLM with pyspnego's acceptor (454 when
                          pyspnego is missing); default: when no PLAIN or
                          LOGIN is offered (Basic off, as on premises).
                          Otherwise NTLM is not advertised (Exchange would:
                          pass integrated_auth=True for its full list), so
                          a client with pyspnego goes straight to LOGIN;
                          GSSAPI is advertised and always draws 504
      basic_auth          "enabled", "disabled" (535 5.7.139 basic
                          authentication is disabled) or "retired" (550
                          5.7.30): what PLAIN/LOGIN get, whatever the password
      smtp_client_auth_disabled  None, "tenant" or "mailbox": every mechanism
                          draws 535 5.7.139 SmtpClientAuthentication is
                          disabled for the Tenant/Mailbox
      auth_temporary_failures  the first N AUTH exchanges draw 451 4.7.0
                          Temporary server error ... PRX4
      app_roles           the application permissions consented for the
                          tenant's app: tokens from `issue_token` carry them
                          (default SMTP.SendAsApp)
      ntlm_domain         the NetBIOS domain of NTLM accounts ("CORP")
      auth_before_tls     offer AUTH before STARTTLS (a misconfiguration)
      allow_anonymous     the "Anonymous users" permission group
      check_header_from   refuse at end of data when the From header is not
                          the user's own, a Send As grant, or any-sender
      authoritative_domains  the organisation's accepted domains
      certificate         "valid", "expired" or "wrong_host"
      tls_max_version     None (TLS 1.3), or "1.2" to stop there
      tls_resumption      True (default): one server SSLContext serves every
                          connection, so the tickets it issues resume
                          (TLS 1.3 tickets, TLS 1.2 tickets and session
                          ids); False: a new context (new ticket keys, an
                          empty session cache) per connection, so every
                          offered session is refused and the handshake is
                          a full one
      tls_server_context  an ssl.SSLContext to serve with instead of one of
                          the emulator's own (e.g. shared by two emulators,
                          so one would resume the other's sessions)
      hostname            the name in the banner and EHLO reply
      sender_check_stage  where a sender the account may not use is refused:
                          "MAIL" (Exchange), "RCPT" (Postfix with
                          smtpd_delay_reject=yes) or "END_OF_DATA" (Exchange
                          Online)
      chunking            offer CHUNKING and BINARYMIME (BDAT, RFC 3030), as
                          Exchange 2013+ and Exchange Online do (default True)
      flavour             "onprem" or "online": Exchange Online's reply texts
      max_messages_per_connection  after this many accepted messages the
                          next MAIL draws a 421 and the connection closes
                          (a receive connector's MaxMessagesPerConnection)
      unknown_recipients  addresses refused at RCPT as not found (550 5.1.10)
      messages_per_minute, connections_per_client, connection_limit_reply,
      recipients_per_day  throttling with Exchange's replies (testing/throttling.py)

    ``ConnectorEmulator.preset(name)`` builds one of the named
    misconfigurations in `PRESETS`.
    """

    def __init__(self, *, users: Iterable[User] = (), authoritative_domains: Iterable[str] = ("corp.example",),
                 security: Literal["starttls", "ssl", "none"] = "starttls", require_tls: bool = True,
                 auth_mechanisms: Iterable[str] = ("LOGIN",),
                 other_mechanisms: Iterable[str] = ("GSSAPI", "NTLM"),
                 auth_before_tls: bool = False, allow_anonymous: bool = False,
                 check_header_from: bool = False, pipelining: bool = True,
                 eight_bit_mime: bool = True, smtputf8: bool = True, size_limit: int = 36700160,
                 certificate: Literal["valid", "expired", "wrong_host"] = "valid",
                 hostname: str = "mail.corp.example", auth_delay: float = 0.0,
                 sender_check_stage: Literal["MAIL", "RCPT", "END_OF_DATA"] = "MAIL",
                 chunking: bool = True, flavour: Literal["onprem", "online"] = "onprem",
                 max_messages_per_connection: int | None = None,
                 unknown_recipients: Iterable[str] = (),
                 basic_auth: Literal["enabled", "disabled", "retired"] = "enabled",
                 smtp_client_auth_disabled: Literal["tenant", "mailbox"] | None = None,
                 auth_temporary_failures: int = 0, app_roles: Iterable[str] = ("SMTP.SendAsApp",),
                 ntlm_domain: str = "CORP", integrated_auth: bool | None = None,
                 tls_max_version: Literal["1.2", "1.3"] | None = None, tls_resumption: bool = True,
                 tls_server_context: ssl.SSLContext | None = None,
                 **throttling: Any) -> None:
        self._init_throttling(**throttling)
        self.users = {u.username.lower(): u for u in users}
        self.authoritative_domains = tuple(d.lower() for d in authoritative_domains)
        self.security = security
        self.require_tls = require_tls and security != "none"
        self.auth_mechanisms = tuple(m.upper() for m in auth_mechanisms)
        self.other_mechanisms = tuple(m.upper() for m in other_mechanisms)
        self.auth_before_tls = auth_before_tls or security == "none"
        self.allow_anonymous = allow_anonymous
        self.check_header_from = check_header_from
        self.pipelining = pipelining
        self.eight_bit_mime = eight_bit_mime
        self.smtputf8 = smtputf8
        self.size_limit = size_limit
        self.hostname = hostname
        self.auth_delay = auth_delay
        self.certificate = certificate
        if tls_max_version not in (None, "1.2", "1.3"):
            raise ValueError(f"tls_max_version {tls_max_version!r} is not None, '1.2' or '1.3'")
        self.tls_max_version = tls_max_version
        self.tls_resumption = tls_resumption
        self._server_context = tls_server_context
        # one entry per TLS handshake, in order: did it resume a session?
        self.tls_handshakes: list[bool] = []
        self.sender_check_stage = sender_check_stage
        self.chunking = chunking
        self.flavour = flavour
        self.max_messages_per_connection = max_messages_per_connection
        self.unknown_recipients = {a.lower() for a in unknown_recipients}
        self.basic_auth = basic_auth
        self.smtp_client_auth_disabled = smtp_client_auth_disabled
        self.auth_temporary_failures = auth_temporary_failures
        self.ntlm_domain = ntlm_domain
        self.integrated_auth = (integrated_auth if integrated_auth is not None
                                else not {"PLAIN", "LOGIN"} & set(self.auth_mechanisms))
        self.issuer = TestIssuer(app_roles=app_roles)
        # Add-MailboxPermission ... -AccessRights FullAccess: service principal -> mailboxes
        self.mailbox_grants: dict[str, set[str]] = {}
        self.auth_log: list[AuthAttempt] = []
        self._ntlm: NtlmAcceptor | None = None
        self._endpoint: EntraTokenEndpoint | None = None
        self._ntlm_error: str | None = None
        self.messages: list[ReceivedMessage] = []
        self.connections = 0
        self._certs: TestCertificates | None = None
        self._ctx: ssl.SSLContext | None = None
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.host = "127.0.0.1"
        self.port = 0

    @classmethod
    def preset(cls, name: str, *, users: Iterable[User] | None = None, **overrides: Any) -> ConnectorEmulator:
        """An emulator set up as PRESETS[name].  Without ``users``, one
        service account ``svc-mailer`` (address svc-mailer@corp.example, a
        random password) holds the preset's rights."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
        kwargs = dict(PRESETS[name])
        rights = kwargs.pop("rights")
        if users is None:
            users = [User("svc-mailer", secrets.token_urlsafe(12), "svc-mailer@corp.example", rights=rights)]
        kwargs.update(overrides)
        em = cls(users=users, **kwargs)
        em.preset_name = name
        return em

    preset_name: str | None = None

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> ConnectorEmulator:
        if self.security != "none":
            self._certs = test_certificates()
            self._ctx = self._new_server_context()
        if self.integrated_auth and "NTLM" in self.other_mechanisms + self.auth_mechanisms:
            accounts = [(n, u.password) for u in self.users.values() for n in (u.username, u.address)]
            try:
                self._ntlm = NtlmAcceptor(accounts, self.ntlm_domain)
            except ImportError as exc:
                self._ntlm_error = f"pyspnego is not installed ({exc})"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self._sock = sock
        self.port = sock.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="emulator-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        with self._lock:
            clients = list(self._clients)
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)
        if self._ntlm is not None:
            self._ntlm.close()
            self._ntlm = None
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None

    def __enter__(self) -> ConnectorEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def ca_file(self) -> str | None:
        """PEM file of the CA that signed the emulator's certificate."""
        return self._certs.ca_file if self._certs else None

    # -- OAuth: the tenant's token issuer ----------------------------------------

    @property
    def oauth_only(self) -> bool:
        """XOAUTH2/OAUTHBEARER offered and PLAIN/LOGIN not usable."""
        basic = self.basic_auth == "enabled" and any(m in ("PLAIN", "LOGIN") for m in self.auth_mechanisms)
        return not basic and any(m in ("XOAUTH2", "OAUTHBEARER") for m in self.auth_mechanisms)

    def issue_token(self, user: str | None = None, *, grant_mailbox: bool = True, **options: Any) -> str:
        """A token from this emulator's tenant (see `TestIssuer.issue` for
        ``audience``, ``expires_in``, ``roles``, ``scope``, ``key``, ...).
        ``user`` is the mailbox it is meant for (default: the first
        user's address); for an app-only token the app's service principal
        is given FullAccess to it, as ``Add-MailboxPermission`` does
        (``grant_mailbox=False`` leaves that out)."""
        mailbox = user or self._first_address()
        if grant_mailbox and options.get("scope") is None:
            self.grant_mailbox(mailbox)
        return self.issuer.issue(mailbox, **options)

    def grant_mailbox(self, mailbox: str, service_principal: str | None = None) -> None:
        """``Add-MailboxPermission -Identity <mailbox> -User <service principal> -AccessRights FullAccess``."""
        sp = service_principal or self.issuer.service_principal_id
        with self._lock:
            self.mailbox_grants.setdefault(sp, set()).add(mailbox.lower())

    def token_provider(self, user: str | None = None, *, expires_in: int = 3600,
                       **options: Any) -> EmulatorTokenProvider:
        """A ``token_provider`` for mailexpress that gets tokens from this
        emulator's tenant (``get_token(scope)`` and callable)."""
        return EmulatorTokenProvider(self.issue_token, user or self._first_address(), expires_in=expires_in,
                                     **options)

    def _first_address(self) -> str:
        if not self.users:
            raise ValueError("the emulator has no users: pass user=...")
        return next(iter(self.users.values())).address

    def oauth_config(self, user: str | None = None, **overrides: Any) -> Config:
        """A Config that authenticates with a token from this emulator's
        tenant (``token_provider``) as the mailbox ``user`` (default: the
        first user's address)."""
        mailbox = user or self._first_address()
        values: dict[str, Any] = {"username": mailbox, "password": None, "from_address": mailbox,
                                  "token_provider": self.token_provider(mailbox)}
        values.update(overrides)
        return self.config(**values)

    def token_endpoint(self) -> EntraTokenEndpoint:
        """The tenant's token endpoint (started on first use, stopped with
        the emulator): real MSAL gets this emulator's tokens from it.  Its
        app is given FullAccess to the first user's mailbox."""
        if self._endpoint is None:
            self.grant_mailbox(self._first_address())
            self._endpoint = EntraTokenEndpoint(
                tenant_id=self.issuer.tenant_id, apps={self.issuer.app_id: secrets.token_urlsafe(24)},
                issue=lambda _client, audience, expires_in: self.issuer.issue(None, audience=audience,
                                                                              expires_in=expires_in)).start()
        return self._endpoint

    def msal_config(self, user: str | None = None, **overrides: Any) -> Config:
        """A Config with the ``oauth_*`` settings of this tenant's app
        (client-credentials flow through MSAL against `token_endpoint`).
        MSAL verifies HTTPS through requests: point ``REQUESTS_CA_BUNDLE``
        at ``ca_file``."""
        endpoint = self.token_endpoint()
        mailbox = user or self._first_address()
        values: dict[str, Any] = {
            "username": mailbox, "password": None, "from_address": mailbox,
            "oauth_tenant": self.issuer.tenant_id, "oauth_client_id": self.issuer.app_id,
            "oauth_client_secret": endpoint.client_secret, "oauth_authority": endpoint.authority,
        }
        values.update(overrides)
        return self.config(**values)

    def config(self, **overrides: Any) -> Config:
        """A `mailexpress.Config` pointing at this emulator, trusting
        its CA.  Without username/password, the first user's are used
        (with a ``token_provider`` instead when the emulator only takes
        OAuth, like ``exchange_online``)."""
        if self.oauth_only and self.users and not {"username", "token_provider", "password"} & set(overrides):
            return self.oauth_config(**overrides)
        from ..config import Config as _Config
        values: dict[str, Any] = {
            "host": self.host, "port": self.port, "security": self.security,
            "ca_file": self.ca_file, "ehlo_name": "client.corp.example",
            "timeouts": {"connect": 5, "banner": 10, "ehlo": 10, "tls": 10, "auth": 10,
                         "mail": 10, "rcpt": 10, "data": 10, "end_of_data": 30},
        }
        if self.users and "username" not in overrides:
            user = next(iter(self.users.values()))
            values.update(username=user.username, password=user.password, from_address=user.address)
        elif not self.users:
            values["use_auth"] = False
        values.update(overrides)
        if values.get("security") == "none" and "allow_insecure_auth" not in overrides:
            values["allow_insecure_auth"] = True
        sources = {k: "argument" for k in values}
        return _Config(**values, sources=sources)

    # -- serving --------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                client, _addr = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._clients.add(client)
            t = threading.Thread(target=self._serve_safely, args=(client,), daemon=True,
                                 name="emulator-conn")
            t.start()
            self._threads = [x for x in self._threads if x.is_alive()] + [t]

    def _serve_safely(self, client: socket.socket) -> None:
        conn = _Conn(client)
        try:
            client.settimeout(30)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serve(conn, client)
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            with self._lock:
                self._clients.discard(client)
            for sock in {conn.sock, client}:
                try:
                    sock.close()
                except OSError:
                    pass

    def _serve(self, conn: _Conn, client: socket.socket) -> None:
        tls = False
        if self.security == "ssl":
            conn.sock = self._tls_wrap(client)
            tls = True
        s = _SessionState(tls=tls)
        if (refusal := self._throttle_greeting()) is not None:
            conn.send(refusal)
            return
        try:
            self._session(conn, s)
        finally:
            self._throttle_closed()

    def _session(self, conn: _Conn, s: _SessionState) -> None:
        conn.send(f"220 {self.hostname} Microsoft ESMTP MAIL Service ready at {formatdate(localtime=True)}")
        while True:
            raw = conn.readline()
            if raw is None:
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            verb, _, arg = line.partition(" ")
            verb = verb.upper()
            handler = getattr(self, f"_cmd_{verb.lower()}", None) if verb.isalpha() else None
            if handler is None:
                conn.send(f"500 5.3.3 Unrecognized command '{verb}'")
                continue
            if handler(conn, s, arg) is False:
                return

    # -- commands ---------------------------------------------------------------

    def _ehlo_lines(self, s: _SessionState) -> list[str]:
        lines = [f"{self.hostname} Hello [127.0.0.1]", f"SIZE {self.size_limit}"]
        if self.pipelining:
            lines.append("PIPELINING")
        lines += ["DSN", "ENHANCEDSTATUSCODES"]
        if not s.tls and self.security == "starttls":
            lines.append("STARTTLS")
        mechs = self._offered(s)
        if mechs:
            lines.append("AUTH " + " ".join(mechs))
        if self.eight_bit_mime:
            lines.append("8BITMIME")
        if self.chunking:
            lines += ["BINARYMIME", "CHUNKING"]
        if self.smtputf8:
            lines.append("SMTPUTF8")
        return lines

    def _cmd_ehlo(self, conn: _Conn, s: _SessionState, arg: str) -> None:
        if not arg.strip():
            conn.send("501 5.5.4 Invalid domain name")
            return
        s.reset_transaction()
        s.user = None       # Exchange: EHLO again after AUTH resets authentication
        s.helo = arg.strip()
        conn.send_lines(250, self._ehlo_lines(s))

    def _cmd_helo(self, conn: _Conn, s: _SessionState, arg: str) -> None:
        s.reset_transaction()
        s.user = None
        s.helo = arg.strip()
        conn.send(f"250 {self.hostname} Hello [127.0.0.1]")

    def _cmd_starttls(self, conn: _Conn, s: _SessionState, arg: str) -> None:
        if s.tls or self.security != "starttls" or self._ctx is None:
            conn.send("500 5.3.3 Unrecognized command 'STARTTLS'")
            return
        conn.send("220 2.0.0 SMTP server ready")
        conn.discard_buffer()       # RFC 3207: nothing before TLS is kept
        conn.sock = self._tls_wrap(conn.sock)
        s.tls = True
        s.user = None
        s.helo = None
        s.reset_transaction()

    def rotate_tls_keys(self) -> None:
        """Serves from now on with a new server context, as a server whose
        ticket keys rotated (or that restarted) does: the sessions issued
        before are refused, the ones issued after resume."""
        if self.security == "none":
            raise ValueError("rotate_tls_keys: this emulator has no TLS (security='none')")
        self._server_context = None
        ctx = self._new_server_context()
        with self._lock:
            self._ctx = ctx

    def _new_server_context(self) -> ssl.SSLContext:
        if self._server_context is not None:
            return self._server_context
        assert self._certs is not None
        ctx = self._certs.server_context(self.certificate)
        if self.tls_max_version == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def _tls_wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        """The server side of a handshake on sock, recorded in tls_handshakes."""
        assert self._ctx is not None
        ctx = self._ctx if self.tls_resumption else self._new_server_context()
        tls = ctx.wrap_socket(sock, server_side=True)
        with self._lock:
            self.tls_handshakes.append(bool(tls.session_reused))
        return tls

    def _domain(self, address: str) -> str:
        return address.rpartition("@")[2].lower()

    def _may_send_as(self, user: User, address: str) -> bool:
        if address.lower() == user.address.lower() or user.rights == "any":
            return True
        return user.rights == "authoritative_domain" and self._domain(address) in self.authoritative_domains

    def _cmd_mail(self, conn: _Conn, s: _SessionState, arg: str) -> bool | None:
        if s.helo is None:
            conn.send("503 5.5.2 Send hello first")
            return None
        if (throttled := self._throttle_mail(s)) is not None:
            conn.send(throttled[0])
            return False if throttled[1] else None
        if self.require_tls and not s.tls:
            conn.send("530 5.7.0 Must issue a STARTTLS command first")
            return None
        if s.mail_from is not None:
            conn.send("503 5.5.2 Sender already specified")
            return None
        if not arg.upper().startswith("FROM:"):
            conn.send("501 5.5.4 Invalid arguments")
            return None
        address, options = _path(arg[5:])
        if address is None:
            conn.send("501 5.1.7 Invalid address")
            return None
        if s.user is None:
            if not self.allow_anonymous:
                conn.send("530 5.7.57 Client not authenticated to send mail" if self.flavour == "online"
                          else "530 5.7.1 Client was not authenticated")
                return None
            if self._domain(address) in self.authoritative_domains:
                conn.send("550 5.7.1 Anonymous client does not have permissions to send as this sender")
                return None
        elif self.sender_check_stage == "MAIL" and not self._may_send_as(s.user, address):
            conn.send("550 5.7.1 Client does not have permissions to send as this sender")
            return None
        for opt in options:
            if opt.upper().startswith("SIZE="):
                try:
                    if int(opt[5:]) > self.size_limit:
                        conn.send("552 5.3.4 Message size exceeds fixed maximum message size")
                        return None
                except ValueError:
                    conn.send("501 5.5.4 Invalid arguments")
                    return None
        s.mail_from = address
        s.mail_options = options
        conn.send("250 2.1.0 Sender OK")
        return None

    def _cmd_rcpt(self, conn: _Conn, s: _SessionState, arg: str) -> None:
        if s.mail_from is None:
            conn.send("503 5.5.1 Need mail command")
            return
        if not arg.upper().startswith("TO:"):
            conn.send("501 5.5.4 Invalid arguments")
            return
        address, _options = _path(arg[3:])
        if not address:
            conn.send("501 5.1.3 Invalid address")
            return
        if address.lower() in self.unknown_recipients:
            conn.send("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup")
            return
        if s.user is None and self._domain(address) not in self.authoritative_domains:
            conn.send("550 5.7.54 SMTP; Unable to relay recipient in non-accepted domain")
            return
        if (s.user is not None and self.sender_check_stage == "RCPT"
                and not self._may_send_as(s.user, s.mail_from)):
            # Postfix: reject_authenticated_sender_login_mismatch, smtpd_delay_reject=yes
            conn.send(f"553 5.7.1 <{s.mail_from}>: Sender address rejected: not owned by user "
                      f"{s.user.username}")
            return
        s.rcpt_tos.append(address)
        conn.send("250 2.1.5 Recipient OK")

    def _cmd_data(self, conn: _Conn, s: _SessionState, arg: str) -> bool | None:
        if s.mail_from is None:
            conn.send("503 5.5.1 Need mail command")
            return None
        if not s.rcpt_tos:
            conn.send("503 5.5.2 Need rcpt command")
            return None
        conn.send("354 Start mail input; end with <CRLF>.<CRLF>")
        chunks: list[bytes] = []
        size = 0
        while True:
            raw = conn.readline(_MAX_DATA_LINE)
            if raw is None:
                return False
            if raw == b".\r\n":
                break
            if raw.startswith(b"."):
                raw = raw[1:]
            size += len(raw)
            if size > _MAX_MESSAGE:
                return False
            chunks.append(raw)
        self._finish_message(conn, s, b"".join(chunks))
        return None

    def _finish_message(self, conn: _Conn, s: _SessionState, data: bytes) -> None:
        """End of data (or BDAT LAST): the Send As checks, then queue."""
        assert s.mail_from is not None
        refused = False
        if s.user is not None:
            if self.sender_check_stage == "END_OF_DATA" and not self._may_send_as(s.user, s.mail_from):
                refused = True
            if (self.check_header_from or self.sender_check_stage == "END_OF_DATA") and \
                    not self._header_from_allowed(s.user, data):
                refused = True
        if not refused and (quota := self._throttle_quota(len(s.rcpt_tos))) is not None:
            s.reset_transaction()
            conn.send(quota)
            return
        if refused:
            s.reset_transaction()
            conn.send("550 5.7.60 SMTP; Client does not have permissions to send as this sender"
                      if self.flavour == "online"
                      else "550 5.7.1 Client does not have permissions to send as this sender")
            return
        msg = ReceivedMessage(mail_from=s.mail_from, rcpt_tos=list(s.rcpt_tos), data=data,
                              username=s.user.username if s.user else None, tls=s.tls,
                              helo=s.helo, mail_options=list(s.mail_options))
        with self._lock:
            self.messages.append(msg)
        s.accepted += 1
        s.reset_transaction()
        conn.send(f"250 2.6.0 <{secrets.token_hex(8)}@{self.hostname}> Queued mail for delivery")

    def _cmd_bdat(self, conn: _Conn, s: _SessionState, arg: str) -> bool | None:
        parts = arg.split()
        if not self.chunking:
            conn.send("500 5.3.3 Unrecognized command 'BDAT'")
            return None
        if not parts or not parts[0].isdigit() or len(parts) > 2 or (
                len(parts) == 2 and parts[1].upper() != "LAST"):
            conn.send("501 5.5.4 Invalid arguments")
            return None
        size = int(parts[0])
        if size > _MAX_MESSAGE:
            return False
        chunk = conn.read_exact(size)     # the chunk is read even when refused
        if chunk is None:
            return False
        if s.mail_from is None or not s.rcpt_tos:
            conn.send("503 5.5.1 Bad sequence of commands")
            return None
        s.bdat.append(chunk)
        if len(parts) == 2:
            data = b"".join(s.bdat)
            s.bdat = []
            self._finish_message(conn, s, data)
        else:
            conn.send(f"250 2.0.0 {size} octets received")
        return None

    def _header_from_allowed(self, user: User, data: bytes) -> bool:
        if user.rights == "any":
            return True
        header = email.message_from_bytes(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n",
                                          policy=email.policy.compat32)
        froms = [a for _n, a in getaddresses(header.get_all("From", []))]
        allowed = {user.address.lower(), *(a.lower() for a in user.send_as)}
        return bool(froms) and all(a.lower() in allowed for a in froms)

    def _cmd_rset(self, conn: _Conn, s: _SessionState, arg: str) -> None:
        s.reset_transaction()
        conn.send("250 2.0.0 Resetting")

    def _cmd_noop(self, conn: _Conn, s: _SessionState, arg: str) -> None:
        conn.send("250 2.0.0 OK")

    def _cmd_quit(self, conn: _Conn, s: _SessionState, arg: str) -> bool:
        conn.send("221 2.0.0 Service closing transmission channel")
        return False


@dataclass
class _SessionState:
    tls: bool
    helo: str | None = None
    user: User | None = None
    mail_from: str | None = None
    mail_options: list[str] = field(default_factory=list)
    rcpt_tos: list[str] = field(default_factory=list)
    bdat: list[bytes] = field(default_factory=list)
    accepted: int = 0                 # messages queued on this connection

    def reset_transaction(self) -> None:
        self.mail_from = None
        self.mail_options = []
        self.rcpt_tos = []
        self.bdat = []


def _path(text: str) -> tuple[str | None, list[str]]:
    """Parses "<addr> OPT=V ..." (after FROM:/TO:)."""
    text = text.strip()
    if not text.startswith("<"):
        return None, []
    end = text.find(">")
    if end < 0:
        return None, []
    return text[1:end], text[end + 1:].split()
