"""test_connector when the session breaks during the sender probes, the
sources of the settings, the connect summary, on-premises port 465 and the
reply classification: byte-exact fake servers and the emulator."""
from __future__ import annotations

import json
import time

import pytest
from fakeserver import serve_commands

import mailexpress as mx
from mailexpress.advice import reply_cause
from mailexpress.testing import ConnectorEmulator

TIMEOUTS = {"connect": 5, "banner": 5, "ehlo": 5, "auth": 5, "mail": 1, "rcpt": 5, "data": 5, "end_of_data": 5,
            "command": 5, "quit": 1}


def _diagnose(srv) -> mx.ConnectorReport:  # type: ignore[no-untyped-def]
    """test_connector against the fake server srv: PLAIN as app@example.org, no TLS."""
    return mx.test_connector(mx.Config(host="127.0.0.1", port=srv.port, security="none", allow_insecure_auth=True,
                                       username="app", password="pw", from_address="app@example.org",
                                       auth_mechanisms=["PLAIN"], timeouts=TIMEOUTS))


def _rest(line: bytes) -> bytes:
    """What the fake servers below answer to RCPT, RSET and anything else."""
    if line.startswith(b"RCPT"):
        return b"250 2.1.5 ok\r\n"
    if line.startswith(b"RSET"):
        return b"250 2.0.0 ok\r\n"
    return b"500 5.5.1 what\r\n"


def _script(on_second_mail: str):
    """A server without PIPELINING: the account's own address is accepted;
    the second sender probe's MAIL gets ``on_second_mail``; an anonymous
    session (no AUTH) is refused at MAIL."""
    def script(conn):
        authed, mails = False, 0

        def answer(line: bytes) -> bytes | None:
            nonlocal authed, mails
            if line.startswith(b"AUTH PLAIN"):
                authed = True
                return b"235 2.7.0 ok\r\n"
            if line.startswith(b"MAIL") and not authed:
                return b"530 5.7.0 Authentication required\r\n"
            if line.startswith(b"MAIL"):
                mails += 1
                if mails < 2:
                    return b"250 2.1.0 ok\r\n"
                if on_second_mail == "421":
                    conn.send(b"421 4.3.2 Service not available, closing transmission channel\r\n")
                elif on_second_mail == "timeout":
                    time.sleep(2.5)
                else:
                    conn.send(b"this is not an SMTP reply\r\n")
                return None
            return _rest(line)
        serve_commands(conn, b"220 mx.example.org ESMTP ready\r\n", [b"AUTH PLAIN LOGIN", b"ENHANCEDSTATUSCODES"],
                       b"mx.example.org", answer)
    return script


@pytest.mark.parametrize("how", ["421", "timeout", "malformed"])
def test_a_break_during_the_sender_probes_is_attributed_to_the_probe_that_was_running(fake_server, how):
    report = _diagnose(fake_server(_script(how)))
    checks = {c.id: c for c in report.checks}
    assert checks["send_as_self"].status == "pass"                       # obtained before the break: kept
    broke = checks["accept_authoritative_domain_sender"]
    assert broke.status == "unknown" and "the session broke while probing mailexpress-probe@example.org" \
        in broke.summary, str(report)
    assert checks["accept_any_sender"].status == "skip" and "not reached" in checks["accept_any_sender"].summary
    # the anonymous probe ran on its own connection and was refused: a pass, never "the session broke"
    anon = checks["anonymous_refused"]
    assert anon.status == "pass" and "broke" not in anon.summary, str(report)
    assert {s.address: s.send_as for s in report.senders} == {
        "app@example.org": "allowed", "mailexpress-probe@example.org": "inconclusive",
        "mailexpress-probe@example.com": "inconclusive"}
    # what keeps ok false is only the config's own security = none; the own address works and the
    # optional rights stay undecided
    assert {c.id for c in report.problems()} == {"tls", "auth_requires_tls"}, str(report)
    # every check that did not pass says which check and why
    for c in report.checks:
        if c.status in ("fail", "unknown", "skip"):
            assert c.summary, c.id


def test_transient_refusal_of_a_sender_is_not_a_verdict():
    assert reply_cause(451, "4.7.1", "4.7.1 try again later") == "temporary"
    from mailexpress.diagnose import _Diagnosis
    from mailexpress.reply import Reply
    verdict, _ = _Diagnosis.classify(Reply(421, "4.4.2", ("4.4.2 Message submission rate exceeded",)), None, True)
    assert verdict == "inconclusive"


