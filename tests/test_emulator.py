"""The emulator itself: the peer other tests trust must be right too."""
from __future__ import annotations

import socket

import pytest

from mailexpress.testing import ConnectorEmulator, User


def talk(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    out = b""
    while not out.endswith(b"\r\n") or out.split(b"\r\n")[-2][3:4] == b"-":
        out += sock.recv(65536)
    return out


@pytest.fixture
def plain_emulator():
    em = ConnectorEmulator(users=[User("u", "p", "u@corp.example", rights="any")], security="none",
                           chunking=True, allow_anonymous=True).start()
    yield em
    em.stop()


def test_bdat_chunks_are_joined_byte_exact(plain_emulator):
    with socket.create_connection((plain_emulator.host, plain_emulator.port), timeout=5) as s:
        assert s.recv(1024).startswith(b"220 ")
        assert b"CHUNKING" in talk(s, b"EHLO t\r\n")
        assert talk(s, b"MAIL FROM:<x@partner.example>\r\n").startswith(b"250")
        assert talk(s, b"RCPT TO:<y@corp.example>\r\n").startswith(b"250")
        assert talk(s, b"BDAT 5\r\n.a\r\nb").startswith(b"250 2.0.0 5 octets")
        assert talk(s, b"BDAT 3 LAST\r\n\r\n.").startswith(b"250 2.6.0")
    assert plain_emulator.messages[-1].data == b".a\r\nb\r\n."


def test_pipelined_commands_are_answered_in_order(plain_emulator):
    with socket.create_connection((plain_emulator.host, plain_emulator.port), timeout=5) as s:
        s.recv(1024)
        talk(s, b"EHLO t\r\n")
        s.sendall(b"MAIL FROM:<x@partner.example>\r\nRCPT TO:<y@corp.example>\r\nRSET\r\n")
        out = b""
        while out.count(b"\r\n") < 3:
            out += s.recv(1024)
    assert [line[:3] for line in out.split(b"\r\n")[:3]] == [b"250", b"250", b"250"]


def test_unknown_preset():
    with pytest.raises(ValueError, match="known: exchange_client"):
        ConnectorEmulator.preset("nope")
