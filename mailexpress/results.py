"""What sending gives back: `SendResult` for one message, `BulkResult` for many.

A bulk run keeps, per message after it is sent, only a compact record (a
tuple of the envelope, the Message-ID, the reply and the refused recipients,
about 200 bytes with one recipient); the full `SendResult` is made when it
is asked for.  Errors are kept as they are.
"""
from __future__ import annotations

import html
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union, overload

from .errors import Error
from .reply import Reply

__all__ = ["BulkResult", "Progress", "SendResult", "make_result", "record"]

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


class Progress(NamedTuple):
    """Where a bulk send stands; given to a ``progress`` callback after each batch."""

    done: int               #: messages with an outcome so far
    total: int | None       #: all messages, when the input has a length
    sent: int               #: accepted by the server (some recipients may be refused)
    failed: int             #: refused or not sent
    elapsed: float          #: seconds since the start
    rate: float             #: messages per second so far

    def __str__(self) -> str:
        of = f"/{self.total}" if self.total is not None else ""
        return (f"{self.done}{of} messages: {self.sent} sent, {self.failed} failed "
                f"({self.rate:.0f} msg/s)")



Outcome = Union[SendResult, Error]
#: A sent message, compact: (envelope_from, recipients (one str or a tuple),
#: message_id, reply, refused (None when empty), elapsed_ms).
Record = tuple[str, Union[str, tuple[str, ...]], Union[str, None], Reply,
               Union[dict[str, Reply], None], int]


def _log_refused(envelope_from: str, rcpts: Sequence[str], message_id: str | None,
                 refused: dict[str, Reply] | None, reply: Reply) -> None:
    if refused:
        log.warning("message %s: %d of %d recipients refused: %s", message_id, len(refused),
                    len(rcpts), "; ".join(f"{a}: {r}" for a, r in refused.items()))
    if log.isEnabledFor(logging.INFO):
        log.info("message %s accepted from %s for %d recipient(s): %s", message_id,
                 envelope_from, len(rcpts) - len(refused or ()), reply)


def make_result(envelope_from: str, rcpts: Sequence[str], message_id: str | None,
                refused: dict[str, Reply], reply: Reply, elapsed_ms: int,
                transcript: tuple[tuple[int, str, str], ...] = ()) -> SendResult:
    """The `SendResult` of one accepted message (logged)."""
    _log_refused(envelope_from, rcpts, message_id, refused, reply)
    accepted = tuple(a for a in rcpts if a not in refused) if refused else tuple(rcpts)
    return SendResult(message_id=message_id, envelope_from=envelope_from, accepted=accepted,
                      refused=dict(refused), reply=reply, elapsed_ms=elapsed_ms,
                      transcript=transcript)


def record(envelope_from: str, rcpts: Sequence[str], message_id: str | None,
           refused: dict[str, Reply], reply: Reply, elapsed_ms: int) -> Record:
    """The compact form of an accepted message (logged as `make_result` does)."""
    _log_refused(envelope_from, rcpts, message_id, refused, reply)
    who: str | tuple[str, ...] = rcpts[0] if len(rcpts) == 1 else tuple(rcpts)
    return (envelope_from, who, message_id, reply, dict(refused) if refused else None, elapsed_ms)


def expand(item: Outcome | Record) -> Outcome:
    """The full outcome of a kept item."""
    if type(item) is not tuple:
        return item     # type: ignore[return-value]
    envelope_from, who, message_id, reply, refused, elapsed_ms = item
    rcpts = (who,) if isinstance(who, str) else who
    refused = refused or {}
    return SendResult(message_id=message_id, envelope_from=envelope_from,
                      accepted=tuple(a for a in rcpts if a not in refused),
                      refused=dict(refused), reply=reply, elapsed_ms=elapsed_ms)


