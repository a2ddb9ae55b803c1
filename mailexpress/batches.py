"""Batches on one session: the C engine's `send_many_raw` and its outcomes.

`Session.send_many` (here: `run_bulk`) and `mx.send_many` (in `bulk`) hand the
engine batches of prepared messages; the engine writes each batch with as few
round trips as the server allows (see docs/performance.md), with the GIL
released, and gives one outcome per message.  This module turns those into
compact records or errors, and reports progress between batches.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from email.message import EmailMessage
from itertools import islice
from typing import Any, Union

from . import _core
from .compose import Prepared, envelope
from .errors import Error, InputError, StateError
from .results import BulkResult, Outcomes, Progress, Record, _log_refused, only_records

__all__ = ["Reporter", "run_bulk", "send_prepared", "not_sent", "maybe_resent"]

log = logging.getLogger("mailexpress")

ProgressArg = Union[bool, "Callable[[Progress], object]", None]
#: What is kept per message of a batch: a compact record or the error.
Kept = Union[Record, Error]


class Reporter:
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

    def update(self, outcomes: Sequence[Kept], failed: int | None = None) -> None:
        """Counts a batch's outcomes (``failed``: how many are errors, when
        the caller knows)."""
        if not outcomes:
            return
        self.done += len(outcomes)
        if failed is None:
            failed = 0 if only_records(outcomes) else sum(isinstance(o, Error) for o in outcomes)
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


def maybe_resent(o: object) -> bool:
    """An outcome the bulk send_as may still replace by sending again."""
    return isinstance(o, Error) and bool(getattr(o, "retry_safe", False))


def not_sent(cls: type[Error], why: str) -> Error:
    err = cls(f"not sent: {why}")
    err.delivered = False
    err.retry_safe = True
    return err


def send_prepared(session: _core.Session, prepared: Sequence[Prepared | Error],
                  stop_on_error: bool, going: threading.Event | None = None) -> list[Kept]:
    """Sends one batch of prepared messages (errors stand for messages that
    could not be prepared and are kept as their outcome).  Returns one kept
    outcome per item; with ``stop_on_error`` the items after the first failure
    are "not sent" (retry safe).  ``going`` is set just before the batch
    enters the engine.

    The engine makes the records of the sent messages itself (`_send_records`:
    no per-message dicts, equal replies one object); only the outcomes that
    are not records are looked at here."""
    if going is not None:
        going.set()
    got: list[Any] = _core.Session._send_records(session, prepared, stop_on_error) \
        if prepared else []
    if not only_records(got):
        for k, o in enumerate(got):
            if type(o) is tuple or isinstance(o, Error):
                continue
            # not ours (a file that is not seekable, or failed while read): kept
            # as this message's outcome, the original as its cause
            unread = InputError(f"the message could not be read: {type(o).__name__}: {o}; "
                                "it was not delivered")
            unread.__cause__ = o
            unread.delivered = False
            got[k] = unread
    out: list[Kept] = got
    if log.isEnabledFor(logging.INFO):
        for o in out:
            if type(o) is tuple:
                sender, who, message_id, reply, refused, _ms = o
                _log_refused(sender, (who,) if isinstance(who, str) else who, message_id,
                             refused, reply)
    # with stop_on_error the batch ended at its first failure
    out.extend(not_sent(StateError, "an earlier message failed and stop_on_error is set")
               for _ in range(len(prepared) - len(out)))
    return out


def _item_envelope(session: _core.Session, item: Any) -> Prepared:
    utf8 = "SMTPUTF8" in session.capabilities
    if isinstance(item, EmailMessage):
        return envelope(item, None, None, utf8=utf8)
    if isinstance(item, tuple) and len(item) == 3:
        envelope_from, recipients, message = item
        return envelope(message, envelope_from, recipients, utf8=utf8)
    raise InputError("each message must be an EmailMessage or a tuple (envelope_from, "
                     f"recipients, message), not {type(item).__name__}; it was not sent")


def _keep(outcomes: Outcomes, got: Sequence[Kept]) -> None:
    first = outcomes.add(len(got))
    outcomes.set_many(range(first, first + len(got)), got)
    outcomes.compact()


def run_bulk(session: _core.Session, messages: Iterable[Any], *, stop_on_error: bool,
             progress: ProgressArg, batch_size: int) -> BulkResult:
    """`Session.send_many`: the input is consumed batch by batch."""
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}")
    total = len(messages) if isinstance(messages, Sized) else None
    reporter = Reporter(progress, total)
    started = time.monotonic()
    # kept compact batch by batch (equal senders and replies once, whatever
    # batch they came in), not as a list of every record of the run
    outcomes = Outcomes()
    it: Iterator[Any] = iter(messages)
    try:
        while batch := list(islice(it, batch_size)):
            prepared: list[Prepared | Error] = []
            for item in batch:
                try:
                    prepared.append(_item_envelope(session, item))
                except InputError as err:
                    prepared.append(err)
            got = send_prepared(session, prepared, stop_on_error)
            _keep(outcomes, got)
            reporter.update(got)
            if session.state == "ERROR" or (stop_on_error and any(isinstance(o, Error) for o in got)):
                break
        if total is not None and len(outcomes) < total:
            failures = [o for _i, o in outcomes.objects() if isinstance(o, Error)]
            cls: type[Error] = type(failures[-1]) if failures and session.state == "ERROR" else StateError
            why = ("the session failed before this message went out" if session.state == "ERROR"
                   else "an earlier message failed and stop_on_error is set")
            rest: list[Kept] = [not_sent(cls, why) for _ in range(total - len(outcomes))]
            _keep(outcomes, rest)
            reporter.update(rest)
    finally:
        reporter.close()
    return BulkResult(outcomes, int((time.monotonic() - started) * 1000))
