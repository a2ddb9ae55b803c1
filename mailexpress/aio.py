"""asyncio: `send_as`, `send_many` and `test_connector` as coroutines.

The C core releases the GIL around all its network I/O, so the work runs in
a few threads while the event loop goes on.  Sessions are kept in a small
`Pool` (one per `Config` object and event loop unless you make your own)
and reused by later sends.

Cancellation never leaves a session in an unknown state: a coroutine
cancelled before its turn sends nothing; one cancelled while its session is
talking to the server returns at once (``CancelledError``), the command in
flight finishes in its thread, the session is closed instead of going back
to the pool, and the operation's outcome is logged on the ``mailexpress``
logger (a message that was already on its way may have been delivered).
`send_many` stops at its next batch boundary.

Only the public API of mailexpress is used here.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from email.message import EmailMessage
from typing import Any, TypeVar

from .bulk import BulkResult, Progress
from .bulk import send_many as _send_many
from .client import SendResult, Session, connect
from .client import send_as as _send_as
from .config import Config
from .diagnose import ConnectorReport
from .diagnose import test_connector as _test_connector
from .errors import ConnectionLost, InputError

__all__ = ["Pool", "send_as", "send_many", "test_connector", "close"]

log = logging.getLogger("mailexpress")
T = TypeVar("T")

#: Sessions are not reused after this long idle (servers drop idle clients
#: after minutes: Postfix's smtpd_timeout is 300 s; Exchange's receive
#: connector ConnectionInactivityTimeout is 5 minutes).
DEFAULT_MAX_IDLE = 30.0
DEFAULT_SIZE = 4
#: A session is closed after this many messages and a new one opened: its
#: transcript (kept for diagnostics) grows with every message.  Servers cap
#: messages per connection too (Exchange's MaxMessagesPerConnection: 20 by
#: default); a session closed that way is replaced (see Pool).
DEFAULT_MAX_MESSAGES = 100


class _Abandoned(Exception):
    """Raised inside a worker thread to stop a send_many whose caller left."""


class _Job:
    """One operation handed to a worker thread; ``cancelled`` is set (under
    ``lock``) when the awaiting coroutine gave up on it."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.lock = threading.Lock()
        self.cancelled = False

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True


