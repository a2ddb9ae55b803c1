"""test_connector against every emulator preset and against other servers' wording."""
from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
from fakeserver import serve_commands

import mailexpress as mx
from mailexpress.diagnose import CHECK_IDS, _Diagnosis
from mailexpress.reply import Reply
from mailexpress.testing.emulator import PRESETS


def statuses(report):
    return {c.id: c.status for c in report.checks}


# preset -> (config overrides, expected statuses for the checks that matter, ok)
EXPECT = {
    "exchange_client": ({}, {cid: "pass" for cid in CHECK_IDS if cid != "header_from"} | {"header_from": "skip"}, True),
    "anonymous_allowed": ({}, {"anonymous_refused": "fail", "auth": "pass"}, False),
    # Basic off on premises: NTLM (Integrated Windows authentication) still works
    "basic_auth_off": ({}, {"auth_mechanisms": "pass", "auth": "pass", "send_as_self": "pass",
                            "anonymous_refused": "pass"}, True),
    "auth_before_tls": ({}, {"auth_requires_tls": "fail", "tls": "pass", "auth": "pass"}, False),
    "no_tls": ({"security": "starttls"}, {"tls": "fail", "auth_requires_tls": "fail", "auth": "skip"}, False),
    # accepted at MAIL, but on-premises Exchange checks Send As at end of data: not known until deep
    "authoritative_only": ({}, {"send_as_self": "pass", "accept_authoritative_domain_sender": "unknown",
                                "accept_any_sender": "warn"}, True),
    "no_impersonation": ({}, {"send_as_self": "pass", "accept_authoritative_domain_sender": "warn",
                              "accept_any_sender": "warn"}, True),
    "refuse_at_rcpt": ({}, {"accept_authoritative_domain_sender": "unknown", "accept_any_sender": "warn"}, True),
    "send_as_missing": ({}, {"accept_authoritative_domain_sender": "unknown", "header_from": "skip"}, True),
    "exchange_online": ({}, {"auth": "pass", "send_as_self": "pass", "accept_any_sender": "unknown",
                             "anonymous_refused": "pass"}, True),
    "exchange_online_smtp_auth_disabled": ({}, {"auth_mechanisms": "pass", "auth": "fail",
                                                "send_as_self": "skip"}, False),
    "exchange_online_no_sendasapp": ({}, {"auth_mechanisms": "pass", "auth": "fail", "send_as_self": "skip"},
                                     False),
    "expired_certificate": ({}, {"tls": "fail", "auth": "skip", "anonymous_refused": "pass"}, False),
    "wrong_host_certificate": ({}, {"tls": "fail", "auth": "skip"}, False),
}


def test_every_preset_is_covered():
    assert set(EXPECT) == set(PRESETS)


@pytest.mark.parametrize("name", list(EXPECT))
def test_preset_diagnosis(preset, name):
    overrides, expected, ok = EXPECT[name]
    em = preset(name)
    report = mx.test_connector(em.config(**overrides))
    got = statuses(report)
    assert {k: got[k] for k in expected} == expected, str(report)
    assert report.ok is ok
    assert [c.id for c in report.checks] == list(CHECK_IDS)
    for c in report.checks:
        if c.status in ("fail", "warn"):
            assert c.advice, c.id


def test_correct_connector_uses_two_connections_and_delivers_nothing(preset):
    em = preset("exchange_client")
    report = mx.test_connector(em.config())
    assert report.ok and em.connections == 2 and em.messages == []
    assert report.duration_ms >= 0


def test_verdicts_per_sender_stage(preset):
    em = preset("refuse_at_rcpt")
    report = mx.test_connector(em.config())
    verdicts = {s.kind: s.verdict for s in report.senders}
    assert verdicts == {"self": "allowed", "authoritative_domain": "allowed", "external": "refused_at_rcpt"}
    ext = report.sender("mailexpress-probe@example.com")
    assert ext.reply.code == 553 and ext.reply.stage is mx.Stage.RCPT and ext.derived