class BulkResult(Sequence[Outcome]):
    """One outcome per message, in the order given: a `SendResult`
    when the server accepted the message, otherwise the `Error` that
    says why not.  On an error, ``delivered`` is False when the message
    certainly was not delivered and None when the session failed between
    sending it and the server's answer; ``retry_safe`` is True on messages
    a session failure kept from going out.

    Sent messages are kept compact and their `SendResult` made when asked
    for (``result[i]``, iteration, ``sent``, ``outcomes``)."""

    __slots__ = ("_items", "elapsed_ms", "connections")

    def __init__(self, outcomes: Iterable[Outcome | Record], elapsed_ms: int = 0,
                 connections: int = 1) -> None:
        self._items: list[Outcome | Record] = list(outcomes)
        self.elapsed_ms = elapsed_ms
        self.connections = connections

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        """Every outcome, in order (made on each call)."""
        return tuple(map(expand, self._items))

    @overload
    def __getitem__(self, index: int) -> Outcome: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Outcome]: ...

    def __getitem__(self, index: int | slice) -> Outcome | Sequence[Outcome]:
        if isinstance(index, slice):
            return tuple(map(expand, self._items[index]))
        return expand(self._items[index])

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Outcome]:
        return map(expand, self._items)

    def __repr__(self) -> str:
        return (f"<BulkResult {len(self)} messages: {len(self) - len(self.failed)} sent, "
                f"{len(self.failed)} failed, {self.elapsed_ms} ms>")

    @property
    def sent(self) -> list[SendResult]:
        """The messages the server accepted."""
        return [expand(o) for o in self._items if not isinstance(o, Error)]   # type: ignore[misc]

    @property
    def failed(self) -> list[tuple[int, Error]]:
        """(index, error) of every message the server did not accept."""
        return [(i, o) for i, o in enumerate(self._items) if isinstance(o, Error)]

    @property
    def ok(self) -> bool:
        """True when every message was accepted for every recipient."""
        return all(not o[4] if isinstance(o, tuple) else not isinstance(o, Error) and o.ok
                   for o in self._items)

    @property
    def rate(self) -> float:
        """Messages per second over the whole call."""
        return len(self) / (self.elapsed_ms / 1000) if self.elapsed_ms else 0.0

    def raise_for_failures(self) -> None:
        """Raises the first failure (its message tells how many failed)."""
        failed = self.failed
        if failed:
            index, first = failed[0]
            first.add_note(f"message {index} of {len(self)}; {len(failed)} failed in all")
            raise first

    def to_dict(self) -> dict[str, Any]:
        failed = len(self.failed)
        return {
            "sent": len(self) - failed, "failed": failed, "elapsed_ms": self.elapsed_ms,
            "connections": self.connections,
            "outcomes": [o.to_dict() if not isinstance(o, Error) else
                         {"error": type(o).__name__, "message": str(o),
                          "delivered": getattr(o, "delivered", False),
                          "retry_safe": getattr(o, "retry_safe", False)}
                         for o in self],
        }

    def __str__(self) -> str:
        failed = self.failed
        lines = [f"{len(self)} messages in {self.elapsed_ms} ms ({self.rate:.0f} msg/s, "
                 f"{self.connections} connection(s)): {len(self) - len(failed)} sent, "
                 f"{len(failed)} failed"]
        for index, err in failed[:20]:
            lines.append(f"  #{index}: {type(err).__name__}: {err}")
        if len(failed) > 20:
            lines.append(f"  ... and {len(failed) - 20} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        failed = self.failed
        rows = "".join(
            f"<tr><td>{i}</td><td>{html.escape(type(e).__name__)}</td>"
            f"<td>{html.escape(str(e))}</td></tr>" for i, e in failed[:50])
        table = (f"<table><tr><th>#</th><th>error</th><th>what happened</th></tr>{rows}</table>"
                 if rows else "")
        return (f"<div><b>{len(self) - len(failed)} of {len(self)} messages sent</b>, "
                f"{len(failed)} failed, {self.elapsed_ms} ms ({self.rate:.0f} msg/s)"
                f"{table}</div>")
