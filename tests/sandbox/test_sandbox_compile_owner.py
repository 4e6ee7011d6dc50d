"""Compiling obeys the owner: the compile memory fence follows the owner's memory per
job, and a module that failed to compile is remembered (by hash and fence) and given
back at once, across restarts, without compiling again."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import sandbox
from protocol import Limits, Status
from sandbox import _cache, _slots
from tests.helpers import PY, ROOT, collect_one
from tests.wat import module, nested_blocks

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="rlimits and /proc are Linux's")

# wasmtime refuses it (local.get of a local that does not exist); the pre-check passes it
NOT_VALID = module(1, b"\x00\x20\x05\x1a\x0b")
# a few MB to compile: past a 16 MiB fence, well within 512 MiB (0.3 s)
DEEP = nested_blocks(1, 50_000)
SHA = "ab" * 32
OTHER = "cd" * 32


# --- the failed-compile memory, on its own ------------------------------------------


def test_a_fence_independent_failure_applies_to_every_job_and_survives_a_restart(tmp_path):
    cache = sandbox.ModuleCache(tmp_path)
    assert cache.failure(SHA, True, 64, 30.0) is None
    cache.remember_failure(SHA, True, Status.INVALID, "not a valid module: nonsense")
    again = sandbox.ModuleCache(tmp_path)  # a restarted jobber's cache
    want = (Status.INVALID, "not a valid module: nonsense")
    assert again.failure(SHA, True, 64, 30.0) == want
    assert again.failure(SHA, True, 2048, 600.0) == want  # larger fences change nothing
    assert again.failure(SHA, False, 64, 30.0) is None  # per engine: native not tried
    assert again.failure(OTHER, True, 64, 30.0) is None
    assert again.failures() == 1


def test_a_memory_failure_applies_only_to_fences_no_larger(tmp_path):
    cache = sandbox.ModuleCache(tmp_path)
    cache.remember_failure(SHA, True, Status.MEMORY, "fence of 64", memory_mb=64)
    assert cache.failure(SHA, True, 64, 30.0) == (Status.MEMORY, "fence of 64")
    assert cache.failure(SHA, True, 32, 30.0) == (Status.MEMORY, "fence of 64")
    assert cache.failure(SHA, True, 65, 30.0) is None  # the owner raised it: compile again
    # a failure under a smaller fence does not replace the one under a larger
    cache.remember_failure(SHA, True, Status.MEMORY, "fence of 16", memory_mb=16)
    assert cache.failure(SHA, True, 64, 30.0) == (Status.MEMORY, "fence of 64")
    cache.remember_failure(SHA, True, Status.MEMORY, "fence of 128", memory_mb=128)
    assert cache.failure(SHA, True, 100, 30.0) == (Status.MEMORY, "fence of 128")


def test_a_time_failure_applies_to_shorter_limits_and_expires(tmp_path, monkeypatch):
    cache = sandbox.ModuleCache(tmp_path)
    cache.remember_failure(SHA, True, Status.TIME, "took longer than 5 s", compile_s=5.0)
    assert cache.failure(SHA, True, 64, 5.0) == (Status.TIME, "took longer than 5 s")
    assert cache.failure(SHA, True, 64, 1.0) is not None
    assert cache.failure(SHA, True, 64, 6.0) is None  # more time now: try again
    later = time.time() + _cache.TIME_FAILURE_TTL_S + 1
    monkeypatch.setattr(_cache.time, "time", lambda: later)
    assert cache.failure(SHA, True, 64, 5.0) is None  # an hour on: try again


def test_the_memory_is_bounded_and_drops_the_oldest(tmp_path, monkeypatch):
    monkeypatch.setattr(_cache, "MAX_FAILED", 3)
    cache = sandbox.ModuleCache(tmp_path)
    hashes = [f"{i:02x}" * 32 for i in range(5)]
    for i, h in enumerate(hashes):
        cache.remember_failure(h, i % 2 == 0, Status.INVALID, f"bad {i}", memory_mb=None)
        time.sleep(0.01)  # distinct modification times, oldest first
    assert cache.failures() == 3
    kept = [h for i, h in enumerate(hashes) if cache.failure(h, i % 2 == 0, 64, 30.0)]
    assert kept == hashes[2:]
    long = "x" * 10_000
    cache.remember_failure(hashes[0], True, Status.INVALID, long)
    assert cache.failure(hashes[0], True, 64, 30.0)[1] == "x" * _cache.MAX_FAILED_DETAIL


def test_a_damaged_or_foreign_record_is_removed_and_compiled_again(tmp_path):
    cache = sandbox.ModuleCache(tmp_path)
    cache.remember_failure(SHA, True, Status.INVALID, "bad")
    path = next((tmp_path / "failed").rglob(f"{SHA}.json"))
    for text in ("{not json", json.dumps({"v": 99, "status": "invalid"}), '{"v": 1}'):
        path.write_text(text)
        assert cache.failure(SHA, True, 64, 30.0) is None
        assert not path.exists()


def test_a_module_that_compiles_is_forgotten_as_failed(tmp_path, factor_wasm):
    cache = sandbox.ModuleCache(tmp_path)
    sha = cache.put(factor_wasm)
    cache.remember_failure(sha, True, Status.MEMORY, "fence of 16", memory_mb=16)
    cache.build(sha, True)
    assert cache.failure(sha, True, 16, 30.0) is None


# --- in slots ---------------------------------------------------------------------------


def test_an_invalid_module_is_remembered_and_given_back_at_once(tmp_path):
    root = tmp_path / "cache"
    sha = sandbox.ModuleCache(root).put(NOT_VALID)
    with sandbox.Slots(1, root) as slots:
        slots.start("first", sha, [], b"", Limits())
        key, first = collect_one(slots)
        assert (key, first.status, first.fuel) == ("first", Status.INVALID, 0)
        assert first.detail.startswith("not a valid module: ")
    with sandbox.Slots(1, root) as slots:  # a restart: a fresh process, the same cache
        worker = slots._workers[0]
        started = time.monotonic()
        slots.start("again", sha, [], b"", Limits())
        assert slots.running() == []  # no worker was given it
        key, again = collect_one(slots)
        assert time.monotonic() - started < 0.5
        assert (key, again.status, again.fuel) == ("again", Status.INVALID, 0)
        assert again.detail == f"{first.detail} (remembered)"
        assert worker.compiling is None and worker.key is None


@linux_only
def test_a_memory_failure_is_remembered_until_the_fence_is_raised(tmp_path):
    root = tmp_path / "cache"
    sha = sandbox.ModuleCache(root).put(DEEP)
    with sandbox.Slots(1, root, compile_memory_mb=16) as slots:
        slots.start("small", sha, [], b"", Limits(time_s=60))
        key, o = collect_one(slots)
        # below the fixed fence, the owner's limit stopped it: given back unrun, not failed
        assert (key, o.status) == ("small", Status.ABANDONED)
        assert o.detail.startswith(
            "refused: compiling it needs more than the 16 MiB this machine allows: "
            "compiling the module took more than the compile memory fence of 16 MiB"
        )
        slots.start("again", sha, [], b"", Limits(time_s=60))
        key, o = collect_one(slots)
        assert (key, o.status) == ("again", Status.ABANDONED)
        assert o.detail.endswith("(remembered)")
        slots.compile_memory_mb = 512  # the owner gave more: it is compiled, and runs
        slots.start("more", sha, [], b"", Limits(time_s=60))
        key, o = collect_one(slots)
        assert (key, o.status, o.detail) == ("more", Status.OK, "")
    assert sandbox.ModuleCache(root).failure(sha, True, 16, 60.0) is None


def probe(shape: str, fence_mb: int, repeat: int = 1) -> dict:
    """tests/compile_probe.py in a process of its own (its workers' peak is its own)."""
    out = subprocess.run(
        [PY, "-m", "tests.compile_probe", shape, str(fence_mb), str(repeat)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@linux_only
@pytest.mark.parametrize("shape", ["blocks", "data"])
def test_compile_shapes_within_the_caps_end_memory_under_a_small_owner_fence(shape):
    """Measured before the fence followed the owner (jobber --memory 64, the fixed 2 GiB
    fence): blocks 1,088 MB and 4.7 s, data 1,253 MB and 18.5 s of CPU, both MEMORY."""
    base = probe("hello", 64)
    got = probe(shape, 64, repeat=2)
    first, second = got["jobs"]
    assert first["status"] == second["status"] == "abandoned"  # the owner's fence: given back
    assert first["detail"].startswith(
        "refused: compiling it needs more than the 64 MiB this machine allows: "
        "compiling the module took more than the compile memory fence of 64 MiB"
    )
    assert second["detail"] == first["detail"] + " (remembered)"
    assert second["wall_s"] < 0.5  # given back, not compiled again
    # what compiling added to the worker stays within the owner's 64 MiB (and a little
    # that is not data: stacks, the library's pages)
    grown_mb = got["workers_peak_mb"] - base["workers_peak_mb"]
    assert grown_mb <= 64 + 16, got
    assert got["workers_cpu_s"] < 15, got


# --- a failed compile under the owner's fences: given back, or the payload's ------------


@pytest.mark.parametrize(
    ("status", "detail", "fence_mb", "given_back"),
    [
        (Status.MEMORY, _slots.COMPILE_MEMORY_DETAIL + " 64 MiB", 64, True),
        (Status.MEMORY, _slots.COMPILE_MEMORY_DETAIL + " 2047 MiB", 2047, True),
        # at the fixed fence the payload is too costly for any machine: its own failure
        (Status.MEMORY, _slots.COMPILE_MEMORY_DETAIL + " 2048 MiB", 2048, False),
        (Status.MEMORY, _slots.COMPILE_MEMORY_DETAIL + " 2048 MiB (remembered)", 64, False),
        (Status.MEMORY, _slots.COMPILE_MEMORY_DETAIL + " many MiB", 64, False),
        # running out of the job's own memory is the payload's, whatever the fence
        (Status.MEMORY, "memory limit of 16 MiB reached", 64, False),
        (Status.TIME, "compiling the module took longer than 5 s", 64, False),
    ],
)
def test_a_compile_stopped_by_the_owner_is_given_back_unrun(status, detail, fence_mb, given_back):
    """Read from the fence the detail names: a failure remembered at the fixed fence stays
    the payload's after the owner lowers theirs."""
    o = _slots._owner_fenced(sandbox.Outcome(status, b"", 0, 0.1, detail))
    if given_back:
        assert o.status is Status.ABANDONED
        assert o.detail == (
            f"refused: compiling it needs more than the {fence_mb} MiB this machine allows: "
            + detail
        )
    else:
        assert (o.status, o.detail) == (status, detail)


@pytest.mark.parametrize(
    ("detail", "compile_s", "time_s", "given_back"),
    [
        ("compiling the module took longer than 5 s (...); stopped", 5.0, 60.0, True),
        ("compiling the module took more than its CPU fence (SIGXCPU)", 5.0, 60.0, True),
        # the job's own time limit, or the fixed one: the payload's (or the machine's load)
        ("compiling the module took longer than 5 s (...); stopped", 5.0, 5.0, False),
        ("compiling the module took longer than 30 s (...); stopped", 30.0, 60.0, False),
        ("time limit of 5 s reached", 5.0, 60.0, False),
    ],
)
def test_a_compile_stopped_by_the_owner_s_time_ceiling_is_given_back(
    detail, compile_s, time_s, given_back
):
    o = _slots._owner_limited(sandbox.Outcome(Status.TIME, b"", 0, 0.1, detail), compile_s, time_s)
    if given_back:
        assert o.status is Status.ABANDONED
        assert o.detail == (
            f"refused: compiling it takes more than the {compile_s:g} s this machine allows: "
            + detail
        )
    else:
        assert (o.status, o.detail) == (Status.TIME, detail)


# --- the jobber's options ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "memory_mb", "time_s"),
    [
        (["--memory", "64"], 64, sandbox.COMPILE_TIME_S),  # the owner's memory per job
        (["--memory", "64", "--compile-memory", "32"], 32, sandbox.COMPILE_TIME_S),
        (["--memory", "512", "--compile-memory", "100", "--compile-time", "5"], 100, 5.0),
        # never above the fixed fences, whatever the owner says
        (["--memory", "65536", "--compile-memory", "9999", "--compile-time", "900"], 2048, 30.0),
    ],
)
def test_the_jobber_compiles_under_the_least_of_its_owner_s_limits(
    tmp_path, argv, memory_mb, time_s
):
    from jobber import cli
    from jobber._client import Config, Jobber

    args = cli.parser().parse_args(["127.0.0.1:1", *argv])
    settings = {cli.CONFIG_FIELDS[d]: v for d in cli.CONFIG_FIELDS if (v := getattr(args, d))}
    jobber = Jobber(Config(["127.0.0.1:1"], tmp_path, slots=1, control=False, **settings))
    try:
        assert jobber.slots.compile_memory_mb == memory_mb
        assert jobber.slots._compile_time_s == time_s
    finally:
        jobber.close()


def test_the_jobber_refuses_a_compile_limit_that_is_not_positive(tmp_path):
    from jobber._client import Config, Jobber, JobberError

    with pytest.raises(JobberError, match="--compile-memory and --compile-time"):
        Jobber(Config(["127.0.0.1:1"], tmp_path, slots=1, control=False, compile_memory_mb=0))
