"""cmd.c, sasl.c and ehlo.c through their test hooks."""
import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailexpress import _testhooks


def test_mail_and_rcpt_format():
    assert _testhooks._cmd_path("MAIL FROM", b"a@b.example", b"SIZE=10") == b"MAIL FROM:<a@b.example> SIZE=10\r\n"
    assert _testhooks._cmd_path("RCPT TO", b"c@d.example", b"") == b"RCPT TO:<c@d.example>\r\n"
    assert _testhooks._cmd_path("MAIL FROM", b"", b"") == b"MAIL FROM:<>\r\n"


@pytest.mark.parametrize("addr", [b"a@b\r\nRCPT TO:<x@y>", b"a\n@b", b"a\x00@b", b"a\r@b"])
def test_control_characters_in_addresses_are_refused(addr):
    with pytest.raises(ValueError, match="CR, LF, NUL"):
        _testhooks._cmd_path("MAIL FROM", addr, b"")


@pytest.mark.parametrize("addr", [b"a@b> SIZE=1", b"<a@b", b"a b@c"])
def test_brackets_and_spaces_in_addresses_are_refused(addr):
    with pytest.raises(ValueError, match="'<', '>' or a space"):
        _testhooks._cmd_path("MAIL FROM", addr, b"")


def test_params_with_crlf_are_refused():
    with pytest.raises(ValueError, match="CR, LF, NUL"):
        _testhooks._cmd_path("MAIL FROM", b"a@b", b"SIZE=1\r\nDATA")


def test_path_length_limit_is_rfc5321():
    ok = b"a" * 240 + b"@b.example"       # 250 octets
    assert _testhooks._cmd_path("RCPT TO", ok, b"").startswith(b"RCPT TO:<a")
    with pytest.raises(ValueError, match="too long"):
        _testhooks._cmd_path("RCPT TO", b"a" * 250 + b"@b.example", b"")


@given(st.binary(max_size=300))
def test_base64_decoder_agrees_with_python_or_refuses(data):
    try:
        ours = _testhooks._b64_decode(data)
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
        _testhooks._b64_decode(bad)


@given(st.binary(max_size=255).filter(lambda b: b"\0" not in b),
       st.binary(max_size=255).filter(lambda b: b"\0" not in b))
def test_sasl_plain_round_trips(user, password):
    encoded = _testhooks._sasl_plain(user, password)
    assert base64.b64decode(encoded) == b"\0" + user + b"\0" + password


def test_sasl_plain_refuses_nul_and_overlong():
    with pytest.raises(ValueError, match="NUL"):
        _testhooks._sasl_plain(b"a\0b", b"pw")
    with pytest.raises(ValueError, match="255"):
        _testhooks._sasl_plain(b"u", b"p" * 256)


EXCHANGE_ONLINE = (b"250-BN0PR01CA0001.outlook.office365.com Hello [203.0.113.9]\r\n"
                   b"250-SIZE 157286400\r\n250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n"
                   b"250-AUTH LOGIN XOAUTH2\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n"
                   b"250 SMTPUTF8\r\n")


def test_exchange_online_capabilities():
    exts, mechs, size = _testhooks._ehlo_parse(EXCHANGE_ONLINE)
    assert exts == {"SIZE", "PIPELINING", "DSN", "ENHANCEDSTATUSCODES", "AUTH", "8BITMIME",
                    "BINARYMIME", "CHUNKING", "SMTPUTF8"}
    assert mechs == {"LOGIN", "XOAUTH2"} and size == 157286400


def test_old_style_auth_and_unknown_mechanisms():
    exts, mechs, _ = _testhooks._ehlo_parse(b"250-x\r\n250-AUTH=LOGIN PLAIN\r\n250 AUTH SCRAM-SHA-256 ntlm\r\n")
    assert "AUTH" in exts and mechs == {"LOGIN", "PLAIN", "NTLM", "OTHER"}


@pytest.mark.parametrize("value, expect", [
    (b"99999999999999999999", 2**64 - 1), (b"abc", 0), (b"", 0), (b"0", 0), (b"18446744073709551615", 2**64 - 1),
    (b"18446744073709551616", 2**64 - 1), (b"1024", 1024)])
def test_absurd_size_values_are_parsed_safely(value, expect):
    _exts, _mechs, size = _testhooks._ehlo_parse(b"250-x\r\n250 SIZE " + value + b"\r\n")
    assert size == expect


def test_greeting_line_is_not_a_capability():
    exts, _m, _s = _testhooks._ehlo_parse(b"250-STARTTLS is my host name\r\n250 8BITMIME\r\n")
    assert exts == {"8BITMIME"}


# ---- AUTH mechanisms from several lines (ehlo.c) --------------------------------

def ehlo_reply(*lines: bytes) -> bytes:
    all_lines = [b"fake.example", *lines]
    return b"".join(b"250-" + x + b"\r\n" for x in all_lines[:-1]) + b"250 " + all_lines[-1] + b"\r\n"


def test_exchange_2003_four_auth_lines_merge():
    reply = ehlo_reply(b"X-EXPS GSSAPI NTLM LOGIN", b"X-EXPS=LOGIN", b"AUTH GSSAPI NTLM LOGIN",
                       b"AUTH=LOGIN", b"8BITMIME")
    assert _testhooks._ehlo_auth_list(reply) == "GSSAPI NTLM LOGIN"
    exts, mechs, _ = _testhooks._ehlo_parse(reply)
    assert "AUTH" in exts and mechs == {"GSSAPI", "NTLM", "LOGIN"}


