"""mailexpress.auth: the choice of mechanism, no fallback after a refusal,
bad token providers, and the whole path against the emulator (XOAUTH2 with
its own tokens, NTLM through pyspnego's acceptor) and byte-exact fake
servers."""
from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from fakeserver import greet
from support import LOGIN_PROMPTS, SVC, answer, answering

import mailexpress as mx
from mailexpress.auth import authenticate, plan
from mailexpress.auth.spnego import GssapiStep
from mailexpress.testing import ConnectorEmulator, User

MAILBOX = "sender@corp.example"
OK = b"235 2.7.0 Authentication successful\r\n"


def cfg_for(**kw: Any) -> mx.Config:
    kw.setdefault("host", "127.0.0.1")
    kw.setdefault("username", MAILBOX)
    return mx.load_config(env={}, **kw)


def token_provider(token: str = "tok-abc.def") -> Any:
    return lambda: (token, time.time() + 3600)


# -- the choice: a matrix -------------------------------------------------------

@pytest.mark.parametrize("settings, offered, ticket, spnego, expected", [
    # automatic, password only: NTLM before LOGIN (Exchange on-premises), Kerberos with a ticket
    ({"password": "pw"}, "GSSAPI NTLM LOGIN", False, True, ["NTLM", "LOGIN"]),
    ({"password": "pw"}, "GSSAPI NTLM LOGIN", True, True, ["GSSAPI", "NTLM", "LOGIN"]),
    ({"password": "pw"}, "GSSAPI NTLM LOGIN", True, False, ["LOGIN"]),      # no pyspnego
    ({"password": "pw"}, "PLAIN LOGIN", False, True, ["LOGIN", "PLAIN"]),
    ({"password": "pw"}, "LOGIN XOAUTH2", False, True, ["LOGIN"]),           # no token source
    # a token source: XOAUTH2 first; the password still there for a server without it
    ({"password": "pw", "token_provider": token_provider()}, "LOGIN XOAUTH2", False, True, ["XOAUTH2", "LOGIN"]),
    ({"token_provider": token_provider()}, "LOGIN XOAUTH2", False, True, ["XOAUTH2"]),
    ({"token_provider": token_provider()}, "OAUTHBEARER", False, True, ["OAUTHBEARER"]),
    # pinned: the set and the order
    ({"password": "pw", "auth_mechanisms": ["PLAIN", "LOGIN"]}, "LOGIN PLAIN NTLM", False, True, ["PLAIN", "LOGIN"]),
    ({"password": "pw", "auth_mechanisms": ["LOGIN"]}, "PLAIN", False, True, []),
    ({"token_provider": token_provider(), "auth_mechanisms": ["OAUTHBEARER", "XOAUTH2"]},
     "XOAUTH2 OAUTHBEARER", False, True, ["OAUTHBEARER", "XOAUTH2"]),
    # pinned GSSAPI: no ticket needed up front (username + password get one)
    ({"password": "pw", "auth_mechanisms": ["GSSAPI"]}, "GSSAPI NTLM", False, True, ["GSSAPI"]),
])
def test_mechanism_choice(settings, offered, ticket, spnego, expected):
    cfg = cfg_for(**settings)
    got = plan(cfg, offered.split(), kerberos_ticket=lambda: ticket, spnego_available=lambda: spnego)
    assert got == expected


def test_kerberos_ticket_is_only_looked_for_when_gssapi_is_offered():
    asked = []
    cfg = cfg_for(password="pw")
    plan(cfg, ["LOGIN"], kerberos_ticket=lambda: asked.append(1) or True, spnego_available=lambda: True)
    assert asked == []


# -- against byte-exact fake servers ---------------------------------------------

def session_for(port: int, **kw: Any) -> tuple[mx.Session, mx.Config]:
    kw.setdefault("security", "none")
    kw.setdefault("allow_insecure_auth", True)
    cfg = cfg_for(port=port, ehlo_name="client.example", **kw)
    s = mx.Session(**cfg.session_kwargs(), config=cfg)
    s.connect()
    s.ehlo()
    return s, cfg


