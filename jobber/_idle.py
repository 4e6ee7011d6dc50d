"""Is the machine otherwise idle? Readings in, a verdict out.

Two signals, read by `read_host()` on Linux:

- the 1-minute load average minus the jobs this jobber is running itself: other
  processes wanting CPU mean the owner is using the machine;
- keyboard and mouse interrupts (the i8042 and similar lines of
  /proc/interrupts): any change since the last reading means a person is at it.
  Machines without such lines (servers, containers) simply never report input.

The machine counts as idle once both have been quiet for `idle_after_s`; it
counts as busy at once, so jobs are suspended as soon as the owner comes back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

INPUT_NAMES = ("i8042", "keyboard", "mouse", "touchpad")


@dataclass(frozen=True, slots=True)
class HostReading:
    load: float  # 1-minute load average
    input_events: int | None  # keyboard/mouse interrupts so far, None if unknown


def read_host(proc: Path = Path("/proc")) -> HostReading:
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return HostReading(load, _input_interrupts(proc / "interrupts"))


def _input_interrupts(path: Path) -> int | None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    total, seen = 0, False
    for line in lines[1:]:
        if any(name in line.lower() for name in INPUT_NAMES):
            seen = True
            for field in line.split(":", 1)[1].split():
                if not field.isdigit():
                    break
                total += int(field)
    return total if seen else None


class IdleDetector:
    def __init__(self, cpus: int, *, load_threshold: float = 0.5, idle_after_s: float = 60.0):
        self.cpus = cpus
        self.load_threshold = load_threshold  # other processes' load per CPU counted as use
        self.idle_after_s = idle_after_s
        self._last_input: int | None = None
        self._busy_at = float("-inf")  # when the machine was last seen in use
        self._reading: tuple[float, float, bool] | None = None  # load, others', input seen

    def update(self, reading: HostReading, own_running: int, now: float) -> bool:
        """Feed one reading; True if jobs may run now."""
        others = max(0.0, reading.load - own_running)
        if others > self.load_threshold * self.cpus:
            self._busy_at = now
        touched = False
        if reading.input_events is not None:
            if self._last_input is not None and reading.input_events != self._last_input:
                self._busy_at = now
                touched = True
            self._last_input = reading.input_events
        self._reading = (reading.load, others, touched)
        return now - self._busy_at >= self.idle_after_s

    def figures(self, now: float) -> dict | None:
        """What decided the latest verdict, for the owner (status): the load, the part of
        it that is not our jobs', the most that counts as idle, whether keyboard or mouse
        moved, and how long the machine has been quiet (and must be)."""
        if self._reading is None:
            return None
        load, others, touched = self._reading
        return {
            "load": round(load, 2),
            "others_load": round(others, 2),
            "threshold": self.load_threshold * self.cpus,
            "input": touched,
            "quiet_s": None if self._busy_at == float("-inf") else round(now - self._busy_at, 1),
            "idle_after_s": self.idle_after_s,
        }


class Throttle:
    """BOINC's CPU limit: within each period, run `pct` percent of the time."""

    def __init__(self, pct: float, period_s: float = 2.0) -> None:
        if not 0 < pct <= 100:
            raise ValueError("--cpu-limit must be in (0, 100]")
        self.pct = pct
        self.period_s = period_s

    def running(self, now: float) -> bool:
        return self.pct >= 100 or (now % self.period_s) < self.period_s * self.pct / 100

    def next_change(self, now: float) -> float:
        """Seconds until `running` flips (a large number if it never does)."""
        if self.pct >= 100:
            return 3600.0
        phase = now % self.period_s
        run_s = self.period_s * self.pct / 100
        return (run_s - phase) if phase < run_s else (self.period_s - phase)
