"""N threads x M messages through N sessions: each arrives exactly once, byte-exact."""
from __future__ import annotations

import random
import threading

import mailexpress as mx

THREADS, MESSAGES = 6, 40


def body(thread: int, n: int) -> bytes:
    rnd = random.Random(thread * 1000 + n)
    parts = [f"Subject: load {thread}-{n}\r\nX-Seq: {thread}-{n}\r\n\r\n".encode()]
    for _ in range(rnd.randint(1, 60)):
        parts.append(rnd.choice([b".dot line", b"plain", b"", b"..two", b"caf\xc3\xa9", b"x" * rnd.randint(0, 900)]))
        parts.append(rnd.choice([b"\r\n", b"\n", b"\r"]))
    return b"".join(parts)


def normalise(data: bytes) -> bytes:
    text = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not text.endswith(b"\n"):
        text += b"\n"
    return text.replace(b"\n", b"\r\n")


def test_threads_times_messages_exactly_once(cfg, emulator):
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            with mx.connect(cfg) as s:
                for n in range(MESSAGES):
                    s.send_raw("alice@corp.example", [f"t{t}@partner.example"], body(t, n))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    got = {}
    for m in emulator.messages:
        seq = m.message["X-Seq"]
        assert seq not in got, f"{seq} arrived twice"
        got[seq] = m.data
    assert len(got) == THREADS * MESSAGES
    for t in range(THREADS):
        for n in range(MESSAGES):
            assert got[f"{t}-{n}"] == normalise(body(t, n))
    assert emulator.connections == THREADS
