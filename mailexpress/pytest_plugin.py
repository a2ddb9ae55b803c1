"""The mailexpress pytest plugin (registered through the ``pytest11`` entry
point: installing mailexpress is enough, no conftest needed).

Fixtures:
  exchange_connector          a running connector emulator for one test, set
                              up by the ``mailexpress_connector`` marker:
                              ``@pytest.mark.mailexpress_connector(preset="authoritative_only")``
  exchange_connector_factory  make several: ``factory(preset=..., users=[...], **knobs)``
  exchange_online             an emulated Exchange Online tenant after December
                              2026 (LOGIN refused, XOAUTH2 with the tenant's tokens)
  exchange_online_token       a valid access token (str) for its service mailbox
  exchange_online_token_provider  a ``token_provider`` giving such tokens
                              (``get_token(scope)``; counts ``requests``)
  mailexpress_config          the Config of ``--mailexpress-config PATH``, for live
                              checks against a real connector (tests using it
                              are skipped, with the reason, when no path is given)

Options: ``--mailexpress-config PATH``.
Markers: ``mailexpress_connector(preset=..., users=..., **knobs)``, ``mailexpress_live``
(the test needs ``--mailexpress-config``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from email.message import EmailMessage
from typing import Any

import pytest

from .config import Config, load_config

__all__ = ["Connector"]


class Connector:
    """A running emulator as a test sees it."""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator

    @property
    def config(self) -> Config:
        """A Config pointing at the emulator, trusting its certificate, as its
        first user (the service account)."""
        return self.emulator.config()  # type: ignore[no-any-return]

    @property
    def mailbox(self) -> str:
        """The service account's address (the mailbox its tokens are for)."""
        return str(next(iter(self.emulator.users.values())).address)

    def issue_token(self, user: str | None = None, **options: Any) -> str:
        """A token from the emulator's tenant for ``user`` (default: the
        service mailbox); ``expires_in=-60``, ``audience=...``, ``roles=[]``
        make the bad ones."""
        return str(self.emulator.issue_token(user, **options))

    def token_provider(self, user: str | None = None, **options: Any) -> Any:
        """A ``token_provider`` for mailexpress getting tokens from the
        emulator's tenant (an ``EmulatorTokenProvider``)."""
        return self.emulator.token_provider(user, **options)

    def oauth_config(self, user: str | None = None, **overrides: Any) -> Config:
        """A Config authenticating with a token (XOAUTH2) as ``user``."""
        return self.emulator.oauth_config(user, **overrides)  # type: ignore[no-any-return]

    def msal_config(self, user: str | None = None, **overrides: Any) -> Config:
        """A Config with ``oauth_*`` settings: real MSAL gets the token from the
        emulator's Entra-shaped token endpoint (set ``REQUESTS_CA_BUNDLE`` to
        ``emulator.ca_file``, e.g. with ``monkeypatch.setenv``)."""
        return self.emulator.msal_config(user, **overrides)  # type: ignore[no-any-return]

    def config_for(self, username: str, **overrides: Any) -> Config:
        user = self.emulator.users[username.lower()]
        return self.emulator.config(username=user.username, password=user.password,  # type: ignore[no-any-return]
                                    from_address=user.address, **overrides)

    @property
    def users(self) -> list[Any]:
        return list(self.emulator.users.values())

    @property
    def messages(self) -> list[Any]:
        """What the emulator accepted: ``ReceivedMessage`` with ``.data``
        (raw bytes), ``.message`` (an EmailMessage), ``.mail_from``, ``.rcpt_tos``."""
        return list(self.emulator.messages)

    @property
    def email_messages(self) -> list[EmailMessage]:
        return [m.message for m in self.emulator.messages]

    def __repr__(self) -> str:
        preset = self.emulator.preset_name or "custom"
        return f"<Connector {preset} at {self.emulator.host}:{self.emulator.port}, {len(self.messages)} messages>"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mailexpress")
    group.addoption("--mailexpress-config", metavar="PATH", default=None,
                    help="mailexpress TOML config of a real connector, for tests marked mailexpress_live")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mailexpress_connector(preset='exchange_client', users=None, **knobs): "
                                       "how the exchange_connector fixture's emulator is set up")
    config.addinivalue_line("markers", "mailexpress_live: needs a real connector (--mailexpress-config PATH)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("mailexpress_live") and not item.config.getoption("--mailexpress-config"):
        pytest.skip("live connector test: give --mailexpress-config PATH to run it")


def _make(preset: str | None, users: Sequence[Any] | None, knobs: dict[str, Any]) -> Connector:
    from .testing import ConnectorEmulator
    if preset is None and users is not None:
        em = ConnectorEmulator(users=users, **knobs)
    else:
        em = ConnectorEmulator.preset(preset or "exchange_client", users=users, **knobs)
    return Connector(em.start())


@pytest.fixture
def exchange_connector_factory() -> Iterator[Callable[..., Connector]]:
    started: list[Connector] = []

    def factory(preset: str | None = "exchange_client", users: Sequence[Any] | None = None,
                **knobs: Any) -> Connector:
        c = _make(preset, users, knobs)
        started.append(c)
        return c

    yield factory
    for c in started:
        c.emulator.stop()


@pytest.fixture
def exchange_connector(request: pytest.FixtureRequest,
                       exchange_connector_factory: Callable[..., Connector]) -> Connector:
    marker = request.node.get_closest_marker("mailexpress_connector")
    kwargs = dict(marker.kwargs) if marker else {}
    if marker and marker.args:
        kwargs.setdefault("preset", marker.args[0])
    return exchange_connector_factory(**kwargs)


@pytest.fixture
def exchange_online(exchange_connector_factory: Callable[..., Connector]) -> Connector:
    return exchange_connector_factory("exchange_online")


@pytest.fixture
def exchange_online_token(exchange_online: Connector) -> str:
    return exchange_online.issue_token()


@pytest.fixture
def exchange_online_token_provider(exchange_online: Connector) -> Any:
    return exchange_online.token_provider()


@pytest.fixture(scope="session")
def mailexpress_config(pytestconfig: pytest.Config) -> Config:
    path = pytestconfig.getoption("--mailexpress-config")
    if not path:
        pytest.skip("no real connector configured: give --mailexpress-config PATH")
    return load_config(path)
