"""mx.send_many against a throttling connector (the emulator's knobs, with
Exchange's replies): limits, pushback, outcomes on every exception, the journal."""
from __future__ import annotations

import _thread
import logging
import threading
import time

import pytest
from support import SVC

import mailexpress as mx
from mailexpress.journal import Journal


def config(em):
    return em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)


def notices(n, **extra):
    return [{"to": "bob@partner.example", "subject": f"notice {i}", "body": f"body {i}", **extra}
            for i in range(n)]


def subjects(em):
    return [m.message["Subject"] for m in em.messages]


# -- the server's pushback ---------------------------------------------------------------

def test_452_at_mail_reconnects_without_failures(emulator_factory):
    em = emulator_factory(max_messages_per_connection=3, connection_limit_reply="452")
    result = mx.send_many(config(em), notices(10), reconnects=0)
    assert result.ok and len(result.sent) == 10 and result.connections == 4
    assert subjects(em) == [f"notice {i}" for i in range(10)]
    assert result.learned and "every 3 messages" in result.learned[0]


def test_rate_limit_backs_off_and_sends_each_message_once(emulator_factory):
    em = emulator_factory(messages_per_minute=600)     # 10 a second, a burst of 10
    result = mx.send_many(config(em), notices(25), retries=30, max_wait=0.4, batch_size=100)
    assert result.ok and len(result.sent) == 25
    assert subjects(em) == [f"notice {i}" for i in range(25)]
    assert em.throttle_log and "throttled" in str(result)


def test_rate_limit_beyond_the_retries_ends_the_run_not_sent(emulator_factory):
    em = emulator_factory(messages_per_minute=60)       # one a second, a burst of one
    result = mx.send_many(config(em), notices(5), retries=0)
    assert len(result.sent) == 1 and len(em.messages) == 1
    for _i, err in result.failed:
        assert err.delivered is False and err.retry_safe
        assert "4.4.2" in str(err)


def test_concurrency_at_the_greeting_is_waited_out(emulator_factory):
    em = emulator_factory(connections_per_client=1)
    holder = mx.connect(config(em))                  # another client holds the only slot
    threading.Timer(0.6, holder.close_quietly).start()
    result = mx.send_many(config(em), notices(3), retries=10, max_wait=0.3)
    assert result.ok and len(em.messages) == 3
    assert em.throttle_log[0].startswith("421 4.3.2")


def test_a_refused_connection_after_the_retries_is_an_outcome_per_message(emulator_factory):
    em = emulator_factory(connections_per_client=1)
    with mx.connect(config(em)):
        result = mx.send_many(config(em), notices(4), retries=1, max_wait=0.1)
    assert len(result) == 4 and not result.sent and em.messages == []
    for _i, err in result.failed:
        assert err.delivered is False and err.retry_safe and "4.3.2" in str(err)


def test_a_quota_ends_the_run_and_says_so(emulator_factory):
    em = emulator_factory(recipients_per_day=5)
    result = mx.send_many(config(em), notices(8), batch_size=2)
    assert len(result.sent) == 5 and len(em.messages) == 5
    quota = result[5]               # refused by the server (in the batch of the 5th)
    assert isinstance(quota, mx.Error) and quota.code == 554 and quota.delivered is False
    for i in (6, 7):                # never sent: the run ended
        assert result[i].delivered is False and "not sent: the server's quota" in str(result[i])
    assert any("recipients_per_day" in x for x in result.learned)


# -- limits ------------------------------------------------------------------------------

def test_too_many_recipients_is_refused_before_sending(emulator_factory):
    em = emulator_factory()
    msgs = notices(2) + [{"to": ["a@partner.example", "b@partner.example", "c@partner.example"],
                          "subject": "three"}]
    result = mx.send_many(config(em), msgs, limits={"recipients_per_message": 2})
    assert isinstance(result[2], mx.InputError) and "recipients_per_message" in str(result[2])
    assert subjects(em) == ["notice 0", "notice 1"]


