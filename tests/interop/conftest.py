from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import exim_harness  # noqa: E402
from harness import PostfixHarness, missing_requirements  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)


def _serving(why: str | None, make):  # type: ignore[no-untyped-def]
    """Starts a harness for the session, checks it left no process behind."""
    if why:
        pytest.skip(f"interop suite cannot run here: {why}")
    h = make().start()
    try:
        yield h
    finally:
        h.stop()
        left = h.leftover_processes()
        assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="session")
def postfix() -> Iterator[PostfixHarness]:
    yield from _serving(missing_requirements(), PostfixHarness)


@pytest.fixture(scope="session")
def exim() -> Iterator[exim_harness.EximHarness]:
    yield from _serving(exim_harness.missing_requirements(), exim_harness.EximHarness)
