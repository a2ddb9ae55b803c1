"""Main-thread CPU per message of the path users call, against the engine alone.

    python benchmarks/user_cpu.py [--rounds 5] [--messages 10000] [--tree DIR ...]

Starts smtp-sink on loopback and, for each round and each code tree given
(default: this checkout), runs in a fresh process each of:

- ``engine``: ``Session.send_many_raw`` of prebuilt 1 KB messages (the engine alone);
- ``mappings``: ``mx.send_many(cfg, generator of mappings)`` (bench.py's ``mappings``);
- ``template``: ``mx.send_many(cfg, template=t, rows=generator)`` (bench.py's ``rows_of``);
- ``build-mappings`` / ``build-template``: the same messages prepared without
  sending (``compose.prepare_item`` / ``Template.prepare`` in a loop).

Each prints messages per second and the main thread's CPU time per message
(``time.thread_time``; the wire thread's is not in it).  Rates are given as
ratios to the engine alone measured in the same round: the machine's speed
moves between rounds (docs/performance.md), so only same-round ratios and the
spread over rounds mean something.  Trees are alternated within a round, so a
before/after comparison sees the same noise.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[4])
import bench
import mailexpress as mx
case, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = bench.sink_config(port)
out = {"file": mx.__file__}
if case == "engine":
    msg = bench.body(1024)
    with mx.connect(cfg) as s:
        s.send_many_raw([(bench.FROM, [bench.TO], msg)] * 200)
        c0, t0 = time.thread_time(), time.perf_counter()
        res = s.send_many_raw([(bench.FROM, [bench.TO], msg)] * n)
        dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
    assert all(isinstance(o, tuple) for o in res)
elif case in ("mappings", "template"):
    t = bench.bench_template()
    mx.send_many(cfg, bench.mappings(200))                       # warm: imports, first allocations
    mx.send_many(cfg, template=t, rows=bench.rows_of(200))
    c0, t0 = time.thread_time(), time.perf_counter()
    if case == "mappings":
        res = mx.send_many(cfg, bench.mappings(n))
    else:
        res = mx.send_many(cfg, template=t, rows=bench.rows_of(n))
    dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
    assert len(res) == n and not res.failed, str(res)
else:
    from mailexpress.compose import prepare_item
    t = bench.bench_template()
    items, rows = list(bench.mappings(n)), list(bench.rows_of(n))
    c0, t0 = time.thread_time(), time.perf_counter()
    if case == "build-mappings":
        for it in items:
            prepare_item(it, sender=bench.FROM, reply_to=None, eight_bit=True, utf8=False)
    else:
        for r in rows:
            t.prepare(r, sender=bench.FROM, reply_to=None, eight_bit=True, utf8=False)
    dt, cpu = time.perf_counter() - t0, time.thread_time() - c0
out.update(rate=n / dt, cpu_us=cpu / n * 1e6)
print(json.dumps(out))
"""

CASES = ("engine", "mappings", "template", "build-mappings", "build-template")


def run(tree: str, case: str, port: int, n: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=tree)
    got = subprocess.run([sys.executable, "-c", CHILD, case, str(port), str(n), str(HERE)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tree)
    if got.returncode:
        raise SystemExit(f"{case} in {tree} failed:\n{got.stderr}")
    out = json.loads(got.stdout.strip().splitlines()[-1])
    assert out["file"].startswith(str(Path(tree).resolve())), (out["file"], tree)
    return out


def main() -> int:
    import bench
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--tree", action="append", help="a checkout to import mailexpress from")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    trees = args.tree or [str(HERE.parent)]
    port = bench.free_port()
    sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "1024"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got: dict[str, dict[str, list[dict[str, float]]]] = {t: {c: [] for c in CASES} for t in trees}
    try:
        bench.wait_port(port, sink)
        for r in range(args.rounds):
            for tree in trees:
                for case in CASES:
                    got[tree][case].append(run(tree, case, port, args.messages))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        sink.terminate()
        sink.wait(10)
    print(f"{args.messages:,} messages a run, {args.rounds} rounds; median (min-max) over rounds")
    for tree in trees:
        print(f"\n{tree}")
        print(f"  {'case':<16} {'main-thread CPU us/msg':>26} {'msg/s':>22} {'vs engine, same round':>26}")
        for case in CASES:
            runs = got[tree][case]
            cpu = [x["cpu_us"] for x in runs]
            rate = [x["rate"] for x in runs]
            ratio = [x["rate"] / e["rate"] for x, e in zip(runs, got[tree]["engine"])]
            print(f"  {case:<16} {statistics.median(cpu):8.2f} ({min(cpu):5.2f}-{max(cpu):5.2f})"
                  f"      {statistics.median(rate):8.0f} ({min(rate):.0f}-{max(rate):.0f})"
                  f"  {statistics.median(ratio):6.2f} ({min(ratio):.2f}-{max(ratio):.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(got, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
