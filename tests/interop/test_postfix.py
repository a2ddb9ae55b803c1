"""Against a real Postfix + Dovecot (see harness.py)."""
from __future__ import annotations

import base64
import os
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest
from harness import ACCOUNTS
from scenarios import cfg, collect, markdown

import mailexpress as mx

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs"))
from gen_interop_table import table_in_doc  # noqa: E402


def delivered_copy(postfix, marker: bytes, sent: bytes) -> bytes:
    """What virtual(8) stored (LF line ends, Postfix's trace headers on top),
    checked to end with exactly the bytes we sent."""
    got = postfix.wait_for(marker).data
    assert got.endswith(sent.replace(b"\r\n", b"\n")), "the delivered message differs from what was sent"
    return got


def test_send_as_is_delivered_byte_exact(postfix):
    raw = (b"From: svc-domain@corp.example\r\nTo: bob@partner.example\r\nSubject: exact-1\r\n\r\n"
           b".leading dot\r\n..two dots\r\n.\r\n" + b"L" * 998 + b"\r\nlast line without newline")
    mx.send_as(cfg(postfix, "submission"), "svc-domain@corp.example", to="bob@partner.example", message=raw)
    delivered_copy(postfix, b"exact-1", raw + b"\r\n")


def test_bare_lf_and_cr_are_normalised(postfix):
    raw = b"Subject: exact-2\n\nline one\nline two\rline three\r\n"
    mx.send_as(cfg(postfix, "submission"), "svc-domain@corp.example", to="bob@partner.example", message=raw)
    delivered_copy(postfix, b"exact-2", b"Subject: exact-2\r\n\r\nline one\r\nline two\r\nline three\r\n")


def test_utf8_address_and_headers_with_smtputf8(postfix):
    res = mx.send_as(cfg(postfix, "submission"), "svc-domain@corp.example", to="jörg@partner.example",
                     subject="Grüße exact-3", body="Köln ✓\n")
    got = postfix.wait_for(b"exact-3").data
    assert "Delivered-To: jörg@partner.example".encode() in got
    assert "Köln ✓".encode() in got and res.ok


def test_20_mb_attachment(postfix):
    blob = os.urandom(20 * 1024 * 1024)
    msg = EmailMessage()
    msg["Subject"] = "exact-4"
    msg.set_content("attachment follows")
    msg.add_attachment(blob, maintype="application", subtype="octet-stream", filename="blob.bin")
    res = mx.send_as(cfg(postfix, "submission"), "svc-domain@corp.example", to="bob@partner.example", message=msg)
    assert res.ok
    got = postfix.wait_for(b"exact-4", timeout=60).data
    import email
    parsed = email.message_from_bytes(got)
    parts = [p for p in parsed.walk() if p.get_filename() == "blob.bin"]
    assert parts and parts[0].get_payload(decode=True) == blob


def test_implicit_tls_service(postfix):
    res = mx.send_as(cfg(postfix, "smtps"), "svc-domain@corp.example", to="bob@partner.example",
                     subject="exact-5", body="over 465-style TLS\n")
    assert res.ok and postfix.wait_for(b"exact-5")


def test_wrong_password(postfix):
    with pytest.raises(mx.AuthError) as info:
        mx.connect(cfg(postfix, "submission", password="not-the-password"))
    assert info.value.code == 535 and info.value.enhanced == "5.7.8" and info.value.stage is mx.Stage.AUTH


def test_unknown_ca(postfix):
    with pytest.raises(mx.CertificateError) as info:
        mx.connect(cfg(postfix, "submission", ca_file=None))
    assert info.value.verify_code in (19, 20)


def test_wrong_host_name(postfix):
    with pytest.raises(mx.CertificateError, match="hostname mismatch"):
        mx.connect(cfg(postfix, "submission", server_name="other-host.example"))


def test_no_credentials_on_the_service_without_tls_unless_opted_in(postfix):
    with pytest.raises(mx.InsecureAuthError):
        mx.connect(cfg(postfix, "insecure", allow_insecure_auth=False))
    assert b"insecure/smtpd" not in postfix.log().encode() or "AUTH" not in _insecure_auth_lines(postfix)
    with mx.connect(cfg(postfix, "insecure", allow_insecure_auth=True)) as s:
        assert s.authenticated and not s.tls_active


def _insecure_auth_lines(postfix) -> str:
    return "\n".join(line for line in postfix.log().splitlines() if "insecure/smtpd" in line and "sasl" in line)


def test_login_mechanism_used_against_postfix(postfix):
    # Exchange offers only LOGIN; Postfix offers both: LOGIN must work too
    with mx.connect(cfg(postfix, "submission", auth_mechanisms=["LOGIN"])) as s:
        assert s.authenticated
        assert any(t == "AUTH LOGIN" for _ms, d, t in s.transcript if d == "C")


