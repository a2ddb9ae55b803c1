"""mailexpress.aio against the connector emulator: coroutines over a pool of
sessions in threads; cancellation leaves no session in an unknown state."""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support import SVC

import mailexpress as mx
from mailexpress import aio
from mailexpress.testing import ConnectorEmulator


class SlowEmulator(ConnectorEmulator):
    """Waits ``delay`` seconds at end of data before answering; ``at_end``
    is set when a message has been read and the wait begins."""

    delay = 0.0

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.at_end = threading.Event()
        self.closed_connections = 0

    def _finish_message(self, conn: Any, s: Any, data: bytes) -> None:
        self.at_end.set()
        time.sleep(self.delay)
        super()._finish_message(conn, s, data)

    def _serve_safely(self, client: Any) -> None:
        try:
            super()._serve_safely(client)
        finally:
            self.closed_connections += 1


@pytest.fixture
def slow() -> Iterator[SlowEmulator]:
    em = SlowEmulator(users=[SVC]).start()
    yield em
    em.stop()


def _cfg(em: ConnectorEmulator) -> mx.Config:
    return em.config(username=SVC.username, password=SVC.password, from_address=SVC.address)


def _wait(cond: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_concurrent_sends_share_a_bounded_pool(emulator: ConnectorEmulator, cfg: mx.Config) -> None:
    async def main() -> tuple[list[mx.SendResult], int]:
        async with aio.Pool(cfg, size=2) as pool:
            results = await asyncio.gather(*(pool.send_as(to=f"u{i}@partner.example", subject=f"n{i}", body="b")
                                             for i in range(12)))
            return list(results), pool.connections

    results, connections = asyncio.run(main())
    assert all(r.ok for r in results) and len({r.message_id for r in results}) == 12
    assert 1 <= connections <= 2
    assert sorted(m.message["Subject"] for m in emulator.messages) == sorted(f"n{i}" for i in range(12))


def test_module_functions_reuse_one_session(emulator: ConnectorEmulator, cfg: mx.Config) -> None:
    async def main() -> None:
        for i in range(3):
            res = await aio.send_as(cfg, to="bob@partner.example", subject=f"s{i}", body="b")
            assert res.accepted == ("bob@partner.example",)
        report = await aio.test_connector(cfg)
        assert report.check("auth").status == "pass"
        bulk = await aio.send_many(cfg, [{"to": "bob@partner.example", "subject": f"m{i}"} for i in range(7)])
        assert bulk.ok and len(bulk.sent) == 7
        await aio.close()

    before = emulator.connections
    asyncio.run(main())
    # 1 pooled session for three send_as, test_connector's own (2), send_many's own (1)
    assert emulator.connections - before == 1 + 2 + 1
    assert len(emulator.messages) == 10


def test_errors_are_the_same_as_send_as(emulator: ConnectorEmulator, cfg: mx.Config) -> None:
    async def main() -> None:
        with pytest.raises(mx.SenderRefused) as info:
            await aio.send_as(cfg, "ceo@elsewhere.example", to="bob@partner.example", body="x")
        assert info.value.code == 550
        # the session is still good for the next message
        res = await aio.send_as(cfg, to="bob@partner.example", body="y")
        assert res.ok
        with pytest.raises(mx.InputError, match="session"):
            await aio.send_as(cfg, to="bob@partner.example", session=None)
        await aio.close()

    asyncio.run(main())
    assert emulator.connections == 1


def test_a_pooled_session_the_server_closed_is_replaced(emulator_factory: Callable[..., ConnectorEmulator]) -> None:
    em = emulator_factory(max_messages_per_connection=2)
    cfg = _cfg(em)

    async def main() -> int:
        async with aio.Pool(cfg, size=1) as pool:
            for i in range(5):
                await pool.send_as(to="bob@partner.example", subject=f"r{i}", body="b")
            return pool.connections

    assert asyncio.run(main()) == 3
    # each message exactly once
    assert [m.message["Subject"] for m in em.messages] == [f"r{i}" for i in range(5)]


def test_stale_idle_sessions_are_not_reused(emulator: ConnectorEmulator, cfg: mx.Config) -> None:
    async def main() -> int:
        async with aio.Pool(cfg, size=1, max_idle=0.0) as pool:
            await pool.send_as(to="bob@partner.example", body="1")
            await pool.send_as(to="bob@partner.example", body="2")
            return pool.connections

    assert asyncio.run(main()) == 2


def test_the_event_loop_runs_while_a_send_waits(slow: SlowEmulator) -> None:
    slow.delay = 0.6
    ticks: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> None:
        stop = asyncio.Event()
        t = asyncio.create_task(ticker(stop))
        async with aio.Pool(_cfg(slow)) as pool:
            await pool.send_as(to="bob@partner.example", body="slow")
        stop.set()
        await t

    asyncio.run(main())
    assert len(ticks) > 20              # 0.6 s of server delay, 10 ms ticks
    assert max(b - a for a, b in zip(ticks, ticks[1:])) < 0.3


def test_cancel_mid_send_closes_the_session(slow: SlowEmulator, caplog: pytest.LogCaptureFixture) -> None:
    slow.delay = 1.0
    cfg = _cfg(slow)
    caplog.set_level(logging.WARNING, logger="mailexpress")

    async def main() -> tuple[float, aio.Pool]:
        pool = aio.Pool(cfg, size=1)
        task = asyncio.create_task(pool.send_as(to="bob@partner.example", subject="cut", body="b"))
        await asyncio.get_running_loop().run_in_executor(None, slow.at_end.wait, 10)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started, pool

    took, pool = asyncio.run(main())
    assert took < 0.5                   # the coroutine does not wait for the server
    # the command ran to its end in its thread; the session was then closed, not pooled
    _wait(lambda: slow.closed_connections == 1)
    assert pool._idle == []
    assert any("cancelled send_as went on to finish" in r.getMessage() for r in caplog.records)

    async def again() -> None:
        await pool.send_as(to="bob@partner.example", subject="next", body="b")
        await pool.aclose()

    slow.delay = 0.0
    asyncio.run(again())
    assert pool.connections == 2        # a new session, never the cut-off one
    assert [m.message["Subject"] for m in slow.messages] == ["cut", "next"]


def test_cancel_before_its_turn_sends_nothing(slow: SlowEmulator) -> None:
    slow.delay = 0.5
    cfg = _cfg(slow)

    async def main() -> None:
        async with aio.Pool(cfg, size=1) as pool:
            first = asyncio.create_task(pool.send_as(to="bob@partner.example", subject="first", body="b"))
            second = asyncio.create_task(pool.send_as(to="bob@partner.example", subject="second", body="b"))
            await asyncio.sleep(0.1)
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            assert (await first).ok

    asyncio.run(main())
    time.sleep(0.3)
    assert [m.message["Subject"] for m in slow.messages] == ["first"]


def test_cancel_send_many_stops_at_a_batch_boundary(slow: SlowEmulator, caplog: pytest.LogCaptureFixture) -> None:
    slow.delay = 0.02
    cfg = _cfg(slow)
    caplog.set_level(logging.WARNING, logger="mailexpress")
    seen: list[mx.Progress] = []

    async def main() -> None:
        msgs = [{"to": "bob@partner.example", "subject": f"b{i}", "body": "x"} for i in range(200)]
        task = asyncio.create_task(aio.send_many(cfg, msgs, batch_size=10, progress=seen.append))
        while not seen:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await aio.close()

    asyncio.run(main())
    _wait(lambda: slow.closed_connections == 1)
    got = len(slow.messages)
    assert 10 <= got < 200 and got % 10 == 0
    assert any("send_many cancelled after" in r.getMessage() for r in caplog.records)
    assert seen[0].done == 10            # progress ran on the loop, per batch


def test_bad_pool_arguments() -> None:
    with pytest.raises(mx.InputError, match="size"):
        aio.Pool(mx.Config(host="127.0.0.1", use_auth=False), size=0)
    with pytest.raises(mx.InputError, match="max_messages"):
        aio.Pool(mx.Config(host="127.0.0.1", use_auth=False), max_messages=0)
    with pytest.raises(mx.InputError, match="Config"):
        aio.Pool("mailexpress.toml", size=1)  # type: ignore[arg-type]


def test_a_session_is_replaced_after_max_messages(emulator: ConnectorEmulator, cfg: mx.Config) -> None:
    async def main() -> int:
        async with aio.Pool(cfg, size=1, max_messages=2) as pool:
            for i in range(5):
                await pool.send_as(to="bob@partner.example", subject=f"m{i}", body="b")
            return pool.connections

    assert asyncio.run(main()) == 3
    assert [m.message["Subject"] for m in emulator.messages] == [f"m{i}" for i in range(5)]


def test_a_closed_pool_refuses_work(slow: SlowEmulator) -> None:
    slow.delay = 0.3
    cfg = _cfg(slow)

    async def main() -> None:
        pool = aio.Pool(cfg, size=1)
        first = asyncio.create_task(pool.send_as(to="bob@partner.example", subject="first", body="b"))
        waiting = asyncio.create_task(pool.send_as(to="bob@partner.example", subject="second", body="b"))
        await asyncio.sleep(0.1)
        await pool.aclose()
        assert (await first).ok               # work under way finishes
        with pytest.raises(mx.InputError, match="closed"):
            await waiting
        with pytest.raises(mx.InputError, match="closed"):
            await pool.send_as(to="bob@partner.example", body="late")

    asyncio.run(main())
    _wait(lambda: slow.closed_connections == 1)   # the session was closed, not pooled
    assert [m.message["Subject"] for m in slow.messages] == ["first"]
