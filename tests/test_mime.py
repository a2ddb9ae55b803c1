"""The fast builder (mailexpress.mime) means what EmailMessage means.

Both are built from the same arguments and parsed back with the standard
library's parser (policy=default); headers (decoded), MIME structure and
payloads must agree.  Header injection is refused naming the field.
"""
from __future__ import annotations

import email.policy
import re
from email.message import EmailMessage
from email.parser import BytesParser, Parser

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mailexpress as mx
from mailexpress import mime

PARSER = BytesParser(policy=email.policy.default)

# What str.splitlines ends a line at, and NUL: refused in a header, by
# EmailMessage (ValueError) as by us (InputError naming the field).
LINE_BREAKS = "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# The other control characters (C0 but those, DEL, C1): EmailMessage carries
# them (raw in ASCII text, obsolete syntax; in encoded words otherwise); we
# write encoded words.  Either way they come back as they were given.
CONTROLS = [c for c in map(chr, [*range(1, 32), *range(0x7f, 0xa0)]) if c not in LINE_BREAKS + "\t"]
# Header text: any character but those refused; non-ASCII, quotes, commas,
# "=?" and control characters included (drawn often: a plain alphabet seldom has them).
header_char = st.characters(blacklist_categories=("Cs", "Zl", "Zp"),
                            blacklist_characters=LINE_BREAKS + "\0") | st.sampled_from(CONTROLS)
header_text = st.text(header_char, max_size=120)
# Body text: what str.splitlines (which EmailMessage uses) and CRLF agree on.
body_text = st.text(st.characters(blacklist_categories=("Cs",),
                                  blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\0"),
                    max_size=600)
# long enough to fold many times (EmailMessage's folder is slow beyond this)
long_header = st.integers(min_value=100, max_value=400).map(lambda n: "Grüße " * (n // 12) + "x" * (n // 2))
long_line = st.integers(min_value=990, max_value=1500).map(lambda n: "ü" * (n // 3) + "a" * n)
local = st.from_regex(r"[a-z0-9][a-z0-9._+-]{0,20}", fullmatch=True).filter(
    lambda s: ".." not in s and not s.endswith("."))
addr_spec = st.builds(lambda lp, d: f"{lp}@{d}.example", local,
                      st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True))
display = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
                                blacklist_characters='"\\<>()') | st.sampled_from(CONTROLS),
                  max_size=60).map(str.strip)
address = st.builds(lambda n, a: (n, a), display, addr_spec)
filename = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
                                 blacklist_characters='"\\/') | st.sampled_from(CONTROLS),
                   min_size=1, max_size=40).map(str.strip).filter(bool)
attachment = st.tuples(filename, st.binary(max_size=600))


def fmt(name: str, addr: str) -> str:
    if not name:
        return addr
    return f'"{name}" <{addr}>' if re.search(r'[,;:@.\[\]]', name) else f"{name} <{addr}>"


def reference(sender, to, cc, reply_to, subject, body, html, attachments, headers,
              eight_bit) -> EmailMessage:
    """What the standard library builds for the same arguments."""
    policy = email.policy.SMTP.clone(cte_type="8bit" if eight_bit else "7bit")
    m = EmailMessage(policy=policy)
    m["From"] = sender
    if to:
        m["To"] = ", ".join(to)
    if cc:
        m["Cc"] = ", ".join(cc)
    if reply_to:
        m["Reply-To"] = reply_to
    m["Subject"] = subject
    for k, v in headers.items():
        m[k] = v
    if body is not None:
        m.set_content(body)
        if html is not None:
            m.add_alternative(html, subtype="html")
    else:
        m.set_content(html, subtype="html")
    for fn, data in attachments:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=fn)
    return m


def addresses(h) -> list[tuple[str, str]]:
    # Whitespace in a display name (a phrase) is not compared: EmailMessage
    # collapses runs of it, and the standard library's parser keeps the folding
    # whitespace between two adjacent encoded words of a phrase (RFC 2047 6.2
    # says to ignore it), so a long non-ASCII name comes back with a space
    # where it was split.  Every other character is compared.
    return [(re.sub(r"\s+", "", a.display_name), a.addr_spec) for a in h.addresses] \
        if h is not None else []


def summary(msg) -> dict[str, object]:
    """What a message means, as the standard library reads it."""
    parts = []
    for p in msg.walk():
        if p.is_multipart():
            parts.append((p.get_content_type(),))
        elif p.get_content_maintype() == "text" and not p.get_filename():
            parts.append((p.get_content_type(), p.get_content().replace("\r\n", "\n")))
        else:
            parts.append((p.get_content_type(), p.get_filename(), p.get_content()))
    return {
        "from": addresses(msg["From"]), "to": addresses(msg["To"]), "cc": addresses(msg["Cc"]),
        "reply-to": addresses(msg["Reply-To"]), "subject": str(msg["Subject"]),
        "x-note": str(msg["X-Note"]) if msg["X-Note"] is not None else None,
        "parts": parts, "defects": [type(d).__name__ for p in msg.walk() for d in p.defects],
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sender=address, to=st.lists(address, min_size=1, max_size=4),
       cc=st.lists(address, max_size=3), reply_to=st.none() | address,
       subject=header_text | long_header, note=st.none() | header_text.filter(str.strip),
       body=st.none() | body_text | long_line, html=st.none() | body_text,
       attachments=st.lists(attachment, max_size=2), eight_bit=st.booleans())