class Pool:
    """Up to ``size`` sessions to the connector ``config`` describes, used
    by at most ``size`` operations at a time (others wait their turn).

    An idle session is reused for the next `send_as` when it was idle less
    than ``max_idle`` seconds and has sent fewer than ``max_messages``; a reused session the server has meanwhile
    closed (idle timeout, its per-connection message limit: a 421 before
    anything of the message was accepted) is replaced and the message sent
    once more on a new connection.  ``async with Pool(cfg) as pool:``
    closes every session at the end; so does ``await pool.aclose()``.
    """

    def __init__(self, config: Config, *, size: int = DEFAULT_SIZE,
                 max_idle: float = DEFAULT_MAX_IDLE, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        if not isinstance(config, Config):
            raise InputError(f"config must be a mailexpress.Config, not {type(config).__name__}")
        if size < 1:
            raise InputError(f"size must be at least 1, not {size}")
        if max_messages < 1:
            raise InputError(f"max_messages must be at least 1, not {max_messages}")
        self.config = config
        self.size = size
        self.max_idle = max_idle
        self.max_messages = max_messages
        self._idle: list[tuple[Session, float, int]] = []
        self._lock = threading.Lock()
        self._slots: asyncio.Semaphore | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=size, thread_name_prefix="mailexpress-aio")
        self._closed = False
        #: sessions opened so far (for tests and tuning)
        self.connections = 0

    # -- sessions (worker threads only) ----------------------------------------

    def _checkout(self) -> tuple[Session, int]:
        """A session to use and how many messages it sent before: a
        fresh-enough idle one, or a new one (0)."""
        now = time.monotonic()
        stale: list[Session] = []
        found: tuple[Session, int] | None = None
        with self._lock:
            while self._idle:
                session, since, uses = self._idle.pop()
                if now - since < self.max_idle and session.state == "READY":
                    found = (session, uses)
                    break
                stale.append(session)
        for s in stale:
            s.close_quietly()
        if found is not None:
            return found
        return self._new_session(), 0

    def _new_session(self) -> Session:
        session = connect(self.config)
        with self._lock:
            self.connections += 1
        return session

    def _checkin(self, session: Session, job: _Job, uses: int) -> None:
        """Back to the pool when usable, under its message limit and its
        caller still waits; closed otherwise."""
        with job.lock:
            keep = not job.cancelled
        if keep and session.state == "READY" and uses < self.max_messages:
            with self._lock:
                if not self._closed:
                    self._idle.append((session, time.monotonic(), uses))
                    return
        session.close_quietly()

    def _send_as_work(self, job: _Job, args: tuple[Any, ...], kwargs: dict[str, Any]) -> SendResult:
        session, uses = self._checkout()
        try:
            try:
                return _send_as(self.config, *args, session=session, **kwargs)
            except ConnectionLost as err:
                # the server closed a pooled session before taking any of the
                # message (idle timeout, message limit): once more, anew
                if not (uses and getattr(err, "delivered", None) is False):
                    raise
                log.info("a pooled session was closed by the server (%s); sending on a new one", err)
                session.close()
                session, uses = self._new_session(), 0
                return _send_as(self.config, *args, session=session, **kwargs)
        finally:
            self._checkin(session, job, uses + 1)

    # -- running in threads ------------------------------------------------------

    async def _run(self, job: _Job, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise InputError("this Pool is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size)
        async with self._slots:
            if self._closed:          # closed while this one waited its turn
                raise InputError("this Pool is closed")
            loop = asyncio.get_running_loop()
            cfut = self._executor.submit(fn, job, *args)
            try:
                return await asyncio.wrap_future(cfut, loop=loop)
            except asyncio.CancelledError:
                job.cancel()
                if not cfut.cancel():        # already running: it finishes in its thread
                    cfut.add_done_callback(lambda f: _log_abandoned(job, f))
                raise

    async def send_as(self, sender: str | None = None, to: str | Iterable[str] | None = None,
                      subject: str = "", body: str | None = None, **kwargs: Any) -> SendResult:
        """`mailexpress.send_as` over a pooled session (same arguments but
        ``session``, same result and exceptions)."""
        if "session" in kwargs:
            raise InputError("aio.send_as takes its session from the pool; do not pass session=")
        return await self._run(_Job("send_as"), self._send_as_work, (sender, to, subject, body), kwargs)

    async def send_many(self, messages: Iterable[Mapping[str, Any] | EmailMessage], *,
                        progress: Callable[[Progress], object] | None = None,
                        **kwargs: Any) -> BulkResult:
        """`mailexpress.send_many` on a connection of its own (reconnects
        included), in a worker thread.  ``progress`` (a callable) is called on
        the event loop after each batch.  Cancelled, it stops at the next
        batch boundary (``batch_size`` messages, default 100): the batches
        already sent stay sent, and the log says how many."""
        loop = asyncio.get_running_loop()
        items = list(messages)       # read here, not in the thread
        job = _Job(f"send_many of {len(items)} message(s)")

        def report(p: Progress) -> None:
            with job.lock:
                if job.cancelled:
                    log.warning("aio.send_many cancelled after %d message(s) (%d sent, %d failed); "
                                "stopping before the next batch", p.done, p.sent, p.failed)
                    raise _Abandoned()
            if progress is not None:
                loop.call_soon_threadsafe(progress, p)

        def work(job_: _Job) -> BulkResult:
            return _send_many(self.config, items, progress=report, **kwargs)

        return await self._run(job, work)

    async def test_connector(self, **kwargs: Any) -> ConnectorReport:
        """`mailexpress.test_connector` in a worker thread (its own
        connections, closed when it is done)."""
        return await self._run(_Job("test_connector"),
                               lambda job_: _test_connector(self.config, **kwargs))

    async def aclose(self) -> None:
        """Closes the idle sessions; sessions in use close when their work ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for session, _since, _uses in idle:
            session.close_quietly()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (f"<mailexpress.aio.Pool {self.config.host}:{self.config.port} size={self.size} "
                f"idle={len(self._idle)}{' closed' if self._closed else ''}>")


def _log_abandoned(job: _Job, fut: concurrent.futures.Future[Any]) -> None:
    if fut.cancelled():
        return
    exc = fut.exception()
    if isinstance(exc, _Abandoned):
        return
    if exc is not None:
        log.warning("a cancelled %s went on to fail: %s: %s", job.what, type(exc).__name__, exc)
    else:
        log.warning("a cancelled %s went on to finish: %s", job.what,
                    str(fut.result()).splitlines()[0])


# -- the default pools: one per Config object and event loop -----------------

_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Pool]] = weakref.WeakKeyDictionary()


def _pool(config: Config) -> Pool:
    loop = asyncio.get_running_loop()
    pools = _pools.setdefault(loop, {})
    pool = pools.get(id(config))
    if pool is None or pool.config is not config or pool._closed:
        pool = pools[id(config)] = Pool(config)
    return pool


async def send_as(config: Config, sender: str | None = None, to: str | Iterable[str] | None = None,
                  subject: str = "", body: str | None = None, **kwargs: Any) -> SendResult:
    """`mailexpress.send_as` as a coroutine, over the default `Pool` of
    ``config`` (keyword arguments as there, but ``session``)."""
    return await _pool(config).send_as(sender, to, subject, body, **kwargs)


async def send_many(config: Config, messages: Iterable[Mapping[str, Any] | EmailMessage], *,
                    progress: Callable[[Progress], object] | None = None,
                    **kwargs: Any) -> BulkResult:
    """`mailexpress.send_many` as a coroutine (see `Pool.send_many`)."""
    return await _pool(config).send_many(messages, progress=progress, **kwargs)


async def test_connector(config: Config, **kwargs: Any) -> ConnectorReport:
    """`mailexpress.test_connector` as a coroutine (see `Pool.test_connector`)."""
    return await _pool(config).test_connector(**kwargs)


test_connector.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


async def close() -> None:
    """Closes the default pools of the running event loop (their idle sessions)."""
    pools = _pools.pop(asyncio.get_running_loop(), {})
    for pool in pools.values():
        await pool.aclose()
