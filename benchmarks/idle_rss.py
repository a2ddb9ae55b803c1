"""Resident memory of an idle session: N sessions connected and logged in
(EHLO, AUTH LOGIN, nothing more), RSS before and after opening them, divided
by N.  Measured twice: in a fresh process, and after a churn of sessions that
sent and closed on 4 threads (the allocator then holds freed buffers: what a
long-running service sees).  smtplib's idle connection, opened the same way
in the same run, is the baseline of the ratio.

    python benchmarks/idle_rss.py [--sessions 200] [--churn 400]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import smtplib
import subprocess
import sys
import threading

import mailexpress as mx

# the emulator runs in a child process: this process's RSS is the clients' alone
SERVER = r"""
import json, sys
from mailexpress.testing import ConnectorEmulator, User
class Discard(list):
    def append(self, item):
        pass
em = ConnectorEmulator(users=[User("svc", "pw", "svc@corp.example", rights="any")], security="none").start()
em.messages = Discard()
print(json.dumps({"port": em.port}), flush=True)
sys.stdin.read()
"""

PAGE = os.sysconf("SC_PAGE_SIZE")
BODY = b"Subject: idle rss\r\n\r\n" + b"line\r\n" * 20


def rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE // 1024


def per_session(open_one, close_one, n: int) -> float:     # type: ignore[no-untyped-def]
    """KiB of RSS per idle session, n open at once."""
    gc.collect()
    before = rss_kib()
    held = [open_one() for _ in range(n)]
    gc.collect()
    grew = rss_kib() - before
    for h in held:
        close_one(h)
    del held
    gc.collect()
    return grew / n


def churn(cfg: mx.Config, n: int, threads: int = 4) -> None:
    def work(count: int) -> None:
        for _ in range(count):
            with mx.connect(cfg) as s:
                s.send_raw("svc@corp.example", ["b@partner.example"], BODY)
    ts = [threading.Thread(target=work, args=(n // threads,)) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--churn", type=int, default=400)
    args = ap.parse_args()
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        port = json.loads(server.stdout.readline())["port"]
        cfg = mx.Config(host="127.0.0.1", port=port, security="none", username="svc", password="pw",
                        allow_insecure_auth=True, timeouts={"connect": 5, "banner": 10, "ehlo": 10,
                                                            "command": 10, "quit": 5})

        def open_smtplib() -> smtplib.SMTP:
            c = smtplib.SMTP("127.0.0.1", port, timeout=10)
            c.ehlo("client.example")
            c.login("svc", "pw")
            return c
        # one of each first: imports, OpenSSL's tables, first allocations
        # (smtplib first: the memory mailexpress's sessions free would be
        # reused by its objects and hide what they cost)
        per_session(open_smtplib, lambda c: c.close(), 1)
        per_session(lambda: mx.connect(cfg), lambda s: s.close(), 1)
        base = per_session(open_smtplib, lambda c: c.close(), args.sessions)
        fresh = per_session(lambda: mx.connect(cfg), lambda s: s.close(), args.sessions)
        start = rss_kib()
        churn(cfg, args.churn)
        gc.collect()
        churned = rss_kib() - start
        warm = per_session(lambda: mx.connect(cfg), lambda s: s.close(), args.sessions)
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(10)
    print(f"idle sessions: {args.sessions}; churn: {args.churn} sessions on 4 threads")
    print(f"RSS per idle Session, fresh process: {fresh:.1f} KiB ({fresh / max(base, 0.1):.2f}x smtplib's "
          f"{base:.1f} KiB)")
    print(f"RSS after the churn: +{churned} KiB")
    print(f"RSS per idle Session after the churn: {warm:.1f} KiB ({warm / max(base, 0.1):.2f}x smtplib's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
