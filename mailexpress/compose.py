"""One place that turns send_as-style arguments into an envelope and wire bytes.

`send_as`, `send_many` (mappings) and `Template` all come here.  An ordinary
message is written by the fast builder (`mime`); a given `EmailMessage` is
completed and serialised by the standard library (`message`), exactly as
given; bytes go as they are.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any, NamedTuple

from . import _core, mime
from .errors import InputError
from .message import build_message, message_bytes

__all__ = ["KEYS", "Prepared", "addr_spec", "envelope", "header_addresses", "prepare",
           "prepare_item", "prepare_items", "recipients"]

#: The keys of a send_many mapping: send_as's keyword arguments.
KEYS = frozenset({"to", "cc", "bcc", "subject", "body", "html", "sender", "reply_to",
                  "headers", "message", "envelope_from", "attachments"})


class Prepared(NamedTuple):
    """What goes on the wire for one message."""

    envelope_from: str
    recipients: list[str]
    data: Any           #: bytes, or a binary file (Session.send)
    message_id: str | None


def recipients(to: str | Iterable[str] | None) -> list[str]:
    """``to`` as a list (a string is one recipient)."""
    if to is None:
        return []
    if isinstance(to, str):
        return [to]
    return list(to)


def addr_spec(value: str) -> str:
    """The bare address of ``"Name <a@b>"`` or ``"a@b"``."""
    if "<" not in value and "(" not in value and '"' not in value:
        return value.strip()
    _name, addr = parseaddr(value)
    return addr or value


def header_addresses(msg: EmailMessage) -> list[str]:
    """The addr-specs in a message's To, Cc and Bcc headers."""
    out: list[str] = []
    for name in ("To", "Cc", "Bcc"):
        for value in msg.get_all(name, []):
            addresses = getattr(value, "addresses", None)
            if addresses is not None:
                out.extend(a.addr_spec for a in addresses)
            else:
                out.extend(a.strip() for a in str(value).split(",") if a.strip())
    return out


#: how far into raw bytes the header block is looked for (Message-ID)
_HEADER_SCAN_MAX = 65536


def raw_message_id(data: bytes | bytearray | memoryview) -> str | None:
    """The Message-ID header of a raw message, from its header block only
    (at most the first 64 KiB; the body is never looked at)."""
    head = bytes(memoryview(data)[:_HEADER_SCAN_MAX])
    ends = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i >= 0]
    lines = head[:min(ends) if ends else len(head)].split(b"\n")
    for i, line in enumerate(lines):
        if line[:11].lower() == b"message-id:":
            value = line[11:]
            for cont in lines[i + 1:]:          # folded onto the next lines
                if cont[:1] not in (b" ", b"\t"):
                    break
                value += cont
            return " ".join(value.decode("ascii", "replace").split()) or None
    return None


def envelope(message: Any, envelope_from: str | None, recipients: str | Sequence[str] | None,
             *, utf8: bool) -> Prepared:
    """The envelope and wire form of what Session.send takes: an
    `EmailMessage` (envelope from its Sender/From and To/Cc/Bcc headers
    unless given; Bcc not transmitted), or bytes or a binary file with both
    given.  InputError when the envelope cannot be known."""
    message_id: str | None = None
    if isinstance(message, EmailMessage):
        if envelope_from is None:
            envelope_from = addr_spec(str(message.get("Sender") or message.get("From") or ""))
        if recipients is None:
            recipients = [addr_spec(a) for a in header_addresses(message)]
        message_id = message.get("Message-ID")
        data = message_bytes(message, utf8=utf8)
    elif isinstance(message, (bytes, bytearray, memoryview)) or hasattr(message, "readinto"):
        if envelope_from is None or recipients is None:
            raise InputError("sending bytes or a file needs envelope_from and recipients; "
                             "nothing was sent")
        data = message
        if isinstance(message, (bytes, bytearray, memoryview)):
            message_id = raw_message_id(message)
    else:
        raise InputError(f"message must be an email.message.EmailMessage, bytes or a binary "
                         f"file, not {type(message).__name__}; nothing was sent")
    rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
    if not envelope_from:
        raise InputError("no envelope sender: give envelope_from or a From header; nothing was sent")
    if not rcpts:
        raise InputError("no recipients: give recipients or To/Cc/Bcc headers; nothing was sent")
    return Prepared(envelope_from, rcpts, data, message_id)


