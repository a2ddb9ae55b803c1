"""A logging handler that mails log records, without blocking the caller.

Like `logging.handlers.SMTPHandler`, but ``emit()`` only formats the record
and puts it on a queue: a background thread gathers a burst into one
message (up to ``max_records`` records, or what arrived within
``max_seconds`` of the first) and sends it through the connector as the
config says (TLS verified, OAuth or basic auth).  Its own failures never go
back into logging: the first is written to stderr in one line, later ones
are counted (``failures``, ``lost_records``).  ``close()`` (called by
``logging.shutdown()`` at exit) sends what is queued.
"""
from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..client import send_as
from ..config import Config, load_config
from ..errors import InputError

__all__ = ["MailHandler"]

#: The subject line is cut here (RFC 5322 recommends lines of 78 characters;
#: a subject is read in a list of messages).
MAX_SUBJECT = 160


@dataclass(frozen=True)
class _Item:
    subject: str
    text: str


_STOP = object()
_FLUSH = object()


class _Fields(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


class MailHandler(logging.Handler):
    """Mails log records to ``to`` (an address or a list) as ``sender``
    (default the config's ``from_address``).

    ``config`` is a `Config` or the path of a TOML file (read with
    `load_config`, the environment included).  ``subject`` is formatted
    with the first record's attributes (``{levelname}``, ``{message}``,
    ``{name}``...); a message carrying more records says ``(+N more)``.
    ``queue_size`` bounds the records waiting; beyond it records are dropped
    and the next message says how many.  ``close_timeout`` bounds how long
    ``close()`` waits for the last message to go.
    """

    def __init__(self, config: Config | str | os.PathLike[str], to: str | Iterable[str], *,
                 sender: str | None = None, subject: str = "{levelname}: {message}",
                 max_records: int = 100, max_seconds: float = 10.0, level: int = logging.NOTSET,
                 queue_size: int = 10_000, close_timeout: float = 30.0) -> None:
        super().__init__(level)
        self.config = config if isinstance(config, Config) else load_config(config)
        self.to = [to] if isinstance(to, str) else list(to)
        if not self.to:
            raise InputError("MailHandler: 'to' names no recipient")
        self.sender = sender or self.config.from_address
        if not self.sender:
            raise InputError("MailHandler: no sender: pass sender=... or set from_address in the config")
        if max_records < 1:
            raise InputError(f"MailHandler: max_records must be at least 1, not {max_records}")
        if max_seconds < 0:
            raise InputError(f"MailHandler: max_seconds must not be negative, not {max_seconds}")
        probe = logging.makeLogRecord({"msg": "probe", "levelname": "ERROR"})
        probe.message = probe.getMessage()
        try:
            subject.format_map(_Fields(probe.__dict__))
        except (KeyError, ValueError, IndexError, AttributeError) as exc:
            raise InputError(f"MailHandler: subject {subject!r} is not a valid template of log record "
                             f"fields ({type(exc).__name__}: {exc}); e.g. '{{levelname}}: {{message}}'") from None
        self.subject = subject
        self.max_records = max_records
        self.max_seconds = max_seconds
        self.close_timeout = close_timeout
        self._queue: queue.Queue[object] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._worker_ident: int | None = None
        self._start_lock = threading.Lock()
        self._closing = False
        self._reported = False
        #: messages sent, sends that failed, records lost in failed sends,
        #: records dropped because the queue was full or the handler closed
        self.sent_messages = 0
        self.failures = 0
        self.lost_records = 0
        self.dropped = 0
        self._dropped_reported = 0
        self.addFilter(self._not_ours)

    # -- the caller's side: never blocks on the network --------------------------

    def _not_ours(self, record: logging.LogRecord) -> bool:
        # what the sending thread logs (mailexpress's own records) is never
        # mailed: no recursion, and no wait on the handler's lock from there
        # (filters run before Handler.handle takes the lock)
        return self._worker_ident is None or record.thread != self._worker_ident

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            item = _Item(self._subject_of(record), text)
        except Exception:
            self.handleError(record)
            return
        if self._closing:
            self.dropped += 1
            return
        self._start()
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def _subject_of(self, record: logging.LogRecord) -> str:
        fields = _Fields(record.__dict__)
        fields["message"] = record.getMessage()
        try:
            subject = self.subject.format_map(fields)
        except (KeyError, ValueError, IndexError, AttributeError):
            subject = f"{record.levelname}: {fields['message']}"
        subject = " ".join(subject.split())          # no CR, LF or runs of space
        subject = "".join(c for c in subject if c.isprintable())
        return subject if len(subject) <= MAX_SUBJECT else subject[:MAX_SUBJECT - 3] + "..."

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                # a daemon: it must not keep the interpreter alive; close()
                # (logging.shutdown at exit) drains it first
                t = threading.Thread(target=self._run, name="mailexpress-MailHandler", daemon=True)
                t.start()
                self._thread = t

    def flush(self) -> None:
        """Asks for what is gathered to be sent now (does not wait)."""
        if self._thread is not None:
            try:
                self._queue.put_nowait(_FLUSH)
            except queue.Full:
                pass

    def close(self) -> None:
        """Sends what is queued (waiting up to ``close_timeout`` seconds), then closes."""
        self._closing = True
        t = self._thread
        if t is not None and t.is_alive() and threading.get_ident() != self._worker_ident:
            try:
                self._queue.put(_STOP, timeout=self.close_timeout)
            except queue.Full:
                pass
            t.join(self.close_timeout)
            if t.is_alive():
                self._report(f"still sending after {self.close_timeout} s at close; "
                             f"{self._queue.qsize()} record(s) may not be mailed")
        super().close()

    # -- the sending thread ------------------------------------------------------

    def _run(self) -> None:
        self._worker_ident = threading.get_ident()
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            if first is _FLUSH:
                continue
            batch = [first]
            deadline = time.monotonic() + self.max_seconds
            while len(batch) < self.max_records:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    nxt = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if nxt is _FLUSH:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._send([b for b in batch if isinstance(b, _Item)])
        # records queued after the stop mark (none: emit drops once closing)

    def _send(self, batch: list[_Item]) -> None:
        if not batch:
            return
        subject = batch[0].subject
        if len(batch) > 1:
            subject += f" (+{len(batch) - 1} more)"
        body = "\n\n".join(item.text for item in batch) + "\n"
        dropped = self.dropped - self._dropped_reported
        if dropped:
            body = (f"[{dropped} log record(s) were dropped: the queue was full or the handler "
                    f"closed]\n\n") + body
            self._dropped_reported += dropped
        try:
            send_as(self.config, self.sender, to=self.to, subject=subject, body=body)
        except Exception as exc:   # anything: the logging caller must never see it
            self.failures += 1
            self.lost_records += len(batch)
            self._report(f"could not mail {len(batch)} log record(s): {type(exc).__name__}: {exc}")
        else:
            self.sent_messages += 1

    def _report(self, what: str) -> None:
        """One line on stderr, the first time only; never through logging."""
        if self._reported:
            return
        self._reported = True
        try:
            sys.stderr.write(f"mailexpress MailHandler: {what} (later failures are only counted: "
                             f"handler.failures)\n")
        except Exception:
            pass

    def __repr__(self) -> str:
        return (f"<MailHandler to {', '.join(self.to)} via {self.config.host}:{self.config.port} "
                f"({logging.getLevelName(self.level)})>")
