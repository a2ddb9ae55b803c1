"""Against a real Exim 4: other wording, no enhanced status codes."""
from __future__ import annotations

import pytest
from scenarios import collect_exim, exim_cfg

import mailexpress as mx


def test_send_as_is_delivered_byte_exact(exim):
    raw = (b"From: svc-domain@corp.example\r\nSubject: exim-1\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\n"
           b"Message-ID: <exim-1@corp.example>\r\n\r\n.leading dot\r\n..two\r\n.\r\nno final newline")
    mx.send_as(exim_cfg(exim), "svc-domain@corp.example", to="bob@partner.example", message=raw)
    got = exim.wait_for(b"exim-1").data
    assert got.endswith((raw + b"\r\n").replace(b"\r\n", b"\n"))


def test_wrong_password_without_enhanced_code(exim):
    with pytest.raises(mx.AuthError) as info:
        mx.connect(exim_cfg(exim, password="not-it"))
    assert info.value.code == 535 and info.value.enhanced is None


EXPECTED = {
    "svc-any": {"self": "allowed", "authoritative_domain": "allowed", "external": "allowed"},
    "svc-domain": {"self": "allowed", "authoritative_domain": "allowed", "external": "refused_at_mail"},
    "svc-self": {"self": "allowed", "authoritative_domain": "refused_at_mail", "external": "refused_at_mail"},
}


@pytest.mark.parametrize("login", list(EXPECTED))
def test_connector_verdicts_from_stage_and_class_alone(exim, login):
    report = mx.test_connector(exim_cfg(exim, login=login))
    assert {s.kind: s.verdict for s in report.senders} == EXPECTED[login], str(report)
    for s in report.senders:
        if s.verdict != "allowed":
            assert s.reply.enhanced is None          # Exim says no 5.7.x: classified anyway
    checks = {c.id: c.status for c in report.checks}
    assert checks["tls"] == checks["auth"] == checks["anonymous_refused"] == checks["auth_requires_tls"] == "pass"
    assert report.server["family"] == "exim"


def test_reply_rows_match_the_docs(exim):
    from gen_interop_table import table_in_doc
    from scenarios import markdown
    ours = markdown(collect_exim(exim)).splitlines()[2:]
    documented = [line for line in table_in_doc().splitlines() if line.startswith("| Exim")]
    assert ours == documented, "Exim answers differently now: run python docs/gen_interop_table.py"


def test_send_many_through_exim(exim):
    """Exim 4.96 offers CHUNKING and PIPELINING too; its BDAT answer is
    two-line.  Ten messages, byte-exact."""
    bodies = [(f"From: svc-domain@corp.example\r\nSubject: exim-bulk-{i}\r\n\r\n.x {i}\r\n").encode()
              for i in range(10)]
    with mx.connect(exim_cfg(exim)) as session:
        result = session.send_many([("svc-domain@corp.example", ["bob@partner.example"], b) for b in bodies])
    assert result.ok and len(result.sent) == 10
    for i, b in enumerate(bodies):
        assert exim.wait_for(f"exim-bulk-{i}".encode()).data.endswith(b.replace(b"\r\n", b"\n"))
