"""A journal of a bulk run that survives a crash: SQLite, one row per message.

Each message is keyed by the caller's ``id`` (or a hash of the message) and
moves through states recorded around the wire:

``wire``      about to be written: a batch's keys are recorded (and committed)
              in one ``batches`` row *before* the batch is written, and that
              row is replaced by the messages' final rows (one transaction)
              when its outcomes are known.  A batch row left by a killed run
              becomes ``wire`` rows when the journal is next opened: messages
              whose fate is unknown (they may have been delivered).
``sent``      the server accepted it (some recipients may have been refused).
``refused``   the server refused it: certainly not delivered.
``not_sent``  it never went out (a session failure before it, a quota).
``unknown``   written, no final reply (the connection broke after the body).

Running the same call again with the same journal sends only what is not
yet sent: ``not_sent`` rows and new keys.  ``wire`` and ``unknown`` rows are
not sent again unless the caller says so (``resend_unknown``).  A finished
row comes back as the outcome it had.

A message sent to its one recipient with nothing refused (a bulk run's usual
outcome) is recorded in columns (``message_id``, ``sender``, ``reply`` as
JSON, ``accepted``, ``elapsed``): no outcome JSON to build per message.  Every
other outcome is JSON in ``outcome`` (schema 3; journals of versions 1 and 2
gain the columns when opened and their rows keep their JSON).

Sent and unknown rows keep when they went out and their envelope recipients
(``sent_at``, ``rcpts``, indexed), so that a run counts the recipients of the
last 24 hours across runs (`recipients_since`, for ``recipients_per_day``).
Each row also keeps the run that wrote it (``run``), which makes the check
for a key given twice in one run exact (`written_in_run`).

WAL mode with ``synchronous=NORMAL``: a committed transaction survives the
process being killed (SIGKILL included: it is in the operating system's
hands once committed), which is what the kill-and-resume test checks.  An
operating-system crash or a power loss can take the last transactions back
(SQLite syncs the WAL at checkpoints, not at each commit): then the record
that the last batches went on the wire may be lost, and a rerun could send
those messages again.  ``Journal(path, sync="full")`` syncs every commit and
closes that gap, at a cost per batch.

One run at a time: an open `Journal` holds an ``flock`` on a lock file
beside the database (``run.sqlite.lock``), so a second `Journal` of the
same file, in another process or in this one, is refused at once with a
`ConcurrentUseError` before it reads or writes anything; the kernel drops
the lock when the holder dies (SIGKILL included), so a rerun after a crash
needs no clean-up.  A `Journal` object given to two `send_many` calls at
once is refused the same way (`begin_run`).

The wire thread's part is one statement per batch (`mark_wire`); the
outcomes are written by the journal's thread a few batches at a time while
the next batch is in the engine, and that thread also runs the WAL's
checkpoints (never a `mark_wire`'s commit), so the wire thread seldom waits
for the journal.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import json
import operator
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import ConcurrentUseError, ConfigError, Error
from .reply import Reply, Stage
from .results import only_records

if TYPE_CHECKING:
    from .client import SendResult

__all__ = ["Journal", "JournalRow", "message_key"]

SCHEMA_VERSION = "3"
FINAL_STATES = frozenset({"sent", "refused"})
#: States whose recipients count against recipients_per_day (unknown: may have been delivered).
COUNTED_STATES = frozenset({"sent", "unknown", "wire"})
#: The rolling window of recipients_per_day (Exchange Online counts 24 hours back).
DAY = 24 * 3600.0


def message_key(item: Any) -> str:
    """The journal key of one message: its ``id`` when it has one, otherwise
    a SHA-256 of the message (the mapping as canonical JSON, or the bytes of
    an EmailMessage)."""
    if isinstance(item, Mapping):
        if item.get("id") is not None:
            return str(item["id"])
        blob = json.dumps(item, sort_keys=True, default=_canonical).encode("utf-8")
    elif isinstance(item, EmailMessage):
        blob = item.as_bytes()
    elif isinstance(item, (bytes, bytearray, memoryview)):
        blob = bytes(item)
    else:
        blob = json.dumps(item, sort_keys=True, default=_canonical).encode("utf-8")
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(value, (set, frozenset)):
        return sorted(map(str, value))
    return str(value)


def _reply_json(reply: Reply | None) -> str | None:
    if reply is None:
        return None
    return _reply_json_of(reply)


_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii


@functools.lru_cache(maxsize=256)
def _quoted_reply_json(reply: Reply) -> str:
    return _quote(_reply_json_of(reply))


@functools.lru_cache(maxsize=256)
def _reply_json_of(reply: Reply) -> str:
    # a run's replies are mostly equal (and the same object): encoded once
    return json.dumps([reply.code, reply.enhanced, list(reply.lines),
                       reply.stage.value if reply.stage else None])


def _reply_from(text: str | None) -> Reply | None:
    if not text:
        return None
    code, enhanced, lines, stage = json.loads(text)
    return Reply(code, enhanced, tuple(lines), Stage(stage) if stage else None)


@dataclass(frozen=True)
class JournalRow:
    """One message as the journal knows it."""

    key: str
    state: str
    attempts: int
    outcome_json: str | None
    updated: float
    #: a sent message recorded in columns (schema 3) instead of ``outcome_json``
    message_id: str | None = None
    envelope_from: str | None = None
    reply_json: str | None = None
    accepted: str | None = None
    elapsed_ms: int | None = None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def outcome(self) -> SendResult | Error:
        """The outcome recorded for this message (for ``wire`` rows: an error
        saying its fate is unknown)."""
        from .client import SendResult

        if self.state == "sent" and self.outcome_json is None and self.reply_json is not None:
            reply = _reply_from(self.reply_json)
            assert reply is not None and self.envelope_from is not None and self.accepted is not None
            return SendResult(message_id=self.message_id, envelope_from=self.envelope_from,
                              accepted=(self.accepted,), refused={}, reply=reply,
                              elapsed_ms=self.elapsed_ms or 0)
        if self.state == "wire" or self.outcome_json is None:
            err: Error = Error(f"outcome unknown: an earlier run was stopped after recording this "
                               f"message for sending ({self.key}); it may have been delivered. "
                               "Check the recipient's mailbox, or pass resend_unknown=True")
            err.delivered = None
            err.retry_safe = False
            return err
        data = json.loads(self.outcome_json)
        if data["kind"] == "sent":
            reply = _reply_from(data["reply"])
            assert reply is not None
            return SendResult(message_id=data["message_id"], envelope_from=data["envelope_from"],
                              accepted=tuple(data["accepted"]),
                              refused={a: r for a, t in data["refused"].items()
                                       if (r := _reply_from(t)) is not None},
                              reply=reply, elapsed_ms=data.get("elapsed_ms", 0))
        cls = getattr(errors, data["error"], Error)
        if not (isinstance(cls, type) and issubclass(cls, Error)):
            cls = Error
        exc = Error.__new__(cls)
        Error.__init__(exc, data["message"], stage=data.get("stage"), reply=_reply_from(data["reply"]))
        if cls is errors.RecipientsRefused:
            exc.replies = {}        # type: ignore[attr-defined]
            exc.recipients = {}     # type: ignore[attr-defined]
        exc.delivered = data["delivered"]
        exc.retry_safe = data["retry_safe"]
        exc.add_note(f"recorded in the journal by an earlier run ({self.key})")
        return exc


def outcome_state(outcome: SendResult | Error) -> str:
    """The journal state an outcome puts its message in."""
    if not isinstance(outcome, Error):
        return "sent"
    delivered = getattr(outcome, "delivered", False)
    if delivered is None:
        return "unknown"
    if getattr(outcome, "retry_safe", False):
        return "not_sent"
    return "refused"


def outcome_json(outcome: SendResult | Error) -> str:
    if not isinstance(outcome, Error):
        return json.dumps({
            "kind": "sent", "message_id": outcome.message_id, "envelope_from": outcome.envelope_from,
            "accepted": list(outcome.accepted),
            "refused": {a: _reply_json(r) for a, r in outcome.refused.items()},
            "reply": _reply_json(outcome.reply), "elapsed_ms": outcome.elapsed_ms})
    return json.dumps({
        "kind": "error", "error": type(outcome).__name__, "message": outcome.message,
        "stage": outcome.stage.value if outcome.stage else None, "reply": _reply_json(outcome.reply),
        "delivered": getattr(outcome, "delivered", False),
        "retry_safe": bool(getattr(outcome, "retry_safe", False))})


def record_state_json(kept: Any) -> tuple[str, str]:
    """(state, outcome JSON) of a bulk run's kept outcome: an outcome, or the
    compact record of a sent message (`results.Record`), encoded without
    making its `SendResult` (the same JSON as `outcome_json`)."""
    if type(kept) is not tuple:
        return outcome_state(kept), outcome_json(kept)
    envelope_from, who, message_id, reply, refused, elapsed_ms = kept
    if not refused and isinstance(who, str):
        # the common case, written directly (a third of json.dumps's time)
        return "sent", (f'{{"kind": "sent", "message_id": {_quote(message_id) if message_id is not None else "null"}, '
                        f'"envelope_from": {_quote(envelope_from)}, "accepted": [{_quote(who)}], '
                        f'"refused": {{}}, "reply": {_quoted_reply_json(reply)}, "elapsed_ms": {int(elapsed_ms)}}}')
    rcpts = (who,) if isinstance(who, str) else who
    accepted = [a for a in rcpts if a not in refused] if refused else list(rcpts)
    return "sent", json.dumps({
        "kind": "sent", "message_id": message_id, "envelope_from": envelope_from,
        "accepted": accepted, "refused": {a: _reply_json(r) for a, r in (refused or {}).items()},
        "reply": _reply_json(reply), "elapsed_ms": elapsed_ms})


_ON_CONFLICT = ("ON CONFLICT(key) DO UPDATE SET state=excluded.state, attempts=attempts+1, "
                "outcome=excluded.outcome, updated=excluded.updated, run=excluded.run, "
                "sent_at=excluded.sent_at, rcpts=excluded.rcpts, message_id=excluded.message_id, "
                "sender=excluded.sender, reply=excluded.reply, accepted=excluded.accepted, "
                "elapsed=excluded.elapsed")
_UPSERT = ("INSERT INTO messages (key, state, attempts, outcome, updated, run, sent_at, rcpts) "
           "VALUES (?, ?, 1, ?, ?, ?, ?, ?) " + _ON_CONFLICT)
#: columns of a schema-3 row beyond version 2's (a sent message without JSON)
_V3_COLUMNS = ("message_id TEXT", "sender TEXT", "reply TEXT", "accepted TEXT", "elapsed INTEGER")


@functools.lru_cache(maxsize=32)
def _sent_sql(rows: int, fields: int) -> str:
    """The upsert of ``rows`` sent messages in columns: ?1 the time, ?2 the
    run, ?3 the sender and ?4 the reply's JSON when all the rows share them
    (bound once), then ``fields`` values a row: key, recipients, message id,
    accepted recipient, elapsed, and the sender (6 or 7) and the reply (7)
    when they differ."""
    sender = "?{s}" if fields >= 6 else "?3"
    reply = "?{r}" if fields == 7 else "?4"
    one = f"(?{{b}}, 'sent', 1, ?1, ?2, ?1, ?{{c}}, ?{{m}}, {sender}, {reply}, ?{{a}}, ?{{e}})"
    values = ", ".join(one.format(b=b, c=b + 1, m=b + 2, a=b + 3, e=b + 4, s=b + 5, r=b + 6)
                       for b in range(5, 5 + rows * fields, fields))
    return ("INSERT INTO messages (key, state, attempts, updated, run, sent_at, rcpts, message_id, "
            f"sender, reply, accepted, elapsed) VALUES {values} " + _ON_CONFLICT)


_BATCHES_PER_TRANSACTION = 50    # what waits is written together (a busy machine: one commit)
_ROWS_PER_STATEMENT = 400        # 7 values each at most: within SQLite's 32,766 parameters
#: rows written between two checkpoints of the WAL (by the writer, not at a mark_wire)
_CHECKPOINT_ROWS = 5000
#: how long the writer waits for the wire thread's next mark_wire (and more batches) at most
_WRITE_DELAY = 0.05
#: batches the writer waits for (up to `_WRITE_DELAY`) before a transaction
_BATCHES_PER_WRITE = 4
_STR = {str}


@functools.lru_cache(maxsize=16)
def _upsert_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, 1, ?, ?, ?, ?, ?)"] * rows)
    return _UPSERT.replace("VALUES (?, ?, 1, ?, ?, ?, ?, ?)", f"VALUES {values}")


#: the columns of sent rows in `Journal._finish`: key, recipients, message id,
#: sender, accepted recipient, elapsed, reply
_COLUMNS = 7


def _columns(rows: list[tuple[str, Any, int]]) -> tuple[Sequence[Any], ...] | None:
    """The `_COLUMNS` columns of a batch whose every outcome is a message sent
    to its one recipient with nothing refused (a kept `results.Record`), taken
    apart by C loops (zip, map, count); None for any other batch."""
    if not rows:
        return None
    keys, kept, counts = zip(*rows)
    if not only_records(kept):
        return None
    senders, whos, mids, replies, refused, elapsed = zip(*kept)
    if refused.count(None) != len(refused) or set(map(type, whos)) != _STR:
        return None
    return keys, counts, mids, senders, whos, elapsed, replies


def _recipients(kept: Any) -> int:
    """Envelope recipients of a kept outcome (0 for an error: not counted)."""
    if type(kept) is tuple:
        return 1 if isinstance(kept[1], str) else len(kept[1])
    if isinstance(kept, Error):
        return 0
    return len(kept.accepted) + len(kept.refused)


#: the lock file of a journal is the journal's path with this added
LOCK_SUFFIX = ".lock"


def _busy(path: str, pid: int | None, why: str,
          fix: str = "wait for that run to finish, or give this run another journal file") -> ConcurrentUseError:
    """The refusal of a second user of a journal (nothing was read, written or sent)."""
    return ConcurrentUseError(f"journal {path} is in use by {why}: one run at a time may use a "
                              f"journal (two could send the same messages); {fix}",
                              journal=path, pid=pid)


class _Hold:
    """One open `Journal`'s exclusive use of its file: an ``flock`` on the lock
    file beside it (``<journal>.lock``), held until `release`.

    Not a lock on the database file itself: SQLite locks that file with POSIX
    (fcntl) locks, which belong to the process, not to a descriptor.  A second
    fcntl lock taken by the same process is always granted (the journal opened
    twice in one process would not be refused), and closing any descriptor of
    the file drops every POSIX lock the process holds on it, SQLite's own
    included.  An flock belongs to one open file description: two opens of
    the lock file conflict within one process as between two, and the kernel
    drops it when the holder's process dies (SIGKILL included), so a run
    killed with the journal open leaves nothing to clean up.  (The descriptor
    is close-on-exec; a child made by a bare ``fork`` shares the lock.)

    The file is removed on release, while still locked: a process that opened
    it before and gets the lock after finds it no longer at that path and
    opens the new one (the check after locking)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.realpath(path) + LOCK_SUFFIX
        self.fd: int | None = None
        for _ in range(8):      # each retry: a holder removed the file between our open and flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ConfigError(f"journal {path} cannot be used: its lock file {self.path} "
                                  f"cannot be opened ({exc.strerror or exc}); give a journal path "
                                  "in a directory this process may write", key="journal",
                                  value=path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = self._holder(fd)
                os.close(fd)
                if pid == os.getpid():
                    raise _busy(path, pid, "another Journal open in this process",
                                "close that one first (or give it as journal=), or give this run "
                                "another journal file") from None
                raise _busy(path, pid, f"another run (process {pid})" if pid else "another run") from None
            except BaseException:
                os.close(fd)
                raise
            if self._still_there(fd):
                break
            os.close(fd)
        else:
            raise _busy(path, None, "other runs opening it at this moment")
        self.fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)    # for the refused one's message

    def _still_there(self, fd: int) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)

    @staticmethod
    def _holder(fd: int) -> int | None:
        try:
            return int(os.pread(fd, 32, 0).decode("ascii").strip() or "x")
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass        # removed by hand: the lock is the descriptor's, not the name's
        os.close(fd)

    def __del__(self) -> None:     # a Journal dropped without close()
        try:
            self.release()
        except Exception:       # noqa: BLE001 - at interpreter exit os may be gone
            pass


