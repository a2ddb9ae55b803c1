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

from .advice import ONPREM_465, AdviceContext, advice, auth_cause, family_label, guess_family, onprem_465, reply_cause
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

Status = Literal["pass", "warn", "fail", "skip", "unknown"]
Verdict = Literal["allowed", "refused_at_mail", "refused_at_rcpt", "refused_at_end_of_data", "inconclusive"]
# The answer the report gives for one address: what send_as(cfg, address) will do.
SendAs = Literal["allowed", "refused", "not_known_until_deep", "inconclusive"]

CHECK_IDS = (
    "resolve", "connect", "banner", "ehlo", "tls", "auth_requires_tls", "auth_mechanisms", "auth",
    "anonymous_refused", "send_as_self", "accept_authoritative_domain_sender", "accept_any_sender",
    "header_from",
)
# Rights a connector may rightly withhold: these fail only when required.
OPTIONAL_CHECKS = ("accept_authoritative_domain_sender", "accept_any_sender", "header_from")
EXTERNAL_PROBE = "mailexpress-probe@example.com"
EXCHANGE_ONPREM = ("exchange2003", "exchange2007", "exchange2010", "exchange2013", "exchange2016", "exchange2019")
# the settings a report names the source of (config.sources)
REPORTED_SETTINGS = (
    "host", "port", "security", "use_auth", "username", "password", "from_address", "verify", "ca_file",
    "server_name", "auth_mechanisms", "allow_insecure_auth", "oauth_tenant", "oauth_client_id",
    "oauth_client_secret", "token_provider", "timeouts", "deadline", "server_family", "connector_name",
    "service_account", "probe_authoritative_sender", "probe_external_sender", "probe_recipient", "require",
)
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
    header_verdict: Verdict | None = None   # deep probe only: own envelope + this From
    header_reply: Reply | None = None
    evidence: list[str] = field(default_factory=list, repr=False)
    #: what send_as(cfg, address) will do: the report's answer for this address
    send_as: SendAs = "inconclusive"
    #: when refused: "envelope" (the MAIL FROM check) or "header" (the From check, Send As);
    #: None when the server did not let the two be told apart
    refused_by: Literal["envelope", "header"] | None = None
    #: why the answer is what it is, in words (the stage, the check, the family)
    note: str = ""

    @property
    def stage(self) -> str | None:
        """Where the address was refused (MAIL, RCPT, END_OF_DATA), else None."""
        if self.send_as != "refused":
            return None
        return self.verdict.replace("refused_at_", "").upper() if self.verdict.startswith("refused_at_") else None

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "kind": self.kind, "verdict": self.verdict,
                "reply": self.reply.to_dict() if self.reply else None, "derived": self.derived,
                "header_verdict": self.header_verdict,
                "header_reply": self.header_reply.to_dict() if self.header_reply else None,
                "send_as": self.send_as, "refused_by": self.refused_by, "stage": self.stage, "note": self.note}


_STATUS_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP", "unknown": "UNKNOWN"}
_ANSI = {"pass": "32", "warn": "33", "fail": "1;31", "skip": "2", "unknown": "35"}
_STATUS_COLOUR = {"pass": "#1a7f37", "warn": "#9a6700", "fail": "#cf222e", "skip": "#57606a", "unknown": "#8250df"}


