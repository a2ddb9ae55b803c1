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


@pytest.fixture(scope="session")
def postfix() -> Iterator[PostfixHarness]:
    why = missing_requirements()
    if why:
        pytest.skip(f"interop suite cannot run here: {why}")
    h = PostfixHarness().start()
    try:
        yield h
    finally:
        h.stop()
        left = h.leftover_processes()
        assert not left, f"processes left behind: {left}"


@pytest.fixture(scope="session")
def exim() -> Iterator[exim_harness.EximHarness]:
    why = exim_harness.missing_requirements()
    if why:
        pytest.skip(f"Exim interop cannot run here: {why}")
    h = exim_harness.EximHarness().start()
    try:
        yield h
    finally:
        h.stop()
        left = h.leftover_processes()
        assert not left, f"processes left behind: {left}"
