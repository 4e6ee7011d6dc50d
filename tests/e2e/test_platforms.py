"""End to end: a float task on real jobbers, its replicas voting within their platform."""

from __future__ import annotations

import platform

import pytest

import sandbox
from dealer._core import Sent
from dealer._reader import ReadOnly
from tests.helpers import free_port

CANONICAL = "7ff8000000000000"
# a NaN as this CPU makes it (the payload's sqrt(-1)); None where not written down here
NATIVE = {"x86_64": "fff8000000000000", "amd64": "fff8000000000000"}.get(platform.machine().lower())


@pytest.mark.parametrize("cross", [False, True], ids=["per-platform", "cross-platform"])
def test_a_float_task_with_redundancy_2_is_accepted(procs, tmp_path, cross):
    port = free_port()
    db = tmp_path / "floats.sqlite"
    extra = ["--cross-platform"] if cross else []
    dealer = procs.dealer("dealer", "../tests/task_files/floats.py", *extra, port=port, db=db)
    addr = f"127.0.0.1:{port}"
    jobbers = [procs.jobber(f"j{i}", addr, extra=("--max-idle", "5")) for i in (1, 2)]
    assert dealer.wait(120) == 0, dealer.stderr
    report = dealer.stdout.strip().splitlines()[-1]
    nan = report.rsplit("nan ", 1)[1]
    assert report.startswith("4 accepted, 0 failed;"), report
    if cross:
        assert nan == CANONICAL  # the cross-platform task's jobs canonicalize NaNs
    elif NATIVE is not None:
        assert nan == NATIVE  # the others run on the native engine
    for j in jobbers:
        assert j.wait(60) == 0 or "never reached any dealer" in j.stderr, j.stderr
    with ReadOnly(db) as journal:
        sent = [r for r in journal.records() if isinstance(r, Sent)]
    assert len(sent) >= 8 and len({r.machine for r in sent}) == 2
    # each replica recorded with the platform it votes within: the jobbers' own, or with
    # canonical NaNs how they count fuel (host.nan_fuel)
    assert {r.platform for r in sent} == {sandbox.NAN_FUEL if cross else sandbox.PLATFORM}
