"""Session: states, threads, the GIL, context management."""
from __future__ import annotations

import threading

import pytest
from support import plain_session

import mailexpress as mx


def test_context_manager_quits(cfg, emulator):
    with mx.connect(cfg) as s:
        assert s.state == "READY" and s.authenticated
        assert repr(s).startswith("<mailexpress.Session 127.0.0.1:")
    assert s.state == "CLOSED"
    assert s.transcript[-1][2].startswith("221")


def test_methods_need_a_connection():
    s = mx.Session("127.0.0.1", 1)
    with pytest.raises(mx.StateError, match="not connected"):
        s.noop()
    assert s.quit() is None


def test_connect_twice_is_refused(cfg):
    s = mx.connect(cfg)
    with pytest.raises(mx.StateError, match="already called"):
        s.connect()
    s.close()


def test_closed_session_refuses_further_commands(cfg):
    s = mx.connect(cfg)
    s.close()
    with pytest.raises(mx.StateError, match="closed"):
        s.mail("a@corp.example")


def test_low_level_methods_return_replies(cfg):
    with mx.connect(cfg) as s:
        r = s.mail("nobody@partner.example")
        assert r.code == 550 and r.stage is mx.Stage.MAIL and not r.ok
        assert s.state == "READY"
        assert s.mail("alice@corp.example").ok and s.state == "MAIL"
        with pytest.raises(mx.StateError, match="no transaction open"):
            s.mail("alice@corp.example")
        assert s.rcpt("b@partner.example").ok and s.state == "RCPT"
        assert s.data(b"Subject: x\r\n\r\nhi\r\n").code == 250 and s.state == "READY"
        assert s.noop().ok and s.rset().ok


def test_data_requires_accepted_recipient(cfg):
    with mx.connect(cfg) as s:
        with pytest.raises(mx.StateError, match="accepted recipient"):
            s.data(b"x")


def test_str_body_is_a_type_error(cfg):
    with mx.connect(cfg) as s:
        s.mail("alice@corp.example")
        s.rcpt("b@partner.example")
        with pytest.raises(TypeError, match="bytes"):
            s.data("text")


def test_second_thread_gets_concurrent_use_error(fake_server):
    entered, release = threading.Event(), threading.Event()

    def script(conn):
        conn.send(b"220 fake\r\n")
        conn.expect(b"EHLO")
        entered.set()
        release.wait(10)
        conn.send(b"250 fake\r\n")
        conn.readline()
    srv = fake_server(script)
    s = plain_session(srv.port)
    s.connect()
    errors = []
    t = threading.Thread(target=lambda: errors.append(s.ehlo()))
    t.start()
    assert entered.wait(5)
    with pytest.raises(mx.ConcurrentUseError):
        s.noop()
    release.set()
    t.join(5)
    assert errors and errors[0].code == 250
    s.close()


def test_gil_is_released_while_waiting(fake_server):
    # The server answers only once this (Python) thread has run while the
    # client waits in C.  With the GIL held, this would time out instead.
    waiting, answered = threading.Event(), threading.Event()

    def script(conn):
        conn.send(b"220 fake\r\n")
        conn.expect(b"EHLO")
        waiting.set()
        answered.wait(10)
        conn.send(b"250 fake\r\n")
        conn.readline()
    srv = fake_server(script)
    s = plain_session(srv.port, timeouts={"ehlo": 8})
    s.connect()
    seen = []

    def helper():
        waiting.wait(10)
        seen.append("ran while the client waited")
        answered.set()
    t = threading.Thread(target=helper)
    t.start()
    reply = s.ehlo()
    t.join(5)
    assert reply.code == 250 and seen == ["ran while the client waited"]
    s.close()


def test_sessions_on_many_threads(cfg, emulator):
    def work(i):
        with mx.connect(cfg) as s:
            for j in range(5):
                mx.send_as(cfg, "alice@corp.example", to="b@partner.example", subject=f"{i}-{j}",
                           body=f"{i}-{j}", session=s)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    subjects = sorted(m.message["Subject"] for m in emulator.messages)
    assert subjects == sorted(f"{i}-{j}" for i in range(4) for j in range(5))


def test_subclass_and_transcript_bounds(cfg):
    class Mine(mx.Session):
        pass
    s = Mine(**cfg.session_kwargs(), transcript=False)
    s.connect()
    s.ehlo()
    assert s.transcript == [] and s.state == "READY"
    s.close()


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="security"):
        mx.Session("h", 25, security="tls")
    with pytest.raises(ValueError, match="port"):
        mx.Session("h", 0)
    with pytest.raises(ValueError, match="timeouts: unknown stage"):
        mx.Session("h", 25, timeouts={"bogus": 1})
    with pytest.raises(ValueError, match="seconds"):
        mx.Session("h", 25, timeouts={"mail": -1})
    with pytest.raises(ValueError, match="ehlo_name"):
        mx.Session("h", 25, ehlo_name="bad name")
    with pytest.raises(ValueError, match="auth_mechanisms"):
        mx.Session("h", 25, auth_mechanisms=["CRAM-MD5"])


def test_input_errors_send_nothing(fake_server):
    def script(conn):
        conn.send(b"220 fake\r\n")
        conn.ehlo([b"AUTH PLAIN"])
        conn.readline()
    srv = fake_server(script)
    s = plain_session(srv.port, allow_insecure_auth=True)
    s.connect()
    s.ehlo()
    with pytest.raises(mx.InputError):
        s.mail("a@b\r\nRSET")
    with pytest.raises(mx.InputError):
        s.mail("a@b", ["SIZE=1\r\nRSET"])
    with pytest.raises(mx.InputError):
        s.ehlo("evil\r\nMAIL FROM:<x>")
    with pytest.raises(mx.InputError):
        s.login("user\x00x", "pw")
    with pytest.raises(mx.InputError, match="255"):
        s.login("user", "p" * 300)
    s.close()
    assert srv.wire == b"EHLO client.example\r\n"
