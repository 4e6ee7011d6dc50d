"""Jobs yield to a busy machine. A slot's worker at the priority a lender gives it
(niceness 19, and SCHED_IDLE where allowed: sandbox/_worker.py) gets almost none of a CPU
that another process keeps busy; with BOREDNET_JOB_PRIORITY=normal, as every other test
runs its jobs (tests/conftest.py), it gets about half. The two runs differ only in that.

A behaviour check with a wide margin, not a benchmark: the worker and a CPU hog are
pinned to one CPU, the worker spins in a job, and their CPU times are compared once the
hog has had a second or so. CFS gives a SCHED_IDLE task about 3/1027 of a contended CPU
and a niceness-19 one about 15/1039; an equal one half. Other load on the machine slows
both alike and changes none of these shares much."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wasmtime

import sandbox
from protocol import Limits, Status
from sandbox._worker import PRIORITY_ENV
from tests.helpers import PY, collect_one, cpu_s, wait_for
from tests.wat import printing

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="CPU affinity and /proc are Linux's"
)

HELLO = printing("ready\n")
SPIN = wasmtime.wat2wasm('(module (func (export "_start") (loop $l (br $l))))')


def sha(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


def pin(pid: int, cpu: int) -> None:
    """Every thread of process `pid` onto `cpu` (sched_setaffinity moves one thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def shares(cache_root: Path) -> tuple[float, float]:
    """CPU seconds of a spinning job's worker and of a hog beside it on one CPU."""
    cpu = min(os.sched_getaffinity(0))
    with sandbox.Slots(1, cache_root) as slots:
        slots.start("warm", sha(HELLO), [], b"", Limits())
        key, o = collect_one(slots)  # started up: its start-up is not measured
        assert (key, o.status) == ("warm", Status.OK), o.detail
        worker = slots._workers[0].process.pid
        pin(worker, cpu)
        hog = subprocess.Popen([PY, "-c", "while 1: pass"])
        try:
            pin(hog.pid, cpu)
            slots.start("spin", sha(SPIN), [], b"", Limits(time_s=3600))
            w0, h0 = cpu_s(worker), cpu_s(hog.pid)
            wait_for(lambda: cpu_s(hog.pid) - h0 >= 1.5, 120, "the hog to have 1.5 CPU s")
            w, h = cpu_s(worker) - w0, cpu_s(hog.pid) - h0
            # it wanted the CPU all along: still running, its worker alive
            assert slots.collect() == [] and slots._workers[0].process.is_alive()
        finally:
            hog.kill()
            hog.wait()
        slots.cancel("spin")
    return w, h


@pytest.fixture
def cache_root(tmp_path) -> Path:
    cache = sandbox.ModuleCache(tmp_path)
    for wasm in (HELLO, SPIN):
        cache.put(wasm)
    return tmp_path


def test_jobs_yield_to_a_busy_cpu_and_the_tests_lift_that(cache_root, monkeypatch):
    monkeypatch.delenv(PRIORITY_ENV)  # as a lender runs jobs
    job, hog = shares(cache_root)
    assert job < 0.1 * hog, f"at idle priority the job had {job:.2f} CPU s to the hog's {hog:.2f}"
    monkeypatch.setenv(PRIORITY_ENV, "normal")  # as the tests run them
    job, hog = shares(cache_root)
    assert job > 0.5 * hog, f"at normal priority the job had {job:.2f} CPU s to the hog's {hog:.2f}"
