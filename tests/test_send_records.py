"""The bulk path's form of the engine's outcomes: `Session._send_records`
makes a sent message's `results.record` in C (no per-message dicts, equal
replies one object); every other outcome is `send_many_raw`'s.  Checked
against `send_many_raw` and `results.record` on the same messages."""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle

import pytest
from fakeserver import greet
from support import SVC, plain_session

import mailexpress as mx
from mailexpress import _core, mime
from mailexpress.batches import send_prepared
from mailexpress.compose import Prepared
from mailexpress.errors import InputError, StateError
from mailexpress.reply import Reply
from mailexpress.results import record

OTHER = "someone@elsewhere.example"     # SVC may not send as this one
BAD = "nobody@corp.example"             # refused by the emulator


def raw(i: int) -> bytes:
    return f"From: {SVC.address}\r\nTo: bob@partner.example\r\nSubject: n{i}\r\n\r\nbody {i}\r\n".encode()


def batch() -> list[Prepared]:
    p = [Prepared(SVC.address, ["bob@partner.example"], raw(i), f"<m{i}@x.example>") for i in range(8)]
    p[2] = Prepared(OTHER, ["bob@partner.example"], raw(2), "<m2@x.example>")           # sender refused
    p[4] = Prepared(SVC.address, ["bob@partner.example", BAD], raw(4), "<m4@x.example>")  # one refused
    p[5] = Prepared(SVC.address, [BAD], raw(5), None)                                     # all refused
    p[6] = Prepared(SVC.address, ["a@partner.example", "b@partner.example"], raw(6), None)
    return p


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
def test_records_are_what_record_makes_of_send_many_raw(emulator_factory, chunking):
    em = emulator_factory(chunking=chunking, unknown_recipients=[BAD])
    cfg = em.config(username=SVC.username, password=SVC.password)
    items = batch()
    with mx.connect(cfg) as s:
        plain = _core.Session.send_many_raw(s, [(p[0], p[1], p[2]) for p in items])
    with mx.connect(cfg) as s:
        recs = _core.Session._send_records(s, items)
        assert s.state == "READY"
    assert len(recs) == len(plain) == len(items)
    for p, a, b in zip(items, plain, recs):
        if isinstance(a, BaseException):
            assert type(b) is type(a) and str(b) == str(a)
            assert (b.delivered, b.retry_safe, b.stage, b.reply) == \
                (a.delivered, a.retry_safe, a.stage, a.reply)
            continue
        refused, reply = a
        want = record(p[0], p[1], p[3], refused, reply, 0)
        # the emulator's final reply names the message's queue id: the rest is equal
        assert type(b) is tuple and b[:3] == want[:3] and b[4] == want[4]
        assert (b[3].code, b[3].enhanced, b[3].stage) == (reply.code, reply.enhanced, reply.stage)
        assert b[3].text.endswith("Queued mail for delivery")
        assert isinstance(b[5], int) and b[5] >= 0
    assert isinstance(recs[2], mx.SenderRefused) and isinstance(recs[5], mx.RecipientsRefused)
    assert recs[4][1] == ("bob@partner.example", BAD) and list(recs[4][4]) == [BAD]
    assert recs[4][4][BAD].code == 550
    assert recs[6][1] == ("a@partner.example", "b@partner.example") and recs[6][4] is None
    assert recs[0][1] == "bob@partner.example" and recs[0][2] == "<m0@x.example>"
    # one sender object for the batch's equal ones; one elapsed; a reply each
    sent = [r for r in recs if type(r) is tuple]
    assert len({id(r[0]) for r in sent}) == 1 and len({r[5] for r in sent}) == 1
    assert len({r[3].text for r in sent}) == len(sent)
    assert len(em.messages) == 2 * 6


