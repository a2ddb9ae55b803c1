"""reply.c: the sans-I/O reply parser, fed bytes directly."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailexpress import _testhooks

parse = _testhooks._reply_parse


def test_single_line_reply_with_enhanced_code():
    replies, used, err = parse(b"550 5.7.1 Client does not have permissions\r\n")
    assert err is None and used == 44
    assert replies == [(550, "5.7.1", [b"5.7.1 Client does not have permissions"])]


def test_multiline_reply_collects_every_line():
    data = b"250-mail.corp.example Hello\r\n250-SIZE 100\r\n250 AUTH LOGIN\r\n"
    replies, used, err = parse(data)
    assert err is None and used == len(data)
    assert replies == [(250, None, [b"mail.corp.example Hello", b"SIZE 100", b"AUTH LOGIN"])]


def test_last_line_code_alone_is_accepted():
    assert parse(b"250-first\r\n250\r\n")[0] == [(250, None, [b"first", b""])]


def test_continuation_text_that_looks_like_a_code_is_text():
    assert parse(b"250-234 text\r\n250 ok\r\n")[0] == [(250, None, [b"234 text", b"ok"])]


def test_lines_with_different_codes_are_a_protocol_error():
    _replies, _used, err = parse(b"250-a\r\n251 b\r\n")
    assert err == "lines of one multi-line reply carry different codes"


@pytest.mark.parametrize("line", [b"2x0 text\r\n", b"25\r\n", b"600 bad\r\n", b"\r\n",
                                  b"199 low\r\n", b"260 bad second digit\r\n", b"250_under\r\n"])
def test_invalid_codes_are_refused(line):
    replies, _used, err = parse(line)
    assert replies == [] and err and "valid 3-digit code" in err


@pytest.mark.parametrize("text", [b"250 a\x00b\r\n", b"250 a\rb\r\n", b"250 a\x1bb\r\n"])
def test_control_bytes_in_text_are_refused(text):
    assert parse(text)[2] == "reply contains a NUL, bare CR or other control byte"


def test_enhanced_code_must_match_the_reply_class():
    assert parse(b"250 5.7.1 odd\r\n")[0][0][1] is None
    assert parse(b"450 4.2.0 later\r\n")[0][0][1] == "4.2.0"
    assert parse(b"550 5.7.1234 too long\r\n")[0][0][1] is None
    assert parse(b"550 5.7.1\r\n")[0][0][1] == "5.7.1"


def test_bare_lf_line_ends_are_tolerated():
    assert parse(b"220 hi\n")[0] == [(220, None, [b"hi"])]


def test_bytes_after_a_reply_are_left_for_the_next():
    replies, used, err = parse(b"250 ok\r\n250 two\r\n354 go")
    assert [r[0] for r in replies] == [250, 250] and used == len(b"250 ok\r\n250 two\r\n354 go")
    assert err is None


def test_a_line_of_64_kib_is_kept_whole():
    # Exchange Online's SendAsDenied refusal at end of data is one line of
    # 1,500 octets and more; the bound is 64 KiB a line, kept whole
    text = b"5.2.252 SendAsDenied; " + b"d" * (65536 - 4 - 22 - 2)
    wire = b"554 " + text + b"\r\n"
    assert len(wire) == 65536
    replies, used, err = parse(wire, 1000)
    assert err is None and used == len(wire)
    assert replies == [(554, "5.2.252", [text])]


def test_a_line_past_64_kib_is_an_error_without_reading_further():
    replies, used, err = parse(b"250 " + b"x" * 70000)
    assert err == "reply line longer than 65536 octets" and used <= 65536 and replies == []


def test_one_line_of_64_kib_plus_its_lf_is_the_bound():
    # the bound counts the line without its LF: CR included, as on the wire
    ok = b"250 " + b"x" * (65536 - 5) + b"\r\n"
    assert parse(ok)[2] is None
    bad = b"250 " + b"x" * (65536 - 3) + b"\r\n"
    assert parse(bad)[2] == "reply line longer than 65536 octets"


def test_one_mebibyte_without_newline_is_bounded():
    _r, used, err = parse(b"2" * (1 << 20), 4096)
    assert err == "reply line longer than 65536 octets" and used <= 65536 + 4096


def test_endless_continuation_lines_are_bounded():
    _r, _used, err = parse(b"250-x\r\n" * 1000)
    assert err == "reply has more than 128 lines"


def test_total_text_is_bounded():
    _r, _used, err = parse((b"250-" + b"y" * 60000 + b"\r\n") * 5)
    assert err == "reply text longer than 262144 octets"


def test_many_long_lines_within_the_whole_reply_bound():
    lines = [b"y" * 2000] * 100
    wire = b"".join(b"250-" + t + b"\r\n" for t in lines[:-1]) + b"250 " + lines[-1] + b"\r\n"
    replies, used, err = parse(wire, 333)
    assert err is None and used == len(wire) and replies[0][2] == lines


@given(st.lists(st.tuples(st.integers(200, 559).filter(lambda c: (c // 10) % 10 <= 5),
                          st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                           max_size=40), min_size=1, max_size=5)),
                min_size=1, max_size=5),
       st.integers(1, 17))
def test_any_split_of_valid_replies_parses_the_same(replies, chunk):
    wire = b""
    for code, lines in replies:
        for i, text in enumerate(lines):
            sep = b" " if i == len(lines) - 1 else b"-"
            wire += str(code).encode() + sep + text.encode() + b"\r\n"
    got, used, err = parse(wire, chunk)
    assert err is None and used == len(wire)
    assert [(c, [x.decode() for x in ls]) for c, _e, ls in got] == replies


@given(st.binary(max_size=600), st.integers(0, 64))
def test_arbitrary_bytes_never_crash(data, chunk):
    replies, used, err = parse(data, chunk)
    assert 0 <= used <= len(data)
    for code, _enh, lines in replies:
        assert 200 <= code <= 559 and len(lines) >= 1
