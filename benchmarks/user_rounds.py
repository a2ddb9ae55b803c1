"""Rates of the path users call against the engine alone, round by round:

    python benchmarks/user_rounds.py [messages] [rounds] [smtp-sink port]

Each round runs bench.py's `u_prebuilt` (Session.send_many_raw of prebuilt
bytes), `u_send_many` (mappings) and `u_template` (Template rows) one after
the other against an smtp-sink already listening on 127.0.0.1, and prints
their rates and the user paths' ratios to the engine of the same round."""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 2525
    res: dict[str, list[float]] = {"engine": [], "mappings": [], "template": []}
    for r in range(rounds):
        res["engine"].append(bench.u_prebuilt(port, n))
        res["mappings"].append(bench.u_send_many(port, n))
        res["template"].append(bench.u_template(port, n))
        eng = res["engine"][-1]
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in res.items())
              + f"; mappings/engine {res['mappings'][-1] / eng:.2f}, template/engine "
              f"{res['template'][-1] / eng:.2f}", flush=True)
    for k, v in res.items():
        print(f"{k}: median {statistics.median(v):,.0f}, range {min(v):,.0f}-{max(v):,.0f} msg/s")


if __name__ == "__main__":
    main()
