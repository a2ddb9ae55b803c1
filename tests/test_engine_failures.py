"""What the send engine reports when the session fails half-way through a
pipelined batch: read what the server already answered before deciding; a
message whose final reply came is sent or refused with it; a message whose
body never went out whole cannot have been taken (delivered=False, safe to
send again); only a message the server may have taken, without a word on
it, is unknown (delivered=None)."""
from __future__ import annotations

import socket
import time

import pytest
from fakeserver import greet
from support import connected, plain_session

import mailexpress as mx

BODY_100K = b"Subject: bulk\r\n\r\n" + b"x" * 1022 + b"\r\n" + (b"y" * 1022 + b"\r\n") * 99


def bdat_size(line: bytes) -> int:
    return int(line.split()[1])


def small_receive_window(conn) -> None:
    """Keeps the server's receive buffer small, so that a client writing a
    large batch is still writing when the server gives up."""
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)


def take_part_and_close(conn) -> None:  # type: ignore[no-untyped-def]
    """Reads 100 000 bytes of a large body, then closes: the client is
    still writing."""
    conn.read_exact(100_000)
    conn.close()


def take_twenty_then_read_the_next_mail(conn) -> bytes:
    """Greets with PIPELINING + CHUNKING, reads messages 0-19 whole and the
    start of message 20 (the RSET before each MAIL that follows a BDAT not
    yet answered, then its MAIL); returns the replies to messages 0-19."""
    greet(conn, [b"PIPELINING", b"CHUNKING", b"8BITMIME"])
    replies = b""
    for i in range(20):
        if i:
            conn.expect(b"RSET")
            replies += b"250 reset\r\n"
        conn.expect(b"MAIL FROM")
        conn.expect(b"RCPT TO")
        n = bdat_size(conn.expect(b"BDAT"))
        assert len(conn.read_exact(n)) == n
        replies += b"250 sender ok\r\n250 recipient ok\r\n250 queued as Q%d\r\n" % i
    conn.expect(b"RSET")
    conn.expect(b"MAIL FROM")
    return replies


def test_421_after_twenty_accepted_messages_pipelined_bdat(fake_server):
    """The case of issue 12: PIPELINING + CHUNKING, 100 KB bodies; the server
    takes messages 0-19, answers 421 to message 20's first command (the RSET
    before its MAIL) and closes while the client is still writing later
    messages."""
    total = 60

    def script(conn):
        replies = take_twenty_then_read_the_next_mail(conn)
        # a pipelining server may answer a group at once (RFC 2920 §3.2);
        # it closes with the client's later messages unread (a reset), while
        # the client, having read the first reply, writes on
        conn.send(replies + b"421 4.3.2 service shutting down\r\n")
        conn.close()

    srv, s = connected(fake_server, script)
    s.ehlo()
    result = s.send_many([("a@x.example", ["b@y.example"], BODY_100K) for _ in range(total)])
    srv.check()
    assert s.state == "ERROR"
    for i in range(20):
        assert not isinstance(result[i], Exception), (i, result[i])
        assert result[i].reply.text == f"queued as Q{i}"
    assert isinstance(result[20], mx.ServiceUnavailable) and result[20].code == 421
    assert result[20].delivered is False and result[20].retry_safe is True
    for i in range(21, total):
        assert isinstance(result[i], mx.Error), (i, result[i])
        assert result[i].delivered is False and result[i].retry_safe is True, i
    assert len(result.sent) == 20


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
def test_a_server_closing_mid_body_did_not_take_the_message(fake_server, chunking):
    """The server reads part of a large body and closes: the body never went
    out whole, so it cannot have been accepted; BDAT and DATA alike."""
    body = b"Subject: big\r\n\r\n" + (b"z" * 998 + b"\r\n") * 8000     # 8 MB

    def script(conn):
        small_receive_window(conn)
        greet(conn, [b"PIPELINING", b"CHUNKING"] if chunking else [b"PIPELINING"])
        conn.expect(b"MAIL FROM")
        conn.expect(b"RCPT TO")
        if chunking:
            conn.send(b"250 ok\r\n250 ok\r\n")
            conn.expect(b"BDAT")
        else:
            conn.expect(b"DATA")
            conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        take_part_and_close(conn)

    srv, s = connected(fake_server, script)
    s.ehlo()
    with pytest.raises(mx.ConnectionLost) as info:
        s.send_raw("a@x.example", ["b@y.example"], body)
    assert info.value.delivered is False and info.value.retry_safe is True
    assert s.state == "ERROR"


