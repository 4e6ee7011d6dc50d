"""The allocator's rules as data and checks: its roles and what each may do (PERMITTED),
its bounds, its errors, and the checks of an admin's arguments. No database: the
allocator's core (allocator._core) applies them to its tables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import protocol as p
from protocol._alloc import Prefs

ROOT, ALLOCATOR_ADMIN, SUPPLIER_ADMIN = "root", "allocator_admin", "supplier_admin"
ROLES = (ROOT, ALLOCATOR_ADMIN, SUPPLIER_ADMIN)
REFRESH_S = 300.0  # how often jobbers ask for their instructions again, unless told
CHECK_S = 5.0  # how soon jobbers ask again to hear of a change (their instructions' check_s)
SEEN_EVERY_S = 60.0  # a machine's last_seen is rewritten at most this often if nothing changed
# a machine heard from within this many refresh intervals counts as active
ACTIVE_REFRESHES = 3
HISTORY_ROWS = 1000  # history points a stats reply carries at most (latest first)
MAX_NAME = 256
MAX_MACHINE_ROWS = 1000  # machines one reply or the page lists at most (counts are whole)
# machines that may join one pool by token from one source (an IPv4 address, an IPv6
# /64): a lab behind one NAT address is one source; a leaked token from one host is
# held to this many rows. Keys an admin admits by hand are not counted.
MAX_PER_ADDRESS = 256
# uses of a join token unless its admin says otherwise: a lab's worth of machines
TOKEN_USES = 1000
MAX_TOKEN_USES = 1_000_000

# op -> roles that may carry it out (a supplier admin only on their own pools)
PERMITTED: dict[str, tuple[str, ...]] = {
    "whoami": (),  # anyone: says which role the key has
    "grant": (ROOT,),
    "revoke": (ROOT,),
    "project_add": (ROOT, ALLOCATOR_ADMIN),
    "project_remove": (ROOT, ALLOCATOR_ADMIN),
    "project_share": (ROOT, ALLOCATOR_ADMIN),
    "pool_add": (ROOT, SUPPLIER_ADMIN),
    "pool_remove": (ROOT, SUPPLIER_ADMIN),
    "pool_prefs": (ROOT, SUPPLIER_ADMIN),
    "admit": (ROOT, SUPPLIER_ADMIN),
    "dismiss": (ROOT, SUPPLIER_ADMIN),
    "join_token": (ROOT, SUPPLIER_ADMIN),
    "list": (ROOT, ALLOCATOR_ADMIN, SUPPLIER_ADMIN),
    "machines": (ROOT, SUPPLIER_ADMIN),
    "stats": (ROOT, ALLOCATOR_ADMIN, SUPPLIER_ADMIN),
}


class AllocatorError(Exception):
    """A request the allocator refuses; nothing changed. `code` goes on the wire."""

    code = p.ErrorCode.UNEXPECTED


class Forbidden(AllocatorError):
    code = p.ErrorCode.FORBIDDEN


def not_admitted(pool: str, key: str) -> Forbidden:
    """The one answer a key not admitted to `pool` gets: the same whether or not the pool
    exists, so a stranger learns nothing from it."""
    return Forbidden(
        f"not admitted: key {key[:12]} may not read the instructions of a pool {pool!r} "
        "here; ask the pool's admin to admit this key, or for a join token (--join)"
    )


@dataclass(frozen=True)
class Role:
    role: str
    supplier: str | None = None


def prefs_json(prefs: Prefs) -> dict[str, Any]:
    """The preferences set, by their wire names, as the pools table keeps them."""
    return prefs.named()


def prefs_of(data: Mapping[str, Any]) -> Prefs:
    """Preferences from a map by wire name; ValueError naming an unknown or bad one."""
    try:
        return Prefs.from_names(data)
    except p.ProtocolError as e:
        raise ValueError(str(e)) from None


def _digest(token: str) -> str:
    """What is kept of a join token: its SHA-256 (a stolen database admits nobody)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _is_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) for k in v)


def _key(v: Any) -> str:
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise AllocatorError("key: expected 64 lowercase hex digits (a CurveZMQ public key)")
    return v


def _name(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v or len(v) > MAX_NAME or v.strip() != v:
        raise AllocatorError(f"{what}: expected a name of 1 to {MAX_NAME} characters")
    return v


def _share(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1e6:
        raise AllocatorError("share: expected a number from 0 to 1000000")
    return float(v)
