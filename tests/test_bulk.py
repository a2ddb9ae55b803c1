"""Bulk sending: Session.send_many, mx.send_many, BDAT, file bodies, and the
pipelined engine's bookkeeping when things go wrong half-way."""
from __future__ import annotations

import io
import os
import threading

import pytest
from fakeserver import greet
from support import ANY, SVC, plain_session

import mailexpress as mx

OTHER = "someone@elsewhere.example"     # SVC may not send as this one


def greeted_session(fake_server, script):
    """A fake server running script, and a session that has said EHLO to it."""
    srv = fake_server(script)
    s = plain_session(srv.port)
    s.connect()
    s.ehlo()
    return srv, s


def send_two_and_quit(fake_server, script):
    """Two small messages through send_many to a scripted server, then QUIT."""
    srv, s = greeted_session(fake_server, script)
    result = s.send_many([("a@x.example", ["b@y.example"], b"one"), ("a@x.example", ["b@y.example"], b"two")])
    s.quit()
    srv.check()
    return result


def raw(i: int, sender: str = SVC.address) -> bytes:
    return (f"From: {sender}\r\nTo: bob@partner.example\r\nSubject: n{i}\r\n\r\n"
            f"line\r\n.leading dot {i}\r\nno final newline").encode()


def wire_form(data: bytes) -> bytes:
    """What the server must receive: line ends CRLF, a final CRLF."""
    out = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return out if out.endswith(b"\r\n") else out + b"\r\n"


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_outcomes_in_order_and_bytes_exact(emulator_factory, chunking, pipelining):
    em = emulator_factory(chunking=chunking, pipelining=pipelining, unknown_recipients=["nobody@corp.example"])
    cfg = em.config(username=SVC.username, password=SVC.password)
    items = [(SVC.address, ["bob@partner.example"], raw(i)) for i in range(12)]
    items[3] = (OTHER, ["bob@partner.example"], raw(3, OTHER))            # sender refused
    items[7] = (SVC.address, ["bob@partner.example", "nobody@corp.example"], raw(7))  # one recipient bad
    with mx.connect(cfg) as s:
        result = s.send_many(items)
        assert s.state == "READY"
        verbs = [t for _, d, t in s.transcript if d == "C"]
    assert len(result) == 12
    assert isinstance(result[3], mx.SenderRefused) and result[3].sender == OTHER
    assert result[3].delivered is False and result[3].reply.code == 550
    assert [i for i, _ in result.failed] == [3]
    assert result[7].accepted == ("bob@partner.example",) and list(result[7].refused) == ["nobody@corp.example"]
    assert not result.ok and len(result.sent) == 11
    assert [m.data for m in em.messages] == [wire_form(raw(i)) for i in range(12) if i != 3]
    assert [m.mail_from for m in em.messages] == [SVC.address] * 11
    assert any(v.startswith("BDAT") for v in verbs) == chunking
    assert any(v == "DATA" for v in verbs) == (not chunking)


def test_pipelined_across_messages_one_write_per_message(fake_server):
    """DATA path: the end of message 1 and the envelope of message 2 arrive
    together, before the server has answered message 1's end of data."""
    seen = {}

    def script(conn):
        greet(conn, [b"PIPELINING"])
        for i in range(2):
            conn.expect(b"MAIL FROM")
            conn.expect(b"RCPT TO")
            conn.expect(b"DATA")
            conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
            conn.read_data()
            seen[i] = conn.pending()       # what came with the end of data
            conn.send(b"250 queued\r\n")
        conn.expect(b"QUIT")
        conn.send(b"221 bye\r\n")
    result = send_two_and_quit(fake_server, script)
    assert len(result.sent) == 2
    assert seen[0] == b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n"
    assert seen[1] == b""


