"""cmd.c, sasl.c and ehlo.c through their test hooks."""
import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailexpress import _core


def test_mail_and_rcpt_format():
    assert _core._cmd_path("MAIL FROM", b"a@b.example", b"SIZE=10") == b"MAIL FROM:<a@b.example> SIZE=10\r\n"
    assert _core._cmd_path("RCPT TO", b"c@d.example", b"") == b"RCPT TO:<c@d.example>\r\n"
    assert _core._cmd_path("MAIL FROM", b"", b"") == b"MAIL FROM:<>\r\n"


@pytest.mark.parametrize("addr", [b"a@b\r\nRCPT TO:<x@y>", b"a\n@b", b"a\x00@b", b"a\r@b"])
def test_control_characters_in_addresses_are_refused(addr):
    with pytest.raises(ValueError, match="CR, LF, NUL"):
        _core._cmd_path("MAIL FROM", addr, b"")


@pytest.mark.parametrize("addr", [b"a@b> SIZE=1", b"<a@b", b"a b@c"])
def test_brackets_and_spaces_in_addresses_are_refused(addr):
    with pytest.raises(ValueError, match="'<', '>' or a space"):
        _core._cmd_path("MAIL FROM", addr, b"")


def test_params_with_crlf_are_refused():
    with pytest.raises(ValueError, match="CR, LF, NUL"):
        _core._cmd_path("MAIL FROM", b"a@b", b"SIZE=1\r\nDATA")


def test_path_length_limit_is_rfc5321():
    ok = b"a" * 240 + b"@b.example"       # 250 octets
    assert _core._cmd_path("RCPT TO", ok, b"").startswith(b"RCPT TO:<a")
    with pytest.raises(ValueError, match="too long"):
        _core._cmd_path("RCPT TO", b"a" * 250 + b"@b.example", b"")


@given(st.binary(max_size=300))
def test_base64_decoder_agrees_with_python_or_refuses(data):
    try:
        ours = _core._b64_decode(data)
    except ValueError:
        ours = None
    try:
        theirs = base64.b64decode(data, validate=True) if len(data) % 4 == 0 else None
    except ValueError:
        theirs = None
    if theirs is not None and ours is None:
        # we refuse only non-canonical encodings (non-zero pad bits), which Python accepts
        assert base64.b64encode(theirs) != data, f"refused canonical base64 {data!r}"
    if ours is not None:
        assert ours == theirs


@pytest.mark.parametrize("bad", [b"abc", b"a===", b"ab=c", b"====", b"ab\x00c", b"YW Jj", b"QR==", b"QUJ="])
def test_invalid_base64_is_refused(bad):
    with pytest.raises(ValueError, match="not valid base64"):
        _core._b64_decode(bad)


@given(st.binary(max_size=255).filter(lambda b: b"\0" not in b),
       st.binary(max_size=255).filter(lambda b: b"\0" not in b))
def test_sasl_plain_round_trips(user, password):
    encoded = _core._sasl_plain(user, password)
    assert base64.b64decode(encoded) == b"\0" + user + b"\0" + password


def test_sasl_plain_refuses_nul_and_overlong():
    with pytest.raises(ValueError, match="NUL"):
        _core._sasl_plain(b"a\0b", b"pw")
    with pytest.raises(ValueError, match="255"):
        _core._sasl_plain(b"u", b"p" * 256)


EXCHANGE_ONLINE = (b"250-BN0PR01CA0001.outlook.office365.com Hello [203.0.113.9]\r\n"
                   b"250-SIZE 157286400\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n"
                   b"250-AUTH LOGIN XOAUTH2\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n"
                   b"250 SMTPUTF8\r\n")


def test_exchange_online_capabilities():
    exts, mechs, size = _core._ehlo_parse(EXCHANGE_ONLINE)
    assert exts == {"SIZE", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES", "AUTH", "8BITMIME",
                    "BINARYMIME", "CHUNKING", "SMTPUTF8"}
    assert mechs == {"LOGIN", "XOAUTH2"} and size == 157286400


def test_old_style_auth_and_unknown_mechanisms():
    exts, mechs, _ = _core._ehlo_parse(b"250-x\r\n250-AUTH=LOGIN PLAIN\r\n250 AUTH SCRAM-SHA-256 ntlm\r\n")
    assert "AUTH" in exts and mechs == {"LOGIN", "PLAIN", "NTLM", "OTHER"}


@pytest.mark.parametrize("value, expect", [
    (b"99999999999999999999", 2**64 - 1), (b"abc", 0), (b"", 0), (b"0", 0), (b"18446744073709551615", 2**64 - 1),
    (b"18446744073709551616", 2**64 - 1), (b"1024", 1024)])
def test_absurd_size_values_are_parsed_safely(value, expect):
    _exts, _mechs, size = _core._ehlo_parse(b"250-x\r\n250 SIZE " + value + b"\r\n")
    assert size == expect


def test_greeting_line_is_not_a_capability():
    exts, _m, _s = _core._ehlo_parse(b"250-STARTTLS is my host name\r\n250 8BITMIME\r\n")
    assert exts == {"8BITMIME"}