@example(sender=("Jörg Müller", "j@corp.example"), to=[("Doe, John", "jd@x.example")], cc=[],
         reply_to=None, subject="=?utf-8?q?not_an_encoded_word?=", note=None,
         body="x" * 2000, html=None, attachments=[("ä b.pdf", b"\0\1")], eight_bit=False)
def test_means_what_email_message_means(sender, to, cc, reply_to, subject, note, body, html,
                                        attachments, eight_bit):
    if body is None and html is None:
        body = ""
    sender_s, to_s, cc_s = fmt(*sender), [fmt(*a) for a in to], [fmt(*a) for a in cc]
    rt_s = fmt(*reply_to) if reply_to else None
    headers = {"X-Note": note} if note is not None else {}
    ours, message_id = mime.build(sender=sender_s, to=to_s, cc=cc_s, reply_to=rt_s,
                                  subject=subject, body=body, html=html, headers=headers,
                                  attachments=[(fn, data, "application/octet-stream")
                                               for fn, data in attachments],
                                  eight_bit=eight_bit)
    theirs = reference(sender_s, to_s, cc_s, rt_s, subject, body, html, attachments, headers,
                       eight_bit).as_bytes()
    got, want = PARSER.parsebytes(ours), PARSER.parsebytes(theirs)
    mine, ref = summary(got), summary(want)
    # the caller's subject, exactly; EmailMessage's wherever it keeps it (it
    # writes text that looks like an encoded word as it is, so that it comes
    # back decoded: not the caller's text)
    assert mine.pop("subject") == subject
    # (and a subject of white space only: EmailMessage writes "Subject:  ",
    # which comes back as "")
    if "=?" not in subject and subject.strip():
        assert ref.pop("subject") == subject
    ref.pop("subject", None)
    # the same for a custom header: EmailMessage drops a leading space
    assert mine.pop("x-note") == note
    ref.pop("x-note")
    # addresses: the caller's, every one; EmailMessage's own output loses some
    # when it folds a non-ASCII display name with no-break spaces
    # (an address list of two comes back as one), so they are compared with the input
    for key, given in (("from", [sender]), ("to", to), ("cc", cc),
                       ("reply-to", [reply_to] if reply_to else [])):
        assert mine.pop(key) == [(re.sub(r"\s+", "", n), a) for n, a in given], key
        ref.pop(key)
    assert mine == ref
    assert got["Message-ID"] == message_id and got["Date"] is not None
    # the wire rules: CRLF only, no line over 998 octets, 7-bit unless allowed
    lines = ours.split(b"\r\n")
    assert b"\r" not in ours.replace(b"\r\n", b"") and b"\n" not in ours.replace(b"\r\n", b"")
    assert max(map(len, lines)) <= 998
    head = ours.split(b"\r\n\r\n", 1)[0]
    assert head.isascii(), "headers must be ASCII without SMTPUTF8"
    assert all(len(line) <= 78 for line in head.split(b"\r\n") if b"=?" in line or b" " in line[1:])
    if not eight_bit:
        assert ours.isascii()


@settings(max_examples=60, deadline=None)
@given(field=st.sampled_from(["sender", "to", "cc", "reply_to", "subject", "header", "header name",
                              "filename"]),
       bad=st.sampled_from([*LINE_BREAKS, "\0", "\r\n"]), text=header_text, pos=st.integers(0, 200))
def test_cr_lf_nul_anywhere_in_a_header_are_refused_naming_the_field(field, bad, text, pos):
    pos = min(pos, len(text))
    evil = text[:pos] + bad + text[pos:]
    args: dict[str, object] = {"sender": "a@corp.example", "to": ["b@x.example"], "subject": "s",
                               "body": "b"}
    named = field
    if field in ("to", "cc"):
        args[field] = ["c@x.example", f"{evil} <d@x.example>"]
    elif field == "header":
        args["headers"] = {"X-Note": evil}
        named = "X-Note"
    elif field == "header name":
        args["headers"] = {f"X-{evil}": "v"}
        named = "header name"
    elif field == "filename":
        args["attachments"] = [(f"f{evil}.txt", b"data")]
        named = "attachment"
    else:
        args[field] = evil if field != "sender" else f"{evil} <a@corp.example>"
    with pytest.raises(mx.InputError) as info:
        mime.build(**args)   # type: ignore[arg-type]
    assert named in str(info.value) and "nothing was sent" in str(info.value)


