"""body.c: CRLF normalisation, dot-stuffing and the single end marker."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailexpress import _testhooks

encode = _testhooks._body_encode


def unstuff(wire: bytes) -> bytes:
    """What a server keeps: lines without the stuffed dot, up to the marker."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    body = wire[:-3]
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    out = []
    for line in lines[:-1]:
        assert b"\r" not in line and b"\n" not in line, "a bare CR or LF reached the wire"
        out.append(line[1:] if line.startswith(b".") else line)
    return b"".join(x + b"\r\n" for x in out)


def normalise(data: bytes) -> bytes:
    """The expected message: every line end CRLF, a final CRLF added."""
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if text and not text.endswith(b"\n"):
        text += b"\n"
    return text.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("data, wire", [
    (b"", b".\r\n"),
    (b"a", b"a\r\n.\r\n"),
    (b"a\r\n", b"a\r\n.\r\n"),
    (b".", b"..\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),
    (b"a\r.b", b"a\r\n..b\r\n.\r\n"),
    (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
    (b"a\n\nb", b"a\r\n\r\nb\r\n.\r\n"),
    (b"x.y\r\n..\r\n", b"x.y\r\n...\r\n.\r\n"),
    (b"\xc3\xa9t\xc3\xa9\n", b"\xc3\xa9t\xc3\xa9\r\n.\r\n"),
    (b"end\r", b"end\r\n.\r\n"),
])
def test_known_encodings(data, wire):
    assert encode(data) == wire


@given(st.binary(max_size=3000), st.integers(0, 50), st.integers(5, 80))
def test_wire_unstuffs_back_to_the_normalised_input(data, chunk, out_cap):
    wire = encode(data, chunk, out_cap)
    assert unstuff(wire) == normalise(data)
    # exactly one end-of-data marker, at the very end
    assert (b"\r\n" + wire).count(b"\r\n.\r\n") == 1


@given(st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"..", b"\xff"]), max_size=60),
       st.integers(1, 7))
def test_chunk_boundaries_do_not_change_the_output(parts, chunk):
    data = b"".join(parts)
    assert encode(data, chunk, 5) == encode(data)


@pytest.mark.parametrize("data, size, eight", [
    (b"", 0, False),
    (b"a", 3, False),
    (b"a\nb", 6, False),
    (b"a\r\nb\r\n", 6, False),
    (b".a\r\n", 4, False),          # SIZE counts no stuffed dots (RFC 1870)
    (b"\xe9\n", 3, True),
])
def test_scan_gives_rfc1870_size_and_8bit(data, size, eight):
    assert _testhooks._body_scan(data) == (size, eight, False)


@given(st.binary(max_size=2000))
def test_scan_size_equals_the_unstuffed_length(data):
    assert _testhooks._body_scan(data)[0] == len(normalise(data))


@given(st.lists(st.sampled_from([b"a" * 7, b"b" * 9, b"\r", b"\n", b"\r\n", b"\x00", b"\x80", b"\xff",
                                 b".", b"x" * 17]), max_size=40))
def test_scan_finds_8bit_and_nul_wherever_they_are(parts):
    """The scanner skips plain runs eight bytes at a time: every position
    of a special byte relative to those words must still be seen."""
    data = b"".join(parts)
    assert _testhooks._body_scan(data) == (len(normalise(data)), any(b >= 0x80 for b in data), 0 in data)