@pytest.mark.parametrize("code, enhanced, text, cause", [
    (550, "5.7.60", "5.7.60 SMTP; Client does not have permissions to send as this sender", "send_as_denied"),
    (554, "5.2.252", "5.2.252 SendAsDenied; svc@corp.example not allowed to send as x@corp.example; "
     "STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; " + "x" * 1400,
     "send_as_denied"),
    (550, "5.7.1", "5.7.1 Client does not have permissions to send as this sender", "send_as_denied"),
    (550, "5.7.1", "5.7.1 Unable to relay", "relay_denied"),
    (550, "5.7.54", "5.7.54 SMTP; Unable to relay recipient in non-accepted domain", "relay_denied"),
    (530, "5.7.57", "5.7.57 Client not authenticated to send mail", "not_authenticated"),
    (530, "5.7.1", "5.7.1 Client was not authenticated", "not_authenticated"),
    (530, "5.7.0", "5.7.0 Must issue a STARTTLS command first", "tls_required"),
    (553, "5.7.1", "5.7.1 <a@b>: Sender address rejected: not owned by user svc", "sender_not_owned"),
    (554, "5.7.1", "5.7.1 <a@b>: Relay access denied", "relay_denied"),
    (550, "5.1.10", "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found", "recipient_unknown"),
    (421, "4.4.2", "4.4.2 Message submission rate for this client has exceeded the configured limit",
     "rate_limited"),
    (432, "4.3.2", "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded", "rate_limited"),
    (451, "4.7.0", "4.7.0 Temporary server error. Please try again later. PRX4", "temporary"),
    # a transient reply is transient whatever its words
    (450, "4.7.1", "4.7.1 Client does not have permissions to send as this sender", "temporary"),
    (550, None, "Submission from this address is not allowed", "refused"),          # Exim: no code
    (250, "2.1.0", "2.1.0 Sender OK", "accepted"),
])
def test_reply_cause(code, enhanced, text, cause):
    assert reply_cause(code, enhanced, text) == cause


def test_relay_refusal_at_rcpt_is_about_the_recipient():
    from mailexpress.diagnose import _Diagnosis
    from mailexpress.reply import Reply
    ok = Reply(250, "2.1.0", ("2.1.0 Sender OK",))
    relay = Reply(550, "5.7.54", ("5.7.54 SMTP; Unable to relay recipient in non-accepted domain",))
    assert _Diagnosis.classify(ok, relay, True)[0] == "inconclusive"


def test_report_names_where_each_setting_came_from(tmp_path):
    em = ConnectorEmulator.preset("exchange_client").start()
    try:
        user = next(iter(em.users.values()))
        path = tmp_path / "connector.toml"
        path.write_text(f'host = "127.0.0.1"\nport = {em.port}\nca_file = "{em.ca_file}"\n'
                        f'password_env = "SVC_PW"\n')
        cfg = mx.load_config(path, env={"SVC_PW": user.password, "MAILEXPRESS_USERNAME": user.username,
                                        "MAILEXPRESS_FROM_ADDRESS": user.address},
                             ehlo_name="client.corp.example")
        report = mx.test_connector(cfg)
    finally:
        em.stop()
    assert report.sources["host"] == report.sources["port"] == f"file:{path}"
    assert report.sources["username"] == "env:MAILEXPRESS_USERNAME"
    assert report.sources["password"] == "env:SVC_PW" and report.sources["security"] == "default"
    assert "ehlo_name" not in report.sources or report.sources["ehlo_name"] == "argument"
    text = str(report)
    assert f"host, port, ca_file: file:{path}" in text and "username: env:MAILEXPRESS_USERNAME" in text
    assert "env:SVC_PW" in report._repr_html_()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["sources"]["password"] == "env:SVC_PW"
    everything = text + report._repr_html_() + json.dumps(data)
    assert user.password not in everything


def test_connect_summary_is_host_and_port():
    em = ConnectorEmulator.preset("exchange_client").start()
    try:
        report = mx.test_connector(em.config())
    finally:
        em.stop()
    summary = report.check("connect").summary
    assert summary.startswith(f"connected to 127.0.0.1:{em.port} (") and "(" + "'" not in summary


def _exchange_on_465(conn):
    serve_commands(conn, b"220 EX01.corp.example Microsoft ESMTP MAIL Service ready at Mon, 30 Nov 2026 21:00:00 "
                   b"+0000\r\n", [b"SIZE 37748736", b"PIPELINING", b"ENHANCEDSTATUSCODES", b"AUTH GSSAPI NTLM LOGIN"],
                   b"EX01.corp.example Hello", lambda line: b"530 5.7.1 Client was not authenticated\r\n",
                   bye=b"221 2.0.0 Service closing transmission channel\r\n")