def prepare(*, sender: str, to: str | Iterable[str] | None = None,
            cc: str | Iterable[str] | None = None, bcc: str | Iterable[str] | None = None,
            subject: str = "", body: str | None = None, html: str | None = None,
            reply_to: str | None = None, message: EmailMessage | bytes | None = None,
            envelope_from: str | None = None, headers: Mapping[str, str] | None = None,
            attachments: Sequence[mime.Attachment] | None = None,
            eight_bit: bool = True, utf8: bool = False) -> Prepared:
    """The envelope and wire bytes of one message, as `send_as` sends it.

    ``body`` None: no text part when there is ``html`` (one text/html part,
    as `EmailMessage` makes it), an empty one otherwise.
    ``eight_bit``/``utf8``: the server offers 8BITMIME/SMTPUTF8.  InputError
    (naming the field; nothing was sent) for anything that cannot be sent.
    """
    to_list, cc_list, bcc_list = recipients(to), recipients(cc), recipients(bcc)
    # bcc is in no header, and with message= bytes none of them is: checked
    # here as the To and Cc headers check theirs (an empty one would go out
    # as RCPT TO:<>)
    for field, given in (("to", to_list), ("cc", cc_list), ("bcc", bcc_list)):
        if field == "bcc" or isinstance(message, (bytes, bytearray, memoryview)):
            for a in given:
                mime.check_address(field, a)
    # "Name <addr>" in to/cc/bcc: the header keeps the name, the envelope the address
    rcpts = [mime.split_address(a, field)[1] if "<" in a else a
             for field, given in (("to", to_list), ("cc", cc_list), ("bcc", bcc_list)) for a in given]
    mail_from = envelope_from or addr_spec(sender)
    if isinstance(message, (bytes, bytearray, memoryview)):
        if not rcpts:
            raise InputError("sending bytes needs to=... recipients; nothing was sent")
        return Prepared(mail_from, rcpts, bytes(message), None)
    if message is not None:
        if not isinstance(message, EmailMessage):
            raise InputError(f"message must be an email.message.EmailMessage or bytes, not "
                             f"{type(message).__name__}; nothing was sent")
        if attachments:
            raise InputError("attachments go with subject/body, not with message=...; add them "
                             "to the EmailMessage (add_attachment); nothing was sent")
        msg = build_message(sender=sender, to=to_list, cc=cc_list, subject=subject, body=body or "",
                            html=html, reply_to=reply_to, headers=dict(headers or {}),
                            template=message, eight_bit=eight_bit, utf8=utf8)
        if not rcpts:
            rcpts = [addr_spec(a) for a in header_addresses(msg)]
            if not rcpts:
                raise InputError("no recipients: give to=... (or cc/bcc) or To/Cc/Bcc headers; "
                                 "nothing was sent")
        return Prepared(mail_from, rcpts, message_bytes(msg, utf8=utf8), msg.get("Message-ID"))
    if not rcpts:
        raise InputError("no recipients: give to=... (or cc/bcc); nothing was sent")
    # UTF-8 headers (RFC 6532) only in an SMTPUTF8 transaction, which the engine
    # declares when an envelope address is not ASCII; encoded words otherwise
    utf8 = utf8 and not (mail_from.isascii() and all(a.isascii() for a in rcpts))
    data, message_id = mime.build(sender=sender, to=to_list, cc=cc_list, subject=subject,
                                  body=body, html=html, reply_to=reply_to, headers=headers,
                                  attachments=attachments, eight_bit=eight_bit, utf8=utf8)
    return Prepared(mail_from, rcpts, data, message_id)


