"""The exception hierarchy.

Every exception is a `mailexpress.Error`, which is also an
`smtplib.SMTPException` (and so an `OSError`), so code written
for smtplib keeps catching what it caught before.  The more specific classes
also derive from their smtplib counterparts and fill their attributes
(``smtp_code``, ``smtp_error``, ``sender``, ``recipients``).

Every exception carries:

``stage``     the `Stage` where it happened (or None)
``reply``     the server's `Reply` (or None)
``code``, ``enhanced``, ``text``
              the reply's code, enhanced status code and text, for short
``message``   our own diagnostic, apart from what the server said
``transient`` True for a 4xx reply: retrying later may help

This module is imported by the C core at import time; it must not import it.
"""
from __future__ import annotations

import builtins
import smtplib
from typing import Any

from .reply import Reply, Stage

__all__ = [
    "Error", "ConfigError", "InputError", "ConnectError", "ConnectionLost",
    "ServiceUnavailable", "TimeoutError", "TLSError", "CertificateError",
    "RefusedError", "AuthError", "InsecureAuthError", "SenderRefused",
    "RecipientsRefused", "DataRefused", "ProtocolError", "NotSupportedError",
    "StateError", "ConcurrentUseError", "DuplicateMessage",
]


class Error(smtplib.SMTPException):
    """Base class of everything mailexpress raises."""

    stage: Stage | None
    reply: Reply | None
    message: str
    #: The security setting the port speaks when it is not the configured
    #: one: "starttls" (a TLSError: the port greeted in plain SMTP where a
    #: ServerHello was expected) or "ssl" (a ConnectError: the port stayed
    #: silent and answered a TLS ClientHello).  None otherwise.
    wrong_mode: str | None = None
    #: For a message that was to be sent: False when it certainly was not
    #: delivered (refused, or never written), None when its fate is unknown
    #: (the session failed after its body went out and before the server's
    #: answer).  A delivered message is a SendResult, never an Error.
    delivered: bool | None = False
    #: True when a session failure kept the message from going out, so
    #: sending it again cannot deliver it twice.
    retry_safe: bool = False

    def __init__(self, message: str, *, stage: Stage | str | None = None,
                 reply: Reply | None = None, **extra: Any) -> None:
        self.message = message
        self.stage = Stage(stage) if stage is not None else None
        self.reply = reply
        for key, value in extra.items():
            setattr(self, key, value)
        if reply is not None:
            # smtplib's attributes.  Set, not declared: typeshed types smtp_error
            # differently in SMTPResponseException and SMTPSenderRefused, so a
            # declaration here could not agree with both of our bases.
            setattr(self, "smtp_code", reply.code)
            setattr(self, "smtp_error", reply.text.encode("utf-8", "replace"))
            full = f"{message} (server said: {reply})"
        else:
            full = message
        # Straight to OSError: the smtplib classes' own __init__ take other
        # arguments, and their attributes are filled above and below.
        OSError.__init__(self, full)

    @property
    def code(self) -> int | None:
        return self.reply.code if self.reply is not None else None

    @property
    def enhanced(self) -> str | None:
        return self.reply.enhanced if self.reply is not None else None

    @property
    def text(self) -> str | None:
        return self.reply.text if self.reply is not None else None

    @property
    def transient(self) -> bool:
        return self.reply is not None and self.reply.transient

    def __reduce__(self) -> Any:
        state = dict(self.__dict__)
        message = state.pop("message")
        return (_rebuild, (type(self), message, state))

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.message


def _rebuild(cls: type[Error], message: str, state: dict[str, Any]) -> Error:
    exc = cls.__new__(cls)
    Error.__init__(exc, message, stage=state.pop("stage", None),
                   reply=state.pop("reply", None))
    exc.__dict__.update(state)
    return exc


class ConfigError(Error, ValueError):
    """A configuration value is missing, unknown or invalid.

    ``key`` names the setting, ``value`` what was given (never a password),
    ``source`` where it came from (a file, the environment, an argument).
    """

    key: str | None = None
    value: Any = None
    source: str | None = None


class InputError(Error, ValueError):
    """An argument cannot be sent (CR/LF/NUL, too long, ...); nothing was sent."""


