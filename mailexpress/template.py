"""Mail merge: a message compiled once, filled in per recipient.

    t = mx.Template(to="{name} <{email}>", subject="Invoice {number}",
                    body="Dear {name},\\n...", html="<p>Dear {name}</p>")
    mx.send_many(cfg, template=t, rows=csv.DictReader(f))

Placeholders are `str.format` fields (``{name}``, ``{amount:.2f}``,
``{name!r}``) naming keys of each row; values filled into ``html`` are HTML
escaped.  The template is parsed once; everything without a placeholder
(sender, static headers, a static body, attachments) is encoded once per
server capability set, so the per-message cost is the substitution and the
encoding of what it changed.
"""
from __future__ import annotations

import html as html_mod
import string
from collections.abc import Mapping, Sequence
from typing import Any, Union

from . import _core, mime
from .compose import Prepared
from .errors import InputError

__all__ = ["Template"]

CRLF = b"\r\n"
#: what may stand around an address in a list, or alone between two commas: an
#: empty element of the list (RFC 5322 obs-addr-list; getaddresses gives ('', '')),
#: which is no address.  Any other character (CR, LF, another line break or
#: white space) belongs to an address and must make one.
_WSP = " \t"
_Part = tuple[str, Union[str, None], Union[str, None], Union[str, None]]


def _split_outside_quotes(text: str) -> list[str]:
    """``text`` split at each comma that is not inside a quoted string
    (``"Doe, John" <j@x>, k@y``: two pieces)."""
    out: list[str] = []
    start, quoted, escaped = 0, False, False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


class _Field:
    """One templated string: literal text and placeholders, parsed once."""

    __slots__ = ("where", "text", "parts", "escape", "names", "single")

    def __init__(self, where: str, text: str, escape: bool) -> None:
        if not isinstance(text, str):
            raise InputError(f"Template {where}: must be a string, not {type(text).__name__}")
        self.where, self.text, self.escape = where, text, escape
        try:
            parts: list[_Part] = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise InputError(f"Template {where}: {exc} (write {{{{ and }}}} for literal braces)") from None
        for _lit, name, _spec, _conv in parts:
            if name is not None and (not name.isidentifier() and not name.replace("-", "_").isidentifier()):
                raise InputError(f"Template {where}: placeholder {{{name}}} must name a field "
                                 "(letters, digits, _ or -), not an expression")
        self.parts = parts
        self.names = frozenset(n for _l, n, _s, _c in parts if n is not None)
        #: the field name when the text is exactly one placeholder
        self.single = parts[0][1] if len(parts) == 1 and not parts[0][0] and parts[0][1] \
            and not parts[0][2] and not parts[0][3] else None

    def values(self, row: Mapping[str, Any]) -> list[str]:
        """The text of each placeholder for ``row`` (HTML escaped for html)."""
        out = []
        for _lit, name, spec, conv in self.parts:
            if name is None:
                continue
            try:
                value = row[name]
            except KeyError:
                raise InputError(f"the row has no field {name!r} (used in the template's "
                                 f"{self.where}); it was not sent") from None
            if conv == "r":
                value = repr(value)
            elif conv == "a":
                value = ascii(value)
            elif conv == "s":
                value = str(value)
            try:
                text = format(value, spec) if spec else (value if type(value) is str else str(value))
            except (ValueError, TypeError) as exc:
                raise InputError(f"field {name!r} = {value!r} does not fit {{{name}:{spec}}} in "
                                 f"the template's {self.where}: {exc}; it was not sent") from None
            out.append(html_mod.escape(text) if self.escape else text)
        return out

    def render(self, row: Mapping[str, Any]) -> str:
        if not self.names:
            return self.text
        return self.join(self.values(row))

    def join(self, values: list[str]) -> str:
        """The text with ``values`` (from `values`) in its placeholders."""
        out = []
        it = iter(values)
        for lit, name, _spec, _conv in self.parts:
            if lit:
                out.append(lit)
            if name is not None:
                out.append(next(it))
        return "".join(out)


_HEAD_7BIT = b'; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'


