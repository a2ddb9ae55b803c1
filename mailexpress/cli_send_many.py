"""``mailexpress send-many``: a bulk run from a CSV or JSONL file.

    mailexpress send-many --config cfg.toml --from noreply@corp.example messages.csv \\
        [--journal run.sqlite] [--limits exchange_online] [--connections N] [--json]

The CSV columns (header row) and the JSONL fields are `send_as`'s keywords:
``to``, ``cc``, ``bcc`` (several addresses separated by ``,`` or ``;`` in CSV,
a list or a string in JSONL), ``subject``, ``body``, ``html``, ``reply_to``,
``sender``, ``id`` (the message's key in the journal: unique, a line
repeating an earlier line's id is reported and not sent) and ``attachments``
(file paths, separated by ``;`` in CSV).  The file is read as it is sent.

Exit codes as ``send``: 0 every message sent to every recipient, 1 something
refused or not sent, 2 bad input, config or connection, 130 interrupted
(Ctrl-C; the outcomes so far are printed, and a journal makes a rerun
continue).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from .bulk import send_many
from .config import Config
from .errors import DuplicateMessage, Error
from .results import BulkResult, Progress

__all__ = ["register"]

COLUMNS = ("to", "cc", "bcc", "subject", "body", "html", "reply_to", "sender", "id", "attachments")
_LISTS = ("to", "cc", "bcc")


class InputFileError(Exception):
    """The messages file cannot be read as messages (names the line)."""


def _split(value: str, seps: str) -> list[str]:
    for sep in seps[1:]:
        value = value.replace(sep, seps[0])
    return [v.strip() for v in value.split(seps[0]) if v.strip()]


def _message(row: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise InputFileError(f"{where}: unknown field(s) {sorted(unknown)}; the fields are "
                             f"{', '.join(COLUMNS)}")
    out: dict[str, Any] = {}
    for key, value in row.items():
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, str) and key in _LISTS:
            value = _split(value, ",;")
        elif isinstance(value, str) and key == "attachments":
            value = _split(value, ";")
        out[key] = value
    return out


def read_messages(path: str, lines: array[int] | None = None) -> Iterator[dict[str, Any]]:
    """The messages of a .csv or .jsonl file, one at a time (``lines``, when
    given, gets the line number of each)."""
    if path.endswith(".jsonl") or path.endswith(".ndjson"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InputFileError(f"{path} line {n}: not JSON ({exc})") from None
                if not isinstance(row, dict):
                    raise InputFileError(f"{path} line {n}: expected an object of send_as fields")
                message = _message(row, f"{path} line {n}")
                if lines is not None:
                    lines.append(n)
                yield message
        return
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        unknown = [h for h in header if h not in COLUMNS]
        if unknown:
            raise InputFileError(f"{path}: unknown column(s) {unknown}; the columns are "
                                 f"{', '.join(COLUMNS)}")
        for row in reader:
            message = _message(dict(row), f"{path} line {reader.line_num}")
            if lines is not None:
                lines.append(reader.line_num)
            yield message


def _count(path: str) -> int | None:
    try:
        return sum(1 for _ in read_messages(path))
    except (OSError, InputFileError, UnicodeDecodeError, csv.Error):
        return None


class _Bar:
    """A one-line progress bar on a terminal: done/total, rate, ETA."""

    def __init__(self, stream: TextIO, total: int | None) -> None:
        self.stream, self.total = stream, total
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self.last < 0.2 and p.done != self.total:
            return
        self.last = now
        eta = ""
        if self.total and p.rate > 0:
            left = (self.total - p.done) / p.rate
            eta = f" ETA {int(left // 60)}:{int(left % 60):02d}"
        of = f"/{self.total}" if self.total is not None else ""
        width = 30
        bar = ""
        if self.total:
            filled = int(width * p.done / self.total)
            bar = "[" + "#" * filled + "." * (width - filled) + "] "
        self.stream.write(f"\r{bar}{p.done}{of} sent {p.sent} failed {p.failed} "
                          f"{p.rate:.1f} msg/s{eta}  ")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


def _duplicates(result: BulkResult, lines: array[int]) -> list[dict[str, Any]]:
    """The messages not sent because an earlier one had their id, with lines."""
    out = []
    for index, err in result.failed:
        if isinstance(err, DuplicateMessage):
            out.append({"index": index, "line": lines[index] if index < len(lines) else None,
                        "id": err.key, "first_index": err.first,
                        "first_line": lines[err.first] if 0 <= err.first < len(lines) else None})
    return out


def _report(result: BulkResult, as_json: bool, lines: array[int]) -> int:
    dups = _duplicates(result, lines)
    if as_json:
        doc = result.to_dict()
        doc["duplicates"] = dups
        print(json.dumps(doc, indent=2))
    else:
        print(result)
        if dups:
            print(f"{len(dups)} message(s) not sent: an earlier line has the same id (give every "
                  "message a unique id): " + ", ".join(
                      f"line {d['line']} (id {d['id']!r}, as line {d['first_line']})" for d in dups[:20])
                  + (", ..." if len(dups) > 20 else ""))
        unknown = result.unknown
        if unknown:
            print(f"{len(unknown)} message(s) with an unknown outcome (may have been delivered): "
                  + ", ".join(f"#{i}" for i, _e in unknown[:20]))
    return 0 if result.ok else 1


def _cmd_send_many(args: argparse.Namespace,
                   config_from_args: Callable[[argparse.Namespace, str], Config | None]) -> int:
    cfg = config_from_args(args, "send-many")
    if cfg is None:
        return 2
    if not os.path.isfile(args.messages):
        print(f"mailexpress send-many: {args.messages}: no such file", file=sys.stderr)
        return 2
    bar = None
    if not args.json and sys.stderr.isatty():
        bar = _Bar(sys.stderr, _count(args.messages))
    kwargs: dict[str, Any] = {}
    if args.limits is not None:
        kwargs["limits"] = args.limits
    if args.connections is not None:
        kwargs["connections"] = args.connections
    lines: array[int] = array("I")      # the line of each message, 4 bytes each
    try:
        result = send_many(cfg, read_messages(args.messages, lines), sender=args.sender,
                           progress=bar, journal=args.journal, **kwargs)
    except KeyboardInterrupt as exc:
        if bar is not None:
            bar.close()
        partial = getattr(exc, "result", None)
        print("mailexpress send-many: interrupted", file=sys.stderr)
        if partial is not None:
            _report(partial, args.json, lines)
        return 130
    except (Error, InputFileError, OSError) as exc:
        if bar is not None:
            bar.close()
        print(f"mailexpress send-many: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        partial = getattr(exc, "result", None)
        if partial is not None:
            _report(partial, args.json, lines)
        return 2
    if bar is not None:
        bar.close()
    return _report(result, args.json, lines)


def register(sub: Any, add_config_flags: Callable[[argparse.ArgumentParser], None],
             config_from_args: Callable[[argparse.Namespace, str], Config | None]) -> None:
    """Adds the send-many command to the CLI's subcommands."""
    p = sub.add_parser("send-many", help="send the messages of a CSV or JSONL file (bulk)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_flags(p)
    p.add_argument("messages", help="a .csv (header row) or .jsonl file of send_as fields")
    p.add_argument("--from", dest="sender", help="From address (default: from_address)")
    p.add_argument("--journal", help="SQLite journal: a rerun sends only what is not yet sent")
    p.add_argument("--limits", help="a limits preset, e.g. exchange_online (default: the config's)")
    p.add_argument("--connections", type=int, help="parallel sessions (at most the limits' connections)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=lambda args: _cmd_send_many(args, config_from_args))