@dataclass
class ConnectorReport:
    """The diagnosis.  ``ok`` is true when no check failed and every
    required check was decided (no required check ``unknown``): warnings
    allowed.  A clean report means ``send_as(cfg, from_address,
    to=probe_recipient)`` works."""

    checks: list[Check]
    senders: list[SenderProbe]
    server: dict[str, Any]
    tls: dict[str, Any] | None
    duration_ms: int
    required: list[str]
    deep: bool
    #: where each setting the diagnosis used came from: ``default``,
    #: ``file:PATH``, ``env:NAME`` or ``argument`` (config.sources)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems()

    def problems(self) -> list[Check]:
        """The checks that make ``ok`` false: failed, or required and undecided."""
        return [c for c in self.checks
                if c.status == "fail" or (c.status == "unknown" and c.id in self.required)]

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
        """Raises AssertionError listing every failed (or required but
        undecided) check with its fix."""
        failed = self.problems()
        if failed:
            raise AssertionError("connector checks failed:\n" + "\n".join(
                f"  {c.id}: {c.summary}" + (f"\n    fix: {c.advice}" if c.advice else "") for c in failed))

    def assert_can_send_as(self, address: str) -> None:
        """Raises AssertionError, with the server's reply and the fix, unless
        the report says ``send_as(cfg, address)`` works (``send_as ==
        "allowed"``: at the envelope, and at end of data when deep or when the
        server family does not decide there)."""
        probe = self._probe_for(address)
        if probe.send_as != "allowed":
            where = probe.send_as if probe.send_as != "refused" else probe.verdict
            reply = probe.reply
            fix = self._advice_for(probe)
            by = f" (by the {probe.refused_by} check)" if probe.refused_by else ""
            raise AssertionError(f"the account may not send as {address}: {where}; server said: {reply}{by}"
                                 + (f"\n  {probe.note}" if probe.note else "")
                                 + (f"\n  fix: {fix}" if fix else ""))

    def assert_cannot_send_as(self, address: str) -> None:
        """Raises AssertionError unless the server refused ``address``."""
        probe = self._probe_for(address)
        if probe.send_as == "allowed":
            raise AssertionError(f"the account may send as {address}, which it should not")
        if probe.send_as != "refused":
            raise AssertionError(f"not known whether the account may send as {address} "
                                 f"({probe.send_as}): {probe.note}")

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
        if probe.refused_by == "header":
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
            "sources": dict(self.sources),
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
            lines.append("senders (send_as, envelope verdict):")
            for s in self.senders:
                reply = f"  {s.reply}" if s.reply and s.verdict != "allowed" else ""
                header = f", header From: {s.header_verdict}" if s.header_verdict else ""
                by = f" by the {s.refused_by} check" if s.refused_by else ""
                lines.append(f"  {s.send_as:<20} {s.verdict:<24} {s.kind:<21} {s.address}{by}{header}{reply}")
        if self.sources:
            lines.append("settings from: " + _sources_text(self.sources))
        failed = [c.id for c in self.problems()]
        verdict = "OK" if not failed else f"{len(failed)} check(s) failed or undecided: {', '.join(failed)}"
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
            f"<td>{html.escape(s.send_as)}{html.escape(f' ({s.refused_by} check)' if s.refused_by else '')}</td>"
            f"<td>{html.escape(s.verdict)}</td><td>{html.escape(str(s.reply) if s.reply else '')}</td></tr>"
            for s in self.senders)
        sources = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td>{html.escape(v)}</td></tr>"
                          for k, v in self.sources.items())
        head = "OK" if self.ok else "problems found"
        return (f"<div><b>Connector {html.escape(str(self.server['host']))}:{self.server['port']}: {head}</b> "
                f"({self.duration_ms} ms)<table><tr><th>status</th><th>check</th><th>finding</th></tr>"
                f"{''.join(rows)}</table><table><tr><th>kind</th><th>sender</th><th>send_as</th><th>envelope</th>"
                f"<th>reply</th></tr>{senders}</table>"
                f"<details><summary>settings from</summary><table><tr><th>setting</th><th>from</th></tr>"
                f"{sources}</table></details></div>")


