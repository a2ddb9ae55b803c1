"""Sending limits of real connectors, and a pacer that keeps under them.

A connector throttles per user and per connection: Exchange Online takes 30
messages a minute from one mailbox over at most 3 connections, an on-premises
"Client Frontend" connector 5 a minute and 20 per connection by default.  A
bulk run that ignores this is answered with ``421 4.4.2`` and a closed
connection.  `Limits` states the limits (from a named preset, a config key or
keywords); `Pacer` spaces messages evenly so the server never counts more than
the limit in any window.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import ConfigError

__all__ = ["Limits", "PRESETS", "Pacer"]


@dataclass(frozen=True)
class Limits:
    """What a connector allows one account.  ``None`` means no limit.

    ``messages_per_minute``      messages submitted per minute (all connections together)
    ``recipients_per_message``   envelope recipients in one message
    ``recipients_per_day``       recipients in 24 hours (a run stops before it)
    ``connections``              concurrent connections
    ``messages_per_connection``  messages before the connector closes the session
    """

    messages_per_minute: float | None = None
    recipients_per_message: int | None = None
    recipients_per_day: int | None = None
    connections: int | None = None
    messages_per_connection: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
                    or not math.isfinite(value):
                raise ConfigError(f"limits: {f.name} must be a positive number or None, not {value!r}",
                                  key=f"limits.{f.name}", value=value)
            if f.name != "messages_per_minute" and value != int(value):
                raise ConfigError(f"limits: {f.name} must be a whole number, not {value!r}",
                                  key=f"limits.{f.name}", value=value)

    @classmethod
    def preset(cls, name: str) -> Limits:
        """The limits of a known connector (see `PRESETS`)."""
        try:
            return PRESETS[name][0]
        except KeyError:
            raise ConfigError(f"limits: no preset named {name!r}; known: {', '.join(sorted(PRESETS))}",
                              key="limits", value=name) from None

    @classmethod
    def coerce(cls, value: Limits | str | Mapping[str, Any] | None) -> Limits | None:
        """A `Limits` from what a config or a keyword may hold: a `Limits`, a
        preset name, or a mapping of fields (``preset`` plus overrides)."""
        if value is None or isinstance(value, Limits):
            return value
        if isinstance(value, str):
            return cls.preset(value)
        if isinstance(value, Mapping):
            items = dict(value)
            base = cls.preset(items.pop("preset")) if "preset" in items else cls()
            known = {f.name for f in fields(cls)}
            for key in items:
                if key not in known:
                    raise ConfigError(f"limits: unknown key {key!r}; known: preset, {', '.join(sorted(known))}",
                                      key=f"limits.{key}", value=items[key])
            return replace(base, **items)
        raise ConfigError(f"limits must be a preset name, a table of limits or a Limits, "
                          f"not {type(value).__name__}", key="limits", value=value)

    def stricter(self, other: Limits | None) -> Limits:
        """Field by field, the smaller of the two limits."""
        if other is None:
            return self
        merged: dict[str, Any] = {}
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            merged[f.name] = theirs if mine is None else mine if theirs is None else min(mine, theirs)
        return Limits(**merged)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def __str__(self) -> str:
        parts = [f"{k.replace('_', ' ')} {v:g}" for k, v in self.to_dict().items()]
        return ", ".join(parts) or "no limits"


#: Named limits with where they come from.  Check your own connector's with
#: ``Get-ReceiveConnector "<name>" | fl MessageRateLimit,MaxMessagesPerConnection,
#: MaxInboundConnectionPerSource,MaxRecipientsPerMessage``.
PRESETS: dict[str, tuple[Limits, str]] = {
    "exchange_online": (
        Limits(messages_per_minute=30, recipients_per_message=500, recipients_per_day=10_000,
               connections=3),
        "Exchange Online limits for SMTP AUTH client submission (per mailbox): 30 messages a "
        "minute, 10,000 recipients a day, 500 recipients a message, 3 concurrent connections "
        "(Microsoft, 'Exchange Online limits: sending limits')."),
    "exchange_client_frontend": (
        Limits(messages_per_minute=5, recipients_per_message=200, connections=20,
               messages_per_connection=20),
        "Defaults of the on-premises 'Client Frontend <server>' receive connector (Exchange "
        "2013 to SE): MessageRateLimit 5 per user, MaxRecipientsPerMessage 200, "
        "MaxInboundConnectionPerSource 20, MaxMessagesPerConnection 20 (Microsoft, 'Message "
        "rate limits and throttling')."),
    "exchange_default_frontend": (
        Limits(recipients_per_message=200, connections=20, messages_per_connection=20),
        "Defaults of the 'Default Frontend <server>' receive connector on port 25: no message "
        "rate limit, MaxRecipientsPerMessage 200, MaxInboundConnectionPerSource 20, "
        "MaxMessagesPerConnection 20."),
    "opensmtpd": (
        Limits(messages_per_connection=100),
        "OpenSMTPD: 'smtp limit max-mails' defaults to 100 messages a session (answered "
        "'452 4.5.3 Too many messages sent')."),
}


class Pacer:
    """Spaces events evenly at ``per_minute`` a minute, shared by threads.

    A token bucket of depth one: the n-th event is released no earlier than
    ``start + n * 60 / per_minute``, so no window of a minute ever holds more
    than ``per_minute`` events and there are no bursts.  Time that nobody used
    is not saved up (the schedule never lies in the past), so a pause in the
    input does not turn into a burst afterwards.

    ``wait`` sleeps in slices of at most ``slice_s`` seconds so that Ctrl-C
    (KeyboardInterrupt in the main thread) and ``cancel()`` are honoured
    quickly.
    """

    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, slice_s: float = 0.25) -> None:
        if not per_minute > 0:
            raise ValueError("per_minute must be positive")
        self.interval = 60.0 / per_minute
        self._clock, self._sleep, self._slice = clock, sleep, slice_s
        self._lock = threading.Lock()
        self._next: float | None = None
        self._cancelled = threading.Event()

    def reserve(self, n: int = 1) -> float:
        """Reserves the next ``n`` slots; returns when the last one is due
        (clock time).  Never sleeps."""
        with self._lock:
            now = self._clock()
            start = now if self._next is None or self._next < now else self._next
            due = start + (n - 1) * self.interval
            self._next = due + self.interval
            return due

    def wait(self, n: int = 1) -> bool:
        """Sleeps until ``n`` more events may happen; False if cancelled."""
        due = self.reserve(n)
        while not self._cancelled.is_set():
            left = due - self._clock()
            if left <= 0:
                return True
            self._sleep(min(left, self._slice))
        return False

    def cancel(self) -> None:
        """Wakes every waiter; `wait` returns False from now on."""
        self._cancelled.set()