def test_refused_at_mail_names_the_exchange_right(preset):
    em = preset("no_impersonation")
    cfg = em.config(connector_name="EX01\\Client Frontend EX01", service_account="CORP\\svc-mailer",
                    server_family="exchange2016")
    report = mx.test_connector(cfg, require=["accept_any_sender"])
    c = report.check("accept_any_sender")
    assert c.status == "fail" and not report.ok
    assert ('Add-ADPermission "EX01\\Client Frontend EX01" -User "CORP\\svc-mailer" '
            "-ExtendedRights ms-Exch-SMTP-Accept-Any-Sender") in c.advice
    assert report.sender("mailexpress-probe@example.com").verdict == "refused_at_mail"
    assert not report.server["family_guessed"]


@pytest.mark.parametrize("family, words", [
    ("exchange2010", "Exchange Management Shell"),
    ("exchange2003", "restart the SMTP service"),
    ("postfix", '"/.*/ svc-mailer" last in a regexp: map'),
    ("exim", "authenticated_id"),
    ("other", "Allow the account"),
])
def test_advice_follows_the_family(preset, family, words):
    em = preset("authoritative_only")
    report = mx.test_connector(em.config(server_family=family))
    assert words in report.check("accept_any_sender").advice


def test_family_is_guessed_from_the_banner_and_said_so(preset):
    em = preset("anonymous_allowed")
    report = mx.test_connector(em.config())
    assert report.server["family"] == "exchange2013" and report.server["family_guessed"]
    assert "guessed from its greeting" in str(report)
    assert "Set-ReceiveConnector" in report.check("anonymous_refused").advice


def test_deep_probe_finds_missing_send_as(preset):
    em = preset("send_as_missing")
    report = mx.test_connector(em.config(), deep=True, require=["header_from"])
    assert report.check("header_from").status == "fail"
    probe = report.sender("mailexpress-probe@corp.example")
    # the deep probe sends what send_as sends (MAIL FROM and From = the candidate): refused at end of
    # data; the second one (own MAIL FROM, the candidate's From) is refused too: the header check
    assert probe.verdict == "refused_at_end_of_data" and probe.header_verdict == "refused_at_end_of_data"
    assert probe.send_as == "refused" and probe.refused_by == "header" and probe.stage == "END_OF_DATA"
    assert probe.header_reply.stage is mx.Stage.END_OF_DATA and probe.header_reply.enhanced == "5.7.1"
    check = report.check("accept_authoritative_domain_sender")
    assert "header From check (Send As)" in check.summary and '"Send As"' in check.advice
    # only the accepted probe (the account's own From) was delivered
    assert [m.message["From"] for m in em.messages] == ["svc-mailer@corp.example"]


def test_exchange_online_needs_deep_and_then_decides_at_end_of_data(preset):
    em = preset("exchange_online")
    shallow = mx.test_connector(em.config())
    assert "deep=True" in shallow.check("accept_authoritative_domain_sender").summary
    deep = mx.test_connector(em.config(), deep=True)
    probe = deep.sender("mailexpress-probe@corp.example")
    assert probe.verdict == "refused_at_end_of_data" and probe.reply.enhanced == "5.7.60"
    assert "Add-RecipientPermission" in deep.check("accept_authoritative_domain_sender").advice


def test_require_comes_from_config_too(preset):
    em = preset("authoritative_only")
    report = mx.test_connector(em.config(require=["accept_any_sender"]))
    assert report.check("accept_any_sender").status == "fail" and not report.ok
    with pytest.raises(mx.ConfigError, match="unknown check"):
        mx.test_connector(em.config(), require=["accept_everything"])


def test_wrong_password(preset):
    em = preset("exchange_client")
    report = mx.test_connector(em.config(password="wrong-pass-123"))
    c = report.check("auth")
    assert c.status == "fail" and "535 5.7.3" in "\n".join(c.evidence)
    assert "ms-Exch-SMTP-Submit" in c.advice
    assert report.check("send_as_self").status == "skip"
    assert "wrong-pass-123" not in json.dumps(report.to_dict()) + str(report) + report._repr_html_()


