"""The C core's AUTH paths (XOAUTH2, OAUTHBEARER, the generic Python-step
path, PLAIN/LOGIN on the same loop) against byte-exact fake servers."""
from __future__ import annotations

import base64
import json
import threading
import time

import pytest
from fakeserver import BANNER, greet
from support import LOGIN_PROMPTS, answering, connected, plain_session

import mailexpress as mx

USER = "sender@contoso.example"
# a JWT-shaped token; no test may find it in a transcript, message or repr
TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJhdWQiOiJodHRwczovL291dGxvb2sifQ.c2VjcmV0LXNpZw"
EHLO = b"EHLO client.example\r\n"
OK = b"235 2.7.0 Authentication successful\r\n"


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def xoauth2(user: str, token: str) -> bytes:
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def transcript_text(s: mx.Session) -> str:
    return "\n".join(text for _ms, _d, text in s.transcript)


def client_lines(s: mx.Session) -> list[str]:
    return [text for _ms, d, text in s.transcript if d == "C"]


def assert_no_secret(secret: str, s: mx.Session, exc: BaseException | None = None) -> None:
    assert secret not in transcript_text(s)
    assert b64(secret.encode()).decode()[:16] not in transcript_text(s)
    if exc is not None:
        assert secret not in str(exc) and secret not in repr(exc)
        assert secret not in repr(exc.args)


def serve_auth(conn, mechs=b"AUTH LOGIN XOAUTH2"):  # type: ignore[no-untyped-def]
    greet(conn, [mechs])


def wait_quiet(conn) -> None:  # type: ignore[no-untyped-def]
    """Reads whatever follows (QUIT, or EOF when the client closes)."""
    conn.readline()


def auth_session(fake_server, script, **kw):  # type: ignore[no-untyped-def]
    """The fake server running script, and a Session connected to it that
    may authenticate without TLS."""
    return connected(fake_server, script, allow_insecure_auth=True, **kw)


# ---- XOAUTH2 ------------------------------------------------------------------

def test_xoauth2_initial_response_is_one_round_trip(fake_server):
    srv, s = auth_session(fake_server, answering(b"AUTH XOAUTH2 ", OK))
    reply = s.auth_oauth(USER, TOKEN)
    s.close()
    assert reply.code == 235 and s.authenticated
    assert srv.wire == EHLO + b"AUTH XOAUTH2 " + b64(xoauth2(USER, TOKEN)) + b"\r\n"
    # one round trip: one client line, one server reply at the AUTH stage
    assert client_lines(s)[1:] == ["AUTH XOAUTH2 <token redacted>"]
    assert_no_secret(TOKEN, s)


def test_xoauth2_long_token_is_sent_after_334(fake_server):
    token = "A" * 20000    # 20 KB: past RFC 4954's 12288 octets, let alone Postfix's 2048
    seen = {}

    def script(conn):
        serve_auth(conn)
        seen["auth"] = conn.expect(b"AUTH XOAUTH2")
        conn.send(b"334 \r\n")
        seen["blob"] = conn.readline()
        conn.send(OK)
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    assert s.auth_oauth(USER, token).code == 235
    s.close()
    assert seen["auth"] == b"AUTH XOAUTH2\r\n"
    assert seen["blob"] == b64(xoauth2(USER, token)) + b"\r\n"
    assert srv.wire == EHLO + b"AUTH XOAUTH2\r\n" + b64(xoauth2(USER, token)) + b"\r\n"
    assert client_lines(s)[1:] == ["AUTH XOAUTH2", "<token redacted>"]
    assert "334 " in transcript_text(s)
    assert_no_secret(token, s)


def _line_len(token_len: int) -> int:
    return len(b"AUTH XOAUTH2 " + b64(xoauth2(USER, "t" * token_len)) + b"\r\n")