def test_recipients_per_day_stops_before_exceeding(emulator_factory):
    em = emulator_factory()
    result = mx.send_many(config(em), notices(5), limits=mx.Limits(recipients_per_day=3))
    assert len(result.sent) == 3 and len(em.messages) == 3
    assert all("recipients_per_day" in str(e) and e.delivered is False for _i, e in result.failed)


def test_messages_per_connection_reconnects_before_the_server_says_so(emulator_factory):
    em = emulator_factory(max_messages_per_connection=2)
    result = mx.send_many(config(em), notices(5), limits="exchange_default_frontend")
    assert result.ok and len(em.messages) == 5
    result = mx.send_many(config(em), notices(5), limits={"messages_per_connection": 2})
    assert result.ok and result.connections == 3 and result.learned == ()


def test_limits_from_the_config(emulator_factory):
    em = emulator_factory()
    cfg = config(em).replace(limits={"recipients_per_message": 1})
    result = mx.send_many(cfg, [{"to": ["a@partner.example", "b@partner.example"]}])
    assert isinstance(result[0], mx.InputError) and em.messages == []


def test_pacing_keeps_under_the_servers_rate(emulator_factory):
    em = emulator_factory(messages_per_minute=600)     # a burst of 10, then 10 a second
    result = mx.send_many(config(em), notices(16), limits={"messages_per_minute": 600})
    assert result.ok and em.throttle_log == []
    # the same run unpaced is throttled: the pacing is what kept it under
    em2 = emulator_factory(messages_per_minute=600)
    mx.send_many(config(em2), notices(16), retries=0)
    assert em2.throttle_log


# -- outcomes on every exception ---------------------------------------------------------

def test_a_progress_callback_that_raises_gets_the_outcomes(emulator_factory):
    em = emulator_factory()
    source = iter(notices(10))

    def progress(p):
        if p.done >= 2:
            raise ValueError("stop here")

    with pytest.raises(ValueError) as info:
        mx.send_many(config(em), source, batch_size=2, progress=progress)
    result = info.value.result
    sent = len(result.sent)
    assert sent == len(em.messages) >= 2
    assert all(e.delivered is False and e.retry_safe for _i, e in result.failed)
    # the unread rest of the input is left unread
    assert len(result) + len(list(source)) == 10


@pytest.mark.parametrize("connections", [1, 3])
def test_ctrl_c_mid_run_is_honoured_within_a_second(emulator_factory, connections):
    em = emulator_factory()
    timer = threading.Timer(1.2, _thread.interrupt_main)
    timer.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as info:
        mx.send_many(config(em), notices(100), limits={"messages_per_minute": 120},
                     connections=connections)
    waited = time.monotonic() - started - 1.2
    assert waited < 1.0
    result = info.value.result
    assert len(result.sent) == len(em.messages) >= 2
    for _i, e in result.failed:
        assert e.delivered in (False, None)


def test_logging_refusals_at_info_one_warning_at_the_end(emulator_factory, caplog):
    em = emulator_factory(unknown_recipients=["gone@partner.example"])
    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("mailexpress").handlers)
    with caplog.at_level(logging.INFO, logger="mailexpress"):
        mx.send_many(config(em), notices(3) + [{"to": "gone@partner.example", "subject": "x"}])
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "1 of 4 messages not delivered" in warnings[0].getMessage()
    assert any(r.levelno == logging.INFO and "message 3 not sent: RecipientsRefused" in r.getMessage()
               for r in caplog.records)


# -- the journal -------------------------------------------------------------------------

def test_a_rerun_with_the_journal_sends_only_what_is_not_sent(emulator_factory, tmp_path):
    em = emulator_factory(recipients_per_day=3)
    path = tmp_path / "run.sqlite"
    msgs = [dict(m, id=f"n{i}") for i, m in enumerate(notices(5))]
    first = mx.send_many(config(em), msgs, journal=str(path))
    assert len(first.sent) == 3
    em.recipients_per_day = None            # the next day
    second = mx.send_many(config(em), msgs, journal=str(path))
    assert second.ok and len(second) == 5
    assert subjects(em) == [f"notice {i}" for i in range(5)]     # none twice
    assert [r.message_id for r in second.sent[:3]] == [r.message_id for r in first.sent]


