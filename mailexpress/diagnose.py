"""test_connector: diagnose a submission connector the way an expert admin would.

One authenticated connection and one anonymous one.  Every check has an id, a
status (pass, warn, fail, skip), a one-line summary, the evidence (the SMTP
lines that show it, credentials redacted) and, when it did not pass, the fix.

Sender permissions are probed with MAIL FROM / RCPT TO / RSET (pipelined when
offered): nothing is delivered unless ``deep=True``.  Verdicts come from the
stage, the reply class and comparison with a control probe (the account's own
address to the same recipient), never from the server's wording.
"""
from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .advice import AdviceContext, advice, auth_cause, family_label, guess_family
from .client import Session
from .config import Config
from .errors import (
    AuthError,
    CertificateError,
    ConfigError,
    ConnectError,
    DataRefused,
    Error,
    InsecureAuthError,
    NotSupportedError,
    RecipientsRefused,
    SenderRefused,
    TLSError,
)
from .reply import Reply

__all__ = ["CHECK_IDS", "Check", "ConnectorReport", "SenderProbe", "test_connector"]

Status = Literal["pass", "warn", "fail", "skip"]
Verdict = Literal["allowed", "refused_at_mail", "refused_at_rcpt", "refused_at_end_of_data", "inconclusive"]

CHECK_IDS = (
    "resolve", "connect", "banner", "ehlo", "tls", "auth_requires_tls", "auth_mechanisms", "auth",
    "anonymous_refused", "send_as_self", "accept_authoritative_domain_sender", "accept_any_sender",
    "header_from",
)
# Rights a connector may rightly withhold: these fail only when required.
OPTIONAL_CHECKS = ("accept_authoritative_domain_sender", "accept_any_sender", "header_from")
EXTERNAL_PROBE = "mailexpress-probe@example.com"
TLS_EXPIRY_WARN_DAYS = 30


@dataclass
class Check:
    id: str
    status: Status
    summary: str
    evidence: list[str] = field(default_factory=list)
    advice: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "summary": self.summary,
                "evidence": list(self.evidence), "advice": self.advice}


@dataclass
class SenderProbe:
    address: str
    kind: Literal["self", "authoritative_domain", "external"]
    verdict: Verdict
    reply: Reply | None
    derived: bool = False          # the address was made up, not configured
    header_verdict: Verdict | None = None   # deep probe only
    header_reply: Reply | None = None
    evidence: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "kind": self.kind, "verdict": self.verdict,
                "reply": self.reply.to_dict() if self.reply else None, "derived": self.derived,
                "header_verdict": self.header_verdict,
                "header_reply": self.header_reply.to_dict() if self.header_reply else None}


_STATUS_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}
_ANSI = {"pass": "32", "warn": "33", "fail": "1;31", "skip": "2"}
_STATUS_COLOUR = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#57606a"}


