"""The journal writer's work per message, split by who holds the GIL (issue 13).

    python benchmarks/journal_gil.py [messages]

100,000 plain sent records (the shape a bulk run hands the journal) written
by `Journal._finish`, one thread, in batches of 100: one batch a transaction
and 50 a transaction (the writer's two extremes).  Reported per message:

- GIL held: the writer's CPU outside SQLite's calls (preparing the values)
  plus binding them (the same parameters bound to a statement whose step does
  nothing: pysqlite binds with the GIL held, then releases it for the step);
- SQLite: the rest of the time in SQLite's calls (the GIL released);
- mark_wire: the wall time of recording a batch on the wire (the wire thread's part).

The GIL-held part is what the run's other threads (the builder, the wire
thread) cannot use; the rest runs beside them when a CPU is free.
"""
from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mailexpress.journal import Journal  # noqa: E402
from mailexpress.reply import Reply, Stage  # noqa: E402

OK = Reply(250, "2.0.0", ("2.0.0 Ok",), Stage.END_OF_DATA)


class Timed:
    """The journal's connection, its calls timed (thread CPU) and their parameters kept."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.cpu, self.params = db, 0.0, []  # type: tuple[sqlite3.Connection, float, list[Any]]

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        t = time.thread_time()
        try:
            return self.db.execute(sql, params)
        finally:
            self.cpu += time.thread_time() - t
            if params:
                self.params.append(params)


def one(n: int, per_tx: int) -> dict[str, float]:
    rows = [(str(i), ("bench@corp.example", "sink@partner.example",
                      f"<1796094117775.76b0f6e6529c.20621.{i}@corp.example>", OK, None, 8), 1)
            for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        j = Journal(os.path.join(tmp, "j.sqlite"))
        j.start_run()
        t = time.perf_counter()
        ids = [j.mark_wire([r[0] for r in rows[s:s + 100]], [1] * 100) for s in range(0, n, 100)]
        mark = time.perf_counter() - t
        timed = Timed(j._db)
        j._db = timed  # type: ignore[assignment]
        checkpoint = j._checkpoint

        def timed_checkpoint() -> None:     # SQLite's work too (its own connection)
            c = time.thread_time()
            checkpoint()
            timed.cpu += time.thread_time() - c
        j._checkpoint = timed_checkpoint    # type: ignore[method-assign]
        c0 = time.thread_time()
        for g in range(0, len(ids), per_tx):
            j._finish([(ids[i], rows[i * 100:(i + 1) * 100], j.run)
                       for i in range(g, min(g + per_tx, len(ids)))])
        total = time.thread_time() - c0
        null = sqlite3.connect(":memory:")
        c0 = time.thread_time()
        for params in timed.params:
            null.execute(f"SELECT ?{len(params)} WHERE 0", params)
        bind = time.thread_time() - c0
        j._db = timed.db
        assert j.counts() == {"sent": n}
        j.close()
    prep = total - timed.cpu
    us = 1e6 / n
    return {"gil": (prep + bind) * us, "prep": prep * us, "bind": bind * us,
            "sqlite": (timed.cpu - bind) * us, "writer": total * us, "mark_wire": mark * us}


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    for per_tx in (1, 50):
        runs = [one(n, per_tx) for _ in range(3)]
        m = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{per_tx:2d} batches a transaction: GIL held {m['gil']:.2f} us/msg (values {m['prep']:.2f} + "
              f"binding {m['bind']:.2f}); SQLite {m['sqlite']:.2f}; writer CPU {m['writer']:.2f}; "
              f"mark_wire {m['mark_wire']:.2f} us/msg (median of 3)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