#: per (default sender, default reply-to): what the C renderer needs, or None
_consts: dict[tuple[str, str | None], tuple[bytes, bytes, bytes, str, bytes] | None] = {}


def _render_consts(sender: str | None,
                   reply_to: str | None) -> tuple[bytes, bytes, bytes, str, bytes] | None:
    """The From and Reply-To lines, envelope sender and Message-ID's end of
    a mapping that names no sender of its own, for `_core.render_items`; None
    when they are not ASCII (encoded words or SMTPUTF8: mime.build)."""
    if not sender:
        return None
    key: tuple[str, str | None] = (sender, reply_to)
    if key in _consts:
        return _consts[key]
    got = None
    if sender.isascii() and (not reply_to or reply_to.isascii()):
        try:
            head = mime.address_header(b"From", "sender", [sender], False)
            mid = mime.address_header(b"Reply-To", "reply_to", [reply_to], False) \
                if reply_to else b""
            domain = mime.split_address(sender)[1].rpartition("@")[2] or "mailexpress.invalid"
            got = (head, mid, b"", addr_spec(sender), f"@{domain}>".encode("ascii"))
        except (InputError, UnicodeError):
            got = None          # mime.build says why, naming the field
    if len(_consts) < 64:
        _consts[key] = got
    return got


def prepare_items(items: list[Any], *, sender: str | None, reply_to: str | None,
                  eight_bit: bool, utf8: bool) -> list[Prepared | InputError]:
    """`prepare_item` of each of a list, as one C call for the ordinary
    ones; a message that cannot be prepared gets its `InputError`."""
    consts = _render_consts(sender, reply_to)
    got: list[Any] = _core.render_items(consts, items, mime.date_header(), mime._counter,
                                        mime._id_prefix, eight_bit, Prepared) \
        if consts is not None else [None] * len(items)
    for i, p in enumerate(got):
        if p is None:
            try:
                got[i] = _build_item(items[i], sender=sender, reply_to=reply_to,
                                     eight_bit=eight_bit, utf8=utf8)
            except InputError as exc:
                got[i] = exc
    return got


def prepare_item(item: Mapping[str, Any], *, sender: str | None, reply_to: str | None,
                 eight_bit: bool, utf8: bool) -> Prepared:
    """One send_many mapping (send_as's keyword arguments); ``sender`` and
    ``reply_to`` are the defaults when the mapping has none.

    An ordinary one (to, subject and a body, ASCII headers, a body that goes
    7bit or 8bit) is rendered in C (csrc/proto/render.c) into the same
    bytes mime.build writes; anything else is built here."""
    got = prepare_items([item], sender=sender, reply_to=reply_to, eight_bit=eight_bit,
                        utf8=utf8)[0]
    if isinstance(got, InputError):
        raise got
    return got


def _build_item(item: Any, *, sender: str | None, reply_to: str | None,
                eight_bit: bool, utf8: bool) -> Prepared:
    """`prepare_item` by the Python builder (what the C renderer declined)."""
    if not isinstance(item, Mapping):
        raise InputError(f"each message must be a mapping of send_as keyword arguments or an "
                         f"EmailMessage, not {type(item).__name__}; it was not sent")
    unknown = item.keys() - KEYS
    if unknown:
        raise InputError(f"unknown key(s) {sorted(unknown)} in a message; the keys are "
                         "send_as's keyword arguments; nothing was sent")
    who = item.get("sender") or sender
    if not who:
        raise InputError("no sender: give 'sender' in the message, sender=... or from_address "
                         "in the config; nothing was sent")
    rt = item.get("reply_to")
    return prepare(sender=who, to=item.get("to"), cc=item.get("cc"), bcc=item.get("bcc"),
                   subject=item.get("subject", ""), body=item.get("body"),
                   html=item.get("html"), reply_to=rt if rt is not None else reply_to,
                   message=item.get("message"), envelope_from=item.get("envelope_from"),
                   headers=item.get("headers"), attachments=item.get("attachments"),
                   eight_bit=eight_bit, utf8=utf8)