def test_bdat_messages_need_no_round_trip_of_their_own(fake_server):
    """CHUNKING + PIPELINING: three whole messages are on the wire before
    the server says a word; each MAIL after a BDAT whose answer is not known
    yet goes behind an RSET (a refused BDAT LAST may leave the transaction
    open)."""
    got = {}

    def script(conn):
        greet(conn, [b"PIPELINING", b"CHUNKING"])
        got["all"] = conn.pending(0.5)
        conn.send(b"250 ok\r\n250 ok\r\n250 queued 1\r\n"
                  + b"250 reset\r\n250 ok\r\n250 ok\r\n250 queued 1\r\n" * 2)
        conn.buf = b""
        conn.expect(b"QUIT")
        conn.send(b"221 bye\r\n")
    srv, s = greeted_session(fake_server, script)
    result = s.send_many([("a@x.example", ["b@y.example"], b"m%d\n" % i) for i in range(3)])
    s.quit()
    srv.check()
    assert [r.reply.text for r in result] == ["queued 1"] * 3
    assert got["all"] == b"RSET\r\n".join(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n"
                                            b"BDAT 4 LAST\r\nm%d\r\n" % i for i in range(3))


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_a_refused_bdat_never_lends_its_transaction_to_the_next_message(emulator_factory, pipelining):
    """Every recipient refused, so BDAT LAST is refused with the sender still
    set (the emulator keeps it, as a server may: the next MAIL would draw
    503 5.5.2 and the next message's recipients and body would join the old
    transaction).  The engine resets first: the next message goes under its
    own sender and is reported as what it is."""
    em = emulator_factory(unknown_recipients=["nobody@corp.example"], pipelining=pipelining)
    cfg = em.config(username=SVC.username, password=SVC.password)
    refused_sender = "reports@corp.example"     # allowed too: only the recipients are refused
    items = [(refused_sender, ["nobody@corp.example"], raw(0, refused_sender)),
             (SVC.address, ["bob@partner.example"], raw(1)),
             (refused_sender, ["nobody@corp.example"], raw(2, refused_sender)),
             (SVC.address, ["bob@partner.example"], raw(3))]
    with mx.connect(cfg) as s:
        result = s.send_many(items)
        sent = [t for _ms, d, t in s.transcript if d == "C"]
    assert isinstance(result[0], mx.RecipientsRefused) and isinstance(result[2], mx.RecipientsRefused)
    assert not isinstance(result[1], mx.Error) and not isinstance(result[3], mx.Error)
    # delivered under their own sender, not the refused message's
    assert [m.mail_from for m in em.messages] == [SVC.address, SVC.address]
    assert [m.data for m in em.messages] == [wire_form(raw(1)), wire_form(raw(3))]
    assert sent.count("RSET") >= 2


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelined", "serial"])
def test_a_refused_bdat_at_the_end_of_a_call_is_reset_before_the_next_call(emulator_factory, pipelining):
    """The same, across calls: the last message of one send_many has its
    BDAT LAST refused with the sender kept; the next call (mx.send_many's
    next batch, or a step mail()) must not join that transaction."""
    em = emulator_factory(unknown_recipients=["nobody@corp.example"], pipelining=pipelining)
    cfg = em.config(username=SVC.username, password=SVC.password)
    refused_sender = "reports@corp.example"
    with mx.connect(cfg) as s:
        first = s.send_many([(refused_sender, ["nobody@corp.example"], raw(0, refused_sender))])
        second = s.send_many([(SVC.address, ["bob@partner.example"], raw(1))])
        third = s.send_many([(refused_sender, ["nobody@corp.example"], raw(2, refused_sender))])
        mail = s.mail(SVC.address)
        rcpt = s.rcpt("bob@partner.example")
        final = s.data(wire_form(raw(3)))
    assert isinstance(first[0], mx.RecipientsRefused) and isinstance(third[0], mx.RecipientsRefused)
    assert not isinstance(second[0], mx.Error), second[0]
    assert mail.code == 250 and rcpt.code == 250 and final.code == 250
    assert [m.mail_from for m in em.messages] == [SVC.address, SVC.address]


