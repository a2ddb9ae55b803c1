"""`mx.send_many`: the bulk form of `send_as`, streaming.

The input (mappings of send_as keywords, `EmailMessage` objects, or a
`Template` and its rows) is consumed lazily, a batch at a time.  One worker
thread has the connection: while it sends batch *k* (the C engine releases
the GIL for the whole batch), this thread builds batch *k + 1*.  What is kept
per message after it is sent is a compact record (see `results`); only the
messages of the batches in flight, and those waiting to be sent again on a
new connection, are held whole.

When a session fails (connection lost, the server's 421 after its
per-connection message limit), up to ``reconnects`` new connections resend
the messages that certainly did not go out; a message whose fate is unknown
is never sent twice.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sized
from concurrent.futures import Future, ThreadPoolExecutor
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from .batches import Kept, ProgressArg, Reporter, Shared, maybe_resent, not_sent, send_prepared
from .client import connect
from .compose import Prepared, envelope, prepare_item
from .errors import Error, InputError, StateError
from .results import BulkResult, Progress
from .template import Template

if TYPE_CHECKING:
    from .config import Config

__all__ = ["BulkResult", "Progress", "send_many"]

log = logging.getLogger("mailexpress")

#: One message in flight: [index, source item, prepared (or its error), (8BITMIME, SMTPUTF8)
#: it was prepared for].
Entry = list[Any]


def send_many(config: Config, messages: Iterable[Mapping[str, Any] | EmailMessage] | None = None,
              *, template: Template | None = None, rows: Iterable[Mapping[str, Any]] | None = None,
              sender: str | None = None, reply_to: str | None = None,
              stop_on_error: bool = False, progress: ProgressArg = None,
              batch_size: int = 100, reconnects: int = 2, token_provider: Any = None) -> BulkResult:
    """The bulk form of `send_as`: many messages through the connector
    over one connection, pipelined, the input read as it is sent.

    Each message is a mapping of `send_as` keyword arguments
    (``to``, ``subject``, ``body``, ``cc``, ``bcc``, ``html``, ``sender``,
    ``reply_to``, ``headers``, ``attachments``, ``message``,
    ``envelope_from``) or an `EmailMessage`; or give a `Template` and
    ``rows`` (mappings of its fields) instead of ``messages``.  ``sender``
    and ``reply_to`` are the defaults for all (then the config's).
    ``messages``/``rows`` may be any iterable, a generator or a
    ``csv.DictReader``: it is consumed a batch at a time while the previous
    batch is on the wire, and memory does not grow with the whole run.

    When the session fails (connection lost, the server's 421 after its
    per-connection message limit), up to ``reconnects`` new connections
    resend the messages that certainly did not go out; a message whose fate
    is unknown is never sent twice.  ``token_provider`` is `send_as`'s:
    each new connection takes a token from it (renewed when the last one is
    about to expire).  Returns a `BulkResult`.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}")
    if template is not None or rows is not None:
        if messages is not None:
            raise InputError("give messages, or template= and rows=, not both")
        if not isinstance(template, Template) or rows is None:
            raise InputError("template= needs an mx.Template and rows= an iterable of mappings")
        source: Iterable[Any] = rows
    elif messages is None:
        raise InputError("nothing to send: give messages, or template= and rows=")
    else:
        source = messages
    if token_provider is not None:
        config = config.replace(token_provider=token_provider)
    default_sender = sender or config.from_address
    default_reply_to = reply_to if reply_to is not None else config.reply_to_address
    run = _Run(config, source, template, default_sender, default_reply_to,
               stop_on_error, progress, batch_size, reconnects)
    return run.go()


