"""Where the user path's time goes, per thread: `mx.send_many` (mappings and
Template rows) against the engine alone (`Session.send_many_raw` of prebuilt
bytes), 1 KB text to smtp-sink on one connection, in one process; and
"prebuilt": `mx.send_many` with its building step replaced by a lookup of
messages built before the timing (each with its own Message-ID), which is
what the path costs apart from building.

    python benchmarks/thread_cpu.py                  # 10,000 messages, 5 rounds
    python benchmarks/thread_cpu.py -n 20000 --rounds 9 --json out.json

For each path and round: messages per second; CPU time per message of the
main thread (reading the input, building, bookkeeping) and of the wire
thread (`bulk._Run._wire`: the engine, its outcomes, `send_prepared`), user
and system apart (getrusage RUSAGE_THREAD); smtp-sink's CPU per message; and
the rate over the engine's in the same round.  The paths alternate within a
round (the machine's noise hits each alike); medians and ranges are printed.
Needs smtp-sink (Postfix; bench.py installs it).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

import mailexpress as mx  # noqa: E402
from mailexpress import bulk, mime  # noqa: E402
from mailexpress.compose import Prepared  # noqa: E402

WIRE: list[float] = [0.0, 0.0]      # the wire thread's user and system seconds


def _ru() -> tuple[float, float]:
    u = resource.getrusage(resource.RUSAGE_THREAD)
    return u.ru_utime, u.ru_stime


def _timed_wire() -> None:
    wire = bulk._Run._wire

    def timed(self: Any, *args: Any, **kw: Any) -> Any:
        t0 = _ru()
        try:
            return wire(self, *args, **kw)
        finally:
            t1 = _ru()
            WIRE[0] += t1[0] - t0[0]
            WIRE[1] += t1[1] - t0[1]
    bulk._Run._wire = timed     # type: ignore[method-assign]


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(kind: str, port: int, sink: int, n: int) -> dict[str, float]:
    cfg = bench.sink_config(port)
    WIRE[0] = WIRE[1] = 0.0
    s0 = _cpu(sink)
    if kind == "engine":
        msg = bench.body(1024)
        with mx.connect(cfg) as s:
            t0, m0 = time.perf_counter(), _ru()
            out = s.send_many_raw([(bench.FROM, [bench.TO], msg)] * n)
            dt, m1 = time.perf_counter() - t0, _ru()
        assert all(isinstance(o, tuple) for o in out)
        main, wire = (0.0, 0.0), (m1[0] - m0[0], m1[1] - m0[1])
    else:
        prepare = bulk._Run._prepare
        if kind == "prebuilt":
            msg = bench.body(1024)
            built = [Prepared(bench.FROM, [f"user{i}@bench.example"], msg,
                              mime.make_message_id("bench.example")) for i in range(n)]
            bulk._Run._prepare = lambda self, item, caps: item   # type: ignore[method-assign,assignment,misc]
        t0, m0 = time.perf_counter(), _ru()
        try:
            if kind == "mappings":
                res = mx.send_many(cfg, bench.mappings(n))
            elif kind == "prebuilt":
                res = mx.send_many(cfg, built)  # type: ignore[arg-type]
            else:
                res = mx.send_many(cfg, template=bench.bench_template(), rows=bench.rows_of(n))
            dt, m1 = time.perf_counter() - t0, _ru()
        finally:
            bulk._Run._prepare = prepare    # type: ignore[method-assign]
        assert len(res) == n and not res.failed, str(res)
        main, wire = (m1[0] - m0[0], m1[1] - m0[1]), (WIRE[0], WIRE[1])
    us = 1e6 / n
    return {"rate": n / dt, "main_user": main[0] * us, "main_sys": main[1] * us,
            "wire_user": wire[0] * us, "wire_sys": wire[1] * us, "sink": (_cpu(sink) - s0) * us}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    sink_bin = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = subprocess.Popen([sink_bin, "-u", "nobody", f"127.0.0.1:{port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kinds = ("engine", "mappings", "template", "prebuilt")
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    try:
        bench.wait_port(port, sink)
        _timed_wire()
        one("mappings", port, sink.pid, 500)     # warm: imports, first allocations
        for _ in range(args.rounds):
            for k in kinds:
                rows[k].append(one(k, port, sink.pid, args.n))
    finally:
        sink.terminate()
        sink.wait(10)
    print(f"{args.n:,} messages a round, {args.rounds} rounds; CPU µs a message (user/system)")
    for k in kinds:
        r = rows[k]
        med = {f: statistics.median(x[f] for x in r) for f in r[0]}
        rates = [x["rate"] for x in r]
        line = (f"{k:9s} {med['rate']:8,.0f} msg/s ({min(rates):,.0f}-{max(rates):,.0f})  "
                f"main {med['main_user']:5.1f}/{med['main_sys']:4.1f}  "
                f"wire {med['wire_user']:5.1f}/{med['wire_sys']:4.1f}  sink {med['sink']:5.1f}")
        if k != "engine":
            ratios = [a["rate"] / b["rate"] for a, b in zip(r, rows["engine"])]
            line += f"  vs engine {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