def _sources_text(sources: dict[str, str]) -> str:
    """``host, port: file:x.toml; username: env:MAILEXPRESS_USERNAME; ...`` (grouped by source)."""
    groups: dict[str, list[str]] = {}
    for key, src in sources.items():
        groups.setdefault(src, []).append(key)
    return "; ".join(f"{', '.join(keys)}: {src}" for src, keys in groups.items())


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
        self.running = "resolve"            # the check whose step is under way
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
        self.broken: str | None = None      # why the authenticated session ended early, if it did
        self.recipient: str | None = None   # the probe recipient, once the senders were probed
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
            *, sender: str | None = None, reply: Reply | None = None, advice_for: str | None = None,
            **more: Any) -> Check:
        if status == "fail" and check_id not in self.required:
            status = "warn"
        adv: str | None = None
        if status in ("fail", "warn"):
            adv = advice(advice_for or check_id, self.ctx(sender, reply, **more))
        elif status == "unknown":
            # AUTH has its own text for a temporary failure; everything else: what to do when undecided
            adv = (advice(check_id, self.ctx(sender, reply, **more)) if check_id == "auth"
                   else self.undecided_advice(summary))
        c = Check(check_id, status, summary, list(evidence), adv or None)
        self.checks[check_id] = c
        return c

    def undecided_advice(self, summary: str) -> str:
        if summary.startswith("not known until deep"):
            return ("Run test_connector(cfg, deep=True): it sends what send_as sends (this address as MAIL FROM "
                    "and From) to the probe recipient, one message per address, and reports which check refuses "
                    "it, if any.")
        return ("Nothing was decided: a temporary (4xx) reply, a timeout or a broken session says nothing about "
                "the account's rights. Run the diagnosis again; if it persists, look at the evidence and the "
                "server's limits (rate limits, connections per client).")

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
            # a broken session mid-way is a finding on the step it broke, not on one that did not run
            step = self.running if self.running not in self.checks else next(
                cid for cid in CHECK_IDS if cid not in self.checks and cid != "anonymous_refused")
            undecided = isinstance(exc, TimeoutError) or (exc.reply is not None and exc.reply.transient)
            self.broken = f"the session broke during {step}: {exc}"
            self.add(step, "unknown" if undecided else "fail", self.broken, _evidence(s.transcript, 0)[-12:],
                     reply=exc.reply)
        finally:
            s.close_quietly()
        self.finish_senders()
        connected = "connect" in self.checks and self.checks["connect"].status == "pass"
        if connected and "anonymous_refused" not in self.checks:
            self.probe_anonymous()
        self.skip_rest("not reached")
        if "anonymous_refused" not in self.checks:
            self.checks["anonymous_refused"] = Check("anonymous_refused", "skip", "no connection")

    def connect_and_greet(self, s: Session) -> bool:
        cfg = self.cfg
        self.running = "connect"
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
            peer = s.peer_address
            where = f"{peer[0]}:{peer[1]}" if peer else f"{attempts[-1]['address']}:{cfg.port}"
            self.add("connect", "pass", f"connected to {where}", ev)
            wrong = getattr(exc, "wrong_mode", None)
            if wrong:
                # the port speaks the other security mode: not a certificate or a
                # blocked client, and nothing after it can be tried
                speaks = ("plain SMTP first (STARTTLS)" if wrong == "starttls"
                          else "implicit TLS (SMTPS)")
                self.add("tls" if wrong == "starttls" else "banner", "fail",
                         f"port {cfg.port} speaks {speaks}, not security = {cfg.security!r}",
                         [str(exc), *_evidence(s.transcript, 0)], reply=exc.reply, advice_for="wrong_mode",
                         wrong_mode=wrong)
                self.skip_rest(f"not tried: port {cfg.port} speaks {speaks}, not security = {cfg.security!r}")
                return False
            if isinstance(exc, TLSError):
                self.fail_tls(exc, s)
                self.skip_rest("not tried: TLS failed, and credentials are never sent without it")
                return False
            if exc.reply is not None and exc.reply.transient:
                # 421 at the greeting: a limit (connections per client, maintenance), not a verdict
                self.add("banner", "unknown", f"the server turned the session away for now: {exc.reply} "
                         "(a temporary refusal, e.g. too many connections from this client; nothing was decided)",
                         _evidence(s.transcript, 0), reply=exc.reply)
                self.skip_rest(f"not tried: the server turned the session away ({exc.reply.code})")
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
        where = f"{peer[0]}:{peer[1]}" if peer else f"{cfg.host}:{cfg.port}"
        self.add("connect", "pass", f"connected to {where} ({ok[-1]['ms'] if ok else '?'} ms)",
                 [f"{a['address']} ({a['family']}): {a['error'] or 'connected'} in {a['ms']} ms"
                  for a in attempts])
        banner = s.banner
        assert banner is not None
        self.server["banner"] = banner.text
        mark = len(s.transcript)
        self.running = "ehlo"
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
        if onprem_465(self.server["family"], self.cfg.port):
            self.add("banner", "warn", f"{banner.code} greeting{said}, on port 465: {ONPREM_465}",
                     _evidence(s.transcript, 0, 3))
            return
        self.add("banner", "pass", f"{banner.code} greeting{said}", _evidence(s.transcript, 0, 3))

    def secure(self, s: Session) -> bool:
        """tls and auth_requires_tls; False when the diagnosis cannot go on."""
        cfg = self.cfg
        self.running = "tls"
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
            "version": s.tls_version, "cipher": s.tls_cipher, "resumed": s.tls_resumed,
            "verified": code == 0, "verify_message": info.get("verify_message"),
            "hostname_match": code not in (62, 64),
            "subject": info.get("subject"), "issuer": info.get("issuer"), "san": info.get("san", []),
            "not_after": not_after, "days_left": days_left,
        }

    def tls_check(self, s: Session) -> None:
        t = self.tls = self.tls_details(s)
        ev = [f"   TLS {t['version']}, {t['cipher']}{', resumed' if t['resumed'] else ''}", f"   subject {t['subject']}", f"   issuer {t['issuer']}",
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
        self.running = "auth"
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
        self.add("auth", "unknown" if cause == "temporary" else "fail", summary, ev, reply=exc.reply,
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
        self.running = "send_as_self"
        recipient = self.cfg.probe_recipient or self.self_addr
        if not recipient:
            for cid in ("send_as_self", "accept_authoritative_domain_sender", "accept_any_sender", "header_from"):
                self.add(cid, "skip", "set from_address (or probe_recipient) to probe senders")
            return
        control_rcpt_ok: bool | None = None
        for address, kind, derived in self.candidates():
            if self.broken is not None:
                self.senders.append(SenderProbe(address, kind, "inconclusive", None, derived,
                                                note=f"not probed: {self.broken}"))
                continue
            mark = len(s.transcript)
            try:
                mail_r, rcpt_r, _pipelined = s.try_sender(address, recipient)
            except Error as exc:
                # the session broke during this probe: a finding on this address, not a verdict
                self.broken = f"the session broke while probing {address}: {exc}"
                self.senders.append(SenderProbe(address, kind, "inconclusive", exc.reply, derived,
                                                evidence=_evidence(s.transcript, mark), note=self.broken))
                continue
            verdict, reply = self.classify(mail_r, rcpt_r, control_rcpt_ok)
            if kind == "self":
                control_rcpt_ok = bool(mail_r.ok and rcpt_r is not None and rcpt_r.ok)
                if mail_r.ok and rcpt_r is not None and not rcpt_r.ok:
                    verdict = "inconclusive"   # no control: the recipient itself may be the problem
            self.senders.append(SenderProbe(address, kind, verdict, reply, derived,
                                            evidence=_evidence(s.transcript, mark)))
        for probe in self.senders:
            self.envelope_answer(probe)
        self.recipient = recipient      # deep probes and the checks follow once this session is closed

    def finish_senders(self) -> None:
        """After the probing session is closed (a server that allows one
        connection per client then still takes the deep probes' own)."""
        if self.recipient is None:
            return
        if self.deep:
            self.deep_probe(self.recipient)
        self.sender_checks(self.recipient)

    @staticmethod
    def classify(mail_r: Reply, rcpt_r: Reply | None, control_rcpt_ok: bool | None) -> tuple[Verdict, Reply]:
        """Stage + reply class decide; the wording only keeps a relay refusal
        at RCPT from counting against the sender.  A RCPT refusal counts
        against the sender only when the control probe's RCPT to the same
        recipient was accepted."""
        if not mail_r.ok:
            return ("inconclusive" if mail_r.transient else "refused_at_mail"), mail_r
        assert rcpt_r is not None
        if rcpt_r.ok:
            return "allowed", rcpt_r
        if rcpt_r.transient or control_rcpt_ok is False:
            return "inconclusive", rcpt_r
        if reply_cause(rcpt_r.code, rcpt_r.enhanced, rcpt_r.text) in ("relay_denied", "recipient_unknown"):
            return "inconclusive", rcpt_r      # about the recipient, not the sender
        return "refused_at_rcpt", rcpt_r

    # -- what send_as will do ------------------------------------------------------

    def owns_self(self) -> bool:
        """from_address is the account's own: the same address as the user
        name, or its local part is the user name (DOMAIN\\user too)."""
        addr, user = (self.self_addr or "").lower(), (self.cfg.username or "").lower()
        if not addr or not user:
            return False
        return addr == user or addr.partition("@")[0] == user.rpartition("\\")[2].partition("@")[0]

    def decided_at_end_of_data(self, probe: SenderProbe) -> str | None:
        """Why an address accepted at the envelope may still be refused at
        end of data by this server family (None when it cannot be)."""
        fam = self.server["family"]
        if probe.kind == "self" and self.owns_self():
            return None
        if fam == "exchange_online":
            return "Exchange Online accepts any MAIL FROM and decides Send As at end of data"
        if fam in EXCHANGE_ONPREM:
            any_sender = any(p.kind == "external" and p.verdict == "allowed" for p in self.senders)
            if any_sender:
                return None         # ms-Exch-SMTP-Accept-Any-Sender: no anti-spoofing check at end of data
            return "Exchange checks the From header (Send As) at end of data unless the account has Accept-Any-Sender"
        at_envelope = any(p.verdict in ("refused_at_mail", "refused_at_rcpt") for p in self.senders)
        if at_envelope:
            return None             # this server checks senders at MAIL/RCPT: it refused one there
        return (f"{family_label(fam)} refused no sender at MAIL or RCPT, so its sender check may sit at end of "
                "data (Postfix smtpd_end_of_data_restrictions, an Exim DATA ACL, a milter)")

    def envelope_answer(self, probe: SenderProbe) -> None:
        """send_as from the envelope probe alone (before or without deep)."""
        if probe.note and probe.verdict == "inconclusive" and probe.reply is None:
            probe.send_as = "inconclusive"
            return
        if probe.verdict == "allowed":
            why = self.decided_at_end_of_data(probe)
            if why is None:
                probe.send_as = "allowed"
            else:
                probe.send_as = "not_known_until_deep"
                probe.note = f"accepted at MAIL and RCPT; {why}: run with deep=True"
        elif probe.verdict == "inconclusive":
            probe.send_as = "inconclusive"
            probe.note = probe.note or "no definite answer (a temporary reply, or the recipient was refused)"
        else:
            probe.send_as, probe.refused_by = "refused", "envelope"
            probe.note = f"refused at {probe.verdict[11:].upper()} by the envelope sender check"

    def deep_probe(self, recipient: str) -> None:
        """Sends what send_as sends, the way send_as sends it: on a
        connection of its own (connect, TLS, AUTH as the config says), the
        candidate as MAIL FROM and in From.  When that is refused at end of
        data, a second message with the account's own MAIL FROM and the
        candidate in From tells the header check (Send As) from an envelope
        check that runs at end of data.  A connection per message also keeps
        one refusal from spoiling the next probe (real Postfix 3.7's smtpd
        dies on the MAIL after a BDAT refused by smtpd_end_of_data_restrictions)."""
        for probe in self.senders:
            if probe.verdict != "allowed":
                continue
            try:
                outcome, reply, ev = self.send_probe(probe.address, probe.address, recipient)
                probe.evidence = probe.evidence + ev
                if outcome == "allowed":
                    probe.send_as, probe.note = "allowed", "a message from this address was accepted at end of data"
                    probe.header_verdict, probe.header_reply = "allowed", reply
                elif outcome == "inconclusive":
                    probe.send_as, probe.verdict, probe.reply = "inconclusive", "inconclusive", reply
                    probe.note = "a temporary reply to the deep probe: not a verdict"
                elif outcome != "refused_at_end_of_data":
                    probe.send_as, probe.verdict, probe.reply, probe.refused_by = "refused", outcome, reply, "envelope"
                    probe.note = f"refused at {outcome[11:].upper()} by the envelope sender check"
                else:
                    probe.send_as, probe.verdict, probe.reply = "refused", outcome, reply
                    self.tell_envelope_from_header(probe, recipient)
            except Error as exc:
                probe.send_as, probe.reply = "inconclusive", exc.reply or probe.reply
                probe.note = f"the deep probe's connection failed: {exc}"

    def tell_envelope_from_header(self, probe: SenderProbe, recipient: str) -> None:
        # the account's own address: the user name when it is one (a mailbox, a UPN), else from_address
        user = self.cfg.username or ""
        own = user if "@" in user and "\\" not in user else self.self_addr
        if not own or own.lower() == probe.address.lower():
            probe.note = "refused at END_OF_DATA (its own address: envelope and header cannot be told apart)"
            return
        outcome, reply, ev = self.send_probe(own, probe.address, recipient)
        probe.evidence = probe.evidence + ev
        probe.header_reply = reply
        if outcome == "allowed":
            probe.header_verdict, probe.refused_by = "allowed", "envelope"
            probe.note = ("refused at END_OF_DATA by the envelope sender check: the same From with the account's "
                          "own MAIL FROM was accepted")
        elif outcome == "refused_at_end_of_data":
            probe.header_verdict, probe.refused_by = outcome, "header"
            probe.note = ("refused at END_OF_DATA by the header From check (Send As): the same From with the "
                          "account's own MAIL FROM was refused too")
        else:
            probe.header_verdict = "inconclusive" if outcome == "inconclusive" else outcome
            probe.note = "refused at END_OF_DATA; the second probe could not tell envelope from header"

    def send_probe(self, envelope: str, from_header: str, recipient: str) -> tuple[Verdict, Reply | None, list[str]]:
        """One real message (deep only) on a connection of its own, as
        send_as does it.  Connection, TLS and AUTH failures propagate."""
        from .auth import authenticate
        from .compose import prepare
        s = self.new_session()
        try:
            s.connect()
            s.ehlo()
            if self.cfg.security == "starttls":
                s.starttls()
            if self.cfg.use_auth:
                authenticate(s, self.cfg)
            mark = len(s.transcript)
            # the message send_as would build for this sender (compose.prepare is send_as's own path)
            p = prepare(sender=from_header, to=[recipient], envelope_from=envelope,
                        reply_to=self.cfg.reply_to_address,
                        subject=f"mailexpress connector probe: MAIL FROM {envelope}, From {from_header}",
                        body="This message was sent by mailexpress test_connector(deep=True) to check "
                             "that the server accepts this sender. It can be deleted.\n",
                        eight_bit=s.has_extn("8BITMIME"), utf8=s.has_extn("SMTPUTF8"))
            reply: Reply | None
            try:
                _refused, reply = s.send_raw(p.envelope_from, p.recipients, p.data)
                outcome: Verdict = "allowed"
            except DataRefused as exc:
                outcome, reply = ("inconclusive" if exc.transient else "refused_at_end_of_data"), exc.reply
            except SenderRefused as exc:
                outcome, reply = ("inconclusive" if exc.transient else "refused_at_mail"), exc.reply
            except RecipientsRefused as exc:
                outcome, reply = "inconclusive", exc.reply
            return outcome, reply, _evidence(s.transcript, mark)
        finally:
            s.close_quietly()

    def sender_checks(self, recipient: str) -> None:
        names = {"self": "send_as_self", "authoritative_domain": "accept_authoritative_domain_sender",
                 "external": "accept_any_sender"}
        decided: set[str] = set()
        # a real (configured or given) address decides its kind before a made-up one
        for probe in sorted(self.senders, key=lambda p: p.derived):
            cid = names[probe.kind]
            if cid in decided:
                continue        # further addresses of a kind: in report.senders, not a check of their own
            decided.add(cid)
            made_up = " (a made-up address; set probe_{} for a real one)".format(
                "authoritative_sender" if probe.kind == "authoritative_domain" else "external_sender") \
                if probe.derived else ""
            status: Status
            if probe.send_as == "allowed":
                status, summary = "pass", f"may send as {probe.address}{made_up}"
                if self.deep:
                    summary += " (a message with it as MAIL FROM and From was accepted)"
            elif probe.send_as == "not_known_until_deep":
                status = "unknown"
                summary = f"not known until deep: {probe.address}{made_up} {probe.note}"
            elif probe.send_as == "inconclusive":
                status = "unknown"
                summary = f"no definite answer for {probe.address}{made_up}: {probe.note}" + (
                    f" ({probe.reply})" if probe.reply and probe.reply.code else "")
            else:
                status = "fail"
                summary = f"may not send as {probe.address}{made_up}: {probe.note}"
            if probe.reply is None and probe.send_as == "inconclusive" and "not probed" in probe.note:
                status, summary = "skip", f"not reached: {self.broken}"
            advice_id = "header_from" if probe.refused_by == "header" else cid
            self.add(cid, status, summary, probe.evidence, sender=probe.address, reply=probe.reply,
                     stage=probe.stage, refused_by=probe.refused_by, advice_for=advice_id)
        for cid in names.values():
            if cid not in self.checks:
                self.add(cid, "skip", "no address of this kind to probe")
        if not self.deep:
            self.add("header_from", "skip", "not probed: run with deep=True (sends one message per "
                     f"sender accepted at the envelope to {recipient})")
            return
        tried = [p for p in self.senders if p.header_verdict]
        refused = [p for p in self.senders if p.refused_by == "header"]
        unsure = [p for p in self.senders if p.verdict == "refused_at_end_of_data" and p.refused_by is None
                  and p.kind != "self"]
        ev = [f"From: {p.address} -> {p.header_verdict}: {p.header_reply}" for p in tried]
        if refused:
            self.add("header_from", "fail", "the server refuses these From headers at end of data (Send As): "
                     + ", ".join(p.address for p in refused), ev, sender=refused[0].address,
                     reply=refused[0].header_reply)
        elif unsure:
            self.add("header_from", "unknown", "no definite answer at end of data for "
                     + ", ".join(p.address for p in unsure), ev)
        elif tried:
            self.add("header_from", "pass", f"{len(tried)} message(s) with those From headers accepted "
                     f"for {recipient}", ev)
        elif self.broken:
            self.add("header_from", "skip", f"not reached: {self.broken}")
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
            self.add("anonymous_refused", "unknown", f"could not complete the anonymous probe: {exc}", ev)
            return
        finally:
            s.close_quietly()
        if mail_r.ok and rcpt_r is not None and rcpt_r.ok:
            self.add("anonymous_refused", "fail", "an unauthenticated client may submit mail: "
                     f"MAIL FROM:<{sender}> and RCPT TO:<{recipient}> were accepted", ev)
        elif (not mail_r.ok and mail_r.transient) or (mail_r.ok and rcpt_r is not None and rcpt_r.transient):
            self.add("anonymous_refused", "unknown", "the anonymous probe got a temporary refusal: "
                     f"{mail_r if not mail_r.ok else rcpt_r} (nothing was decided)", ev)
        else:
            where = "MAIL" if not mail_r.ok else "RCPT"
            refusal = mail_r if not mail_r.ok else rcpt_r
            self.add("anonymous_refused", "pass", f"an unauthenticated sender is refused at {where}: {refusal}", ev)

    def report(self, started: float) -> ConnectorReport:
        ordered = [self.checks[cid] for cid in CHECK_IDS if cid in self.checks]
        return ConnectorReport(checks=ordered, senders=self.senders, server=self.server, tls=self.tls,
                               duration_ms=int((time.monotonic() - started) * 1000),
                               required=list(self.required), deep=self.deep, sources=used_sources(self.cfg))


def used_sources(cfg: Config) -> dict[str, str]:
    """Where each setting the diagnosis used came from (file, environment,
    argument); settings left at their default are named only for host, port
    and security.  Values are never included."""
    import dataclasses
    defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else
                         f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
                for f in dataclasses.fields(cfg)}
    out: dict[str, str] = {}
    for key in REPORTED_SETTINGS:
        src = cfg.sources.get(key)
        if src is None:
            value = getattr(cfg, key)
            if key not in ("host", "port", "security") and (value is None or value == defaults.get(key)):
                continue
            src = "argument"
        elif src == "default" and key not in ("host", "port", "security"):
            continue
        out[key] = src
    return out


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
