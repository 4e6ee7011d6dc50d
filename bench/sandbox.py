"""Sandbox benchmarks: wasm speed against native, and per-job overhead in a warm slot.

    python bench/sandbox.py [--hi HI] [--steps S] [--repeat R] [--jobs J] [--fences]

(a) Two kernels built natively (gcc -O2, else ziglang's native target; and the
    like-for-like build, -fno-math-errno as the wasm build's libm) and to
    wasm32-wasi, run natively and in the sandbox with every limit on (fuel, time,
    memory, output), in a warm worker slot as a jobber runs them; native and
    sandbox runs alternate, so all see the same machine. Prints the median and the
    best of R runs of each, and sandbox/native of each: the ratio of the medians,
    and the median of each round's ratio (the round's runs are seconds apart).
    - the factoring kernel (tasks/payloads/factor.c) over a fixed range: integer
      division. Target: at most 1.05.
    - the n-body kernel (tasks/payloads/nbody.c), S steps: floating point.
      Target: at most 1.3 x gcc -O2 with native NaNs (what jobbers run for a task
      that is not cross-platform); at most 2 x the like-for-like build with
      canonical NaNs (a cross-platform task: the module with NaN guards).
(b) A trivial job (writes 3 bytes) started and collected in a warm slot, one
    after another: median round trip over J jobs, as the jobber sees it.
    Target: at most 1 ms. In-process sandbox.run() is shown for comparison.
(c) With --fences: what each engine fence costs, on both kernels, in plain
    wasmtime (no sandbox around it): no fences, fuel (the slot workers' native
    engine), epoch interruption, NaN canonicalization, fuel + epoch (the in-process
    native engine), all three (the in-process canonical engine), fuel + epoch with
    NaN guards (in-process), fuel with NaN guards (the slot workers' guarded
    engine and module); each run alternating with a native run, best of R.

The last line is one JSON object: each kernel's times and ratios ((a)), and the
trivial job's round trip ((b)). Runs by hand, not in CI; figures in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
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
from wasmtime import _bindings  # noqa: E402

import sandbox  # noqa: E402
from protocol import Limits, Status  # noqa: E402
from sandbox import _nanguard  # noqa: E402
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


STEPS = 5_000_000  # n-body steps: about 0.3 s on a current core


RESULTS: dict = {}  # what the last line prints, as JSON: each kernel's times and ratios


def build_native(source: Path, out: Path, *flags: str) -> str:
    """Compile `source` for this machine with -O2 and `flags`; returns the command used."""
    gcc = shutil.which("gcc")
    if gcc:
        cmd, name = [gcc, "-O2", *flags, str(source), "-o", str(out), "-lm"], "gcc -O2"
    else:
        cmd = [sys.executable, "-m", "ziglang", "cc", "-O2", *flags, str(source), "-o", str(out)]
        name = "zig cc -O2"
    subprocess.run(cmd, check=True)
    return " ".join([name, *flags])


# The wasm build's libm never sets errno (clang's default for wasm32), which lets the
# compiler use the sqrt instruction alone; a native -O2 build keeps errno, and a call
# for a negative argument, unless told: -fno-math-errno is the like-for-like build.
LIKE_FOR_LIKE = ("-fno-math-errno",)


def one_job(slots: sandbox.Slots, key: str, sha256: str, args, limits) -> sandbox.Outcome:
    slots.start(key, sha256, args, b"", limits)
    while True:
        wait(slots.fds())
        for _, outcome in slots.collect():
            return outcome


def kernels(hi: int, steps: int) -> list[tuple[str, str, list[str], list[str], float]]:
    """(name, built-in payload, args, a short job's args, target ratio) of (a) and (c)."""
    return [
        ("factoring kernel", "factor", [str(N), str(LO), str(hi)], ["91", "2", "100"], 1.05),
        ("n-body kernel", "nbody", [str(steps)], ["1000"], 1.3),
    ]


def time_native(exe: Path, args: list[str]) -> tuple[float, bytes]:
    t = time.perf_counter()
    proc = subprocess.run([exe, *args], capture_output=True, check=True)
    return time.perf_counter() - t, proc.stdout


def bench_cpu(slots: sandbox.Slots, cache: sandbox.ModuleCache, hi: int, steps: int, repeat: int):
    # every limit on, none of them reached
    limits = Limits(fuel=10**13, memory_mb=16, time_s=600, output_kb=64, native_nans=True)
    engines = {"native NaNs": limits, "canonical NaNs": Limits(10**13, 16, 600, 64)}
    for name, payload, args, short, target in kernels(hi, steps):
        source = builtin(payload)
        sha256 = cache.put(compile_c(source.read_text()))
        for kind, lim in engines.items():  # compile and load once for each engine
            one_job(slots, f"warm {payload} {kind}", sha256, short, lim)
        wasm: dict[str, list[float]] = {k: [] for k in engines}
        with tempfile.TemporaryDirectory() as tmp:
            exes = {}
            for i, flags in enumerate(((), LIKE_FOR_LIKE)):
                exe = Path(tmp) / f"{payload}{i}"
                exes[build_native(source, exe, *flags)] = exe
            native: dict[str, list[float]] = {k: [] for k in exes}
            fuel = {}
            for i in range(repeat):  # interleaved, so that all see the same machine
                for compiler, exe in exes.items():
                    dt, out = time_native(exe, args)
                    native[compiler].append(dt)
                for kind, lim in engines.items():
                    o = one_job(slots, f"{payload}{i}{kind}", sha256, args, lim)
                    if o.status is not Status.OK or o.stdout != out:
                        raise SystemExit(
                            f"sandbox run failed or differs: {o.status.value} {o.detail}"
                        )
                    wasm[kind].append(o.wall_s)
                    fuel[kind] = o.fuel
        print(f"(a) {name} ({payload}.c {' '.join(args)}), {repeat} rounds, median (best):")
        base, like = native.values()
        for compiler, times in native.items():
            head = "native (" + compiler + "):"
            print(f"    {head:37s} {med(times):.3f} s ({min(times):.3f} s)")
        results = {}
        for kind, times in wasm.items():
            ratio, like_ratio = med(times) / med(base), med(times) / med(like)
            rounds = med([t / n for t, n in zip(times, like, strict=True)])
            goal = f" (target <= {target})" if kind == "native NaNs" else ""
            like_goal = " (target <= 2)" if kind == "canonical NaNs" and payload == "nbody" else ""
            head = f"sandbox (warm slot, {kind}):"
            print(
                f"    {head:37s} {med(times):.3f} s ({min(times):.3f} s) = {ratio:.2f} x native"
                f"{goal}, {like_ratio:.2f} x like for like{like_goal} (rounds: {rounds:.2f} x)"
                f", {fuel[kind]:,} fuel"
            )
            results[kind] = (med(times), ratio, like_ratio, rounds)
        RESULTS[payload] = {
            "native_s": round(med(base), 4),
            "like_for_like_s": round(med(like), 4),
            "sandbox_s": {kind: round(r[0], 4) for kind, r in results.items()},
            "ratio": {kind: round(r[1], 3) for kind, r in results.items()},
            "like_for_like_ratio": {kind: round(r[2], 3) for kind, r in results.items()},
            "like_for_like_ratio_of_rounds": {kind: round(r[3], 3) for kind, r in results.items()},
            "fuel": fuel,
        }


def med(times: list[float]) -> float:
    return statistics.median(times)


FENCES = {
    "none": (),
    "fuel (slot workers: native)": ("fuel",),
    "epoch": ("epoch",),
    "nan canonicalization": ("nan",),
    "fuel + epoch (in-process: native)": ("fuel", "epoch"),
    "all three": ("fuel", "epoch", "nan"),
    "fuel + epoch + NaN guards": ("fuel", "epoch", "guards"),
    "fuel + NaN guards (slot workers)": ("fuel", "guards"),
}


def bench_fences(hi: int, steps: int, repeat: int) -> None:
    """(c): plain wasmtime, one engine per combination of fences, against native."""
    for name, payload, args, _, _ in kernels(hi, steps):
        source = builtin(payload)
        wasm = compile_c(source.read_text())
        modules = {}
        for combo, fences in FENCES.items():
            config = wasmtime.Config()
            config.consume_fuel = "fuel" in fences
            config.epoch_interruption = "epoch" in fences
            config.cranelift_nan_canonicalization = "nan" in fences
            config.wasm_relaxed_simd_deterministic = True
            code = wasm
            if "guards" in fences:  # the guarded engine: branch hints read, and the guards
                _bindings.wasmtime_config_wasm_branch_hinting_set(config.ptr(), True)
                code = _nanguard.guard(wasm)
            engine = wasmtime.Engine(config)
            modules[combo] = (engine, wasmtime.Module(engine, code), fences)
        best = dict.fromkeys(FENCES, float("inf"))
        with tempfile.TemporaryDirectory() as tmp:
            exes = {}
            for i, flags in enumerate(((), LIKE_FOR_LIKE)):
                exe = Path(tmp) / f"{payload}{i}"
                exes[build_native(source, exe, *flags)] = exe
            natives = dict.fromkeys(exes, float("inf"))
            for _ in range(repeat):
                for combo in FENCES:
                    for compiler, exe in exes.items():
                        dt, expected = time_native(exe, args)
                        natives[compiler] = min(natives[compiler], dt)
                    dt, out = run_plain(*modules[combo], args, Path(tmp) / "out")
                    if out != expected:
                        raise SystemExit(f"{combo}: {out!r} differs from native {expected!r}")
                    best[combo] = min(best[combo], dt)
        base, like = natives.values()
        print(f"(c) {name} ({payload}.c {' '.join(args)}) in plain wasmtime, best of {repeat}:")
        for compiler, dt in natives.items():
            print(f"    {'native (' + compiler + ')':34s} {dt:.3f} s")
        for combo, dt in best.items():
            ratios = f"{dt / base:.2f} x native, {dt / like:.2f} x like for like"
            print(f"    {combo:34s} {dt:.3f} s = {ratios}")


def run_plain(engine, module, fences, args: list[str], out: Path) -> tuple[float, bytes]:
    store = wasmtime.Store(engine)
    if "fuel" in fences:
        store.set_fuel(10**15)
    if "epoch" in fences:
        store.set_epoch_deadline(10**9)  # checked at every loop header, never reached
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["payload", *args]
    wasi.stdout_file = str(out)
    store.set_wasi(wasi)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    t = time.perf_counter()
    start(store)
    return time.perf_counter() - t, out.read_bytes()


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
    RESULTS["trivial_job_ms"] = {
        "round_trip_median": round(statistics.median(round_trips) * ms, 3),
        "round_trip_p90": round(statistics.quantiles(round_trips, n=10)[-1] * ms, 3),
        "in_worker_median": round(statistics.median(inside) * ms, 3),
        "in_process_median": round(statistics.median(in_process) * ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hi", type=int, default=HI, help=f"end of the range (default {HI})")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"n-body steps ({STEPS})")
    parser.add_argument("--repeat", type=int, default=5, help="rounds of (a) and (c)")
    parser.add_argument("--jobs", type=int, default=1000, help="jobs in (b)")
    parser.add_argument("--fences", action="store_true", help="also (c), the fences' costs")
    ns = parser.parse_args()
    print(
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{platform.platform()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = sandbox.ModuleCache(Path(tmp))
        with sandbox.Slots(2, Path(tmp)) as slots:
            bench_cpu(slots, cache, ns.hi, ns.steps, ns.repeat)
            bench_overhead(slots, cache, ns.jobs)
    if ns.fences:
        bench_fences(ns.hi, ns.steps, ns.repeat)
    print(json.dumps(RESULTS))


if __name__ == "__main__":
    main()