@pytest.mark.parametrize("ch", [*LINE_BREAKS, *CONTROLS, "\t"], ids=lambda c: f"U+{ord(c):04X}")
def test_control_characters_in_headers_are_refused_or_carried_as_email_message_does(ch):
    """EmailMessage (policy.default) refuses a header value that str.splitlines
    splits; every other control character it carries, and so do we (as an
    encoded word: RFC 5322 has them only as obsolete syntax), in Subject,
    display names and custom headers alike."""
    def theirs() -> bytes:
        m = EmailMessage()
        m["From"] = f"Bob{ch}Smith <bob@corp.example>"
        m["Subject"] = f"Hello{ch}World"
        m["X-Note"] = f"a{ch}b"
        m.set_content("b")
        return m.as_bytes()

    fields = {"sender": {"sender": f"Bob{ch}Smith <bob@corp.example>"},
              "subject": {"subject": f"Hello{ch}World"},
              "X-Note": {"headers": {"X-Note": f"a{ch}b"}}}
    args: dict[str, object] = {"sender": "bob@corp.example", "to": ["x@y.example"], "body": "b"}
    if ch in LINE_BREAKS:
        with pytest.raises(ValueError, match="linefeed or carriage return"):
            theirs()
        for field, more in fields.items():
            with pytest.raises(mx.InputError) as info:
                mime.build(**{**args, **more})   # type: ignore[arg-type]
            assert field in str(info.value) and "header injection" in str(info.value)
            assert repr(ch) in str(info.value) or "CR, LF or NUL" in str(info.value)
        return
    ours, _ = mime.build(**{**args, "sender": f"Bob{ch}Smith <bob@corp.example>",   # type: ignore[arg-type]
                            "subject": f"Hello{ch}World", "headers": {"X-Note": f"a{ch}b"}})
    for msg in (PARSER.parsebytes(ours), PARSER.parsebytes(theirs())):
        assert str(msg["Subject"]) == f"Hello{ch}World" and str(msg["X-Note"]) == f"a{ch}b"
        name = msg["From"].addresses[0].display_name
        if ch == "\t":     # white space in a phrase: EmailMessage makes it a space, we quote it
            name = name.replace("\t", " ")
        assert name == (f"Bob{ch}Smith" if ch != "\t" else "Bob Smith")
    head = ours.split(b"\r\n\r\n", 1)[0]
    if ch != "\t":
        assert ch.encode("utf-8") not in head and b"=?utf-8?b?" in head   # encoded, never raw
    assert all(b >= 0x20 or b in (9, 10, 13) for b in head) and b"\x7f" not in head


@given(subject=st.text(header_char, max_size=200), body=body_text)
@settings(max_examples=40, deadline=None)
def test_smtputf8_headers_and_8bit_bodies_go_as_utf8(subject, body):
    ours, _ = mime.build(sender="Jörg <jörg@corp.example>", to=["ß@x.example"], subject=subject,
                         body=body, utf8=True, eight_bit=True)
    # UTF-8 headers (RFC 6532): the standard library reads them from text
    got = Parser(policy=email.policy.default).parsestr(ours.decode("utf-8"))
    assert str(got["Subject"]) == subject
    assert addresses(got["From"]) == [("Jörg", "jörg@corp.example")]
    if not body or max(map(len, body.encode().split(b"\n"))) <= 998:
        assert got["Content-Transfer-Encoding"] in ("7bit", "8bit")
    # the 8-bit body: from the bytes (the text parser cannot decode it)
    assert PARSER.parsebytes(ours).get_content().replace("\r\n", "\n") == \
        (body if body.endswith("\n") else body + "\n")


def test_attachments_from_paths_and_bytes(tmp_path):
    p = tmp_path / "report.csv"
    p.write_bytes(b"a,b\r\n1,2\r\n")
    ours, _ = mime.build(sender="a@corp.example", to=["b@x.example"], subject="s", body="see",
                         attachments=[p, ("logo.png", b"\x89PNG"), ("x.bin", b"\0", "application/x-thing")])
    msg = PARSER.parsebytes(ours)
    att = list(msg.iter_attachments())
    assert [(a.get_filename(), a.get_content_type(), a.get_content()) for a in att] == [
        ("report.csv", "text/csv", "a,b\r\n1,2\r\n"), ("logo.png", "image/png", b"\x89PNG"),
        ("x.bin", "application/x-thing", b"\0")]
    with pytest.raises(mx.InputError, match="missing.txt"):
        mime.build(sender="a@corp.example", to=["b@x.example"], attachments=[tmp_path / "missing.txt"])


def test_mime_headers_are_the_builders_own():
    with pytest.raises(mx.InputError, match="Content-Type"):
        mime.build(sender="a@corp.example", to=["b@x.example"], headers={"Content-Type": "text/html"})


