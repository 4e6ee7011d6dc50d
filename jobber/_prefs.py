"""The lender's preferences, as BOINC's users know them, and the state the owner set
(suspended, dealers paused), kept across restarts. Pure but for `load`, `save` and
the readings of the machine (`on_battery`, `disk_free`).

Preferences (each from the command line, the --config file, and the control
socket, which the manager page speaks):

    name              unit     meaning (None: no such limit)
    no_battery        bool     suspend jobs while the machine runs on batteries
    memory_in_use_mb  MiB      the most one job may use while the machine is in use
    memory_idle_mb    MiB      ... while it is idle (both within --memory)
    max_disk_mb       MiB      the most the cache may take (within --cache-mb)
    max_disk_pct      percent  ... as a share of the disk's free space (with the cache's)
    compute_hours     "H-H"    jobs run only in these local hours ("22-7": overnight)
    net_mb_day        MiB      the most traffic with dealers a day (local days); past
                               it no more work is asked for that day (results, alive
                               and the files of jobs held still go)

"In use" is the idle detector's verdict (jobber._idle): another program's load,
or keyboard and mouse. A job running with more memory than the in-use allowance
is suspended while the machine is in use; dealers are told the allowance of the
moment (`host.memory_mb`), so they send nothing bigger.

`owner.json` in the data directory keeps what the owner set, keyed by name with a
schema number: a file that does not read as this schema is set aside with a
warning (the jobber starts with the options given), never misread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from net._files import write_atomic

log = logging.getLogger(__name__)

SCHEMA = 1
FILE = "owner.json"
MIB = 1024 * 1024
POWER_SUPPLY = Path("/sys/class/power_supply")
_HOURS = re.compile(r"\A\s*(\d{1,2})(?::(\d{2}))?\s*-\s*(\d{1,2})(?::(\d{2}))?\s*\Z")


def parse_hours(text: str) -> tuple[float, float]:
    """ "H-H" or "H:MM-H:MM" (local time, 0..24; "22-7" wraps past midnight) as hours."""
    m = _HOURS.match(text)
    if m is None:
        raise ValueError(f"compute_hours {text!r}: expected START-END, like 9-17 or 22-7")
    start = int(m[1]) + int(m[2] or 0) / 60
    end = int(m[3]) + int(m[4] or 0) / 60
    if not (0 <= start <= 24 and 0 <= end <= 24) or (m[2] and int(m[2]) > 59):
        raise ValueError(f"compute_hours {text!r}: hours 0 to 24, minutes 0 to 59, like 22-7")
    return start, end


@dataclass(frozen=True)
class Prefs:
    no_battery: bool = False
    memory_in_use_mb: int | None = None
    memory_idle_mb: int | None = None
    max_disk_mb: int | None = None
    max_disk_pct: float | None = None
    compute_hours: str | None = None
    net_mb_day: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.no_battery, bool):
            raise ValueError("no_battery: expected true or false")
        for name in ("memory_in_use_mb", "memory_idle_mb", "max_disk_mb", "net_mb_day"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
                raise ValueError(f"{name}: expected a whole number of MiB, 0 or more, not {v!r}")
        pct = self.max_disk_pct
        if pct is not None and (
            isinstance(pct, bool) or not isinstance(pct, int | float) or not 0 < pct <= 100
        ):
            raise ValueError(f"max_disk_pct: expected a percentage, 0 to 100 (not 0), not {pct!r}")
        if self.compute_hours is not None:
            if not isinstance(self.compute_hours, str):
                raise ValueError("compute_hours: expected text like 22-7")
            parse_hours(self.compute_hours)

    def changed(self, updates: dict[str, Any]) -> Prefs:
        """These preferences with `updates` (name -> value, None: no such limit); a
        ValueError names an unknown preference or a bad value, and changes nothing."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(updates) - names)
        if unknown:
            known = ", ".join(sorted(names))
            raise ValueError(f"unknown preference {unknown[0]!r} (known: {known})")
        clean = {k: (False if k == "no_battery" and v is None else v) for k, v in updates.items()}
        pct = clean.get("max_disk_pct")
        if isinstance(pct, int) and not isinstance(pct, bool):
            clean["max_disk_pct"] = float(pct)
        return replace(self, **clean)

    def hours(self) -> tuple[float, float] | None:
        return None if self.compute_hours is None else parse_hours(self.compute_hours)

    def memory_mb(self, memory_mb: int, in_use: bool) -> int:
        """The most one job may use now: `memory_mb` (the owner's --memory, or the pool's),
        within the allowance for the machine's state."""
        cap = self.memory_in_use_mb if in_use else self.memory_idle_mb
        return memory_mb if cap is None else max(1, min(memory_mb, cap))

    def cache_mb(self, cache_mb: int, free_bytes: int | None, held_bytes: int) -> int:
        """The cache's allowance: `cache_mb`, within max_disk_mb and within max_disk_pct
        of what the disk could give it (its free space and what the cache holds now)."""
        out = cache_mb
        if self.max_disk_mb is not None:
            out = min(out, self.max_disk_mb)
        if self.max_disk_pct is not None and free_bytes is not None:
            out = min(out, math.floor((free_bytes + held_bytes) * self.max_disk_pct / 100 / MIB))
        return max(1, out)

    def named(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OwnerState:
    """What the owner set and the jobber keeps across restarts."""

    suspended: bool = False
    paused: list[str] = field(default_factory=list)  # dealer addresses asked for no work
    prefs: Prefs = field(default_factory=Prefs)
    net_day: str = ""  # the local day the traffic is counted for (YYYY-MM-DD)
    net_bytes: int = 0  # traffic with dealers that day, both ways

    def count(self, n: int, day: str) -> None:
        if day != self.net_day:
            self.net_day, self.net_bytes = day, 0
        self.net_bytes += n

    def over_budget(self, day: str) -> bool:
        limit = self.prefs.net_mb_day
        return limit is not None and day == self.net_day and self.net_bytes >= limit * MIB


def load(data_dir: Path) -> OwnerState:
    """What the owner set before; a fresh state if nothing was kept or the file does not
    read as this schema (logged, and kept aside as owner.json.bad)."""
    path = data_dir / FILE
    try:
        body = json.loads(path.read_text())
        if not isinstance(body, dict) or body.get("schema") != SCHEMA:
            raise ValueError(f"not the owner's state of schema {SCHEMA}")
        paused = body.get("paused", [])
        if not isinstance(paused, list) or not all(isinstance(a, str) for a in paused):
            raise ValueError("paused: expected a list of dealer addresses")
        net = body.get("net", {})
        state = OwnerState(
            suspended=body.get("suspended") is True,
            paused=list(paused),
            prefs=Prefs().changed(body.get("prefs", {})),
            net_day=str(net.get("day", "")),
            net_bytes=int(net.get("bytes", 0)),
        )
    except FileNotFoundError:
        return OwnerState()
    except (OSError, ValueError, TypeError, AttributeError) as e:
        log.warning("%s cannot be read (%s): starting without it", path, e)
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(FILE + ".bad"))
        return OwnerState()
    return state


def save(data_dir: Path, state: OwnerState) -> None:
    body = {
        "schema": SCHEMA,
        "suspended": state.suspended,
        "paused": sorted(set(state.paused)),
        "prefs": state.prefs.named(),
        "net": {"day": state.net_day, "bytes": state.net_bytes},
    }
    write_atomic(data_dir / FILE, (json.dumps(body, indent=1) + "\n").encode(), durable=True)


def on_battery(root: Path = POWER_SUPPLY) -> bool | None:
    """Whether the machine runs on batteries now (Linux's power-supply class): True if a
    battery discharges and no mains supply is online; None where the system does not
    say (no such class: a desktop without one, a container, another system)."""
    try:
        supplies = list(root.iterdir())
    except OSError:
        return None
    mains_online = discharging = False
    seen = False
    for s in supplies:
        kind = _read(s / "type")
        if kind in ("Mains", "USB", "USB_C", "USB_PD"):
            seen = True
            mains_online |= _read(s / "online") == "1"
        elif kind == "Battery":
            seen = True
            discharging |= _read(s / "status") == "Discharging"
    if not seen:
        return None
    return discharging and not mains_online


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def disk_free(path: Path) -> int | None:
    """Bytes free to this user on the disk holding `path` (None if it cannot be read)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize
