"""Bulk sending: many messages over one connection, pipelined.

`Session.send_many` hands the C core batches of messages; the core
writes each batch with as few round trips as the server allows (see
docs/performance.md) and gives one outcome per message.  This module turns
those outcomes into a `BulkResult`, reports progress between
batches, and (for `send_many` on a config) reconnects when a session
fails, resending only the messages that certainly did not go out.
"""
from __future__ import annotations

import html
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from email.message import EmailMessage
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple, Union, overload

from .errors import Error, InputError, StateError

if TYPE_CHECKING:
    from .client import BulkItem, ProgressArg, SendResult, Session
    from .config import Config

__all__ = ["BulkResult", "Progress", "send_many"]

log = logging.getLogger("mailexpress")

Outcome = Union["SendResult", Error]


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


@dataclass(frozen=True)
class BulkResult(Sequence[Outcome]):
    """One outcome per message, in the order given: a `SendResult`
    when the server accepted the message, otherwise the `Error` that
    says why not.  On an error, ``delivered`` is False when the message
    certainly was not delivered and None when the session failed between
    sending it and the server's answer; ``retry_safe`` is True on messages
    a session failure kept from going out."""

    outcomes: tuple[Outcome, ...]
    elapsed_ms: int = 0
    connections: int = 1

    @overload
    def __getitem__(self, index: int) -> Outcome: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Outcome]: ...

    def __getitem__(self, index: int | slice) -> Outcome | Sequence[Outcome]:
        return self.outcomes[index]

    def __len__(self) -> int:
        return len(self.outcomes)

    @property
    def sent(self) -> list[SendResult]:
        """The messages the server accepted."""
        return [o for o in self.outcomes if not isinstance(o, Error)]

    @property
    def failed(self) -> list[tuple[int, Error]]:
        """(index, error) of every message the server did not accept."""
        return [(i, o) for i, o in enumerate(self.outcomes) if isinstance(o, Error)]

    @property
    def ok(self) -> bool:
        """True when every message was accepted for every recipient."""
        return all(not isinstance(o, Error) and o.ok for o in self.outcomes)

    @property
    def rate(self) -> float:
        """Messages per second over the whole call."""
        return len(self.outcomes) / (self.elapsed_ms / 1000) if self.elapsed_ms else 0.0

    def raise_for_failures(self) -> None:
        """Raises the first failure (its message tells how many failed)."""
        failed = self.failed
        if failed:
            index, first = failed[0]
            first.add_note(f"message {index} of {len(self)}; {len(failed)} failed in all")
            raise first

    def to_dict(self) -> dict[str, Any]:
        return {
            "sent": len(self.sent), "failed": len(self.failed), "elapsed_ms": self.elapsed_ms,
            "connections": self.connections,
            "outcomes": [o.to_dict() if not isinstance(o, Error) else
                         {"error": type(o).__name__, "message": str(o),
                          "delivered": getattr(o, "delivered", False),
                          "retry_safe": getattr(o, "retry_safe", False)}
                         for o in self.outcomes],
        }

    def __str__(self) -> str:
        lines = [f"{len(self)} messages in {self.elapsed_ms} ms ({self.rate:.0f} msg/s, "
                 f"{self.connections} connection(s)): {len(self.sent)} sent, "
                 f"{len(self.failed)} failed"]
        for index, err in self.failed[:20]:
            lines.append(f"  #{index}: {type(err).__name__}: {err}")
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{i}</td><td>{html.escape(type(e).__name__)}</td>"
            f"<td>{html.escape(str(e))}</td></tr>" for i, e in self.failed[:50])
        table = (f"<table><tr><th>#</th><th>error</th><th>what happened</th></tr>{rows}</table>"
                 if rows else "")
        return (f"<div><b>{len(self.sent)} of {len(self)} messages sent</b>, "
                f"{len(self.failed)} failed, {self.elapsed_ms} ms ({self.rate:.0f} msg/s)"
                f"{table}</div>")


