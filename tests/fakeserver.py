"""A scripted server that sends exact bytes: the peer for protocol-edge and
hostile-server tests.

Each accepted connection runs ``script(conn)`` in a thread.  ``conn`` reads
lines exactly as the client sent them and writes raw bytes; everything the
client sent is kept in ``server.received``.  An exception inside the script
(a failed ``expect``) is kept and raised again by ``server.check()``.
"""
from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable


BANNER = b"220 fake.example ESMTP\r\n"


def greet(conn: ScriptConn, extensions: tuple[bytes, ...] | list[bytes] = (b"PIPELINING", b"8BITMIME")) -> None:
    """The banner, then EHLO answered with the given keywords."""
    conn.send(BANNER)
    conn.ehlo(list(extensions))


def serve_commands(conn: ScriptConn, banner: bytes, extensions: list[bytes], greeting: bytes,
                   answer: Callable[[bytes], bytes | None], bye: bytes = b"221 2.0.0 bye\r\n") -> None:
    """A server that answers command by command: the banner, EHLO answered
    with `extensions`, then every line up to QUIT or EOF (answered with
    `bye`) handed to answer(line), whose reply is sent; None from answer
    ends the session (after whatever answer sent itself)."""
    conn.send(banner)
    conn.ehlo(extensions, greeting=greeting)
    while True:
        line = conn.readline()
        if not line or line.startswith(b"QUIT"):
            conn.send(bye)
            return
        reply = answer(line)
        if reply is None:
            return
        conn.send(reply)


class ScriptConn:
    def __init__(self, server: FakeServer, sock: socket.socket) -> None:
        self.server = server
        self.sock: socket.socket = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        """One line with its CRLF, or b"" at EOF."""
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except (OSError, ssl.SSLError):
                chunk = b""
            if not chunk:
                line, self.buf = self.buf, b""
                self.server.record(line)
                return line
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        self.server.record(line + b"\n")
        return line + b"\n"

    def expect(self, prefix: bytes) -> bytes:
        line = self.readline()
        if not line.upper().startswith(prefix.upper()):
            raise AssertionError(f"expected {prefix!r}, got {line!r}")
        return line

    def converse(self, *steps: tuple[bytes, bytes]) -> None:
        """For each (command, reply): expect the command, send the reply."""
        for command, reply in steps:
            self.expect(command)
            self.send(reply)

    def read_data(self) -> bytes:
        """The raw (still dot-stuffed) body up to and including CRLF.CRLF."""
        out = b""
        while not (out == b".\r\n" or out.endswith(b"\r\n.\r\n")):
            line = self.readline()
            if not line:
                break
            out += line
        return out

    def read_exact(self, n: int) -> bytes:
        """n raw bytes (a BDAT chunk), fewer only at EOF."""
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except (OSError, ssl.SSLError):
                chunk = b""
            if not chunk:
                break
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        self.server.record(out)
        return out

    def pending(self, wait: float = 0.2) -> bytes:
        """Whatever the client has sent but the script has not read yet
        (waiting up to `wait` seconds for more), without consuming it."""
        self.sock.settimeout(wait)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.buf += chunk
        except (OSError, ssl.SSLError):
            pass
        finally:
            self.sock.settimeout(None)
        return self.buf

    def starttls(self, ctx: ssl.SSLContext) -> None:
        self.buf = b""
        self.sock = ctx.wrap_socket(self.sock, server_side=True)

    def ehlo(self, extensions: list[bytes] = (), greeting: bytes = b"fake.example") -> None:  # type: ignore[assignment]
        """Reads EHLO and answers with the given keywords."""
        self.expect(b"EHLO")
        lines = [greeting, *extensions]
        out = b"".join(b"250-" + x + b"\r\n" for x in lines[:-1]) + b"250 " + lines[-1] + b"\r\n"
        self.send(out)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class FakeServer:
    def __init__(self, script: Callable[[ScriptConn], None], *, family: int = socket.AF_INET,
                 host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.script = script
        self.tls = tls
        self.received: list[bytes] = []
        self.errors: list[BaseException] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: list[ScriptConn] = []
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def record(self, line: bytes) -> None:
        with self._lock:
            self.received.append(line)

    @property
    def wire(self) -> bytes:
        """Everything the client sent, concatenated."""
        with self._lock:
            return b"".join(self.received)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.connections += 1
            t = threading.Thread(target=self._run, args=(client,), daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, client: socket.socket) -> None:
        conn = ScriptConn(self, client)
        self._conns.append(conn)
        try:
            if self.tls is not None:
                conn.sock = self.tls.wrap_socket(client, server_side=True)
            self.script(conn)
        except (ssl.SSLError, ConnectionError, BrokenPipeError):
            pass
        except BaseException as exc:  # kept for check()
            self.errors.append(exc)
        finally:
            conn.close()

    def check(self) -> None:
        if self.errors:
            raise self.errors[0]

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes accept()
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        for c in self._conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
