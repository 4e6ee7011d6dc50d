"""Slots: jobs in long-lived, low-priority worker processes; deaths, cancels, suspensions."""

from __future__ import annotations

import os
import platform
import signal
import struct
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path
from types import SimpleNamespace

import pytest
import wasmtime

import sandbox
from protocol import Limits, Status
from sandbox import _engine
from sandbox._worker import PRIORITY_ENV
from tests.helpers import collect_one, cpu_s, wait_for
from tests.wat import NAN_BITS, printing

WASI = "wasi_snapshot_preview1"
HELLO = printing("from a slot\n")
SPIN = wasmtime.wat2wasm('(module (func (export "_start") (loop $l (br $l))))')


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory, factor_wasm) -> Path:
    root = tmp_path_factory.mktemp("slots-cache")
    cache = sandbox.ModuleCache(root)
    for wasm in (HELLO, SPIN, factor_wasm):
        cache.put(wasm)
    return root


@pytest.fixture(scope="module")
def slots(cache_root):
    s = sandbox.Slots(2, cache_root)
    yield s
    s.close()


def sha(wasm: bytes) -> str:
    import hashlib

    return hashlib.sha256(wasm).hexdigest()


def worker_pids(slots: sandbox.Slots) -> list[int]:
    return [w.process.pid for w in slots._workers]


def test_a_job_in_a_slot_matches_running_it_here(slots):
    slots.start("hello", sha(HELLO), [], b"", Limits())
    assert slots.running() == ["hello"] and slots.free == 1
    key, o = collect_one(slots)
    assert key == "hello"
    here = sandbox.run(HELLO)
    assert (o.status, o.stdout, o.fuel, o.exit_code) == (Status.OK, b"from a slot\n", here.fuel, 0)
    assert slots.running() == [] and slots.free == 2
    assert slots.collect() == []  # nothing more, and it does not block


def test_c_payload_with_args_in_slots(slots, factor_wasm):
    slots.start("a", sha(factor_wasm), ["91", "2", "100"], b"", Limits())
    slots.start("b", sha(factor_wasm), ["15", "2", "100"], b"", Limits())
    assert slots.free == 0
    with pytest.raises(RuntimeError, match="no free slot"):
        slots.start("c", sha(factor_wasm), [], b"", Limits())
    results = dict(collect_all(slots, 2))  # together, on a busy machine
    assert results["a"].stdout == b"7\n13\n91\n"
    assert results["b"].stdout == b"3\n5\n15\n"


def test_duplicate_key_is_refused(slots):
    slots.start("dup", sha(SPIN), [], b"", Limits(time_s=0.2))
    with pytest.raises(RuntimeError, match="already running"):
        slots.start("dup", sha(HELLO), [], b"", Limits())
    key, o = collect_one(slots)
    assert (key, o.status) == ("dup", Status.TIME)


def test_payload_missing_from_the_cache_is_invalid(slots):
    slots.start("missing", "0" * 64, [], b"", Limits())
    key, o = collect_one(slots)
    assert (key, o.status) == ("missing", Status.INVALID)
    assert "not in the cache" in o.detail


def soft_limits(pid: int) -> dict[str, str]:
    """Soft limits of a process from /proc/PID/limits: {"Max cpu time": "61", ...}."""
    lines = Path(f"/proc/{pid}/limits").read_text().splitlines()[1:]
    return {line[:26].strip(): line[26:].split()[0] for line in lines}


def test_workers_run_at_low_priority_with_os_limits(cache_root, monkeypatch):
    monkeypatch.delenv(PRIORITY_ENV)  # as a lender runs them (tests/conftest.py lifts it)
    with sandbox.Slots(2, cache_root) as slots:
        check_low_priority_with_os_limits(slots)


def check_low_priority_with_os_limits(slots):
    for i in range(2):  # both workers have started up
        slots.start(f"warm{i}", sha(HELLO), [], b"", Limits())
    warm: list = []
    deadline = time.monotonic() + 30
    while len(warm) < 2 and time.monotonic() < deadline:  # both may come in one collect
        wait(slots.fds(), timeout=1.0)
        warm += slots.collect()
    assert sorted(key for key, _ in warm) == ["warm0", "warm1"]
    for pid in worker_pids(slots):
        assert os.getpriority(os.PRIO_PROCESS, pid) == 19
    if sys.platform != "linux":
        return
    for pid in worker_pids(slots):
        policy = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[38])
        assert policy in (0, 5)  # SCHED_IDLE (5) where allowed, else SCHED_OTHER
        assert soft_limits(pid)["Max core file size"] == "0"
    slots.start("hello", sha(HELLO), [], b"", Limits(memory_mb=64, time_s=5))
    pid = next(w for w in slots._workers if w.key == "hello").process.pid
    collect_one(slots)
    fences = soft_limits(pid)
    for name in ("Max cpu time", "Max data size", "Max address space"):
        assert fences[name] != "unlimited", name
    assert int(fences["Max data size"]) < int(fences["Max address space"])