EXPECTED = {
    "svc-any": {"self": "allowed", "authoritative_domain": "allowed", "external": "allowed"},
    "svc-domain": {"self": "allowed", "authoritative_domain": "allowed", "external": "refused"},
    "svc-self": {"self": "allowed", "authoritative_domain": "refused", "external": "refused"},
}
STAGE = {"submission": "refused_at_mail", "submission_rcpt": "refused_at_rcpt", "smtps": "refused_at_mail",
         "insecure": "refused_at_mail"}


@pytest.mark.parametrize("service", list(STAGE))
@pytest.mark.parametrize("login", list(EXPECTED))
def test_connector_verdicts_for_every_account_and_service(postfix, login, service):
    extra = {"allow_insecure_auth": True} if service == "insecure" else {}
    report = mx.test_connector(cfg(postfix, service, login=login, **extra))
    verdicts = {s.kind: s.verdict for s in report.senders}
    expected = {k: (STAGE[service] if v == "refused" else v) for k, v in EXPECTED[login].items()}
    assert verdicts == expected, str(report)
    checks = {c.id: c.status for c in report.checks}
    assert checks["auth"] == "pass" and checks["anonymous_refused"] == "pass"
    assert report.server["family"] == "postfix" and report.server["family_guessed"]
    if service == "insecure":
        assert checks["tls"] == "fail" and checks["auth_requires_tls"] == "fail" and not report.ok
    else:
        assert checks["tls"] == "pass" and checks["auth_requires_tls"] == "pass"


def test_connector_finds_the_open_service(postfix):
    report = mx.test_connector(cfg(postfix, "open", allow_insecure_auth=True))
    checks = {c.id: c.status for c in report.checks}
    assert checks["anonymous_refused"] == "fail"
    assert "smtpd_relay_restrictions" in report.check("anonymous_refused").advice
    assert checks["auth_mechanisms"] == "fail"      # no SASL on that service


def test_deep_probe_delivers_to_the_probe_recipient(postfix):
    report = mx.test_connector(cfg(postfix, "submission", login="svc-domain",
                                   probe_recipient="probe-box@corp.example"), deep=True)
    assert report.check("header_from").status == "pass"
    # other tests deliver deep probes too: look for this one by its recipient and From
    import time
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        mine = [m for m in postfix.delivered() if b"Delivered-To: probe-box@corp.example" in m.data
                and b"From: mailexpress-probe@corp.example" in m.data]
        if mine:
            break
        time.sleep(0.05)
    assert mine, postfix.log()[-2000:]


def test_reply_table_in_docs_matches_the_servers(postfix):
    ours = markdown(collect(postfix)).splitlines()[2:]
    documented = [line for line in table_in_doc().splitlines() if line.startswith("| Postfix")]
    assert ours == documented, "Postfix answers differently now: run python docs/gen_interop_table.py"


def test_passwords_never_reach_the_log_in_clear(postfix):
    log = postfix.log()
    for password, _addr in ACCOUNTS.values():
        assert password not in log
        assert base64.b64encode(password.encode()).decode() not in log


def test_send_many_pipelined_bdat_through_postfix(postfix):
    """Postfix offers PIPELINING and CHUNKING: 30 messages as BDAT with no
    round trip of their own; one sender Postfix refuses at MAIL (not owned
    by svc-self) fails alone; every other message arrives byte-exact."""
    config = cfg(postfix, "submission", login="svc-self")
    own = ACCOUNTS["svc-self"][1]
    bodies = {i: (f"From: {own}\r\nSubject: bulk-pf-{i:02d}\r\n\r\n.dot line {i}\r\n"
                  f"no final newline {i}").encode() for i in range(30)}
    items = [(own if i != 7 else "svc-any@corp.example", ["bob@partner.example"], bodies[i]) for i in range(30)]
    with mx.connect(config) as session:
        assert session.has_extn("CHUNKING") and session.has_extn("PIPELINING")
        result = session.send_many(items)
        sent_verbs = [t.split()[0] for _, d, t in session.transcript if d == "C"]
    assert [i for i, _ in result.failed] == [7]
    assert isinstance(result[7], mx.SenderRefused) and result[7].code == 553
    assert sent_verbs.count("BDAT") == 30 and "DATA" not in sent_verbs
    for i in range(30):
        if i != 7:
            delivered_copy(postfix, f"bulk-pf-{i:02d}".encode(), bodies[i] + b"\r\n")


def test_send_many_streams_a_file_body_through_postfix(postfix, tmp_path):
    path = tmp_path / "big.eml"
    path.write_bytes(b"Subject: bulk-pf-file\r\n\r\n" + b"".join(b".%06d line of a file body\r\n" % i
                                                                  for i in range(100_000)))
    with mx.connect(cfg(postfix, "submission")) as session, open(path, "rb") as f:
        res = session.send(f, envelope_from="svc-domain@corp.example", recipients=["bob@partner.example"])
    assert res.ok
    delivered_copy(postfix, b"bulk-pf-file", path.read_bytes())
