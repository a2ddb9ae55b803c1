"""The Session against a fake server that sends exact bytes."""
from __future__ import annotations

import socket
import ssl
import threading
import time

import pytest
from fakeserver import BANNER, greet
from support import connected, plain_session

import mailexpress as mx

def ehlo_answered(reply: bytes):  # type: ignore[no-untyped-def]
    """A script: the banner, EHLO answered with reply, then the next line."""
    def script(conn):  # type: ignore[no-untyped-def]
        conn.send(BANNER)
        conn.expect(b"EHLO")
        conn.send(reply)
        conn.readline()
    return script


def test_exact_bytes_of_a_transaction(fake_server):
    def script(conn):
        greet(conn, [b"SIZE 1000"])
        conn.converse((b"MAIL FROM", b"250 2.1.0 ok\r\n"),
                      (b"RCPT TO", b"250 2.1.5 ok\r\n"), (b"DATA", b"354 go\r\n"))
        conn.body = conn.read_data()
        conn.send(b"250 2.0.0 queued\r\n")
        conn.expect(b"QUIT")
        conn.send(b"221 bye\r\n")
    srv, s = connected(fake_server, script)
    refused, reply = s.send_raw("a@x.example", ["b@y.example"], b".lead\nmid\r.\r\nend")
    s.quit()
    assert refused == {} and reply.code == 250
    assert srv.wire == (b"EHLO client.example\r\n"
                        b"MAIL FROM:<a@x.example> SIZE=20\r\n"
                        b"RCPT TO:<b@y.example>\r\n"
                        b"DATA\r\n"
                        b"..lead\r\nmid\r\n..\r\nend\r\n.\r\n"
                        b"QUIT\r\n")


@pytest.mark.parametrize("answer", [b"454 4.7.0 TLS not available\r\n", b"502 5.5.1 no\r\n",
                                    b"500 5.5.2 what\r\n", b"530 5.7.0 nope\r\n"])
def test_starttls_refused_never_sends_auth_or_mail(fake_server, answer, certs):
    def script(conn):
        greet(conn, [b"STARTTLS", b"AUTH PLAIN LOGIN"])
        conn.expect(b"STARTTLS")
        conn.send(answer)
        conn.readline()   # whatever comes next (should be QUIT or nothing)
    srv = fake_server(script)
    cfg = mx.Config(host="127.0.0.1", port=srv.port, username="u", password="p", ca_file=certs.ca_file,
                    timeouts={"banner": 5, "ehlo": 5, "starttls": 5, "quit": 5})
    with pytest.raises(mx.TLSError) as info:
        mx.connect(cfg)
    assert info.value.stage is mx.Stage.STARTTLS and info.value.code == int(answer[:3])
    assert b"AUTH" not in srv.wire and b"MAIL" not in srv.wire


def test_starttls_not_advertised_is_an_error(fake_server, certs):
    def script(conn):
        greet(conn, [b"AUTH PLAIN LOGIN"])
        conn.readline()
    srv = fake_server(script)
    cfg = mx.Config(host="127.0.0.1", port=srv.port, username="u", password="p", ca_file=certs.ca_file)
    with pytest.raises(mx.TLSError, match="does not offer STARTTLS"):
        mx.connect(cfg)
    assert b"STARTTLS" not in srv.wire and b"AUTH" not in srv.wire


