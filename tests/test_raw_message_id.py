"""SendResult.message_id for raw-bytes messages that carry a Message-ID
header (issue 14, item 8): taken from the header block only."""
from __future__ import annotations

import pytest
from fakeserver import greet
from support import plain_session


def _accept(conn):  # type: ignore[no-untyped-def]
    greet(conn)
    conn.expect(b"MAIL FROM")
    conn.send(b"250 ok\r\n")
    conn.expect(b"RCPT TO")
    conn.send(b"250 ok\r\n")
    conn.expect(b"DATA")
    conn.send(b"354 go\r\n")
    conn.read_data()
    conn.send(b"250 2.0.0 queued\r\n")
    conn.readline()


@pytest.mark.parametrize("raw,expected", [
    (b"From: a@x.example\r\nMessage-ID: <1234@x.example>\r\nSubject: s\r\n\r\nbody\r\n",
     "<1234@x.example>"),
    (b"message-id:\r\n <folded@x.example>\r\n\r\nbody\r\n", "<folded@x.example>"),
    (b"From: a@x.example\nMessage-Id: <lf@x.example>\n\nbody\n", "<lf@x.example>"),
    # only the header block counts: a Message-ID line in the body is not the message's
    (b"Subject: s\r\n\r\nMessage-ID: <in-body@x.example>\r\n", None),
    (b"Subject: no id\r\n\r\nbody\r\n", None),
])
def test_raw_bytes_message_id(fake_server, raw, expected):
    srv = fake_server(_accept)
    s = plain_session(srv.port)
    s.connect()
    result = s.send(raw, envelope_from="a@x.example", recipients=["b@y.example"])
    assert result.message_id == expected
    s.close()


def test_the_header_scan_is_bounded():
    from mailexpress.compose import raw_message_id as _raw_message_id
    assert _raw_message_id(memoryview(b"Message-ID: <m@x>\r\n\r\n")) == "<m@x>"
    assert _raw_message_id(bytearray(b"X: " + b"y" * 70000 + b"\r\nMessage-ID: <late@x>\r\n\r\n")) is None