def test_unknown_ones_are_listed_not_resent_unless_asked(emulator_factory, tmp_path):
    em = emulator_factory()
    path = str(tmp_path / "run.sqlite")
    with Journal(path) as j:
        j.mark_wire(["n1"])                 # a run killed with n1 on the wire
    msgs = [dict(m, id=f"n{i}") for i, m in enumerate(notices(3))]
    result = mx.send_many(config(em), msgs, journal=path)
    assert subjects(em) == ["notice 0", "notice 2"]
    assert [i for i, _e in result.unknown] == [1] and result[1].delivered is None
    result = mx.send_many(config(em), msgs, journal=path, resend_unknown=True)
    assert subjects(em) == ["notice 0", "notice 2", "notice 1"] and result.ok


# -- parallel sessions -------------------------------------------------------------------

def test_parallel_sessions_keep_the_input_order(emulator_factory):
    em = emulator_factory()
    result = mx.send_many(config(em), notices(300), connections=4, batch_size=10)
    assert result.ok and result.connections == 4 and em.peak_connections == 4
    assert sorted(subjects(em)) == sorted(f"notice {i}" for i in range(300))   # each once
    by_id = {m.message["Message-ID"]: m.message["Subject"] for m in em.messages}
    assert [by_id[r.message_id] for r in result] == [f"notice {i}" for i in range(300)]


def test_parallel_sessions_capped_by_the_limits_and_by_the_server(emulator_factory):
    em = emulator_factory()
    mx.send_many(config(em), notices(40), connections=4, batch_size=5, limits={"connections": 2})
    assert em.peak_connections == 2
    em = emulator_factory(connections_per_client=2)
    result = mx.send_many(config(em), notices(40), connections=4, batch_size=5)
    assert result.ok and len(em.messages) == 40 and em.peak_connections == 2
    assert any("connections=2" in x for x in result.learned), result.learned


def test_parallel_sessions_share_one_token(emulator_factory):
    from mailexpress.testing.emulator import User
    mailbox = "sender@corp.example"
    em = emulator_factory(users=[User("sender", "pw", mailbox, rights="self")],
                          auth_mechanisms=("XOAUTH2",))
    issued = []

    def provider():
        issued.append(em.issue_token(mailbox))
        return issued[-1], time.time() + 3600

    cfg = em.config(username=mailbox, password=None, from_address=mailbox, token_provider=provider)
    result = mx.send_many(cfg, notices(60), connections=3, batch_size=5)
    assert result.ok and result.connections == 3 and em.peak_connections == 3
    assert len(issued) == 1


def test_a_failing_session_among_several_loses_nothing(emulator_factory):
    em = emulator_factory(max_messages_per_connection=7)
    result = mx.send_many(config(em), notices(100), connections=3, batch_size=4, reconnects=0)
    assert result.ok and len(em.messages) == 100
    assert sorted(subjects(em)) == sorted(f"notice {i}" for i in range(100))


# -- duplicate keys in the input ---------------------------------------------------------

def with_ids(*ids):
    return [{"id": ident, "to": "bob@partner.example", "subject": f"notice {n}", "body": f"body {n}"}
            for n, ident in enumerate(ids)]


@pytest.mark.parametrize("journaled", [False, True])
def test_a_repeated_id_is_its_own_outcome_and_the_run_goes_on(emulator_factory, tmp_path, journaled):
    em = emulator_factory()
    journal = str(tmp_path / "run.sqlite") if journaled else None
    result = mx.send_many(config(em), with_ids("a", "b", "a", "c"), journal=journal)
    assert len(result) == 4 and len(result.sent) == 3
    dup = result[2]
    assert isinstance(dup, mx.DuplicateMessage) and isinstance(dup, mx.InputError)
    assert (dup.key, dup.index, dup.first) == ("a", 2, 0) and dup.delivered is False
    assert "'a'" in str(dup) and "#2" in str(dup) and "#0" in str(dup) and "unique id" in str(dup)
    assert subjects(em) == ["notice 0", "notice 1", "notice 3"]     # neither dropped silently nor twice
    if journaled:
        # the rerun: the first "a" comes back from the journal, the repeat is reported again
        again = mx.send_many(config(em), with_ids("a", "b", "a", "c"), journal=journal)
        assert isinstance(again[2], mx.DuplicateMessage) and again[0].message_id == result[0].message_id
        assert len(em.messages) == 3
        with Journal(journal) as j:
            assert j.counts() == {"sent": 3}