@pytest.mark.parametrize("fits", [True, False])
def test_2048_octet_auth_line_decides_initial_response(fake_server, fits):
    # RFC 4954 allows 12288, but Postfix cuts command lines at its
    # line_length_limit (2048): a longer initial response goes after the 334
    n = max(k for k in range(1000, 1600) if _line_len(k) <= 2048)
    if not fits:
        n += 1
        assert _line_len(n) > 2048
    token = "t" * n

    def script(conn):
        serve_auth(conn)
        line = conn.readline()
        if not fits:
            assert line == b"AUTH XOAUTH2\r\n"
            conn.send(b"334 \r\n")
            line = conn.readline()
        conn.send(OK)
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    s.auth_oauth(USER, token)
    s.close()
    auth_line = srv.received[1]
    if fits:
        assert auth_line.startswith(b"AUTH XOAUTH2 ") and len(auth_line) == _line_len(n) <= 2048
    else:
        assert auth_line == b"AUTH XOAUTH2\r\n"
        assert srv.received[2] == b64(xoauth2(USER, token)) + b"\r\n"


def test_oauthbearer_framing_is_byte_exact(fake_server):
    srv, s = auth_session(fake_server, answering(b"AUTH OAUTHBEARER ", OK, offer=b"AUTH OAUTHBEARER XOAUTH2"))
    s.auth_oauth("a,b=c@x.example", TOKEN, "oauthbearer", host="smtp.example", port=587)
    s.close()
    gs2 = (b"n,a=a=2Cb=3Dc@x.example,\x01host=smtp.example\x01port=587\x01auth=Bearer "
           + TOKEN.encode() + b"\x01\x01")
    assert srv.wire == EHLO + b"AUTH OAUTHBEARER " + b64(gs2) + b"\r\n"
    assert client_lines(s)[1:] == ["AUTH OAUTHBEARER <token redacted>"]


def test_oauthbearer_host_and_port_default_to_the_session(fake_server):
    srv, s = auth_session(fake_server, answering(b"AUTH OAUTHBEARER ", OK, offer=b"AUTH OAUTHBEARER"))
    s.auth_oauth(USER, TOKEN, "OAUTHBEARER")
    s.close()
    blob = base64.b64decode(srv.received[1].split()[2])
    assert blob == (f"n,a={USER},\x01host=127.0.0.1\x01port={srv.port}\x01auth=Bearer {TOKEN}"
                    "\x01\x01").encode()


ERROR_JSON = '{"status":"invalid_token","scope":"https://outlook.office365.com/.default","schemes":"bearer"}'


@pytest.mark.parametrize("mech,dummy", [("XOAUTH2", b"\r\n"), ("OAUTHBEARER", b"AQ==\r\n")])
def test_334_json_error_is_answered_and_carried(fake_server, mech, dummy):
    seen = {}

    def script(conn):
        serve_auth(conn, b"AUTH XOAUTH2 OAUTHBEARER")
        conn.expect(b"AUTH " + mech.encode() + b" ")
        conn.send(b"334 " + b64(ERROR_JSON.encode()) + b"\r\n")
        seen["dummy"] = conn.readline()
        conn.send(b"535 5.7.3 Authentication unsuccessful\r\n")
        conn.expect(b"NOOP")
        conn.send(b"250 ok\r\n")
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    with pytest.raises(mx.AuthError) as info:
        s.auth_oauth(USER, TOKEN, mech, host="h.example", port=587)
    exc = info.value
    assert seen["dummy"] == dummy
    assert exc.oauth_challenge == ERROR_JSON  # type: ignore[attr-defined]
    assert json.loads(exc.oauth_challenge)["status"] == "invalid_token"  # type: ignore[attr-defined]
    assert exc.mechanism == mech  # type: ignore[attr-defined]
    assert exc.code == 535 and exc.stage is mx.Stage.AUTH and not exc.transient
    assert f"the server refused the authentication ({mech})" in str(exc)
    assert "invalid_token" in str(exc)
    assert_no_secret(TOKEN, s, exc)
    # the JSON challenge is kept in the transcript; the session stays usable
    assert b64(ERROR_JSON.encode()).decode() in transcript_text(s)
    assert s.noop().code == 250 and not s.authenticated
    s.close()


def test_oauth_refused_without_challenge_has_no_oauth_challenge(fake_server):
    def script(conn):
        serve_auth(conn)
        conn.expect(b"AUTH XOAUTH2 ")
        conn.send(b"535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is "
                  b"disabled for the Mailbox\r\n")
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    with pytest.raises(mx.AuthError) as info:
        s.auth_oauth(USER, TOKEN)
    assert info.value.oauth_challenge is None  # type: ignore[attr-defined]
    assert info.value.enhanced == "5.7.139"
    assert_no_secret(TOKEN, s, info.value)
    s.close()


