"""The speed benchmark: one command, one table, one chart.

    python benchmarks/bench.py                 # installs what it needs, ~5 minutes
    python benchmarks/bench.py --quick         # fewer messages and rounds, ~1 minute
    python benchmarks/bench.py --chart docs/performance.png --json results.json

Everything is measured in the same run on the same machine, on loopback:

- messages/s on one connection and on 4 (threads; aiosmtplib: 4 tasks;
  smtp-source: -s 4), 1 KB and 100 KB messages, to Postfix's smtp-sink:
  mailexpress (Session.send_many), smtplib, aiosmtplib and Postfix's own C
  client smtp-source; plain and over TLS (stunnel4 in front of the sink;
  smtp-source has no TLS); and to the real Postfix of the interop suite
  (STARTTLS + AUTH, delivery to a Maildir);
- one 50 MB message: seconds and peak RSS above the caller's own buffer,
  mailexpress vs smtplib (each in a child process of its own);
- asyncio: mailexpress.aio (an `await send_as` per message over a pool of
  sessions; `await send_many`) against aiosmtplib, 1 KB, 1 and 4 connections;
- test_connector's wall time against the connector emulator, next to one
  send_as.

Every row is the median of --rounds interleaved rounds (machine noise hits
every client alike).  Ratios are against smtplib and smtp-source measured in
the same round set.  Needs root for apt-get (postfix, stunnel4) unless they
are installed; pip installs aiosmtplib, matplotlib and trustme.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import shutil
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FROM, TO = "a@bench.example", "b@bench.example"


# -- set-up ------------------------------------------------------------------------

def ensure_tools(install: bool) -> None:
    need_apt = [pkg for tool, pkg in (("smtp-sink", "postfix"), ("stunnel4", "stunnel4"))
                if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()
                and not Path(f"/usr/bin/{tool}").exists()]
    need_pip = [mod for mod in ("aiosmtplib", "matplotlib", "trustme")
                if importlib.util.find_spec(mod) is None]
    if not install and (need_apt or need_pip):
        sys.exit(f"missing: {need_apt + need_pip} (run without --no-install)")
    if need_apt:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["sh", "-c", "echo 'postfix postfix/main_mailer_type select No configuration'"
                        " | debconf-set-selections"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *need_apt], check=True, env=env,
                        stdout=subprocess.DEVNULL)
    if need_pip:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *need_pip], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"server on {port} exited with {proc.returncode}") from None
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def body(size: int) -> bytes:
    head = f"From: {FROM}\r\nTo: {TO}\r\nSubject: bench\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    out = bytearray(head)
    while len(out) < size:
        out += line
    return bytes(out[:size - 2]) + b"\r\n"


class Servers:
    """smtp-sink on a plain port, stunnel4 (implicit TLS) in front of it."""

    def __init__(self) -> None:
        import trustme
        self.dir = Path(tempfile.mkdtemp(prefix="mx-bench-"))
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        self.ca_file = str(self.dir / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_file)
        pem = self.dir / "server.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
        self.plain, self.tls = free_port(), free_port()
        sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        self.sink = subprocess.Popen([sink, "-u", "nobody", f"127.0.0.1:{self.plain}", "1024"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        conf = self.dir / "stunnel.conf"
        conf.write_text(f"foreground = yes\npid =\ndebug = 3\noutput = {self.dir}/stunnel.log\n"
                        f"[smtps]\naccept = 127.0.0.1:{self.tls}\nconnect = 127.0.0.1:{self.plain}\n"
                        f"cert = {pem}\n")
        stunnel = shutil.which("stunnel4") or "/usr/bin/stunnel4"
        self.stunnel = subprocess.Popen([stunnel, str(conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_port(self.plain, self.sink)
        wait_port(self.tls, self.stunnel)

    def client_ctx(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def stop(self) -> None:
        for p in (self.stunnel, self.sink):
            p.terminate()
            p.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- clients: each returns messages per second ------------------------------------

def split(n: int, conns: int) -> list[int]:
    return [n // conns + (1 if i < n % conns else 0) for i in range(conns)]


def in_threads(conns: int, n: int, work: Callable[[int], None]) -> float:
    counts = split(n, conns)
    errors: list[BaseException] = []
    ready = threading.Barrier(conns + 1)

    def run(k: int) -> None:
        try:
            ready.wait()
            work(counts[k])
        except BaseException as e:       # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(conns)]
    for t in threads:
        t.start()
    ready.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return n / dt


def c_mailexpress(srv: Servers, port: int, tls: bool, n: int, msg: bytes, conns: int) -> float:
    import mailexpress as mx
    ctx = mx._core.tls_context(ca_file=srv.ca_file) if tls else None

    def work(count: int) -> None:
        s = mx.Session("127.0.0.1", port, security="ssl" if tls else "none", ca_file=srv.ca_file,
                       ehlo_name="bench.example", transcript=False, tls_context=ctx)
        s.connect()
        s.ehlo()
        out = s.send_many_raw([(FROM, [TO], msg)] * count)
        s.quit()
        bad = [o for o in out if not isinstance(o, tuple)]
        if bad:
            raise bad[0]
    return in_threads(conns, n, work)


def c_smtplib(srv: Servers, port: int, tls: bool, n: int, msg: bytes, conns: int) -> float:
    ctx = srv.client_ctx()

    def work(count: int) -> None:
        s = (smtplib.SMTP_SSL("127.0.0.1", port, local_hostname="bench.example", context=ctx) if tls
             else smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example"))
        s.ehlo()
        for _ in range(count):
            s.sendmail(FROM, [TO], msg)
        s.quit()
    return in_threads(conns, n, work)


def c_aiosmtplib(srv: Servers, port: int, tls: bool, n: int, msg: bytes, conns: int) -> float:
    import aiosmtplib
    ctx = srv.client_ctx()

    async def one(count: int) -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, use_tls=tls, tls_context=ctx,
                                 start_tls=False, local_hostname="bench.example")
        await client.connect()
        for _ in range(count):
            await client.sendmail(FROM, [TO], msg)
        await client.quit()

    async def run() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(c) for c in split(n, conns)))
        return n / (time.perf_counter() - t0)
    return asyncio.run(run())


def c_smtp_source(srv: Servers, port: int, tls: bool, n: int, msg: bytes, conns: int) -> float:
    assert not tls
    tool = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    t0 = time.perf_counter()
    subprocess.run([tool, "-d", "-s", str(conns), "-m", str(n), "-l", str(len(msg)), "-f", FROM,
                    "-t", TO, f"127.0.0.1:{port}"], check=True, capture_output=True)
    return n / (time.perf_counter() - t0)


def _aio_config(srv: Servers, port: int, tls: bool) -> Any:
    import mailexpress as mx
    return mx.Config(host="127.0.0.1", port=port, security="ssl" if tls else "none", use_auth=False,
                     ca_file=srv.ca_file, ehlo_name="bench.example")


def c_aio_send_as(srv: Servers, port: int, tls: bool, n: int, msg: bytes, conns: int) -> float:
    """mailexpress.aio: one `await send_as` per message, ``conns`` pooled sessions."""
    from mailexpress import aio
    cfg = _aio_config(srv, port, tls)

    async def run() -> float:
        t0 = time.perf_counter()
        async with aio.Pool(cfg, size=conns) as pool:
            out = await asyncio.gather(*(pool.send_as(FROM, to=[TO], message=msg) for _ in range(n)))
        assert len(out) == n
        return n / (time.perf_counter() - t0)
    return asyncio.run(run())


def c_aio_send_many(srv: Servers, port: int, tls: bool, n: int, msg: bytes, conns: int) -> float:
    """mailexpress.aio: ``conns`` concurrent `await send_many`, one connection each."""
    from mailexpress import aio
    cfg = _aio_config(srv, port, tls)

    async def run() -> float:
        t0 = time.perf_counter()
        async with aio.Pool(cfg, size=conns) as pool:
            out = await asyncio.gather(*(pool.send_many([{"sender": FROM, "to": TO, "message": msg}] * c)
                                         for c in split(n, conns)))
        assert all(r.ok for r in out)
        return n / (time.perf_counter() - t0)
    return asyncio.run(run())


ASYNC_CLIENTS: dict[str, Callable[[Servers, int, bool, int, bytes, int], float]] = {
    "aio.send_as": c_aio_send_as, "aio.send_many": c_aio_send_many, "aiosmtplib": c_aiosmtplib,
}


CLIENTS: dict[str, Callable[[Servers, int, bool, int, bytes, int], float]] = {
    "mailexpress": c_mailexpress, "smtplib": c_smtplib, "aiosmtplib": c_aiosmtplib,
    "smtp-source": c_smtp_source,
}


# -- the cases ----------------------------------------------------------------------

def sink_cases(srv: Servers, rounds: int, scale: float) -> list[dict[str, object]]:
    rows = []
    for tls in (False, True):
        for size, n in ((1024, 5000), (100 * 1024, 600)):
            for conns in (1, 4):
                n_here = max(int(n * scale) // conns * conns, 4 * conns)
                msg = body(size)
                got: dict[str, list[float]] = {}
                for _ in range(rounds):
                    for name, fn in CLIENTS.items():
                        if tls and name == "smtp-source":
                            continue
                        got.setdefault(name, []).append(
                            fn(srv, srv.tls if tls else srv.plain, tls, n_here, msg, conns))
                row = {"target": "smtp-sink" + (" via stunnel (TLS)" if tls else ""), "size": size,
                       "conns": conns, "messages": n_here,
                       "msg_per_s": {k: statistics.median(v) for k, v in got.items()}}
                rows.append(row)
                print_row(row)
    return rows


def asyncio_cases(srv: Servers, rounds: int, scale: float) -> list[dict[str, object]]:
    """The asyncio rows: the same messages through mailexpress.aio and aiosmtplib (each
    client opens its connections inside the timing)."""
    rows = []
    for tls in (False, True):
        for conns in (1, 4):
            n_here = max(int(2000 * scale) // conns * conns, 4 * conns)
            msg = body(1024)
            got: dict[str, list[float]] = {}
            for _ in range(rounds):
                for name, fn in ASYNC_CLIENTS.items():
                    got.setdefault(name, []).append(fn(srv, srv.tls if tls else srv.plain, tls, n_here, msg, conns))
            rates = {k: statistics.median(v) for k, v in got.items()}
            row = {"target": "smtp-sink" + (" via stunnel (TLS)" if tls else ""), "size": 1024,
                   "conns": conns, "messages": n_here, "msg_per_s": rates}
            rows.append(row)
            base = rates["aiosmtplib"]
            print(f"asyncio: {row['target']:<35} 1 KB x{conns}  aiosmtplib {base:7.0f}  "
                  + "  ".join(f"mailexpress.{k} {v:7.0f} ({v / base:4.2f}x)"
                              for k, v in rates.items() if k != "aiosmtplib"), flush=True)
    return rows


def postfix_case(rounds: int, scale: float) -> dict[str, object] | None:
    sys.path.insert(0, str(ROOT / "tests" / "interop"))
    from harness import ACCOUNTS, PostfixHarness, missing_requirements
    why = missing_requirements()
    if why:
        print(f"real Postfix: skipped ({why})", file=sys.stderr)
        return None
    import mailexpress as mx
    h = PostfixHarness().start()
    try:
        port = h.ports["submission"]
        password, address = ACCOUNTS["svc-any"]
        n = max(int(600 * scale), 20)
        msg = body(1024).replace(FROM.encode(), address.encode())
        ctx = ssl.create_default_context(cafile=h.ca_file)

        def mx_run() -> float:
            with mx.connect(mx.load_config(host="127.0.0.1", port=port, ca_file=h.ca_file,
                                           username="svc-any", password=password, use_auth=True,
                                           env={})) as s:
                t0 = time.perf_counter()
                out = s.send_many_raw([(address, [TO], msg)] * n)
                dt = time.perf_counter() - t0
            assert all(isinstance(o, tuple) for o in out), out[0]
            return n / dt

        def smtplib_run() -> float:
            with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example") as s:
                s.starttls(context=ctx)
                s.login("svc-any", password)
                t0 = time.perf_counter()
                for _ in range(n):
                    s.sendmail(address, [TO], msg)
                return n / (time.perf_counter() - t0)
        got: dict[str, list[float]] = {"mailexpress": [], "smtplib": []}
        for _ in range(rounds):
            got["mailexpress"].append(mx_run())
            got["smtplib"].append(smtplib_run())
    finally:
        h.stop()
    row = {"target": "real Postfix 3.7 (STARTTLS+AUTH, Maildir)", "size": 1024, "conns": 1,
           "messages": n, "msg_per_s": {k: statistics.median(v) for k, v in got.items()}}
    print_row(row)
    return row


BIG_CHILD = r"""
import sys, time, smtplib, gc
sys.path.insert(0, sys.argv[4])
from bench import body
client, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
msg = body(size)
gc.collect()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
if client == "mailexpress":
    import mailexpress as mx
    s = mx.Session("127.0.0.1", port, security="none", transcript=False)
    s.connect(); s.ehlo()
    send = lambda: s.send_raw("a@bench.example", ["b@bench.example"], msg)