def test_json_contract(preset):
    em = preset("authoritative_only")
    data = json.loads(json.dumps(mx.test_connector(em.config()).to_dict()))
    assert set(data) >= {"ok", "checks", "senders", "server", "tls", "duration_ms"}
    for c in data["checks"]:
        assert set(c) == {"id", "status", "summary", "evidence", "advice"}
        assert c["status"] in ("pass", "warn", "fail", "skip", "unknown")
    for s in data["senders"]:
        assert {"address", "kind", "verdict", "reply", "send_as", "refused_by", "stage", "note"} <= set(s)
        assert s["send_as"] in ("allowed", "refused", "not_known_until_deep", "inconclusive")
        assert s["kind"] in ("self", "authoritative_domain", "external")
        assert s["reply"] is None or set(s["reply"]) == {"code", "enhanced", "text"}
    assert data["tls"]["version"].startswith("TLSv1.") and data["tls"]["verified"]


def test_password_is_never_in_any_output(preset):
    em = preset("exchange_client")
    user = next(iter(em.users.values()))
    report = mx.test_connector(em.config(), deep=True)
    text = json.dumps(report.to_dict()) + str(report) + report._repr_html_()
    assert user.password not in text and base64.b64encode(user.password.encode()).decode() not in text
    assert "<password redacted>" in text or "<response redacted>" in text       # LOGIN or NTLM


def test_html_has_status_words_not_only_colour(preset):
    em = preset("anonymous_allowed")
    h = mx.test_connector(em.config())._repr_html_()
    assert "<table>" in h and ">FAIL<" in h and ">PASS<" in h


@pytest.mark.parametrize("mail, rcpt, control, verdict", [
    (Reply(250, "2.1.0", ("ok",)), Reply(250, None, ("ok",)), True, "allowed"),
    (Reply(550, None, ("Sender not allowed",)), None, True, "refused_at_mail"),          # Exim: no 5.7.x
    (Reply(553, "5.7.1", ("not owned",)), Reply(503, "5.5.1", ("need MAIL",)), True, "refused_at_mail"),
    (Reply(451, "4.3.0", ("later",)), None, True, "inconclusive"),
    (Reply(250, None, ("ok",)), Reply(550, None, ("no",)), True, "refused_at_rcpt"),
    (Reply(250, None, ("ok",)), Reply(550, None, ("no",)), False, "inconclusive"),       # recipient itself refused
    (Reply(250, None, ("ok",)), Reply(450, "4.7.1", ("greylisted",)), True, "inconclusive"),
])
def test_classification_is_by_stage_and_class(mail, rcpt, control, verdict):
    assert _Diagnosis.classify(mail, rcpt, control)[0] == verdict


def test_exim_like_server_without_enhanced_codes(fake_server):
    """Exim words everything differently and offers no ENHANCEDSTATUSCODES or PIPELINING."""
    def script(conn):
        authed = False

        def answer(line: bytes) -> bytes:
            nonlocal authed
            if line.startswith(b"AUTH PLAIN"):
                authed = True
                return b"235 Authentication succeeded\r\n"
            if line.startswith(b"AUTH LOGIN"):      # Exim's plaintext authenticator, two prompts
                for prompt in (b"VXNlcm5hbWU6", b"UGFzc3dvcmQ6"):
                    conn.send(b"334 " + prompt + b"\r\n")
                    conn.readline()
                authed = True
                return b"235 Authentication succeeded\r\n"
            if line.startswith(b"MAIL FROM:<app@example.org>") and authed:
                return b"250 OK\r\n"
            if line.startswith(b"MAIL"):
                return b"550 Submission from this address is not allowed\r\n" if authed \
                    else b"550 Authentication required\r\n"
            if line.startswith(b"RCPT"):
                return b"250 Accepted\r\n"
            return b"250 Reset OK\r\n" if line.startswith(b"RSET") else b"500 unrecognized command\r\n"
        serve_commands(conn, b"220 mx.example.org ESMTP Exim 4.96 Sat, 28 Nov 2026 10:00:00 +0000\r\n",
                       [b"SIZE 52428800", b"8BITMIME", b"AUTH PLAIN LOGIN", b"HELP"], b"mx.example.org Hello",
                       answer, bye=b"221 mx.example.org closing connection\r\n")
    srv = fake_server(script)
    cfg = mx.Config(host="127.0.0.1", port=srv.port, security="none", allow_insecure_auth=True,
                    username="app", password="pw", from_address="app@example.org",
                    timeouts={"banner": 5, "ehlo": 5, "auth": 5, "mail": 5, "rcpt": 5, "command": 5, "quit": 5})
    report = mx.test_connector(cfg)
    assert report.server["family"] == "exim" and report.server["family_guessed"]
    assert {s.kind: s.verdict for s in report.senders} == {
        "self": "allowed", "authoritative_domain": "refused_at_mail", "external": "refused_at_mail"}
    assert report.check("anonymous_refused").status == "pass"
    assert report.check("tls").status == "fail"     # security none with credentials
    assert "acl_smtp" in (report.check("anonymous_refused").advice or "acl_smtp") 


