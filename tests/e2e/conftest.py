"""Every test in tests/e2e starts real dealer, relay, allocator or jobber processes on
loopback: the `e2e` marker is set here, by folder, not file by file."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.e2e)