class Journal:
    """The SQLite journal of bulk runs (``path`` is created when missing).

    ``sync="normal"`` (the default) survives the process being killed at
    any point; ``sync="full"`` also an operating-system crash or a power
    loss (SQLite then syncs each commit to disk, a cost per batch).

    Thread-safe: one connection guarded by a lock (a run's sessions record
    through one journal).

    One at a time: while a Journal is open (until `close`) its file is its
    own, and opening the same file again, in this process or another,
    raises `ConcurrentUseError` (the lock file ``<path>.lock``, removed by
    `close`, vanishes with the process if it is killed).
    """

    def __init__(self, path: str, *, sync: str = "normal") -> None:
        self.path = str(path)
        if sync not in ("normal", "full"):
            raise ConfigError(f"journal sync must be 'normal' or 'full', not {sync!r}",
                              key="journal.sync", value=sync)
        self.run = 0                                # the run recording now (start_run)
        self._in_run = False                        # a bulk run has it (begin_run .. end_run)
        self._open: dict[int, tuple[list[str], list[int]]] = {}   # batches of ours on the wire
        # the JSON of the replies written, by identity (a run's equal replies are one object)
        self._reply_texts: dict[int, tuple[Reply, str]] = {}
        # this Journal has the file to itself until close(): a second one is refused
        # here, before it reads the file or turns a live run's batches into wire rows
        self._hold = _Hold(self.path) if self.path not in ("", ":memory:") else None
        try:
            self._db = self._connect(sync)
        except BaseException:
            if self._hold is not None:
                self._hold.release()
            raise
        self._lock = threading.Lock()
        # outcomes to record off the wire thread's path (`finish_later`), in order
        self._later: deque[tuple[int | None, list[tuple[str, Any, int]], int] | None] = deque()
        self._later_cv = threading.Condition()
        self._writer: threading.Thread | None = None
        self._busy = False
        self._failed: BaseException | None = None
        self._marks = 0             # mark_wire calls so far (the writer waits for the next)
        self._writer_waits = False  # the writer waits for a mark_wire (to be told)
        self._marks_handed = 0      # _marks when finish_later was last given a batch
        self._hurry = 0             # flush() calls waiting: the writer writes at once
        self._written = 0           # rows written since the last checkpoint
        self._ckpt: sqlite3.Connection | None = None
        self._ckpt_lock = threading.Lock()

    def _connect(self, sync: str) -> sqlite3.Connection:
        """The journal's connection, its schema set up (or upgraded) and the
        batches a killed run left on the wire turned into ``wire`` rows."""
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={sync.upper()}")
            # checkpoints are the writer's (`_checkpoint`), never a mark_wire's commit
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute("BEGIN IMMEDIATE")
            try:
                self._setup(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ConfigError(f"journal {self.path} cannot be used: {exc}; give a new file or a "
                              "journal written by mailexpress", key="journal", value=self.path) from None
        except BaseException:
            db.close()
            raise
        return db

    def _setup(self, db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            # a rowid table with a unique key: cheaper to fill than WITHOUT ROWID
            # for rows of this size (version 1 journals keep theirs)
            db.execute("""CREATE TABLE IF NOT EXISTS messages (
                key      TEXT NOT NULL UNIQUE,
                state    TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                outcome  TEXT,
                updated  REAL NOT NULL,
                run      INTEGER,
                sent_at  REAL,
                rcpts    INTEGER,
                message_id TEXT,
                sender   TEXT,
                reply    TEXT,
                accepted TEXT,
                elapsed  INTEGER
            )""")
            db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] in ("1", "2"):
            # version 1 had no run, sent time or recipients: its rows do not count for the day;
            # versions 1 and 2 kept every outcome as JSON (their rows keep it: `JournalRow.outcome`)
            added = ("run INTEGER", "sent_at REAL", "rcpts INTEGER") if row[0] == "1" else ()
            for column in added + _V3_COLUMNS:
                db.execute(f"ALTER TABLE messages ADD COLUMN {column}")
            db.execute("UPDATE meta SET value=? WHERE key='schema'", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise ConfigError(f"journal {self.path}: schema version {row[0]}, this mailexpress "
                              f"writes {SCHEMA_VERSION}; use a new journal file", key="journal",
                              value=self.path)
        db.execute("CREATE INDEX IF NOT EXISTS messages_sent_at ON messages (sent_at) "
                   "WHERE sent_at IS NOT NULL")
        db.execute("""CREATE TABLE IF NOT EXISTS batches (
            id      INTEGER PRIMARY KEY,
            run     INTEGER NOT NULL,
            started REAL NOT NULL,
            keys    TEXT NOT NULL,
            rcpts   TEXT NOT NULL
        )""")
        # batches a killed run left on the wire: their messages' fate is unknown
        for run, started, keys, rcpts in db.execute(
                "SELECT run, started, keys, rcpts FROM batches ORDER BY id").fetchall():
            counts = json.loads(rcpts)
            db.executemany(_UPSERT, ((k, "wire", None, started, run, started, n)
                                     for k, n in zip(json.loads(keys), counts)))
        db.execute("DELETE FROM batches")

    def close(self) -> None:
        """Records what `finish_later` was given, then closes the file."""
        try:
            self.flush()
        finally:
            with self._later_cv:
                if self._writer is not None:
                    self._later.append(None)
                    self._later_cv.notify_all()
            if self._writer is not None:
                self._writer.join()
            with self._ckpt_lock:
                if self._ckpt is not None:
                    self._ckpt.close()
            try:
                with self._lock:
                    self._db.close()
            finally:
                if self._hold is not None:
                    self._hold.release()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction under the lock: committed on success, rolled back
        on an exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def start_run(self) -> int:
        """Numbers a new run (the rows it writes carry the number)."""
        self.flush()
        with self._tx():
            row = self._db.execute("SELECT value FROM meta WHERE key='runs'").fetchone()
            self.run = int(row[0]) + 1 if row else 1
            self._db.execute("INSERT INTO meta VALUES ('runs', ?) ON CONFLICT(key) DO UPDATE "
                             "SET value=excluded.value", (str(self.run),))
        return self.run

    def begin_run(self) -> int:
        """`start_run` for a bulk run that has this Journal to itself until
        `end_run`: a second `begin_run` before then (the same Journal given
        to two ``send_many`` calls at once) raises `ConcurrentUseError`."""
        with self._lock:
            if self._in_run:
                raise _busy(self.path, os.getpid(), "another run in this process "
                            "(this Journal object was given to a send_many that has not returned)")
            self._in_run = True
        try:
            return self.start_run()
        except BaseException:
            self.end_run()
            raise

    def end_run(self) -> None:
        """Ends what `begin_run` began: the Journal may record another run."""
        with self._lock:
            self._in_run = False

    def _on_wire(self) -> dict[str, int]:
        """Keys of our batches on the wire, with their recipients."""
        out: dict[str, int] = {}
        for keys, counts in list(self._open.values()):
            out.update(zip(keys, counts))
        return out

    def lookup(self, keys: Sequence[str]) -> dict[str, JournalRow]:
        """The rows of those keys that exist (a key of a batch on the wire
        is in state ``wire``)."""
        out: dict[str, JournalRow] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for key, *values in self._db.execute(
                        "SELECT key, state, attempts, outcome, updated, message_id, sender, reply, "
                        f"accepted, elapsed FROM messages WHERE key IN ({marks})", chunk):
                    out[key] = JournalRow(key, *values)
        if self._open:
            wire = self._on_wire()
            for key in keys:
                if key in wire:
                    old = out.get(key)
                    out[key] = JournalRow(key, "wire", (old.attempts if old else 0) + 1, None, time.time())
        return out

    def empty(self) -> bool:
        """True when the journal holds no message (nothing to look up)."""
        with self._lock:
            return self._db.execute("SELECT 1 FROM messages LIMIT 1").fetchone() is None \
                and not self._open

    def take(self, keys: Sequence[str]) -> None:
        """Marks rows as seen by the current run (a run that answers a message
        from the journal has taken its key: `written_in_run`)."""
        with self._tx():
            self._db.executemany("UPDATE messages SET run=? WHERE key=?", ((self.run, k) for k in keys))

    def written_in_run(self, key: str, run: int | None = None) -> bool:
        """Whether this run (default: the current one) has recorded ``key``:
        on the wire or with an outcome."""
        run = self.run if run is None else run
        if run == self.run and key in self._on_wire():
            return True
        self.flush()        # outcomes still on their way are this run's too
        with self._lock:
            return self._db.execute("SELECT 1 FROM messages WHERE key=? AND run=?",
                                    (key, run)).fetchone() is not None

    def mark_wire(self, keys: Iterable[str], rcpts: Iterable[int] | None = None) -> int:
        """Records that these messages (with that many envelope recipients
        each) are about to be written, as one ``batches`` row; committed
        before this returns.  Returns the batch's number for `finish`."""
        keys = list(keys)
        counts = [0] * len(keys) if rcpts is None else list(rcpts)
        if self._failed is not None:
            with self._later_cv:
                self._raise_failure()
        keys_json, counts_json = json.dumps(keys), json.dumps(counts)
        with self._lock:
            # one statement: its own transaction, committed when it returns
            # (one release of the GIL, where BEGIN, INSERT, COMMIT were three)
            cur = self._db.execute("INSERT INTO batches (run, started, keys, rcpts) VALUES (?, ?, ?, ?)",
                                   (self.run, time.time(), keys_json, counts_json))
            batch = cur.lastrowid
            assert batch is not None
            self._open[batch] = (keys, counts)
            self._marks += 1
        if self._writer_waits:
            with self._later_cv:
                self._later_cv.notify_all()
        return batch

    def finish(self, batch: int | None, rows: Iterable[tuple[str, Any, int]],
               run: int | None = None) -> None:
        """Records the outcomes of a batch, ``(key, kept outcome, envelope
        recipients)`` each (an outcome, or a bulk run's compact record, see
        `record_state_json`), and closes the batch's ``wire`` row, in one
        transaction committed before this returns.  A key of the batch
        without an outcome here becomes a ``wire`` row (fate unknown)."""
        self._finish([(batch, rows, self.run if run is None else run)])

    def _reply_text(self, reply: Reply) -> str:
        """The JSON of a reply, kept by identity (a bounded cache: the replies
        of real servers are mostly distinct, a queue id in each)."""
        got = self._reply_texts.get(id(reply))
        if got is not None and got[0] is reply:
            return got[1]
        if len(self._reply_texts) >= 1024:
            self._reply_texts.clear()
        text = _reply_json_of(reply)
        self._reply_texts[id(reply)] = (reply, text)
        return text

    def _finish(self, jobs: Sequence[tuple[int | None, Iterable[tuple[str, Any, int]], int]]) -> None:
        """`finish` for several batches in one transaction.  A message sent to
        its one recipient with nothing refused (a bulk run's usual outcome) is
        a row of columns; the rest carry JSON.  A batch of such messages only
        (the usual batch) is taken apart column by column (`_columns`), not
        row by row: little work with the GIL held besides SQLite's own."""
        now = time.time()
        # runs of consecutive rows of one shape and run, written in order:
        # (in columns, run, the columns (`_COLUMNS` lists) or row tuples (JSON))
        parts: list[tuple[bool, int, list[Any]]] = []
        closed: list[int] = []
        for batch, rows, run in jobs:
            rows = rows if isinstance(rows, list) else list(rows)
            cols = _columns(rows)
            keys: Sequence[str]
            if cols is not None:
                keys = cols[0]
                for have, more in zip(self._column_part(parts, run), cols):
                    have += more
            else:
                keys = [row[0] for row in rows]
                self._rows_one_by_one(parts, run, now, rows)
            if batch is not None:
                closed.append(batch)
                wire = self._open.get(batch)
                if wire is not None and len(wire[0]) > len(keys):
                    done = set(keys)
                    for k, n in zip(*wire):
                        if k not in done:
                            self._json_row(parts, run, (k, "wire", None, now, run, now, n))
        written = 0
        with self._tx():
            if closed:
                self._db.execute(f"DELETE FROM batches WHERE id IN ({','.join('?' * len(closed))})", closed)
            for columns, run, values in parts:
                if columns:
                    self._upsert_sent(now, run, values)
                    written += len(values[0])
                else:
                    self._upsert(values)
                    written += len(values)
            for batch in closed:
                self._open.pop(batch, None)
        self._written += written
        if self._written >= _CHECKPOINT_ROWS:
            self._checkpoint()

    @staticmethod
    def _column_part(parts: list[tuple[bool, int, list[Any]]], run: int) -> list[list[Any]]:
        """The columns that the next sent rows of ``run`` join (a new part
        after rows of the other shape or of another run: the order is kept)."""
        if not parts or not parts[-1][0] or parts[-1][1] != run:
            parts.append((True, run, [[] for _ in range(_COLUMNS)]))
        return parts[-1][2]

    def _rows_one_by_one(self, parts: list[tuple[bool, int, list[Any]]], run: int, now: float,
                         rows: list[tuple[str, Any, int]]) -> None:
        """A batch with other outcomes than plain sent messages: row by row."""
        target: list[list[Any]] | None = None
        for key, kept, n in rows:
            if type(kept) is tuple and kept[4] is None and type(kept[1]) is str:
                if target is None:
                    target = self._column_part(parts, run)
                for have, value in zip(target, (key, n, kept[2], kept[0], kept[1], kept[5], kept[3])):
                    have.append(value)
                continue
            target = None
            state, text = record_state_json(kept)
            self._json_row(parts, run, (key, state, text, now, run,
                                        now if state in COUNTED_STATES else None, n))

    @staticmethod
    def _json_row(parts: list[tuple[bool, int, list[Any]]], run: int, row: tuple[Any, ...]) -> None:
        if not parts or parts[-1][0]:
            parts.append((False, run, []))
        parts[-1][2].append(row)

    def _upsert_sent(self, now: float, run: int, cols: list[list[Any]]) -> None:
        """`_sent_sql` for many sent rows (``cols``: `_COLUMNS` lists).  The
        sender and the reply are bound once when every row has the same (a
        run's replies are mostly one object): 5 values a row to bind, laid
        out by C loops (zip, chain)."""
        keys, counts, mids, senders, whos, elapsed, replies = cols
        sender = senders[0] if senders.count(senders[0]) == len(senders) else None
        first = replies[0]
        reply = self._reply_text(first) if all(map(operator.is_, replies, itertools.repeat(first))) else None
        row: list[Iterable[Any]] = [keys, counts, mids, whos, map(int, elapsed)]
        if sender is None or reply is None:
            row.append(senders)
        if reply is None:
            row.append(map(self._reply_text, replies))
        fields = len(row)
        flat = list(itertools.chain.from_iterable(zip(*row)))
        step = _ROWS_PER_STATEMENT * fields
        for start in range(0, len(flat), step):
            chunk = flat[start:start + step]
            self._db.execute(_sent_sql(len(chunk) // fields, fields), [now, run, sender, reply, *chunk])

    def _checkpoint(self) -> None:
        """Copies the WAL into the database file (a passive checkpoint: it
        waits for nobody) on a connection of its own, in the writer's thread:
        the wire thread's `mark_wire` neither runs it nor waits for it.
        (SQLite's automatic checkpoint, off on the main connection, runs in
        whichever commit crosses its threshold: often a `mark_wire`.)"""
        self._written = 0
        with self._ckpt_lock:
            if self._ckpt is None:
                self._ckpt = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def finish_later(self, batch: int | None, rows: list[tuple[str, Any, int]]) -> None:
        """`finish` in the journal's writer thread, in the order given, so that
        the wire thread goes on at once.  A kill before it is written leaves
        the batch on the wire (unknown): never a message sent twice.  A
        failure to write is raised by the next `mark_wire` or `flush`."""
        with self._later_cv:
            self._raise_failure()
            self._later.append((batch, rows, self.run))
            self._marks_handed = self._marks
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_later, name="mailexpress-journal",
                                                daemon=True)
                self._writer.start()
            self._later_cv.notify_all()

    def flush(self) -> None:
        """Waits until what `finish_later` was given is committed."""
        with self._later_cv:
            self._hurry += 1
            self._later_cv.notify_all()
            try:
                while self._later or self._busy:
                    self._later_cv.wait()
            finally:
                self._hurry -= 1
            self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise ConfigError(f"journal {self.path}: outcomes could not be recorded ({failed}); "
                              "the run was stopped (free disk space, or give another journal file)",
                              key="journal", value=self.path) from failed

    def _write_later(self) -> None:
        while True:
            with self._later_cv:
                while not self._later:
                    self._later_cv.wait()
                # the wire thread's next mark_wire follows the batch it handed
                # over: written after it, this transaction runs while that batch
                # is in the engine, and neither waits for the other (the lock)
                # (and a few batches together: fewer transactions, fewer
                # times the writer takes the GIL from the run's other threads)
                deadline = time.monotonic() + _WRITE_DELAY
                while ((len(self._later) < _BATCHES_PER_WRITE or self._marks == self._marks_handed)
                       and not self._hurry and self._later[-1] is not None
                       and (left := deadline - time.monotonic()) > 0):
                    self._writer_waits = True
                    self._later_cv.wait(left)
                self._writer_waits = False
                jobs = []
                while self._later and self._later[0] is not None:
                    job = self._later.popleft()
                    assert job is not None
                    jobs.append(job)
                if not jobs:        # the end (close)
                    return
                self._busy = True
            try:
                self._finish(jobs[:_BATCHES_PER_TRANSACTION])
                with self._later_cv:        # the rest back at the head, in order
                    self._later.extendleft(reversed(jobs[_BATCHES_PER_TRANSACTION:]))
            except BaseException as exc:    # noqa: BLE001 - handed to the caller's thread
                with self._later_cv:
                    self._failed = exc
            finally:
                with self._later_cv:
                    self._busy = False
                    self._later_cv.notify_all()

    def _upsert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """`_UPSERT` for many rows, as few statements as possible: one SQLite
        step (and one release of the GIL) per 400 rows instead of one a row,
        which costs little alone but much when the run's other threads
        wait for the GIL at each release."""
        for start in range(0, len(rows), _ROWS_PER_STATEMENT):
            chunk = rows[start:start + _ROWS_PER_STATEMENT]
            self._db.execute(_upsert_sql(len(chunk)), [v for row in chunk for v in row])

    def record(self, pairs: Iterable[tuple[str, SendResult | Error]], batch: int | None = None) -> None:
        """Records final (or unknown / not sent) outcomes, closing ``batch``
        (`mark_wire`'s number) when given; committed before this returns."""
        self.finish(batch, ((k, o, _recipients(o)) for k, o in pairs))

    def record_kept(self, pairs: Iterable[tuple[str, Any]], batch: int | None = None) -> None:
        """`record` for a bulk run's kept outcomes (`record_state_json`)."""
        self.finish(batch, ((k, o, _recipients(o)) for k, o in pairs))

    def recipients_since(self, since: float) -> int:
        """Envelope recipients of the messages sent (or of unknown fate) at or
        after ``since`` (a `time.time()`), in every run."""
        with self._lock:
            (total,) = self._db.execute("SELECT coalesce(sum(rcpts), 0) FROM messages "
                                        "WHERE sent_at >= ?", (since,)).fetchone()
        return int(total) + sum(sum(c) for _k, c in list(self._open.values()))

    def oldest_since(self, since: float) -> float | None:
        """When the oldest message counted by `recipients_since` went out."""
        with self._lock:
            (first,) = self._db.execute("SELECT min(sent_at) FROM messages WHERE sent_at >= ? "
                                        "AND rcpts > 0", (since,)).fetchone()
        return float(first) if first is not None else None

    def counts(self) -> dict[str, int]:
        """Messages per state."""
        with self._lock:
            out: dict[str, int] = dict(self._db.execute(
                "SELECT state, count(*) FROM messages GROUP BY state").fetchall())
        wire = list(self._on_wire())
        if wire:
            with self._lock:
                for start in range(0, len(wire), 500):
                    chunk = wire[start:start + 500]
                    for (state,) in self._db.execute(
                            f"SELECT state FROM messages WHERE key IN ({','.join('?' * len(chunk))})", chunk):
                        out[state] -= 1
            out["wire"] = out.get("wire", 0) + len(wire)
            out = {k: v for k, v in out.items() if v}
        return out

    def unknown(self) -> list[str]:
        """Keys whose fate is unknown (written, no final reply, or a killed run)."""
        with self._lock:
            keys = {k for (k,) in self._db.execute(
                "SELECT key FROM messages WHERE state IN ('wire', 'unknown')")}
        return sorted(keys | set(self._on_wire()))