def test_onprem_exchange_on_465_points_at_587(fake_server):
    """The advice keys on the configured port: a fake server stands for 465
    (a config with port 465 needs a listener there, so the port check is fed
    through the advice context as well)."""
    from mailexpress.advice import AdviceContext, advice
    from mailexpress.diagnose import _Diagnosis
    srv = fake_server(_exchange_on_465)
    cfg = mx.Config(host="127.0.0.1", port=srv.port, security="none", use_auth=False, timeouts=TIMEOUTS)
    d = _Diagnosis(cfg, False, ["banner"])
    s = d.new_session()
    s.connect()
    s.ehlo()
    d.cfg = cfg.replace(port=465)       # what the user configured; the socket is the fake server's
    d.banner_check(s, list(s.ehlo_reply.lines))
    s.close_quietly()
    banner = d.checks["banner"]
    assert banner.status == "warn" and "Client Proxy" in banner.summary and "587" in banner.summary
    assert "STARTTLS" in banner.advice and "blocked" not in banner.advice
    ctx = AdviceContext(family="exchange2019", connector="EX01\\Client Frontend EX01", account="svc",
                        host="mail.corp.example", port=465)
    for check in ("connect", "tls", "ehlo"):
        assert "Client Proxy" in advice(check, ctx) and "port 587 with STARTTLS" in advice(check, ctx), check
    for other in (AdviceContext(family="postfix", connector="c", account="a", host="h", port=465),
                  AdviceContext(family="exchange2019", connector="c", account="a", host="h", port=587)):
        assert "Client Proxy" not in advice("tls", other)


def _anonymous_421(conn):
    """Authenticated sessions work; an unauthenticated MAIL gets a 421 and the close."""
    authed = False

    def answer(line: bytes) -> bytes | None:
        nonlocal authed
        if line.startswith(b"AUTH PLAIN"):
            authed = True
            return b"235 2.7.0 ok\r\n"
        if line.startswith(b"MAIL") and not authed:
            conn.send(b"421 4.7.0 Too many errors, closing\r\n")
            return None
        if line.startswith(b"MAIL"):
            return b"250 2.1.0 ok\r\n" if b"app@example.org" in line else b"550 5.7.1 not yours\r\n"
        return _rest(line)
    serve_commands(conn, b"220 mx.example.org ESMTP ready\r\n", [b"AUTH PLAIN", b"ENHANCEDSTATUSCODES"],
                   b"mx.example.org", answer)


def test_an_anonymous_probe_turned_away_for_now_is_undecided(fake_server):
    report = _diagnose(fake_server(_anonymous_421))
    anon = report.check("anonymous_refused")
    assert anon.status == "unknown" and "421" in anon.summary + "\n".join(anon.evidence), str(report)
    assert "anonymous_refused" in {c.id for c in report.problems()}      # required and undecided: not ok
    assert report.check("send_as_self").status == "pass"
    assert {s.kind: s.send_as for s in report.senders} == {"self": "allowed", "authoritative_domain": "refused",
                                                           "external": "refused"}


@pytest.mark.parametrize("answer, status", [(b"421 4.3.2 Service shutting down\r\n", "unknown"), (b"", "fail")])
def test_a_session_broken_during_auth_is_an_auth_finding(fake_server, answer, status):
    """A 421 (or a plain close) in answer to AUTH: the auth check says so, the
    sender checks are skipped with the reason, the anonymous probe still runs."""
    def script(conn):
        def reply(line: bytes) -> bytes | None:
            if line.startswith(b"AUTH"):
                conn.send(answer)
                return None
            if line.startswith(b"MAIL"):
                return b"530 5.7.0 Authentication required\r\n"
            return b"250 2.0.0 ok\r\n" if line.startswith(b"RSET") else b"500 5.5.1 what\r\n"
        serve_commands(conn, b"220 mx.example.org ESMTP ready\r\n", [b"AUTH PLAIN", b"ENHANCEDSTATUSCODES"],
                       b"mx.example.org", reply)
    report = _diagnose(fake_server(script))
    auth = report.check("auth")
    assert auth.status == status, str(report)
    assert report.check("send_as_self").status == "skip"
    assert report.check("anonymous_refused").status == "pass", str(report)
    assert "auth" in {c.id for c in report.problems()}
