"""A Django email backend that sends through mailexpress.

In ``settings.py``::

    EMAIL_BACKEND = "mailexpress.contrib.django.EmailBackend"
    MAILEXPRESS_CONFIG = BASE_DIR / "mailexpress.toml"     # a TOML file, and/or
    MAILEXPRESS = {"host": "mail.corp.example", "password_env": "MAIL_PW"}

The settings are read as `mailexpress.load_config` reads them: the
``MAILEXPRESS_CONFIG`` file first, then the ``MAILEXPRESS_*`` environment
variables, then the ``MAILEXPRESS`` dict (keyword arguments of load_config),
each later one winning.  OAuth, TLS verification and timeouts come from the
config as everywhere else.

``send_messages`` sends over one connection, pipelined (`Session.send_many`),
and returns how many messages the server accepted.  Unless ``fail_silently``,
the first failure is raised after every message was tried (its notes say how
many failed); with ``fail_silently`` failures are only counted out.
Bcc recipients get the message but never appear in it.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from email.utils import parseaddr
from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
from django.core.mail.backends.base import BaseEmailBackend  # type: ignore[import-untyped]

import mailexpress as mx

__all__ = ["EmailBackend", "config_from_settings"]


def config_from_settings() -> mx.Config:
    """The `Config` Django's settings describe (see the module docstring)."""
    path = getattr(settings, "MAILEXPRESS_CONFIG", None)
    values = getattr(settings, "MAILEXPRESS", None)
    if path is None and values is None:
        raise ImproperlyConfigured(
            "mailexpress.contrib.django.EmailBackend needs MAILEXPRESS (a dict of mailexpress "
            "settings) or MAILEXPRESS_CONFIG (the path of a mailexpress.toml) in the Django settings")
    if values is not None and not isinstance(values, dict):
        raise ImproperlyConfigured(f"settings.MAILEXPRESS must be a dict of mailexpress settings, "
                                   f"not {type(values).__name__}")
    try:
        return mx.load_config(path, **(values or {}))
    except mx.ConfigError as exc:
        where = "settings.MAILEXPRESS / MAILEXPRESS_CONFIG"
        raise ImproperlyConfigured(f"mailexpress settings ({where}): {exc}") from exc


def _addr(value: str) -> str:
    return parseaddr(value)[1] or value


class EmailBackend(BaseEmailBackend):  # type: ignore[misc]
    """``EMAIL_BACKEND = "mailexpress.contrib.django.EmailBackend"``.

    ``config`` (a `Config`) may be given instead of the settings, e.g.
    ``get_connection("mailexpress.contrib.django.EmailBackend", config=cfg)``.
    """

    def __init__(self, fail_silently: bool = False, *, config: mx.Config | None = None,
                 **kwargs: Any) -> None:
        super().__init__(fail_silently=fail_silently, **kwargs)
        self.config = config if config is not None else config_from_settings()
        self.session: mx.Session | None = None
        self._lock = threading.RLock()

    def open(self) -> bool | None:
        """Opens the connection: True when opened now, False when it was
        open already, None when it failed and ``fail_silently``."""
        if self.session is not None:
            return False
        try:
            self.session = mx.connect(self.config)
        except mx.Error:
            if not self.fail_silently:
                raise
            return None
        return True

    def close(self) -> None:
        if self.session is None:
            return
        try:
            self.session.close_quietly()
        finally:
            self.session = None

    def _item(self, message: Any) -> tuple[str, list[str], bytes]:
        """(envelope sender, recipients, wire bytes) of a Django EmailMessage:
        recipients are To + Cc + Bcc, and Django never writes Bcc into the
        message."""
        recipients = [_addr(a) for a in message.recipients()]
        data = message.message().as_bytes(linesep="\r\n")
        return _addr(message.from_email), recipients, data

    def send_messages(self, email_messages: Sequence[Any]) -> int:
        """Sends the messages over one connection; returns how many the
        server accepted."""
        if not email_messages:
            return 0
        with self._lock:
            new = self.open()
            if self.session is None or new is None:
                return 0
            try:
                items = [self._item(m) for m in email_messages if m.recipients()]
                result = self.session.send_many(items)
            except mx.Error:
                self.close()
                if not self.fail_silently:
                    raise
                return 0
            finally:
                if new:
                    self.close()
            if self.session is not None and self.session.state == "ERROR":
                self.close()
            if not self.fail_silently:
                result.raise_for_failures()
            return len(result.sent)