else:
    s = smtplib.SMTP("127.0.0.1", port)
    s.ehlo()
    send = lambda: s.sendmail("a@bench.example", ["b@bench.example"], msg)
gc.collect()
open("/proc/self/clear_refs", "w").write("5")   # peak RSS := RSS now
before = status("VmRSS:")
t0 = time.perf_counter()
send()
dt = time.perf_counter() - t0
print(dt, status("VmHWM:") - before)
s.quit()
"""


def big_case(srv: Servers, rounds: int, size: int) -> list[dict[str, object]]:
    """One big message to smtp-sink and to the null peer (DATA, and BDAT
    for mailexpress when the peer offers CHUNKING)."""
    peers = {"smtp-sink": (srv.plain, ("mailexpress", "smtplib"))}
    procs = []
    for name, flag in (("null peer (DATA)", []), ("null peer (CHUNKING)", ["--chunking"])):
        p, port = start_nullsink(*flag)
        procs.append(p)
        peers[name] = (port, ("mailexpress",) if flag else ("mailexpress", "smtplib"))
    rows = []
    try:
        for peer, (port, clients) in peers.items():
            got: dict[str, list[tuple[float, int]]] = {c: [] for c in clients}
            for _ in range(rounds):
                for client in clients:
                    out = subprocess.run([sys.executable, "-c", BIG_CHILD, client, str(port), str(size),
                                          str(HERE)], check=True, capture_output=True, text=True).stdout.split()
                    got[client].append((float(out[0]), int(out[1])))
            sec = {k: statistics.median(t for t, _ in v) for k, v in got.items()}
            mem = {k: max(m for _, m in v) for k, v in got.items()}
            rows.append({"peer": peer, "size": size, "seconds": sec, "extra_peak_kib": mem})
            line = "; ".join(f"{k} {sec[k]:.3f} s, +{mem[k] / 1024:.1f} MiB peak" for k in clients)
            if "smtplib" in sec:
                line += f"; mailexpress {sec['smtplib'] / sec['mailexpress']:.1f}x faster"
            print(f"one {size / 1e6:.0f} MB message to {peer}: {line}", flush=True)
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
    return rows


def connector_case(rounds: int) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "tests"))
    import mailexpress as mx
    from mailexpress.testing import ConnectorEmulator
    from support import SVC
    times: dict[str, list[float]] = {"send_as": [], "test_connector": []}
    with ConnectorEmulator(users=[SVC]) as em:
        cfg = em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)
        for _ in range(5 * rounds + 5):
            t0 = time.perf_counter()
            mx.send_as(cfg, to="bob@partner.example", subject="bench", body="x")
            times["send_as"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            mx.test_connector(cfg)
            times["test_connector"].append(time.perf_counter() - t0)
    row = {k: statistics.median(v[5:]) * 1000 for k, v in times.items()}
    print(f"test_connector on loopback: {row['test_connector']:.1f} ms median "
          f"(one send_as: {row['send_as']:.1f} ms)")
    return row


# -- the path users call: mx.send_many, Template, send_as (issue 16) -------------------

TEXT_1K = ("Dear customer, your statement for this month is ready to view online.\n" * 15)[:1000]


def sink_config(port: int):   # type: ignore[no-untyped-def]
    import mailexpress as mx
    return mx.load_config(host="127.0.0.1", port=port, security="none", use_auth=False,
                          from_address=FROM, ehlo_name="bench.example", env={})


def mappings(n: int):   # type: ignore[no-untyped-def]
    for i in range(n):
        yield {"to": f"user{i}@bench.example", "subject": f"Statement {i}", "body": TEXT_1K}


def rows_of(n: int):   # type: ignore[no-untyped-def]
    for i in range(n):
        yield {"email": f"user{i}@bench.example", "name": f"Customer {i}", "n": i}


def bench_template():   # type: ignore[no-untyped-def]
    import mailexpress as mx
    return mx.Template(to="{name} <{email}>", subject="Statement {n}",
                       body="Dear {name},\n" + TEXT_1K[14:])


def u_send_many(port: int, n: int) -> float:
    import mailexpress as mx
    t0 = time.perf_counter()
    res = mx.send_many(sink_config(port), mappings(n))
    dt = time.perf_counter() - t0
    assert len(res) == n and not res.failed, str(res)
    return n / dt


def u_template(port: int, n: int) -> float:
    import mailexpress as mx
    t = bench_template()
    t0 = time.perf_counter()
    res = mx.send_many(sink_config(port), template=t, rows=rows_of(n))
    dt = time.perf_counter() - t0
    assert len(res) == n and not res.failed, str(res)
    return n / dt


def u_prebuilt(port: int, n: int) -> float:
    """The engine alone (Session.send_many_raw, messages built before)."""
    import mailexpress as mx
    msg = body(1024)
    with mx.connect(sink_config(port)) as s:
        t0 = time.perf_counter()
        out = s.send_many_raw([(FROM, [TO], msg)] * n)
        dt = time.perf_counter() - t0
    assert all(isinstance(o, tuple) for o in out)
    return n / dt


def u_send_as(port: int, n: int) -> float:
    import mailexpress as mx
    cfg = sink_config(port)
    with mx.connect(cfg) as s:
        t0 = time.perf_counter()
        for i in range(n):
            mx.send_as(cfg, to=f"user{i}@bench.example", subject=f"Statement {i}", body=TEXT_1K,
                       session=s)
        return n / (time.perf_counter() - t0)


def u_smtplib_email(port: int, n: int) -> float:
    """The peer: smtplib + EmailMessage built per message, in a loop."""
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.example") as s:
        t0 = time.perf_counter()
        for i in range(n):
            m = EmailMessage()
            m["From"], m["To"], m["Subject"] = FROM, f"user{i}@bench.example", f"Statement {i}"
            m["Date"] = formatdate(localtime=True)
            m["Message-ID"] = make_msgid(domain="bench.example")
            m.set_content(TEXT_1K)
            s.send_message(m)
        return n / (time.perf_counter() - t0)


def build_floor(work: Path) -> list[str]:
    """Compiles protocol_floor.c (the fewest syscalls DATA allows: one round
    trip a message, nothing else) and writes u_prebuilt's 1 KB message for
    it; the command line that runs it, less N and PORT."""
    exe, msg = work / "protocol_floor", work / "message.eml"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "protocol_floor.c")], check=True)
    msg.write_bytes(body(1024))
    return [str(exe), str(msg)]


def floor_rate(cmd: list[str], port: int, n: int) -> float:
    out = subprocess.run([cmd[0], str(n), str(port), cmd[1]], check=True,
                         capture_output=True, text=True).stdout
    return float(out)


def start_nullsink(*flags: str) -> tuple[subprocess.Popen[bytes], int]:
    """nullsink.py on a free port (--chunking: it offers CHUNKING)."""
    port = free_port()
    p = subprocess.Popen([sys.executable, str(HERE / "nullsink.py"), str(port), *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
    return p, port


USER_PATHS: dict[str, Callable[[int, int], float]] = {
    "Session.send_many_raw, prebuilt bytes (the engine)": u_prebuilt,
    "mx.send_many, mappings": u_send_many,
    "mx.send_many, Template + rows": u_template,
    "send_as in a loop, one session": u_send_as,
    "smtplib + EmailMessage in a loop (the peer)": u_smtplib_email,
}
# smtp-sink offers no CHUNKING: each message waits one round trip for its 354
# (RFC 2920), and no client does better than protocol_floor.c's rate there.
# With CHUNKING (nullsink.py --chunking here; Exchange and Postfix offer it)
# the messages of a batch follow each other with BDAT without waiting.
FLOOR = "protocol_floor.c: DATA's round trip and nothing else (the bound)"
BDAT_PATHS: dict[str, Callable[[int, int], float]] = {
    "BDAT: Session.send_many_raw (the engine)": u_prebuilt,
    "BDAT: mx.send_many, mappings": u_send_many,
    "BDAT: mx.send_many, Template + rows": u_template,
}

MEM_CHILD = r"""
import sys, time, gc
sys.path.insert(0, sys.argv[3])
import bench
import mailexpress as mx
port, n = int(sys.argv[1]), int(sys.argv[2])
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
cfg = bench.sink_config(port)
t = bench.bench_template()
mx.send_many(cfg, template=t, rows=bench.rows_of(200))     # warm: imports, first allocations
gc.collect()
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
t0 = time.perf_counter()
res = mx.send_many(cfg, template=t, rows=bench.rows_of(n))
dt = time.perf_counter() - t0
assert len(res) == n and not res.failed
print(status("VmHWM:") - before, n / dt)
"""


def memory_case(port: int, counts: list[int]) -> list[dict[str, object]]:
    """Extra peak RSS of mx.send_many over a generator (template rows), each
    count in a child process of its own: to smtp-sink (one reply for every
    message) and to nullsink.py --queue-ids (no two replies alike, as from
    Postfix or Exchange)."""
    rows = []
    sink, unlike = start_nullsink("--chunking", "--queue-ids")
    try:
        for replies, where in (("alike", port), ("unlike", unlike)):
            for n in counts:
                out = subprocess.run([sys.executable, "-c", MEM_CHILD, str(where), str(n), str(HERE)],
                                     check=True, capture_output=True, text=True,
                                     env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout.split()
                kib, rate = int(out[0]), float(out[1])
                rows.append({"messages": n, "replies": replies, "extra_peak_kib": kib,
                             "bytes_per_message": kib * 1024 / n, "msg_per_s": rate})
                print(f"memory, mx.send_many over a generator of {n:>9,} messages, replies {replies}: "
                      f"+{kib / 1024:.1f} MiB peak ({kib * 1024 / n:.0f} bytes a message), "
                      f"{rate:.0f} msg/s", flush=True)
    finally:
        sink.kill()
        sink.wait()
    return rows


class FirstMail:
    """A relay in front of smtp-sink that notes when the first MAIL command
    arrives (time.monotonic, this process)."""

    def __init__(self, target: int) -> None:
        self.port = free_port()
        self.target = target
        self.first: float | None = None
        self.lsock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.lsock.accept()
        up = socket.create_connection(("127.0.0.1", self.target))
        for s in (conn, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def pump(a: socket.socket, b: socket.socket, watch: bool) -> None:
            seen = b""
            while True:
                data = a.recv(1 << 16)
                if not data:
                    b.shutdown(socket.SHUT_WR)
                    return
                if watch and self.first is None:
                    seen += data[:4096]
                    if b"MAIL FROM" in seen.upper():
                        self.first = time.monotonic()
                    seen = seen[-16:]
                b.sendall(data)
        t = threading.Thread(target=pump, args=(up, conn, False), daemon=True)
        t.start()
        pump(conn, up, True)
        t.join()
        conn.close()
        up.close()
        self.lsock.close()


def ttfb_case(port: int, n: int) -> dict[str, float]:
    """Time from calling mx.send_many (a generator of n mappings) to the first
    MAIL on the wire; connect and EHLO included."""
    import mailexpress as mx
    relay = FirstMail(port)
    cfg = sink_config(relay.port)
    t0 = time.monotonic()
    res = mx.send_many(cfg, mappings(n))
    assert len(res) == n and not res.failed and relay.first is not None
    ms = (relay.first - t0) * 1000
    print(f"time to the first MAIL on the wire, mx.send_many of {n:,} from a generator: "
          f"{ms:.1f} ms", flush=True)
    return {"messages": n, "ms": ms}


def user_cases(srv: Servers, rounds: int, scale: float, million: bool) -> dict[str, object]:
    n = max(int(10_000 * scale), 500)
    n_slow = max(n // 5, 200)        # the send_as-style loops
    got: dict[str, list[float]] = {}
    floor = build_floor(srv.dir)
    sink, bdat_port = start_nullsink("--chunking")
    try:
        for _ in range(rounds):
            got.setdefault(FLOOR, []).append(floor_rate(floor, srv.plain, n))
            for name, fn in USER_PATHS.items():
                slow = "loop" in name
                got.setdefault(name, []).append(fn(srv.plain, n_slow if slow else n))
            for name, fn in BDAT_PATHS.items():
                got.setdefault(name, []).append(fn(bdat_port, n))
    finally:
        sink.kill()
        sink.wait()
    rates = {k: statistics.median(v) for k, v in got.items()}
    peer = rates["smtplib + EmailMessage in a loop (the peer)"]
    print(f"1 KB text, one connection, to smtp-sink (DATA) unless marked BDAT ({n:,} messages; "
          f"loops {n_slow:,}; median of {rounds}, min-max):")
    for k, v in rates.items():
        print(f"  {k:<52} {v:8.0f} msg/s  {v / peer:6.2f}x the peer  "
              f"({min(got[k]):.0f}-{max(got[k]):.0f})", flush=True)
    counts = [10_000] if scale < 1 else [10_000, 100_000] + ([1_000_000] if million else [])
    mem = memory_case(srv.plain, counts)
    ttfb = ttfb_case(srv.plain, 100_000 if scale >= 1 else 10_000)
    return {"messages": n, "loop_messages": n_slow, "msg_per_s": rates, "rounds": got,
            "memory": mem, "ttfb": ttfb}


def print_user_targets(user: dict[str, object]) -> None:
    rates = user["msg_per_s"]
    assert isinstance(rates, dict)
    peer = rates["smtplib + EmailMessage in a loop (the peer)"]
    many, tpl = rates["mx.send_many, mappings"], rates["mx.send_many, Template + rows"]
    many_b, tpl_b = rates["BDAT: mx.send_many, mappings"], rates["BDAT: mx.send_many, Template + rows"]
    floor = rates[FLOOR]
    loop = rates["send_as in a loop, one session"]
    mem = user["memory"]
    ttfb = user["ttfb"]
    assert isinstance(mem, list) and isinstance(ttfb, dict)
    print(f"  (DATA to smtp-sink: no client passes protocol_floor.c's {floor:.0f} msg/s here)")
    checks = [
        (f"mx.send_many, mappings: >= 20,000 msg/s, DATA ({many:.0f})", many >= 20_000),
        (f"mx.send_many, mappings: >= 20,000 msg/s, BDAT ({many_b:.0f})", many_b >= 20_000),
        (f"mx.send_many, mappings: >= 20x smtplib + EmailMessage ({many / peer:.1f}x)",
         many / peer >= 20),
        (f"mx.send_many, Template: >= 30,000 msg/s, DATA ({tpl:.0f})", tpl >= 30_000),
        (f"mx.send_many, Template: >= 30,000 msg/s, BDAT ({tpl_b:.0f})", tpl_b >= 30_000),
        (f"send_as in a loop: >= 5x smtplib + EmailMessage ({loop / peer:.1f}x)", loop / peer >= 5),
        (f"time to first MAIL, {ttfb['messages']:,} messages: < 100 ms ({ttfb['ms']:.1f} ms)",
         ttfb["ms"] < 100),
    ]
    for m in mem:
        checks.append((f"{m['messages']:,} messages from a generator, replies {m['replies']}: "
                       f"< 1 KB extra peak a message "
                       f"({m['bytes_per_message']:.0f} B)", m["bytes_per_message"] < 1024))
        if m["messages"] >= 1_000_000:
            checks.append((f"1,000,000 messages, replies {m['replies']}: < 200 MB extra peak "
                           f"({m['extra_peak_kib'] / 1024:.0f} MiB)",
                           m["extra_peak_kib"] < 200 * 1024))
    for name, met in checks:
        print(f"  {'met ' if met else 'MISS'}  {name}")


# -- output ---------------------------------------------------------------------------

def print_row(row: dict[str, object]) -> None:
    rates = row["msg_per_s"]
    assert isinstance(rates, dict)
    mx_rate = rates["mailexpress"]
    ratios = "  ".join(f"{k} {v:8.0f} ({mx_rate / v:4.2f}x)" for k, v in rates.items() if k != "mailexpress")
    size = row["size"]
    assert isinstance(size, int)
    print(f"{row['target']:<44} {size // 1024:>4} KB x{row['conns']}  "
          f"mailexpress {mx_rate:8.0f}  {ratios}", flush=True)


def print_targets(rows: list[dict[str, object]], big: list[dict[str, object]]) -> None:
    """The issue's targets, as ratios of this run."""
    def rate(target: str, size: int, conns: int, client: str) -> float:
        for r in rows:
            if r["target"] == target and r["size"] == size and r["conns"] == conns:
                rates = r["msg_per_s"]
                assert isinstance(rates, dict)
                return float(rates.get(client, float("nan")))
        return float("nan")
    sink, tls = "smtp-sink", "smtp-sink via stunnel (TLS)"
    null = next(b for b in big if b["peer"] == "null peer (DATA)")
    sec, mem, size = null["seconds"], null["extra_peak_kib"], null["size"]
    assert isinstance(sec, dict) and isinstance(mem, dict) and isinstance(size, int)
    big_name = f"{size / 1e6:.0f} MB"
    mx1 = rate(sink, 1024, 1, "mailexpress")
    checks = [   # (target, value, met)
        ("1 connection, 1 KB: >= 4x smtplib", mx1 / rate(sink, 1024, 1, "smtplib"), 4.0),
        ("1 connection, 1 KB: >= 4x smtp-source -s 1", mx1 / rate(sink, 1024, 1, "smtp-source"), 4.0),
        ("4 connections, 1 KB: >= 1.3x smtp-source -s 4",
         rate(sink, 1024, 4, "mailexpress") / rate(sink, 1024, 4, "smtp-source"), 1.3),
        ("4 connections, 100 KB: >= 1.3x smtp-source -s 4",
         rate(sink, 102400, 4, "mailexpress") / rate(sink, 102400, 4, "smtp-source"), 1.3),
        (f"{big_name}: >= 5x faster than smtplib (null peer)", sec["smtplib"] / sec["mailexpress"], 5.0),
        ("TLS 100 KB: >= 0.8x plain", rate(tls, 102400, 1, "mailexpress") / rate(sink, 102400, 1, "mailexpress"),
         0.8),
    ]
    print("targets (ratios of this run):")
    for name, got, need in checks:
        print(f"  {'met ' if got >= need else 'MISS'}  {name}: {got:.2f}x")
    extra = mem["mailexpress"] / 1024
    print(f"  {'met ' if extra < 4 else 'MISS'}  {big_name}: < 4 MiB extra peak: {extra:.1f} MiB")