def test_no_fallback_after_the_token_is_refused(fake_server):
    srv = fake_server(answering(b"AUTH XOAUTH2 ", b"535 5.7.3 Authentication unsuccessful\r\n"))
    s, cfg = session_for(srv.port, password="the-password-1", token_provider=token_provider())
    with pytest.raises(mx.AuthError) as info:
        authenticate(s, cfg)
    s.close()
    assert info.value.mechanism == "XOAUTH2" and info.value.code == 535
    assert b"AUTH LOGIN" not in srv.wire and b"the-password-1" not in srv.wire


def test_no_fallback_after_ntlm_is_refused(fake_server):
    srv = fake_server(answering(b"AUTH NTLM ", b"535 5.7.3 Authentication unsuccessful\r\n", offer=b"AUTH NTLM LOGIN"))
    s, cfg = session_for(srv.port, password="the-password-2")
    with pytest.raises(mx.AuthError):
        authenticate(s, cfg)
    s.close()
    assert srv.wire.count(b"AUTH ") == 1


def test_a_transient_failure_does_not_fall_back(fake_server):
    srv = fake_server(answering(b"AUTH XOAUTH2 ", b"451 4.7.0 Temporary server error. Please try again later. PRX4\r\n",
                                offer=b"AUTH XOAUTH2 LOGIN"))
    s, cfg = session_for(srv.port, password="pw", token_provider=token_provider())
    with pytest.raises(mx.AuthError) as info:
        authenticate(s, cfg)
    s.close()
    assert info.value.transient and srv.wire.count(b"AUTH ") == 1


def test_an_advertised_but_unknown_mechanism_gives_way(fake_server):
    def script(conn):
        greet(conn, [b"AUTH NTLM LOGIN"])
        conn.expect(b"AUTH NTLM")
        conn.send(b"504 5.7.4 Unrecognized authentication type\r\n")
        answer(conn, b"AUTH LOGIN", *LOGIN_PROMPTS, OK)
    srv = fake_server(script)
    s, cfg = session_for(srv.port, password="pw-3")
    result = authenticate(s, cfg)
    s.close()
    assert result.mechanism == "LOGIN" and result.offered == ("NTLM", "LOGIN") and result.reply.code == 235


def test_a_pinned_mechanism_the_server_lacks_names_the_setting(fake_server):
    def script(conn):
        greet(conn, [b"AUTH LOGIN XOAUTH2"])
        conn.readline()
    srv = fake_server(script)
    s, cfg = session_for(srv.port, password="pw", auth_mechanisms=["NTLM", "PLAIN"])
    with pytest.raises(mx.NotSupportedError) as info:
        authenticate(s, cfg)
    s.close()
    text = str(info.value)
    assert "auth_mechanisms" in text and "['NTLM', 'PLAIN']" in text and "AUTH LOGIN XOAUTH2" in text
    assert "none of the allowed" in text and info.value.stage is mx.Stage.AUTH
    assert b"AUTH" not in srv.wire


def test_oauth_only_server_and_a_password_config_says_what_to_do(fake_server):
    def script(conn):
        greet(conn, [b"AUTH XOAUTH2"])
        conn.readline()
    srv = fake_server(script)
    s, cfg = session_for(srv.port, password="pw")
    with pytest.raises(mx.NotSupportedError, match="basic authentication is off.*oauth_tenant"):
        authenticate(s, cfg)
    s.close()


def _bad_token(value: Any) -> Any:
    return lambda: value


@pytest.mark.parametrize("provider, words", [
    (lambda: (_ for _ in ()).throw(RuntimeError("vault unreachable")), "raised RuntimeError: vault unreachable"),
    (_bad_token(""), "the token is empty"),
    (_bad_token(("", time.time() + 3600)), "the token is empty"),
    (_bad_token(12345), "it returned int"),
    (_bad_token((b"bytes-token", time.time() + 3600)), "is a bytes, not a str"),
    (_bad_token(("tok", time.time() - 60)), "expired"),
    (_bad_token("Bearer abc"), "without 'Bearer '"),
    (_bad_token(("tok", "tomorrow")), "expires_at is a str"),
])
def test_a_bad_provider_fails_before_anything_is_sent(fake_server, provider, words):
    def script(conn):
        greet(conn, [b"AUTH XOAUTH2"])
        conn.readline()
    srv = fake_server(script)
    s, cfg = session_for(srv.port, token_provider=provider)
    with pytest.raises(mx.AuthError) as info:
        authenticate(s, cfg)
    s.close()
    assert words in str(info.value) and "token_provider" in str(info.value)
    assert "nothing was sent" in str(info.value) and info.value.stage is mx.Stage.AUTH
    assert b"AUTH" not in srv.wire


