"""The fast builder: ordinary messages written straight into wire bytes.

Text and/or HTML bodies, attachments, address headers with display names,
Subject, Date, Message-ID and custom headers, as RFC 5322 / MIME (RFC 2045-2047,
2231) bytes with CRLF line ends, folded at 78 characters.  Everything that
touches every byte runs in the standard library's C code (``binascii``
quoted-printable and base64, ``str.encode``, ``bytes.replace``/``join``);
what is left in Python is a few calls per header.  `email.message.EmailMessage`
is not used here: a message given as one is built by `message.build_message`
and honoured exactly.  The ordinary send_many mapping and Template row are
written by its C twin (csrc/proto/render.c, through `_core.render_items` /
`render_rows`) into the same bytes; whatever that declines is built here.

Choices, and why they mean the same as what `EmailMessage` writes:

- a non-ASCII header (or one that would otherwise need a line over 998 octets,
  holds a control character, or text that looks like an encoded word) is written as RFC 2047 ``B``
  encoded words of UTF-8, 75 characters at most each, one per folded line; with
  SMTPUTF8 (``utf8=True``) UTF-8 goes as it is (RFC 6532);
- CR, LF, NUL and the other line breaks of ``str.splitlines`` (VT, FF, FS, GS,
  RS, NEL, LS, PS) are refused in any header (`EmailMessage` refuses them too);
- a text part is 7bit when ASCII with lines up to 998 octets, 8bit when the
  server offers 8BITMIME and the lines fit, otherwise quoted-printable or
  base64, whichever is shorter (the same rule as the standard library's);
- attachments are base64 with 76-character lines; a non-ASCII file name is an
  RFC 2231 ``filename*`` parameter.
"""
from __future__ import annotations

import binascii
import itertools
import mimetypes
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from email.utils import formatdate
from pathlib import Path
from typing import Union

from .errors import InputError

__all__ = ["Attachment", "build", "check_address", "check_header", "encode_header", "text_part", "unstructured",
           "envelope_address", "message_id_base",
           "make_message_id", "date_header", "split_address", "address_header",
           "attachment_part", "body_bytes", "multipart"]

#: An attachment: a path, ``(filename, data)`` or ``(filename, data, content_type)``.
Attachment = Union[str, "os.PathLike[str]", tuple[str, bytes], tuple[str, bytes, str]]

CRLF = b"\r\n"
_ADDRESS_HEADERS = frozenset({"from", "to", "cc", "reply-to", "sender", "bcc",
                              "resent-from", "resent-to", "resent-cc", "resent-sender"})
#: set by the builder from the body and attachments
_MIME_HEADERS = frozenset({"mime-version", "content-type", "content-transfer-encoding"})
#: refused in a header value: CR, LF, NUL, and the other characters that
#: ``str.splitlines`` ends a line at (VT, FF, FS, GS, RS, NEL, LS, PS), which
#: `EmailMessage` refuses as it refuses CR and LF (policy.default)
_BAD = re.compile("[\r\n\0\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
#: the other control characters (C0 but TAB, DEL, C1): RFC 5322 has them in a
#: header only as obsolete syntax (obs-utext), which `EmailMessage` writes as
#: it is for ASCII text; here they go as RFC 2047 encoded words, which decode
#: to the same text (and as it does for non-ASCII text, SMTPUTF8 or not)
_CTL = re.compile("[\x01-\x08\x0e-\x1b\x1f\x7f-\x84\x86-\x9f]")
_BREAK_NAMES = {"\r": "CR", "\n": "LF", "\0": "NUL"}
_BAD_NAME = re.compile(r"[^!-9;-~]")          # printable ASCII except ':'
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~ ]*")
_NAME_ADDR = re.compile(r"\s*(.*?)\s*<([^<>]*)>\s*", re.S)
#: a plain ASCII addr-spec (nothing to quote, encode or refuse)
_PLAIN_ADDR = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")
_ADDR_BAD = re.compile('[ "<>(),;\\\\\x00-\x1f\x7f-\x9f]')
_EW_LIKE = re.compile(r"=\?.*\?=", re.S)
#: ``Display Name <addr>`` that is written as it is: an atom phrase (no "=" or
#: "?", so nothing like an encoded word) with single spaces, a plain address
_SIMPLE_NAME_ADDR = re.compile(r"[A-Za-z0-9!#$%&'*+\-/^_`{|}~]+(?: [A-Za-z0-9!#$%&'*+\-/^_`{|}~]+)*"
                               r" <([A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+)>")
