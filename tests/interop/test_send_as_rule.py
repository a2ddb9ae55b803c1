"""The rule of test_connector against a real Postfix (harness.py): what the
report says of an address is what send_as then does, including a Postfix
whose sender check sits in smtpd_end_of_data_restrictions (it accepts every
MAIL FROM and refuses at end of data, as Exchange Online does)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
from harness import ACCOUNTS
from scenarios import cfg

import mailexpress as mx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import agreement  # noqa: E402

OTHER = "svc-any@corp.example"       # owned by svc-any only


def test_end_of_data_check_is_not_known_until_deep(postfix):
    report = mx.test_connector(cfg(postfix, "submission_eod", login="svc-self"))
    answers = {s.kind: s.send_as for s in report.senders}
    assert answers == {"self": "allowed", "authoritative_domain": "not_known_until_deep",
                       "external": "not_known_until_deep"}, str(report)
    assert {s.kind: s.verdict for s in report.senders}["external"] == "allowed"     # MAIL and RCPT said yes
    assert report.check("accept_any_sender").status == "unknown"
    assert "not known until deep" in report.check("accept_any_sender").summary
    assert report.ok            # the optional rights are undecided; the account's own address is fine


def test_end_of_data_check_deep_names_the_stage_and_the_envelope_check(postfix):
    config = cfg(postfix, "submission_eod", login="svc-self", probe_authoritative_sender=OTHER)
    report = mx.test_connector(config, deep=True, require=["accept_authoritative_domain_sender"])
    probe = report.sender(OTHER)
    assert probe.send_as == "refused" and probe.stage == "END_OF_DATA" and probe.refused_by == "envelope", \
        str(report)
    assert probe.reply.code == 553 and "not owned by user svc-self" in probe.reply.text
    assert probe.header_verdict == "allowed"        # own MAIL FROM + this From: accepted, so not the header
    check = report.check("accept_authoritative_domain_sender")
    assert check.status == "fail" and "envelope sender check" in check.summary
    assert "smtpd_end_of_data_restrictions" in check.advice
    assert not report.ok
    # and send_as is refused exactly there
    with pytest.raises(mx.DataRefused) as info:
        mx.send_as(config, OTHER, to=config.from_address, subject="t", body="t\n")
    assert info.value.code == 553 and info.value.stage is mx.Stage.END_OF_DATA


SERVICES = ("submission", "submission_rcpt", "submission_eod")


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("login", list(ACCOUNTS))
def test_verdict_matrix_on_real_postfix(postfix, login, service, deep):
    config = cfg(postfix, service, login=login)
    report = mx.test_connector(config, deep=deep, senders=[OTHER, "ceo@partner.example"])
    rows = agreement(config, report)
    assert rows and all(r[3] for r in rows), f"{rows}\n{report}"
    if deep:
        assert all(p.send_as in ("allowed", "refused") for p in report.senders), str(report)


def test_one_connection_per_client(postfix):
    """A server that takes one connection per client: the diagnosis never
    holds two at once (the deep probes follow the closed probing session),
    and a connection turned away with 421 is undecided, not a blocked client."""
    config = cfg(postfix, "submission_one", login="svc-domain")
    report = mx.test_connector(config, deep=True)
    assert all(p.send_as in ("allowed", "refused") for p in report.senders), str(report)
    assert report.ok, str(report)
    rows = agreement(config, report)
    assert rows and all(r[3] for r in rows), rows
    with mx.connect(config):            # hold the one connection the server allows
        busy = mx.test_connector(config)
    banner = busy.check("banner")
    assert banner.status == "unknown" and "421" in banner.summary and "blocked" not in (banner.advice or ""), \
        str(busy)
    assert not busy.ok and busy.check("auth").status == "skip"