class _Run:
    """One call of send_many."""

    def __init__(self, config: Config, source: Iterable[Any], template: Template | None,
                 sender: str | None, reply_to: str | None, stop_on_error: bool,
                 progress: ProgressArg, batch_size: int, reconnects: int) -> None:
        self.config = config
        self.total = len(source) if isinstance(source, Sized) else None
        self.source: Iterator[Any] = iter(source)
        self.exhausted = False
        self.template = template
        self.sender, self.reply_to = sender, reply_to
        self.stop_on_error = stop_on_error
        self.batch_size = batch_size
        self.reconnects = reconnects
        self.reporter = Reporter(progress, self.total)
        self.outcomes: list[Kept | None] = []
        self.carry: deque[Entry] = deque()     # to send (again) before more input
        self.connections = 0
        self.shared = Shared()
        self.finished = False                  # the run ends: the rest is not sent
        self.why: tuple[type[Error], str] | None = None

    # -- input and building ---------------------------------------------------------

    def _take(self) -> list[Entry]:
        batch: list[Entry] = []
        while self.carry and len(batch) < self.batch_size:
            batch.append(self.carry.popleft())
        while not self.exhausted and len(batch) < self.batch_size:
            try:
                item = next(self.source)
            except StopIteration:
                self.exhausted = True
                break
            batch.append([len(self.outcomes), item, None, None])
            self.outcomes.append(None)
        return batch

    def _prepare(self, item: Any, caps: tuple[bool, bool]) -> Prepared:
        eight_bit, utf8 = caps
        if self.template is not None:
            return self.template.prepare(item, sender=self.sender, reply_to=self.reply_to,
                                         eight_bit=eight_bit, utf8=utf8)
        if isinstance(item, EmailMessage):
            return envelope(item, None, None, utf8=utf8)
        return prepare_item(item, sender=self.sender, reply_to=self.reply_to,
                            eight_bit=eight_bit, utf8=utf8)

    def _build(self, batch: list[Entry], caps: tuple[bool, bool]) -> None:
        for entry in batch:
            if entry[3] != caps:      # new, or prepared for a server that offered other things
                try:
                    entry[2] = self._prepare(entry[1], caps)
                except InputError as err:
                    err.delivered = False   # type: ignore[attr-defined]
                    entry[2] = err
                entry[3] = caps

    # -- outcomes -----------------------------------------------------------------------

    def _final(self, entries: Iterable[tuple[Entry, Kept]]) -> None:
        done = []
        for entry, kept in entries:
            self.outcomes[entry[0]] = kept
            done.append(kept)
        self.reporter.update(done)

    def _finish(self, got: list[Kept], batch: list[Entry],
                failed: bool) -> list[tuple[Entry, Kept]]:
        """Records a batch's outcomes; returns those that may be sent again."""
        for _ in batch[len(got):]:
            got.append(not_sent(StateError, "an earlier message failed and stop_on_error is set"))
        again: list[tuple[Entry, Kept]] = []
        final: list[tuple[Entry, Kept]] = []
        for entry, kept in zip(batch, got):
            if failed and maybe_resent(kept) and not (self.stop_on_error and isinstance(kept, StateError)):
                again.append((entry, kept))
            else:
                final.append((entry, kept))
        self._final(final)
        return again

    def _end(self, cls: type[Error], why: str, pending: Iterable[Entry]) -> None:
        """The run stops: everything not sent yet is final, not sent."""
        rest: list[tuple[Entry, Kept]] = [(e, e[2] if isinstance(e[2], InputError) else not_sent(cls, why))
                                          for e in pending]
        self._final(rest)
        self.finished = True
        # the rest of the input: one outcome each, never consumed for nothing else
        while not self.exhausted:
            batch = self._take()
            self._final([(e, not_sent(cls, why)) for e in batch])

    # -- the connection loop ------------------------------------------------------------

    def go(self) -> BulkResult:
        started = time.monotonic()
        pool = ThreadPoolExecutor(1, thread_name_prefix="mailexpress-send")
        try:
            batch = self._take()
            while batch:        # nothing to send: no connection
                self.connections += 1
                self._one_connection(pool, batch)
                batch = [] if self.finished else self._take()
        finally:
            pool.shutdown(wait=True)
            self.reporter.close()
        assert all(o is not None for o in self.outcomes)
        return BulkResult(self.outcomes,   # type: ignore[arg-type]
                          int((time.monotonic() - started) * 1000), self.connections)

    def _one_connection(self, pool: ThreadPoolExecutor, batch: list[Entry]) -> None:
        session = connect(self.config)
        inflight: tuple[Future[list[Kept]], list[Entry]] | None = None
        try:
            caps = (session.has_extn("8BITMIME"), session.has_extn("SMTPUTF8"))
            while True:
                self._build(batch, caps)                 # while the previous batch is on the wire
                if inflight is not None:
                    fut, sent = inflight
                    inflight = None
                    got = fut.result()
                    failed = session.state == "ERROR"
                    again = self._finish(got, sent, failed)
                    if failed:
                        why = "the session failed before this message went out"
                        errors = [k for _e, k in again if isinstance(k, Error)] or [
                            o for o in (self.outcomes[e[0]] for e in sent) if isinstance(o, Error)]
                        cls = type(errors[-1]) if errors else StateError
                        if again and self.connections <= self.reconnects:
                            log.warning("session failed with %d message(s) not sent; reconnecting "
                                        "(%d of %d)", len(again), self.connections, self.reconnects)
                            self.carry.extendleft(reversed([e for e, _k in again] + batch))
                        else:
                            self._final(again)
                            self._end(cls, why, batch + list(self.carry))
                            self.carry.clear()
                        return
                    if self.stop_on_error and any(isinstance(self.outcomes[e[0]], Error) for e in sent):
                        self._end(StateError, "an earlier message failed and stop_on_error is set",
                                  batch + list(self.carry))
                        self.carry.clear()
                        return
                if not batch:
                    return
                inflight = (pool.submit(send_prepared, session, [e[2] for e in batch],
                                        self.stop_on_error, self.shared), batch)
                batch = self._take()
        finally:
            if inflight is not None:                     # an exception here: let the wire finish
                try:
                    inflight[0].result()
                except BaseException:       # noqa: BLE001 - the first exception is the one raised
                    pass
            session.close_quietly()
