"""Kill a journaled send_many at 20 random points (SIGKILL) against the real
Postfix and run it again each time: the Maildir, counted by Message-ID, holds
every message reported sent exactly once and nothing twice; a message is
missing only when it was reported unknown.

The points are random in the run, not in wall time: a child kills itself a
random 0-30 ms after its outcomes reach a random message (so a fast machine
cannot finish the run before the kill, and the kill lands while batches are
on the wire and outcomes are being written)."""
from __future__ import annotations

import email
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from harness import ACCOUNTS

import mailexpress as mx

KILLS = 20
MESSAGES = 400

CHILD = r"""
import json, os, signal, sys, threading
import mailexpress as mx
args = json.loads(sys.argv[1])

def progress(p):
    if args["kill_at"] is not None and p.done >= args["kill_at"]:
        args["kill_at"] = None
        threading.Timer(args["kill_delay"], os.kill, (os.getpid(), signal.SIGKILL)).start()

cfg = mx.Config(**args["config"])
msgs = ({"id": f"k{i:04d}", "to": "bob@partner.example", "subject": f"kill-run {i}",
         "body": f"message {i}", "headers": {"Message-ID": f"<k{i:04d}.{args['run']}@kill.test>"}}
        for i in range(args["messages"]))
result = mx.send_many(cfg, msgs, journal=args["journal"], batch_size=args["batch_size"],
                      limits=args["limits"], progress=progress)
print(json.dumps({"sent": len(result.sent), "unknown": [i for i, _e in result.unknown],
                  "failed": [(i, str(e)) for i, e in result.failed if e.delivered is not None]}))
"""


def delivered_ids(postfix) -> Counter[str]:
    counts: Counter[str] = Counter()
    for m in postfix.delivered():
        msg = email.message_from_bytes(m.data)
        mid = msg["Message-ID"] or ""
        if "@kill.test" in mid:
            counts[mid.strip("<>").split(".")[0]] += 1
    return counts


def test_killed_runs_lose_nothing_and_send_nothing_twice(postfix, tmp_path):
    started = time.monotonic()
    password, address = ACCOUNTS["svc-self"]
    config = {"host": "127.0.0.1", "port": postfix.ports["submission"], "username": "svc-self",
              "password": password, "from_address": address, "ca_file": postfix.ca_file}
    journal = str(tmp_path / "run.sqlite")
    env = dict(os.environ, PYTHONPATH=str(Path(mx.__file__).parents[1]))
    rng = random.Random(13)

    def run(n: int, kill_at: int | None) -> dict | None:
        # odd runs paced one message at a time, even runs in pipelined batches
        args = {"config": config, "journal": journal, "messages": MESSAGES, "run": n,
                "batch_size": 20, "limits": {"messages_per_minute": 6000} if n % 2 else None,
                "kill_at": kill_at, "kill_delay": rng.uniform(0, 0.03)}
        proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=60)
        if kill_at is None:
            assert proc.returncode == 0, err.decode()
            return json.loads(out)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()
        kills.append(proc.returncode == -signal.SIGKILL)
        return None

    kills: list[bool] = []
    for n in range(KILLS):
        run(n, rng.randint(1, MESSAGES - 100))  # killed after that many outcomes (+0-30 ms)
    assert sum(kills) >= KILLS // 2, kills        # most runs were killed, not finished
    with mx.journal.Journal(journal) as j:
        before = j.counts()
    assert 0 < before.get("sent", 0) < MESSAGES, before       # the kills landed mid-run
    final = run(KILLS, None)
    assert final is not None and final["failed"] == [], final

    with mx.journal.Journal(journal) as j:
        unknown = set(j.unknown())
        counts = j.counts()
    expected = MESSAGES - len(unknown)
    deadline = time.monotonic() + 20
    while sum(1 for k in delivered_ids(postfix) if k not in unknown) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)                                             # anything late would show as a duplicate
    got = delivered_ids(postfix)
    lost = [f"k{i:04d}" for i in range(MESSAGES) if got[f"k{i:04d}"] == 0 and f"k{i:04d}" not in unknown]
    twice = {k: c for k, c in got.items() if c > 1}
    assert lost == [] and twice == {}, (lost, twice, counts)
    assert counts.get("sent", 0) == expected
    assert final["sent"] == expected and len(final["unknown"]) == len(unknown)
    print(f"{KILLS} kills ({before} before the last run): {MESSAGES} messages, {len(unknown)} unknown, 0 lost, 0 twice, "
          f"{time.monotonic() - started:.1f} s")
    assert time.monotonic() - started < 60