def test_a_dead_worker_is_reported_and_replaced(slots):
    slots.start("doomed", sha(SPIN), [], b"", Limits(time_s=60))
    victim = next(w for w in slots._workers if w.key == "doomed").process.pid
    os.kill(victim, signal.SIGKILL)
    key, o = collect_one(slots)
    assert (key, o.status) == ("doomed", Status.CRASH)
    assert "SIGKILL" in o.detail
    assert victim not in worker_pids(slots) and slots.free == 2
    slots.start("after", sha(HELLO), [], b"", Limits())
    assert collect_one(slots)[1].status is Status.OK


def test_rlimit_fence_death_is_a_crash(slots):
    slots.start("fenced", sha(SPIN), [], b"", Limits(time_s=60))
    victim = next(w for w in slots._workers if w.key == "fenced").process.pid
    os.kill(victim, signal.SIGXCPU)  # what the kernel sends past RLIMIT_CPU
    key, o = collect_one(slots)
    assert (key, o.status) == ("fenced", Status.CRASH)
    assert "RLIMIT_CPU" in o.detail


def test_cancel_kills_the_job_and_yields_abandoned(slots):
    slots.start("long", sha(SPIN), [], b"", Limits(time_s=60))
    slots.start("short", sha(HELLO), [], b"", Limits())
    assert collect_one(slots)[0] == "short"
    before = worker_pids(slots)
    slots.cancel("long")
    slots.cancel("not-running")  # ignored
    key, o = collect_one(slots, timeout_s=1)
    assert (key, o.status) == ("long", Status.ABANDONED)
    assert slots.running() == [] and slots.free == 2
    assert len(set(before) - set(worker_pids(slots))) == 1


def test_suspension_does_not_use_up_the_time_limit(slots):
    for i in range(2):  # both workers up and idle, so that the job starts at once
        slots.start(f"warm{i}", sha(HELLO), [], b"", Limits())
    collect_all(slots, 2)
    # stopped once it has run a little (0.1 s of CPU), well before its time_s
    slots.start("paused", sha(SPIN), [], b"", Limits(time_s=1.5))
    pid = next(w for w in slots._workers if w.key == "paused").process.pid
    cpu0 = cpu_s(pid)
    wait_for(lambda: cpu_s(pid) >= cpu0 + 0.1, 60, "the job to run")
    slots.suspend()
    assert slots.suspended
    time.sleep(1.0)  # the behaviour under test: a span stopped, in which nothing may end
    assert slots.collect() == []
    slots.resume()
    key, o = collect_one(slots)
    assert (key, o.status) == ("paused", Status.TIME)
    assert o.wall_s >= 2.4  # 1.5 s running + 1 s stopped


def test_close_waits_for_running_jobs_up_to_the_grace(cache_root):
    s = sandbox.Slots(2, cache_root)
    s.start("spin", sha(SPIN), [], b"", Limits(time_s=0.3))
    s.start("quick", sha(HELLO), [], b"", Limits())
    done = dict(s.close(grace_s=30))
    assert done["quick"].status is Status.OK
    assert done["spin"].status is Status.TIME
    assert s.close() == []
    with pytest.raises(RuntimeError):
        s.start("late", sha(HELLO), [], b"", Limits())


def test_close_abandons_what_is_still_running(cache_root):
    s = sandbox.Slots(1, cache_root)
    s.start("spin", sha(SPIN), [], b"", Limits(time_s=60))
    (key, o), *rest = s.close(grace_s=0.1)
    assert (key, o.status, rest) == ("spin", Status.ABANDONED, [])


def test_workers_that_cannot_start_are_an_error_not_a_respawn_loop(cache_root, monkeypatch, capfd):
    # a worker "main" that fails at once: sys.exit(conn, root, nice) is a TypeError
    monkeypatch.setattr(sandbox._slots, "_worker", SimpleNamespace(main=sys.exit))
    s = sandbox.Slots(1, cache_root)
    s.start("doomed", sha(HELLO), [], b"", Limits())
    outcomes = []
    with pytest.raises(RuntimeError, match="die before they are ready"):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            wait(s.fds(), timeout=1)
            outcomes += s.collect()
    outcomes += s.close()
    assert [(key, o.status) for key, o in outcomes] == [("doomed", Status.CRASH)]
    assert "TypeError" in capfd.readouterr().err


def collect_all(slots: sandbox.Slots, n: int, timeout_s: float = 30.0) -> list:
    """Wait for `n` finished jobs, in the order collect() gives them."""
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        wait(slots.fds(), timeout=min(1.0, deadline - time.monotonic()))
        got += slots.collect()
    assert len(got) == n, got  # two may end together: one collect() gives both
    return got


