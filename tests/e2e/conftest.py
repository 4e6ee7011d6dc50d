"""Every test in tests/e2e starts real dealer, relay, allocator or jobber processes on
loopback: the `e2e` marker is set here, by folder, not file by file."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def short_tmp():
    """A temporary directory of a short path (`tmp_path` under xdist has some 80 bytes):
    for tests that keep jobbers' data directories where a person would, inside their
    working directory; a jobber's control socket there needs a path of at most 107 bytes
    (jobber._control). Request it before `procs`, so that the processes are stopped
    before it is removed."""
    path = Path(tempfile.mkdtemp(prefix="bn-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
