"""How a read waits for a reply, against a fake server that stalls.

A plain connection's reads sleep in recv itself, bounded by a receive
timeout (SO_RCVTIMEO) kept at or under the time left, and a poll waits out
the rest when that timeout passes first (csrc/io/net.c, mx_reader).  The
timeout one read sets is reused by later reads while it fits under their
deadlines, so these tests check that a shorter deadline after a longer one
is still kept, that a reply arriving after the receive timeout but before
the deadline is still taken, and that after STARTTLS (where OpenSSL reads
the socket and needs it non-blocking again) a stall still ends at its
stage's timeout.
"""
from __future__ import annotations

import threading
import time

import pytest
from fakeserver import BANNER, greet
from support import connected

import mailexpress as mx

LONG = 5.0           # seconds: the timeouts of the stages before the one under test


def timeouts(**short: float) -> dict[str, float]:
    base = dict.fromkeys(("connect", "banner", "ehlo", "mail", "rcpt", "data", "end_of_data",
                          "command", "quit", "auth", "starttls", "tls"), LONG)
    base.update(short)
    return base


def answer_until_the_body(conn) -> None:  # type: ignore[no-untyped-def]
    conn.converse((b"MAIL", b"250 ok\r\n"), (b"RCPT", b"250 ok\r\n"), (b"DATA", b"354 go\r\n"))
    conn.read_data()


def stalled_send(fake_server, before, stage: mx.Stage, **short: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until send_raw raised the stage timeout of `stage`, against a
    server that greets, does `before(conn)` and then says nothing."""
    release = threading.Event()

    def script(conn):  # type: ignore[no-untyped-def]
        greet(conn)
        before(conn)
        release.wait(10)
    srv, s = connected(fake_server, script, timeouts=timeouts(**short))
    s.ehlo()
    t0 = time.monotonic()
    with pytest.raises(mx.TimeoutError, match="stage timeout") as info:
        s.send_raw("a@x.example", ["b@y.example"], b"x\r\n")
    took = time.monotonic() - t0
    release.set()
    assert info.value.stage is stage
    return took


def test_a_short_stage_timeout_after_longer_ones_is_kept(fake_server):
    """The banner and EHLO reads (5 s) leave a receive timeout of about
    4.7 s on the socket; MAIL's 0.3 s must still end the wait at 0.3 s."""
    took = stalled_send(fake_server, lambda conn: conn.expect(b"MAIL"), mx.Stage.MAIL, mail=0.3)
    assert 0.28 <= took < 1.5, took


def test_a_reply_after_the_receive_timeout_but_within_the_deadline_is_taken(fake_server):
    """end_of_data = 4 s: the receive timeout is set to about 3.73 s (1/16
    and 20 ms under what is left), so a reply at 3.87 s comes while the
    read has gone on to poll out the rest, and must be taken as the answer."""
    def script(conn):
        greet(conn)
        answer_until_the_body(conn)
        time.sleep(3.87)
        conn.send(b"250 2.0.0 queued late\r\n")
        conn.expect(b"QUIT")
        conn.send(b"221 bye\r\n")
    srv, s = connected(fake_server, script, timeouts=timeouts(end_of_data=4.0))
    s.ehlo()
    t0 = time.monotonic()
    refused, reply = s.send_raw("a@x.example", ["b@y.example"], b"x\r\n")
    took = time.monotonic() - t0
    s.quit()
    srv.check()
    assert refused == {} and reply.code == 250 and "queued late" in reply.lines[-1]
    assert 3.8 <= took < 4.0, took


def test_a_deadline_that_passed_while_the_receive_timeout_ran_is_a_timeout(fake_server):
    """The same wait without the reply: the read ends at the deadline
    (4 s), not at the receive timeout and not later."""
    took = stalled_send(fake_server, answer_until_the_body, mx.Stage.END_OF_DATA, end_of_data=4.0)
    assert 3.98 <= took < 4.6, took


def test_after_starttls_a_stalled_server_still_hits_the_stage_timeout(fake_server, certs):
    """The plain reads before STARTTLS switch the socket to blocking mode;
    the handshake must make it non-blocking again, or OpenSSL's read would
    sleep for the receive timeout (about 4.7 s) instead of RCPT's 0.3 s.
    The stall comes after MAIL's reply, in the middle of the pipelined
    group, where the read tries OpenSSL before it waits."""
    release = threading.Event()

    def script(conn):
        conn.send(BANNER)
        conn.ehlo([b"STARTTLS", b"PIPELINING"])
        conn.expect(b"STARTTLS")
        conn.send(b"220 go\r\n")
        conn.starttls(certs.server_context())
        conn.ehlo([b"PIPELINING"])
        conn.converse((b"MAIL", b"250 ok\r\n"), (b"RCPT", b"250 ok\r\n"), (b"DATA", b"354 go\r\n"))
        conn.read_data()
        conn.send(b"250 2.0.0 queued\r\n")
        conn.expect(b"MAIL")
        conn.send(b"250 ok\r\n")
        conn.expect(b"RCPT")
        release.wait(10)
    srv, s = connected(fake_server, script, security="starttls", ca_file=certs.ca_file,
                       timeouts=timeouts(rcpt=0.3))
    s.starttls()
    assert s.tls_active
    refused, reply = s.send_raw("a@x.example", ["b@y.example"], b"x\r\n")
    assert refused == {} and reply.code == 250
    t0 = time.monotonic()
    with pytest.raises(mx.TimeoutError, match="stage timeout") as info:
        s.send_raw("a@x.example", ["b@y.example"], b"y\r\n")
    took = time.monotonic() - t0
    release.set()
    srv.check()
    assert info.value.stage is mx.Stage.RCPT
    assert 0.28 <= took < 1.5, took
