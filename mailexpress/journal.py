"""A journal of a bulk run that survives a crash: one SQLite row per message.

Each message is keyed by the caller's ``id`` (or a hash of the message) and
moves through states recorded around the wire:

``wire``      recorded (and committed) *before* its batch is written; a row
              left in this state by a killed run is a message whose fate is
              unknown: it may have been delivered.
``sent``      the server accepted it (some recipients may have been refused).
``refused``   the server refused it: certainly not delivered.
``not_sent``  it never went out (a session failure before it, a quota).
``unknown``   written, no final reply (the connection broke after the body).

Running the same call again with the same journal sends only what is not
yet sent: ``not_sent`` rows and new keys.  ``wire`` and ``unknown`` rows are
not sent again unless the caller says so (``resend_unknown``).  A finished
row comes back as the outcome it had.

WAL mode with ``synchronous=NORMAL``: a committed transaction survives the
process being killed (it is in the operating system's hands once committed);
only a power loss can take the last transactions back.  Two transactions per
batch keep the cost per message small.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from . import errors
from .errors import ConfigError, Error
from .reply import Reply, Stage

if TYPE_CHECKING:
    from .client import SendResult

__all__ = ["Journal", "JournalRow", "message_key"]

SCHEMA_VERSION = "1"
FINAL_STATES = frozenset({"sent", "refused"})


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

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def outcome(self) -> SendResult | Error:
        """The outcome recorded for this message (for ``wire`` rows: an error
        saying its fate is unknown)."""
        from .client import SendResult

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


class Journal:
    """The SQLite journal of bulk runs (``path`` is created when missing).

    Thread-safe: one connection guarded by a lock (a run's sessions record
    through one journal).
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript("""
                CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS messages (
                    key      TEXT PRIMARY KEY,
                    state    TEXT NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    outcome  TEXT,
                    updated  REAL NOT NULL
                ) WITHOUT ROWID;
            """)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise ConfigError(f"journal {self.path}: schema version {row[0]}, this mailexpress "
                                  f"writes {SCHEMA_VERSION}; use a new journal file", key="journal",
                                  value=self.path)
        except sqlite3.DatabaseError as exc:
            raise ConfigError(f"journal {self.path} cannot be used: {exc}; give a new file or a "
                              "journal written by mailexpress", key="journal", value=self.path) from None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

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

    def lookup(self, keys: Sequence[str]) -> dict[str, JournalRow]:
        """The rows of those keys that exist."""
        out: dict[str, JournalRow] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                for key, state, attempts, outcome, updated in self._db.execute(
                        f"SELECT key, state, attempts, outcome, updated FROM messages WHERE key IN ({marks})",
                        chunk):
                    out[key] = JournalRow(key, state, attempts, outcome, updated)
        return out

    def mark_wire(self, keys: Iterable[str]) -> None:
        """Records that these messages are about to be written; committed
        before this returns."""
        now = time.time()
        with self._tx():
            self._db.executemany(
                "INSERT INTO messages (key, state, attempts, updated) VALUES (?, 'wire', 1, ?) "
                "ON CONFLICT(key) DO UPDATE SET state='wire', attempts=attempts+1, updated=excluded.updated",
                ((k, now) for k in keys))

    def record(self, pairs: Iterable[tuple[str, SendResult | Error]]) -> None:
        """Records final (or unknown / not sent) outcomes; committed before
        this returns."""
        now = time.time()
        with self._tx():
            self._db.executemany(
                "INSERT INTO messages (key, state, outcome, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET state=excluded.state, outcome=excluded.outcome, "
                "updated=excluded.updated",
                ((k, outcome_state(o), outcome_json(o), now) for k, o in pairs))

    def record_kept(self, pairs: Iterable[tuple[str, Any]]) -> None:
        """`record` for a bulk run's kept outcomes (`record_state_json`)."""
        now = time.time()
        rows = [(k, *record_state_json(o), now) for k, o in pairs]
        with self._tx():
            self._db.executemany(
                "INSERT INTO messages (key, state, outcome, updated) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET state=excluded.state, outcome=excluded.outcome, "
                "updated=excluded.updated", rows)

    def counts(self) -> dict[str, int]:
        """Messages per state."""
        with self._lock:
            return dict(self._db.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall())

    def unknown(self) -> list[str]:
        """Keys whose fate is unknown (written, no final reply, or a killed run)."""
        with self._lock:
            return [k for (k,) in self._db.execute(
                "SELECT key FROM messages WHERE state IN ('wire', 'unknown') ORDER BY key")]