def test_bytes_injected_before_the_handshake_are_refused(fake_server, certs):
    def script(conn):
        greet(conn, [b"STARTTLS"])
        conn.expect(b"STARTTLS")
        conn.send(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
        conn.readline()
    srv, s = connected(fake_server, script, security="starttls", ca_file=certs.ca_file)
    s.ehlo()
    with pytest.raises(mx.ProtocolError, match="response injection") as info:
        s.starttls()
    assert info.value.stage is mx.Stage.STARTTLS
    assert s.state == "ERROR" and not s.tls_active
    with pytest.raises(mx.StateError, match="response injection"):
        s.noop()


def test_capabilities_before_tls_are_forgotten_and_ehlo_repeated(fake_server, certs):
    ctx = certs.server_context()

    def script(conn):
        greet(conn, [b"STARTTLS", b"AUTH PLAIN", b"SMTPUTF8"])
        conn.expect(b"STARTTLS")
        conn.send(b"220 ready\r\n")
        conn.starttls(ctx)
        conn.ehlo([b"AUTH LOGIN"])
        conn.expect(b"QUIT")
        conn.send(b"221 bye\r\n")
    srv, s = connected(fake_server, script, security="starttls", ca_file=certs.ca_file)
    s.ehlo()
    assert "SMTPUTF8" in s.capabilities
    s.starttls()
    assert s.tls_active and s.capabilities == {"FAKE.EXAMPLE": "", "AUTH": "LOGIN"} or \
        s.capabilities.get("AUTH") == "LOGIN"
    assert "SMTPUTF8" not in s.capabilities and "STARTTLS" not in s.capabilities
    assert s.auth_mechanisms == ("LOGIN",)
    s.quit()
    assert srv.wire.count(b"EHLO") == 2


def test_mismatched_multiline_codes_are_a_protocol_error(fake_server):
    srv, s = connected(fake_server, ehlo_answered(b"250-fake\r\n251 odd\r\n"))
    with pytest.raises(mx.ProtocolError, match="different codes") as info:
        s.ehlo()
    assert info.value.stage is mx.Stage.EHLO and s.state == "ERROR"


@pytest.mark.parametrize("reply", [b"2x0 bad\r\n", b"25\r\n", b"600 no\r\n", b"\r\n", b"250 a\x00b\r\n"])
def test_malformed_replies_are_protocol_errors(fake_server, reply):
    srv, s = connected(fake_server, ehlo_answered(reply))
    with pytest.raises(mx.ProtocolError):
        s.ehlo()


def test_a_mebibyte_line_is_refused_with_bounded_memory(fake_server):
    def script(conn):
        conn.send(b"220 " + b"x" * (1 << 20))
        conn.readline()
    srv = fake_server(script)
    s = plain_session(srv.port)
    with pytest.raises(mx.ProtocolError, match="longer than 65536"):
        s.connect()


def test_endless_continuation_lines_are_refused(fake_server):
    srv, s = connected(fake_server, ehlo_answered(b"250-more\r\n" * 500))
    with pytest.raises(mx.ProtocolError, match="more than 128 lines"):
        s.ehlo()


def test_last_line_without_text_is_accepted(fake_server):
    srv, s = connected(fake_server, ehlo_answered(b"250-fake\r\n250-PIPELINING\r\n250\r\n"))
    r = s.ehlo()
    assert r.code == 250 and r.lines == ("fake", "PIPELINING", "")
    s.close()


@pytest.mark.parametrize("where", ["reply", "data"])
def test_eof_mid_stream_is_connection_lost_with_stage(fake_server, where):
    def script(conn):
        greet(conn)
        conn.expect(b"MAIL")
        if where == "reply":
            conn.send(b"250-partial\r\n")
            return
        conn.send(b"250 ok\r\n")
        conn.converse((b"RCPT", b"250 ok\r\n"), (b"DATA", b"354 go\r\n"))
        conn.readline()
    srv, s = connected(fake_server, script)
    with pytest.raises(mx.ConnectionLost) as info:
        s.send_raw("a@x.example", ["b@y.example"], b"x\r\n" * 100000)
    assert info.value.stage is (mx.Stage.MAIL if where == "reply" else mx.Stage.END_OF_DATA)
    assert s.state == "ERROR"


def test_a_stalled_server_hits_the_stage_timeout(fake_server):
    release = threading.Event()

    def script(conn):
        conn.send(BANNER)
        conn.expect(b"EHLO")
        release.wait(10)
    srv, s = connected(fake_server, script, timeouts={"ehlo": 0.3})
    t0 = time.monotonic()
    with pytest.raises(mx.TimeoutError, match="stage timeout") as info:
        s.ehlo()
    release.set()
    assert info.value.stage is mx.Stage.EHLO and isinstance(info.value, TimeoutError)
    assert time.monotonic() - t0 < 5


def test_a_trickling_server_is_bounded_by_the_overall_deadline(fake_server):
    stop = threading.Event()

    def script(conn):
        for ch in b"220-slow banner that never ends\r\n" * 100:
            if stop.is_set():
                return
            conn.send(bytes([ch]))
            time.sleep(0.02)
    srv = fake_server(script)
    s = plain_session(srv.port, timeouts={"banner": 30})
    s.set_deadline(0.5)
    with pytest.raises(mx.TimeoutError, match="overall deadline"):
        s.connect()
    stop.set()


def test_250_to_data_is_a_protocol_error_and_no_body_is_sent(fake_server):
    def script(conn):
        greet(conn)
        conn.converse((b"MAIL", b"250 ok\r\n"), (b"RCPT", b"250 ok\r\n"), (b"DATA", b"250 what\r\n"))
        conn.readline()
    srv, s = connected(fake_server, script)
    with pytest.raises(mx.ProtocolError, match="354") as info:
        s.send_raw("a@x.example", ["b@y.example"], b"SECRET BODY\r\n")
    assert info.value.stage is mx.Stage.DATA
    assert b"SECRET BODY" not in srv.wire


def test_all_recipients_refused_no_data_sent(fake_server):
    """Without PIPELINING: RCPTs one by one, then RSET; DATA is never sent."""
    def script(conn):
        greet(conn, [b"8BITMIME"])
        conn.expect(b"MAIL")
        conn.send(b"250 ok\r\n")
        for _ in range(2):
            conn.expect(b"RCPT")
            conn.send(b"550 5.1.1 no such user\r\n")
        conn.expect(b"RSET")
        conn.send(b"250 ok\r\n")
        conn.readline()
    srv, s = connected(fake_server, script)
    with pytest.raises(mx.RecipientsRefused) as info:
        s.send_raw("a@x.example", ["b@y.example", "c@y.example"], b"body\r\n")
    assert {a: r.enhanced for a, r in info.value.replies.items()} == {
        "b@y.example": "5.1.1", "c@y.example": "5.1.1"}
    # smtplib's shape too, for code that catches smtplib.SMTPRecipientsRefused
    assert info.value.recipients == {"b@y.example": (550, b"5.1.1 no such user"),
                                     "c@y.example": (550, b"5.1.1 no such user")}
    assert b"DATA" not in srv.wire and s.state == "READY"


def pipelined_script(mail: bytes, rcpts: list[bytes], data: bytes, after=None):
    """A server that reads the whole group before answering anything: a
    client that waited for each reply would stall here."""
    def script(conn):
        greet(conn, [b"PIPELINING"])
        conn.expect(b"MAIL")
        for _ in rcpts:
            conn.expect(b"RCPT")
        conn.expect(b"DATA")
        conn.send(mail + b"".join(rcpts) + data)
        if after:
            after(conn)
        else:
            conn.readline()
    return script


def test_envelope_and_data_go_in_one_group(fake_server):
    def after(conn):
        conn.body = conn.read_data()
        conn.send(b"250 2.0.0 queued\r\n")
        conn.readline()
    srv = fake_server(pipelined_script(b"250 ok\r\n", [b"250 ok\r\n", b"550 5.1.1 unknown\r\n"],
                                       b"354 go\r\n", after))
    s = plain_session(srv.port, timeouts={"mail": 3, "rcpt": 3, "data": 3, "end_of_data": 3})
    s.connect()
    refused, reply = s.send_raw("a@x.example", ["b@y.example", "c@y.example"], b".hi\n")
    assert reply.code == 250 and list(refused) == ["c@y.example"] and refused["c@y.example"].code == 550
    assert srv.wire.endswith(b"MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n"
                             b"RCPT TO:<c@y.example>\r\nDATA\r\n..hi\r\n.\r\n")
    assert s.state == "READY"


def test_pipelined_all_recipients_refused_sends_no_body(fake_server):
    def after(conn):
        conn.expect(b"RSET")
        conn.send(b"250 ok\r\n")
        conn.readline()
    srv = fake_server(pipelined_script(b"250 ok\r\n", [b"550 5.1.1 a\r\n", b"550 5.1.1 b\r\n"],
                                       b"554 5.5.1 Error: no valid recipients\r\n", after))
    s = plain_session(srv.port)
    s.connect()
    with pytest.raises(mx.RecipientsRefused) as info:
        s.send_raw("a@x.example", ["b@y.example", "c@y.example"], b"SECRET BODY\r\n")
    assert set(info.value.replies) == {"b@y.example", "c@y.example"}
    assert b"SECRET BODY" not in srv.wire and s.state == "READY"


def test_pipelined_refused_sender_ignores_the_consequent_503s(fake_server):
    srv = fake_server(pipelined_script(b"553 5.7.1 not owned\r\n", [b"503 5.5.1 need MAIL\r\n"],
                                       b"503 5.5.1 need RCPT\r\n"))
    s = plain_session(srv.port)
    s.connect()
    with pytest.raises(mx.SenderRefused) as info:
        s.send_raw("a@x.example", ["b@y.example"], b"SECRET BODY\r\n")
    assert info.value.code == 553 and info.value.sender == "a@x.example"
    assert b"SECRET BODY" not in srv.wire and s.state == "READY"


def test_354_with_nothing_accepted_is_ended_empty(fake_server):
    def after(conn):
        line = conn.readline()
        assert line == b".\r\n", line
        conn.send(b"554 5.5.1 no recipients\r\n")
        conn.readline()
    srv = fake_server(pipelined_script(b"250 ok\r\n", [b"550 5.1.1 a\r\n"], b"354 go\r\n", after))
    s = plain_session(srv.port)
    s.connect()
    with pytest.raises(mx.RecipientsRefused):
        s.send_raw("a@x.example", ["b@y.example"], b"SECRET BODY\r\n")
    assert b"SECRET BODY" not in srv.wire and s.state == "READY"


@pytest.mark.parametrize("stage", ["EHLO", "MAIL", "RCPT", "DATA", "END_OF_DATA"])
def test_421_at_any_stage_closes_the_session(fake_server, stage):
    order = ["EHLO", "MAIL", "RCPT", "DATA", "END_OF_DATA"]

    def script(conn):
        conn.send(BANNER)
        for step in order:
            if step == "END_OF_DATA":
                conn.read_data()
            else:
                conn.expect(step.encode())
            if step == stage:
                conn.send(b"421 4.3.2 shutting down\r\n")
                return
            conn.send({"EHLO": b"250 fake\r\n", "DATA": b"354 go\r\n"}.get(step, b"250 ok\r\n"))
    srv, s = connected(fake_server, script)
    with pytest.raises(mx.ServiceUnavailable) as info:
        s.ehlo()
        s.send_raw("a@x.example", ["b@y.example"], b"x\r\n")
    assert info.value.code == 421 and info.value.stage.value == stage and info.value.transient
    assert s.state == "ERROR"
    with pytest.raises(mx.StateError):
        s.noop()


def test_unsolicited_reply_is_a_desync_error(fake_server):
    def script(conn):
        conn.send(BANNER + b"250 nobody asked\r\n")
        conn.readline()
    srv, s = connected(fake_server, script)
    with pytest.raises(mx.ProtocolError, match="nobody asked for") as info:
        s.ehlo()
    assert info.value.stage is mx.Stage.EHLO and b"EHLO" not in srv.wire


def test_oversized_or_invalid_334_challenge(fake_server):
    for challenge in (b"334 " + b"QUFB" * 450 + b"\r\n", b"334 not*base64\r\n"):
        def script(conn, challenge=challenge):
            greet(conn, [b"AUTH LOGIN"])
            conn.expect(b"AUTH LOGIN")
            conn.send(challenge)
            conn.readline()
        srv, s = connected(fake_server, script, allow_insecure_auth=True)
        with pytest.raises(mx.ProtocolError, match="334 challenge"):
            s.login("user", "password-xyz")
        assert b"password" not in srv.wire.lower().replace(b"auth login", b"")


def test_ehlo_refused_falls_back_to_helo_only_when_allowed(fake_server):
    def script(conn):
        conn.send(BANNER)
        conn.expect(b"EHLO")
        conn.send(b"502 5.5.1 EHLO not implemented\r\n")
        line = conn.readline()
        if line.startswith(b"HELO"):
            conn.send(b"250 fake\r\n")
            conn.readline()
    srv, s = connected(fake_server, script, helo_fallback=True)
    assert s.ehlo().code == 250 and not s.esmtp and s.capabilities == {}
    s.close()
    s2 = plain_session(srv.port, helo_fallback=False)
    s2.connect()
    with pytest.raises(mx.RefusedError, match="HELO fallback is off"):
        s2.ehlo()


def test_implicit_tls_port_speaking_plaintext_fails_without_fallback(fake_server):
    def script(conn):
        conn.send(BANNER)
        conn.readline()
    srv = fake_server(script)
    s = plain_session(srv.port, security="ssl")
    with pytest.raises(mx.TLSError) as info:
        s.connect()
    assert info.value.stage is mx.Stage.TLS
    # named as what it is (issue 14), not OpenSSL's "wrong version number"
    assert info.value.wrong_mode == "starttls" and "speaks plain SMTP" in str(info.value)
    assert b"EHLO" not in srv.wire   # only our ClientHello went out


def test_ipv6_literal(fake_server):
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 on this machine")

    def script(conn):
        conn.send(BANNER)
        conn.converse((b"EHLO", b"250 fake\r\n"), (b"QUIT", b"221 bye\r\n"))
    srv = fake_server(script, family=socket.AF_INET6, host="::1")
    s = plain_session(srv.port, host="::1")
    s.connect()
    s.ehlo()
    s.quit()
    assert s.connect_attempts[0]["family"] == "IPv6" and s.peer_address[0] == "::1"


def test_connection_refused_is_a_connect_error():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    s = plain_session(port)
    with pytest.raises(mx.ConnectError) as info:
        s.connect()
    assert info.value.stage is mx.Stage.CONNECT and info.value.errno == 111
    assert s.connect_attempts == [{"address": "127.0.0.1", "family": "IPv4",
                                   "error": "Connection refused", "ms": s.connect_attempts[0]["ms"]}]


def test_unresolvable_name_is_a_connect_error():
    s = plain_session(25, host="no-such-host.invalid")
    with pytest.raises(mx.ConnectError, match="cannot resolve"):
        s.connect()


def test_554_banner_is_a_connect_error(fake_server):
    srv = fake_server(lambda conn: (conn.send(b"554 5.7.1 go away\r\n"), conn.readline()))
    with pytest.raises(mx.ConnectError) as info:
        plain_session(srv.port).connect()
    assert info.value.code == 554


def test_tls_stream_cut_mid_reply(fake_server, certs):
    ctx = certs.server_context()

    def script(conn):
        conn.send(BANNER)
        conn.ehlo([b"STARTTLS"])
        conn.expect(b"STARTTLS")
        conn.send(b"220 go\r\n")
        conn.starttls(ctx)
        conn.expect(b"EHLO")
        conn.send(b"250-fake\r\n")
        conn.sock.shutdown(socket.SHUT_RDWR)
    srv, s = connected(fake_server, script, security="starttls", ca_file=certs.ca_file)
    s.ehlo()
    with pytest.raises(mx.ConnectionLost) as info:
        s.starttls()
    assert info.value.stage is mx.Stage.EHLO


def test_ssl_module_is_not_involved():
    # the client is our C core over OpenSSL; Python's ssl is used by test peers only
    assert ssl.OPENSSL_VERSION.split()[1][0] == mx.OPENSSL_VERSION.split()[1][0]


@pytest.mark.parametrize("where", ["EHLO", "MAIL", "RCPT", "RSET"])
def test_354_where_it_cannot_belong_is_a_protocol_error(fake_server, where):
    def script(conn):
        conn.send(BANNER)
        for step in ("EHLO", "MAIL", "RCPT", "RSET"):
            conn.expect(step.encode())
            if step == where:
                conn.send(b"354 go ahead\r\n")
                conn.readline()
                return
            conn.send(b"250 fake\r\n" if step == "EHLO" else b"250 ok\r\n")
    srv, s = connected(fake_server, script)
    with pytest.raises(mx.ProtocolError, match="354 reply cannot answer") as info:
        s.ehlo()
        s.mail("a@x.example")
        s.rcpt("b@y.example")
        s.rset()
    assert info.value.stage.value == where and s.state == "ERROR"
    assert b"DATA" not in srv.wire
