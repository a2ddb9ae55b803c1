"""The public client API: connect(), send_as(), Session and SendResult.

Thin on purpose: the C core speaks SMTP; this module builds messages, reads
the config and gives results a Python shape.
"""
from __future__ import annotations

import html
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parseaddr
from typing import IO, TYPE_CHECKING, Any, Callable, Union

from . import _core
from .config import Config
from .errors import Error, InputError
from .message import build_message, message_bytes
from .reply import Reply

if TYPE_CHECKING:
    from .auth import AuthResult
    from .bulk import BulkResult, Progress

__all__ = ["Session", "SendResult", "connect", "send_as"]

#: What a message body may be on the wire: bytes-like or a binary file.
Body = Union[bytes, bytearray, memoryview, IO[bytes]]
#: What Session.send takes.
Message = Union[EmailMessage, bytes, bytearray, memoryview, IO[bytes]]
#: One item of Session.send_many.
BulkItem = Union[EmailMessage, tuple[str, Union[str, Sequence[str]], Message]]
ProgressArg = Union[bool, "Callable[[Progress], object]", None]

log = logging.getLogger("mailexpress")


@dataclass(frozen=True)
class SendResult:
    """What happened to one message.

    ``accepted`` and ``refused`` split the envelope recipients; a refused
    recipient is never dropped silently: it is here with the server's reply.
    ``reply`` is the server's final answer at end of data (the message is
    accepted for delivery only when this object exists).
    """

    message_id: str | None
    envelope_from: str
    accepted: tuple[str, ...]
    refused: dict[str, Reply]
    reply: Reply
    elapsed_ms: int = 0
    transcript: tuple[tuple[int, str, str], ...] = field(default=(), repr=False)

    @property
    def ok(self) -> bool:
        """True when every recipient was accepted."""
        return not self.refused

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "envelope_from": self.envelope_from,
            "accepted": list(self.accepted),
            "refused": {a: r.to_dict() for a, r in self.refused.items()},
            "reply": self.reply.to_dict(),
            "elapsed_ms": self.elapsed_ms,
        }

    def _repr_html_(self) -> str:
        status = "sent to every recipient" if self.ok else f"sent, but {len(self.refused)} recipient(s) REFUSED"
        rows = "".join(f"<tr><td>{html.escape(a)}</td><td>accepted</td><td></td></tr>" for a in self.accepted)
        rows += "".join(f"<tr><td>{html.escape(a)}</td><td><b>REFUSED</b></td><td>{html.escape(str(r))}</td></tr>"
                        for a, r in self.refused.items())
        return (f"<div><b>Message {html.escape(self.message_id or '(no Message-ID)')}</b> from "
                f"<code>{html.escape(self.envelope_from)}</code>: {status} ({self.elapsed_ms} ms)"
                f"<table><tr><th>recipient</th><th>result</th><th>reply</th></tr>{rows}</table>"
                f"<div>server: <code>{html.escape(str(self.reply))}</code></div></div>")

    def __str__(self) -> str:
        lines = [f"message {self.message_id or '(no Message-ID)'} from {self.envelope_from}",
                 f"  accepted: {', '.join(self.accepted) or '-'}"]
        for addr, reply in self.refused.items():
            lines.append(f"  REFUSED:  {addr}: {reply}")
        lines.append(f"  server:   {self.reply}")
        return "\n".join(lines)


def _recipients(to: str | Iterable[str] | None) -> list[str]:
    if to is None:
        return []
    if isinstance(to, str):
        return [to]
    return list(to)


#: how far into raw bytes the header block is looked for (Message-ID)
_HEADER_SCAN_MAX = 65536


def _raw_message_id(data: bytes | bytearray | memoryview) -> str | None:
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


def _addr_spec(value: str) -> str:
    """The bare address of ``"Name <a@b>"`` or ``"a@b"``."""
    _name, addr = parseaddr(value)
    return addr or value