_HIGH = bytes(range(128, 256))


def _injection(what: str, found: str) -> InputError:
    if found in _BREAK_NAMES:
        return InputError(f"{what}: contains CR, LF or NUL (header injection); nothing was sent")
    return InputError(f"{what}: contains {found!r}, a line break to email parsers as CR and LF "
                      "are (header injection); nothing was sent")


def check_header(field: str, value: str) -> None:
    """InputError naming ``field`` when ``value`` holds CR, LF, NUL or
    another line break of ``str.splitlines`` (`_BAD`)."""
    m = _BAD.search(value)
    if m is not None:
        raise _injection(field, m.group())


def _check_name(name: str) -> None:
    if not name or _BAD_NAME.search(name):
        m = _BAD.search(name)
        if m is not None:
            raise _injection(f"header name {name!r}", m.group())
        raise InputError(f"header name {name!r} is not a valid field name (printable ASCII, "
                         "no ':' or space); nothing was sent")


# -- headers --------------------------------------------------------------------

def _encoded_words(text: str) -> list[bytes]:
    """``text`` as RFC 2047 B encoded words of UTF-8, each at most 64 octets
    (39 octets of UTF-8, never split inside a character)."""
    data = text.encode("utf-8")
    out = []
    start, n = 0, len(data)
    while start < n:
        end = min(start + 39, n)
        while end < n and (data[end] & 0xC0) == 0x80:
            end -= 1
        out.append(b"=?utf-8?b?" + binascii.b2a_base64(data[start:end], newline=False) + b"?=")
        start = end
    return out


def _fold(name: bytes, tokens: Sequence[bytes], sep: bytes = b" ") -> bytes:
    """``Name: t1<sep>t2...`` with CRLF SP inserted before a token where the
    line would pass 78 octets (folding only where whitespace may be)."""
    line = name + b":"
    width = len(line)
    parts = [line]
    first = True
    for tok in tokens:
        if first:
            parts.append(b" " + tok)
            width += 1 + len(tok)
            first = False
            continue
        if tok and width + len(sep) + len(tok) > 78:
            parts.append(sep.rstrip(b" ") + b"\r\n " + tok)
            width = 1 + len(tok)
        else:
            parts.append(sep + tok)
            width += len(sep) + len(tok)
    parts.append(CRLF)
    return b"".join(parts)


def unstructured(name: bytes, value: str, utf8: bool) -> bytes:
    """An unstructured header (Subject, ...) folded; the value is not
    checked for CR/LF/NUL here (`check_header`)."""
    if len(name) + 2 + len(value) <= 78 and value.isascii() and "=?" not in value \
            and value[:1] not in (" ", "\t") and not _CTL.search(value):
        return name + b": " + value.encode("ascii") + CRLF
    words = value.split(" ")
    simple = (value.isascii() or utf8) and not _EW_LIKE.search(value) \
        and value[:1] not in (" ", "\t") and max(map(len, words)) <= 900 and not _CTL.search(value)
    if simple:
        return _fold(name, [w.encode("utf-8") for w in words])
    return _fold(name, _encoded_words(value))


def split_address(value: str, field: str | None = None) -> tuple[str, str]:
    """(display name, addr-spec) of ``"Name <a@b>"``, ``"\\"Doe, J\\" <a@b>"`` or ``"a@b"``;
    InputError (naming ``field`` when given) for what is not an address."""
    if "<" not in value:
        return "", value.strip()
    m = _NAME_ADDR.fullmatch(value)
    if m is None:
        raise InputError(f"{field + ': ' if field else ''}{value!r} is not an address "
                         "(\"Name <user@domain>\" or \"user@domain\"); nothing was sent")
    display, addr = m.group(1), m.group(2).strip()
    if len(display) >= 2 and display[0] == '"' and display[-1] == '"':
        display = re.sub(r"\\(.)", r"\1", display[1:-1])
    return display, addr


def envelope_address(value: str, field: str | None = None) -> str:
    """The addr-spec of ``"Name <a@b>"`` or ``"a@b"`` (`split_address`'s)."""
    if "<" not in value:
        return value.strip()
    m = _SIMPLE_NAME_ADDR.fullmatch(value)
    return m.group(1) if m is not None else split_address(value, field)[1]


