"""Exponential backoff from dealers that cannot be reached, as in BOINC.

After the n-th failed contact in a row the wait before the next try is

    base(n) = min(max_s, min_s * 2 ** (n - 1))
    wait    = base(n) * (1 - jitter * u),  u uniform in [0, 1)

so waits double from `min_s` to the cap `max_s`, and the jitter (BOINC uses
0.5) keeps many jobbers that lost the same dealer from coming back in step.
A success resets n to 0. The defaults, 60 s to 4 h, are BOINC's spirit: a
dealer that is down for a day is asked about 10 times an hour at first and
then six times a day.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MIN_BACKOFF_S = 60.0
MAX_BACKOFF_S = 4 * 3600.0
JITTER = 0.5


def backoff_s(failures: int, min_s: float, max_s: float, u: float, jitter: float = JITTER) -> float:
    """The wait after `failures` failed contacts in a row (0 failures: no wait)."""
    if failures <= 0:
        return 0.0
    # 2**(failures-1) overflows float for huge counts; the cap is reached long before
    exponent = min(failures - 1, 64)
    base = min(max_s, min_s * 2.0**exponent)
    return base * (1.0 - jitter * u)


@dataclass
class Backoff:
    """Per-dealer backoff state: when it may next be tried."""

    min_s: float = MIN_BACKOFF_S
    max_s: float = MAX_BACKOFF_S
    failures: int = 0
    until: float = 0.0  # monotonic time before which the dealer is not tried
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def failed(self, now: float) -> float:
        """Record a failed contact; return the wait chosen."""
        self.failures += 1
        wait = backoff_s(self.failures, self.min_s, self.max_s, self.rng.random())
        self.until = now + wait
        return wait

    def succeeded(self) -> None:
        self.failures = 0
        self.until = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.until