def test_exchange_2016_auth_and_x_exps_merge():
    reply = ehlo_reply(b"AUTH NTLM", b"X-EXPS GSSAPI NTLM", b"CHUNKING")
    assert _testhooks._ehlo_auth_list(reply) == "NTLM GSSAPI"
    assert _testhooks._ehlo_parse(reply)[1] == {"NTLM", "GSSAPI"}


def test_x_exps_alone_counts_as_auth():
    reply = ehlo_reply(b"X-EXPS=oauthbearer xoauth2", b"SIZE 10")
    exts, mechs, _ = _testhooks._ehlo_parse(reply)
    assert "AUTH" in exts and mechs == {"OAUTHBEARER", "XOAUTH2"}
    assert _testhooks._ehlo_auth_list(reply) == "OAUTHBEARER XOAUTH2"


def test_auth_union_is_upper_case_first_seen_without_duplicates():
    reply = ehlo_reply(b"AUTH=login  plain", b"AUTH PLAIN Login SCRAM-SHA-256", b"X-EXPS ntlm LOGIN")
    assert _testhooks._ehlo_auth_list(reply) == "LOGIN PLAIN SCRAM-SHA-256 NTLM"
    assert _testhooks._ehlo_auth_list(ehlo_reply(b"8BITMIME", b"AUTHX LOGIN")) == ""


def test_auth_union_is_bounded():
    many = b"AUTH " + b" ".join(b"M%d" % i for i in range(100))
    names = _testhooks._ehlo_auth_list(ehlo_reply(many)).split()
    assert names == ["M%d" % i for i in range(64)]
    # names that do not fit the output are left out whole, never cut
    assert _testhooks._ehlo_auth_list(ehlo_reply(b"AUTH LOGIN PLAIN XOAUTH2"), 12) == "LOGIN PLAIN"
    assert _testhooks._ehlo_auth_list(ehlo_reply(b"AUTH LOGIN"), 1) == ""


@given(st.lists(st.sampled_from(["PLAIN", "login", "Ntlm", "GSSAPI", "X-1", "xoauth2"]), max_size=12),
       st.lists(st.sampled_from([b"AUTH ", b"AUTH=", b"X-EXPS ", b"X-EXPS="]), min_size=1, max_size=4))
def test_auth_union_matches_a_model(names, prefixes):
    chunks = [names[i::len(prefixes)] for i in range(len(prefixes))]
    lines = [p + " ".join(c).encode() for p, c in zip(prefixes, chunks) if c]
    expect: list[str] = []
    for c in chunks:
        for n in c:
            if n.upper() not in expect:
                expect.append(n.upper())
    got = _testhooks._ehlo_auth_list(ehlo_reply(*lines, b"8BITMIME"))
    # the model: lines in order, names in order within each line
    model: list[str] = []
    for line in lines:
        for n in line.split(b" " if b" " in line[:7] else b"=", 1)[1].split():
            if n.decode().upper() not in model:
                model.append(n.decode().upper())
    assert got.split() == model and set(model) == set(expect)


# ---- XOAUTH2 / OAUTHBEARER framing and challenge decoding (sasl.c) ------------------

def test_xoauth2_message():
    assert _testhooks._sasl_oauth(b"u@x", b"tok.en-_~+/=") == b"user=u@x\x01auth=Bearer tok.en-_~+/=\x01\x01"


def test_oauthbearer_gs2_header_and_escaping():
    assert (_testhooks._sasl_oauth(b"a,b=c", b"t", b"smtp.example", 587)
            == b"n,a=a=2Cb=3Dc,\x01host=smtp.example\x01port=587\x01auth=Bearer t\x01\x01")
    # host and port are optional (RFC 7628 §3.1)
    assert _testhooks._sasl_oauth(b"u", b"t", b"", 0) == b"n,a=u,\x01auth=Bearer t\x01\x01"
    assert _testhooks._sasl_oauth(b"u", b"t", b"", 65535) == b"n,a=u,\x01port=65535\x01auth=Bearer t\x01\x01"


@pytest.mark.parametrize("user,token,why", [
    (b"u", b"", "is empty"),
    (b"u", b"a b", "bearer token"),
    (b"u", b"a\x01b", "bearer token"),
    (b"u", b"\xc3\xa9", "bearer token"),
    (b"u", b"x" * 65537, "longer"),
    (b"u\x01", b"t", "control character"),
    (b"u\x00", b"t", "NUL"),
    (b"u" * 256, b"t", "longer"),
])
def test_oauth_fields_are_checked(user, token, why):
    with pytest.raises(ValueError, match=why):
        _testhooks._sasl_oauth(user, token)
    with pytest.raises(ValueError, match=why):
        _testhooks._sasl_oauth(user, token, b"h", 1)


def test_64k_token_frames():
    token = b"k" * 65536
    assert _testhooks._sasl_oauth(b"u", token).endswith(token + b"\x01\x01")
    assert len(_testhooks._sasl_oauth(b"u" * 255, token, b"h" * 255, 65535)) > 65536


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=80))
def test_oauthbearer_user_escaping_round_trips(user):
    msg = _testhooks._sasl_oauth(user.encode(), b"t", b"", 0)
    saslname = msg[len(b"n,a="):msg.index(b",\x01")]
    assert b"," not in saslname
    assert saslname.replace(b"=2C", b",").replace(b"=3D", b"=") == user.encode()


def test_challenge_decoding_is_bounded():
    assert _testhooks._sasl_challenge(b"") == b""
    assert _testhooks._sasl_challenge(base64.b64encode(b"x" * 65536)) == b"x" * 65536
    with pytest.raises(ValueError, match="longer"):
        _testhooks._sasl_challenge(base64.b64encode(b"x" * 65537))
    with pytest.raises(ValueError, match="base64"):
        _testhooks._sasl_challenge(b"e30")
