"""Warnings that may repeat thousands of times a minute (a dealer sending bad payloads,
refusing every result) are logged once, then as a count per interval."""

from __future__ import annotations

import logging
from collections.abc import Callable

REPEAT_EVERY_S = 60.0  # how often a warning that keeps coming is summarised


class Repeats:
    def __init__(self, log: logging.Logger, every_s: float = REPEAT_EVERY_S) -> None:
        self._log = log
        self._every_s = every_s
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (last logged, repeats since)

    def warn(self, now: float, key: str, text: Callable[[], str]) -> None:
        """Log `text()` the first time `key` comes, then at most once per interval, with how
        many times it came meanwhile."""
        last = self._seen.get(key)
        if last is None:
            self._log.warning("%s", text())
            self._seen[key] = (now, 0)
        elif now - last[0] >= self._every_s:
            self._log.warning(
                "%s (and %d times more in the last %.0f s)", text(), last[1], now - last[0]
            )
            self._seen[key] = (now, 0)
        else:
            self._seen[key] = (last[0], last[1] + 1)
        if len(self._seen) > 1024:  # keys are bounded: forget the oldest
            oldest = min(self._seen, key=lambda k: self._seen[k][0])
            del self._seen[oldest]
