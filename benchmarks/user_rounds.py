"""Rates of the path users call against the engine alone, round by round:

    python benchmarks/user_rounds.py [messages] [rounds] [smtp-sink port] [--chunking]

Each round runs protocol_floor.c (the fewest syscalls DATA allows: the bound
for any client on one connection, compiled here with cc), bench.py's
`u_prebuilt` (Session.send_many_raw of prebuilt bytes: the engine),
`u_send_many` (mappings) and `u_template` (Template rows) one after the other
against an smtp-sink already listening on 127.0.0.1, and prints their rates,
the engine's ratio to the floor and the user paths' ratios to the engine of
the same round.

smtp-sink offers no CHUNKING, so every message waits a round trip for its
354.  With --chunking each round also runs the engine and both user paths
against nullsink.py --chunking (started here), where BDAT lets the messages
of a batch follow each other without waiting; the columns marked "bdat"."""
from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench  # noqa: E402


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 20_000
    rounds = int(args[1]) if len(args) > 1 else 4
    port = int(args[2]) if len(args) > 2 else 2525
    chunking = "--chunking" in sys.argv
    paths = [("engine", bench.u_prebuilt), ("mappings", bench.u_send_many),
             ("template", bench.u_template)]
    res: dict[str, list[float]] = {"floor": [], **{k: [] for k, _ in paths}}
    if chunking:
        res.update({f"{k} bdat": [] for k, _ in paths})
    floor = bench.build_floor(Path(tempfile.mkdtemp(prefix="mx-floor-")))
    sink = bench.start_nullsink("--chunking") if chunking else None
    try:
        for r in range(rounds):
            res["floor"].append(bench.floor_rate(floor, port, n))
            for k, fn in paths:
                res[k].append(fn(port, n))
            if sink:
                for k, fn in paths:
                    res[f"{k} bdat"].append(fn(sink[1], n))
            eng = res["engine"][-1]
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in res.items())
                  + f"; engine/floor {eng / res['floor'][-1]:.2f}, mappings/engine "
                  f"{res['mappings'][-1] / eng:.2f}, template/engine "
                  f"{res['template'][-1] / eng:.2f}", flush=True)
    finally:
        if sink:
            sink[0].kill()
            sink[0].wait()
    for k, v in res.items():
        print(f"{k}: median {statistics.median(v):,.0f}, range {min(v):,.0f}-{max(v):,.0f} msg/s")


if __name__ == "__main__":
    main()