class _Reporter:
    """Feeds a progress callback or a tqdm bar between batches."""

    def __init__(self, progress: ProgressArg, total: int | None) -> None:
        self.total = total
        self.callback: Callable[[Progress], object] | None = None
        self.bar: Any = None
        self.started = time.monotonic()
        self.done = self.sent = self.failed = 0
        if callable(progress):
            self.callback = progress
        elif progress:
            try:
                from tqdm.auto import tqdm  # type: ignore[import-untyped,unused-ignore]
            except ImportError:
                self.callback = lambda p: log.info("%s", p)
            else:
                self.bar = tqdm(total=total, unit="msg", desc="sending")

    def update(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        self.done += len(outcomes)
        failed = sum(isinstance(o, Error) for o in outcomes)
        self.failed += failed
        self.sent += len(outcomes) - failed
        elapsed = time.monotonic() - self.started
        if self.bar is not None:
            self.bar.update(len(outcomes))
            self.bar.set_postfix(sent=self.sent, failed=self.failed, refresh=False)
        if self.callback is not None:
            self.callback(Progress(self.done, self.total, self.sent, self.failed, elapsed,
                                   self.done / elapsed if elapsed > 0 else 0.0))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _maybe_resent(o: Outcome) -> bool:
    """An outcome the bulk send_as may still replace by sending again."""
    return isinstance(o, Error) and bool(getattr(o, "retry_safe", False))


def _not_sent(cls: type[Error], why: str) -> Error:
    err = cls(f"not sent: {why}")
    err.delivered = False       # type: ignore[attr-defined]
    err.retry_safe = True       # type: ignore[attr-defined]
    return err


def _item_envelope(session: Session, item: BulkItem) -> tuple[str, list[str], Any, str | None]:
    if isinstance(item, EmailMessage):
        return session._envelope(item, None, None)
    if isinstance(item, tuple) and len(item) == 3:
        envelope_from, recipients, message = item
        return session._envelope(message, envelope_from, recipients)
    raise InputError("each message must be an EmailMessage or a tuple (envelope_from, "
                     f"recipients, message), not {type(item).__name__}; it was not sent")


def _send_batch(session: Session, items: list[BulkItem], stop_on_error: bool,
                started: float) -> tuple[list[Outcome], bool]:
    """Sends one batch; returns its outcomes and whether to stop."""
    from .client import _result

    prepared: list[tuple[str, list[str], Any, str | None] | Error] = []
    for item in items:
        try:
            prepared.append(_item_envelope(session, item))
        except InputError as err:
            err.delivered = False   # type: ignore[attr-defined]
            prepared.append(err)
            if stop_on_error:
                break
    wire = [p for p in prepared if not isinstance(p, Error)]
    raw = session.send_many_raw([(p[0], p[1], p[2]) for p in wire], stop_on_error) if wire else []
    elapsed = int((time.monotonic() - started) * 1000)
    outcomes: list[Outcome] = []
    it = iter(raw)
    for p in prepared:
        if isinstance(p, Error):
            outcomes.append(p)
            continue
        o = next(it)
        if isinstance(o, Error):
            outcomes.append(o)
        elif isinstance(o, BaseException):
            # not ours (a file that is not seekable, or failed while read): kept
            # as this message's outcome, the original as its cause
            unread = InputError(f"the message could not be read: {type(o).__name__}: {o}; "
                                "it was not delivered")
            unread.__cause__ = o
            unread.delivered = False   # type: ignore[attr-defined]
            outcomes.append(unread)
        else:
            refused, reply = o
            outcomes.append(_result(p[0], p[1], p[3], refused, reply, elapsed))
    stop = session.state == "ERROR" or (stop_on_error and any(isinstance(o, Error) for o in outcomes))
    return outcomes, stop


def run_bulk(session: Session, messages: Iterable[BulkItem], *, stop_on_error: bool,
             progress: ProgressArg, batch_size: int,
             on_batch: Callable[[Sequence[Outcome]], None] | None = None) -> BulkResult:
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}")
    total = len(messages) if isinstance(messages, Sized) else None
    reporter = _Reporter(progress, total)
    started = time.monotonic()
    outcomes: list[Outcome] = []
    it: Iterator[BulkItem] = iter(messages)
    try:
        while batch := list(islice(it, batch_size)):
            got, stop = _send_batch(session, batch, stop_on_error, time.monotonic())
            # with stop_on_error a batch ends at its first failure
            for _ in batch[len(got):]:
                got.append(_not_sent(StateError, "an earlier message failed and stop_on_error is set"))
            outcomes.extend(got)
            reporter.update(got)
            if on_batch is not None:
                on_batch(got)
            if stop:
                break
        if total is not None and len(outcomes) < total:
            failures = [o for o in outcomes if isinstance(o, Error)]
            cls: type[Error] = type(failures[-1]) if failures and session.state == "ERROR" else StateError
            why = ("the session failed before this message went out" if session.state == "ERROR"
                   else "an earlier message failed and stop_on_error is set")
            rest = [_not_sent(cls, why) for _ in range(total - len(outcomes))]
            outcomes.extend(rest)
            reporter.update(rest)
    finally:
        reporter.close()
    return BulkResult(tuple(outcomes), int((time.monotonic() - started) * 1000))


