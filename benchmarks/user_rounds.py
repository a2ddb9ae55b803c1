"""Rates of the path users call against the engine alone, round by round:

    python benchmarks/user_rounds.py [messages] [rounds] [smtp-sink port]

Each round runs protocol_floor.c (the fewest syscalls DATA allows: the bound
for any client on one connection, compiled here with cc), bench.py's
`u_prebuilt` (Session.send_many_raw of prebuilt bytes: the engine),
`u_send_many` (mappings) and `u_template` (Template rows) one after the other
against an smtp-sink already listening on 127.0.0.1, and prints their rates,
the engine's ratio to the floor and the user paths' ratios to the engine of
the same round."""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def build_floor(work: Path) -> list[str]:
    """Compiles protocol_floor.c and writes the engine's 1 KB message for it;
    the command line that runs it, less N and PORT."""
    exe, msg = work / "protocol_floor", work / "message.eml"
    src = Path(__file__).resolve().parent / "protocol_floor.c"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    msg.write_bytes(bench.body(1024))
    return [str(exe), str(msg)]


def floor_rate(cmd: list[str], port: int, n: int) -> float:
    out = subprocess.run([cmd[0], str(n), str(port), cmd[1]], check=True,
                         capture_output=True, text=True).stdout
    return float(out)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 2525
    res: dict[str, list[float]] = {"floor": [], "engine": [], "mappings": [], "template": []}
    floor = build_floor(Path(tempfile.mkdtemp(prefix="mx-floor-")))
    for r in range(rounds):
        res["floor"].append(floor_rate(floor, port, n))
        res["engine"].append(bench.u_prebuilt(port, n))
        res["mappings"].append(bench.u_send_many(port, n))
        res["template"].append(bench.u_template(port, n))
        eng = res["engine"][-1]
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in res.items())
              + f"; engine/floor {eng / res['floor'][-1]:.2f}, mappings/engine "
              f"{res['mappings'][-1] / eng:.2f}, template/engine "
              f"{res['template'][-1] / eng:.2f}", flush=True)
    for k, v in res.items():
        print(f"{k}: median {statistics.median(v):,.0f}, range {min(v):,.0f}-{max(v):,.0f} msg/s")


if __name__ == "__main__":
    main()