def _address(field: str, value: str, utf8: bool) -> list[bytes]:
    """One address as folding tokens (the display name may be several)."""
    display, addr = split_address(value, field)
    if not addr or _ADDR_BAD.search(addr):
        raise InputError(f"{field}: {value!r} is not an address; nothing was sent")
    if not addr.isascii():
        if not utf8:
            local, _, domain = addr.rpartition("@")
            if not local.isascii():
                raise InputError(f"{field}: {addr!r} has a non-ASCII local part, which needs a "
                                 "server offering SMTPUTF8; nothing was sent")
            try:
                addr = local + "@" + domain.encode("idna").decode("ascii")
            except UnicodeError:
                raise InputError(f"{field}: {addr!r}: the domain is not a valid IDN; "
                                 "nothing was sent") from None
    spec = b"<" + addr.encode("utf-8") + b">"
    if not display:
        return [addr.encode("utf-8")]
    if (display.isascii() or utf8) and len(display) <= 60 and not _EW_LIKE.search(display) \
            and not _CTL.search(display):
        if display.isascii() and _ATOM_PHRASE.fullmatch(display) and display.strip() == display \
                and "  " not in display:
            return [display.encode("ascii"), spec]
        quoted = display.replace("\\", "\\\\").replace('"', '\\"')
        return [b'"' + quoted.encode("utf-8") + b'"', spec]
    return _encoded_words(display) + [spec]


def check_address(field: str, value: str) -> None:
    """InputError naming ``field`` when ``value`` is not one address that
    an address header would take (``"Name <a@b>"`` or ``"a@b"``): for a
    recipient that is in no header (Bcc)."""
    check_header(field, value)
    _address(field, value, True)


def address_header(name: bytes, field: str, values: Sequence[str], utf8: bool) -> bytes:
    """``Name: addr, "Display" <addr>, ...`` folded; InputError naming
    ``field`` for CR/LF/NUL or what is not an address."""
    if len(values) == 1:
        v = values[0]
        if len(v) + len(name) < 76 and (_PLAIN_ADDR.fullmatch(v) or (
                len(v) < 63 and _SIMPLE_NAME_ADDR.fullmatch(v))):
            return name + b": " + v.encode("ascii") + CRLF
    tokens: list[bytes] = []
    for v in values:
        check_header(field, v)
        if tokens:
            tokens[-1] += b","
        tokens.extend(_address(field, v, utf8))
    return _fold(name, tokens)


def encode_header(name: str, value: str | Sequence[str], *, utf8: bool = False) -> bytes:
    """One header line (folded, CRLF-terminated).  Address headers take a
    string or a list of addresses; others a string."""
    _check_name(name)
    lower = name.lower()
    if lower in _ADDRESS_HEADERS:
        values = [value] if isinstance(value, str) else list(value)
        if len(values) == 1 and "," in values[0] and '"' not in values[0]:
            values = [v for v in values[0].split(",") if v.strip()]
        return address_header(name.encode("ascii"), name, values, utf8)
    if not isinstance(value, str):
        raise InputError(f"header {name}: the value must be a string, not "
                         f"{type(value).__name__}; nothing was sent")
    check_header(f"header {name}", value)
    return unstructured(name.encode("ascii"), value, utf8)


def _new_base() -> str:
    return f"{time.time_ns() // 1_000_000}.{secrets.token_hex(6)}.{os.getpid()}"


#: this process's Message-ID prefix (start time in ms, 48 random bits, pid),
#: made anew in a forked child
_base = _new_base()
_counter = itertools.count()
#: ``<base.`` as bytes: what a Message-ID begins with (the C renderer's)
_id_prefix = f"<{_base}.".encode("ascii")


def _after_fork() -> None:
    global _base, _counter, _id_prefix
    _base, _counter = _new_base(), itertools.count()
    _id_prefix = f"<{_base}.".encode("ascii")


os.register_at_fork(after_in_child=_after_fork)
_date_cache: list[object] = [None, b""]


def make_message_id(domain: str | None) -> str:
    """A unique ``<prefix.N@domain>``: a per-process prefix (start time,
    random, pid) and a counter."""
    return f"<{_base}.{next(_counter)}@{domain or 'mailexpress.invalid'}>"


def message_id_base() -> str:
    """The prefix of this process's Message-IDs: ``make_message_id`` gives
    ``"<" + base + "." + str(N) + "@" + domain + ">"`` (a compact store
    keeps N and the domain)."""
    return _base


