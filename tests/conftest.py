from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakeserver import FakeServer  # noqa: E402

import mailexpress as mx  # noqa: E402
from mailexpress.testing import ConnectorEmulator  # noqa: E402
from mailexpress.testing.certs import test_certificates  # noqa: E402

from support import ANY, SELF, SVC  # noqa: E402


def _stopped_after(build: Callable[..., ConnectorEmulator]) -> Iterator[Callable[..., ConnectorEmulator]]:
    """A fixture's body: a factory starting build(...)'s emulators, all
    stopped after the test."""
    started: list[ConnectorEmulator] = []

    def make(*args: object, **kwargs: object) -> ConnectorEmulator:
        em = build(*args, **kwargs).start()
        started.append(em)
        return em

    yield make
    for em in started:
        em.stop()


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., ConnectorEmulator]]:
    def build(**kwargs: object) -> ConnectorEmulator:
        kwargs.setdefault("users", [SVC, ANY, SELF])
        return ConnectorEmulator(**kwargs)  # type: ignore[arg-type]
    yield from _stopped_after(build)


@pytest.fixture
def preset() -> Iterator[Callable[..., ConnectorEmulator]]:
    """preset(name="exchange_online", **overrides): a started emulator set up
    as PRESETS[name], stopped after the test."""
    def build(name: str = "exchange_online", **kw: object) -> ConnectorEmulator:
        return ConnectorEmulator.preset(name, **kw)  # type: ignore[arg-type]
    yield from _stopped_after(build)


@pytest.fixture
def emulator(emulator_factory: Callable[..., ConnectorEmulator]) -> ConnectorEmulator:
    return emulator_factory()


@pytest.fixture
def cfg(emulator: ConnectorEmulator) -> mx.Config:
    return emulator.config(username=SVC.username, password=SVC.password, from_address=SVC.address)


@pytest.fixture
def fake_server() -> Iterator[Callable[..., FakeServer]]:
    servers: list[FakeServer] = []

    def make(script: Callable, **kwargs: object) -> FakeServer:  # type: ignore[type-arg]
        srv = FakeServer(script, **kwargs)  # type: ignore[arg-type]
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.close()
    for srv in servers:
        srv.check()


@pytest.fixture(scope="session")
def certs():  # type: ignore[no-untyped-def]
    return test_certificates()