def test_a_non_ascii_local_part_needs_smtputf8():
    with pytest.raises(mx.InputError, match="SMTPUTF8"):
        mime.build(sender="a@corp.example", to=["jörg@x.example"], utf8=False)
    ours, _ = mime.build(sender="a@corp.example", to=["j@bücher.example"], utf8=False)
    assert b"To: j@xn--bcher-kva.example\r\n" in ours


# -- mx.Template: its wire bytes are the fast builder's for the rendered row ------
#
# A template fills its values into bytes compiled once (the literal text of a
# body in wire form, the fixed headers encoded once); that must give what
# building the rendered message from scratch gives (mime.build, checked above
# against EmailMessage), byte for byte but for Date, Message-ID and multipart
# boundaries, and mean what EmailMessage means.

BOUNDARY = re.compile(rb"=_mx[0-9a-f]{24}")
literal = st.text(st.characters(blacklist_categories=("Cs",),
                                blacklist_characters="{}\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\0"),
                  max_size=300)
ascii_literal = st.text(st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters="{}")
                        | st.just("\n"), max_size=300)
value = (st.text(st.characters(blacklist_categories=("Cs",),
                               blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"), max_size=80)
         | st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
         | st.integers(min_value=0, max_value=10**9) | st.integers(990, 1200).map(lambda n: "w" * n))


def _templated(lits: list[str]) -> str:
    return "".join(lit + (f"{{v{i}}}" if i + 1 < len(lits) else "") for i, lit in enumerate(lits))


def _wire_normal(data: bytes) -> bytes:
    data = re.sub(rb"(?m)^(Date|Message-ID): [^\r]*\r\n", b"", data)
    return BOUNDARY.sub(b"=_mxBOUNDARY", data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.none() | st.lists(literal | ascii_literal, min_size=1, max_size=4),
       html=st.none() | st.lists(literal | ascii_literal, min_size=1, max_size=3),
       values=st.lists(value, min_size=4, max_size=4), name=display.filter(lambda s: "\0" not in s),
       email=addr_spec, subject=header_text, eight_bit=st.booleans())
@example(body=["Dear ", ",\n" + "Your statement.\n" * 20], html=None, values=["Customer 7", 0, 0, 0],
         name="Customer 7", email="user7@bench.example", subject="Statement", eight_bit=True)
@example(body=["Hi\n", ""], html=["<p>", "</p>"], values=["", "a<b & 'c'", 0, 0], name="x",
         email="a@b.example", subject="", eight_bit=False)
def test_template_bytes_are_the_builders_for_the_rendered_row(body, html, values, name, email,
                                                              subject, eight_bit):
    from mailexpress.compose import prepare
    t = mx.Template(to="{name} <{email}>", subject="Re: {subject} {v0}",
                    body=_templated(body) if body is not None else None,
                    html=_templated(html) if html is not None else None,
                    sender="Corp <news@corp.example>")
    row = {"name": fmt(name, "x@y").rpartition(" <")[0] if name else "", "email": email,
           "subject": subject, **{f"v{i}": v for i, v in enumerate(values)}}
    try:
        rendered = t.render(row)
        want = prepare(sender=rendered.pop("sender"), eight_bit=eight_bit, **rendered)
    except mx.InputError as exc:
        with pytest.raises(mx.InputError) as info:
            t.prepare(row, sender=None, reply_to=None, eight_bit=eight_bit, utf8=False)
        assert str(info.value) == str(exc)
        return
    got = t.prepare(row, sender=None, reply_to=None, eight_bit=eight_bit, utf8=False)
    assert (got.envelope_from, got.recipients) == (want.envelope_from, want.recipients)
    assert _wire_normal(got.data) == _wire_normal(want.data)
    msg = PARSER.parsebytes(got.data)
    assert msg["Message-ID"] == got.message_id and msg["Date"] is not None
    if "=?" not in rendered["subject"]:
        assert str(msg["Subject"]) == rendered["subject"]
    ref = reference("Corp <news@corp.example>", rendered["to"], [], None, rendered["subject"],
                    rendered.get("body"), rendered.get("html"), [], {}, eight_bit)
    mine, theirs = summary(msg), summary(PARSER.parsebytes(ref.as_bytes()))
    for key in ("subject", "to", "from"):
        mine.pop(key), theirs.pop(key)
    assert mine == theirs


@pytest.mark.parametrize("field, template, row, named", [
    ("to", "{to}", {"to": "\r"}, "'to'"),                             # a CR alone: not dropped
    ("to", "{to}", {"to": "\n"}, "'to'"),
    ("to", "{to}", {"to": "a@x.example,\r"}, "'to'"),
    ("to", "{a}, {b}", {"a": "a@x.example", "b": " \n "}, "'a', 'b'"),
    ("to", "{to}", {"to": "a@x.example, \x1e"}, "'to'"),             # a line break to str.strip
    ("to", "{to}", {"to": "a@x.example,\xa0"}, "'to'"),              # white space, but not SP/TAB
    ("to", "{to}", {"to": ["a@x.example", "\r"]}, "'to'"),           # a list value
    ("to", "{to}", {"to": ["a@x.example", ""]}, "'to'"),
    ("cc", "{cc}", {"cc": "\r\n"}, "'cc'"),
    ("bcc", "{bcc}", {"bcc": "\r"}, "'bcc'"),                        # in no header, checked all the same
    ("bcc", "{bcc}", {"bcc": [""]}, "'bcc'"),
    ("bcc", "{bcc}", {"bcc": "x@y.example, not an address"}, "'bcc'"),
])
def test_template_address_lists_refuse_what_is_not_an_address(field, template, row, named):
    t = mx.Template(**{"to": "a@x.example", field: template}, subject="s", body="b")   # type: ignore[arg-type]
    with pytest.raises(mx.InputError) as info:
        t.prepare(row, sender="s@corp.example", reply_to=None, eight_bit=True, utf8=False)
    message = str(info.value)
    assert message.startswith(f"{field} (from the row's {named}):") and "nothing was sent" in message
    with pytest.raises(mx.InputError) as again:       # the preview says the same
        t.render(row)
    assert str(again.value) == message


@pytest.mark.parametrize("text, want", [
    ("a@x.example,,b@y.example", ["a@x.example", "b@y.example"]),     # an empty element: no address
    ("a@x.example, ", ["a@x.example"]),                                # ("{a}, {b}" with b empty)
    (" ,\ta@x.example ,", ["a@x.example"]),
    ('"Doe, John" <j@x.example>, k@y.example', ["j@x.example", "k@y.example"]),   # a quoted comma
    ('"a \\" , b" <j@x.example>,k@y.example', ["j@x.example", "k@y.example"]),
])
def test_template_address_lists_split_at_commas_outside_quotes(text, want):
    from email.utils import getaddresses

    t = mx.Template(to="{to}", subject="s", body="b")
    p = t.prepare({"to": text}, sender="s@corp.example", reply_to=None, eight_bit=True, utf8=False)
    assert p.recipients == want
    # the standard library reads the same addresses from the text (empty elements as ('', ''))
    assert [a for _n, a in getaddresses([text]) if a] == want
    to = PARSER.parsebytes(p.data)["To"]
    assert [a.addr_spec for a in to.addresses] == want
    if "Doe" in text:
        assert to.addresses[0].display_name == "Doe, John"


def test_a_bcc_that_is_not_an_address_is_refused_for_a_mapping_too():
    with pytest.raises(mx.InputError, match="bcc: '' is not an address"):
        compose.prepare(sender="s@corp.example", to="a@x.example", bcc=[""], subject="s", body="b")


@pytest.mark.parametrize("field", ["to", "cc", "bcc"])
@pytest.mark.parametrize("bad", ["", " ", "\x1e@x.example", "a b@x.example"])
def test_recipients_of_a_bytes_message_are_addresses(field, bad):
    """With message= bytes no header is built to check To and Cc: they are
    checked as addresses all the same (an empty one went out as RCPT TO:<>)."""
    kw = {"to": "a@x.example", field: ["b@x.example", bad]}
    with pytest.raises(mx.InputError, match=f"{field}: "):
        compose.prepare(sender="s@corp.example", message=b"Subject: s\r\n\r\nb\r\n", **kw)
    ok = compose.prepare(sender="s@corp.example", message=b"Subject: s\r\n\r\nb\r\n",
                         **{"to": "a@x.example", field: "Bob <b@x.example>"})
    assert ok.recipients[-1] == "b@x.example"


def test_template_fast_text_part_is_7bit_bytes_of_the_literal_and_values():
    t = mx.Template(to="{email}", subject="s", body="Dear {name},\nline two\n{n}")
    c_rows = [{"email": "a@b.example", "name": "Ann", "n": 3},
              {"email": "a@b.example", "name": "Jörg", "n": 4},       # not ASCII: built
              {"email": "a@b.example", "name": "x\ny", "n": 5}]       # a line end: built
    outs = [t.prepare(r, sender="s@corp.example", reply_to=None, eight_bit=True, utf8=False).data
            for r in c_rows]
    assert outs[0].endswith(b"Content-Transfer-Encoding: 7bit\r\n\r\nDear Ann,\r\nline two\r\n3\r\n")
    assert b"Content-Transfer-Encoding: 8bit\r\n\r\nDear J\xc3\xb6rg,\r\n" in outs[1]
    assert outs[2].endswith(b"\r\n\r\nDear x\r\ny,\r\nline two\r\n5\r\n")


# -- the C renderer (csrc/proto/render.c): the same bytes as the Python builder --
#
# compose.prepare_item and Template.prepare render ordinary messages in C and
# hand the rest to the Python builder.  Whatever C renders must be the
# Python builder's bytes (Date and Message-ID aside) and mean what
# EmailMessage means; whatever it does not render (None) the Python builder
# builds or refuses.  Inputs mix what C takes with what it must not.

from mailexpress import _core, compose  # noqa: E402

simple_name = st.from_regex(r"[A-Za-z0-9!#$%&'*+/^_`{|}~-]{1,12}( [A-Za-z0-9!#$%&'*+/^_`{|}~-]{1,12}){0,3}",
                            fullmatch=True)
c_address = st.one_of(
    addr_spec,                                                      # plain: C
    st.builds(lambda n, a: f"{n} <{a}>", simple_name, addr_spec),   # Name <addr>: C
    st.builds(fmt, display, addr_spec),                             # quoted, non-ASCII: Python
    st.builds(lambda a, bad: a[:3] + bad + a[3:], addr_spec, st.sampled_from(["\r", "\n", "\0", " "])),
    st.integers(990, 1100).map(lambda n: "x" * n + "@long.example"),  # a line over 998: Python
)
ascii_header = st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=200)
c_subject = st.one_of(ascii_header, header_text, long_header,
                      st.integers(850, 1000).map(lambda n: "w" * n),            # a long word
                      st.sampled_from(["=?utf-8?q?x?=", " lead", "\ttab", "a\r\nBcc: x@y.example",
                                       "nul\0", "", "x" * 78, "y " * 60, "rs\x1ex", "ff\x0c",
                                       "nel\x85", "ls\u2028", "soh\x01x", "del\x7f", "us\x1f y"]))
c_body = st.one_of(st.none(), body_text, long_line,
                   st.lists(st.sampled_from(["a", "b", " ", "\n", "\r", "\r\n", ".", "\0", "é"]),
                            max_size=300).map("".join),
                   st.integers(995, 1001).map(lambda n: "z" * n + "\nend"))
MID_DATE = re.compile(rb"(?m)^(Date|Message-ID): [^\r]*\r\n")


def _c_item(item, sender="Corp <news@corp.example>", reply_to=None, eight_bit=True):
    consts = compose._render_consts(sender, reply_to)
    assert consts is not None
    got = _core.render_items(consts, [item], mime.date_header(), mime._counter, mime._id_prefix,
                             eight_bit, compose.Prepared)
    assert isinstance(got, list) and len(got) == 1
    return got[0]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(to=st.lists(c_address, min_size=1, max_size=3), cc=st.lists(c_address, max_size=2),
       bcc=st.lists(c_address, max_size=2), subject=c_subject, body=c_body,
       html=st.none() | c_body, eight_bit=st.booleans(),
       reply_to=st.none() | st.just("Help <help@corp.example>"))
@example(to=["user7@bench.example"], cc=[], bcc=[], subject="Statement 7",
         body="Dear customer,\n" * 70, html=None, eight_bit=True, reply_to=None)
@example(to=["Customer 7 <u@b.example>", "v@b.example"], cc=["Ann <a@b.example>"],
         bcc=["Hidden <h@b.example>", "h2@b.example"], subject="y " * 60, body="a\r\rb\r\n",
         html="<p>a & b</p>", eight_bit=False, reply_to=None)
@example(to=["v@b.example"], cc=[], bcc=[], subject="s", body=None, html="<p>only</p>",
         eight_bit=True, reply_to=None)
def test_c_rendered_mapping_is_the_python_builders_bytes(to, cc, bcc, subject, body, html,
                                                         eight_bit, reply_to):
    sender = "Corp <news@corp.example>"
    item = {"to": to, "cc": cc, "bcc": bcc, "subject": subject, "body": body, "html": html}
    got = _c_item(item, sender, reply_to, eight_bit)
    try:
        want = compose.prepare(sender=sender, to=to, cc=cc, bcc=bcc, subject=subject, body=body,
                               html=html, reply_to=reply_to, eight_bit=eight_bit)
    except mx.InputError:
        assert got is None          # refused: C never renders what Python refuses
        with pytest.raises(mx.InputError):
            compose.prepare_item(item, sender=sender, reply_to=reply_to, eight_bit=eight_bit,
                                 utf8=False)
        return
    if got is None:
        # declined: only for what needs encoding, quoting or a long line
        simple = all(mime._PLAIN_ADDR.fullmatch(a) or mime._SIMPLE_NAME_ADDR.fullmatch(a)
                     for a in to + cc + bcc)
        def plain(text):
            return text is None or ((text.isascii() or eight_bit) and "\0" not in text
                                    and max(map(len, re.split("\r\n|\r|\n", text.encode().decode("latin-1")))) <= 998)
        plain_body = plain(body) and plain(html)
        assert not (simple and subject.isascii() and "=?" not in subject and plain_body
                    and not mime._CTL.search(subject)      # control characters: encoded words
                    and subject[:1] not in (" ", "\t") and max(map(len, subject.split(" "))) <= 900
                    and max(map(len, to + cc)) < 900), "C declined an ordinary message"
        return
    assert (got.envelope_from, got.recipients) == (want.envelope_from, want.recipients)
    assert _wire_normal(got.data) == _wire_normal(want.data)
    assert re.fullmatch(r"<[0-9]+\.[0-9a-f]{12}\.[0-9]+\.[0-9]+@corp\.example>", got.message_id)
    msg = PARSER.parsebytes(got.data)
    assert msg["Message-ID"] == got.message_id and msg["Date"] is not None
    assert str(msg["Subject"]) == subject
    # what EmailMessage means for the same arguments (which it refuses to
    # build for a subject that str.splitlines splits: \x0b, \x1c, ...)
    if "".join(subject.splitlines()) != subject:
        return
    mine = summary(msg)
    theirs = summary(PARSER.parsebytes(reference(sender, to, cc, reply_to, subject,
                                                 body if body is not None or html is not None else "",
                                                 html, [], {}, eight_bit).as_bytes()))
    for key in ("subject", "to", "from", "reply-to", "x-note"):
        mine.pop(key), theirs.pop(key)
    assert mine == theirs
    head = got.data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n") if b" " in line[1:]
               and max(map(len, line.split(b" "))) < 70)
    assert max(map(len, got.data.split(b"\r\n"))) <= 998