def test_a_second_334_after_the_dummy_response_is_a_protocol_error(fake_server):
    again = b"334 " + b64(b"{}") + b"\r\n"
    srv, s = auth_session(fake_server, answering(b"AUTH XOAUTH2 ", again, again))
    with pytest.raises(mx.ProtocolError, match="asked for more"):
        s.auth_oauth(USER, TOKEN)
    assert s.state == "ERROR"


@pytest.mark.parametrize("kwargs,field", [
    ({"token": "has space"}, "token"),
    ({"token": ""}, "token"),
    ({"token": "t\u00e9"}, "token"),
    ({"token": "x" * 65537}, "token"),
    ({"user": "a\x01b"}, "user"),
    ({"user": "u" * 256}, "user"),
    ({"host": "h\x01", "mechanism": "OAUTHBEARER"}, "host"),
    ({"port": 0, "mechanism": "OAUTHBEARER"}, "port"),
    ({"mechanism": "PLAIN"}, "mechanism"),
    ({"user": 5}, "user"),
])
def test_bad_oauth_input_sends_nothing(fake_server, kwargs, field):
    def script(conn):
        serve_auth(conn)
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    s.ehlo()
    args = {"user": USER, "token": TOKEN, **kwargs}
    with pytest.raises(mx.InputError) as info:
        s.auth_oauth(**args)
    assert str(info.value).startswith(field) or f"{field} " in str(info.value)
    s.close()
    assert b"AUTH" not in srv.wire
    assert_no_secret(TOKEN, s, info.value)


def test_64k_token_is_accepted(fake_server):
    token = "k" * 65536

    def script(conn):
        serve_auth(conn)
        conn.expect(b"AUTH XOAUTH2")
        conn.send(b"334 \r\n")
        assert base64.b64decode(conn.readline().strip()) == xoauth2(USER, token)
        conn.send(OK)
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    assert s.auth_oauth(USER, token).code == 235
    s.close()


# ---- TLS rule -------------------------------------------------------------------

def test_no_token_or_secret_response_without_tls(fake_server):
    called = []

    def script(conn):
        serve_auth(conn, b"AUTH XOAUTH2 NTLM")
        conn.expect(b"QUIT")
        conn.send(b"221 bye\r\n")
    srv, s = connected(fake_server, script)
    with pytest.raises(mx.InsecureAuthError) as info:
        s.auth_oauth(USER, TOKEN)
    assert "without TLS" in str(info.value)
    with pytest.raises(mx.InsecureAuthError):
        s.auth("NTLM", lambda c: called.append(c) or b"x")
    s.quit()
    assert called == [] and b"AUTH" not in srv.wire
    assert srv.wire == EHLO + b"QUIT\r\n"


def test_secret_false_is_allowed_without_tls(fake_server):
    def script(conn):
        serve_auth(conn, b"AUTH GSSAPI")
        conn.expect(b"AUTH GSSAPI ")
        conn.send(OK)
        wait_quiet(conn)
    srv, s = connected(fake_server, script)
    assert s.auth("GSSAPI", lambda c: b"ticket", secret=False).code == 235
    s.close()
    assert srv.received[1] == b"AUTH GSSAPI " + b64(b"ticket") + b"\r\n"


def test_xoauth2_over_tls(fake_server, certs):
    def script(conn):
        conn.send(BANNER)
        conn.ehlo([b"STARTTLS"])
        conn.expect(b"STARTTLS")
        conn.send(b"220 go\r\n")
        conn.starttls(certs.server_context())
        conn.ehlo([b"AUTH LOGIN XOAUTH2"])
        conn.expect(b"AUTH XOAUTH2 " + b64(xoauth2(USER, TOKEN)) + b"\r\n")
        conn.send(OK)
        wait_quiet(conn)
    srv, s = connected(fake_server, script, security="starttls", ca_file=certs.ca_file)
    s.starttls()
    assert s.auth_oauth(USER, TOKEN).code == 235 and s.tls_active
    s.close()
    assert_no_secret(TOKEN, s)


# ---- the generic step path --------------------------------------------------------

