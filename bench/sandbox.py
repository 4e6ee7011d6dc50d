"""Sandbox benchmarks: wasm speed against native, and per-job overhead in a warm slot.

    python bench/sandbox.py [--hi HI] [--repeat R] [--jobs J]

(a) The factoring kernel (tasks/payloads/factor.c) over a fixed range, built
    natively (gcc -O2, else ziglang's native target) and to wasm32-wasi, run
    natively and in the sandbox with every limit on (fuel, time, memory,
    output), in a warm worker slot as a jobber runs it. Prints sandbox/native
    (best of R runs each). Target: at most 1.05.
(b) A trivial job (writes 3 bytes) started and collected in a warm slot, one
    after another: median round trip over J jobs, as the jobber sees it.
    Target: at most 1 ms. In-process sandbox.run() is shown for comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wasmtime  # noqa: E402

import sandbox  # noqa: E402
from protocol import Limits, Status  # noqa: E402
from tasks import builtin, compile_c  # noqa: E402

N = 1000000016000000063  # (1e9 + 7) * (1e9 + 9): nothing divides it below 1e9 + 7
LO = 2
HI = 2_000_000_000  # about 2 s of trial division on a current core

TRIVIAL = wasmtime.wat2wasm(
    """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "ok\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""
)


def build_native(source: Path, out: Path) -> str:
    """Compile `source` for this machine; returns the compiler used."""
    gcc = shutil.which("gcc")
    if gcc:
        cmd, name = [gcc, "-O2", str(source), "-o", str(out)], "gcc -O2"
    else:
        cmd = [sys.executable, "-m", "ziglang", "cc", "-O2", str(source), "-o", str(out)]
        name = "zig cc -O2 (native)"
    subprocess.run(cmd, check=True)
    return name


def one_job(slots: sandbox.Slots, key: str, sha256: str, args, limits) -> sandbox.Outcome:
    slots.start(key, sha256, args, b"", limits)
    while True:
        wait(slots.fds())
        for _, outcome in slots.collect():
            return outcome


def bench_cpu(slots: sandbox.Slots, cache: sandbox.ModuleCache, hi: int, repeat: int) -> None:
    source = builtin("factor")
    args = [str(N), str(LO), str(hi)]
    sha256 = cache.put(compile_c(source.read_text()))
    # every limit on, none of them reached
    limits = Limits(fuel=10**13, memory_mb=16, time_s=600, output_kb=64)
    one_job(slots, "warm", sha256, ["91", "2", "100"], limits)  # compile and load once
    native, wasm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "factor"
        compiler = build_native(source, exe)
        for i in range(repeat):  # interleaved, so that both see the same machine
            t = time.perf_counter()
            proc = subprocess.run([exe, *args], capture_output=True, check=True)
            native.append(time.perf_counter() - t)
            o = one_job(slots, f"cpu{i}", sha256, args, limits)
            if o.status is not Status.OK or o.stdout != proc.stdout:
                raise SystemExit(f"sandbox run failed or differs: {o.status.value} {o.detail}")
            wasm.append(o.wall_s)
    ratio = min(wasm) / min(native)
    print(f"(a) factoring kernel, N={N}, d in [{LO}, {hi}), best of {repeat}:")
    print(f"    native ({compiler}):          {min(native):.3f} s")
    print(f"    sandbox (warm slot, all limits): {min(wasm):.3f} s, {o.fuel:,} fuel")
    print(f"    ratio sandbox/native:            {ratio:.3f}  (target <= 1.05)")


def bench_overhead(slots: sandbox.Slots, cache: sandbox.ModuleCache, jobs: int) -> None:
    sha256 = cache.put(TRIVIAL)
    limits = Limits()
    for i in range(50):  # warm up both workers
        one_job(slots, f"w{i}", sha256, (), limits)
    round_trips, inside = [], []
    for i in range(jobs):
        t = time.perf_counter()
        o = one_job(slots, f"t{i}", sha256, (), limits)
        round_trips.append(time.perf_counter() - t)
        inside.append(o.wall_s)
        if o.stdout != b"ok\n":
            raise SystemExit(f"trivial job failed: {o.status.value} {o.detail}")
    in_process = []
    for _ in range(jobs):
        t = time.perf_counter()
        sandbox.run(TRIVIAL)
        in_process.append(time.perf_counter() - t)
    ms = 1000
    print(f"(b) trivial job, {jobs} jobs one after another:")
    print(
        f"    warm slot round trip:  median {statistics.median(round_trips) * ms:.3f} ms, "
        f"p90 {statistics.quantiles(round_trips, n=10)[-1] * ms:.3f} ms  (target <= 1 ms)"
    )
    print(f"    of which in the worker: median {statistics.median(inside) * ms:.3f} ms")
    print(f"    in-process run():      median {statistics.median(in_process) * ms:.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hi", type=int, default=HI, help=f"end of the range (default {HI})")
    parser.add_argument("--repeat", type=int, default=5, help="runs of (a), best kept")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in (b)")
    ns = parser.parse_args()
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = sandbox.ModuleCache(Path(tmp))
        with sandbox.Slots(2, Path(tmp)) as slots:
            bench_cpu(slots, cache, ns.hi, ns.repeat)
            bench_overhead(slots, cache, ns.jobs)


if __name__ == "__main__":
    main()
