"""Memory safety of the Session from Python: getters and close() from other
threads while a bulk send runs with the GIL released, a file reader that
keeps the buffer it was lent, and the cycle collector.  The sanitizer run
(.ci/sanitizers) runs these under ASan/UBSan, where a use-after-free aborts."""
from __future__ import annotations

import gc
import io
import threading
import time

import pytest
from fakeserver import greet
from support import plain_session

import mailexpress as mx
from mailexpress import _core


def sink(conn) -> None:
    """A pipelining, chunking sink: 250 to every command, BDAT bodies read."""
    greet(conn, [b"PIPELINING", b"CHUNKING", b"8BITMIME", b"SIZE 100000000"])
    while True:
        line = conn.readline()
        if not line:
            return
        verb = line[:4].upper()
        if verb == b"BDAT":
            conn.read_exact(int(line.split()[1]))
            conn.send(b"250 2.0.0 queued\r\n")
        elif verb == b"QUIT":
            conn.send(b"221 bye\r\n")
            return
        else:
            conn.send(b"250 ok\r\n")


GETTERS = ("state", "capabilities", "banner", "ehlo_reply", "tls_active", "authenticated",
           "esmtp", "tls_version", "tls_cipher", "peer_certificate", "peer_cert_info",
           "transcript", "connect_attempts", "peer_address", "resolve_ms", "max_size")


def test_getters_and_close_from_other_threads_during_a_bulk_send(fake_server, certs):
    """Readers see a consistent value or ConcurrentUseError, never memory the
    send is moving (the transcript grows by realloc while the GIL is
    released; TLS 1.3 replaces its session object when a ticket comes)."""
    srv = fake_server(sink, tls=certs.server_context())
    s = plain_session(srv.port, security="ssl", ca_file=certs.ca_file)
    s.connect()
    s.ehlo()
    body = b"Subject: stress\r\n\r\n" + b"line of the stress body\r\n" * 400
    batch = [("a@x.example", ["b@y.example", "c@y.example"], body)] * 100
    stop = threading.Event()
    seen = {"values": 0, "busy": 0, "closes_refused": 0}
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                busy = False
                for name in GETTERS:
                    try:
                        getattr(s, name)
                        seen["values"] += 1
                    except mx.ConcurrentUseError:
                        seen["busy"] += 1
                        busy = True
                if busy:     # a send runs: close() must be refused, not cut it
                    try:
                        s.close()
                    except mx.ConcurrentUseError:
                        seen["closes_refused"] += 1
        except BaseException as exc:   # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    rounds = []
    try:
        for t in threads:
            t.start()
        for _ in range(2):
            try:
                rounds.append(s.send_many(batch))
            except mx.StateError:    # a reader's close() got in between two rounds
                break
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert rounds and all(len(r.sent) == len(batch) for r in rounds)
    assert seen["values"] > 0 and seen["busy"] > 0 and seen["closes_refused"] > 0
    assert s.tls_version in (None, "TLSv1.3", "TLSv1.2")


def test_readers_of_the_transcript_never_make_the_owner_s_calls_fail(fake_server):
    """A getter holds the Session's lock only while it copies: it makes its
    Python objects after releasing it, so a GC pass or a switch of threads in
    the middle of a long transcript cannot make the owning thread's next call
    raise ConcurrentUseError."""
    srv = fake_server(sink)
    s = plain_session(srv.port)
    s.connect()
    s.ehlo()
    for _ in range(500):        # a long transcript: each read makes ~500 tuples
        s.noop()
    stop = threading.Event()
    reads = [0]

    class Yields:
        """Cyclic garbage whose finalizer gives the GIL away: the GC runs it
        while a getter allocates, and another thread runs meanwhile."""
        def __init__(self) -> None:
            self.me = self

        def __del__(self) -> None:
            time.sleep(0.0001)

    def reader() -> None:
        while not stop.is_set():
            for _ in range(5):
                Yields()
            try:        # while the owner's call runs, a reader is the one refused
                assert len(s.transcript) > 500
                len(s.connect_attempts)
                reads[0] += 1
            except mx.ConcurrentUseError:
                pass

    threads = [threading.Thread(target=reader) for _ in range(2)]
    refused = 0
    threshold = gc.get_threshold()
    gc.set_threshold(400)
    try:
        for t in threads:
            t.start()
        for _ in range(100):
            try:
                s.noop()
            except mx.ConcurrentUseError:
                refused += 1
    finally:
        gc.set_threshold(*threshold)
        stop.set()
        for t in threads:
            t.join(10)
    assert refused == 0
    assert reads[0] > 0


def test_a_reader_that_keeps_the_buffer_gets_an_error_not_freed_memory(fake_server):
    """readinto() is lent a view of the engine's buffer; once the call
    returns the view is released, so later use raises ValueError."""
    class Keeper(io.BytesIO):
        kept: list[memoryview] = []

        def readinto(self, b):   # type: ignore[override]
            self.kept.append(b)
            return super().readinto(b)

    srv = fake_server(sink)
    s = plain_session(srv.port)
    s.connect()
    s.ehlo()
    body = Keeper(b"Subject: kept\r\n\r\n" + b"x" * 200_000 + b"\r\n")
    ok = s.send_raw("a@x.example", ["b@y.example"], body)
    assert ok[1].code == 250
    s.quit()
    assert len(Keeper.kept) >= 4      # the scan and the send, chunk by chunk
    for view in Keeper.kept:
        with pytest.raises(ValueError, match="released"):
            view[0]
        with pytest.raises(ValueError, match="released"):
            view[0:1] = b"y"


def test_the_session_takes_part_in_garbage_collection(fake_server):
    """The Python objects a Session holds (its banner and EHLO replies) are
    visible to the cycle collector, base type and subclass alike."""
    srv = fake_server(sink)
    base = _core.Session("127.0.0.1", srv.port, security="none")
    assert gc.is_tracked(base)
    s = plain_session(srv.port)
    s.connect()
    s.ehlo()
    referents = gc.get_referents(s)
    assert any(r is s.banner for r in referents)
    assert any(r is s.ehlo_reply for r in referents)
    s.quit()