@dataclass
class ConnectorReport:
    """The diagnosis.  ``ok`` is true when no check failed (warnings allowed)."""

    checks: list[Check]
    senders: list[SenderProbe]
    server: dict[str, Any]
    tls: dict[str, Any] | None
    duration_ms: int
    required: list[str]
    deep: bool

    @property
    def ok(self) -> bool:
        return not any(c.status == "fail" for c in self.checks)

    def check(self, check_id: str) -> Check:
        for c in self.checks:
            if c.id == check_id:
                return c
        raise KeyError(check_id)

    def sender(self, address: str) -> SenderProbe:
        for s in self.senders:
            if s.address.lower() == address.lower():
                return s
        raise KeyError(address)

    def assert_ok(self) -> None:
        """Raises AssertionError listing every failed check with its fix."""
        failed = [c for c in self.checks if c.status == "fail"]
        if failed:
            raise AssertionError("connector checks failed:\n" + "\n".join(
                f"  {c.id}: {c.summary}" + (f"\n    fix: {c.advice}" if c.advice else "") for c in failed))

    def assert_can_send_as(self, address: str) -> None:
        """Raises AssertionError, with the server's reply and the fix, unless
        the account may send as ``address`` (at the envelope, and at end of
        data when the report is deep)."""
        probe = self._probe_for(address)
        ok = probe.verdict == "allowed" and probe.header_verdict in (None, "allowed")
        if not ok:
            where = probe.header_verdict if probe.verdict == "allowed" else probe.verdict
            reply = probe.header_reply if probe.verdict == "allowed" else probe.reply
            fix = self._advice_for(probe)
            raise AssertionError(f"the account may not send as {address}: {where}; server said: {reply}"
                                 + (f"\n  fix: {fix}" if fix else ""))

    def assert_cannot_send_as(self, address: str) -> None:
        """Raises AssertionError unless the server refused ``address``."""
        probe = self._probe_for(address)
        if probe.verdict == "allowed" and probe.header_verdict in (None, "allowed"):
            raise AssertionError(f"the account may send as {address}, which it should not")

    def _probe_for(self, address: str) -> SenderProbe:
        try:
            return self.sender(address)
        except KeyError:
            probed = ", ".join(s.address for s in self.senders) or "none"
            raise AssertionError(f"{address} was not probed (probed: {probed}); pass "
                                 f"test_connector(..., senders=[{address!r}])") from None

    def _advice_for(self, probe: SenderProbe) -> str | None:
        cid = {"self": "send_as_self", "authoritative_domain": "accept_authoritative_domain_sender",
               "external": "accept_any_sender"}[probe.kind]
        if probe.verdict == "allowed" and probe.header_verdict not in (None, "allowed"):
            cid = "header_from"
        for c in self.checks:
            if c.id == cid and c.advice:
                return c.advice
        return None

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON contract (docs/diagnosis.md)."""
        return {
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
            "senders": [s.to_dict() for s in self.senders],
            "server": dict(self.server),
            "tls": dict(self.tls) if self.tls is not None else None,
            "duration_ms": self.duration_ms,
            "required": list(self.required),
            "deep": self.deep,
        }

    def __str__(self) -> str:
        return self.render()

    def render(self, *, colour: bool = False) -> str:
        """The report as terminal text; ``colour`` adds ANSI colours to the
        status marks (the CLI does when its output is a terminal).  The
        text reads the same without them."""
        def mark(status: str) -> str:
            text = _STATUS_MARK[status]
            return f"\033[{_ANSI[status]}m{text}\033[0m" if colour else text
        srv = self.server
        lines = [f"mailexpress connector report: {srv['host']}:{srv['port']} ({srv['security']}), "
                 f"account {srv.get('account') or '(anonymous)'}"]
        fam = srv.get("family")
        lines.append(f"server: {srv.get('software') or 'unknown software'}; advice for "
                     f"{family_label(fam)}{' (guessed from its greeting)' if srv.get('family_guessed') else ''}")
        width = max(len(c.id) for c in self.checks)
        for c in self.checks:
            req = "" if c.id in self.required or c.status == "pass" else " (not required)"
            lines.append(f"  {mark(c.status)}  {c.id.ljust(width)}  {c.summary}{req}")
            if c.status in ("fail", "warn") and c.advice:
                lines.append(f"        fix: {c.advice}")
        if self.senders:
            lines.append("senders:")
            for s in self.senders:
                reply = f"  {s.reply}" if s.reply and s.verdict != "allowed" else ""
                header = f", header From: {s.header_verdict}" if s.header_verdict else ""
                lines.append(f"  {s.verdict:<24} {s.kind:<21} {s.address}{header}{reply}")
        failed = [c.id for c in self.checks if c.status == "fail"]
        verdict = "OK" if not failed else f"{len(failed)} check(s) failed: {', '.join(failed)}"
        if colour:
            verdict = f"\033[{_ANSI['pass' if not failed else 'fail']}m{verdict}\033[0m"
        lines.append(f"result: {verdict} ({self.duration_ms} ms)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for c in self.checks:
            colour = _STATUS_COLOUR[c.status]
            evidence = "<br>".join(html.escape(e) for e in c.evidence[:12])
            adv = f"<div><b>Fix:</b> {html.escape(c.advice)}</div>" if c.advice and c.status != "pass" else ""
            rows.append(
                f"<tr><td style='color:{colour};font-weight:bold'>{_STATUS_MARK[c.status]}</td>"
                f"<td><code>{html.escape(c.id)}</code></td><td>{html.escape(c.summary)}{adv}"
                f"<details><summary>evidence</summary><pre>{evidence}</pre></details></td></tr>")
        senders = "".join(
            f"<tr><td>{html.escape(s.kind)}</td><td><code>{html.escape(s.address)}</code></td>"
            f"<td>{html.escape(s.verdict)}</td><td>{html.escape(str(s.reply) if s.reply else '')}</td></tr>"
            for s in self.senders)
        head = "OK" if self.ok else "problems found"
        return (f"<div><b>Connector {html.escape(str(self.server['host']))}:{self.server['port']}: {head}</b> "
                f"({self.duration_ms} ms)<table><tr><th>status</th><th>check</th><th>finding</th></tr>"
                f"{''.join(rows)}</table><table><tr><th>kind</th><th>sender</th><th>verdict</th>"
                f"<th>reply</th></tr>{senders}</table></div>")


def _evidence(transcript: Sequence[tuple[int, str, str]], start: int, end: int | None = None) -> list[str]:
    prefix = {"C": "C: ", "S": "S: ", "*": "   "}
    return [prefix.get(d, d) + t for _ms, d, t in transcript[start:end]]


def _domain(address: str | None) -> str | None:
    if not address or "@" not in address:
        return None
    return address.rpartition("@")[2]


# mechanisms that hand the server a reusable secret: a password or a bearer token
_CLEAR_MECHS = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")
_OAUTH_MECHS = ("XOAUTH2", "OAUTHBEARER")


def _clear_mechs(caps: dict[str, str]) -> list[str]:
    return [m for m in caps.get("AUTH", "").upper().split() if m in _CLEAR_MECHS]


def _auth_lines(reply: Reply | None) -> list[str]:
    """The EHLO lines that announce mechanisms (AUTH, AUTH=, X-EXPS, X-EXPS=)."""
    if reply is None:
        return []
    lines = list(reply.lines)
    out = []
    for i, line in enumerate(lines):
        word = line.split(" ", 1)[0].split("=", 1)[0].upper()
        if word in ("AUTH", "X-EXPS"):
            out.append(f"S: {reply.code}{'-' if i < len(lines) - 1 else ' '}{line}")
    return out


def _b64url_json(part: str) -> Any:
    import base64
    import json
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def token_findings(token: str, now: float | None = None) -> dict[str, Any] | None:
    """What an access token says about itself (a JWT's claims, read without
    verifying the signature: the server does that): audience, roles or
    scopes, app, tenant, seconds to expiry.  None when it is not a JWT.
    Never the token."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = _b64url_json(parts[1])
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(claims, dict):
        return None
    exp = claims.get("exp")
    t = time.time() if now is None else now
    roles = claims.get("roles")
    return {
        "aud": claims.get("aud"), "roles": list(roles) if isinstance(roles, list) else None,
        "scp": claims.get("scp"), "appid": claims.get("appid") or claims.get("azp"),
        "tid": claims.get("tid"), "upn": claims.get("upn"),
        "expires_in_s": int(exp - t) if isinstance(exp, (int, float)) else None,
    }


def _token_detail(found: dict[str, Any] | None, cause: str) -> str | None:
    """A sentence on what in the token explains the refusal."""
    if found is None:
        return None
    bits = []
    if found["aud"] not in ("https://outlook.office365.com", "00000002-0000-0ff1-ce00-000000000000"):
        bits.append(f"the token's aud is {found['aud']!r}, not https://outlook.office365.com")
    if found["expires_in_s"] is not None and found["expires_in_s"] <= 0:
        bits.append(f"the token expired {-found['expires_in_s']} s ago")
    if cause == "oauth_permission" and found["scp"] is None:
        if "SMTP.SendAsApp" not in (found["roles"] or []):
            bits.append(f"the token's roles lack SMTP.SendAsApp (roles: {', '.join(found['roles'] or []) or 'none'})")
        else:
            bits.append("the token carries SMTP.SendAsApp, so the service principal probably lacks FullAccess "
                        "on the mailbox")
    elif cause == "oauth_permission" and "SMTP.Send" not in str(found["scp"]).split():
        bits.append(f"the delegated token's scopes lack SMTP.Send (scp: {found['scp']})")
    return "; ".join(bits) or None


class _Diagnosis:
    def __init__(self, config: Config, deep: bool, required: list[str], extra_senders: Sequence[str] = ()) -> None:
        self.cfg = config
        self.deep = deep
        self.extra_senders = list(extra_senders)
        self.required = required
        self.checks: dict[str, Check] = {}
        self.senders: list[SenderProbe] = []
        self.server: dict[str, Any] = {
            "host": config.host, "port": config.port, "security": config.security,
            "account": config.username if config.use_auth else None,
            "banner": None, "software": None, "family": config.server_family,
            "family_guessed": False, "capabilities_before_tls": None, "capabilities": None,
            "auth_mechanisms_before_tls": None, "auth_mechanisms": None, "auth_mechanism": None,
            "oauth_token": None,
        }
        self.auth_lines_before: list[str] = []
        self.tls: dict[str, Any] | None = None
        self.cert_failed = False
        self.self_addr = config.from_address or (
            config.username if config.username and "@" in config.username else None)
        if self.self_addr:
            from email.utils import parseaddr
            self.self_addr = parseaddr(self.self_addr)[1] or self.self_addr

    # -- bookkeeping -------------------------------------------------------------

    def ctx(self, sender: str | None = None, reply: Reply | None = None, **more: Any) -> AdviceContext:
        cfg = self.cfg
        account = cfg.service_account or cfg.username or "<service account>"
        connector = cfg.connector_name or "<connector name>"
        token = self.server.get("oauth_token") or {}
        return AdviceContext(family=self.server["family"], connector=connector, account=account,
                             host=cfg.server_name or cfg.host, port=cfg.port or 0, sender=sender,
                             reply_code=reply.code if reply else None,
                             enhanced=reply.enhanced if reply else None,
                             reply_text=reply.text if reply else None,
                             offered=tuple(self.server.get("auth_mechanisms") or ()),
                             oauth_configured=bool(cfg.has_token_source),
                             app_id=cfg.oauth_client_id or token.get("appid"),
                             mailbox=cfg.username, **more)

    def add(self, check_id: str, status: Status, summary: str, evidence: Iterable[str] = (),
            *, sender: str | None = None, reply: Reply | None = None, **more: Any) -> Check:
        if status == "fail" and check_id not in self.required:
            status = "warn"
        adv = advice(check_id, self.ctx(sender, reply, **more)) if status in ("fail", "warn") else None
        c = Check(check_id, status, summary, list(evidence), adv or None)
        self.checks[check_id] = c
        return c

    def skip_rest(self, why: str) -> None:
        """Marks the checks not done yet as skipped, saying why.  The
        anonymous probe has a connection of its own and is left to run."""
        for cid in CHECK_IDS:
            if cid not in self.checks and cid != "anonymous_refused":
                self.checks[cid] = Check(cid, "skip", why)

    def new_session(self, *, verify: bool | None = None) -> Session:
        s = Session(**self.cfg.session_kwargs(verify=verify), config=self.cfg)
        if self.cfg.deadline:
            s.set_deadline(self.cfg.deadline)
        return s

    # -- the authenticated connection ----------------------------------------

    def run(self) -> None:
        s = self.new_session()
        try:
            if self.connect_and_greet(s) and self.secure(s) and self.authenticate(s):
                self.probe_senders(s)
        except Error as exc:
            # a broken session mid-way is a finding on the step it broke
            step = next(cid for cid in CHECK_IDS if cid not in self.checks)
            self.add(step, "fail", f"the session broke: {exc}", _evidence(s.transcript, 0)[-12:],
                     reply=exc.reply)
        finally:
            s.close_quietly()
        connected = "connect" in self.checks and self.checks["connect"].status == "pass"
        if connected and "anonymous_refused" not in self.checks:
            self.probe_anonymous()
        self.skip_rest("not reached")
        if "anonymous_refused" not in self.checks:
            self.checks["anonymous_refused"] = Check("anonymous_refused", "skip", "no connection")

    def connect_and_greet(self, s: Session) -> bool:
        cfg = self.cfg
        try:
            s.connect()
        except Error as exc:
            attempts = s.connect_attempts
            if not attempts and isinstance(exc, ConnectError):
                self.add("resolve", "fail", str(exc))
                self.skip_rest("the name did not resolve")
                return False
            self.add("resolve", "pass", f"{cfg.host} resolves to "
                     f"{', '.join(a['address'] for a in attempts)} ({s.resolve_ms} ms)")
            connected = any(a["error"] is None for a in attempts)
            ev = [f"{a['address']} ({a['family']}): {a['error'] or 'connected'} in {a['ms']} ms"
                  for a in attempts]
            if not connected:
                self.add("connect", "fail", f"no address of {cfg.host} accepted port {cfg.port}: {exc}", ev)
                self.skip_rest("no connection")
                return False
            self.add("connect", "pass", f"connected to {s.peer_address or attempts[-1]['address']}", ev)
            if isinstance(exc, TLSError):
                self.fail_tls(exc, s)
                self.skip_rest("not tried: TLS failed, and credentials are never sent without it")
                return False
            self.add("banner", "fail", f"the server did not greet: {exc}", _evidence(s.transcript, 0),
                     reply=exc.reply)
            self.skip_rest("no greeting")
            return False
        attempts = s.connect_attempts
        self.add("resolve", "pass", f"{cfg.host} resolves to "
                 f"{', '.join(a['address'] for a in attempts)} ({s.resolve_ms} ms)")
        peer = s.peer_address
        ok = [a for a in attempts if a["error"] is None]
        self.add("connect", "pass", f"port {cfg.port} answers on {peer[0] if peer else '?'} "
                 f"({ok[-1]['ms'] if ok else '?'} ms)",
                 [f"{a['address']} ({a['family']}): {a['error'] or 'connected'} in {a['ms']} ms"
                  for a in attempts])
        banner = s.banner
        assert banner is not None
        self.server["banner"] = banner.text
        mark = len(s.transcript)
        try:
            ehlo = s.ehlo()
        except Error as exc:
            self.banner_check(s, [])
            self.add("ehlo", "fail", f"EHLO failed: {exc}", _evidence(s.transcript, mark), reply=exc.reply)
            return False
        self.banner_check(s, list(ehlo.lines))
        caps = s.capabilities
        self.server["capabilities_before_tls" if cfg.security == "starttls" else "capabilities"] = caps
        if cfg.security == "starttls":
            self.server["auth_mechanisms_before_tls"] = caps.get("AUTH", "").upper().split()
            self.auth_lines_before = _auth_lines(s.ehlo_reply)
        self.add("ehlo", "pass", f"{len(caps)} capabilities: {', '.join(sorted(caps)) or 'none'}",
                 _evidence(s.transcript, mark))
        return True

    def banner_check(self, s: Session, ehlo_lines: list[str]) -> None:
        banner = s.banner
        assert banner is not None
        guessed = guess_family(banner.text, ehlo_lines)
        software = {"exchange_online": "Microsoft Exchange Online", "exchange2003": "Microsoft Exchange 2003",
                    "exchange2013": "Microsoft Exchange (2007 or later)", "postfix": "Postfix",
                    "exim": "Exim"}.get(guessed or "")
        self.server["software"] = software
        if not self.cfg.server_family and guessed:
            self.server["family"] = guessed
            self.server["family_guessed"] = True
        said = f"; says it is {software}" if software else ""
        self.add("banner", "pass", f"{banner.code} greeting{said}", _evidence(s.transcript, 0, 3))

    def secure(self, s: Session) -> bool:
        """tls and auth_requires_tls; False when the diagnosis cannot go on."""
        cfg = self.cfg
        caps = s.capabilities
        if cfg.security == "none":
            basic = _clear_mechs(caps)
            offered = "STARTTLS" in caps
            hint = " (the server offers STARTTLS: set security = 'starttls')" if offered else ""
            self.add("tls", "fail" if cfg.use_auth else "warn",
                     f"security = 'none': nothing is encrypted{hint}", [])
            self.add("auth_requires_tls", "fail" if basic else "pass",
                     f"AUTH {' '.join(basic)} offered without TLS: passwords or tokens can travel in the clear"
                     if basic else "no PLAIN/LOGIN/XOAUTH2 offered without TLS")
            self.server["capabilities"] = caps
            return True
        if cfg.security == "starttls":
            basic = _clear_mechs(caps)
            mark_ev = self.auth_lines_before or ["(no AUTH offered before TLS)"]
            self.add("auth_requires_tls", "fail" if basic else "pass",
                     f"AUTH {' '.join(basic)} is offered before STARTTLS: a client could send the password "
                     "or token in the clear" if basic else
                     "no password or token mechanism is offered before STARTTLS" +
                     (f" (before TLS only: {caps['AUTH']}, no password in the clear)" if "AUTH" in caps else ""),
                     mark_ev)
            mark = len(s.transcript)
            try:
                s.starttls()
            except CertificateError as exc:
                self.fail_tls(exc, s, mark)
                self.skip_rest("not tried: credentials are not sent to a server whose certificate "
                               "did not verify")
                return False
            except TLSError as exc:
                self.add("tls", "fail", f"STARTTLS failed: {exc.message}", _evidence(s.transcript, mark),
                         reply=exc.reply)
                self.skip_rest("not tried: credentials are never sent without TLS")
                return False
        else:
            self.add("auth_requires_tls", "pass", "implicit TLS: nothing is said before TLS")
        self.server["capabilities"] = s.capabilities
        self.tls_check(s)
        return True

    def tls_details(self, s: Session) -> dict[str, Any]:
        info = s.peer_cert_info or {}
        now = time.time()
        not_after = info.get("not_after")
        days_left = int((not_after - now) // 86400) if not_after else None
        code = info.get("verify_code")
        return {
            "mode": "implicit" if self.cfg.security == "ssl" else "starttls",
            "version": s.tls_version, "cipher": s.tls_cipher,
            "verified": code == 0, "verify_message": info.get("verify_message"),
            "hostname_match": code not in (62, 64),
            "subject": info.get("subject"), "issuer": info.get("issuer"), "san": info.get("san", []),
            "not_after": not_after, "days_left": days_left,
        }

    def tls_check(self, s: Session) -> None:
        t = self.tls = self.tls_details(s)
        ev = [f"   TLS {t['version']}, {t['cipher']}", f"   subject {t['subject']}", f"   issuer {t['issuer']}",
              f"   names {', '.join(t['san'])}", f"   verify: {t['verify_message']}"]
        if not t["verified"]:
            # only reachable with verify = false: the connection went ahead anyway
            self.add("tls", "fail", f"the certificate does not verify: {t['verify_message']} "
                     "(verify is off in the config)", ev)
            return
        status: Status = "pass"
        days = t["days_left"]
        when = f"expires in {days} days" if days is not None else "no expiry date"
        if days is not None and days < TLS_EXPIRY_WARN_DAYS:
            status = "warn"
        c = self.add("tls", status, f"{t['mode']} {t['version']} {t['cipher']}; certificate verified, "
                     f"name matches, {when}", ev)
        if status == "warn":
            c.summary += f" (under {TLS_EXPIRY_WARN_DAYS})"

    def fail_tls(self, exc: TLSError, s: Session, mark: int = 0) -> None:
        """A refused certificate: report why, with details from a look that does not verify."""
        self.cert_failed = True
        details: dict[str, Any] | None = None
        if isinstance(exc, CertificateError):
            look = self.new_session(verify=False)
            try:
                look.connect()
                if self.cfg.security == "starttls":
                    look.ehlo()
                    look.starttls()
                details = self.tls_details(look)
            except Error:
                details = None
            finally:
                look.close()
        self.tls = details
        ev = _evidence(s.transcript, mark)
        if details:
            ev += [f"   subject {details['subject']}", f"   names {', '.join(details['san'])}",
                   f"   expires in {details['days_left']} days"]
        reason = getattr(exc, "verify_message", None) or exc.message
        self.add("tls", "fail", f"TLS failed: {reason}; credentials were not sent", ev, reply=exc.reply)

    def authenticate(self, s: Session) -> bool:
        """auth_mechanisms and auth, through mailexpress.auth.authenticate
        (the path connect() takes), so OAuth, NTLM and Kerberos are
        diagnosed as they are used."""
        from .auth import authenticate, plan
        cfg = self.cfg
        caps = s.capabilities
        offered = caps.get("AUTH", "").upper().split()
        self.server["auth_mechanisms"] = offered
        before = self.server["auth_mechanisms_before_tls"]
        after_lines = _auth_lines(s.ehlo_reply)
        tls = s.tls_active
        ev = ([f"   before TLS: {' '.join(before) or 'no AUTH'}", *self.auth_lines_before] if before is not None
              else []) + [f"   {'after TLS' if tls else 'offered'}: {' '.join(offered) or 'no AUTH'}", *after_lines]
        usable = plan(cfg, offered) if cfg.use_auth else []
        where = "after TLS" if tls else "without TLS"
        summary = (f"offered {where}: {' '.join(offered) or 'none'}"
                   + (f"; before TLS: {' '.join(before) or 'none'}" if before is not None else ""))
        if not cfg.use_auth:
            self.add("auth_mechanisms", "pass" if offered else "warn", summary, ev)
            self.add("auth", "skip", "use_auth is false: the config submits without authenticating")
            return True
        if usable:
            self.add("auth_mechanisms", "pass", f"{summary}; this config can use {', '.join(usable)}", ev)
        else:
            need = ("a token (XOAUTH2/OAUTHBEARER)" if cfg.has_token_source else
                    ", ".join(cfg.auth_mechanisms) if cfg.auth_pinned else "PLAIN or LOGIN (or NTLM with pyspnego)")
            self.add("auth_mechanisms", "fail", f"{summary}; none this config can use (it has {need})", ev)
            self.add("auth", "skip", "not tried: no mechanism this config can use is offered")
            self.skip_rest("not tried: the account could not authenticate")
            return False
        mark = len(s.transcript)
        try:
            if usable[0] in _OAUTH_MECHS:
                self.read_token()
            result = authenticate(s, cfg)
        except NotSupportedError as exc:        # every candidate drew 504
            mech = getattr(exc, "mechanism", None) or usable[0]
            self.add("auth", "fail", f"{mech}: {exc.message}", _evidence(s.transcript, mark), reply=exc.reply,
                     cause="mechanism_refused", mechanism=mech)
            self.skip_rest("not tried: the account could not authenticate")
            return False
        except AuthError as exc:
            self.auth_failed(s, exc, mark, usable)
            self.skip_rest("not tried: the account could not authenticate")
            return False
        self.server["auth_mechanism"] = result.mechanism
        self.add("auth", "pass", f"{self.account_name()} authenticated with {result.mechanism}",
                 _evidence(s.transcript, mark))
        return True

    def account_name(self) -> str:
        """Who authenticates: the user name, or (GSSAPI without one) the ticket's principal."""
        name = self.cfg.username
        return repr(name) if name else "the principal of the Kerberos ticket"

    def read_token(self) -> None:
        """The token the session will use (cached by its source, so this
        asks the identity provider no extra time): its claims go into the
        report, to explain a refusal.  A failure raises AuthError."""
        from .auth.tokens import source_for
        source = source_for(self.cfg)
        if source is not None:
            self.server["oauth_token"] = token_findings(source.get().token)

    def auth_failed(self, s: Session, exc: AuthError, mark: int, usable: list[str]) -> None:
        cfg = self.cfg
        mech = exc.mechanism or usable[0]
        ev = _evidence(s.transcript, mark)
        if exc.oauth_challenge:
            ev.append(f"   error challenge: {exc.oauth_challenge}")
        if isinstance(exc, InsecureAuthError):
            self.add("auth", "fail", exc.message, ev, reply=exc.reply, mechanism=mech, cause="refused")
            return
        cause = auth_cause(exc.code, exc.enhanced, exc.text, mechanism=mech, oauth_challenge=exc.oauth_challenge,
                           provider_code=exc.provider_code)
        detail = _token_detail(self.server["oauth_token"], cause) if mech in _OAUTH_MECHS else None
        who = f"{self.account_name()} with {mech}"
        summaries = {
            "temporary": f"temporary failure for {who}: {exc.reply} (not a verdict on the credentials; try again)",
            "token_endpoint": (f"no token for {who}: the identity provider refused ({exc.provider_code}); "
                               "nothing was sent" if exc.provider_code else f"no token for {who}: {exc.message}"),
            "token_rejected": f"the server refused the token of {who} (error challenge, then {exc.reply})",
            "oauth_permission": f"the token of {who} is not allowed to send for this mailbox: {exc.reply}",
            "basic_auth_disabled": f"basic authentication is disabled for the tenant: {exc.reply}",
            "smtp_auth_disabled_tenant": f"SMTP AUTH is disabled for the tenant: {exc.reply}",
            "smtp_auth_disabled_mailbox": f"SMTP AUTH is disabled for the mailbox {cfg.username}: {exc.reply}",
            "basic_auth_retired": f"basic authentication is retired for client submission: {exc.reply}",
            "mechanism_refused": f"the server does not accept {mech}: {exc.reply}",
        }
        summary = summaries.get(cause, f"credentials of {who} refused by the server: {exc.reply}"
                                if exc.reply else f"{who}: {exc.message}")
        if detail:
            summary += f"; {detail}"
        if exc.reply is None and cause == "token_endpoint":
            ev.append(f"   {exc.message}")
        self.add("auth", "warn" if cause == "temporary" else "fail", summary, ev, reply=exc.reply,
                 mechanism=mech, cause=cause, provider_code=exc.provider_code, detail=detail)

    # -- sender probes ----------------------------------------------------------

    def candidates(self) -> list[tuple[str, Literal["self", "authoritative_domain", "external"], bool]]:
        cfg = self.cfg
        out: list[tuple[str, Literal["self", "authoritative_domain", "external"], bool]] = []
        if self.self_addr:
            out.append((self.self_addr, "self", False))
        domain = _domain(self.self_addr)
        if cfg.probe_authoritative_sender:
            out.append((cfg.probe_authoritative_sender, "authoritative_domain", False))
        elif domain:
            out.append((f"mailexpress-probe@{domain}", "authoritative_domain", True))
        out.append((cfg.probe_external_sender or EXTERNAL_PROBE, "external", cfg.probe_external_sender is None))
        seen = {a.lower() for a, _k, _d in out}
        for address in self.extra_senders:
            if address.lower() in seen:
                continue
            seen.add(address.lower())
            kind: Literal["authoritative_domain", "external"] = (
                "authoritative_domain" if domain and _domain(address) == domain else "external")
            out.append((address, kind, False))
        return out

    def probe_senders(self, s: Session) -> None:
        recipient = self.cfg.probe_recipient or self.self_addr
        if not recipient:
            for cid in ("send_as_self", "accept_authoritative_domain_sender", "accept_any_sender", "header_from"):
                self.add(cid, "skip", "set from_address (or probe_recipient) to probe senders")
            return
        control_rcpt_ok: bool | None = None
        for address, kind, derived in self.candidates():
            mark = len(s.transcript)
            mail_r, rcpt_r, _pipelined = s.try_sender(address, recipient)
            verdict, reply = self.classify(mail_r, rcpt_r, control_rcpt_ok)
            if kind == "self":
                control_rcpt_ok = bool(mail_r.ok and rcpt_r is not None and rcpt_r.ok)
                if mail_r.ok and rcpt_r is not None and not rcpt_r.ok:
                    verdict = "inconclusive"   # no control: the recipient itself may be the problem
            self.senders.append(SenderProbe(address, kind, verdict, reply, derived,
                                            evidence=_evidence(s.transcript, mark)))
        if self.deep:
            self.deep_probe(s, recipient)
        self.sender_checks(recipient)

    @staticmethod
    def classify(mail_r: Reply, rcpt_r: Reply | None, control_rcpt_ok: bool | None) -> tuple[Verdict, Reply]:
        """Stage + reply class, never the text.  A RCPT refusal counts against
        the sender only when the control probe's RCPT to the same recipient
        was accepted."""
        if not mail_r.ok:
            return ("inconclusive" if mail_r.transient else "refused_at_mail"), mail_r
        assert rcpt_r is not None
        if rcpt_r.ok:
            return "allowed", rcpt_r
        if rcpt_r.transient or control_rcpt_ok is False:
            return "inconclusive", rcpt_r
        return "refused_at_rcpt", rcpt_r

    def deep_probe(self, s: Session, recipient: str) -> None:
        from .message import build_message, message_bytes
        envelope = self.self_addr
        for probe in self.senders:
            if probe.verdict != "allowed" or not envelope:
                continue
            msg = build_message(sender=probe.address, to=[recipient], cc=[],
                                subject=f"mailexpress connector probe: From {probe.address}",
                                body="This message was sent by mailexpress test_connector(deep=True) to check "
                                     "that the server accepts this From header. It can be deleted.\n")
            try:
                refused, reply = s.send_raw(envelope, [recipient], message_bytes(msg))
                probe.header_verdict, probe.header_reply = "allowed", reply
            except DataRefused as exc:
                verdict: Verdict = "inconclusive" if exc.transient else "refused_at_end_of_data"
                probe.header_verdict, probe.header_reply = verdict, exc.reply
            except (SenderRefused, RecipientsRefused) as exc:
                probe.header_verdict, probe.header_reply = "inconclusive", exc.reply

    def sender_checks(self, recipient: str) -> None:
        online = self.server["family"] == "exchange_online"
        names = {"self": "send_as_self", "authoritative_domain": "accept_authoritative_domain_sender",
                 "external": "accept_any_sender"}
        decided: set[str] = set()
        # a real (configured or given) address decides its kind before a made-up one
        for probe in sorted(self.senders, key=lambda p: p.derived):
            cid = names[probe.kind]
            ev = probe.evidence
            made_up = " (a made-up address; set probe_{} for a real one)".format(
                "authoritative_sender" if probe.kind == "authoritative_domain" else "external_sender") \
                if probe.derived else ""
            if self.deep and online and probe.verdict == "allowed" and probe.header_verdict not in (None, "allowed"):
                # Exchange Online accepts any MAIL FROM and decides at end of data
                probe.verdict, probe.reply = probe.header_verdict, probe.header_reply
            verdict = probe.verdict
            if verdict == "allowed":
                status: Status = "pass"
                summary = f"may send as {probe.address}{made_up}"
                if online and not self.deep and probe.kind != "self":
                    status = "warn"
                    summary += ("; Exchange Online checks the sender only at end of data: "
                                "run with deep=True for a definite answer")
            elif verdict == "inconclusive":
                status = "warn"
                summary = f"no definite answer for {probe.address}{made_up}: {probe.reply}"
            else:
                status = "fail"
                stage = verdict.replace("refused_at_", "").replace("_", " ").upper()
                summary = f"may not send as {probe.address}{made_up}: refused at {stage}"
            if cid in decided:
                continue        # further addresses of a kind: in report.senders, not a check of their own
            decided.add(cid)
            self.add(cid, status, summary, ev, sender=probe.address, reply=probe.reply)
        if not self.deep:
            self.add("header_from", "skip", "not probed: run with deep=True (sends one message per "
                     f"allowed sender to {recipient})")
            return
        tried = [p for p in self.senders if p.header_verdict]
        refused = [p for p in tried if p.header_verdict == "refused_at_end_of_data"]
        unsure = [p for p in tried if p.header_verdict == "inconclusive"]
        ev = [f"From: {p.address} -> {p.header_verdict}: {p.header_reply}" for p in tried]
        if refused:
            self.add("header_from", "fail", "the server refuses these From headers at end of data: "
                     + ", ".join(p.address for p in refused), ev, sender=refused[0].address,
                     reply=refused[0].header_reply)
        elif unsure:
            self.add("header_from", "warn", "no definite answer at end of data for "
                     + ", ".join(p.address for p in unsure), ev)
        elif tried:
            self.add("header_from", "pass", f"{len(tried)} message(s) with those From headers accepted "
                     f"for {recipient}", ev)
        else:
            self.add("header_from", "skip", "no sender was allowed at the envelope, so none was tried")

    # -- the anonymous connection -------------------------------------------------

    def probe_anonymous(self) -> None:
        recipient = self.cfg.probe_recipient or self.self_addr
        if not self.cfg.use_auth:
            self.add("anonymous_refused", "skip", "use_auth is false: this config itself submits anonymously")
            return
        if not recipient:
            self.add("anonymous_refused", "skip", "set from_address (or probe_recipient) to probe")
            return
        sender = self.cfg.probe_external_sender or EXTERNAL_PROBE
        # no credentials cross this connection, so an unverified certificate
        # (already reported) does not stop it
        s = self.new_session(verify=False if self.cert_failed else None)
        ev: list[str] = []
        try:
            s.connect()
            s.ehlo()
            if self.cfg.security == "starttls" and "STARTTLS" in s.capabilities:
                mark = len(s.transcript)
                before = s.mail(sender)
                if before.ok:
                    s.rset()
                ev += _evidence(s.transcript, mark)
                s.starttls()
            mark = len(s.transcript)
            mail_r, rcpt_r, _ = s.try_sender(sender, recipient)
            ev += _evidence(s.transcript, mark)
        except Error as exc:
            ev += _evidence(s.transcript, 0)
            self.add("anonymous_refused", "warn", f"could not complete the anonymous probe: {exc}", ev)
            return
        finally:
            s.close_quietly()
        if mail_r.ok and rcpt_r is not None and rcpt_r.ok:
            self.add("anonymous_refused", "fail", "an unauthenticated client may submit mail: "
                     f"MAIL FROM:<{sender}> and RCPT TO:<{recipient}> were accepted", ev)
        elif (not mail_r.ok and mail_r.transient) or (mail_r.ok and rcpt_r is not None and rcpt_r.transient):
            self.add("anonymous_refused", "warn", "the anonymous probe got a temporary refusal", ev)
        else:
            where = "MAIL" if not mail_r.ok else "RCPT"
            refusal = mail_r if not mail_r.ok else rcpt_r
            self.add("anonymous_refused", "pass", f"an unauthenticated sender is refused at {where}: {refusal}", ev)

    def report(self, started: float) -> ConnectorReport:
        ordered = [self.checks[cid] for cid in CHECK_IDS if cid in self.checks]
        return ConnectorReport(checks=ordered, senders=self.senders, server=self.server, tls=self.tls,
                               duration_ms=int((time.monotonic() - started) * 1000),
                               required=list(self.required), deep=self.deep)


def test_connector(config: Config, *, deep: bool = False, require: Iterable[str] | None = None,
                   senders: Iterable[str] = ()) -> ConnectorReport:
    """Diagnoses the connector ``config`` points at.

    Every check except the optional rights (``accept_authoritative_domain_sender``,
    ``accept_any_sender``, ``header_from``) is required; name those in
    ``require`` (or the config's ``require``) when the connector must grant
    them, and a refusal is then ``fail`` instead of ``warn``.  ``deep=True``
    sends one real message per allowed sender to the probe recipient, with
    that sender in the From header (Exchange checks Send As at end of data).

    ``senders`` adds addresses to probe (nothing is delivered); each is in
    ``report.senders``, for ``report.assert_can_send_as(address)``.

    Raises ConfigError for unknown check ids; every server-side problem is a
    finding in the report, not an exception.
    """
    wanted = list(config.require) + list(require or [])
    unknown = [c for c in wanted if c not in CHECK_IDS]
    if unknown:
        exc = ConfigError(f"require: unknown check {unknown[0]!r}; known: {', '.join(CHECK_IDS)}")
        exc.key, exc.value = "require", unknown[0]
        raise exc
    required = [c for c in CHECK_IDS if c not in OPTIONAL_CHECKS or c in wanted]
    started = time.monotonic()
    d = _Diagnosis(config, deep, required, list(senders))
    d.run()
    return d.report(started)


test_connector.__test__ = False  # type: ignore[attr-defined]  # not a pytest test