def test_stop_on_error_sends_nothing_after_a_refusal(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    items = [(SVC.address, ["bob@partner.example"], raw(i)) for i in range(6)]
    items[2] = (OTHER, ["bob@partner.example"], raw(2, OTHER))
    with mx.connect(cfg) as s:
        result = s.send_many(items, stop_on_error=True, batch_size=4)
    assert len(result) == 6
    assert isinstance(result[2], mx.SenderRefused)
    for later in result[3:]:
        assert isinstance(later, mx.StateError) and later.retry_safe and later.delivered is False
    assert len(em.messages) == 2


def test_session_failure_mid_batch_says_what_may_have_gone(fake_server):
    """The connection drops after message 2's end of data: message 1 was
    accepted, message 2's fate is unknown, message 3 was never sent."""
    def script(conn):
        greet(conn, [b"PIPELINING"])
        conn.expect(b"MAIL FROM"), conn.expect(b"RCPT TO"), conn.expect(b"DATA")
        conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        conn.read_data()
        conn.expect(b"MAIL FROM"), conn.expect(b"RCPT TO"), conn.expect(b"DATA")
        conn.send(b"250 queued\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        conn.read_data()
        conn.close()
    srv, s = greeted_session(fake_server, script)
    result = s.send_many([("a@x.example", ["b@y.example"], b"m%d" % i) for i in range(3)])
    srv.check()
    assert s.state == "ERROR"
    first, second, third = result
    assert first.reply.text == "queued"
    assert isinstance(second, mx.ConnectionLost) and second.delivered is None and not second.retry_safe
    assert second.stage == mx.Stage.END_OF_DATA
    assert isinstance(third, mx.ConnectionLost) and third.delivered is False and third.retry_safe
    assert "safe to send again" in str(third)


def test_421_mid_batch_ends_it(fake_server):
    def script(conn):
        greet(conn, [b"PIPELINING", b"CHUNKING"])
        conn.pending(0.3)
        conn.send(b"250 ok\r\n250 ok\r\n250 queued\r\n421 4.3.2 enough\r\n")
        conn.close()
    srv, s = greeted_session(fake_server, script)
    result = s.send_many([("a@x.example", ["b@y.example"], b"m%d" % i) for i in range(3)])
    assert len(result.sent) == 1
    assert isinstance(result[1], mx.ServiceUnavailable) and result[1].code == 421
    # message 2's and 3's BDAT went out before the 421 was read, but a 421
    # answers in turn and the server closes: neither was taken
    assert result[1].delivered is False and result[1].retry_safe
    assert result[2].delivered is False and result[2].retry_safe


def test_a_3xx_to_bdat_is_a_protocol_error(fake_server):
    def script(conn):
        greet(conn, [b"CHUNKING"])
        conn.expect(b"MAIL FROM")
        conn.send(b"250 ok\r\n")
        conn.expect(b"RCPT TO")
        conn.send(b"250 ok\r\n")
        conn.expect(b"BDAT 3 LAST")
        conn.read_exact(3)
        conn.send(b"354 what\r\n")
        conn.readline()
    srv, s = greeted_session(fake_server, script)
    with pytest.raises(mx.ProtocolError, match="354 reply cannot answer END_OF_DATA"):
        s.send_raw("a@x.example", ["b@y.example"], b"x\r\n")
    assert s.state == "ERROR"


def test_a_large_bdat_body_waits_for_the_recipients(emulator_factory):
    """Above 1 MiB the body is not pipelined blind: all recipients refused
    means no BDAT at all, and RSET closes the transaction."""
    em = emulator_factory(unknown_recipients=["nobody@corp.example"])
    cfg = em.config(username=SVC.username, password=SVC.password)
    body = b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 1200
    with mx.connect(cfg) as s:
        with pytest.raises(mx.RecipientsRefused):
            s.send(body, envelope_from=SVC.address, recipients=["nobody@corp.example"])
        sent = [t for _, d, t in s.transcript if d == "C"]
        assert not any(t.startswith("BDAT") for t in sent) and sent[-1] == "RSET"
        ok = s.send(body, envelope_from=SVC.address, recipients=["bob@partner.example"])
    assert ok.ok and em.messages[0].data == body


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
def test_file_bodies_stream_byte_exact(emulator_factory, tmp_path, chunking):
    em = emulator_factory(chunking=chunking)
    cfg = em.config(username=SVC.username, password=SVC.password)
    data = b"Subject: file\n\n" + b"".join(b".%d dotted line\n" % i for i in range(30000))
    path = tmp_path / "msg.eml"
    path.write_bytes(data)
    with mx.connect(cfg) as s, open(path, "rb") as f:
        f.read(0)
        r1 = s.send(f, envelope_from=SVC.address, recipients=["bob@partner.example"])
        f.seek(0)
        r2 = s.send(f, envelope_from=SVC.address, recipients=["bob@partner.example"])
    assert r1.ok and r2.ok
    assert [m.data for m in em.messages] == [wire_form(data)] * 2
    assert f"SIZE={len(wire_form(data))}" in em.messages[0].mail_options


def test_a_non_seekable_file_is_refused_before_sending(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    r, w = os.pipe()
    os.write(w, b"Subject: x\r\n\r\nbody\r\n")
    os.close(w)
    with mx.connect(cfg) as s, os.fdopen(r, "rb", buffering=0) as pipe:
        with pytest.raises(TypeError, match="seekable"):
            s.send(pipe, envelope_from=SVC.address, recipients=["bob@partner.example"])
        assert s.state == "READY"
    assert em.messages == []


def test_a_file_that_grows_while_sent_is_never_delivered(fake_server):
    """BDAT declares the size; a file that changes after the scan must not
    deliver a different message: the connection is closed mid-chunk."""
    class Growing(io.BytesIO):
        scans = 0

        def seek(self, *a):   # type: ignore[override]
            self.scans += 1
            super().seek(*a)
            if self.scans == 1:       # after the SIZE scan, before sending
                super().write(b"more bytes than declared\r\n" * 3)
                super().seek(0)
            return 0

    def script(conn):
        greet(conn, [b"PIPELINING", b"CHUNKING"])
        conn.pending(0.3)
        conn.close()
    srv, s = greeted_session(fake_server, script)
    with pytest.raises(mx.InputError, match="changed while it was being sent"):
        s.send(Growing(b"Subject: x\r\n\r\nhi\r\n"), envelope_from="a@x.example",
               recipients=["b@y.example"])
    assert s.state == "ERROR"


def test_nul_bytes_go_as_binarymime_or_not_at_all(emulator_factory):
    data = b"Subject: bin\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\x01\r\x00\n\xff"
    em = emulator_factory(chunking=True)
    cfg = em.config(username=SVC.username, password=SVC.password)
    with mx.connect(cfg) as s:
        s.send(data, envelope_from=SVC.address, recipients=["bob@partner.example"])
    assert em.messages[0].data == data            # exactly as given, no CRLF repair
    assert "BODY=BINARYMIME" in em.messages[0].mail_options
    em2 = emulator_factory(chunking=False)
    cfg2 = em2.config(username=SVC.username, password=SVC.password)
    with mx.connect(cfg2) as s:
        with pytest.raises(mx.NotSupportedError, match="NUL bytes"):
            s.send(data, envelope_from=SVC.address, recipients=["bob@partner.example"])
    assert em2.messages == []


def test_bad_items_fail_alone(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    items = [(SVC.address, ["bob@partner.example"], raw(0)),
             (SVC.address, [], raw(1)),
             (SVC.address, ["bad\r\nRCPT TO:<x@y>"], raw(2)),
             "not a message",
             (SVC.address, ["bob@partner.example"], raw(4))]
    with mx.connect(cfg) as s:
        result = s.send_many(items)   # type: ignore[arg-type]
    kinds = [type(o).__name__ for o in result]
    assert kinds == ["SendResult", "InputError", "InputError", "InputError", "SendResult"]
    assert len(em.messages) == 2


def test_progress_callback_counts_and_rate(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    seen: list[mx.Progress] = []
    items = [(SVC.address, ["bob@partner.example"], raw(i)) for i in range(25)]
    items[5] = (OTHER, ["bob@partner.example"], raw(5, OTHER))
    with mx.connect(cfg) as s:
        s.send_many(items, progress=seen.append, batch_size=10)
    assert [p.done for p in seen] == [10, 20, 25]
    assert seen[-1].total == 25 and seen[-1].sent == 24 and seen[-1].failed == 1
    assert all(p.rate > 0 for p in seen)
    assert "25/25 messages: 24 sent, 1 failed" in str(seen[-1])


def test_progress_true_draws_a_tqdm_bar(emulator_factory, capsys):
    pytest.importorskip("tqdm")
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    with mx.connect(cfg) as s:
        s.send_many([(SVC.address, ["bob@partner.example"], raw(i)) for i in range(3)], progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "sent=3" in err


def test_bulk_send_as_reconnects_for_what_did_not_go_out(emulator_factory):
    em = emulator_factory(max_messages_per_connection=4)
    cfg = em.config(username=ANY.username, password=ANY.password, from_address=ANY.address)
    messages = [{"to": "bob@partner.example", "subject": f"notice {i}", "body": f"body {i}",
                 "sender": "payroll@corp.example" if i % 2 else None} for i in range(10)]
    result = mx.send_many(cfg, messages, reply_to="help@corp.example")
    assert result.ok and len(result.sent) == 10 and result.connections == 3
    subjects = [m.message["Subject"] for m in em.messages]
    assert subjects == [f"notice {i}" for i in range(10)]
    assert em.messages[1].message["From"] == "payroll@corp.example"
    assert em.messages[0].message["From"] == ANY.address
    assert all(m.message["Reply-To"] == "help@corp.example" for m in em.messages)


def test_a_per_connection_limit_does_not_use_up_the_reconnects(emulator_factory):
    # the connector's 421 after N messages is its MaxMessagesPerConnection, not a failure
    em = emulator_factory(max_messages_per_connection=2)
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    result = mx.send_many(cfg, [{"to": "bob@partner.example", "body": str(i)} for i in range(10)],
                          reconnects=0)
    assert result.ok and len(result.sent) == 10 and result.connections == 5
    assert [m.message.get_content().strip() for m in em.messages] == [str(i) for i in range(10)]
    assert any("after every 2 messages" in x and "messages_per_connection=2" in x
               for x in result.learned), result.learned
    assert "learned: the server closed the connection after every 2" in str(result)


def test_bulk_send_as_names_a_bad_key(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    result = mx.send_many(cfg, [{"to": "bob@partner.example", "subjct": "typo"}])
    assert isinstance(result[0], mx.InputError) and "subjct" in str(result[0])
    assert em.messages == []


def test_result_reprs(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    result = mx.send_many(cfg, [{"to": "bob@partner.example"}, {"to": "x@y", "sender": OTHER}])
    html = result._repr_html_()
    assert "1 of 2 messages sent" in html and "SenderRefused" in html
    d = result.to_dict()
    assert d["sent"] == 1 and d["outcomes"][1]["error"] == "SenderRefused"
    with pytest.raises(mx.SenderRefused) as info:
        result.raise_for_failures()
    assert "message 1 of 2; 1 failed in all" in info.value.__notes__[0]


def test_threads_each_with_a_session_send_in_parallel(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    results: list[mx.BulkResult] = []

    def worker(n: int) -> None:
        with mx.connect(cfg) as s:
            results.append(s.send_many([(SVC.address, ["bob@partner.example"], raw(n * 100 + i))
                                        for i in range(50)]))
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r.sent) for r in results) == [50] * 4
    assert sorted(m.data for m in em.messages) == sorted(wire_form(raw(n * 100 + i))
                                                         for n in range(4) for i in range(50))


def test_a_file_that_cannot_be_read_fails_alone_in_a_batch(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    r, w = os.pipe()
    os.close(w)
    with mx.connect(cfg) as s, os.fdopen(r, "rb", buffering=0) as pipe:
        result = s.send_many([(SVC.address, ["bob@partner.example"], raw(0)),
                              (SVC.address, ["bob@partner.example"], pipe),
                              (SVC.address, ["bob@partner.example"], raw(2))])
    assert isinstance(result[1], mx.InputError) and isinstance(result[1].__cause__, TypeError)
    assert "seekable" in str(result[1]) and result[1].delivered is False
    assert len(result.sent) == 2 and len(em.messages) == 2


def test_bulk_send_as_reports_progress_per_batch_across_reconnects(emulator_factory):
    em = emulator_factory(max_messages_per_connection=7)
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    seen: list[mx.Progress] = []
    messages = [{"to": "bob@partner.example", "body": str(i)} for i in range(20)]
    messages[3] = {"to": "bob@partner.example", "sender": OTHER}           # refused
    messages[5] = {"to": "bob@partner.example", "subjct": "typo"}          # bad item
    result = mx.send_many(cfg, messages, progress=seen.append, batch_size=4, reconnects=5)
    assert len(result.sent) == 18 and result.connections == 3
    done = [p.done for p in seen]
    assert done == sorted(done) and done[-1] == 20 and len(done) >= 5     # per batch, never back
    assert seen[-1].sent == 18 and seen[-1].failed == 2 and seen[-1].total == 20


def test_a_message_with_many_recipients_goes_one_command_at_a_time(emulator_factory):
    """More recipients than fit the 100-reply window: that message is sent
    command by command (each RCPT answered before the next), the others
    pipelined; every recipient's verdict is kept."""
    em = emulator_factory(unknown_recipients=["r7@partner.example"])
    cfg = em.config(username=SVC.username, password=SVC.password)
    many = [f"r{i}@partner.example" for i in range(150)]
    with mx.connect(cfg) as s:
        result = s.send_many([(SVC.address, ["bob@partner.example"], raw(0)),
                              (SVC.address, many, raw(1)),
                              (SVC.address, ["bob@partner.example"], raw(2))])
        lines = [(d, t) for _, d, t in s.transcript if d in "CS"]
    assert len(result.sent) == 3
    assert list(result[1].refused) == ["r7@partner.example"] and len(result[1].accepted) == 149
    assert [m.rcpt_tos for m in em.messages] == [["bob@partner.example"], many[:7] + many[8:],
                                                ["bob@partner.example"]]
    rcpt_at = [i for i, (d, t) in enumerate(lines) if t.startswith("RCPT TO:<r")]
    assert all(lines[i + 1][0] == "S" for i in rcpt_at)      # each answered before the next


def test_data_refused_then_rset_and_the_next_message_goes(fake_server):
    def script(conn):
        greet(conn, [b"PIPELINING"])
        conn.expect(b"MAIL FROM"), conn.expect(b"RCPT TO"), conn.expect(b"DATA")
        conn.send(b"250 ok\r\n250 ok\r\n554 5.6.0 no data today\r\n")
        conn.expect(b"RSET")
        conn.expect(b"MAIL FROM"), conn.expect(b"RCPT TO"), conn.expect(b"DATA")
        conn.send(b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        conn.body = conn.read_data()
        conn.send(b"250 queued\r\n")
        conn.expect(b"QUIT")
        conn.send(b"221 bye\r\n")
    result = send_two_and_quit(fake_server, script)
    assert isinstance(result[0], mx.DataRefused) and result[0].stage == mx.Stage.DATA
    assert result[0].code == 554 and result[0].delivered is False
    assert result[1].reply.text == "queued"


def test_a_large_body_from_a_refused_sender_sends_no_bdat_and_no_rset(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password)
    big = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 1100
    with mx.connect(cfg) as s:
        result = s.send_many([(OTHER, ["bob@partner.example"], big),
                              (SVC.address, ["bob@partner.example"], raw(1))])
        sent = [t.split()[0] for _, d, t in s.transcript if d == "C"]
    assert isinstance(result[0], mx.SenderRefused) and result[1].ok
    assert sent.count("BDAT") == 1 and "RSET" not in sent
    assert [m.data for m in em.messages] == [wire_form(raw(1))]


def test_stop_on_error_on_the_data_path(emulator_factory):
    em = emulator_factory(chunking=False, unknown_recipients=["nobody@corp.example"])
    cfg = em.config(username=SVC.username, password=SVC.password)
    items = [(SVC.address, ["bob@partner.example"], raw(i)) for i in range(5)]
    items[1] = (SVC.address, ["nobody@corp.example"], raw(1))
    with mx.connect(cfg) as s:
        result = s.send_many(items, stop_on_error=True)
        assert s.state == "READY"
        followup = s.send(raw(9), envelope_from=SVC.address, recipients=["bob@partner.example"])
    assert isinstance(result[1], mx.RecipientsRefused)
    assert all(isinstance(o, mx.StateError) and o.retry_safe for o in result[2:])
    assert followup.ok and len(em.messages) == 2


# -- streaming mx.send_many and mail merge (issue 16) ----------------------------

def test_send_many_reads_its_input_while_sending(emulator_factory):
    """Batch k is final before batch k + 2 is read: the input is consumed as it is sent."""
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    delivered_when_read: dict[int, int] = {}

    def messages():
        for i in range(450):
            delivered_when_read[i] = len(em.messages)
            yield {"to": "bob@partner.example", "subject": f"n{i}", "body": f"body {i}"}

    seen: list[mx.Progress] = []
    result = mx.send_many(cfg, messages(), progress=seen.append, batch_size=100)
    assert len(result) == 450 and result.ok and result.connections == 1
    assert delivered_when_read[0] == 0
    assert delivered_when_read[200] >= 100 and delivered_when_read[300] >= 200
    assert [p.done for p in seen] == [100, 200, 300, 400, 450] and seen[-1].total is None
    assert [m.message["Subject"] for m in em.messages] == [f"n{i}" for i in range(450)]


def test_streaming_reconnects_and_keeps_order_and_nothing_twice(emulator_factory):
    em = emulator_factory(max_messages_per_connection=7)
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    gen = ({"to": "bob@partner.example", "subject": f"s{i}", "body": str(i)} for i in range(40))
    result = mx.send_many(cfg, gen, batch_size=5, reconnects=10)
    assert len(result.sent) == 40 and result.connections == 6
    subjects = [m.message["Subject"] for m in em.messages]
    assert subjects == [f"s{i}" for i in range(40)]
    assert [r.message_id for r in result.sent] == [m.message["Message-ID"] for m in em.messages]


def test_streaming_gives_up_with_every_message_accounted_for(emulator_factory):
    # a rate limit (a burst of 6, then 6 a second) with no retries allowed: the run ends
    # (a per-connection limit would not end it: see test_bulk_limits.py)
    em = emulator_factory(messages_per_minute=360)
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    gen = ({"to": "bob@partner.example", "body": str(i)} for i in range(25))
    result = mx.send_many(cfg, gen, batch_size=4, reconnects=1, retries=0)
    assert len(result) == 25 and len(result.sent) == 6 and len(em.messages) == 6
    assert all(e.retry_safe and e.delivered is False for _, e in result.failed)
    assert [i for i, _ in result.failed] == list(range(6, 25))


def test_sent_messages_are_kept_compact(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    result = mx.send_many(cfg, [{"to": "bob@partner.example", "body": "x"}] * 3)
    kept = result._items[0]
    assert type(kept) is tuple and len(kept) == 6
    assert result._items[0][0] is result._items[1][0], "equal senders are shared"
    first = result[0]
    assert isinstance(first, mx.SendResult) and first.accepted == ("bob@partner.example",)
    assert first.message_id == em.messages[0].message["Message-ID"]
    assert result.to_dict()["outcomes"][2]["accepted"] == ["bob@partner.example"]


def test_template_merges_rows_and_escapes_html(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    t = mx.Template(to="{name} <{email}>", subject="Invoice {n} for {name}",
                    body="Dear {name},\nyou owe {amount:.2f}.\n",
                    html="<p>Dear {name}</p>", headers={"X-Customer": "{n}"})
    rows = [{"name": "Jörg Ünal", "email": "j@partner.example", "n": 1, "amount": 3},
            {"name": "Tom & <Jerry>", "email": "t@partner.example", "n": 2, "amount": 1.5},
            {"name": "no email", "n": 3, "amount": 0},
            {"name": "x\r\nBcc: evil@x.example", "email": "e@partner.example", "n": 4, "amount": 0}]
    result = mx.send_many(cfg, template=t, rows=iter(rows))
    assert [type(o).__name__ for o in result] == ["SendResult", "SendResult", "InputError", "InputError"]
    assert "'email'" in str(result[2]) and "to" in str(result[2])
    assert "CR, LF or NUL" in str(result[3])
    a, b = (m.message for m in em.messages)
    assert a["Subject"] == "Invoice 1 for Jörg Ünal" and a["To"].addresses[0].display_name == "Jörg Ünal"
    assert a["X-Customer"] == "1" and a.get_body(("plain",)).get_content() == "Dear Jörg Ünal,\nyou owe 3.00.\n"
    assert b.get_body(("html",)).get_content().strip() == "<p>Dear Tom &amp; &lt;Jerry&gt;</p>"
    assert em.messages[1].rcpt_tos == ["t@partner.example"]
    assert t.render(rows[1])["subject"] == "Invoice 2 for Tom & <Jerry>"


def test_template_fixed_parts_and_attachments(emulator_factory, tmp_path):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    (tmp_path / "terms.txt").write_bytes(b"terms\n")
    t = mx.Template(to="{to}", subject="Fixed", body="Same for all\n", html="<b>all</b>",
                    attachments=[tmp_path / "terms.txt"], sender="Billing <" + SVC.address + ">")
    result = mx.send_many(cfg, template=t, rows=[{"to": ["a@partner.example", "b@partner.example"]},
                                                 {"to": "c@partner.example"}])
    assert result.ok and [m.rcpt_tos for m in em.messages] == [["a@partner.example", "b@partner.example"],
                                                               ["c@partner.example"]]
    for m in em.messages:
        msg = m.message
        assert msg["From"].addresses[0].display_name == "Billing"
        assert msg.get_body(("plain",)).get_content() == "Same for all\n"
        assert [a.get_content() for a in msg.iter_attachments()] == ["terms\n"]
    assert em.messages[0].message["Message-ID"] != em.messages[1].message["Message-ID"]


def test_a_template_row_whose_cc_is_a_lone_line_break_is_refused_not_sent_without_it(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    t = mx.Template(to="{to}", cc="{cc}", subject="S {n}", body="b")
    rows = [{"to": "a@partner.example", "cc": "c@partner.example, ", "n": 0},   # an empty element: none
            {"to": "b@partner.example", "cc": "c@partner.example,\r\n", "n": 1},
            {"to": "d@partner.example", "cc": "\n", "n": 2}]
    result = mx.send_many(cfg, template=t, rows=rows)
    assert isinstance(result[0], mx.SendResult) and result[0].accepted == ("a@partner.example", "c@partner.example")
    for i in (1, 2):
        assert isinstance(result[i], mx.InputError) and result[i].delivered is False
        assert str(result[i]).startswith("cc (from the row's 'cc'): contains CR, LF or NUL")
    assert [m.message["Subject"] for m in em.messages] == ["S 0"]      # neither sent, with or without it


def test_template_and_messages_are_not_both_given(emulator_factory):
    em = emulator_factory()
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    with pytest.raises(mx.InputError, match="not both"):
        mx.send_many(cfg, [{"to": "x@y.example"}], template=mx.Template(), rows=[])
    with pytest.raises(mx.InputError, match="placeholder"):
        mx.Template(subject="{a.b}")
    assert em.connections == 0