@settings(max_examples=100, deadline=None)
@given(field=st.sampled_from(["to", "subject"]), bad=st.sampled_from([*LINE_BREAKS, "\0", "\r\n"]),
       text=ascii_header, pos=st.integers(0, 200))
@example(field="to", bad="\r", text="<,", pos=0)    # the template splits it: "<" alone, named
def test_c_renderer_never_puts_cr_lf_nul_into_a_header(field, bad, text, pos):
    pos = min(pos, len(text))
    evil = text[:pos] + bad + text[pos:]
    item = {"to": "a@b.example", "subject": "s", "body": "b"}
    item[field] = evil if field == "subject" else f"{evil} <d@x.example>"
    assert _c_item(item) is None
    with pytest.raises(mx.InputError, match=field):
        compose.prepare_item(item, sender="a@corp.example", reply_to=None, eight_bit=True, utf8=False)
    t = mx.Template(to="{to}", subject="{subject}", body="hi")
    # a template's "a, b" is split, and each element stripped of spaces and tabs only:
    # a line break is never stripped away with the white space, nor dropped alone
    with pytest.raises(mx.InputError, match=field):
        t.prepare({"to": item["to"], "subject": item["subject"]}, sender="a@corp.example",
                  reply_to=None, eight_bit=True, utf8=False)


