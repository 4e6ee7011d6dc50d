"""Runs one job of a costly-to-compile module in a fresh slot, in a process of its own,
and prints what it cost as one JSON line (for tests and for measuring by hand):

    python -m tests.compile_probe SHAPE FENCE_MB [REPEAT]

SHAPE: ``blocks`` (16 functions of 500,000 nested blocks: 24 MB, within every
pre-check cap), ``data`` (100,000 data segments), or ``hello`` (a trivial module:
the worker's own footprint). FENCE_MB: the slots' compile memory fence, as a
jobber started with ``--memory FENCE_MB`` sets it. REPEAT: jobs of the module run
one after another in the same slots (the later ones meet the remembered failure).
The peak is the largest resident set of any worker this process started
(``RUSAGE_CHILDREN``), so it is only meaningful in a process of its own.
"""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path

import sandbox
from protocol import Limits
from tests.wat import data_segments, nested_blocks, printing

SHAPES = {
    "blocks": lambda: nested_blocks(16, 500_000),
    "data": lambda: data_segments(100_000),
    "hello": lambda: printing("hello\n"),
}
LIMIT_S = 600.0  # a job that does not end in this long is a failure of the probe


def main(argv: list[str]) -> int:
    shape, fence_mb = argv[0], int(argv[1])
    repeat = int(argv[2]) if len(argv) > 2 else 1
    wasm = SHAPES[shape]()
    jobs = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sha = sandbox.ModuleCache(root).put(wasm)
        assert sha == hashlib.sha256(wasm).hexdigest()
        with sandbox.Slots(1, root, compile_memory_mb=fence_mb) as slots:
            for i in range(repeat):
                started = time.monotonic()
                slots.start(f"job{i}", sha, [], b"", Limits(time_s=60, memory_mb=fence_mb))
                got = []
                while not got:
                    assert time.monotonic() - started < LIMIT_S, "no outcome"
                    got = slots.collect()
                    if not got:
                        wait(slots.fds(), timeout=0.05)
                outcome = got[0][1]
                jobs.append(
                    {
                        "status": outcome.status.value,
                        "detail": outcome.detail,
                        "wall_s": round(time.monotonic() - started, 3),
                    }
                )
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "shape": shape,
                "module_bytes": len(wasm),
                "fence_mb": fence_mb,
                "jobs": jobs,
                "workers_peak_mb": usage.ru_maxrss // 1024,
                "workers_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
