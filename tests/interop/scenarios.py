"""What the real servers answer, case by case.  Shared by test_postfix.py
(which checks docs/interop.md against it) and docs/gen_interop_table.py
(which writes docs/interop.md from it)."""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

import mailexpress as mx
from harness import ACCOUNTS, PostfixHarness

SERVER = "Postfix 3.7 + Dovecot 2.3"
EXIM_SERVER = "Exim 4.96"


@dataclass(frozen=True)
class Row:
    server: str
    case: str
    stage: str
    reply: str


def cfg(h: PostfixHarness, service: str, login: str = "svc-domain", **kw: object) -> mx.Config:
    """A config for one service and account of the harness."""
    password, address = ACCOUNTS[login]
    values: dict[str, object] = {
        "host": "127.0.0.1", "port": h.ports[service], "username": login, "password": password,
        "from_address": address, "ca_file": h.ca_file,
        "security": {"smtps": "ssl", "insecure": "none", "open": "none"}.get(service, "starttls"),
        "timeouts": {"connect": 5, "banner": 10, "ehlo": 10, "tls": 10, "auth": 20, "mail": 10, "rcpt": 10,
                     "data": 10, "end_of_data": 60, "command": 10, "quit": 5},
    }
    values.update(kw)
    return mx.Config(**values)  # type: ignore[arg-type]


def _shown(obj: object) -> tuple[str, str]:
    """(stage, "code text") of a Reply or an exception carrying one."""
    reply = obj if isinstance(obj, mx.Reply) else getattr(obj, "reply", None)
    stage = getattr(obj, "stage", None) or getattr(reply, "stage", None)
    if reply is None:
        return str(stage or ""), f"(none: {obj})"
    return str(stage), re.sub(r"(\d+ bytes )?queued as [0-9A-F]+", lambda m: ("<n> bytes " if m.group(1) else "") + "queued as <id>",
                              f"{reply.code} {reply.text}")


def _outcome(fn: Callable[[], object]) -> tuple[str, str]:
    try:
        return _shown(fn())
    except mx.Error as exc:
        return _shown(exc)


def _open(h: PostfixHarness, service: str, **kw: object) -> mx.Session:
    s = mx.Session(**cfg(h, service, **kw).session_kwargs())
    s.connect()
    s.ehlo()
    return s


def collect(h: PostfixHarness) -> list[Row]:
    rows: list[Row] = []

    def add(case: str, outcome: tuple[str, str]) -> None:
        rows.append(Row(SERVER, case, *outcome))

    s = _open(h, "submission")
    before = s.capabilities.get("AUTH")
    add("MAIL before STARTTLS", _shown(s.mail("svc-domain@corp.example")))
    s.starttls()
    add("EHLO: AUTH before / after STARTTLS",
        ("EHLO", f"{'AUTH ' + before if before else 'no AUTH'} / AUTH {s.capabilities.get('AUTH')}"))
    add("anonymous MAIL after STARTTLS (smtpd_delay_reject=no)",
        _shown(s.mail("mailexpress-probe@example.com")))
    s.close()

    s = _open(h, "submission", allow_insecure_auth=True)   # to see the server's own answer
    add("AUTH sent anyway before STARTTLS", _outcome(lambda: s.login("svc-domain", "x", mechanism="PLAIN")))
    s.close()

    add("wrong password", _outcome(lambda: mx.connect(cfg(h, "submission", password="wrong-password"))))
    for service, when in (("submission", "no"), ("submission_rcpt", "yes")):
        with mx.connect(cfg(h, service, login="svc-self")) as s:
            mail_r, rcpt_r, _ = s.try_sender("svc-any@corp.example", "svc-self@corp.example")
        add(f"sender not owned by the login (smtpd_delay_reject={when})",
            _shown(mail_r if not mail_r.ok else rcpt_r))
        if when == "no":
            add("the pipelined RCPT after that refused MAIL", _shown(rcpt_r))
    with mx.connect(cfg(h, "submission", login="svc-any")) as s:
        _mail, rcpt_r, _ = s.try_sender("svc-domain@corp.example", "svc-self@corp.example")
    add("sender owned by the login", _shown(rcpt_r))
    add("message accepted", _outcome(lambda: mx.send_as(cfg(h, "submission", login="svc-any"),
                                                        to="x@partner.example", subject="t", body="t\n").reply))
    add("a service offering AUTH without TLS (we refuse to send)",
        _outcome(lambda: mx.connect(cfg(h, "insecure", allow_insecure_auth=False))))
    s = _open(h, "open", use_auth=False, username=None, password=None)
    mail_r, rcpt_r, _ = s.try_sender("mailexpress-probe@example.com", "svc-self@corp.example")
    s.close()
    add("anonymous submission on the open service", _shown(rcpt_r if rcpt_r is not None else mail_r))
    return rows


def exim_cfg(e: object, login: str = "svc-domain", **kw: object) -> mx.Config:
    """A config for the Exim harness (one STARTTLS service)."""
    password, address = ACCOUNTS[login]
    values: dict[str, object] = {
        "host": "127.0.0.1", "port": e.port, "username": login, "password": password,  # type: ignore[attr-defined]
        "from_address": address, "ca_file": e.ca_file,  # type: ignore[attr-defined]
        "timeouts": {"connect": 5, "banner": 10, "ehlo": 10, "tls": 10, "auth": 20, "mail": 10, "rcpt": 10,
                     "data": 10, "end_of_data": 60, "command": 10, "quit": 5},
    }
    values.update(kw)
    return mx.Config(**values)  # type: ignore[arg-type]


