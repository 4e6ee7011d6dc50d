"""Python payloads: a warm job's start-up, and numpy in the sandbox against native numpy.

    python bench/python.py [--jobs J] [--points N] [--repeat R]

(a) Start-up: a Python job whose script does nothing (`pass`), started and collected in
    a warm slot one after another, as a jobber runs them (the runtime's compiled form
    loaded, its standard library an input file): median round trip over J jobs, and
    the same for `print(1 + 1)` and for `import numpy`. Baseline in the same run:
    native CPython starting a process for the same script (`python -c pass`), which
    is what the sandbox's start replaces. Target: at most 50 ms.
(b) A numpy kernel, the same source in the sandbox (warm slot, native NaNs: what a
    task that is not cross-platform runs) and in native CPython with numpy, best of R
    each, alternating so both see the same machine: a Monte Carlo estimate of pi over
    20 x N points (random numbers, a vectorised test, a sum) and a bootstrap of a mean
    (integer resampling and gathers); and the same Monte Carlo with numpy's SFC64
    generator in place of its default PCG64 (see (c)). Times are of the kernel alone:
    each side's wall time less that of the same start-up and `import numpy` (a job, a
    process) on its own. Target: at most 2x.
(c) Single operations, to see where (b)'s ratio comes from: arithmetic on arrays, random
    numbers from numpy's default generator (PCG64, whose 128-bit multiply wasm32 lacks)
    and from SFC64 (64-bit operations only), and a sort; measured as (b).
    Native numpy must be installed (pip install numpy); without it (b) is skipped.

Needs the Python runtime prepared in the user's module cache (python -m sandbox
prepare, or any Payload.python().run() once: minutes the first time). The last line
is one JSON object with the figures. Runs by hand, not in CI; figures in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from multiprocessing.connection import wait

from _common import ROOT  # noqa: F401 - puts the checkout on sys.path

import sandbox  # noqa: E402
from protocol import Limits  # noqa: E402
from protocol._runtimes import PYTHON  # noqa: E402
from sandbox._prepare import ready  # noqa: E402
from tasks import Payload, cache_dir  # noqa: E402

LIMITS = Limits(fuel=10**12, memory_mb=512, time_s=300, output_kb=64, native_nans=True)

PI = """
import sys, numpy as np
n = int(sys.argv[1])
rng = np.random.default_rng(1)
inside = 0
for _ in range(20):  # enough work that a process's start-up noise does not swamp it
    x, y = rng.random(n), rng.random(n)
    inside += np.count_nonzero(x * x + y * y <= 1.0)
