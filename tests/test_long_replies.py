"""Long reply lines over the wire (issue 14, item 5): a line up to 64 KiB is
kept whole, so Exchange Online's long SendAsDenied refusal at end of data
stays a refusal (DataRefused, delivered=False), not a ProtocolError."""
from __future__ import annotations

import pytest
from fakeserver import greet

import mailexpress as mx

# the shape of Exchange Online's refusal: one line, a diagnostic tail
SEND_AS_DENIED = (
    b"554 5.2.252 SendAsDenied; svc-mailer@contoso.example not allowed to send as "
    b"partner@example.org; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; "
    b"Failed to process message due to a permanent exception with message [BeginDiagnosticData]"
    + b"Cannot submit message. 0.35250:0A000000, 1.36674:0A000000, 1.61250:00000000, " * 24
    + b"[EndDiagnosticData] [Hostname=AM0PR01MB0000.eurprd01.prod.exchangelabs.com]"
)


def _config(port: int) -> mx.Config:
    return mx.Config(host="127.0.0.1", port=port, security="none", use_auth=False,
                     from_address="svc@contoso.example", ehlo_name="client.example",
                     timeouts={"banner": 5, "ehlo": 5, "mail": 5, "rcpt": 5, "data": 5,
                               "end_of_data": 5, "quit": 5})


def _end_of_data_script(final: bytes):  # type: ignore[no-untyped-def]
    def script(conn):  # type: ignore[no-untyped-def]
        greet(conn, [b"8BITMIME"])
        conn.expect(b"MAIL FROM")
        conn.send(b"250 2.1.0 Sender OK\r\n")
        conn.expect(b"RCPT TO")
        conn.send(b"250 2.1.5 Recipient OK\r\n")
        conn.expect(b"DATA")
        conn.send(b"354 Start mail input\r\n")
        conn.read_data()
        conn.send(final)
        line = conn.readline()
        if line.upper().startswith(b"QUIT"):
            conn.send(b"221 2.0.0 bye\r\n")
    return script


def test_exchange_online_send_as_denied_line_stays_a_refusal(fake_server):
    assert len(SEND_AS_DENIED) > 2048
    srv = fake_server(_end_of_data_script(SEND_AS_DENIED + b"\r\n"))
    with pytest.raises(mx.DataRefused) as info:
        mx.send_as(_config(srv.port), "partner@example.org", to="rcpt@contoso.example",
                   subject="s", body="b")
    exc = info.value
    assert exc.stage is mx.Stage.END_OF_DATA and exc.code == 554
    assert exc.reply.enhanced == "5.2.252"
    assert exc.reply.text == SEND_AS_DENIED[4:].decode()      # whole, not clipped
    assert exc.delivered is False


def test_a_64_kib_line_is_taken_whole_and_the_session_goes_on(fake_server):
    tail = b"x" * (65536 - 4 - 2 - 10)
    line = b"250 2.0.0 " + tail

    def script(conn):  # type: ignore[no-untyped-def]
        greet(conn)
        conn.expect(b"NOOP")
        conn.send(line + b"\r\n")
        conn.expect(b"NOOP")
        conn.send(b"250 2.0.0 ok\r\n")
        conn.expect(b"QUIT")
        conn.send(b"221 bye\r\n")
    srv = fake_server(script)
    s = mx.Session("127.0.0.1", srv.port, security="none", ehlo_name="client.example",
                   timeouts={"banner": 5, "ehlo": 5, "command": 5, "quit": 5})
    s.connect()
    s.ehlo()
    r = s.noop()
    assert r.code == 250 and r.lines == (line[4:].decode(),)
    assert s.noop().text == "2.0.0 ok"
    # the transcript keeps the line whole too
    assert any(t == line.decode() for _ms, d, t in s.transcript if d == "S")
    s.quit()


def test_a_line_past_64_kib_is_a_protocol_error(fake_server):
    def script(conn):  # type: ignore[no-untyped-def]
        greet(conn)
        conn.expect(b"NOOP")
        conn.send(b"250 " + b"x" * 70000 + b"\r\n")
        conn.readline()
    srv = fake_server(script)
    s = mx.Session("127.0.0.1", srv.port, security="none", ehlo_name="client.example",
                   timeouts={"banner": 5, "ehlo": 5, "command": 5})
    s.connect()
    s.ehlo()
    with pytest.raises(mx.ProtocolError, match="longer than 65536 octets"):
        s.noop()
    assert s.state == "ERROR"


def test_a_long_refusal_in_a_pipelined_batch_reaches_its_message(fake_server):
    refusal = b"550 5.7.1 " + b"r" * 5000

    def script(conn):  # type: ignore[no-untyped-def]
        greet(conn, [b"PIPELINING"])
        conn.expect(b"MAIL FROM")
        conn.expect(b"RCPT TO")
        conn.expect(b"DATA")
        conn.send(refusal + b"\r\n503 5.5.1 no valid recipients\r\n554 5.5.1 no\r\n")
        line = conn.readline()
        if line.upper().startswith(b"RSET"):
            conn.send(b"250 ok\r\n")
            line = conn.readline()
        if line.upper().startswith(b"QUIT"):
            conn.send(b"221 bye\r\n")
    srv = fake_server(script)
    s = mx.Session("127.0.0.1", srv.port, security="none", ehlo_name="client.example",
                   timeouts={"banner": 5, "ehlo": 5, "mail": 5, "rcpt": 5, "data": 5,
                             "command": 5, "quit": 5})
    s.connect()
    s.ehlo()
    with pytest.raises(mx.SenderRefused) as info:
        s.send_raw("a@x.example", ["b@y.example"], b"Subject: x\r\n\r\nbody\r\n")
    assert info.value.reply.text == refusal[4:].decode()
    s.close()


@pytest.mark.parametrize("size", [3000, 60000])
def test_a_long_334_challenge_is_still_bounded_by_the_mechanism(fake_server, size):
    # lines may now be 64 KiB, but LOGIN's challenges stay bounded (512 decoded
    # octets): a long one ends the exchange, nothing is answered to it
    import base64
    challenge = base64.b64encode(b"u" * (size * 3 // 4))[:size]

    def script(conn):  # type: ignore[no-untyped-def]
        greet(conn, [b"AUTH LOGIN"])
        conn.expect(b"AUTH LOGIN")
        conn.send(b"334 " + challenge + b"\r\n")
        conn.readline()
    srv = fake_server(script)
    s = mx.Session("127.0.0.1", srv.port, security="none", ehlo_name="client.example",
                   allow_insecure_auth=True, auth_mechanisms=["LOGIN"],
                   timeouts={"banner": 5, "ehlo": 5, "auth": 5})
    s.connect()
    s.ehlo()
    with pytest.raises(mx.Error, match="challenge is longer than 512 octets"):
        s.login("user", "secret")
    s.close()
    assert b"dXNlcg" not in srv.wire      # the user name never went out