def test_generic_step_runs_every_round(fake_server):
    calls: list[bytes | None] = []
    answers = iter([b"NEGOTIATE", b"AUTHENTICATE", None])

    def step(challenge: bytes | None) -> bytes | None:
        calls.append(challenge)
        return next(answers)

    srv, s = auth_session(fake_server, answering(b"AUTH NTLM ", b"334 " + b64(b"CHALLENGE\x00\xff") + b"\r\n",
                                                 b"334 \r\n", OK, offer=b"AUTH NTLM"))
    reply = s.auth("ntlm", step)
    s.close()
    assert reply.code == 235 and s.authenticated
    assert calls == [None, b"CHALLENGE\x00\xff", b""]
    assert srv.wire == (EHLO + b"AUTH NTLM " + b64(b"NEGOTIATE") + b"\r\n"
                        + b64(b"AUTHENTICATE") + b"\r\n" + b"\r\n")
    assert client_lines(s)[1:] == ["AUTH NTLM <response redacted>", "<response redacted>",
                                   "<response redacted>"]
    # the server's challenges are evidence and stay
    assert "334 " + b64(b"CHALLENGE\x00\xff").decode() in transcript_text(s)
    for secret in ("NEGOTIATE", "AUTHENTICATE"):
        assert_no_secret(secret, s)


@pytest.mark.parametrize("initial,line", [(None, b"AUTH GSSAPI\r\n"), (b"", b"AUTH GSSAPI =\r\n")])
def test_generic_initial_response_none_or_empty(fake_server, initial, line):
    def script(conn):
        serve_auth(conn, b"AUTH GSSAPI")
        got = conn.readline()
        assert got == line, got
        conn.send(OK)
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    s.auth("GSSAPI", lambda c: initial)
    s.close()
    assert srv.received[1] == line


def test_generic_long_initial_response_goes_after_334(fake_server):
    big = bytes(range(256)) * 200    # 51,200 bytes: a Kerberos ticket with a large PAC

    def script(conn):
        serve_auth(conn, b"AUTH GSSAPI")
        conn.expect(b"AUTH GSSAPI\r\n")
        conn.send(b"334 \r\n")
        assert base64.b64decode(conn.readline().strip()) == big
        conn.send(OK)
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    calls = []
    s.auth("GSSAPI", lambda c: calls.append(c) or big)
    s.close()
    assert calls == [None]    # the 334 is answered with the deferred response


class StepFailed(Exception):
    pass


def test_step_raising_cancels_with_star_and_reraises(fake_server):
    def step(challenge: bytes | None) -> bytes:
        if challenge is None:
            return b"first"
        raise StepFailed("the ticket expired")

    def script(conn):
        serve_auth(conn, b"AUTH GSSAPI")
        conn.expect(b"AUTH GSSAPI ")
        conn.send(b"334 " + b64(b"chal") + b"\r\n")
        conn.expect(b"*\r\n")
        conn.send(b"501 5.7.0 Authentication cancelled\r\n")
        conn.expect(b"NOOP")
        conn.send(b"250 ok\r\n")
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    with pytest.raises(StepFailed, match="ticket expired"):
        s.auth("GSSAPI", step)
    assert s.state == "READY" and not s.authenticated
    assert s.noop().code == 250
    s.close()
    assert srv.wire.endswith(b"*\r\nNOOP\r\n")
    assert "501 5.7.0 Authentication cancelled" in transcript_text(s)


def test_step_raising_first_sends_nothing(fake_server):
    def step(challenge: bytes | None) -> bytes:
        raise StepFailed("no credentials")

    def script(conn):
        serve_auth(conn, b"AUTH NTLM")
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    with pytest.raises(StepFailed):
        s.auth("NTLM", step)
    s.close()
    assert b"AUTH" not in srv.wire


@pytest.mark.parametrize("bad,exc", [("text", TypeError), (b"x" * 65537, ValueError)])
def test_step_returning_bad_value_cancels(fake_server, bad, exc):
    def step(challenge: bytes | None) -> object:
        return b"ok" if challenge is None else bad

    def script(conn):
        serve_auth(conn, b"AUTH NTLM")
        conn.expect(b"AUTH NTLM ")
        conn.send(b"334 " + b64(b"chal") + b"\r\n")
        conn.expect(b"*\r\n")
        conn.send(b"501 5.7.0 cancelled\r\n")
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    with pytest.raises(exc, match="NTLM"):
        s.auth("NTLM", step)  # type: ignore[arg-type]
    s.close()