def test_xoauth2_initial_response_is_one_round_trip(fake_server):
    token = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln"

    def script(conn):
        greet(conn, [b"AUTH XOAUTH2"])
        line = conn.expect(b"AUTH XOAUTH2 ")
        assert base64.b64decode(line.split()[2]) == f"user={MAILBOX}\x01auth=Bearer {token}\x01\x01".encode()
        conn.send(OK)
        conn.readline()
    srv = fake_server(script)
    s, cfg = session_for(srv.port, token_provider=token_provider(token))
    result = authenticate(s, cfg)
    lines = [t for _ms, d, t in s.transcript if d == "C"]
    s.close()
    assert result.mechanism == "XOAUTH2" and lines[-1] == "AUTH XOAUTH2 <token redacted>"
    assert token not in " ".join(t for _ms, _d, t in s.transcript)


# -- GSSAPI framing (RFC 4752 section 3.1) ----------------------------------------

class _KerberosContext:
    """Stands in for pyspnego's context: the framing is ours, the crypto is not."""

    def __init__(self) -> None:
        self.complete = False
        self.wrapped: list[tuple[bytes, bool]] = []

    def step(self, token: bytes | None = None) -> bytes | None:
        assert token == b"AP-REP"
        self.complete = True
        return None

    def unwrap(self, data: bytes) -> Any:
        assert data.startswith(b"W:")
        return type("U", (), {"data": data[2:]})()

    def wrap(self, data: bytes, encrypt: bool = True) -> Any:
        self.wrapped.append((data, encrypt))
        return type("W", (), {"data": b"W:" + data})()


def _gssapi_step() -> tuple[GssapiStep, _KerberosContext]:
    step = GssapiStep.__new__(GssapiStep)
    ctx = _KerberosContext()
    step._ctx, step.initial, step.layer_sent, step.spn = ctx, b"AP-REQ", False, "smtp/mail.corp.example"
    return step, ctx


def test_gssapi_security_layer_negotiation():
    step, ctx = _gssapi_step()
    assert step(None) == b"AP-REQ"
    assert step(b"AP-REP") == b""                   # mutual auth done: empty response
    # the server offers layers 1|2|4 and 64 KiB; we take 1 (none), size 0, integrity only
    assert step(b"W:\x07\x00\x01\x00") == b"W:\x01\x00\x00\x00"
    assert ctx.wrapped == [(b"\x01\x00\x00\x00", False)]
    with pytest.raises(mx.AuthError, match="another challenge"):
        step(b"W:\x01\x00\x00\x00")


@pytest.mark.parametrize("offer, words", [(b"W:\x06\x00\x10\x00", "insists on a Kerberos security layer"),
                                          (b"W:\x01\x00", "2 octets, not 4")])
def test_gssapi_bad_security_layer_offers(offer, words):
    step, _ctx = _gssapi_step()
    step(None)
    step(b"AP-REP")
    with pytest.raises(mx.AuthError, match=words):
        step(offer)


# -- the emulator: XOAUTH2 with its tokens, NTLM through pyspnego ------------------

@pytest.fixture
def online():
    em = ConnectorEmulator.preset("exchange_online", users=[User("sender", "Basic-Passw0rd", MAILBOX,
                                                                 rights="self")]).start()
    yield em
    em.stop()


def test_exchange_online_with_a_token_provider(online):
    cfg = online.config(username=MAILBOX, password=None, from_address=MAILBOX,
                        token_provider=online.token_provider(MAILBOX))
    with mx.connect(cfg) as s:
        assert s.auth_result is not None and s.auth_result.mechanism == "XOAUTH2"
        assert s.auth_result.offered == ("LOGIN", "XOAUTH2")
        mx.send_as(cfg, MAILBOX, to="bob@partner.example", subject="t", body="b", session=s)
    assert online.messages[-1].mail_from == MAILBOX