def test_jobs_queued_behind_a_busy_worker_run_in_order(cache_root):
    with sandbox.Slots(1, cache_root) as one:
        for i in range(4):
            one.start(f"j{i}", sha(HELLO), [], b"", Limits(), depth=4)
        with pytest.raises(RuntimeError, match="no free slot"):
            one.start("j4", sha(HELLO), [], b"", Limits(), depth=4)
        with pytest.raises(RuntimeError, match="already running"):
            one.start("j3", sha(HELLO), [], b"", Limits(), depth=8)
        assert one.running() == ["j0", "j1", "j2", "j3"]
        got = collect_all(one, 4)
        assert [k for k, _ in got] == ["j0", "j1", "j2", "j3"]
        assert all(o.status is Status.OK and o.stdout == b"from a slot\n" for _, o in got)
        assert one.running() == []


def test_a_queued_job_cancelled_is_not_reported_and_those_behind_a_killed_one_go_on(
    cache_root,
):
    with sandbox.Slots(1, cache_root) as one:
        one.start("spin", sha(SPIN), [], b"", Limits(time_s=60), depth=3)
        one.start("queued", sha(HELLO), [], b"", Limits(), depth=3)
        one.start("after", sha(HELLO), [], b"", Limits(), depth=3)
        one.cancel("queued")  # down the pipe already: it runs, its outcome is dropped
        one.cancel("spin")  # its worker is killed; the queue goes to the new one
        got = collect_all(one, 3)
        keys = {k: o for k, o in got}
        assert set(keys) == {"spin", "queued", "after"}
        assert keys["spin"].status is Status.ABANDONED
        assert keys["queued"].status is Status.ABANDONED
        assert keys["after"].status is Status.OK and keys["after"].stdout == b"from a slot\n"
        one.start("more", sha(HELLO), [], b"", Limits())
        assert collect_one(one)[0] == "more"  # nothing of "queued" comes late


def test_closing_gives_back_every_queued_job(cache_root):
    one = sandbox.Slots(1, cache_root)
    one.start("spin", sha(SPIN), [], b"", Limits(time_s=60), depth=2)
    one.start("next", sha(HELLO), [], b"", Limits(), depth=2)
    got = {k: o.status for k, o in one.close(0.0)}
    assert got == {"spin": Status.ABANDONED, "next": Status.ABANDONED}


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_stopped_worker_dies_with_its_killed_jobber(tmp_path, cache_root):
    """A worker suspended (SIGSTOP) when its jobber is killed cannot run a thread of its own
    to notice: the kernel kills it (PR_SET_PDEATHSIG)."""
    import subprocess

    script = tmp_path / "holder.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})\n"
        "from pathlib import Path\n"
        "import sandbox\nfrom protocol import Limits\n"
        "if __name__ == '__main__':\n"
        "    slots = sandbox.Slots(1, Path(sys.argv[1]))\n"
        "    slots.start('ready', sys.argv[2], [], b'', Limits())\n"
        "    while not slots.collect():\n"  # the worker is up and has run a job
        "        time.sleep(0.01)\n"
        "    print(slots._workers[0].process.pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, script, str(cache_root), sha(HELLO)], stdout=subprocess.PIPE, text=True
    )
    try:
        pid = int(holder.stdout.readline())
        os.kill(pid, signal.SIGSTOP)
        holder.kill()
        holder.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except FileNotFoundError:
                break
            if state in ("Z", "X"):  # dead, waiting for init to reap it
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the stopped worker outlived its jobber")
    finally:
        holder.kill()
        holder.wait(10)
        holder.stdout.close()


def test_native_nans_run_on_the_native_engine_and_compile_apart(tmp_path):
    """A slot runs a job on the engine its limits ask for; each engine's compiled form is
    cached under its own engine key, and a payload may run on both."""
    cache = sandbox.ModuleCache(tmp_path)
    digest = cache.put(NAN_BITS)
    bits = {}
    with sandbox.Slots(1, tmp_path) as s:
        for native in (None, True, None):
            s.start(f"nan{native}", digest, (), b"", Limits(native_nans=native))
            _, o = collect_one(s)
            assert o.status is Status.OK, o.detail
            bits.setdefault(native, struct.unpack("<QQI", o.stdout))
    assert bits[None] == (0x7FF8000000000000, 0x7FF8000000000000, 0x7FC00000)
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert bits[True] == (0xFFF8000000000000, 0xFFF8000000000000, 0xFFC00000)
    assert _engine.ENGINE_KEYS[True] != _engine.ENGINE_KEYS[False]
    for canonical in (True, False):
        path = cache.compiled_path(digest, canonical)
        assert path.parent.name == _engine.ENGINE_KEYS[canonical] and path.exists()
        assert cache.load(digest, canonical) is not None
    # a form compiled for one engine is never loaded for the other
    cache.compiled_path(digest, False).write_bytes(cache.compiled_path(digest, True).read_bytes())
    assert cache.load(digest, False) is None and not cache.compiled_path(digest, False).exists()
    assert cache.evict(0, 0) == 1
    assert not any(cache.compiled_path(digest, c).exists() for c in (True, False))