@pytest.mark.parametrize("mech", ["", "NT LM", "X" * 21, "NTLM\r\nRSET", 7])
def test_bad_mechanism_name_sends_nothing(fake_server, mech):
    def script(conn):
        serve_auth(conn, b"AUTH NTLM")
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    s.ehlo()
    with pytest.raises(mx.InputError, match="mechanism"):
        s.auth(mech, lambda c: b"")  # type: ignore[arg-type]
    with pytest.raises(mx.InputError, match="step"):
        s.auth("NTLM", b"not callable")  # type: ignore[arg-type]
    s.close()
    assert b"AUTH" not in srv.wire


# ---- replies to AUTH ----------------------------------------------------------------

@pytest.mark.parametrize("answer,transient", [
    (b"454 4.7.0 Temporary authentication failure\r\n", True),
    (b"451 4.7.0 Temporary server error. Please try again later. PRX4\r\n", True),
    (b"535 5.7.3 Authentication unsuccessful\r\n", False),
])
def test_4xx_is_transient_and_5xx_a_refusal(fake_server, answer, transient):
    srv, s = auth_session(fake_server, answering(b"AUTH NTLM ", answer, offer=b"AUTH NTLM"))
    with pytest.raises(mx.AuthError) as info:
        s.auth("NTLM", lambda c: b"secret-response")
    exc = info.value
    assert exc.transient is transient and exc.code == int(answer[:3])
    assert exc.mechanism == "NTLM"  # type: ignore[attr-defined]
    assert "the server refused the authentication (NTLM)" in str(exc)
    assert ("not a verdict on the credentials" in str(exc)) is transient
    assert ("temporary" in str(exc)) is transient
    assert s.state == "READY"
    assert_no_secret("secret-response", s, exc)
    s.close()


@pytest.mark.parametrize("answer", [b"354 go ahead\r\n", b"250 fine\r\n"])
def test_other_than_334_or_235_is_a_protocol_error(fake_server, answer):
    srv, s = auth_session(fake_server, answering(b"AUTH NTLM ", answer, offer=b"AUTH NTLM"))
    with pytest.raises(mx.ProtocolError) as info:
        s.auth("NTLM", lambda c: b"r")
    assert info.value.stage is mx.Stage.AUTH and s.state == "ERROR"
    assert not isinstance(info.value, mx.AuthError)


def test_421_during_auth_ends_the_session(fake_server):
    srv, s = auth_session(fake_server, answering(
        b"AUTH XOAUTH2 ", b"421 4.3.2 Service not available, closing transmission channel\r\n"))
    with pytest.raises(mx.ServiceUnavailable):
        s.auth_oauth(USER, TOKEN)
    assert s.state == "ERROR"


def test_endless_challenges_are_bounded(fake_server):
    def script(conn):
        serve_auth(conn, b"AUTH NTLM")
        for _ in range(40):
            if not conn.readline():
                return
            conn.send(b"334 " + b64(b"more") + b"\r\n")
    srv, s = auth_session(fake_server, script)
    with pytest.raises(mx.ProtocolError, match="more than 16 challenges"):
        s.auth("NTLM", lambda c: b"again")
    assert srv.wire.count(b"\r\n") == 1 + 17    # EHLO, AUTH and 16 answers


def test_login_refusal_names_the_mechanism(fake_server):
    srv, s = auth_session(fake_server, answering(
        b"AUTH LOGIN", *LOGIN_PROMPTS,
        b"535 5.7.139 Authentication unsuccessful, basic authentication is disabled.\r\n", offer=b"AUTH LOGIN"))
    with pytest.raises(mx.AuthError) as info:
        s.login("u@x.example", "pa55-word")
    assert info.value.mechanism == "LOGIN"  # type: ignore[attr-defined]
    assert "the server refused the authentication (LOGIN)" in str(info.value)
    assert srv.wire == (EHLO + b"AUTH LOGIN\r\n" + b64(b"u@x.example") + b"\r\n"
                        + b64(b"pa55-word") + b"\r\n")
    assert client_lines(s)[1:] == ["AUTH LOGIN", "<username redacted>", "<password redacted>"]
    assert_no_secret("pa55-word", s, info.value)