class DuplicateMessage(InputError):
    """A bulk run's message has the key of an earlier one in the same input
    (the same ``id``, or, without ids and with a journal, the same content):
    it was not sent.  ``key`` is the key, ``index`` this message's position
    in the input and ``first`` the earlier one's (both from 0)."""

    key: str = ""
    index: int = -1
    first: int = -1


class ConnectError(Error):
    """The server could not be reached, or refused the connection in its greeting."""

    errno: int | None = None


class ConnectionLost(Error, smtplib.SMTPServerDisconnected):
    """The connection broke (reset or closed) in the middle of the session."""

    errno: int | None = None


class ServiceUnavailable(ConnectionLost):
    """The server answered 421: it is closing the session."""


class TimeoutError(Error, builtins.TimeoutError):  # noqa: A001 - deliberate
    """A stage timeout or the overall deadline passed."""


class TLSError(Error):
    """TLS could not be set up: STARTTLS missing or refused, handshake failed."""


class CertificateError(TLSError):
    """The server's certificate was not accepted.

    ``verify_code`` is OpenSSL's X509 verify result, ``verify_message`` its text
    (for example "certificate has expired" or "Hostname mismatch").
    """

    verify_code: int | None = None
    verify_message: str | None = None


class RefusedError(Error):
    """The server refused a command."""


class AuthError(RefusedError, smtplib.SMTPAuthenticationError):
    """Authentication failed (wrong credentials, mechanism refused, no token, ...).

    ``mechanism``       the SASL mechanism tried (``"XOAUTH2"``, ``"NTLM"``, ...)
    ``oauth_challenge`` the JSON text of an OAuth server's ``334`` error
                        challenge (RFC 7628), or None; `oauth_error` parses it
    ``provider_code``   the token provider's error code when the token could
                        not be had (``"AADSTS7000215"``: invalid client secret)
    ``provider``        which token source failed (never a secret)
    """

    mechanism: str | None = None
    oauth_challenge: str | None = None
    provider_code: str | None = None
    provider: str | None = None

    @property
    def oauth_error(self) -> dict[str, Any] | None:
        """The server's RFC 7628 error (``status``, ``scope``, ``schemes``) as
        a dict, or None when there was none (or it was not a JSON object)."""
        if not self.oauth_challenge:
            return None
        import json     # here: importing mailexpress stays as quick as before
        try:
            value = json.loads(self.oauth_challenge)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


class InsecureAuthError(AuthError):
    """We refused to send credentials without TLS; nothing was sent."""


class SenderRefused(RefusedError, smtplib.SMTPSenderRefused):
    """MAIL FROM was refused: typically the account may not send as this sender.
    ``sender`` is the refused address."""

    sender: str = ""


class RecipientsRefused(RefusedError, smtplib.SMTPRecipientsRefused):
    """Every recipient was refused; the message was not sent.

    ``replies`` maps each address to its `Reply`; ``recipients`` is the
    same in smtplib's shape, ``{address: (code, text bytes)}``.
    """

    replies: dict[str, Reply]
    recipients: dict[str, tuple[int, bytes]]

    def __init__(self, message: str, *, replies: dict[str, Reply] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.replies = dict(replies or {})
        self.recipients = {a: (r.code, r.text.encode("utf-8", "replace")) for a, r in self.replies.items()}


class DataRefused(RefusedError, smtplib.SMTPDataError):
    """DATA, or the message at end of data, was refused: it was not accepted."""


class ProtocolError(Error):
    """The server broke the protocol; the session is closed and unusable."""


class NotSupportedError(Error):
    """The server lacks something the operation needs (STARTTLS, AUTH, SMTPUTF8, SIZE)."""


class StateError(Error):
    """The operation is not possible in the session's state (closed, failed, ...)."""


class ConcurrentUseError(Error, RuntimeError):
    """A Session was used from two threads at once (use one Session per
    thread), or a journal by two bulk runs at once (wait for the other run,
    or give another journal file); nothing was sent.

    For a journal, ``journal`` is its path and ``pid`` the process that has
    it open (this one's for another Journal of this process), when known.
    """

    journal: str | None = None
    pid: int | None = None