def date_header() -> bytes:
    """``Date: ...`` for now (local time), computed once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = b"Date: " + formatdate(now, localtime=True).encode("ascii") + CRLF
    line = _date_cache[1]
    assert isinstance(line, bytes)
    return line


# -- bodies ----------------------------------------------------------------------

def _normalise(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    return text


_LONG_LINE = re.compile(rb"^[^\n]{999}", re.M)     # tried at line starts only: linear


def _long_lines(data: bytes) -> bool:
    return len(data) > 998 and _LONG_LINE.search(data) is not None


#: the last text part made: (text, subtype, eight_bit, result); a bulk run
#: that gives every message the same body string encodes it once
_last_part: tuple[str, str, bool, tuple[bytes, bytes]] | None = None


def text_part(text: str, subtype: str, eight_bit: bool) -> tuple[bytes, bytes]:
    """(MIME headers, encoded body) of a text part in UTF-8, line ends CRLF."""
    global _last_part
    last = _last_part
    if last is not None and last[0] is text and last[1] == subtype and last[2] == eight_bit:
        return last[3]
    got = _text_part(text, subtype, eight_bit)
    if len(text) >= 256 and type(text) is str:
        _last_part = (text, subtype, eight_bit, got)
    return got


def _text_part(text: str, subtype: str, eight_bit: bool) -> tuple[bytes, bytes]:
    text = _normalise(text)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"the {subtype} body holds a lone surrogate, which is not text; "
                         "nothing was sent") from None
    ascii_ = len(data) == len(text)
    if (ascii_ or eight_bit) and "\0" not in text and not _long_lines(data):
        cte = b"7bit" if ascii_ else b"8bit"
        body = data.replace(b"\n", CRLF)
    else:
        high = len(data) - len(data.translate(None, _HIGH))
        # quoted-printable spends 3 octets on each of these, base64 4 on every 3
        if 3 * (len(data) + 2 * high) <= 4 * len(data):
            cte = b"quoted-printable"
            body = binascii.b2a_qp(data, istext=True).replace(b"\n", CRLF)
        else:
            cte = b"base64"
            body = _base64_lines(data)
    head = (b"Content-Type: text/" + subtype.encode("ascii") + b'; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: " + cte + CRLF)
    return head, body


def _base64_lines(data: bytes) -> bytes:
    enc = binascii.b2a_base64(data, newline=False)
    if len(enc) <= 76:
        return enc + CRLF if enc else b""
    return b"".join([enc[i:i + 76] + CRLF for i in range(0, len(enc), 76)])


def _param(name: str, value: str) -> bytes:
    """``; name="value"``, or RFC 2231 ``name*=utf-8''...`` when not ASCII."""
    if value.isascii() and not _BAD.search(value) and not _CTL.search(value):
        quoted = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'; {name}="{quoted}"'.encode("ascii")
    check_header(f"attachment {name}", value)
    from urllib.parse import quote
    return f"; {name}*=utf-8''{quote(value, safe='')}".encode("ascii")


def attachment_part(item: Attachment) -> bytes:
    """One attachment as a MIME part (headers, blank line, base64)."""
    if isinstance(item, tuple):
        if len(item) == 2:
            filename, data = item
            ctype = None
        elif len(item) == 3:
            filename, data, ctype = item
        else:
            raise InputError("an attachment is a path, (filename, data) or (filename, data, "
                             "content_type); nothing was sent")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InputError(f"attachment {filename!r}: data must be bytes, not "
                             f"{type(data).__name__}; nothing was sent")
        data = bytes(data)
    elif isinstance(item, (str, os.PathLike)):
        path = Path(item)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"attachment {str(path)!r} cannot be read: {exc.strerror or exc}; "
                             "nothing was sent") from None
        filename, ctype = path.name, None
    else:
        raise InputError(f"an attachment is a path, (filename, data) or (filename, data, "
                         f"content_type), not {type(item).__name__}; nothing was sent")
    if not isinstance(filename, str) or not filename:
        raise InputError("attachment: the file name must be a non-empty string; nothing was sent")
    if ctype is None:
        ctype = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    check_header(f"attachment {filename!r} content type", ctype)
    if not re.fullmatch(r"[!-~]+/[!-~]+", ctype) or ";" in ctype:
        raise InputError(f"attachment {filename!r}: {ctype!r} is not a content type "
                         "(type/subtype); nothing was sent")
    return (b"Content-Type: " + ctype.encode("ascii") + CRLF
            + b"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment"
            + _param("filename", filename) + CRLF + CRLF + _base64_lines(data))


def _boundary(parts: Sequence[bytes]) -> bytes:
    while True:
        b = b"=_mx" + secrets.token_hex(12).encode("ascii")
        if not any(b in p for p in parts):
            return b


def multipart(subtype: bytes, parts: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(Content-Type header, body) of a multipart made of complete parts
    (each: headers, blank line, body ending in CRLF)."""
    b = _boundary(parts)
    # the CRLF before a delimiter is the delimiter's: each part keeps its own last line end
    body = b"--" + b + CRLF + (b"\r\n--" + b + CRLF).join(parts) + b"\r\n--" + b + b"--\r\n"
    return b'Content-Type: multipart/' + subtype + b'; boundary="' + b + b'"\r\n', body