def test_plain_on_the_same_loop_is_byte_exact(fake_server):
    srv, s = auth_session(fake_server, answering(b"AUTH PLAIN ", OK, offer=b"AUTH PLAIN LOGIN"))
    s.login("u", "pw")
    s.close()
    assert srv.wire == EHLO + b"AUTH PLAIN " + b64(b"\x00u\x00pw") + b"\r\n"
    assert client_lines(s)[1:] == ["AUTH PLAIN <credentials redacted>"]


# ---- mechanisms from EHLO, auth_mechanisms ---------------------------------------------

EXCHANGE_2003 = [b"X-EXPS GSSAPI NTLM LOGIN", b"X-EXPS=LOGIN", b"AUTH GSSAPI NTLM LOGIN",
                 b"AUTH=LOGIN", b"8BITMIME"]
EXCHANGE_2016 = [b"AUTH NTLM", b"X-EXPS GSSAPI NTLM", b"8BITMIME"]


@pytest.mark.parametrize("lines,union", [(EXCHANGE_2003, "GSSAPI NTLM LOGIN"),
                                         (EXCHANGE_2016, "NTLM GSSAPI"),
                                         ([b"AUTH=login", b"AUTH plain xoauth2 LOGIN"],
                                          "LOGIN PLAIN XOAUTH2")])
def test_capabilities_auth_is_the_union(fake_server, lines, union):
    def script(conn):
        greet(conn, lines)
        wait_quiet(conn)
    srv, s = connected(fake_server, script)
    s.ehlo()
    assert s.capabilities["AUTH"] == union
    # every raw line stays as evidence
    assert s.ehlo_reply is not None
    assert list(s.ehlo_reply.lines[1:]) == [x.decode() for x in lines]
    s.close()


def test_login_picks_from_the_union(fake_server):
    # LOGIN is offered only on the AUTH= line (Exchange 2003 style)
    srv, s = auth_session(fake_server, answering(b"AUTH LOGIN", *LOGIN_PROMPTS, OK,
                                                 offer=[b"AUTH GSSAPI NTLM", b"AUTH=LOGIN"]))
    assert s.login("u", "p").code == 235
    s.close()


def test_auth_mechanisms_accepts_the_six_names():
    mx.Session("127.0.0.1", auth_mechanisms=["plain", "LOGIN", "xoauth2", "OAuthBearer", "NTLM",
                                            "gssapi"])
    with pytest.raises(ValueError, match="CRAM-MD5"):
        mx.Session("127.0.0.1", auth_mechanisms=["CRAM-MD5"])


def test_login_still_refuses_when_only_modern_mechanisms_are_allowed(fake_server):
    def script(conn):
        greet(conn, [b"AUTH LOGIN XOAUTH2"])
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script, auth_mechanisms=["XOAUTH2"])
    with pytest.raises(mx.NotSupportedError):
        s.login("u", "p")
    s.close()
    assert b"AUTH" not in srv.wire


# ---- the GIL ------------------------------------------------------------------------------

def test_gil_is_released_while_waiting_for_the_server(fake_server):
    ticks = [0]
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            ticks[0] += 1

    def step(challenge: bytes | None) -> bytes:
        return b"r"

    def script(conn):
        serve_auth(conn, b"AUTH NTLM")
        conn.expect(b"AUTH NTLM ")
        time.sleep(0.5)
        conn.send(b"334 " + b64(b"c") + b"\r\n")
        conn.readline()
        time.sleep(0.5)
        conn.send(OK)
        wait_quiet(conn)
    srv, s = auth_session(fake_server, script)
    t = threading.Thread(target=spin)
    t.start()
    try:
        time.sleep(0.05)
        before = ticks[0]
        t0 = time.monotonic()
        s.auth("NTLM", step)
        elapsed = time.monotonic() - t0
        during = ticks[0] - before
    finally:
        stop.set()
        t.join()
    s.close()
    assert elapsed >= 0.9
    # a thread that held the GIL for the whole second would leave the spinner at zero
    assert during > 10000
