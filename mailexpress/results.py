"""What sending gives back: `SendResult` for one message, `BulkResult` for many.

A bulk run keeps, per message after it is sent, only a compact record; the
full `SendResult` is made when it is asked for.  The records of a run are
kept in columns (`Outcomes`): for the usual message (one recipient, none
refused, a Message-ID of this process) about 55 bytes: the recipient's
UTF-8, the Message-ID's counter, and small indexes into tables of the
senders, replies and domains seen.  Errors are kept as they are.
"""
from __future__ import annotations

import html
import logging
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union, overload

from . import _core, mime
from .errors import Error
from .reply import Reply

__all__ = ["BulkResult", "Outcomes", "Progress", "SendResult", "make_result", "only_records", "record"]

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
        log.info("message %s: %d of %d recipients refused: %s", message_id, len(refused),
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


def only_records(kept: Iterable[object]) -> bool:
    """Every outcome is a record (a message accepted; `record`'s tuple): the
    usual batch, which needs no look at each outcome.  True for none."""
    return not set(map(type, kept)) - _RECORD_TYPE


_RECORD_TYPE = {tuple}


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


_NONE, _RECORD, _OBJECT, _PENDING = 0, 1, 2, 3
_SPELLED = 0x8000       # a reply column value at or above: a shape, its text in the blob
_PENDING_RUN = bytes([_PENDING])


class Outcomes:
    """The outcomes of a bulk run by index, compact: a list-like store of
    `Record` tuples, errors (or `SendResult`) and None (no outcome yet).

    A record with one recipient, no refused recipient and a Message-ID made
    by this process (``<base.N@domain>``, see `mime.make_message_id`) is
    kept in columns and made again as an equal tuple when read; anything
    else is kept as the object given.  Senders and domains are kept once in
    tables, so are the first 1,024 distinct replies; a reply after those
    (a server that answers each message differently, as Postfix's and
    Exchange's "queued as" replies do) is kept as its code, enhanced code
    and stage (a table of their own) and its text (in the blob, after the
    recipient), and made again as an equal `Reply` when read.  Records are put in columns by
    `compact` (a bulk run calls it while a batch is on the wire; reading
    calls it), not when set: setting is cheap."""

    __slots__ = ("_n", "_kind", "_obj", "_pending", "_sender", "_reply", "_elapsed", "_roff", "_rlen",
                 "_blob", "_mid", "_dom", "_replen", "_tables", "_index", "_prefix", "_base", "_last")

    def __init__(self, items: Iterable[Outcome | Record | None] = ()) -> None:
        self._n = 0
        self._kind = bytearray()
        self._obj: dict[int, object] = {}
        self._pending: dict[int, Record] = {}
        self._sender = array("H")
        self._reply = array("H")
        self._elapsed = array("I")
        self._roff = array("Q")
        self._rlen = array("H")
        self._blob = bytearray()
        self._mid = array("Q")
        self._dom = array("H")
        self._replen = array("H")
        #: senders, replies, domains, reply shapes (code, enhanced, stage): the
        #: values, and value -> index
        self._tables: tuple[list[Any], list[Any], list[Any], list[Any]] = ([], [], [], [])
        self._index: tuple[dict[Any, int], ...] = ({}, {}, {}, {})
        #: the previous record's sender, reply and domain with their indexes
        self._last: tuple[Any, int, Any, int, Any, int] = (None, -1, None, -1, None, -1)
        self._base = mime.message_id_base()
        self._prefix = "<" + self._base + "."
        for item in items:
            self.append(item)
        self.compact()

    def __len__(self) -> int:
        return self._n

    def append(self, item: Outcome | Record | None) -> None:
        n = self._n
        self._reserve(n + 1)
        self._n = n + 1
        if item is not None:
            self[n] = item

    def add(self, count: int) -> int:
        """Adds ``count`` items without an outcome yet; the first one's index."""
        n = self._n
        self._reserve(n + count)
        self._n = n + count
        return n

    def _reserve(self, want: int) -> None:
        have = len(self._kind)
        if want <= have:
            return
        grow = max(1024, have // 4, want - have)
        self._kind.extend(bytes(grow))
        for col in (self._sender, self._reply, self._rlen, self._dom, self._replen):
            col.frombytes(bytes(2 * grow))
        self._elapsed.frombytes(bytes(4 * grow))
        self._roff.frombytes(bytes(8 * grow))
        self._mid.frombytes(bytes(8 * grow))

    def extend(self, items: Iterable[Outcome | Record | None]) -> None:
        for item in items:
            self.append(item)

    def __setitem__(self, i: int, item: Outcome | Record | None) -> None:
        if not 0 <= i < self._n:
            raise IndexError(i)
        if self._kind[i] >= _OBJECT:
            self._obj.pop(i, None)
            self._pending.pop(i, None)
        if item is None:
            self._kind[i] = _NONE
        elif type(item) is tuple:
            self._kind[i] = _PENDING
            self._pending[i] = item
        else:
            self._kind[i] = _OBJECT
            self._obj[i] = item

    def set_many(self, indexes: Sequence[int], items: Sequence[Outcome | Record]) -> None:
        """``self[i] = item`` for each pair; a run of records at consecutive
        indexes without an outcome yet (a batch, as sent) in one step."""
        n = len(indexes)
        if not n:
            return
        a = indexes[0]
        b = a + n
        if 0 <= a and b <= self._n and indexes[-1] == b - 1 and not any(self._kind[a:b]) \
                and only_records(items) and list(indexes) == list(range(a, b)):
            self._pending.update(zip(indexes, items))    # type: ignore[arg-type]
            self._kind[a:b] = _PENDING_RUN * n
            return
        for i, item in zip(indexes, items):
            self[i] = item

    def compact(self) -> None:
        """Puts the records set since the last call in columns (in C:
        `_core.pack_records`; what cannot go in columns is kept whole)."""
        pending, self._pending = self._pending, {}
        if pending:
            self._last = _core.pack_records(
                pending, (self._sender, self._reply, self._elapsed, self._roff, self._rlen,
                          self._mid, self._dom, self._replen),
                self._blob, self._kind, self._obj, self._tables, self._index, self._prefix,
                self._last)

    def __getitem__(self, i: int) -> Outcome | Record | None:
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        kind = self._kind[i]
        if kind == _RECORD:
            off, end, r = self._roff[i], self._roff[i] + self._rlen[i], self._reply[i]
            senders, replies, domains, shapes = self._tables
            if r < _SPELLED:
                reply = replies[r]
            else:
                code, enhanced, stage = shapes[r - _SPELLED]
                text = self._blob[end:end + self._replen[i]].decode("utf-8")
                reply = Reply(code, enhanced, tuple(text.split("\n")), stage)
            return (senders[self._sender[i]],
                    self._blob[off:end].decode("utf-8", "surrogatepass"),
                    f"{self._prefix}{self._mid[i]}@{domains[self._dom[i]]}>",
                    reply, None, self._elapsed[i])
        if kind == _OBJECT:
            return self._obj[i]     # type: ignore[return-value]
        if kind == _PENDING:
            return self._pending[i]
        return None

    def __iter__(self) -> Iterator[Outcome | Record | None]:
        return (self[i] for i in range(self._n))

    def objects(self) -> list[tuple[int, object]]:
        """(index, item) of what is not a compact record (errors among
        them), in order."""
        self.compact()
        return sorted(self._obj.items())

    def missing(self) -> bool:
        """True when a message has no outcome."""
        return self._kind.find(_NONE, 0, self._n) >= 0

    def nbytes(self) -> int:
        """The memory its columns take (not the objects kept whole)."""
        self.compact()
        return (len(self._kind) + sum(c.itemsize * len(c) for c in (
            self._sender, self._reply, self._elapsed, self._roff, self._rlen, self._mid, self._dom,
            self._replen)) + len(self._blob))


class BulkResult(Sequence[Outcome]):
    """One outcome per message, in the order given: a `SendResult`
    when the server accepted the message, otherwise the `Error` that
    says why not.  On an error, ``delivered`` is False when the message
    certainly was not delivered and None when the session failed between
    sending it and the server's answer; ``retry_safe`` is True on messages
    a session failure kept from going out.

    Sent messages are kept compact and their `SendResult` made when asked
    for (``result[i]``, iteration, ``sent``, ``outcomes``)."""

    __slots__ = ("_items", "elapsed_ms", "connections", "learned")

    def __init__(self, outcomes: Iterable[Outcome | Record] | Outcomes, elapsed_ms: int = 0,
                 connections: int = 1, learned: tuple[str, ...] = ()) -> None:
        self._items = outcomes if isinstance(outcomes, Outcomes) else Outcomes(outcomes)
        self.elapsed_ms = elapsed_ms
        self.connections = connections
        #: what the run learned about the server's limits, as sentences
        #: naming the `Limits` setting to use (empty when nothing pushed back)
        self.learned = learned

    @property
    def unknown(self) -> list[tuple[int, Error]]:
        """(index, error) of the messages whose fate is unknown (they may have
        been delivered: check before sending them again)."""
        return [(i, o) for i, o in self._items.objects()
                if isinstance(o, Error) and getattr(o, "delivered", False) is None]

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        """Every outcome, in order (made on each call)."""
        return tuple(self)

    @overload
    def __getitem__(self, index: int) -> Outcome: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Outcome]: ...

    def __getitem__(self, index: int | slice) -> Outcome | Sequence[Outcome]:
        if isinstance(index, slice):
            return tuple(expand(self._items[i]) for i in range(*index.indices(len(self))))  # type: ignore[arg-type]
        return expand(self._items[index])     # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Outcome]:
        return map(expand, self._items)     # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (f"<BulkResult {len(self)} messages: {len(self) - len(self.failed)} sent, "
                f"{len(self.failed)} failed, {self.elapsed_ms} ms>")

    @property
    def sent(self) -> list[SendResult]:
        """The messages the server accepted."""
        return [expand(o) for o in self._items if not isinstance(o, Error)]   # type: ignore[misc,arg-type]

    @property
    def failed(self) -> list[tuple[int, Error]]:
        """(index, error) of every message the server did not accept."""
        return [(i, o) for i, o in self._items.objects() if isinstance(o, Error)]

    @property
    def ok(self) -> bool:
        """True when every message was accepted for every recipient."""
        return not self._items.missing() and all(
            not o[4] if isinstance(o, tuple) else isinstance(o, SendResult) and o.ok
            for _i, o in self._items.objects())

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
            "connections": self.connections, "learned": list(self.learned),
            "unknown": len(self.unknown),
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
        lines.extend(f"  learned: {x}" for x in self.learned)
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