class _Text:
    """A templated text part written as wire bytes without a build: its
    literal text is ASCII (CR and NUL free), so when every value filled in
    is ASCII without CR, LF or NUL and the longest line stays within 998
    octets, the part is 7bit and its body is the literal pieces, line ends
    made CRLF once, with the values between them: what `mime.text_part`
    gives for the rendered text.  Otherwise (None) the part is built."""

    __slots__ = ("field", "pieces", "longest", "head")

    def __init__(self, field: _Field, subtype: str) -> None:
        self.field = field
        self.pieces = [lit.replace("\n", "\r\n").encode("ascii") for lit, _n, _s, _c in field.parts]
        blank = "".join(lit for lit, _n, _s, _c in field.parts)
        self.longest = max(map(len, blank.split("\n")))
        self.head = b"Content-Type: text/" + subtype.encode("ascii") + _HEAD_7BIT + CRLF

    @staticmethod
    def fits(field: _Field) -> bool:
        text = "".join(lit for lit, _n, _s, _c in field.parts)
        return text.isascii() and "\r" not in text and "\0" not in text

    def part(self, row: Mapping[str, Any]) -> bytes | None:
        """Content-Type, Content-Transfer-Encoding, blank line, body."""
        values = self.field.values(row)
        size = self.longest
        for v in values:
            if not v.isascii() or "\n" in v or "\r" in v or "\0" in v:
                return None
            size += len(v)
        if size > 998:
            return None
        out = []
        it = iter(values)
        for piece, (_lit, name, _s, _c) in zip(self.pieces, self.field.parts):
            out.append(piece)
            if name is not None:
                out.append(next(it).encode("ascii"))
        body = b"".join(out)
        return self.head + body if body.endswith(b"\n") else self.head + body + CRLF


def _c_field(f: _Field) -> tuple[bytes | str | None, ...] | None:
    """A field as (literal UTF-8, placeholder name or None, ...) for the C
    renderer, or None when a placeholder has a format spec or conversion."""
    out: list[bytes | str | None] = []
    for lit, name, spec, conv in f.parts:
        if spec or conv:
            return None
        try:
            out.append(lit.encode("utf-8"))
        except UnicodeError:
            return None
        out.append(name)
    return tuple(out)


class _Compiled:
    """What does not change from row to row, encoded for one capability set."""

    def __init__(self, t: Template, eight_bit: bool, utf8: bool) -> None:
        def static(f: _Field | None) -> bool:
            return f is None or not f.names
        self.from_b = mime.encode_header("From", t._sender.text, utf8=utf8) \
            if t._sender is not None and static(t._sender) else None
        self.reply_to_b = mime.encode_header("Reply-To", t._reply_to.text, utf8=utf8) \
            if t._reply_to is not None and static(t._reply_to) else None
        self.subject_b = mime.encode_header("Subject", t._subject.text, utf8=utf8) \
            if static(t._subject) else None
        self.headers_b = b"".join(mime.encode_header(n, f.text, utf8=utf8)
                                  for n, f in t._headers if static(f))
        self.text_b = self._part(t._body, "plain", eight_bit) if static(t._body) and t._body else None
        self.html_b = self._part(t._html, "html", eight_bit) if static(t._html) and t._html else None
        self.attachments_b = [mime.attachment_part(a) for a in t.attachments]
        #: templated text parts that may be filled in as bytes (see _Text)
        self.text_t = _Text(t._body, "plain") if t._body is not None and t._body.names \
            and _Text.fits(t._body) else None
        self.html_t = _Text(t._html, "html") if t._html is not None and t._html.names \
            and _Text.fits(t._html) else None
        #: per sender or reply-to address seen: its header line, envelope address and domain
        self.seen: dict[tuple[str, str], tuple[bytes, str, str | None]] = {}
        self.mime_b: bytes | None = None
        if static(t._body) and static(t._html):
            self.mime_b = mime.body_bytes(t._body.text if t._body else None,
                                          t._html.text if t._html else None, None, eight_bit)
            if self.attachments_b:
                self.mime_b = self._mixed(self.mime_b)
        #: what `_core.render_rows` renders a row from, or None (see _spec)
        self.spec = self._spec(t)
        #: per (default sender, default reply-to): render_rows's consts or None
        self.consts: dict[tuple[str | None, str | None],
                          tuple[bytes, bytes, bytes, str, bytes] | None] = {}

    def _spec(self, t: Template) -> tuple[Any, ...] | None:
        """(to, subject, MIME part) for the C renderer (csrc/proto/render.c)
        when the template is one it renders: placeholders without format
        specs or conversions in to, subject, body and html (one text part,
        or both as multipart/alternative), no cc/bcc, a fixed sender,
        reply-to and headers, attachments only with a fixed body and html.
        Rows it cannot render (values that are not ASCII in a header, need
        encoding, ...) it hands back."""
        if t._cc is not None or t._bcc is not None or any(f.names for _n, f in t._headers) \
                or (t._sender is not None and t._sender.names) \
                or (t._reply_to is not None and t._reply_to.names):
            return None
        if self.subject_b is not None:
            subject: Any = self.subject_b
        else:
            subject = _c_field(t._subject)
        to = _c_field(t._to)
        mime_part: Any
        if self.mime_b is not None:
            mime_part = self.mime_b[len(b"MIME-Version: 1.0\r\n"):]
        elif self.attachments_b:
            return None                 # multipart/mixed around a templated part: Python
        else:
            parts: list[Any] = []
            for f, fixed, subtype, escape in ((t._body, self.text_b, b"plain", False),
                                              (t._html, self.html_b, b"html", True)):
                if f is None:
                    continue
                if fixed is not None:
                    parts.append(fixed)
                    continue
                field = _c_field(f)
                if field is None:
                    return None
                parts.append((field, subtype, escape))
            mime_part = tuple(parts)
        if to is None or subject is None:
            return None
        return (to, subject, mime_part)

    @staticmethod
    def _part(f: _Field, subtype: str, eight_bit: bool) -> bytes:
        head, body = mime.text_part(f.text, subtype, eight_bit)
        return head + CRLF + body

    def _mixed(self, inner: bytes) -> bytes:
        """``MIME-Version`` ... of a multipart/mixed holding ``inner`` (the
        MIME headers and body of the text) and the attachments."""
        assert inner.startswith(b"MIME-Version: 1.0\r\n")
        head, content = mime.multipart(b"mixed", [inner[19:]] + self.attachments_b)
        return b"MIME-Version: 1.0\r\n" + head + CRLF + content


