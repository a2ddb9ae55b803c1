"""The public client API: connect(), send_as() and Session.

Thin on purpose: the C core speaks SMTP; `compose` builds messages;
`results` gives them a Python shape (SendResult is re-exported here).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from email.message import EmailMessage
from typing import IO, TYPE_CHECKING, Any, Callable, Union

from . import _core
from .batches import run_bulk
from .compose import envelope, prepare
from .compose import recipients as _recipients
from .config import Config
from .errors import Error, InputError
from .mime import Attachment
from .results import BulkResult, Progress, SendResult
from .results import make_result as _result

if TYPE_CHECKING:
    from .auth import AuthResult

__all__ = ["Session", "SendResult", "connect", "send_as"]

#: What a message body may be on the wire: bytes-like or a binary file.
Body = Union[bytes, bytearray, memoryview, IO[bytes]]
#: What Session.send takes.
Message = Union[EmailMessage, bytes, bytearray, memoryview, IO[bytes]]
#: One item of Session.send_many.
BulkItem = Union[EmailMessage, tuple[str, Union[str, Sequence[str]], Message]]
ProgressArg = Union[bool, "Callable[[Progress], object]", None]

log = logging.getLogger("mailexpress")


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
        return envelope(message, envelope_from, recipients, utf8=self.has_extn("SMTPUTF8"))

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
        return run_bulk(self, messages, stop_on_error=stop_on_error, progress=progress,
                        batch_size=batch_size)


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
            subject: str = "", body: str | None = None, *, reply_to: str | None = None,
            cc: str | Iterable[str] | None = None, bcc: str | Iterable[str] | None = None,
            html: str | None = None, message: EmailMessage | bytes | None = None,
            envelope_from: str | None = None, headers: dict[str, str] | None = None,
            session: Session | None = None, token_provider: Any = None,
            attachments: Sequence[Attachment] | None = None) -> SendResult:
    """Sends one message as ``sender`` through the configured connector.

    ``sender`` (default ``config.from_address``) becomes the From header and,
    unless ``envelope_from`` says otherwise, the envelope sender: the address
    the account impersonates.  ``reply_to`` defaults to
    ``config.reply_to_address``.  Instead of subject/body, ``message`` may be
    a ready `EmailMessage` (copied; From, Message-ID
    and Date added when missing) or bytes (sent as they are).  ``session``
    reuses an open `Session`; otherwise one is opened and closed.
    With ``html`` and no ``body`` the message is one text/html part (as
    `EmailMessage` makes it); with neither, an empty text part.
    ``attachments``: paths, ``(filename, data)`` or ``(filename, data,
    content_type)``.
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
        # built once the server's capabilities are known: 8-bit text
        # only where 8BITMIME is offered, quoted-printable otherwise
        p = prepare(sender=sender, to=to_list, cc=cc_list, bcc=bcc_list, subject=subject,
                    body=body, html=html, reply_to=reply_to, message=message,
                    envelope_from=envelope_from, headers=headers, attachments=attachments,
                    eight_bit=sess.has_extn("8BITMIME"), utf8=sess.has_extn("SMTPUTF8"))
        refused, reply = _core.Session.send_raw(sess, p.envelope_from, p.recipients, p.data)
        # a session of the caller's keeps its transcript (the whole conversation) itself
        return _result(p.envelope_from, p.recipients, p.message_id, refused, reply,
                       int((time.monotonic() - started) * 1000),
                       transcript=tuple(sess.transcript) if own else ())
    finally:
        if own:
            _log_transcript(sess)
            sess.close_quietly()
