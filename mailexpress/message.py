"""Building a message given as an `EmailMessage` (the standard library serialises it).

Ordinary messages are written by mime.py, or by the C renderer
(csrc/proto/render.c) for the cases it takes."""
from __future__ import annotations

import copy
import email.policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from .errors import InputError

__all__ = ["build_message", "message_bytes"]


def _check_header(name: str, value: str) -> None:
    for what, text in (("name", name), ("value", value)):
        if any(c in text for c in "\r\n\0"):
            raise InputError(f"header {name!r}: its {what} contains CR, LF or NUL "
                             "(header injection); nothing was sent")
    if not name or any(ord(c) <= 32 or ord(c) >= 127 or c == ":" for c in name):
        raise InputError(f"header name {name!r} is not a valid field name; nothing was sent")


def _domain_of(address: str) -> str | None:
    addr = parseaddr(address)[1]
    return addr.rpartition("@")[2] or None


def build_message(*, sender: str, to: list[str], cc: list[str], subject: str, body: str,
                  html: str | None = None, reply_to: str | None = None,
                  headers: dict[str, str] | None = None, template: EmailMessage | None = None,
                  eight_bit: bool = True, utf8: bool = False) -> EmailMessage:
    """A message From ``sender`` with Date and Message-ID.

    ``eight_bit`` lets text parts go as 8bit (the server offers 8BITMIME);
    otherwise non-ASCII text is quoted-printable or base64.  ``utf8`` allows
    UTF-8 in headers and addresses (the server offers SMTPUTF8).  With a
    ``template`` the given message is copied and completed instead.
    """
    for name, value in [("From", sender), ("Reply-To", reply_to or ""), ("Subject", subject)] + [
            ("To", a) for a in to] + [("Cc", a) for a in cc]:
        _check_header(name, value)
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    policy = policy.clone(cte_type="8bit" if eight_bit else "7bit")
    if template is not None:
        msg = copy.deepcopy(template)
        msg.policy = policy
        if msg["From"] is None:
            msg["From"] = sender
        if to and msg["To"] is None:
            msg["To"] = ", ".join(to)
        if cc and msg["Cc"] is None:
            msg["Cc"] = ", ".join(cc)
        if reply_to and msg["Reply-To"] is None:
            msg["Reply-To"] = reply_to
    else:
        msg = EmailMessage(policy=policy)
        msg["From"] = sender
        if to:
            msg["To"] = ", ".join(to)
        if cc:
            msg["Cc"] = ", ".join(cc)
        if reply_to:
            msg["Reply-To"] = reply_to
        msg["Subject"] = subject
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    for name, value in (headers or {}).items():
        _check_header(name, value)
        del msg[name]
        msg[name] = value
    if msg["Date"] is None:
        msg["Date"] = formatdate(localtime=True)
    if msg["Message-ID"] is None:
        msg["Message-ID"] = make_msgid(domain=_domain_of(sender))
    return msg


def message_bytes(msg: EmailMessage, *, utf8: bool = False) -> bytes:
    """The message as it goes on the wire (CRLF line ends; Bcc left out)."""
    policy = (email.policy.SMTPUTF8 if utf8 else email.policy.SMTP).clone(
        cte_type=getattr(msg.policy, "cte_type", "8bit"))
    if msg["Bcc"] is not None:
        msg = copy.deepcopy(msg)
        del msg["Bcc"]
    try:
        return msg.as_bytes(policy=policy)
    except (UnicodeEncodeError, ValueError) as exc:
        raise InputError(f"the message cannot be serialised for this server: {exc}; "
                         "nothing was sent") from None
