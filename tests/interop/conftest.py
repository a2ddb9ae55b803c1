from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import exim_harness  # noqa: E402
from harness import PostfixHarness, missing_requirements, serving  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def postfix() -> Iterator[PostfixHarness]:
    yield from serving(missing_requirements(), PostfixHarness)


@pytest.fixture(scope="session")
def exim() -> Iterator[exim_harness.EximHarness]:
    yield from serving(exim_harness.missing_requirements(), exim_harness.EximHarness)