def test_replies_read_after_a_broken_write_decide_each_message(fake_server):
    """Pipelined DATA: the server answers message 0 whole, refuses message
    1's sender, and closes while the client writes message 2's large body:
    0 is sent, 1 is refused with its reply, 2 was never taken."""
    big = b"Subject: big\r\n\r\n" + (b"w" * 998 + b"\r\n") * 8000

    def script(conn):
        small_receive_window(conn)
        greet(conn, [b"PIPELINING"])
        conn.expect(b"MAIL FROM"), conn.expect(b"RCPT TO"), conn.expect(b"DATA")
        conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        conn.read_data()
        conn.expect(b"MAIL FROM"), conn.expect(b"RCPT TO"), conn.expect(b"DATA")
        conn.send(b"250 queued 0\r\n550 5.7.1 not you\r\n503 5.5.1 no sender\r\n"
                  b"503 5.5.1 no sender\r\n")
        conn.expect(b"MAIL FROM"), conn.expect(b"RCPT TO"), conn.expect(b"DATA")
        conn.send(b"250 ok\r\n250 ok\r\n354 go\r\n")
        take_part_and_close(conn)

    srv, s = connected(fake_server, script)
    s.ehlo()
    result = s.send_many([("a@x.example", ["b@y.example"], b"small\r\n"),
                          ("c@x.example", ["b@y.example"], b"refused\r\n"),
                          ("a@x.example", ["b@y.example"], big)])
    srv.check()
    first, second, third = result
    assert first.reply.text == "queued 0"
    assert isinstance(second, mx.SenderRefused) and second.code == 550 and second.delivered is False
    assert isinstance(third, mx.ConnectionLost)
    assert third.delivered is False and third.retry_safe is True


@pytest.mark.parametrize("chunking", [True, False], ids=["BDAT", "DATA"])
def test_a_write_the_server_reset_took_nothing(fake_server, chunking):
    """The server resets the connection after EHLO; the whole pipelined
    message (MAIL, RCPT, BDAT and its body) fails in one write: nothing of it
    reached the server, so it was not delivered and is safe to send again
    (staged is not sent)."""
    def script(conn):
        greet(conn, [b"PIPELINING", b"CHUNKING"] if chunking else [b"PIPELINING"])
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    srv, s = connected(fake_server, script)
    s.ehlo()
    time.sleep(0.2)     # the reset is in
    with pytest.raises(mx.ConnectionLost) as info:
        s.send_raw("a@x.example", ["b@y.example"], b"Subject: x\r\n\r\nsmall\r\n")
    assert info.value.delivered is False and info.value.retry_safe is True


def test_421_after_twenty_accepted_messages_over_tls(fake_server, certs):
    """The same over TLS (what Exchange offers): after the failed write,
    OpenSSL still hands over the records that had arrived."""
    def script(conn):
        replies = take_twenty_then_read_the_next_mail(conn)
        conn.send(replies + b"421 4.3.2 service shutting down\r\n")
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()

    srv = fake_server(script, tls=certs.server_context())
    s = plain_session(srv.port, security="ssl", ca_file=certs.ca_file)
    s.connect()
    s.ehlo()
    result = s.send_many([("a@x.example", ["b@y.example"], BODY_100K) for _ in range(60)])
    srv.check()
    assert [r.reply.text for r in result[:20]] == [f"queued as Q{i}" for i in range(20)]
    assert isinstance(result[20], mx.ServiceUnavailable) and result[20].delivered is False
    assert all(r.delivered is False and r.retry_safe for r in result[21:])