def body_bytes(body: str | None, html: str | None,
               attachments: Sequence[Attachment] | None, eight_bit: bool) -> bytes:
    """The MIME headers, the blank line and the body of a message."""
    text = text_part(body if body is not None else "", "plain", eight_bit) \
        if body is not None or html is None else None
    rich = text_part(html, "html", eight_bit) if html is not None else None
    if text is not None and rich is not None:
        head, content = multipart(b"alternative", [text[0] + CRLF + text[1], rich[0] + CRLF + rich[1]])
    else:
        head, content = text or rich   # type: ignore[misc]
    if attachments:
        parts = [head + CRLF + content] + [attachment_part(a) for a in attachments]
        head, content = multipart(b"mixed", parts)
    return b"MIME-Version: 1.0\r\n" + head + CRLF + content


# -- a whole message ---------------------------------------------------------------

def build(*, sender: str, to: Sequence[str] = (), cc: Sequence[str] = (), subject: str = "",
          body: str | None = "", html: str | None = None, reply_to: str | None = None,
          headers: Mapping[str, str] | None = None,
          attachments: Sequence[Attachment] | None = None,
          eight_bit: bool = True, utf8: bool = False) -> tuple[bytes, str]:
    """(wire bytes, Message-ID) of an ordinary message From ``sender``.

    ``headers`` add or replace headers (an address header's value is an
    address list); MIME-Version and Content-* are the builder's own.  Bcc is
    never written.  InputError (naming the field) for CR/LF/NUL anywhere in a
    header, a bad header name or address, or an unreadable attachment.
    """
    if not isinstance(subject, str):
        raise InputError(f"subject must be a string, not {type(subject).__name__}; nothing was sent")
    check_header("subject", subject)
    extra: dict[str, tuple[str, str]] = {}
    for name, value in (headers or {}).items():
        _check_name(name)
        lower = name.lower()
        if lower in _MIME_HEADERS:
            raise InputError(f"header {name}: set by the builder from the body and attachments; "
                             "to send your own MIME structure pass message=EmailMessage; "
                             "nothing was sent")
        extra[lower] = (name, value)
    out = [address_header(b"From", "sender", [sender], utf8) if "from" not in extra else b""]
    if to and "to" not in extra:
        out.append(address_header(b"To", "to", to, utf8))
    if cc and "cc" not in extra:
        out.append(address_header(b"Cc", "cc", cc, utf8))
    if reply_to and "reply-to" not in extra:
        out.append(address_header(b"Reply-To", "reply_to", [reply_to], utf8))
    if "subject" not in extra:
        out.append(unstructured(b"Subject", subject, utf8))
    for lower, (name, value) in extra.items():
        if lower != "bcc":
            out.append(encode_header(name, value, utf8=utf8))
    if "date" not in extra:
        out.append(date_header())
    if "message-id" in extra:
        message_id = extra["message-id"][1]
    else:
        message_id = make_message_id(split_address(sender)[1].rpartition("@")[2] or None)
        out.append(b"Message-ID: " + message_id.encode("utf-8") + CRLF)
    if body is not None and not isinstance(body, str):
        raise InputError(f"body must be a string, not {type(body).__name__}; nothing was sent")
    if html is not None and not isinstance(html, str):
        raise InputError(f"html must be a string, not {type(html).__name__}; nothing was sent")
    out.append(body_bytes(body, html, attachments, eight_bit))
    return b"".join(out), message_id