def test_c_renderer_takes_the_ordinary_message_and_leaves_the_rest():
    ok = {"to": ["Ann Lee <ann@x.example>", "bob@y.example"], "subject": "Hi", "body": "x\n"}
    assert _c_item(ok) is not None
    assert _c_item({**ok, "cc": None, "html": None}) is not None       # None: as if absent
    assert _c_item({**ok, "html": "<p>"}) is not None                 # multipart/alternative
    assert _c_item({**ok, "cc": "c@x.example", "bcc": ("Hid Den <d@x.example>",)}).recipients == [
        "ann@x.example", "bob@y.example", "c@x.example", "d@x.example"]
    for other in ({"cc": ["c@x.example", 1]}, {"bcc": "x y@z.example"}, {"headers": {"X-A": "1"}},
                  {"sender": "s@corp.example"}, {"id": 1}, {"subject": "Grüße"},
                  {"body": "a\0b"}, {"to": []}, {"to": "Ann Lee <ann@x.example"}):
        assert _c_item({**ok, **other}) is None, other
    assert _c_item({**ok, "body": "é"}, eight_bit=False) is None       # quoted-printable
    assert _c_item({**ok, "body": "é"}, eight_bit=True).data.endswith(
        b"Content-Transfer-Encoding: 8bit\r\n\r\n\xc3\xa9\r\n")


