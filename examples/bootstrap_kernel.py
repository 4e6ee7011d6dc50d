"""One job of examples/bootstrap.py, run by jobbers in the sandbox (Python 3 + numpy).

    argv: SEED REPLICATES
    /input/data.bin: the shared table, float64 (x, y) pairs, little-endian

Prints REPLICATES bootstrap estimates of the least-squares slope of y on x, one per
line, each resampling every row with replacement. Everything here is deterministic:
the seed fixes the resamples, and repr() prints each float exactly, so two machines
running the same job print the same bytes.
"""

import sys

import numpy as np

seed, replicates = int(sys.argv[1]), int(sys.argv[2])
with open("/input/data.bin", "rb") as f:  # (np.fromfile needs dup(), which WASI lacks)
    table = np.frombuffer(f.read(), dtype="<f8").reshape(-1, 2)
x, y = table[:, 0], table[:, 1]
# SFC64, not numpy's default PCG64: PCG64's 128-bit multiply has no wasm32 instruction,
# so its numbers cost about 5 times native in the sandbox, SFC64's about 3 times
rng = np.random.Generator(np.random.SFC64(seed))
n = len(x)
for _ in range(replicates):
    rows = rng.integers(0, n, size=n)
    xs, ys = x[rows], y[rows]
    dx = xs - xs.mean()
    slope = (dx * (ys - ys.mean())).sum() / (dx * dx).sum()
    print(repr(float(slope)))