def collect_exim(e: object) -> list[Row]:
    rows: list[Row] = []

    def add(case: str, outcome: tuple[str, str]) -> None:
        rows.append(Row(EXIM_SERVER, case, *outcome))

    s = mx.Session(**exim_cfg(e).session_kwargs())
    s.connect()
    s.ehlo()
    before = s.capabilities.get("AUTH")
    s.starttls()
    add("EHLO: AUTH before / after STARTTLS",
        ("EHLO", f"{'AUTH ' + before if before else 'no AUTH'} / AUTH {s.capabilities.get('AUTH')}"))
    add("anonymous MAIL after STARTTLS", _shown(s.mail("mailexpress-probe@example.com")))
    s.close()
    add("wrong password", _outcome(lambda: mx.connect(exim_cfg(e, password="wrong-password"))))
    with mx.connect(exim_cfg(e, login="svc-self")) as s:
        mail_r, rcpt_r, _ = s.try_sender("svc-any@corp.example", "svc-self@corp.example")
    add("sender not allowed for the login (MAIL ACL)", _shown(mail_r))
    add("the pipelined RCPT after that refused MAIL", _shown(rcpt_r))
    add("message accepted", _outcome(lambda: mx.send_as(exim_cfg(e, login="svc-any"), to="x@partner.example",
                                                        subject="t", body="t\n").reply))
    return [Row(r.server, r.case, r.stage, re.sub(r"id=[0-9A-Za-z-]+", "id=<id>", r.reply)) for r in rows]


def markdown(rows: list[Row]) -> str:
    out = ["| server | case | stage | reply |", "|---|---|---|---|"]
    for r in rows:
        # a multi-line reply on one row; chunk sizes vary with the message
        reply = re.sub(r"\d+ byte chunk, total \d+", "<n> byte chunk, total <n>", r.reply)
        reply = reply.replace("|", "\\|").replace("\n", " / ")
        out.append(f"| {r.server} | {r.case} | {r.stage} | `{reply}` |")
    return "\n".join(out)


OAUTH_SERVER = "Postfix 3.7 + Dovecot 2.3 oauth2"


def collect_oauth(h: object) -> list[Row]:
    """What Postfix + Dovecot's oauth2 passdb (oauth_harness.py) answer, seen
    by an independent client (smtplib, MSAL): no mailexpress code involved."""
    import smtplib
    import ssl

    from oauth_harness import APPS, BAD_KINDS, EXCHANGE_SCOPE, bad_tokens, msal_app, raw_auth

    rows: list[Row] = []
    mailer = APPS["mailer"]
    s = smtplib.SMTP("127.0.0.1", h.ports["submission"], timeout=30)  # type: ignore[attr-defined]
    s.ehlo("client.corp.example")
    before = s.esmtp_features.get("auth", "").strip()
    s.starttls(context=ssl.create_default_context(cafile=h.ca_file))  # type: ignore[attr-defined]
    s.ehlo("client.corp.example")
    rows.append(Row(OAUTH_SERVER, "EHLO: AUTH before / after STARTTLS", "EHLO",
                    f"{'AUTH ' + before if before else 'no AUTH'} / AUTH {s.esmtp_features['auth'].strip()}"))
    s.quit()

    def shown(r: object) -> str:
        text = r.shown()  # type: ignore[attr-defined]
        if r.challenge is not None:  # type: ignore[attr-defined]
            first, rest = text.split(" / ", 1)
            challenge = json.dumps(r.challenge, separators=(",", ":"))  # type: ignore[attr-defined]
            challenge = challenge.replace(h.endpoint.base_url, "https://127.0.0.1:<port>")  # type: ignore[attr-defined]
            text = f"334 base64({challenge}) / {rest}"
        return text

    token = msal_app(h.endpoint, mailer).acquire_token_for_client(scopes=[EXCHANGE_SCOPE])["access_token"]  # type: ignore[attr-defined]
    for mech in ("XOAUTH2", "OAUTHBEARER"):
        rows.append(Row(OAUTH_SERVER, f"{mech}, token from MSAL (initial response)", "AUTH",
                        shown(raw_auth(h, "submission", mech, mailer.mailbox, token))))  # type: ignore[arg-type]
    bad = bad_tokens(h)  # type: ignore[arg-type]
    for kind in BAD_KINDS:
        tok, user, _reason = bad[kind]
        rows.append(Row(OAUTH_SERVER, f"XOAUTH2, token: {kind}", "AUTH",
                        shown(raw_auth(h, "submission", "XOAUTH2", user, tok))))  # type: ignore[arg-type]
    tok, user, _reason = bad["expired"]
    rows.append(Row(OAUTH_SERVER, "OAUTHBEARER, token: expired (answered with %x01)", "AUTH",
                    shown(raw_auth(h, "submission", "OAUTHBEARER", user, tok))))  # type: ignore[arg-type]
    issuer = h.issuer  # type: ignore[attr-defined]
    rows.append(Row(OAUTH_SERVER, "XOAUTH2, 2,500-character token as initial response (AUTH line over "
                    "line_length_limit=2048)", "AUTH",
                    shown(raw_auth(h, "submission", "XOAUTH2", mailer.mailbox,  # type: ignore[arg-type]
                                   issuer.token_of_size(mailer, 2_500)))))
    for size, service, note in ((10_000, "submission", "smtpd_sasl_response_limit=12288 (default)"),
                                (10_000, "submission_big", "smtpd_sasl_response_limit=65536"),
                                (13_000, "submission_big", "smtpd_sasl_response_limit=65536")):
        r = raw_auth(h, service, "XOAUTH2", mailer.mailbox, issuer.token_of_size(mailer, size), initial=False)  # type: ignore[arg-type]
        rows.append(Row(OAUTH_SERVER, f"XOAUTH2, {size:,}-character token after 334, {note}", "AUTH", shown(r)))
    return rows
