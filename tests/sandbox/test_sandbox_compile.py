"""Compiling is fenced: the pre-check's caps, the compile time and memory fences, the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sandbox
from protocol import Limits, Status
from sandbox import _engine, _precheck
from sandbox._precheck import Refused
from tests.helpers import collect_one
from tests.wat import BUSY, leb, module, printing, section

HELLO = printing("compiled in a fenced worker\n")
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="rlimits and /proc are Linux's")


BOMB = module(200_000)  # the shape of the million-function bomb, at a fifth of its size
# just under the function cap, and seconds to compile
SLOW = module(_precheck.MAX_FUNCTIONS - 1, BUSY)


def sha(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


def refused(wasm: bytes) -> Refused:
    with pytest.raises(Refused) as e:
        _precheck.check(wasm)
    return e.value


# --- the pre-check ----------------------------------------------------------------


def test_the_emitter_makes_modules_wasmtime_accepts():
    wasm = module(3, BUSY)
    assert wasmtime.Module.validate(_engine.engine(), wasm) is None
    assert sandbox.run(wasm).status is Status.OK
    counts = _precheck.check(wasm)
    assert (counts.counts["functions"], counts.counts["function bodies"]) == (3, 3)
    assert (counts.largest_body, counts.most_locals) == (len(BUSY), 1)


def test_a_compile_bomb_is_invalid_before_wasmtime_sees_it(monkeypatch):
    e = refused(BOMB)
    assert e.status is Status.INVALID
    assert e.detail == (
        "too costly to compile: 200,000 functions, over the cap of 50,000 (MAX_FUNCTIONS)"
    )
    monkeypatch.setattr(wasmtime, "Module", lambda *a: pytest.fail("wasmtime saw the bomb"))
    o = sandbox.run(BOMB)
    assert (o.status, o.fuel, o.stdout) == (Status.INVALID, 0, b"")
    assert "200,000 functions, over the cap of 50,000" in o.detail


def test_every_real_payload_passes_the_caps_comfortably(factor_wasm):
    counts = _precheck.check(factor_wasm)
    assert 10 < counts.counts["functions"] < _precheck.MAX_FUNCTIONS / 100
    assert counts.counts["imports"] < _precheck.MAX_IMPORTS / 10
    assert counts.largest_body < _precheck.MAX_FUNCTION_BYTES / 100
    assert counts.most_locals < _precheck.MAX_LOCALS / 100
    assert counts.size < _precheck.MAX_MODULE_BYTES / 1000
    _precheck.check(HELLO)
    assert _precheck.check(SLOW).counts["functions"] == _precheck.MAX_FUNCTIONS - 1


def big_body() -> bytes:  # one function of MAX_FUNCTION_BYTES + 1 bytes: nops, then end
    return b"\x00" + b"\x01" * (_precheck.MAX_FUNCTION_BYTES - 1) + b"\x0b"


@pytest.mark.parametrize(
    ("wasm", "detail"),
    [
        (lambda: module(1, big_body()), "2,097,153 bytes in one function body, over the cap"),
        (lambda: module(1, b"\x01" + leb(10_001) + b"\x7f\x0b"), "10,001 locals in one function"),
        (
            lambda: module(1, b"\x02" + leb(6_000) + b"\x7f" + leb(4_001) + b"\x7e\x0b"),
            "10,001 locals in one function, over the cap of 10,000 (MAX_LOCALS)",
        ),
        (lambda: module(1, imports=1_001), "1,001 imports, over the cap of 1,000 (MAX_IMPORTS)"),
        (
            lambda: b"\0asm\x01\0\0\0" + section(6, leb(10_001)),
            "10,001 globals, over the cap of 10,000 (MAX_GLOBALS)",
        ),
        (
            lambda: b"\0asm\x01\0\0\0" + section(11, leb(100_001)),
            "100,001 data segments, over the cap of 100,000 (MAX_DATA_SEGMENTS)",
        ),
        (  # two function sections count together
            lambda: b"\0asm\x01\0\0\0" + section(3, leb(30_000)) * 2,
            "60,000 functions, over the cap of 50,000 (MAX_FUNCTIONS)",
        ),
        (
            lambda: b"\0asm\x01\0\0\0" + b"\0" * _precheck.MAX_MODULE_BYTES,
            "33,554,440 bytes of module, over the cap of 33,554,432 (MAX_MODULE_BYTES)",
        ),
    ],
    ids=["body-bytes", "locals", "locals-summed", "imports", "globals", "data", "repeated", "size"],
)
def test_each_cap_names_its_count(wasm, detail):
    e = refused(wasm())
    assert e.status is Status.INVALID and e.remember
    assert e.detail.startswith("too costly to compile: ") and detail in e.detail


@pytest.mark.parametrize(
    ("wasm", "detail"),
    [
        (b"", "bad magic number"),
        (b"\0asm\x0d\0\x01\0", "not a core module of binary version 1"),
        (b"\0asm\x01\0\0\0\x03\x05\x01", "section 3 running past the end at offset 10"),
        (b"\0asm\x01\0\0\0\x03\x01\xff", "unexpected end at offset 11"),
        (b"\0asm\x01\0\0\0\x03\x06\xff\xff\xff\xff\x7f\x00", "integer too large at offset 14"),
        (b"\0asm\x01\0\0\0\x03\x06\x80\x80\x80\x80\x80\x00", "representation too long"),
        (b"\0asm\x01\0\0\0\x0a\x03\x01\x05\x00", "function body running past its section"),
    ],
)
def test_bytes_that_cannot_be_framed_are_not_a_valid_module(wasm, detail):
    e = refused(wasm)
    assert e.status is Status.INVALID and e.detail.startswith("not a valid module: ")
    assert detail in e.detail
    assert sandbox.run(wasm).status is Status.INVALID


sections = st.lists(
    st.tuples(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 99]), st.binary()),
    max_size=6,
)


def framed(parts: list[tuple[int, bytes]]) -> bytes:
    return b"\0asm\x01\0\0\0" + b"".join(section(sid, payload) for sid, payload in parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=64),
        st.binary().map(lambda b: b"\0asm\x01\0\0\0" + b),
        sections.map(framed),
    )
)
def test_the_reader_on_arbitrary_bytes_only_ever_says_invalid(data):
    try:
        counts = _precheck.check(data)
    except Refused as e:
        assert e.status is Status.INVALID
        assert e.detail.startswith(("not a valid module: ", "too costly to compile: "))
        if e.detail.startswith("not a valid module: "):  # never refuses what wasmtime takes
            with pytest.raises(wasmtime.WasmtimeError):
                wasmtime.Module.validate(_engine.engine(), data)
    else:
        assert counts.size == len(data)
        assert counts.counts["functions"] <= _precheck.MAX_FUNCTIONS


# --- fences in the slot workers -------------------------------------------------------


@pytest.fixture
def cache_root(tmp_path, factor_wasm) -> Path:
    root = tmp_path / "cache"
    cache = sandbox.ModuleCache(root)
    for wasm in (HELLO, BOMB, SLOW, factor_wasm):
        cache.put(wasm)
    return root


def test_a_bomb_in_a_slot_is_invalid_and_nothing_is_compiled(cache_root):
    with sandbox.Slots(1, cache_root) as slots:
        started = time.monotonic()
        slots.start("bomb", sha(BOMB), [], b"", Limits(time_s=5, memory_mb=16))
        key, o = collect_one(slots)
        assert (key, o.status) == ("bomb", Status.INVALID)
        assert "200,000 functions, over the cap of 50,000 (MAX_FUNCTIONS)" in o.detail
        assert time.monotonic() - started < 10  # a worker's start-up, not a compile
    assert not sandbox.ModuleCache(cache_root).compiled_path(sha(BOMB)).exists()


def test_a_slow_compile_ends_time_and_the_slot_goes_on(cache_root, factor_wasm):
    with sandbox.Slots(1, cache_root, compile_time_s=0.02) as slots:
        started = time.monotonic()
        slots.start("slow", sha(SLOW), [], b"", Limits(time_s=60))
        key, o = collect_one(slots)
        # the slots' compile_time_s (an owner's ceiling) stopped it: given back unrun
        assert (key, o.status, o.fuel, o.stdout) == ("slow", Status.ABANDONED, 0, b"")
        assert o.detail.startswith(
            "refused: compiling it takes more than the 0.02 s this machine allows: "
            "compiling the module took longer than 0.02 s"
        )
        assert time.monotonic() - started < 10
        assert not sandbox.ModuleCache(cache_root).compiled_path(sha(SLOW)).exists()
        # the job's own time_s is the compile limit when it is less
        with sandbox.Slots(1, cache_root) as other:
            other.start("short", sha(SLOW), [], b"", Limits(time_s=0.02))
            key, o = collect_one(other)
            assert (key, o.status) == ("short", Status.TIME)
            assert "compiling the module took longer than 0.02 s" in o.detail
        # the killed worker was replaced; a stored compiled form is loaded, not compiled
        sandbox.ModuleCache(cache_root).module(sha(factor_wasm))
        slots.start("factor", sha(factor_wasm), ["91", "2", "100"], b"", Limits(time_s=60))
        key, o = collect_one(slots)
        assert (key, o.status, o.stdout) == ("factor", Status.OK, b"7\n13\n91\n")


@linux_only
def test_a_compile_past_an_owner_s_memory_fence_is_given_back_unrun(cache_root, factor_wasm):
    """64 MiB is below the fixed fence: the owner's limit stopped it, not the payload
    (docs/sandbox.md; at the fixed fence it ends MEMORY: test_sandbox_compile_owner.py)."""
    with sandbox.Slots(1, cache_root, compile_memory_mb=64) as slots:
        slots.start("big", sha(SLOW), [], b"", Limits(time_s=60))
        key, o = collect_one(slots)
        assert (key, o.status, o.fuel) == ("big", Status.ABANDONED, 0)
        assert o.detail.startswith(
            "refused: compiling it needs more than the 64 MiB this machine allows: "
            "compiling the module took more than the compile memory fence of 64 MiB"
        )
        # factor.c compiles in 15 MB: the same fence lets it through
        slots.start("factor", sha(factor_wasm), ["15", "2", "100"], b"", Limits())
        key, o = collect_one(slots)
        assert (key, o.status, o.stdout) == ("factor", Status.OK, b"3\n5\n15\n")


def soft_limits(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {line[:26].strip(): line[26:].split()[0] for line in lines}


@linux_only
def test_a_compile_runs_under_its_rlimits_and_sigxcpu_is_time(cache_root):
    import signal

    with sandbox.Slots(1, cache_root, compile_memory_mb=1024) as slots:
        slots.start("fenced", sha(SLOW), [], b"", Limits(time_s=60))
        worker = slots._workers[0]
        deadline = time.monotonic() + 30
        while worker.compiling is None:  # the worker says when it begins compiling
            assert not slots.collect() and time.monotonic() < deadline
            wait(slots.fds(), timeout=0.01)
        fences = soft_limits(worker.process.pid)
        assert fences["Max data size"] != "unlimited"
        assert fences["Max cpu time"] != "unlimited"
        assert fences["Max address space"] == "unlimited"  # see _worker: threads reserve it
        os.kill(worker.process.pid, signal.SIGXCPU)  # what the kernel sends past RLIMIT_CPU
        key, o = collect_one(slots)
        assert (key, o.status) == ("fenced", Status.TIME)
        assert o.detail == "compiling the module took more than its CPU fence (SIGXCPU)"


# --- python -m sandbox run ------------------------------------------------------------


def sandbox_run(tmp_path: Path, wasm: bytes, *options: str) -> tuple[int, str, float]:
    path = tmp_path / "payload.wasm"
    path.write_bytes(wasm)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox", "run", str(path), *options],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    return proc.returncode, proc.stderr.decode(), time.monotonic() - started


def test_the_cli_refuses_the_bomb_within_seconds(tmp_path):
    code, err, took = sandbox_run(tmp_path, BOMB, "--time", "5", "--memory", "16")
    assert code == 125
    assert err.endswith(
        "sandbox: invalid, 0 fuel, 0.000 s: too costly to compile: 200,000 functions, "
        "over the cap of 50,000 (MAX_FUNCTIONS)\n"
    )
    assert took < 30  # refused before compiling (the process's start-up is most of it)


def test_the_cli_fences_a_slow_compile_with_its_time_limit(tmp_path):
    code, err, took = sandbox_run(tmp_path, SLOW, "--time", "0.01")
    assert code == 125
    assert err.startswith("sandbox: time, 0 fuel, ")
    assert "compiling the module took longer than 0.01 s" in err
    assert "Traceback" not in err
    assert took < 30  # the fence, not the whole compile (the process's start-up is most of it)
