"""The transcript's bound during a long batch (issue 16): past 1 MiB an
entry is only counted, without reading the clock or formatting it, and the
"N transcript entries not kept" count must stay exact: what was kept plus
what was counted is every entry the batch made, and what was kept is that
sequence with some entries left out (a short entry may still fit after a
long one did not)."""
from __future__ import annotations

import re

from fakeserver import greet
from support import connected

LIMIT = 1 << 20
ENTRY_HEADER = 9            # u32 ms, u8 dir, u32 length (csrc/proto/transcript.c)
QUEUED = b"250 2.0.0 queued as " + b"Q" * 300     # long, so the cap comes sooner
DOMAIN = ".".join(["y" * 60] * 3) + ".example"


def pipelining_sink(conn):  # type: ignore[no-untyped-def]
    """Answers every transaction of a pipelined batch, then QUIT."""
    greet(conn)
    while True:
        line = conn.readline()
        if not line or line.startswith(b"QUIT"):
            conn.send(b"221 bye\r\n")
            return
        if line.startswith(b"MAIL"):
            conn.send(b"250 2.1.0 Ok\r\n")
        elif line.startswith(b"RCPT"):
            conn.send(b"250 2.1.5 Ok\r\n")
        elif line.startswith(b"DATA"):
            conn.send(b"354 go\r\n")
            conn.read_data()
            conn.send(QUEUED + b"\r\n")
        else:
            conn.send(b"500 what\r\n")


def expected_entries(n: int, body: bytes) -> list[tuple[str, str]]:
    """What n pipelined transactions add to the transcript, in order: a
    command is recorded when it is staged, so the next envelope goes with
    (before the answer to) the end of the body before it."""
    out: list[tuple[str, str]] = []
    for i in range(n):
        out += [("C", "MAIL FROM:<a@x.example>"), ("C", f"RCPT TO:<u{i}@{DOMAIN}>"),
                ("C", "DATA")]
        if i:
            out.append(("S", QUEUED.decode()))
        out += [("S", "250 2.1.0 Ok"), ("S", "250 2.1.5 Ok"), ("S", "354 go"),
                ("*", f"body: {len(body)} octets"), ("C", ".")]
    return out + [("S", QUEUED.decode())]


def test_the_count_of_entries_not_kept_is_exact_past_the_cap(fake_server):
    body = b"Subject: t\r\n\r\nx\r\n"
    n = 2500                # about 1.1 MiB of entries after the greeting
    srv, s = connected(fake_server, pipelining_sink)
    s.ehlo()
    before = s.transcript
    assert not any("not kept" in t for _, d, t in before if d == "*")
    out = s.send_many_raw([("a@x.example", [f"u{i}@{DOMAIN}"], body) for i in range(n)])
    assert all(isinstance(o, tuple) and o[1].code == 250 for o in out)
    after = s.transcript
    s.quit()
    srv.check()

    last = after[-1]
    m = re.fullmatch(r"(\d+) transcript entries not kept \(limit 1 MiB\)", last[2])
    assert last[1] == "*" and m, last
    dropped = int(m.group(1))
    kept = [(d, t) for _, d, t in after[:-1]]
    assert kept[:len(before)] == [(d, t) for _, d, t in before]
    made = expected_entries(n, body)
    batch_kept = kept[len(before):]
    # kept + counted == made: not one entry lost or counted twice
    assert len(batch_kept) + dropped == len(made)
    assert dropped > 0 and len(batch_kept) > 0
    # what was kept is the batch's sequence with entries left out, in order
    it = iter(made)
    assert all(any(e == x for x in it) for e in batch_kept)
    # up to the bound, and (entries being short) within one long entry of it
    size = sum(ENTRY_HEADER + len(t.encode()) for _, t in kept)
    assert LIMIT - (ENTRY_HEADER + len(QUEUED)) <= size <= LIMIT
    # the timestamps of what was kept never go backwards
    stamps = [ms for ms, _, _ in after[:-1]]
    assert stamps == sorted(stamps)