def test_repeats_are_found_across_batches_and_sessions(emulator_factory, tmp_path):
    em = emulator_factory()
    ids = [f"m{n}" for n in range(40)] + ["m3", "m39", "m0"]
    result = mx.send_many(config(em), with_ids(*ids), journal=str(tmp_path / "j.sqlite"),
                          batch_size=3, connections=2)
    assert [(e.index, e.first) for _i, e in result.failed] == [(40, 3), (41, 39), (42, 0)]
    assert len(em.messages) == 40 and len(set(subjects(em))) == 40


def test_identical_messages_without_ids(emulator_factory, tmp_path):
    em = emulator_factory()
    same = notices(1) * 2 + notices(2)[1:]
    # without a journal nothing keys them: both go, as send_as twice would
    assert mx.send_many(config(em), same).ok and len(em.messages) == 3
    # with one, the journal keys them by their content and could not tell them apart
    result = mx.send_many(config(em), same, journal=str(tmp_path / "j.sqlite"))
    assert isinstance(result[1], mx.DuplicateMessage) and result[1].first == 0
    assert "identical to message #0" in str(result[1]) and "unique id" in str(result[1])
    assert len(result.sent) == 2 and len(em.messages) == 5


def test_the_set_of_seen_ids_costs_bytes_not_objects():
    from mailexpress.seen import SeenKeys

    seen = SeenKeys()
    n = 100_000
    seen.add_many([f"invoice-{i}" for i in range(n)], list(range(n)))
    assert seen.nbytes() / n <= 24 * 2      # a million messages: under 50 MB, not the ids' size


# -- recipients_per_day across runs ------------------------------------------------------

def test_recipients_per_day_counts_earlier_runs_from_the_journal(emulator_factory, tmp_path):
    import sqlite3

    em = emulator_factory()
    path = str(tmp_path / "run.sqlite")
    limits = {"recipients_per_day": 5}
    first = mx.send_many(config(em), with_ids("a", "b", "c"), journal=path, limits=limits)
    assert first.ok and len(em.messages) == 3
    two = [{"id": "d", "to": ["bob@partner.example", "carol@partner.example"], "subject": "d"},
           {"id": "e", "to": "bob@partner.example", "subject": "e"}]
    second = mx.send_many(config(em), two, journal=path, limits=limits)      # the same day
    assert len(second.sent) == 1 and len(em.messages) == 4
    err = second[1]
    assert isinstance(err, mx.Error) and err.delivered is False and err.retry_safe
    assert "recipients_per_day (5)" in str(err) and "3 recipient(s) in the 24 hours before this run" in str(err)
    assert "24-hour window at" in str(err)
    connections = em.connections
    third = mx.send_many(config(em), two[1:], journal=path, limits=limits)
    assert isinstance(third[0], mx.Error) and "recipients_per_day" in str(third[0])
    assert len(em.messages) == 4
    assert em.connections == connections            # the day was used up: not even a connection
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE messages SET sent_at = sent_at - 86400")          # the next day
    db.close()
    fourth = mx.send_many(config(em), two, journal=path, limits=limits)
    assert fourth.ok and len(em.messages) == 5 and subjects(em)[-1] == "e"


def test_recipients_per_day_without_a_journal_counts_this_run(emulator_factory):
    em = emulator_factory()
    for _ in range(2):
        result = mx.send_many(config(em), notices(4), limits={"recipients_per_day": 3})
        assert len(result.sent) == 3
        assert "counted in this run: give a journal" in str(result[3])
    assert len(em.messages) == 6
