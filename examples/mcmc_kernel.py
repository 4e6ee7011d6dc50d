"""One job of examples/mcmc.py --kernel python: the chain of examples/mcmc.c in plain
Python, run in the sandbox's Python (Payload.python).

    argv: SEED STEPS SAVE_EVERY [STEP_SIZE]
    /checkpoint/state: the state it resumes from, if any

A Metropolis chain on Haario's banana, log p(x, y) = -x^2/200 - (y + 0.1 x^2 - 10)^2/2.
Every SAVE_EVERY steps it writes its whole state (the step, the position, the sums,
the generator's state) as JSON to /checkpoint/state.tmp and renames it onto
/checkpoint/state: plain file calls, nothing to link. JSON keeps every float exactly
(repr round-trips), so a chain resumed from a state prints what it prints run straight
through. A state that is not one of ours is ignored: the chain starts over.

Prints the means of x and y, their variances, the acceptance rate and the steps run.
"""

import json
import math
import os
import random
import sys

seed, steps, every = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
h = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0


def logp(x, y):
    b = y + 0.1 * x * x - 10.0
    return -x * x / 200.0 - 0.5 * b * b


def load():
    try:
        with open("/checkpoint/state") as f:
            st = json.load(f)
        rng = random.Random()
        version, words, gauss_next = st["rng"]
        rng.setstate((version, tuple(words), gauss_next))
        if not 0 <= st["i"] <= steps or not 0 <= st["accepted"] <= st["i"]:
            raise ValueError("a step count out of range")
        print(f"resumed at step {st['i']}", file=sys.stderr)
        return st, rng
    except (OSError, ValueError, KeyError, TypeError):  # none, or not ours: from the top
        rng = random.Random(seed)
        return {"i": 0, "accepted": 0, "x": 0.0, "y": 5.0, "s": [0.0] * 4}, rng


def save(st, rng):
    st["rng"] = rng.getstate()
    try:
        with open("/checkpoint/state.tmp", "w") as f:
            json.dump(st, f)
        os.replace("/checkpoint/state.tmp", "/checkpoint/state")
    except OSError:  # no checkpoint directory (an older jobber): run straight through
        pass


st, rng = load()
i, accepted, x, y = st["i"], st["accepted"], st["x"], st["y"]
sx, sy, sxx, syy = st["s"]
lp = logp(x, y)
gauss, uniform, log = rng.gauss, rng.random, math.log
while i < steps:
    if every > 0 and i > 0 and i % every == 0:
        save({"i": i, "accepted": accepted, "x": x, "y": y, "s": [sx, sy, sxx, syy]}, rng)
    nx, ny = x + h * gauss(), y + h * gauss()
    nlp = logp(nx, ny)
    if log(1.0 - uniform()) < nlp - lp:
        x, y, lp = nx, ny, nlp
        accepted += 1
    sx += x
    sy += y
    sxx += x * x
    syy += y * y
    i += 1
n = max(steps, 1)
mx, my = sx / n, sy / n
print(
    repr(mx), repr(my), repr(sxx / n - mx * mx), repr(syy / n - my * my), repr(accepted / n), steps
)