class Template:
    """A message with ``{field}`` placeholders, compiled once.

    ``to`` (default ``"{to}"``), ``cc``, ``bcc``, ``sender``, ``reply_to``,
    ``subject``, ``body``, ``html`` and the values of ``headers`` may hold
    placeholders; ``attachments`` are the same for every message (read
    once).  ``sender``/``reply_to`` default to send_many's and then the
    config's.  ``to``/``cc``/``bcc`` may render to several addresses
    separated by commas, or be one placeholder whose value is a list.

    `render` gives one message as `send_as` keyword arguments;
    ``mx.send_many(cfg, template=t, rows=rows)`` sends one message a row
    without building it from scratch.
    """

    def __init__(self, *, subject: str = "", body: str | None = None, html: str | None = None,
                 to: str = "{to}", cc: str | None = None, bcc: str | None = None,
                 sender: str | None = None, reply_to: str | None = None,
                 headers: Mapping[str, str] | None = None,
                 attachments: Sequence[mime.Attachment] = ()) -> None:
        if body is None and html is None:
            body = ""
        self._subject = _Field("subject", subject, False)
        self._body = _Field("body", body, False) if body is not None else None
        self._html = _Field("html", html, True) if html is not None else None
        self._to = _Field("to", to, False)
        self._cc = _Field("cc", cc, False) if cc is not None else None
        self._bcc = _Field("bcc", bcc, False) if bcc is not None else None
        self._sender = _Field("sender", sender, False) if sender is not None else None
        self._reply_to = _Field("reply_to", reply_to, False) if reply_to is not None else None
        self._headers = [(name, _Field(f"header {name}", value, False))
                         for name, value in (headers or {}).items()]
        for name, _f in self._headers:
            mime.encode_header(name, "x")      # a bad header name fails here, once
        self.attachments = list(attachments)
        for a in self.attachments:
            mime.attachment_part(a)             # an unreadable attachment fails here, once
        fields = [self._subject, self._body, self._html, self._to, self._cc, self._bcc,
                  self._sender, self._reply_to] + [f for _n, f in self._headers]
        #: every field name the template uses
        self.fields: frozenset[str] = frozenset().union(*(f.names for f in fields if f is not None))
        self._compiled: dict[tuple[bool, bool], _Compiled] = {}

    def __repr__(self) -> str:
        return f"<mailexpress.Template fields={sorted(self.fields)}>"

    def _addresses(self, f: _Field | None, row: Mapping[str, Any]) -> list[str]:
        """The addresses ``f`` renders to for ``row``: a list value of a lone
        placeholder, or the text split at its commas (outside double quotes),
        each stripped of spaces and tabs; an element that is empty or only
        spaces and tabs is no address ("{a}, {b}" with b empty: one).  Every
        other element must be an address: InputError naming the field and the
        row's fields it came from otherwise (a CR or LF alone included)."""
        if f is None:
            return []
        if f.single is not None:
            value = row.get(f.single)
            if isinstance(value, (list, tuple)):
                return self._checked(f, [str(v) for v in value])
        text = f.render(row)
        if "," not in text:
            one = text.strip(_WSP)
            return self._checked(f, [one]) if one else []
        pieces = text.split(",") if '"' not in text else _split_outside_quotes(text)
        return self._checked(f, [a for a in (p.strip(_WSP) for p in pieces) if a])

    @staticmethod
    def _checked(f: _Field, addresses: list[str]) -> list[str]:
        where = f.where + (f" (from the row's {', '.join(map(repr, sorted(f.names)))})"
                           if f.names else "")
        for a in addresses:
            mime.check_address(where, a)
        return addresses

    def render(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """One message as `send_as` keyword arguments (``to``, ``subject``,
        ``body``, ...): ``mx.send_as(cfg, **t.render(row))``."""
        out: dict[str, Any] = {"to": self._addresses(self._to, row),
                               "subject": self._subject.render(row)}
        for key, f in (("cc", self._cc), ("bcc", self._bcc)):
            if f is not None:
                out[key] = self._addresses(f, row)
        for key, g in (("body", self._body), ("html", self._html), ("sender", self._sender),
                       ("reply_to", self._reply_to)):
            if g is not None:
                out[key] = g.render(row)
        if self.attachments:
            out["attachments"] = list(self.attachments)
        if self._headers:
            out["headers"] = {name: f.render(row) for name, f in self._headers}
        return out

    def _compiled_for(self, eight_bit: bool, utf8: bool) -> _Compiled:
        c = self._compiled.get((eight_bit, utf8))
        if c is None:
            c = self._compiled[(eight_bit, utf8)] = _Compiled(self, eight_bit, utf8)
        return c

    def _consts(self, c: _Compiled, sender: str | None,
                reply_to: str | None) -> tuple[bytes, bytes, bytes, str, bytes] | None:
        """render_rows's consts (From and Reply-To lines, fixed headers,
        envelope sender, the Message-ID's end) for these defaults, or None
        when the C renderer is not for them (a sender that is not ASCII)."""
        key = (sender, reply_to)
        if key in c.consts:
            return c.consts[key]
        got = None
        who = self._sender.text if self._sender is not None else sender
        rt = reply_to if self._reply_to is None else None
        if c.spec is not None and who and who.isascii() and (not rt or rt.isascii()):
            try:
                from_b, mail_from, domain = self._address(c, "From", who, False)
                mid = c.reply_to_b if c.reply_to_b is not None else \
                    self._address(c, "Reply-To", rt, False)[0] if rt else b""
                got = (from_b, mid, c.headers_b, mail_from,
                       f"@{domain or 'mailexpress.invalid'}>".encode("ascii"))
            except (InputError, UnicodeError):
                got = None      # the Python path says why, naming the field
        if len(c.consts) < 64:
            c.consts[key] = got
        return got

    def prepare_many(self, rows: list[Any], *, sender: str | None, reply_to: str | None,
                     eight_bit: bool, utf8: bool) -> list[Prepared | InputError]:
        """`prepare` of each of a list: the rows the C renderer takes in one
        call; a row that cannot be sent gets its `InputError`."""
        c = self._compiled_for(eight_bit, False)
        consts = self._consts(c, sender, reply_to)
        got: list[Any] = [None] * len(rows)
        if consts is not None and c.spec is not None:
            got = _core.render_rows(c.spec, consts, rows, mime.date_header(), mime._counter,
                                    mime._id_prefix, eight_bit, Prepared)
        for i, p in enumerate(got):
            if p is None:
                try:
                    got[i] = self._build(rows[i], sender=sender, reply_to=reply_to,
                                         eight_bit=eight_bit, utf8=utf8)
                except InputError as exc:
                    got[i] = exc
        return got

    def prepare(self, row: Mapping[str, Any], *, sender: str | None, reply_to: str | None,
                eight_bit: bool, utf8: bool) -> Prepared:
        """The envelope and wire bytes of the row's message (what send_many
        sends): rendered in C (csrc/proto/render.c) when the template and
        the row's values allow, the same bytes built here otherwise."""
        got = self.prepare_many([row], sender=sender, reply_to=reply_to, eight_bit=eight_bit,
                                utf8=utf8)[0]
        if isinstance(got, InputError):
            raise got
        return got

    def _build(self, row: Mapping[str, Any], *, sender: str | None, reply_to: str | None,
               eight_bit: bool, utf8: bool) -> Prepared:
        if not isinstance(row, Mapping):
            raise InputError(f"each row must be a mapping of field names to values, not "
                             f"{type(row).__name__}; it was not sent")
        to = self._addresses(self._to, row)
        cc = self._addresses(self._cc, row)
        rcpts = to + cc + self._addresses(self._bcc, row)
        if not rcpts:
            raise InputError(f"no recipients: the template's to ({self._to.text!r}) is empty "
                             "for this row; it was not sent")
        who = self._sender.render(row) if self._sender is not None else sender
        if not who:
            raise InputError("no sender: give the template a sender, sender=... or from_address "
                             "in the config; nothing was sent")
        envelope = [mime.envelope_address(a, field)
                    for field, given in (("to", to), ("cc", cc), ("bcc", rcpts[len(to) + len(cc):]))
                    for a in given]
        # UTF-8 headers only in an SMTPUTF8 transaction (a non-ASCII envelope address)
        utf8 = utf8 and not (who.isascii() and all(a.isascii() for a in envelope))
        c = self._compiled_for(eight_bit, utf8)
        from_b, mail_from, domain = self._address(c, "From", who, utf8)
        out = [from_b, mime.address_header(b"To", "to", to, utf8)]
        if cc:
            out.append(mime.address_header(b"Cc", "cc", cc, utf8))
        if c.reply_to_b is not None:
            out.append(c.reply_to_b)
        else:
            rt = self._reply_to.render(row) if self._reply_to is not None else reply_to
            if rt:
                out.append(self._address(c, "Reply-To", rt, utf8)[0])
        if c.subject_b is not None:
            out.append(c.subject_b)
        else:
            subject = self._subject.render(row)
            mime.check_header("subject", subject)    # named as send_as names it
            out.append(mime.unstructured(b"Subject", subject, utf8))
        out.append(c.headers_b)
        for name, f in self._headers:
            if f.names:
                out.append(mime.encode_header(name, f.render(row), utf8=utf8))
        out.append(mime.date_header())
        message_id = mime.make_message_id(domain)
        out.append(b"Message-ID: " + message_id.encode("utf-8") + CRLF)
        out.append(c.mime_b or self._mime(c, row, eight_bit))
        return Prepared(mail_from, envelope, b"".join(out), message_id)

    @staticmethod
    def _address(c: _Compiled, name: str, value: str,
                 utf8: bool) -> tuple[bytes, str, str | None]:
        got = c.seen.get((name, value))
        if got is None:
            field = "sender" if name == "From" else "reply_to"
            addr = mime.split_address(value, field)[1]
            got = (mime.address_header(name.encode("ascii"), field, [value], utf8),
                   addr, addr.rpartition("@")[2] or None)
            if len(c.seen) < 64:
                c.seen[(name, value)] = got
        return got

    def _mime(self, c: _Compiled, row: Mapping[str, Any], eight_bit: bool) -> bytes:
        def part(f: _Field | None, static: bytes | None, fast: _Text | None,
                 subtype: str) -> bytes | None:
            if f is None:
                return None
            if static is not None:
                return static
            if fast is not None:
                got = fast.part(row)
                if got is not None:
                    return got
            head, body = mime.text_part(f.render(row), subtype, eight_bit)
            return head + CRLF + body
        text = part(self._body, c.text_b, c.text_t, "plain")
        rich = part(self._html, c.html_b, c.html_t, "html")
        if text is not None and rich is not None:
            head, content = mime.multipart(b"alternative", [text, rich])
            inner = head + CRLF + content
        else:
            inner = text or rich or b""
        inner = b"MIME-Version: 1.0\r\n" + inner
        return c._mixed(inner) if c.attachments_b else inner
