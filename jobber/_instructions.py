"""An allocator's instructions: kept on disk, and merged with the owner's own limits. Pure
but for `load` and `save`.

The pool's preferences (protocol.Prefs) take the place of the jobber's defaults, but
never loosen a limit its owner set (on the command line or in --config): where
the owner set one, the stricter of the two holds (fewer slots, less CPU, less
memory, less disk, idle-only, a longer idle wait). Hours of day are the pool's
alone: outside the compute window jobs are suspended and no work is asked for;
outside the network window no work is asked for (results and alive messages
still go, so that no finished work waits and no lease lapses).

On disk, `instructions.json` in the data directory holds the last instructions,
keyed by field name with a schema number, and the share debts: a jobber whose
allocator is unreachable starts and goes on with them. `Kept` is declared once
(protocol._schema): its checks and its JSON follow from that declaration, with
the same bounds as the `instructions` message it came in (the preferences by
their wire names, as the message has them), so a file that does not read as
what the allocator could have sent is refused, never misread.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from net._files import write_atomic
from protocol._alloc import MAX_POOL_NAME, MAX_PROJECTS, Instructions, Prefs, Project
from protocol._schema import (
    MAX_STR,
    ProtocolError,
    _float,
    _int,
    _list,
    _map,
    _Record,
    _record,
    _str,
    checked,
    record,
)

SCHEMA = 1
FILE = "instructions.json"


@dataclass(frozen=True)
class Owner:
    """What the jobber would use without a pool, and which of it its owner set."""

    slots: int
    cpus: int
    memory_mb: int
    cpu_limit: float
    cache_mb: int
    idle_only: bool
    idle_after_s: float
    explicit: frozenset[str] = frozenset()  # Config field names the owner gave


@dataclass(frozen=True)
class Effective:
    slots: int
    memory_mb: int
    cpu_limit: float
    cache_mb: int
    idle_only: bool
    idle_after_s: float
    hours: tuple[float, float] | None = None  # compute window, local time
    net_hours: tuple[float, float] | None = None  # window for asking for work

    def computes_at(self, hour: float) -> bool:
        return self.hours is None or in_window(hour, *self.hours)

    def asks_at(self, hour: float) -> bool:
        return self.net_hours is None or in_window(hour, *self.net_hours)


def in_window(hour: float, start: float, end: float) -> bool:
    """`hour` (0 <= hour < 24) is in [start, end), wrapping past midnight if end < start;
    start == end is the whole day."""
    start, end = start % 24, end % 24
    if start == end:
        return True
    if start < end:
        return start <= hour < end
    return hour >= start or hour < end


def effective(owner: Owner, prefs: Prefs | None) -> Effective:
    """The settings to run with: the pool's in place of defaults, never past the owner's."""
    if prefs is None:
        prefs = Prefs()
    set_ = owner.explicit

    def lower(name: str, mine: float, pool: float | None) -> Any:
        if pool is None:
            return mine
        return min(mine, pool) if name in set_ else pool

    slots = owner.slots
    if prefs.slots is not None:
        slots = min(slots, prefs.slots)
    if prefs.max_cpus_pct is not None:
        slots = min(slots, max(1, math.floor(owner.cpus * prefs.max_cpus_pct / 100)))
    idle_after = owner.idle_after_s
    if prefs.idle_after_s is not None:
        idle_after = (
            max(idle_after, prefs.idle_after_s) if "idle_after_s" in set_ else prefs.idle_after_s
        )
    hours = None if prefs.start_hour is None else (prefs.start_hour, prefs.end_hour)
    net = None if prefs.net_start_hour is None else (prefs.net_start_hour, prefs.net_end_hour)
    return Effective(
        slots=max(1, slots),  # the machine never has fewer slots than it was started with
        memory_mb=int(lower("memory_mb", owner.memory_mb, prefs.memory_mb)),
        # a CPU limit of 100 is the default and the most: min() is right either way
        cpu_limit=min(owner.cpu_limit, prefs.cpu_limit or 100.0),
        cache_mb=int(lower("cache_mb", owner.cache_mb, prefs.cache_mb)),
        idle_only=owner.idle_only or bool(prefs.idle_only),
        idle_after_s=float(idle_after),
        hours=hours,  # type: ignore[arg-type]
        net_hours=net,  # type: ignore[arg-type]
    )


_ANY = sys.float_info.max  # a debt is any finite number
MAX_DEBTS = 4096  # dealers a jobber keeps a share debt for


@record
class Kept(_Record):
    """Instructions as the jobber keeps them."""

    allocator: str = checked(_str(MAX_STR))
    pool: str = checked(_str(MAX_POOL_NAME))
    serial: int = checked(_int())
    projects: tuple[Project, ...] = checked(_list(_record(Project), MAX_PROJECTS))
    prefs: Prefs = checked(_record(Prefs))
    refresh_s: float = checked(_float(0.1, 1e6))
    received: float = checked(_float(0.0, 1e12))  # Unix time
    debts: dict[str, float] = checked(_map(_str(MAX_STR), _float(-_ANY, _ANY), MAX_DEBTS))


def from_message(allocator: str, msg: Instructions, received: float, debts) -> Kept:
    return Kept(
        allocator, msg.pool, msg.serial, msg.projects, msg.prefs, msg.refresh_s, received, debts
    )


def prefs_dict(prefs: Prefs) -> dict[str, Any]:
    """The preferences set, by their wire names (Prefs.named)."""
    return prefs.named()


def prefs_text(prefs: Prefs) -> str:
    return (
        ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in prefs_dict(prefs).items()
        )
        or "none"
    )


def save(data_dir: Path, kept: Kept) -> None:
    body = {"schema": SCHEMA, **kept._to_wire()}
    write_atomic(data_dir / FILE, (json.dumps(body, indent=1) + "\n").encode(), durable=True)


def load(data_dir: Path) -> Kept | None:
    """The instructions kept, or None if there are none; ValueError if the file does not
    read as instructions of this schema (it is then ignored, never misread)."""
    path = data_dir / FILE
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(body, dict) or body.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not instructions of schema {SCHEMA}")
    body.setdefault("debts", {})  # a file from before the debts were kept
    try:
        if isinstance(body.get("prefs"), dict):
            Prefs.from_names(body["prefs"])  # a preference this jobber does not know: refused
        return Kept._from_wire(body, FILE)
    except ProtocolError as e:
        raise ValueError(f"{path}: {e}") from None