def test_exchange_online_refuses_basic_and_nothing_else_is_tried(online):
    cfg = online.config(username=MAILBOX, password="Basic-Passw0rd", from_address=MAILBOX)
    with pytest.raises(mx.AuthError) as info:
        mx.connect(cfg)
    assert info.value.enhanced == "5.7.139" and info.value.mechanism == "LOGIN"


def test_an_expired_emulator_token_draws_the_json_challenge(online):
    stale = online.issue_token(MAILBOX, expires_in=-120)
    cfg = online.config(username=MAILBOX, password=None, from_address=MAILBOX,
                        token_provider=lambda: stale)
    with pytest.raises(mx.AuthError, match="expired"):
        mx.connect(cfg)            # refused before sending: the JWT says it expired
    # the server's verdict on a token it does not accept, with the RFC 7628 JSON
    wrong = online.issue_token(MAILBOX, audience="https://graph.microsoft.com")
    cfg = cfg.replace(token_provider=lambda: wrong)
    with pytest.raises(mx.AuthError) as info:
        mx.connect(cfg)
    assert info.value.code == 535 and info.value.oauth_error is not None
    assert info.value.oauth_error.get("status") and wrong not in str(info.value)


def test_send_many_outliving_its_tokens_reauthenticates_with_fresh_ones():
    user = User("sender", "Basic-Passw0rd", MAILBOX, rights="self")
    em = ConnectorEmulator.preset("exchange_online", users=[user], max_messages_per_connection=25).start()
    try:
        issued: list[str] = []

        def short_lived() -> tuple[str, float]:
            # good for 2 s: inside the renewal margin, so every connection asks anew
            token = em.issue_token(MAILBOX, expires_in=2)
            issued.append(token)
            return token, time.time() + 2

        cfg = em.config(username=MAILBOX, password=None, from_address=MAILBOX,
                        token_provider=em.token_provider(MAILBOX))
        messages = [{"to": "bob@partner.example", "subject": f"n{i}", "body": "x"} for i in range(100)]
        # batch_size=1: the 421 always meets a MAIL, never a pipelined batch (that race is
        # bulk.py's business, not this test's)
        result = mx.send_many(cfg, messages, reconnects=10, token_provider=short_lived, batch_size=1)
        assert len(result.sent) == 100, [str(e) for _i, e in result.failed][:3]
        assert result.connections == 4
        assert len(issued) == 4 and len(set(issued)) == 4
        subjects = sorted(m.data.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for m in em.messages)
        assert subjects == sorted(f"n{i}" for i in range(100))     # none lost, none twice
    finally:
        em.stop()


def test_basic_auth_emulator_costs_no_ntlm_round_trip(emulator_factory):
    # pyspnego is installed (the windows-auth extra): NTLM would be tried
    # first if the emulator advertised it, and draw 504 there
    import spnego  # noqa: F401
    em = emulator_factory()                            # LOGIN, Basic on
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    with mx.connect(cfg) as s:
        assert s.auth_result is not None and s.auth_result.mechanism == "LOGIN"
        assert s.auth_result.offered == ("GSSAPI", "LOGIN")
        auth_lines = [t for _ms, d, t in s.transcript if d == "C" and t.upper().startswith("AUTH")]
        assert auth_lines == ["AUTH LOGIN"]
    assert [a.outcome for a in em.auth_log] == ["ok"]


def test_ntlm_against_the_emulator_and_a_wrong_password(emulator_factory):
    em = emulator_factory(auth_mechanisms=())          # Basic off: AUTH GSSAPI NTLM
    cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
    with mx.connect(cfg) as s:
        assert s.auth_result is not None and s.auth_result.mechanism == "NTLM"
        auth_lines = [t for _ms, d, t in s.transcript if d == "C"][-2:]
        assert auth_lines == ["AUTH NTLM <response redacted>", "<response redacted>"]
    bad = cfg.replace(password="not-" + SVC.password)
    with pytest.raises(mx.AuthError) as info:
        mx.connect(bad)
    assert info.value.code == 535 and info.value.mechanism == "NTLM"
    assert "not-" + SVC.password not in str(info.value)
