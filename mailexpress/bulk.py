"""`mx.send_many`: the bulk form of `send_as`, streaming.

The input (mappings of send_as keywords, `EmailMessage` objects, or a
`Template` and its rows) is consumed lazily, a batch at a time.  One worker
thread has the connection: while it sends batch *k* (the C engine releases
the GIL for the whole batch), this thread builds batch *k + 1*.  What is kept
per message after it is sent is a compact record (see `results`); only the
messages of the batches in flight, and those waiting to be sent again on a
new connection, are held whole.

When a session fails (connection lost), up to ``reconnects`` new
connections resend the messages that certainly did not go out; a message
whose fate is unknown is never sent twice.  The server's pushback
(`throttle.classify`) is handled apart: a per-connection limit reconnects
without counting as a failure, a rate or concurrency reply backs off and
retries (``retries``, ``max_wait``), a quota ends the run.  `Limits` pace the
run (`Pacer`, one message at a time, shared by reconnects), refuse messages
with too many recipients, stop before the day's recipients and reconnect
before the connector's per-connection limit.  A `Journal` records each
message before and after the wire, so that a rerun sends only what is not
yet sent.

The main thread never blocks for more than half a second: Ctrl-C and an
exception from a progress callback end the run at once, and the outcomes
known so far travel on the exception (``exc.result``).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from email.message import EmailMessage
from itertools import count, islice
from typing import TYPE_CHECKING, Any, cast

from .batches import Kept, ProgressArg, Reporter, maybe_resent, not_sent, send_prepared
from .client import connect
from .compose import Prepared, envelope, prepare_items
from .errors import DuplicateMessage, Error, InputError, StateError
from .journal import DAY, Journal, message_key
from .limits import Limits, Pacer
from .reply import Stage
from .results import BulkResult, Outcomes, Progress, only_records
from .seen import SeenKeys
from .template import Template
from .throttle import Backoff, Pushback, classify

if TYPE_CHECKING:
    from .client import Session
    from .config import Config

__all__ = ["BulkResult", "Progress", "send_many"]

log = logging.getLogger("mailexpress")

#: One message in flight: [index, source item, prepared (or its error), (8BITMIME, SMTPUTF8)
#: it was prepared for, journal key or None].
Entry = list[Any]

#: How long the main thread waits at a time (Ctrl-C is honoured between waits).
TICK = 0.5
#: At most this long the main thread waits for a batch to reach the engine
#: before it builds the next one.
_HANDOFF = 0.05


def send_many(config: Config, messages: Iterable[Mapping[str, Any] | EmailMessage] | None = None,
              *, template: Template | None = None, rows: Iterable[Mapping[str, Any]] | None = None,
              sender: str | None = None, reply_to: str | None = None,
              stop_on_error: bool = False, progress: ProgressArg = None,
              batch_size: int = 100, reconnects: int = 2, token_provider: Any = None,
              limits: Limits | str | Mapping[str, Any] | None = None,
              retries: int = 8, max_wait: float = 300.0,
              journal: str | Journal | None = None, resend_unknown: bool = False,
              connections: int = 1) -> BulkResult:
    """The bulk form of `send_as`: many messages through the connector
    over one connection, pipelined, the input read as it is sent.

    Each message is a mapping of `send_as` keyword arguments
    (``to``, ``subject``, ``body``, ``cc``, ``bcc``, ``html``, ``sender``,
    ``reply_to``, ``headers``, ``attachments``, ``message``,
    ``envelope_from``, and ``id``: the message's key in the journal) or an
    `EmailMessage`; or give a `Template` and ``rows`` (mappings of its
    fields) instead of ``messages``.  ``sender`` and ``reply_to`` are the
    defaults for all (then the config's).  ``messages``/``rows`` may be any
    iterable, a generator or a ``csv.DictReader``: it is consumed a batch at
    a time while the previous batch is on the wire, and memory does not grow
    with the whole run.

    When the session fails (connection lost), up to ``reconnects`` new
    connections resend the messages that certainly did not go out; a
    message whose fate is unknown is never sent twice.  The server's
    per-connection limits reconnect without counting; its rate and
    concurrency replies are waited out (jittered backoff, at most
    ``retries`` waits of at most ``max_wait`` seconds); a quota ends the run,
    the rest not sent.  ``limits`` (a `Limits`, a preset name or a mapping;
    default the config's ``limits``) paces and bounds the run (docs/bulk.md).
    ``journal`` (a path or a `Journal`) records every message so that the
    same call again sends only what is not yet sent; messages whose fate is
    unknown are not resent unless ``resend_unknown``.  ``connections``
    sessions send in parallel (at most the limits' ``connections``); the
    outcomes keep the input's order.  ``token_provider`` is `send_as`'s:
    the sessions share the token it gives.

    Returns a `BulkResult`.  An exception (Ctrl-C, a progress callback's,
    a connection that cannot be opened at all) carries the outcomes of every
    message read so far as ``exc.result``; the unread rest of the input is
    left unread.
    """
    if token_provider is not None:
        config = config.replace(token_provider=token_provider)
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputError(f"retries must be a whole number of at least 0, not {retries!r}")
    if not isinstance(max_wait, (int, float)) or not max_wait > 0:
        raise InputError(f"max_wait must be a positive number of seconds, not {max_wait!r}")
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
    chosen = Limits.coerce(limits if limits is not None else getattr(config, "limits", None))
    if isinstance(connections, bool) or not isinstance(connections, int) or connections < 1:
        raise InputError(f"connections must be a whole number of at least 1, not {connections!r}")
    if chosen is not None and chosen.connections is not None:
        connections = min(connections, chosen.connections)
    default_sender = sender or config.from_address
    default_reply_to = reply_to if reply_to is not None else config.reply_to_address
    own_journal = journal is not None and not isinstance(journal, Journal)
    # a journal another run has open (or a Journal given to a send_many that has not
    # returned) raises ConcurrentUseError here, before anything is read or sent
    jr = Journal(str(journal)) if own_journal else journal
    assert jr is None or isinstance(jr, Journal)
    done: Callable[[], None] = lambda: None
    if jr is not None:
        done = jr.close if own_journal else jr.end_run
        try:
            jr.begin_run()
        except BaseException:
            if own_journal:
                jr.close()
            raise
    try:
        run = _Run(config, source, template, default_sender, default_reply_to,
                   stop_on_error, progress, batch_size, reconnects, chosen,
                   Backoff(base=min(2.0, max_wait), cap=max_wait, tries=retries), jr, resend_unknown,
                   connections)
    except BaseException:
        done()
        raise
    try:
        return run.go()
    finally:
        # the journal stays this run's while a batch it left in a wire thread is sent
        # (an exception, Ctrl-C): closed, or handed back, when that thread is done
        run.after_wire(done)


def duplicate(key: str, index: int, first: int) -> DuplicateMessage:
    """The outcome of a message whose key an earlier message of the input had."""
    if key.startswith("sha256:"):
        what = (f"message #{index} is identical to message #{first} (neither has an id, and the "
                "journal keys such a message by its content)")
    else:
        what = f"message #{index} has the same id {key!r} as message #{first}"
    err = DuplicateMessage(f"{what}: it was not sent, and #{first}'s outcome was not taken for it; "
                           "give every message a unique id", key=key, index=index, first=first)
    err.delivered = False
    err.retry_safe = False
    return err


class _Run:
    """One call of send_many."""

    def __init__(self, config: Config, source: Iterable[Any], template: Template | None,
                 sender: str | None, reply_to: str | None, stop_on_error: bool,
                 progress: ProgressArg, batch_size: int, reconnects: int,
                 limits: Limits | None, backoff: Backoff, journal: Journal | None,
                 resend_unknown: bool, connections: int) -> None:
        self.config = config
        self.total = len(source) if isinstance(source, Sized) else None
        self.source: Iterator[Any] = iter(source)
        self.exhausted = False
        self.template = template
        self.sender, self.reply_to = sender, reply_to
        self.stop_on_error = stop_on_error
        self.limits = limits or Limits()
        self.pacer = Pacer(self.limits.messages_per_minute) if self.limits.messages_per_minute else None
        # paced: one message at a time, each at its slot
        self.batch_size = 1 if self.pacer is not None else batch_size
        self.reconnects = reconnects
        self.failures = 0                      # reconnects used up by session failures
        self.backoff = backoff
        self.journal = journal
        self.seen = SeenKeys()                 # keys read so far (duplicates)
        self.taking: list[Entry] = []
        self.journal_was_empty = False
        self.day_before = 0                    # recipients_per_day: earlier runs' in the window
        if journal is not None:     # its run begun by send_many (Journal.begin_run)
            self.journal_was_empty = journal.empty()
        self.resend_unknown = resend_unknown
        self.reporter = Reporter(progress, self.total)
        self.outcomes = Outcomes()     # compact: see results.Outcomes
        self.carry: deque[Entry] = deque()     # to send (again) before more input
        self.connections = 0
        self.finished = False                  # the run ends: the rest is not sent
        self.stop: tuple[type[Error], str] | None = None   # end after what is in flight
        self.recipients = 0                    # recipients handed to the server in this run
        if journal is not None and self.limits.recipients_per_day is not None:
            # and in the last 24 hours of earlier runs: Exchange Online's window rolls
            self.day_before = self.recipients = journal.recipients_since(time.time() - DAY)
        self.accepted_total = 0
        self.closed_after: list[int] = []      # the server's per-connection limit, as seen
        self.throttled: list[str] = []         # rate / concurrency replies seen
        self.quota: str | None = None
        self.lanes: list[_Lane] = []           # the open sessions
        self.target = connections              # how many to keep open
        self.concurrency: int | None = None    # the server's limit, as seen
        self.ended: tuple[type[Error], str] | None = None
        self.abandoned = False                 # a wire thread still runs after an exception
        self.left_on_wire: list[Future[list[Kept]]] = []    # the batches it sends

    # -- input and building ---------------------------------------------------------

    def _take(self, room: int | None = None) -> list[Entry]:
        want = self.batch_size if room is None else min(self.batch_size, room)
        batch: list[Entry] = []
        self.taking = batch                 # in flight too (`_seen_before`)
        while self.carry and len(batch) < want:
            batch.append(self.carry.popleft())
        while not self.exhausted and len(batch) < want:
            items: list[Any] = []
            more = want - len(batch)
            try:
                items.extend(islice(self.source, more))
            finally:        # what was read has its place, even when the input raised
                start = self.outcomes.add(len(items))
            self.exhausted = len(items) < more
            batch.extend(self._journaled([[i, item, None, None, None]
                                          for i, item in zip(count(start), items)]))
        return batch

    def _journaled(self, fresh: list[Entry]) -> list[Entry]:
        """Entries to send: a message whose key (its ``id``; with a journal,
        or a hash of it) an earlier message of the input had is a
        `DuplicateMessage`; with a journal, a message it has recorded as
        finished gets the outcome it recorded."""
        if not fresh:
            return fresh
        jr = self.journal
        keyed: list[Entry] = []
        if jr is not None:
            for e in fresh:
                e[4] = message_key(e[1])
            keyed = fresh
        else:       # without a journal only ids are keys (a hash would cost time and mean nothing)
            for e in fresh:
                item = e[1]
                if (type(item) is dict or isinstance(item, Mapping)) \
                        and (ident := item.get("id")) is not None:
                    e[4] = str(ident)
                    keyed.append(e)
        if keyed:
            hits = self.seen.add_many([e[4] for e in keyed], [e[0] for e in keyed])
            if hits:
                dups: list[tuple[Entry, Kept]] = []
                for pos, first in hits:
                    e = keyed[pos]
                    if self._seen_before(e[4], first, fresh):
                        dups.append((e, duplicate(e[4], e[0], first)))
                if dups:
                    self._final(dups)
                    gone = {id(e) for e, _k in dups}
                    fresh = [e for e in fresh if id(e) not in gone]
        if jr is None or not fresh:
            return fresh
        rows = jr.lookup([e[4] for e in fresh]) if not self.journal_was_empty else {}
        go: list[Entry] = []
        done: list[tuple[Entry, Kept]] = []
        for e in fresh:
            row = rows.get(e[4])
            if row is None or row.state == "not_sent" or (
                    self.resend_unknown and row.state in ("wire", "unknown")):
                go.append(e)
            else:
                # a SendResult stands for its record: BulkResult and the reporter take either
                done.append((e, cast(Kept, row.outcome())))
        if done:
            jr.take([e[4] for e, _k in done])      # this run's now (the check for duplicates)
        self._final(done)
        return go

    def _seen_before(self, key: str, first: int, earlier: list[Entry]) -> bool:
        """Whether the message at ``first``, whose key had the same hash, had
        ``key``: exact while it is in flight or with a journal; otherwise the
        hash decides (see `seen`)."""
        lanes = [e for lane in self.lanes for e in
                 (lane.built + (lane.inflight[1] if lane.inflight is not None else []))]
        for e in (*earlier, *self.taking, *self.carry, *lanes):
            if e[0] == first:
                return bool(e[4] == key)
        if self.journal is not None:
            return self.journal.written_in_run(key)
        return True

    @staticmethod
    def _without_id(item: Any) -> Any:
        """The mapping without its ``id`` (the journal's key, not a header)."""
        if (type(item) is dict or isinstance(item, Mapping)) and "id" in item:
            return {k: v for k, v in item.items() if k != "id"}
        return item

    def _prepare_all(self, items: list[Any], caps: tuple[bool, bool]) -> list[Prepared | InputError]:
        """The batch's messages built: the rows or mappings the C renderer
        takes in one call each batch (csrc/proto/render.c), the rest by
        the Python builder; an item that cannot be sent gets its error."""
        eight_bit, utf8 = caps
        items = [self._without_id(item) for item in items]
        if self.template is not None:
            return self.template.prepare_many(items, sender=self.sender, reply_to=self.reply_to,
                                              eight_bit=eight_bit, utf8=utf8)
        if not any(isinstance(item, EmailMessage) for item in items):
            return prepare_items(items, sender=self.sender, reply_to=self.reply_to,
                                 eight_bit=eight_bit, utf8=utf8)
        got: list[Prepared | InputError] = []
        for item in items:      # an EmailMessage is honoured exactly: its headers, its bytes
            try:
                got.append(envelope(item, None, None, utf8=utf8) if isinstance(item, EmailMessage)
                           else prepare_items([item], sender=self.sender, reply_to=self.reply_to,
                                              eight_bit=eight_bit, utf8=utf8)[0])
            except InputError as err:
                got.append(err)
        return got

    def _build(self, batch: list[Entry], caps: tuple[bool, bool]) -> None:
        most = self.limits.recipients_per_message
        todo = [entry for entry in batch if entry[3] != caps]   # new, or made for other caps
        if not todo:
            return
        for entry, p in zip(todo, self._prepare_all([e[1] for e in todo], caps)):
            if not isinstance(p, InputError) and most is not None and len(p[1]) > most:
                p = InputError(
                    f"this message has {len(p[1])} recipients and limits.recipients_per_message "
                    f"is {most}: it was not sent (not split either); send it as several "
                    "messages, or raise the limit if the connector allows more")
            if isinstance(p, InputError):
                p.delivered = False
            entry[2] = p
            entry[3] = caps

    # -- outcomes -----------------------------------------------------------------------

    def _final(self, entries: Iterable[tuple[Entry, Kept]]) -> None:
        pairs = list(entries)
        self._final_lists([e for e, _k in pairs], [k for _e, k in pairs])

    def _final_lists(self, entries: list[Entry], kept: list[Kept], failed: int | None = None) -> None:
        """Outcomes of messages, final: ``kept[k]`` is ``entries[k]``'s;
        ``failed``: how many are errors, when known."""
        if not entries:
            return
        self.outcomes.set_many([e[0] for e in entries], kept)
        if failed is None:
            failed = 0 if only_records(kept) else sum(isinstance(k, Error) for k in kept)
        if failed and log.isEnabledFor(logging.INFO):
            for entry, k in zip(entries, kept):
                if isinstance(k, Error):
                    log.info("message %d not sent: %s: %s", entry[0], type(k).__name__, k)
        self.reporter.update(kept, failed)

    def _end(self, cls: type[Error], why: str, pending: Iterable[Entry]) -> None:
        """The run stops: everything not sent yet (``pending``, what waits to be
        sent again, what the other sessions have built) is final, not sent."""
        if self.ended is None:
            self.ended = (cls, why)
        waiting = list(pending) + list(self.carry)
        for lane in self.lanes:
            waiting += lane.built
            lane.built = []
        rest: list[tuple[Entry, Kept]] = [(e, e[2] if isinstance(e[2], InputError) else not_sent(cls, why))
                                          for e in waiting]
        self._final(rest)
        self.finished = True
        self.carry.clear()
        # the rest of the input: one outcome each
        while not self.exhausted:
            batch = self._take()
            self._final([(e, not_sent(cls, why)) for e in batch])

    # -- the wire thread ----------------------------------------------------------------

    def _wire(self, session: Session, batch: list[Entry],
              going: threading.Event | None = None) -> list[Kept]:
        """Runs in the wire thread: journal, pace, send, journal.  ``going``
        is set when the batch is about to enter the engine (see `_feed`)."""
        if going is not None and self.pacer is not None:
            going.set()
        if self.pacer is not None and not self.pacer.wait(1):
            return [not_sent(StateError, "the run was interrupted before this message went out")
                    for _ in batch]
        jr = self.journal
        batch_id = None
        if jr is not None:
            # a message that could not be built never goes on the wire: not journaled
            mine = [e for e in batch if e[4] is not None and not isinstance(e[2], Error)]
            if mine:    # one row for the batch, committed before it is written
                batch_id = jr.mark_wire([e[4] for e in mine], [len(e[2][1]) for e in mine])
        got = send_prepared(session, [e[2] for e in batch], self.stop_on_error, going)
        for k in got if not only_records(got) else ():
            if isinstance(k, Error) and k.reply is not None and classify(k.reply, k.stage) is Pushback.QUOTA:
                # not delivered for the day's quota, not for what it is: it may go another day
                k.retry_safe = True
        if jr is not None and batch_id is not None:
            # the outcomes replace the batch's row: one transaction, in the journal's
            # thread (a kill before it leaves the batch unknown, never sent twice)
            jr.finish_later(batch_id, [(e[4], k, len(e[2][1])) for e, k in zip(batch, got)
                                       if e[4] is not None and not isinstance(e[2], Error)])
        return got

    @staticmethod
    def _sleep(seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, TICK))

    # -- the connection loop ------------------------------------------------------------

    def go(self) -> BulkResult:
        started = time.monotonic()
        try:
            if not self._day_used_up():
                self._loop()
            if self.journal is not None:
                self.journal.flush()        # every outcome recorded when send_many returns
        except BaseException as exc:
            self._rescue(exc)
            result = self._result(started)
            try:
                exc.result = result     # type: ignore[attr-defined]
            except AttributeError:      # an exception that takes no attributes
                pass
            self._summary(result)
            raise
        finally:
            self.reporter.close()
            for lane in self.lanes:
                if not lane.close():
                    self.abandoned = True
                    assert lane.inflight is not None
                    self.left_on_wire.append(lane.inflight[0])
            self.lanes = []
        result = self._result(started)
        self._summary(result)
        return result

    def after_wire(self, then: Callable[[], None]) -> None:
        """Calls ``then`` now, or, when the run was left with batches in wire
        threads (`abandoned`), once the last of them is done (in its thread)."""
        left = len(self.left_on_wire)
        if not left:
            then()
            return
        lock = threading.Lock()

        def one_done(_fut: Future[list[Kept]]) -> None:
            nonlocal left
            with lock:
                left -= 1
                last = left == 0
            if last:
                then()
        for fut in self.left_on_wire:
            fut.add_done_callback(one_done)

    def _room(self) -> int | None:
        """Messages the next batch may hold on a fresh connection."""
        return self.limits.messages_per_connection

    def _result(self, started: float) -> BulkResult:
        assert not self.outcomes.missing()
        result = BulkResult(self.outcomes,
                            int((time.monotonic() - started) * 1000), max(self.connections, 1))
        result.learned = self._learned()
        return result

    def _learned(self) -> tuple[str, ...]:
        out: list[str] = []
        if self.closed_after:
            low = min(self.closed_after)
            every = "every " if len(set(self.closed_after)) == 1 and len(self.closed_after) > 1 else ""
            out.append(f"the server closed the connection after {every}{low} messages "
                       f"({len(self.closed_after)} time(s)); set limits messages_per_connection={low}")
        if self.throttled:
            out.append(f"the server throttled the run {len(self.throttled)} time(s) "
                       f"({self.throttled[-1]}); set limits messages_per_minute (and connections) "
                       "below its limit")
        if self.concurrency is not None:
            out.append(f"the server refused more than {self.concurrency} concurrent connection(s); "
                       f"set limits connections={self.concurrency}")
        if self.quota:
            out.append(f"the server's quota was reached after {self.accepted_total} accepted message(s) "
                       f"in this run ({self.quota}); set limits recipients_per_day")
        return tuple(out)

    def _summary(self, result: BulkResult) -> None:
        failed = len(result.failed)
        if failed:
            log.warning("send_many: %d of %d messages not delivered (%d sent) in %d ms%s",
                        failed, len(result), len(result) - failed, result.elapsed_ms,
                        "; " + "; ".join(result.learned) if result.learned else "")

    def _rescue(self, exc: BaseException) -> None:
        """After an exception: every message read gets an outcome."""
        if self.pacer is not None:
            self.pacer.cancel()
        why = f"the run was stopped ({type(exc).__name__}) before this message went out"
        busy = [lane.inflight[0] for lane in self.lanes if lane.inflight is not None]
        if busy:
            wait(busy, timeout=TICK)
        for lane in self.lanes:
            if lane.inflight is not None:
                fut, batch = lane.inflight
                if not fut.done():
                    unknown: list[tuple[Entry, Kept]] = []
                    for e in batch:
                        err = StateError(f"outcome unknown: the run was stopped ({type(exc).__name__}) "
                                         "while this message's batch was on the wire; it may have been "
                                         "delivered")
                        err.delivered = None
                        err.retry_safe = False
                        unknown.append((e, err))
                    self._fill(unknown)         # the batch finishes on its own; then the session closes
                else:
                    lane.inflight = None
                    try:
                        got = fut.result()
                    except BaseException as wire_exc:   # noqa: BLE001 - the first exception is the one raised
                        self._fill([(e, not_sent(StateError, f"{why}: {wire_exc}")) for e in batch])
                    else:
                        self._fill(list(zip(batch, got)))
            self._fill([(e, e[2] if isinstance(e[2], InputError) else not_sent(StateError, why))
                        for e in lane.built])
            lane.built = []
        self._fill([(e, e[2] if isinstance(e[2], InputError) else not_sent(StateError, why))
                    for e in self.carry])
        self.carry.clear()
        # anything else read but without an outcome (a callback that raised mid-update)
        for i, o in enumerate(self.outcomes):
            if o is None:
                self.outcomes[i] = not_sent(StateError, why)

    def _fill(self, pairs: list[tuple[Entry, Kept]]) -> None:
        """Outcomes without the progress callback (it may be what raised)."""
        for entry, kept in pairs:
            if self.outcomes[entry[0]] is None:
                self.outcomes[entry[0]] = kept

    def _loop(self) -> None:
        """Opens sessions (up to ``target``) while there is input, feeds each a
        batch at a time, and takes their outcomes as they land."""
        while True:
            while not self.finished and len(self.lanes) < self.target:
                batch = self._take(self._room())
                if not batch:
                    break
                lane = self._open(batch)
                if lane is None:
                    break
                self.lanes.append(lane)
            if not self.lanes:
                if self.finished or not (self.carry or not self.exhausted):
                    return
                continue            # a connection was refused while others closed: try again
            for lane in self.lanes:
                if lane.inflight is None and not lane.done:
                    self._feed(lane)
            busy = [lane.inflight[0] for lane in self.lanes if lane.inflight is not None]
            if busy:
                wait(busy, timeout=TICK, return_when=FIRST_COMPLETED)
            for lane in list(self.lanes):
                if lane.inflight is not None and lane.inflight[0].done():
                    fut, sent = lane.inflight
                    lane.inflight = None
                    if not self._after(lane, fut.result(), sent):
                        lane.done = True
                if lane.inflight is None and (lane.done or not lane.built):
                    self.carry.extendleft(reversed(lane.built))
                    lane.built = []
                    lane.close()
                    self.lanes.remove(lane)

    def _feed(self, lane: _Lane) -> None:
        """Puts the lane's next batch on the wire and builds the one after."""
        if not lane.built:
            room = self.limits.messages_per_connection
            lane.built = [] if self.stop is not None else self._take(
                None if room is None else room - lane.on_connection)
            self._build(lane.built, lane.caps)
        if not lane.built:
            return
        batch = self._within_day(lane.built)
        lane.on_connection += len(batch)
        lane.built = []
        going = threading.Event()
        lane.inflight = (lane.pool.submit(self._wire, lane.session, batch, going), batch)
        room = self.limits.messages_per_connection
        if self.stop is None:       # built while the batch is on the wire
            # ... once it is: the wire thread needs the GIL to start the batch,
            # and would otherwise wait for the whole build of the next one
            # (the GIL is handed over only when this thread blocks, or after
            # the 5 ms switch interval), with the connection idle meanwhile
            going.wait(_HANDOFF)
            lane.built = self._take(None if room is None else room - lane.on_connection)
            self._build(lane.built, lane.caps)
            self.outcomes.compact()     # the last batch's records, off the path between batches

    def _open(self, batch: list[Entry]) -> _Lane | None:
        """A new session for ``batch``; waits out the server's rate and
        concurrency replies when no other session is open.  None when no
        session was opened (the batch is put back, or has outcomes)."""
        while True:
            try:
                session = connect(self.config)
            except Error as exc:
                kind = classify(exc.reply, exc.stage or Stage.CONNECT)
                if kind in (Pushback.RATE, Pushback.CONCURRENCY):
                    self.throttled.append(str(exc.reply))
                    if self.lanes:          # enough sessions for this server: go on with these
                        self.target = len(self.lanes)
                        self.concurrency = len(self.lanes)
                        self.carry.extendleft(reversed(batch))
                        return None
                    delay = self.backoff.next_delay()
                    if delay is not None:
                        log.info("the server refused a connection (%s); waiting %.1f s", exc.reply, delay)
                        self._sleep(delay)
                        continue
                if self.connections == 0 and kind is None:
                    self.carry.extendleft(reversed(batch))
                    raise
                if self.lanes:
                    self.target = len(self.lanes)
                    self.carry.extendleft(reversed(batch))
                    return None
                self._end(type(exc), f"no connection: {exc}", batch)
                return None
            except BaseException:
                self.carry.extendleft(reversed(batch))
                raise
            self.connections += 1
            lane = _Lane(session, len(self.lanes))
            lane.built = batch
            self._build(batch, lane.caps)
            return lane

    def _within_day(self, batch: list[Entry]) -> list[Entry]:
        """The head of the batch that keeps the run within recipients_per_day;
        the rest is put back and the run ends after it."""
        most = self.limits.recipients_per_day
        if most is None:
            self.recipients += sum([len(e[2][1]) for e in batch if isinstance(e[2], tuple)])
            return batch
        for k, e in enumerate(batch):
            n = 0 if isinstance(e[2], Error) else len(e[2][1])
            if self.recipients + n > most:
                self.carry.extendleft(reversed(batch[k:]))
                self.stop = (StateError, self._day_why(most))
                return batch[:k]
            self.recipients += n
        return batch

    def _day_why(self, most: int) -> str:
        why = f"limits.recipients_per_day ({most}) would be exceeded"
        if self.journal is not None:
            why += (f": {self.day_before} recipient(s) in the 24 hours before this run (per the "
                     f"journal), {self.recipients - self.day_before} in this run")
            oldest = self.journal.oldest_since(time.time() - DAY) if self.day_before else None
            if oldest is not None:
                when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(oldest + DAY))
                why += f"; the oldest of them leave the 24-hour window at {when}"
            return why + "; run again later with the same journal to send the rest"
        return why + " (counted in this run: give a journal to count earlier runs); send the rest later"

    def _day_used_up(self) -> bool:
        """Ends the run before it starts when earlier runs used up the day."""
        most = self.limits.recipients_per_day
        if most is None or self.recipients < most:
            return False
        self._end(StateError, self._day_why(most), [])
        return True

    def _after(self, lane: _Lane, got: list[Kept], sent: list[Entry]) -> bool:
        """Takes a finished batch's outcomes; False when this session is done."""
        session = lane.session
        failed = session.state == "ERROR"
        push: Pushback | None = None
        quota: Error | None = None
        again: list[tuple[Entry, Kept]] = []
        final: list[tuple[Entry, Kept]] = []
        if only_records(got) and len(got) == len(sent):
            # every message sent (the usual batch): records only
            lane.accepted_here += len(got)
            self.accepted_total += len(got)
            self._final_lists(sent, got, 0)
            got = []
        for entry, kept in zip(sent, got):
            if isinstance(kept, Error):
                kind = classify(kept.reply, kept.stage, accepted_on_connection=lane.accepted_here) \
                    if kept.reply is not None else None
                if kind is Pushback.QUOTA:
                    quota = quota or kept
                    final.append((entry, kept))
                    continue
                if kind is not None and getattr(kept, "delivered", False) is False \
                        and not isinstance(entry[2], Error):
                    push = push or kind
                    again.append((entry, kept))
                    continue
                if failed and maybe_resent(kept) and not (self.stop_on_error and isinstance(kept, StateError)):
                    again.append((entry, kept))
                    continue
            else:
                lane.accepted_here += 1
                self.accepted_total += 1
            final.append((entry, kept))
        self._final(final)
        built, lane.built = lane.built, []
        pending = [e for e, _k in again] + built
        if self.finished:
            assert self.ended is not None
            self._end(self.ended[0], self.ended[1], pending)
            return False
        if push is Pushback.CONNECTION and not lane.accepted_here:
            push = Pushback.RATE        # refused at once on a fresh connection: wait, then retry
        if quota is not None:
            self.quota = str(quota.reply)
            self._end(type(quota), f"the server's quota was reached ({quota.reply})", pending)
            return False
        if push is Pushback.CONNECTION:
            if lane.accepted_here:
                self.closed_after.append(lane.accepted_here)
            log.info("the server ended the connection's messages after %d (%s); reconnecting",
                     lane.accepted_here, again[0][1])
            self.carry.extendleft(reversed(pending))
            return False
        if push in (Pushback.RATE, Pushback.CONCURRENCY):
            first = again[0][1]
            reply = first.reply if isinstance(first, Error) else None
            self.throttled.append(str(reply))
            if push is Pushback.CONCURRENCY and len(self.lanes) > 1:
                self.target = len(self.lanes) - 1       # one session fewer, no wait
                self.concurrency = self.target
                self.carry.extendleft(reversed(pending))
                return False
            delay = self.backoff.next_delay()
            if delay is None:
                self._end(type(first) if isinstance(first, Error) else StateError,
                          f"the server kept throttling after {self.backoff.tries} waits ({reply})", pending)
                return False
            log.info("the server throttled the run (%s); waiting %.1f s", reply, delay)
            self.carry.extendleft(reversed(pending))
            session.close_quietly()
            self._sleep(delay)
            return False
        if failed:
            errors = [k for _e, k in again if isinstance(k, Error)] or [
                o for o in (self.outcomes[e[0]] for e in sent) if isinstance(o, Error)]
            cls = type(errors[-1]) if errors else StateError
            if again and self.failures < self.reconnects:
                self.failures += 1
                log.info("session failed with %d message(s) not sent; reconnecting (%d of %d)",
                         len(again), self.failures, self.reconnects)
                self.carry.extendleft(reversed(pending))
            else:
                self._final(again)
                self._end(cls, "the session failed before this message went out", built)
            return False
        if lane.accepted_here:
            self.backoff.reset()
        if self.stop_on_error and any(isinstance(self.outcomes[e[0]], Error) for e in sent):
            self._end(StateError, "an earlier message failed and stop_on_error is set", pending)
            return False
        if self.stop is not None:
            self._end(self.stop[0], self.stop[1], pending)
            return False
        lane.built = pending
        return True


class _Lane:
    """One session of a run, with the thread that has its wire."""

    def __init__(self, session: Session, number: int) -> None:
        self.session = session
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"mailexpress-send-{number}")
        self.inflight: tuple[Future[list[Kept]], list[Entry]] | None = None
        self.built: list[Entry] = []            # read and built, not yet on the wire
        self.on_connection = 0                  # messages handed to this session
        self.accepted_here = 0                  # messages it accepted
        self.caps = (session.has_extn("8BITMIME"), session.has_extn("SMTPUTF8"))
        self.done = False

    def close(self) -> bool:
        """Closes the session after what is on its wire; True when nothing was."""
        idle = self.inflight is None or self.inflight[0].done()
        self.pool.submit(self.session.close_quietly)
        self.pool.shutdown(wait=idle)
        return idle