def test_prepare_items_and_prepare_many_are_prepare_item_and_prepare_of_each():
    items = [{"to": f"u{i}@x.example", "subject": f"S {i}", "body": "b"} for i in range(5)]
    items[2] = {"to": "u2@x.example", "subject": "bad\n", "body": "b"}
    items[3] = {"to": "u3@x.example", "subject": "Grüße", "body": "b"}
    got = compose.prepare_items(items, sender="a@corp.example", reply_to=None, eight_bit=True,
                                utf8=False)
    assert isinstance(got[2], mx.InputError) and "subject" in str(got[2])
    for i in (0, 1, 3, 4):
        want = compose.prepare_item(items[i], sender="a@corp.example", reply_to=None,
                                    eight_bit=True, utf8=False)
        assert MID_DATE.sub(b"", got[i].data) == MID_DATE.sub(b"", want.data)
    t = mx.Template(to="{name} <{email}>", subject="S {n}", body="Dear {name}\n")
    rows = [{"name": "Ann", "email": "a@x.example", "n": 1}, {"name": "Jörg", "email": "j@x.example", "n": 2},
            {"name": "Ann", "email": "a@x.example"}]
    got = t.prepare_many(rows, sender="a@corp.example", reply_to=None, eight_bit=True, utf8=False)
    assert isinstance(got[2], mx.InputError) and "'n'" in str(got[2])
    for i in (0, 1):
        want = t._build(rows[i], sender="a@corp.example", reply_to=None, eight_bit=True, utf8=False)
        assert MID_DATE.sub(b"", got[i].data) == MID_DATE.sub(b"", want.data)