class Session(_core.Session):
    """One connection to a mail server.

    Made by `connect`, already greeted, upgraded to TLS and
    authenticated as the config says.  Use it as a context manager to send
    several messages over one connection::

        with mx.connect(cfg) as session:
            session.send(message)

    The smtplib-style methods (``ehlo``, ``starttls``, ``login``, ``mail``,
    ``rcpt``, ``data``, ``rset``, ``noop``, ``quit``, ``sendmail``,
    ``send_message``) are there for code ported from smtplib.
    """

    config: Config | None
    #: how `connect` authenticated (mechanism, final reply, mechanisms offered)
    auth_result: AuthResult | None

    def __init__(self, *args: Any, config: Config | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config = config
        self.auth_result = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close_quietly()

    def close_quietly(self) -> None:
        """QUIT if the session is usable, then close; never raises for I/O.

        The QUIT is bounded by the ``quit`` timeout (5 s by default); its
        failure is logged at DEBUG and otherwise ignored: what was sent is
        sent."""
        try:
            self.quit()
        except Error as exc:
            log.debug("QUIT failed, connection closed: %s", exc)
            self.close()

    def __repr__(self) -> str:
        peer = self.peer_address
        where = f"{peer[0]}:{peer[1]}" if peer else "not connected"
        tls = self.tls_version or "no TLS"
        auth = "authenticated" if self.authenticated else "anonymous"
        return f"<mailexpress.Session {where} {self.state} {tls} {auth}>"

    def has_extn(self, name: str) -> bool:
        """smtplib compatible: is the EHLO keyword offered?"""
        return name.upper() in self.capabilities

    @property
    def auth_mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms the server offers now (upper case)."""
        return tuple(self.capabilities.get("AUTH", "").upper().split())

    def sendmail(self, from_addr: str, to_addrs: str | Sequence[str], msg: bytes | str,
                 mail_options: Sequence[str] = (), rcpt_options: Sequence[str] = ()) -> dict[str, tuple[int, bytes]]:
        """smtplib compatible: returns the refused recipients as
        ``{address: (code, text)}``; raises when nothing was accepted."""
        if isinstance(msg, str):
            msg = msg.encode("ascii")   # smtplib's rule: str bodies are ASCII
        refused, _reply = super().send_raw(from_addr, to_addrs, msg, mail_options, rcpt_options)
        return {a: (r.code, r.text.encode("utf-8", "replace")) for a, r in refused.items()}

    def send_message(self, msg: EmailMessage, from_addr: str | None = None,
                     to_addrs: str | Sequence[str] | None = None,
                     mail_options: Sequence[str] = (), rcpt_options: Sequence[str] = ()) -> dict[str, tuple[int, bytes]]:
        """smtplib compatible: envelope taken from the headers unless given."""
        result = self.send(msg, envelope_from=from_addr, recipients=to_addrs,
                           mail_options=mail_options, rcpt_options=rcpt_options)
        return {a: (r.code, r.text.encode("utf-8", "replace")) for a, r in result.refused.items()}

    def _envelope(self, message: Message, envelope_from: str | None,
                  recipients: str | Sequence[str] | None) -> tuple[str, list[str], Body, str | None]:
        """(envelope sender, recipients, wire body, Message-ID) of one message;
        InputError when the envelope cannot be known."""
        message_id: str | None = None
        data: Body
        if isinstance(message, EmailMessage):
            if envelope_from is None:
                envelope_from = _addr_spec(str(message.get("Sender") or message.get("From") or ""))
            if recipients is None:
                recipients = [_addr_spec(a) for a in _header_addresses(message)]
            message_id = message.get("Message-ID")
            data = message_bytes(message, utf8=self.has_extn("SMTPUTF8"))
        elif isinstance(message, (bytes, bytearray, memoryview)) or hasattr(message, "readinto"):
            if envelope_from is None or recipients is None:
                raise InputError("sending bytes or a file needs envelope_from and recipients; "
                                 "nothing was sent")
            data = message
            if isinstance(message, (bytes, bytearray, memoryview)):
                message_id = _raw_message_id(message)
        else:
            raise InputError(f"message must be an email.message.EmailMessage, bytes or a binary "
                             f"file, not {type(message).__name__}; nothing was sent")
        rcpts = _recipients(recipients)
        if not envelope_from:
            raise InputError("no envelope sender: give envelope_from or a From header; nothing was sent")
        if not rcpts:
            raise InputError("no recipients: give recipients or To/Cc/Bcc headers; nothing was sent")
        return envelope_from, rcpts, data, message_id

    def send(self, message: Message, *, envelope_from: str | None = None,
             recipients: str | Sequence[str] | None = None,
             mail_options: Sequence[str] = (), rcpt_options: Sequence[str] = ()) -> SendResult:
        """Sends one message and returns its `SendResult`.

        For an `EmailMessage` the envelope defaults to
        its From (or Sender) and To/Cc/Bcc headers; Bcc is not transmitted.
        For bytes or a binary file (streamed in 64 KiB pieces, never copied
        whole), ``envelope_from`` and ``recipients`` are required.
        """
        started = time.monotonic()
        envelope_from, rcpts, data, message_id = self._envelope(message, envelope_from, recipients)
        refused, reply = super().send_raw(envelope_from, rcpts, data, mail_options, rcpt_options)
        return _result(envelope_from, rcpts, message_id, refused, reply,
                       int((time.monotonic() - started) * 1000))

    def send_many(self, messages: Iterable[BulkItem], *, stop_on_error: bool = False,
                  progress: ProgressArg = None, batch_size: int = 100) -> BulkResult:
        """Sends many messages over this session, pipelined across messages
        where the server allows it (PIPELINING; CHUNKING for BDAT).

        Each item is an `EmailMessage` (envelope from
        its headers) or a tuple ``(envelope_from, recipients, message)`` with
        ``message`` an EmailMessage, bytes or a binary file.  Returns a
        `BulkResult`: one `SendResult` or `Error` per
        message, in order.  A refused message does not stop the others unless
        ``stop_on_error``; a failed session stops everything after it, and
        those messages come back with ``retry_safe=True``.  ``progress`` is a
        callable taking a `Progress`, or True for a tqdm bar (when
        tqdm is installed; log lines otherwise).
        """
        from .bulk import run_bulk
        return run_bulk(self, messages, stop_on_error=stop_on_error, progress=progress,
                        batch_size=batch_size)


def _result(envelope_from: str, rcpts: list[str], message_id: str | None,
            refused: dict[str, Reply], reply: Reply, elapsed_ms: int) -> SendResult:
    accepted = tuple(a for a in rcpts if a not in refused)
    if refused:
        log.warning("message %s: %d of %d recipients refused: %s", message_id, len(refused),
                    len(rcpts), "; ".join(f"{a}: {r}" for a, r in refused.items()))
    log.info("message %s accepted from %s for %d recipient(s): %s", message_id,
             envelope_from, len(accepted), reply)
    return SendResult(message_id=message_id, envelope_from=envelope_from, accepted=accepted,
                      refused=dict(refused), reply=reply, elapsed_ms=elapsed_ms)


def _header_addresses(msg: EmailMessage) -> list[str]:
    out: list[str] = []
    for name in ("To", "Cc", "Bcc"):
        for value in msg.get_all(name, []):
            addresses = getattr(value, "addresses", None)
            if addresses is not None:
                out.extend(a.addr_spec for a in addresses)
            else:
                out.extend(a.strip() for a in str(value).split(",") if a.strip())
    return out


def _log_transcript(session: Session) -> None:
    if log.isEnabledFor(logging.DEBUG):
        for ms, direction, text in session.transcript:
            log.debug("%6d ms %s %s", ms, direction, text)


def connect(config: Config, **overrides: Any) -> Session:
    """Opens a `Session` as the config says: connect, EHLO, STARTTLS
    (security='starttls'), AUTH (use_auth) with the mechanism
    `mailexpress.auth.authenticate` picks: a token (XOAUTH2) when OAuth is
    configured, Kerberos, NTLM, LOGIN or PLAIN.  Keyword arguments override
    config fields (``token_provider=`` among them).  On failure the
    connection is closed before raising."""
    if overrides:
        config = config.replace(**overrides)
    session = Session(**config.session_kwargs(), config=config)
    if config.deadline:
        session.set_deadline(config.deadline)
    try:
        session.connect()
        session.ehlo()
        if config.security == "starttls":
            session.starttls()      # raises unless TLS is up; EHLO is repeated
        if config.use_auth:
            from .auth import authenticate
            session.auth_result = authenticate(session, config)
    except BaseException:
        _log_transcript(session)
        session.close()
        raise
    return session


def send_as(config: Config, sender: str | None = None, to: str | Iterable[str] | None = None,
            subject: str = "", body: str = "", *, reply_to: str | None = None,
            cc: str | Iterable[str] | None = None, bcc: str | Iterable[str] | None = None,
            html: str | None = None, message: EmailMessage | bytes | None = None,
            envelope_from: str | None = None, headers: dict[str, str] | None = None,
            session: Session | None = None, token_provider: Any = None) -> SendResult:
    """Sends one message as ``sender`` through the configured connector.

    ``sender`` (default ``config.from_address``) becomes the From header and,
    unless ``envelope_from`` says otherwise, the envelope sender: the address
    the account impersonates.  ``reply_to`` defaults to
    ``config.reply_to_address``.  Instead of subject/body, ``message`` may be
    a ready `EmailMessage` (copied; From, Message-ID
    and Date added when missing) or bytes (sent as they are).  ``session``
    reuses an open `Session`; otherwise one is opened and closed.
    ``token_provider`` (an object with ``get_token(scope)``, such as an
    ``azure.identity`` credential, or a callable returning a token or
    ``(token, expires_at)``) authenticates with XOAUTH2 instead of the
    password (docs/oauth.md).

    Returns a `SendResult`.  Raises `SenderRefused` when the
    account may not send as ``sender``, `RecipientsRefused` when no
    recipient was accepted, `DataRefused` when the message was refused
    at end of data (Exchange's Send As check), and the connection, TLS and
    authentication errors of `connect`.
    """
    sender = sender or config.from_address
    if not sender:
        raise InputError("no sender: pass sender=... or set from_address in the config")
    reply_to = reply_to if reply_to is not None else config.reply_to_address
    to_list, cc_list, bcc_list = _recipients(to), _recipients(cc), _recipients(bcc)
    if isinstance(message, (bytes, bytearray, memoryview)):
        if not to_list + cc_list + bcc_list:
            raise InputError("sending bytes needs to=... recipients; nothing was sent")
    elif message is None and not to_list + cc_list + bcc_list:
        raise InputError("no recipients: pass to=... (or cc/bcc); nothing was sent")

    if token_provider is not None:
        config = config.replace(token_provider=token_provider)
    started = time.monotonic()
    own = session is None
    sess = connect(config) if session is None else session
    try:
        if isinstance(message, (bytes, bytearray, memoryview)):
            result = sess.send(message, envelope_from=envelope_from or _addr_spec(sender),
                               recipients=to_list + cc_list + bcc_list)
        else:
            # built once the server's capabilities are known: 8-bit text
            # only where 8BITMIME is offered, quoted-printable otherwise
            msg = build_message(sender=sender, to=to_list, cc=cc_list,
                                subject=subject, body=body, html=html, reply_to=reply_to,
                                headers=headers, template=message,
                                eight_bit=sess.has_extn("8BITMIME"),
                                utf8=sess.has_extn("SMTPUTF8"))
            rcpts = to_list + cc_list + bcc_list or None
            result = sess.send(msg, envelope_from=envelope_from or _addr_spec(sender),
                               recipients=rcpts)
        result = SendResult(
            message_id=result.message_id, envelope_from=result.envelope_from,
            accepted=result.accepted, refused=result.refused, reply=result.reply,
            elapsed_ms=int((time.monotonic() - started) * 1000),
            transcript=tuple(sess.transcript))
        return result
    finally:
        if own:
            _log_transcript(sess)
            sess.close_quietly()
