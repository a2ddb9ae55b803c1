"""An unanswered QUIT (issue 14, item 7): after a completed send, QUIT has a
short bound of its own (the `quit` stage, 5 s by default) and its failure
never turns a sent message into an error."""
from __future__ import annotations

import logging
import time

import pytest
from fakeserver import greet

import mailexpress as mx


def _silent_quit(conn):  # type: ignore[no-untyped-def]
    greet(conn)
    conn.expect(b"MAIL FROM")
    conn.send(b"250 2.1.0 ok\r\n")
    conn.expect(b"RCPT TO")
    conn.send(b"250 2.1.5 ok\r\n")
    conn.expect(b"DATA")
    conn.send(b"354 go\r\n")
    conn.read_data()
    conn.send(b"250 2.0.0 queued as 1234\r\n")
    conn.expect(b"QUIT")
    conn.readline()           # never answers; waits for the client to close


def _config(port: int, **timeouts: float) -> mx.Config:
    t: dict[str, float] = {"banner": 5, "ehlo": 5, "mail": 5, "rcpt": 5, "data": 5,
                           "end_of_data": 5}
    t.update(timeouts)
    return mx.Config(host="127.0.0.1", port=port, security="none", use_auth=False,
                     from_address="svc@x.example", ehlo_name="client.example", timeouts=t)


def test_send_as_returns_within_the_quit_bound_when_quit_is_never_answered(fake_server, caplog):
    srv = fake_server(_silent_quit)
    caplog.set_level(logging.DEBUG, logger="mailexpress")
    start = time.monotonic()
    result = mx.send_as(_config(srv.port), to="rcpt@y.example", subject="s", body="b")
    took = time.monotonic() - start
    assert result.reply.code == 250 and list(result.accepted) == ["rcpt@y.example"]
    assert 4.5 <= took < 6.0      # the default quit bound (5 s) was what held it, + 1 s
    quits = [r for r in caplog.records if "QUIT failed" in r.getMessage()]
    assert quits and all(r.levelno == logging.DEBUG for r in quits)
    assert "quit" in quits[0].getMessage().lower()


def test_a_configured_quit_bound_is_kept(fake_server):
    bound = 1.0
    srv = fake_server(_silent_quit)
    start = time.monotonic()
    result = mx.send_as(_config(srv.port, quit=bound), to="rcpt@y.example", subject="s", body="b")
    assert result.reply.code == 250
    assert time.monotonic() - start < bound + 1.0


def test_quit_on_a_session_raises_the_timeout_but_close_quietly_does_not(fake_server):
    srv = fake_server(_silent_quit)
    s = mx.connect(_config(srv.port, quit=0.5))
    s.send(b"Subject: x\r\n\r\nbody\r\n", envelope_from="a@x.example", recipients=["b@y.example"])
    with pytest.raises(mx.TimeoutError) as info:
        s.quit()
    assert info.value.stage is mx.Stage.QUIT and s.state == "ERROR"
    s.close_quietly()          # a second close on a broken session: no error
