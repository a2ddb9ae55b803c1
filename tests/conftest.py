from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fakeserver import FakeServer  # noqa: E402

import mailexpress as mx  # noqa: E402
from mailexpress.testing import ConnectorEmulator, User  # noqa: E402
from mailexpress.testing.certs import test_certificates  # noqa: E402

SVC = User("svc-mailer", "S3cret-pässword!", "svc-mailer@corp.example", rights="authoritative_domain")
ANY = User("svc-any", "any-password-42", "svc-any@corp.example", rights="any")
SELF = User("svc-self", "self-password-42", "svc-self@corp.example", rights="self")
ALL_PASSWORDS = (SVC.password, ANY.password, SELF.password)


@pytest.fixture
def emulator_factory() -> Iterator[Callable[..., ConnectorEmulator]]:
    started: list[ConnectorEmulator] = []

    def make(**kwargs: object) -> ConnectorEmulator:
        kwargs.setdefault("users", [SVC, ANY, SELF])
        em = ConnectorEmulator(**kwargs).start()  # type: ignore[arg-type]
        started.append(em)
        return em

    yield make
    for em in started:
        em.stop()


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


def plain_session(port: int, host: str = "127.0.0.1", **kw: object) -> mx.Session:
    """A Session without TLS to a fake server, short timeouts."""
    kw.setdefault("security", "none")
    kw.setdefault("timeouts", {"connect": 5, "banner": 5, "ehlo": 5, "mail": 5, "rcpt": 5,
                               "data": 5, "end_of_data": 5, "command": 5, "quit": 5,
                               "auth": 5, "starttls": 5, "tls": 5})
    kw.setdefault("ehlo_name", "client.example")
    return mx.Session(host, port, **kw)  # type: ignore[arg-type]