def machine() -> str:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.system()} {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
            f"Python {platform.python_version()}, {ssl.OPENSSL_VERSION}")


def chart(rows: list[dict[str, object]], path: str, user: dict[str, object] | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = ["mailexpress", "smtplib", "aiosmtplib", "smtp-source"]
    labels = []
    for r in rows:
        tls = "TLS " if "TLS" in str(r["target"]) else ""
        where = "Postfix " if "Postfix" in str(r["target"]) else ""
        size = r["size"]
        assert isinstance(size, int)
        labels.append(f"{where}{tls}{size // 1024} KB\nx{r['conns']}")
    if user is not None:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(12, 9), gridspec_kw={"height_ratios": [5, 3]})
        rates = user["msg_per_s"]
        assert isinstance(rates, dict)
        names_u = list(rates)
        ax2.barh(range(len(names_u)), [rates[k] for k in names_u], color="tab:blue")
        ax2.set_yticks(range(len(names_u)))
        ax2.set_yticklabels(names_u, fontsize=8)
        ax2.invert_yaxis()
        ax2.set_xscale("log")
        ax2.set_xlabel("messages per second (log scale)")
        ax2.set_title("The path users call: 1 KB text to smtp-sink (DATA) or to nullsink (BDAT), "
                      "one connection, same run")
    else:
        fig, ax = plt.subplots(figsize=(12, 5))
    width = 0.2
    for i, name in enumerate(names):
        vals = []
        for r in rows:
            rates = r["msg_per_s"]
            assert isinstance(rates, dict)
            vals.append(rates.get(name, 0))
        ax.bar([x + (i - 1.5) * width for x in range(len(rows))], vals, width, label=name)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("messages per second (log scale)")
    ax.set_title("Loopback, same run, median of rounds; x1 = one connection, x4 = four")
    ax.legend()
    fig.text(0.01, 0.01, machine(), fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    print(f"chart: {path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a tenth of the messages, one round")
    ap.add_argument("--no-install", action="store_true")
    ap.add_argument("--big", type=int, default=50_000_000, help="size of the big message")
    ap.add_argument("--chart", help="write a PNG chart here")
    ap.add_argument("--no-million", action="store_true",
                    help="leave out the 1,000,000-message memory run (about 3 minutes)")
    ap.add_argument("--only-user", action="store_true",
                    help="only the user-path rows (send_many, Template, send_as, memory, first byte)")
    ap.add_argument("--json", help="write all figures here")
    args = ap.parse_args()
    ensure_tools(not args.no_install)
    rounds, scale = (1, 0.1) if args.quick else (args.rounds, 1.0)
    print(machine())
    srv = Servers()
    try:
        user = user_cases(srv, rounds, scale, not args.no_million)
        if args.only_user:
            print_user_targets(user)
            return 0
        rows = sink_cases(srv, rounds, scale)
        aio_rows = asyncio_cases(srv, rounds, scale)
        big = big_case(srv, rounds, args.big)
    finally:
        srv.stop()
    pf = postfix_case(rounds, scale)
    if pf:
        rows.append(pf)
    conn = connector_case(rounds)
    print_targets(rows, big)
    print_user_targets(user)
    if args.chart:
        chart(rows, args.chart, user)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows, "big": big,
                                               "test_connector": conn, "asyncio": aio_rows,
                                               "user_paths": user}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
