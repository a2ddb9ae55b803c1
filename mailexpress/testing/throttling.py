"""The emulator's throttling: a connector's rate, connection and quota
limits, answered with Exchange's own replies (EXCHANGE.md), so that a bulk
run can be rehearsed offline.  A base class of `ConnectorEmulator`; its
knobs are keyword arguments of the emulator:

  messages_per_minute      the receive connector's MessageRateLimit (a token
                           bucket refilled at this rate, holding one second's
                           worth): a MAIL beyond it draws ``421 4.4.2 Message
                           submission rate for this client has exceeded the
                           configured limit`` and the session closes
  connections_per_client   MaxInboundConnectionPerSource: one more
                           connection draws ``421 4.3.2 The maximum number of
                           concurrent connections has exceeded a limit,
                           closing transmission channel`` at the greeting
  connection_limit_reply   what ``max_messages_per_connection`` answers at
                           MAIL: "421" (Exchange, the session closes) or
                           "452" (OpenSMTPD's ``452 4.5.3 Too many messages
                           sent``, the session stays open)
  recipients_per_day       Exchange Online's daily recipient limit: a message
                           that would exceed it draws ``554 5.2.0
                           STOREDRV.Submission.Exception:SubmissionQuotaExceededException``
                           at end of data

``throttle_log`` lists every throttling reply sent (for tests and the
benchmarks: a paced run must draw none).
"""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from .emulator import _SessionState

__all__ = ["ThrottlingServer", "RATE_REPLY", "CONCURRENCY_REPLY", "QUOTA_REPLY"]

RATE_REPLY = "421 4.4.2 Message submission rate for this client has exceeded the configured limit"
CONCURRENCY_REPLY = ("421 4.3.2 The maximum number of concurrent connections has exceeded a limit, "
                     "closing transmission channel")
PER_CONNECTION_421 = "421 4.3.2 Too many messages on this connection; closing"
PER_CONNECTION_452 = "452 4.5.3 Too many messages sent"
QUOTA_REPLY = "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"


class ThrottlingServer:
    """Rate, connection and quota limits for `ConnectorEmulator`."""

    max_messages_per_connection: int | None
    _lock: threading.Lock

    def _init_throttling(self, *, messages_per_minute: float | None = None,
                         connections_per_client: int | None = None,
                         connection_limit_reply: Literal["421", "452"] = "421",
                         recipients_per_day: int | None = None) -> None:
        if connection_limit_reply not in ("421", "452"):
            raise ValueError("connection_limit_reply is '421' or '452'")
        self.messages_per_minute = messages_per_minute
        self.connections_per_client = connections_per_client
        self.connection_limit_reply = connection_limit_reply
        self.recipients_per_day = recipients_per_day
        self.throttle_log: list[str] = []
        self.open_connections = 0
        self.peak_connections = 0
        self.recipients_today = 0
        self._bucket = 0.0 if messages_per_minute is None else max(1.0, messages_per_minute / 60)
        self._bucket_at = time.monotonic()

    def _throttle_greeting(self) -> str | None:
        """At connect: the refusal to send instead of the banner, or None
        (then the connection counts until `_throttle_closed`)."""
        with self._lock:
            if self.connections_per_client is not None and self.open_connections >= self.connections_per_client:
                self.throttle_log.append(CONCURRENCY_REPLY)
                return CONCURRENCY_REPLY
            self.open_connections += 1
            self.peak_connections = max(self.peak_connections, self.open_connections)
            return None

    def _throttle_closed(self) -> None:
        with self._lock:
            self.open_connections -= 1

    def _throttle_mail(self, s: _SessionState) -> tuple[str, bool] | None:
        """At MAIL: (reply, close the session) when a limit is reached."""
        limit = self.max_messages_per_connection
        if limit is not None and s.accepted >= limit:
            if self.connection_limit_reply == "452":
                return PER_CONNECTION_452, False
            return PER_CONNECTION_421, True
        if self.messages_per_minute is not None:
            per_s = self.messages_per_minute / 60
            with self._lock:
                now = time.monotonic()
                self._bucket = min(max(1.0, per_s), self._bucket + (now - self._bucket_at) * per_s)
                self._bucket_at = now
                if self._bucket < 1.0:
                    self.throttle_log.append(RATE_REPLY)
                    return RATE_REPLY, True
                self._bucket -= 1.0
        return None

    def _throttle_quota(self, recipients: int) -> str | None:
        """At end of data: the quota refusal, or None (the recipients count)."""
        if self.recipients_per_day is None:
            return None
        with self._lock:
            if self.recipients_today + recipients > self.recipients_per_day:
                self.throttle_log.append(QUOTA_REPLY)
                return QUOTA_REPLY
            self.recipients_today += recipients
        return None