def _build(session: Session, config: Config, item: Mapping[str, Any] | EmailMessage,
           sender: str | None, reply_to: str | None) -> BulkItem:
    """A send_as-style item as what Session.send_many takes."""
    from .client import _addr_spec, _recipients
    from .message import build_message

    if isinstance(item, EmailMessage):
        return item
    unknown = set(item) - {"to", "cc", "bcc", "subject", "body", "html", "sender", "reply_to",
                           "headers", "message", "envelope_from"}
    if unknown:
        raise InputError(f"unknown key(s) {sorted(unknown)} in a message; the keys are "
                         "send_as's keyword arguments; nothing was sent")
    who = item.get("sender") or sender or config.from_address
    if not who:
        raise InputError("no sender: give 'sender' in the message, sender=... or from_address "
                         "in the config")
    to, cc, bcc = (_recipients(item.get(k)) for k in ("to", "cc", "bcc"))
    template = item.get("message")
    if isinstance(template, (bytes, bytearray, memoryview)):
        return (item.get("envelope_from") or _addr_spec(who), to + cc + bcc, template)
    msg = build_message(sender=who, to=to, cc=cc, subject=item.get("subject", ""),
                        body=item.get("body", ""), html=item.get("html"),
                        reply_to=item.get("reply_to", reply_to if reply_to is not None
                                          else config.reply_to_address),
                        headers=item.get("headers"), template=template,
                        eight_bit=session.has_extn("8BITMIME"), utf8=session.has_extn("SMTPUTF8"))
    rcpts = to + cc + bcc
    if not rcpts and template is None:
        raise InputError("no recipients: give 'to' (or cc/bcc) in the message; it was not sent")
    if rcpts:
        return (item.get("envelope_from") or _addr_spec(who), rcpts, msg)
    return msg


def send_many(config: Config, messages: Iterable[Mapping[str, Any] | EmailMessage], *,
              sender: str | None = None, reply_to: str | None = None,
              stop_on_error: bool = False, progress: ProgressArg = None,
              batch_size: int = 100, reconnects: int = 2, token_provider: Any = None) -> BulkResult:
    """The bulk form of `send_as`: many messages through the connector
    over one connection, pipelined.

    Each message is a mapping of `send_as` keyword arguments
    (``to``, ``subject``, ``body``, ``cc``, ``bcc``, ``html``, ``sender``,
    ``reply_to``, ``headers``, ``message``, ``envelope_from``) or an
    `EmailMessage`; ``sender`` and ``reply_to`` here
    are the defaults for all.  When the session fails (connection lost, the
    server's 421 after its per-connection message limit), up to
    ``reconnects`` new connections resend the messages that certainly did
    not go out; a message whose fate is unknown is never sent twice.
    ``token_provider`` is `send_as`'s: each new connection takes a token
    from it (renewed when the last one is about to expire).
    Returns a `BulkResult`.
    """
    from .client import connect

    if token_provider is not None:
        config = config.replace(token_provider=token_provider)

    items = list(messages)
    outcomes: list[Outcome | None] = [None] * len(items)
    pending = list(range(len(items)))
    started = time.monotonic()
    reporter = _Reporter(progress, len(items))
    connections = 0
    try:
        while pending:
            connections += 1
            with connect(config) as session:
                built: list[BulkItem] = []
                index: list[int] = []
                for i in pending:
                    try:
                        built.append(_build(session, config, items[i], sender, reply_to))
                        index.append(i)
                    except InputError as err:
                        err.delivered = False   # type: ignore[attr-defined]
                        outcomes[i] = err
                # progress as each batch lands; a message the session failure kept
                # from going out is counted when its fate is final (it may be resent)
                result = run_bulk(session, built, stop_on_error=stop_on_error, progress=None,
                                  batch_size=batch_size,
                                  on_batch=lambda got: reporter.update([o for o in got if not _maybe_resent(o)]))
            retry = []
            for i, o in zip(index, result):
                outcomes[i] = o
                if _maybe_resent(o) and not (stop_on_error and isinstance(o, StateError)):
                    retry.append(i)
            if retry and connections <= reconnects:
                log.warning("session failed with %d message(s) not sent; reconnecting "
                            "(%d of %d)", len(retry), connections, reconnects)
            else:
                retry = []
            again, built_ok = set(retry), set(index)
            reporter.update([o for i, o in zip(index, result) if _maybe_resent(o) and i not in again])
            unbuilt = [outcomes[i] for i in pending if i not in built_ok]
            reporter.update([o for o in unbuilt if o is not None])
            pending = retry
    finally:
        reporter.close()
    done = [o for o in outcomes if o is not None]
    assert len(done) == len(items)
    return BulkResult(tuple(done), int((time.monotonic() - started) * 1000), connections)