print(4 * inside / (20 * n))
"""

PI_SFC64 = PI.replace("np.random.default_rng(1)", "np.random.Generator(np.random.SFC64(1))")

BOOT = """
import sys, numpy as np
n = int(sys.argv[1])
rng = np.random.default_rng(2)
data = rng.normal(size=n)
means = [data[rng.integers(0, n, size=n)].mean() for _ in range(20)]
print(repr(float(np.std(means))))
"""

IMPORT = "import numpy\n"

# (c) single operations, to see where the ratio comes from
OPS = {
    "arithmetic": "import numpy as np\nx = np.linspace(0, 1, 2_000_000)\n"
    "for _ in range(100): np.count_nonzero(x * x + x * x <= 1.0)\n",
    "random, PCG64": "import numpy as np\nrng = np.random.default_rng(1)\n"
    "for _ in range(100): rng.random(2_000_000)\n",
    "random, SFC64": "import numpy as np\nrng = np.random.Generator(np.random.SFC64(1))\n"
    "for _ in range(100): rng.random(2_000_000)\n",
    "sort": "import numpy as np\nx = np.linspace(0, 1, 2_000_000)[::-1].copy()\n"
    "for _ in range(20): np.sort(x)\n",
}


def job(slots: sandbox.Slots, payload: Payload, args, files) -> tuple[float, sandbox.Outcome]:
    """One job in a warm slot: its round trip (s) and outcome."""
    start = time.perf_counter()
    slots.start("j", payload.sha256, [*payload.argv, *args], b"", LIMITS, files=files)
    while True:
        wait(slots.fds())
        for _, outcome in slots.collect():
            return time.perf_counter() - start, outcome


def native(source: str, args) -> float:
    """A native CPython process running `source`: wall seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", source, *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=30)
    ap.add_argument("--points", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ns = ap.parse_args()
    root = cache_dir() / "modules"
    if not ready(root, PYTHON.sha256):
        sys.exit(f"the Python runtime is not prepared in {root}: python -m sandbox prepare")
    out: dict = {}
    with sandbox.Slots(1, root, nice=0) as slots:

        def files_of(payload: Payload) -> dict:
            return {path: str(f.path) if f.path else f.data for path, f in payload.files.items()}

        # (a) start-up
        for label, source in (("pass", "pass\n"), ("print", "print(1 + 1)\n"), ("numpy", IMPORT)):
            payload = Payload.python(source=source)
            files = files_of(payload)
            job(slots, payload, [], files)  # warm: the module loaded in the worker
            times = []
            for _ in range(ns.jobs if label != "numpy" else max(3, ns.jobs // 5)):
                took, outcome = job(slots, payload, [], files)
                assert outcome.status.value == "ok", outcome
                times.append(took)
            natives = [native(source, []) for _ in range(5)]
            out[f"start_{label}_ms"] = round(statistics.median(times) * 1000, 1)
            out[f"native_{label}_ms"] = round(statistics.median(natives) * 1000, 1)
            print(
                f"(a) {label!r:9} warm slot {out[f'start_{label}_ms']:7.1f} ms  "
                f"native process {out[f'native_{label}_ms']:7.1f} ms  "
                f"(fuel {outcome.fuel:,})"
            )
        empty = out["start_numpy_ms"] / 1000  # the kernels import numpy too
        # (b) numpy kernels
        try:
            import numpy  # noqa: F401
        except ImportError:
            print("(b) skipped: native numpy is not installed (pip install numpy)")
        else:
            kernels = (("monte carlo pi", PI), ("pi with SFC64", PI_SFC64), ("bootstrap", BOOT))
            for name, source in kernels:
                payload = Payload.python(source=source)
                files = files_of(payload)
                args = [str(ns.points)]
                sandboxed, natives, answers = [], [], set()
                for _ in range(ns.repeat):
                    took, outcome = job(slots, payload, args, files)
                    assert outcome.status.value == "ok", outcome
                    sandboxed.append(took - empty)
                    answers.add(outcome.stdout)
                    natives.append(native(source, args) - native(IMPORT, []))
                ratio = min(sandboxed) / min(natives)
                key = name.replace(" ", "_")
                out[key] = {
                    "sandbox_s": round(min(sandboxed), 3),
                    "native_s": round(min(natives), 3),
                    "ratio": round(ratio, 2),
                    "fuel": outcome.fuel,
                }
                print(
                    f"(b) {name:15} sandbox {min(sandboxed):.3f} s  native {min(natives):.3f} s"
                    f"  ratio {ratio:.2f} (target 2)  fuel {outcome.fuel:,}"
                    f"  outputs {'identical' if len(answers) == 1 else 'DIFFER'}"
                )
            # (c) single operations
            for name, source in OPS.items():
                payload = Payload.python(source=source)
                files = files_of(payload)
                sandboxed, natives = [], []
                for _ in range(ns.repeat):
                    took, outcome = job(slots, payload, [], files)
                    assert outcome.status.value == "ok", outcome
                    sandboxed.append(took - empty)
                    natives.append(native(source, []) - native(IMPORT, []))
                ratio = min(sandboxed) / min(natives)
                out[name] = {"sandbox_s": round(min(sandboxed), 3), "ratio": round(ratio, 2)}
                print(
                    f"(c) {name:15} sandbox {min(sandboxed):.3f} s  native {min(natives):.3f} s"
                    f"  ratio {ratio:.2f}"
                )
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