def test_message_ids_rendered_in_c_continue_the_python_sequence():
    first = mime.make_message_id("corp.example")
    p = compose.prepare_item({"to": "a@x.example"}, sender="a@corp.example", reply_to=None,
                             eight_bit=True, utf8=False)
    last = mime.make_message_id("corp.example")
    n = int(first.split("@")[0].rsplit(".", 1)[1])
    assert p.message_id == first.replace(f".{n}@", f".{n + 1}@")
    assert last == first.replace(f".{n}@", f".{n + 2}@")


def test_an_html_only_template_is_one_html_part_whichever_way_it_is_sent():
    # EmailMessage's html-only message: set_content(html, subtype="html"), one part
    t = mx.Template(to="{to}", subject="s", html="<p>Dear {name}</p>")
    row = {"to": "a@x.example", "name": "A & B"}
    via_send_many = t.prepare(row, sender="a@corp.example", reply_to=None, eight_bit=True, utf8=False)
    via_send_as = compose.prepare(sender="a@corp.example", **t.render(row))
    ref = EmailMessage()
    ref.set_content("<p>Dear A &amp; B</p>", subtype="html")
    for p in (via_send_many, via_send_as):
        msg = PARSER.parsebytes(p.data)
        assert not msg.is_multipart() and msg.get_content_type() == ref.get_content_type()
        assert msg.get_content().replace("\r\n", "\n") == ref.get_content()
    assert MID_DATE.sub(b"", via_send_many.data) == MID_DATE.sub(b"", via_send_as.data)


@pytest.mark.parametrize("body, x", [("a\r{x}\nb", ""), ("a\r{x}\nb", "\n"), ("a{x}b", "\r\n\r"),
                                     ("{x}", ""), ("line\r\n{x}", "é"), ("<{x}>", "a\0b"),
                                     ("{x}\n", "y" * 998), ("{x}\n", "y" * 999)])
@pytest.mark.parametrize("html", [False, True])
def test_c_rendered_template_line_ends_are_the_builders(body, x, html):
    # CR LF split between a literal and a value, empty values, a NUL, the longest line
    t = mx.Template(to="{to}", subject="s", **{"html" if html else "body": body})
    row = {"to": "a@b.example", "x": x}
    got = t.prepare(row, sender="a@corp.example", reply_to=None, eight_bit=True, utf8=False)
    want = t._build(row, sender="a@corp.example", reply_to=None, eight_bit=True, utf8=False)
    assert MID_DATE.sub(b"", got.data) == MID_DATE.sub(b"", want.data)
    c = t._compiled[(True, False)]
    [rendered] = _core.render_rows(c.spec, t._consts(c, "a@corp.example", None), [row],
                                   mime.date_header(), mime._counter, mime._id_prefix, True,
                                   compose.Prepared)
    assert (rendered is None) == ("\0" in x or len(x) > 998)      # C takes all but these


@pytest.mark.parametrize("body, html", [("Dear {name},\nyour invoice {number}.\n", "<p>Dear {name}</p><b>{number}</b>"),
                                        ("A fixed text part.\n", "<p>Dear {name}</p>"),
                                        ("Dear {name}\n", "<p>fixed</p>"),
                                        (None, "<p>Dear {name}</p>")])
def test_c_renders_text_and_html_as_the_builders_multipart_alternative(body, html):
    t = mx.Template(to="{name} <{email}>", subject="Invoice {number}", body=body, html=html)
    row = {"name": "Tom & Jerry's", "email": "tj@x.example", "number": 1002}
    c = t._compiled_for(True, False)
    [rendered] = _core.render_rows(c.spec, t._consts(c, "b@corp.example", None), [row],
                                   mime.date_header(), mime._counter, mime._id_prefix, True,
                                   compose.Prepared)
    assert rendered is not None
    want = t._build(row, sender="b@corp.example", reply_to=None, eight_bit=True, utf8=False)
    assert _wire_normal(rendered.data) == _wire_normal(want.data)
    msg = PARSER.parsebytes(rendered.data)
    assert msg.get_content_type() == ("multipart/alternative" if body else "text/html")
    html_part = msg.get_body(("html",))
    assert "Tom &amp; Jerry&#x27;s" in html_part.get_content() or "fixed" in html_part.get_content()
    assert not msg.defects and all(not p.defects for p in msg.walk())