def test_distinct_replies_stay_distinct(fake_server):
    def script(conn):
        greet(conn, [b"PIPELINING"])
        for i in range(3):
            conn.expect(b"MAIL FROM"), conn.expect(b"RCPT TO"), conn.expect(b"DATA")
            conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
            conn.read_data()
            conn.send(b"250 2.0.0 queued as Q%d\r\n" % (i // 2))
        conn.expect(b"QUIT")
        conn.send(b"221 bye\r\n")
    srv = fake_server(script)
    s = plain_session(srv.port)
    s.connect()
    s.ehlo()
    recs = _core.Session._send_records(s, [Prepared("a@x.example", ["b@y.example"], b"m", None)] * 3)
    s.quit()
    srv.check()
    texts = [r[3].text for r in recs]
    assert texts == ["2.0.0 queued as Q0", "2.0.0 queued as Q0", "2.0.0 queued as Q1"]
    assert recs[0][3] is recs[1][3] and recs[1][3] is not recs[2][3]
    assert recs[0][3].enhanced == "2.0.0" and recs[0][3].stage is mx.Stage.END_OF_DATA
    # made in C without Reply.__new__: still the value Reply() makes, frozen, picklable
    made = recs[2][3]
    assert made == Reply(250, "2.0.0", ("2.0.0 queued as Q1",), "END_OF_DATA")
    assert hash(made) == hash(Reply(250, "2.0.0", ("2.0.0 queued as Q1",), "END_OF_DATA"))
    assert type(made) is Reply and pickle.loads(pickle.dumps(made)) == made
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.code = 1      # type: ignore[misc]


def test_unbuilt_messages_are_kept_and_stop_on_error_ends_the_batch(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    unbuilt = InputError("no recipients")
    items: list = [Prepared(SVC.address, ["bob@partner.example"], raw(i), None) for i in range(4)]
    items[1] = unbuilt
    with mx.connect(cfg) as s:
        got = _core.Session._send_records(s, items)
        assert got[1] is unbuilt and unbuilt.delivered is False
        assert [type(o) for o in got] == [tuple, InputError, tuple, tuple]
        assert len(em.messages) == 3
        # stop_on_error: the list ends with the first unbuilt one, nothing after it is sent
        got = _core.Session._send_records(s, items, True)
        assert len(got) == 2 and got[1] is unbuilt and len(em.messages) == 4
        # send_prepared pads what the engine did not take
        kept = send_prepared(s, items, True)
        assert len(kept) == 4 and isinstance(kept[2], StateError) and kept[3].retry_safe
        assert kept[3].delivered is False and len(em.messages) == 5


def test_bad_input_and_unreadable_files(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    r, w = os.pipe()
    os.close(w)
    with mx.connect(cfg) as s, os.fdopen(r, "rb", buffering=0) as pipe:
        with pytest.raises(TypeError):
            _core.Session._send_records(s, 42)     # type: ignore[arg-type]
        bad = _core.Session._send_records(s, [("a@x.example",)])
        assert len(bad) == 1 and isinstance(bad[0], TypeError) and "prepared" in str(bad[0])
        got = send_prepared(s, [Prepared(SVC.address, ["bob@partner.example"], raw(0), None),
                                Prepared(SVC.address, ["bob@partner.example"], pipe, None),
                                Prepared(SVC.address, [], raw(2), None),
                                ("too short",),
                                Prepared(SVC.address, ["bob@partner.example"], "text, not bytes", None)],
                            False)
    assert type(got[0]) is tuple
    assert isinstance(got[1], InputError) and isinstance(got[1].__cause__, TypeError)
    assert "seekable" in str(got[1]) and got[1].delivered is False
    assert isinstance(got[2], InputError) and "no recipients" in str(got[2])
    assert isinstance(got[3], InputError) and isinstance(got[3].__cause__, TypeError)
    assert isinstance(got[4], InputError) and "encode it first" in str(got[4])
    assert len(em.messages) == 1


def test_records_are_logged_as_record_logs_them(emulator_factory, caplog):
    em = emulator_factory(unknown_recipients=[BAD])
    cfg = em.config(username=SVC.username, password=SVC.password)
    with mx.connect(cfg) as s, caplog.at_level(logging.INFO, logger="mailexpress"):
        send_prepared(s, [Prepared(SVC.address, ["bob@partner.example", BAD], raw(0), "<m@x>")],
                      False)
    text = caplog.text
    assert "message <m@x>: 1 of 2 recipients refused" in text
    assert "message <m@x> accepted from " + SVC.address + " for 1 recipient(s)" in text


def test_a_session_run_keeps_its_outcomes_compact_across_batches(emulator_factory):
    """Session.send_many keeps its outcomes in columns batch by batch: equal
    senders of different batches are one entry (and one object when read),
    and the emulator's replies, which differ per message, come back equal."""
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    senders = ["".join(list(SVC.address)) for _ in range(7)]
    assert senders[0] == senders[1] and senders[0] is not senders[1]
    mids = [mime.make_message_id("corp.example") for _ in range(7)]
    items = [(senders[i], ["bob@partner.example"], f"Message-ID: {mids[i]}\r\n".encode() + raw(i))
             for i in range(7)]
    with mx.connect(cfg) as s:
        res = s.send_many(items, batch_size=2)
    assert res.ok and len(res) == 7
    store = res._items
    assert not store.objects() and store._tables[0] == [SVC.address]
    assert res[0].envelope_from is res[6].envelope_from == SVC.address
    assert len({r.reply for r in res}) == 7
    assert [r.message_id for r in res] == mids


def test_a_batch_of_unbuilt_messages_does_not_need_the_session(emulator_factory):
    """As send_prepared did before the engine made records: nothing to send,
    no session call (a closed one here), the errors are the outcomes."""
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    s = mx.connect(cfg)
    s.close()
    errs = [InputError("a"), InputError("b")]
    assert _core.Session._send_records(s, errs) == errs
    assert all(e.delivered is False for e in errs)
    assert _core.Session._send_records(s, errs, True) == errs[:1]
    kept = send_prepared(s, errs, True)
    assert kept[0] is errs[0] and isinstance(kept[1], StateError) and kept[1].retry_safe
    with pytest.raises(mx.StateError):      # one message to send: the session is needed
        _core.Session._send_records(s, [*errs, Prepared(SVC.address, ["bob@partner.example"], raw(0), None)])