# refused growth, then it spins: only the ticker can end it (the memory limit is 1 MiB)
GROW_THEN_SPIN = wasmtime.wat2wasm(
    """(module (memory 1)
      (func (export "_start") (drop (memory.grow (i32.const 64))) (loop $l (br $l))))"""
)


def test_a_job_that_must_stop_ends_its_worker_and_the_jobs_behind_it_go_on(cache_root):
    """Workers run watched engines, without epoch checks: a payload past its time (or
    past its memory, spinning on) is stopped by its worker sending the outcome, and the
    parent killing it; the jobs queued behind it run on the new worker."""
    sandbox.ModuleCache(cache_root).put(GROW_THEN_SPIN)
    with sandbox.Slots(1, cache_root) as one:
        first = worker_pids(one)
        one.start("spin", sha(SPIN), [], b"", Limits(time_s=0.3), depth=3)
        one.start("queued", sha(HELLO), [], b"", Limits(), depth=3)
        one.start("hog", sha(GROW_THEN_SPIN), [], b"", Limits(memory_mb=1, time_s=60), depth=3)
        got = dict(collect_all(one, 3, timeout_s=120))
        assert got["spin"].status is Status.TIME, got["spin"]
        assert "wall-clock limit of 0.3 s" in got["spin"].detail
        assert got["queued"].status is Status.OK and got["queued"].stdout == b"from a slot\n"
        assert got["hog"].status is Status.MEMORY, got["hog"]
        assert got["hog"].wall_s < 30  # stopped by the ticker, not by its time limit
        assert worker_pids(one) != first and one.free == 1
        one.start("more", sha(HELLO), [], b"", Limits())
        key, o = collect_one(one)
        assert (key, o.status) == ("more", Status.OK)


def test_a_watched_module_is_not_run_where_nothing_could_stop_it(cache_root):
    cache = sandbox.ModuleCache(cache_root)
    prepared = _engine._check(sha(SPIN), cache.module(sha(SPIN)))
    with pytest.raises(ValueError, match="watched engine"):
        _engine.execute(prepared, (), b"", Limits(time_s=0.1))


def test_a_workers_outcomes_go_once_each_and_never_for_an_earlier_job():
    """The job's thread and the ticker may both try to end a job: the first wins, and a
    late call for a job before the last one sent is dropped (_worker._Pipe)."""
    import multiprocessing

    from sandbox._worker import _Pipe

    mine, theirs = multiprocessing.Pipe()
    pipe = _Pipe(mine)
    assert pipe.end(1, {"key": "a"}) and not pipe.end(1, {"key": "a again"})
    assert pipe.end(3, {"key": "c"}) and not pipe.end(2, {"key": "b, late"})
    got = []
    while theirs.poll(0.5):
        got.append(theirs.recv()["key"])
    assert got == ["a", "c"]


DEEP = wasmtime.wat2wasm(
    """(module (memory 1)
      (func $rec (param i64 i64 i64 i64) (result i64)
        (i64.add (local.get 0) (call $rec (i64.add (local.get 1) (i64.const 1))
                                          (local.get 2) (local.get 3) (local.get 0))))
      (func (export "_start") (drop (call $rec (i64.const 1) (i64.const 2)
                                               (i64.const 3) (i64.const 4)))))"""
)


def test_what_a_slot_gives_is_what_its_platform_names(tmp_path):
    """Where the stack runs out depends on the engine's frames, which the epoch checks
    change: a slot's `stack` outcome has the watched engine's fuel, the engine that
    sandbox.PLATFORM (native NaNs) and NAN_FUEL (canonical) name."""
    from sandbox import _flavors

    assert sandbox.PLATFORM.endswith(_flavors.FLAVOR_KEYS["native" + _flavors.WATCHED][:8])
    assert sandbox.NAN_FUEL.endswith(_flavors.WATCHED)
    digest = sandbox.ModuleCache(tmp_path).put(DEEP)
    with sandbox.Slots(1, tmp_path) as s:
        for native in (True, None):
            limits = Limits(native_nans=native, time_s=30)
            s.start(f"deep{native}", digest, (), b"", limits)
            _, o = collect_one(s)
            assert o.status is Status.STACK, o.detail
            module = _flavors.compile(DEEP, canonical=not native, is_watched=True)
            prepared = _engine._check(digest, module, not native)
            here = _engine.execute(prepared, (), b"", limits, on_stuck=pytest.fail)
            assert (here.status, here.fuel) == (Status.STACK, o.fuel)
