"""Messages per second on one connection to Postfix's smtp-sink on loopback:
mailexpress vs smtplib vs Postfix's own C client smtp-source, measured in the
same run on the same machine.  A baseline for the speed work (issue 6); it
needs postfix installed (tests/interop/install-servers.sh does it).

    python benchmarks/bench_sink.py [--messages 5000] [--size 1024]
"""
from __future__ import annotations

import argparse
import shutil
import smtplib
import socket
import subprocess
import sys
import time

import mailexpress as mx


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def body(size: int) -> bytes:
    head = b"From: a@bench.example\r\nTo: b@bench.example\r\nSubject: bench\r\n\r\n"
    line = b"x" * 70 + b"\r\n"
    out = head
    while len(out) < size:
        out += line
    return out[:size - 2] + b"\r\n"


def run_mailexpress(port: int, n: int, msg: bytes) -> float:
    s = mx.Session("127.0.0.1", port, security="none", ehlo_name="bench.example", transcript=False)
    s.connect()
    s.ehlo()
    t0 = time.perf_counter()
    for _ in range(n):
        s.send_raw("a@bench.example", ["b@bench.example"], msg)
    dt = time.perf_counter() - t0
    s.quit()
    return n / dt


def run_smtplib(port: int, n: int, msg: bytes) -> float:
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example")
    s.ehlo()
    t0 = time.perf_counter()
    for _ in range(n):
        s.sendmail("a@bench.example", ["b@bench.example"], msg)
    dt = time.perf_counter() - t0
    s.quit()
    return n / dt


def run_smtp_source(port: int, n: int, size: int, sessions: int) -> float:
    """-d: all messages over the same connection, like the others."""
    t0 = time.perf_counter()
    subprocess.run(["smtp-source", "-d", "-s", str(sessions), "-m", str(n), "-l", str(size), "-f", "a@bench.example",
                    "-t", "b@bench.example", f"127.0.0.1:{port}"], check=True, capture_output=True)
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for tool in ("smtp-sink", "smtp-source"):
        if not shutil.which(tool):
            print(f"{tool} not found: install postfix (tests/interop/install-servers.sh)", file=sys.stderr)
            return 2
    port = free_port()
    sink = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        msg = body(args.size)
        results: dict[str, list[float]] = {"smtplib": [], "smtp-source -s 1": [], "mailexpress": []}
        for _ in range(args.rounds):   # interleaved rounds: machine noise hits every client alike
            results["smtplib"].append(run_smtplib(port, args.messages, msg))
            results["smtp-source -s 1"].append(run_smtp_source(port, args.messages, args.size, 1))
            results["mailexpress"].append(run_mailexpress(port, args.messages, msg))
    finally:
        sink.terminate()
        sink.wait(5)
    base = max(results["smtplib"])
    print(f"one connection to smtp-sink on loopback, {args.messages} messages of {args.size} bytes, "
          f"best of {args.rounds} interleaved rounds")
    print(f"{'client':<20}{'msg/s':>10}{'vs smtplib':>12}")
    for name, values in results.items():
        best = max(values)
        print(f"{name:<20}{best:>10.0f}{best / base:>11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
