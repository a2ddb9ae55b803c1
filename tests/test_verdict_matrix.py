"""The rule of test_connector, measured: for every server set-up x account x
sender of the emulator, whatever the report says of an address is what
send_as then does.  "allowed" means send_as is accepted; "refused at STAGE"
means send_as is refused at that stage.  Undecided answers
(not_known_until_deep, inconclusive) are counted, never taken as allowed."""
from __future__ import annotations

import pytest
from support import agreement

import mailexpress as mx
from mailexpress.testing import ConnectorEmulator, User

# set-ups whose account authenticates (the others never reach the sender probes)
SETUPS = ("exchange_client", "authoritative_only", "no_impersonation", "refuse_at_rcpt", "send_as_missing",
          "exchange_online")
RIGHTS = ("self", "authoritative_domain", "any")
ALICE, PARTNER = "alice@corp.example", "ceo@partner.example"


def _report_and_agreement(setup: str, rights: str, deep: bool) -> tuple[mx.ConnectorReport, list]:
    user = User("svc-mailer", "matrix-Passw0rd!", "svc-mailer@corp.example", rights=rights, send_as=())
    overrides = {"basic_auth": "enabled"} if setup == "exchange_online" else {}
    em = ConnectorEmulator.preset(setup, users=[user], **overrides).start()
    try:
        cfg = em.config(username="svc-mailer", password=user.password, from_address=user.address)
        report = mx.test_connector(cfg, deep=deep, senders=[ALICE, PARTNER])
        assert report.check("auth").status == "pass", str(report)
        return report, agreement(cfg, report)
    finally:
        em.stop()


@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize("rights", RIGHTS)
@pytest.mark.parametrize("setup", SETUPS)
def test_every_decided_verdict_is_what_send_as_does(setup, rights, deep):
    report, rows = _report_and_agreement(setup, rights, deep)
    wrong = [r for r in rows if not r[3]]
    assert not wrong, f"{wrong}\n{report}"
    if deep:
        # deep decides every address accepted at the envelope: nothing is left for later
        assert all(p.send_as in ("allowed", "refused") for p in report.senders), str(report)
    else:
        assert all(p.send_as != "allowed" or p.kind == "self" or setup != "exchange_online"
                   for p in report.senders), "Exchange Online decides at end of data: never allowed before deep"


def test_a_clean_report_means_send_as_works():
    """report.ok (required: everything but the optional rights) implies that
    send_as(cfg) with the configured from_address goes through, on every set-up."""
    for setup in SETUPS:
        for rights in RIGHTS:
            report, rows = _report_and_agreement(setup, rights, deep=False)
            if report.ok:
                own = [r for r in rows if r[0] == "svc-mailer@corp.example"]
                assert own and own[0][2] == "allowed", (setup, rights, str(report))


def test_from_address_that_is_not_the_mailbox_on_exchange_online():
    """from_address an alias of nothing the mailbox owns: Exchange Online
    accepts it at MAIL and refuses at end of data.  Without deep the report
    cannot be clean (send_as_self is required and not known); with deep it
    names the stage and the header check, and send_as agrees."""
    em = ConnectorEmulator.preset("exchange_online", basic_auth="enabled").start()
    try:
        user = next(iter(em.users.values()))
        cfg = em.config(username=user.address, password=user.password, from_address="noreply@corp.example")
        shallow = mx.test_connector(cfg)
        assert shallow.check("send_as_self").status == "unknown" and not shallow.ok, str(shallow)
        deep = mx.test_connector(cfg, deep=True)
        probe = deep.sender("noreply@corp.example")
        assert (probe.send_as, probe.stage, probe.refused_by) == ("refused", "END_OF_DATA", "header"), str(deep)
        assert probe.reply.enhanced == "5.7.60" and deep.check("send_as_self").status == "fail"
        assert "Add-RecipientPermission" in deep.check("send_as_self").advice
        assert all(r[3] for r in agreement(cfg, deep))
    finally:
        em.stop()
