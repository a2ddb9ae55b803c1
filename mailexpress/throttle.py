"""What a connector means when it pushes back, and how long to wait.

Pure functions over `Reply` and `Stage`: no I/O, no clocks of their own.
A bulk run asks `classify` what a failure means:

``CONNECTION``  a per-connection limit (``452 4.5.3 Too many messages`` at
                MAIL, a ``421`` after some messages were accepted on the same
                connection): open a new connection; it is not a failure.
``RATE``        a rate limit (``421 4.4.2 Message submission rate ...``,
                ``451 4.7.x``): wait (`Backoff`) and try again.
``CONCURRENCY`` too many connections (``421 4.3.2`` at the greeting,
                ``432 4.3.2 ... sender thread limit``): wait, with fewer
                connections.
``QUOTA``       a daily or tenant quota (``554 5.2.0 ...QuotaExceeded...``,
                ``550 5.7.233``): stop the run; the rest is not sent.
``None``        none of these: the reply is the message's own outcome.

The wordings are Exchange's and OpenSMTPD's as documented in EXCHANGE.md.
"""
from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from .reply import Reply, Stage

__all__ = ["Pushback", "classify", "Backoff"]


class Pushback(str, enum.Enum):
    CONNECTION = "connection"
    RATE = "rate"
    CONCURRENCY = "concurrency"
    QUOTA = "quota"

    def __str__(self) -> str:
        return self.value


def classify(reply: Reply | None, stage: Stage | None, *, accepted_on_connection: int = 0) -> Pushback | None:
    """What ``reply`` (at ``stage``) says about the connector's limits.

    ``accepted_on_connection`` is how many messages this connection had
    delivered before: a bare ``421`` after some is the connector's
    messages-per-connection limit, at the first message it is not.
    """
    if reply is None:
        return None
    enhanced = reply.enhanced or ""
    text = reply.text.lower()
    code = reply.code
    if code >= 500:
        if enhanced == "5.7.233" or (enhanced == "5.2.0" and "quotaexceeded" in text.replace(" ", "")):
            return Pushback.QUOTA
        return None
    if code < 400:
        return None
    if enhanced == "4.3.2" and (code == 432 or stage is Stage.CONNECT or "concurrent" in text
                                or "thread limit" in text or "connections" in text):
        return Pushback.CONCURRENCY
    if enhanced == "4.4.2" and "rate" in text:
        return Pushback.RATE
    if code == 452 and stage is Stage.MAIL and (enhanced == "4.5.3" or "too many messages" in text):
        return Pushback.CONNECTION
    if enhanced.startswith("4.7.") and code == 451:
        return Pushback.RATE
    if code == 421:
        return Pushback.CONNECTION if accepted_on_connection > 0 else Pushback.RATE
    return None


@dataclass
class Backoff:
    """Exponential backoff with full jitter (each wait uniform in
    ``[0, min(cap, base * 2**n)]``), up to ``tries`` waits.

    `next_delay` returns the next wait in seconds, or None when the bound is
    reached; `reset` after a success.
    """

    base: float = 2.0
    cap: float = 120.0
    tries: int = 8
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempt: int = 0

    def next_delay(self) -> float | None:
        if self.attempt >= self.tries:
            return None
        ceiling = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        # never zero: a floor of a tenth of the base keeps a retry from
        # hammering a server that just said "slow down"
        return max(self.base / 10, self.rng.uniform(0, ceiling))

    def reset(self) -> None:
        self.attempt = 0
