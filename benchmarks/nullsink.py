"""A discard SMTP server that is not the bottleneck, for measuring what a
client costs on a big message.

smtp-sink reads a body line by line (about 150 MB/s here, whoever the
client is); this peer reads it in 1 MiB pieces and looks for the end
marker with bytes.find, so a 50 MB message costs it a few tens of
milliseconds and the figure is the client's.  One connection at a time.

    python benchmarks/nullsink.py PORT [--chunking] [--queue-ids]

Prints "ready" when listening.  Answers EHLO with PIPELINING, 8BITMIME,
SIZE (and CHUNKING with --chunking), everything else with 250, DATA with
354; BDAT chunks are read by count.  Replies are held until the client's
input is used up and sent together before the next read, as RFC 2920 asks
of a pipelining server (and Postfix does), so a pipelined group costs one
send however many commands it had.  With --queue-ids each message's reply
names a queue id of its own ("250 2.0.0 Ok: queued as 4X00000001A"), as
Postfix's and Exchange's replies do: no two replies alike.
"""
from __future__ import annotations

import socket
import sys

END = b"\r\n.\r\n"


def serve(conn: socket.socket, chunking: bool, queue_ids: bool) -> None:
    buf, out = bytearray(), bytearray()
    queued = 0

    def accepted() -> None:
        nonlocal queued
        queued += 1
        reply(b"250 2.0.0 Ok: queued as 4X%09X\r\n" % queued if queue_ids else b"250 2.0.0 discarded\r\n")
    view = memoryview(bytearray(1 << 20))

    def reply(text: bytes) -> None:
        out.extend(text)

    def fill() -> bool:
        if out:             # the client waits for these before it says more
            conn.sendall(out)
            out.clear()
        n = conn.recv_into(view)
        buf.extend(view[:n])
        return n > 0

    def line() -> bytes | None:
        while True:
            i = buf.find(b"\n")
            if i >= 0:
                got = bytes(buf[:i + 1])
                del buf[:i + 1]
                return got
            if not fill():
                return None

    reply(b"220 nullsink ESMTP\r\n")
    while (cmd := line()) is not None:
        verb = cmd[:4].upper()
        if verb == b"EHLO":
            ext = [b"PIPELINING", b"8BITMIME", b"SIZE 0"] + ([b"CHUNKING"] if chunking else [])
            reply(b"250-nullsink\r\n" + b"".join(b"250-" + e + b"\r\n" for e in ext[:-1])
                  + b"250 " + ext[-1] + b"\r\n")
        elif verb == b"DATA":
            reply(b"354 go\r\n")
            # the marker may straddle two reads: keep the last 4 bytes
            while (i := buf.find(END)) < 0:
                del buf[:max(len(buf) - 4, 0)]
                if not fill():
                    return
            del buf[:i + len(END)]
            accepted()
        elif verb == b"BDAT":
            size = int(cmd.split()[1])
            while len(buf) < size:
                size -= len(buf)
                buf.clear()
                if not fill():
                    return
            del buf[:size]
            accepted()
        elif verb == b"QUIT":
            conn.sendall(out + b"221 bye\r\n")
            return
        else:
            reply(b"250 ok\r\n")


def main() -> None:
    port, chunking, queue_ids = int(sys.argv[1]), "--chunking" in sys.argv, "--queue-ids" in sys.argv
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        with conn:
            try:
                serve(conn, chunking, queue_ids)
            except OSError:
                pass


if __name__ == "__main__":
    main()
