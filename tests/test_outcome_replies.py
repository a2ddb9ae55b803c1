"""send_many_raw's outcomes share Reply objects between consecutive equal
replies (reply.py: "equal ones may be one object"), never between replies
that differ in code, enhanced code, text or stage."""
from __future__ import annotations

from fakeserver import greet
from support import connected

import mailexpress as mx

FINALS = [b"250 2.0.0 queued as A1", b"250 2.0.0 queued as A1", b"250 2.0.0 queued as B2",
          b"250 2.0.0 queued as B2", b"250 2.0.1 queued as B2", b"251 2.0.1 queued as B2",
          b"250 2.0.0 queued as A1"]


def test_equal_consecutive_replies_are_one_object_and_different_ones_are_not(fake_server):
    def script(conn):
        greet(conn)
        finals = iter(FINALS)
        n = 0
        while True:
            line = conn.readline()
            if not line or line.startswith(b"QUIT"):
                conn.send(b"221 bye\r\n")
                return
            if line.startswith(b"MAIL"):
                conn.send(b"250 2.1.0 Ok\r\n")
            elif line.startswith(b"RCPT"):
                # the 4th RCPT: the third message's second recipient
                n += 1
                conn.send(b"550 5.1.1 no such user\r\n" if n == 4 else b"250 2.1.5 Ok\r\n")
            elif line.startswith(b"DATA"):
                conn.send(b"354 go\r\n")
                conn.read_data()
                conn.send(next(finals) + b"\r\n")
    srv, s = connected(fake_server, script)
    s.ehlo()
    items = [("a@x.example", ["b@y.example", "c@y.example"] if i == 2 else ["b@y.example"],
              b"x\r\n") for i in range(len(FINALS))]
    out = s.send_many_raw(items)
    s.quit()
    srv.check()
    assert all(isinstance(o, tuple) for o in out), out
    replies = [o[1] for o in out]
    assert [(r.code, r.enhanced, r.lines) for r in replies] == [
        (int(f[:3]), f[4:9].decode(), (f[4:].decode(),)) for f in FINALS]
    assert all(r.stage is mx.Stage.END_OF_DATA for r in replies)
    for a, b in zip(replies, replies[1:]):
        assert (a is b) == (a == b), (a, b)
    assert replies[0] is replies[1] and replies[2] is replies[3]
    assert replies[3] is not replies[4] and replies[4] is not replies[5]
    assert replies[6] == replies[0]
    # the refused recipient's reply is its own, with its RCPT stage
    refused = out[2][0]
    assert list(refused) == ["c@y.example"]
    assert refused["c@y.example"].code == 550 and refused["c@y.example"].stage is mx.Stage.RCPT
    assert all(o[0] == {} for i, o in enumerate(out) if i != 2)
    # each message has a refused dict of its own (mutable: never shared)
    assert len({id(o[0]) for o in out}) == len(out)