def test_unreachable_server_is_a_finding_not_an_exception():
    import socket
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    report = mx.test_connector(mx.Config(host="127.0.0.1", port=port, use_auth=False))
    assert statuses(report)["connect"] == "fail" and statuses(report)["banner"] == "skip"
    bad = mx.test_connector(mx.Config(host="no-such-host.invalid", port=587, use_auth=False))
    assert statuses(bad)["resolve"] == "fail"


def test_cli_exit_codes_and_json(preset, tmp_path):
    good, bad = preset("exchange_client"), preset("anonymous_allowed")
    env_base = {"PATH": "/usr/bin:/bin"}
    import os
    for em, code in ((good, 0), (bad, 1)):
        user = next(iter(em.users.values()))
        env = dict(os.environ, SVC_PW=user.password)
        env = {k: v for k, v in env.items() if not k.startswith("MAILEXPRESS_")}
        proc = subprocess.run([sys.executable, "-m", "mailexpress", "test-connector", "--host", "127.0.0.1",
                               "--port", str(em.port), "--username", user.username, "--password-env", "SVC_PW",
                               "--ca-file", em.ca_file, "--from-address", user.address, "--json"],
                              capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == code, proc.stderr
        data = json.loads(proc.stdout)
        assert data["ok"] is (code == 0)
        assert user.password not in proc.stdout + proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mailexpress", "test-connector", "--host", "h"],
                          capture_output=True, text=True, env={**env_base, **{k: v for k, v in os.environ.items()
                                                                              if not k.startswith("MAILEXPRESS_")}})
    assert proc.returncode == 2 and "username" in proc.stderr


def test_given_senders_are_probed_and_decide_their_check(preset):
    em = preset("authoritative_only")
    report = mx.test_connector(em.config(), senders=["alice@corp.example", "ceo@partner.example"], deep=True)
    kinds = {s.address: (s.kind, s.verdict, s.derived) for s in report.senders}
    assert kinds["alice@corp.example"] == ("authoritative_domain", "allowed", False)
    assert kinds["ceo@partner.example"] == ("external", "refused_at_mail", False)
    assert "ceo@partner.example" in report.check("accept_any_sender").summary
    report.assert_can_send_as("alice@corp.example")
    report.assert_cannot_send_as("ceo@partner.example")
    with pytest.raises(AssertionError, match="fix: .*ms-Exch-SMTP-Accept-Any-Sender"):
        report.assert_can_send_as("ceo@partner.example")
    with pytest.raises(AssertionError, match="was not probed"):
        report.assert_can_send_as("someone@else.example")


def test_assert_ok_lists_failures_with_fixes(preset):
    em = preset("anonymous_allowed")
    report = mx.test_connector(em.config())
    with pytest.raises(AssertionError, match=r"anonymous_refused: .*\n    fix: .*PermissionGroups"):
        report.assert_ok()
