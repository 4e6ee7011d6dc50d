"""The relay's records: what it holds, the lifecycle of an upstream replica as a table,
and the journal operations, each a typed record declared once.

A held upstream replica (`utag`) is in one of three states, and dropped from
any (the upstream acknowledged, rejected or cancelled it):

    state    meaning                                    leaves by
    queued   in the buffer, no jobber of ours runs it   sent to a jobber (out); a late
                                                        result, or given back (done)
    out      one of our jobbers holds it (a local tag)  a result (done); its last local
                                                        replica released (queued)
    done     its result waits to go upstream            dropped

HELD_TRANSITIONS is that table; `Held.fire` moves a replica along it, and an
event the table does not allow raises RelayError and changes nothing.

The journal operations (`Op`) are frozen records; a journal row is their fields
in the order declared (`Op.row`), so each is declared once (relay._journal
writes them; the wire maps inside are the wire's own records' `_to_wire`).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field, fields
from typing import ClassVar

import protocol as p
from dealer._core import MAX_ALLOWANCE, Policy

_DEALER = Policy()  # the dealer's defaults: the relay's jobbers stand as a dealer's do

LEASE_S = _DEALER.lease_s  # a jobber of ours silent this long is taken as gone (the dealer's)
QUOTA = _DEALER.quota  # replicas a new jobber of ours may hold (as the dealer's)
DENY_AFTER = _DEALER.deny_after  # votes lost upstream (more than won) that deny a jobber here


class RelayError(Exception):
    """A transition the relay's own table does not allow: a bug of ours, not the peer's."""


# --- the journal's operations --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Op:
    """A journal operation. `KIND` names it in the journal; `row()` is its fields in order."""

    KIND: ClassVar[str] = ""

    def row(self) -> tuple:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True, slots=True)
class Hold(Op):
    """An upstream replica taken (its spec as the upstream sent it, a wire map)."""

    KIND: ClassVar[str] = "hold"
    utag: str
    spec: dict
    got_at: float
    for_key: str


@dataclass(frozen=True, slots=True)
class Payload(Op):
    """A module's bytes, and its author's signature (a wire map) if one came."""

    KIND: ClassVar[str] = "payload"
    sha: str
    wasm: bytes
    sig: dict | None


@dataclass(frozen=True, slots=True)
class Send(Op):
    """A local replica sent to one of our jobbers."""

    KIND: ClassVar[str] = "send"
    ltag: str
    utag: str
    key: str
    address: str
    sent_at: float


@dataclass(frozen=True, slots=True)
class Release(Op):
    """A local replica no longer out (returned, given back, or its jobber gone)."""

    KIND: ClassVar[str] = "release"
    ltag: str


@dataclass(frozen=True, slots=True)
class Done(Op):
    """The result for upstream of a held replica (a wire map), and who gave it."""

    KIND: ClassVar[str] = "done"
    utag: str
    result: dict
    by: str


@dataclass(frozen=True, slots=True)
class Drop(Op):
    """A held replica gone: acknowledged, rejected or cancelled upstream."""

    KIND: ClassVar[str] = "drop"
    utag: str


@dataclass(frozen=True, slots=True)
class Next(Op):
    """The next local tag's number."""

    KIND: ClassVar[str] = "next"
    next: int


OPS: dict[str, type[Op]] = {c.KIND: c for c in (Hold, Payload, Send, Release, Done, Drop, Next)}

# --- an upstream replica's lifecycle -------------------------------------------------


class HeldState(str, enum.Enum):
    QUEUED = "queued"
    OUT = "out"
    DONE = "done"
    DROPPED = "dropped"


HELD_TRANSITIONS: dict[tuple[HeldState, str], HeldState] = {
    (HeldState.QUEUED, "sent"): HeldState.OUT,
    (HeldState.OUT, "sent"): HeldState.OUT,  # (another local replica: never done today)
    (HeldState.OUT, "released"): HeldState.QUEUED,  # its last local replica came back
    (HeldState.DONE, "released"): HeldState.DONE,
    (HeldState.QUEUED, "result"): HeldState.DONE,  # late, from a jobber it was released from
    (HeldState.OUT, "result"): HeldState.DONE,
    (HeldState.QUEUED, "given_back"): HeldState.DONE,  # unrun: the upstream sends it elsewhere
    (HeldState.QUEUED, "dropped"): HeldState.DROPPED,
    (HeldState.OUT, "dropped"): HeldState.DROPPED,
    (HeldState.DONE, "dropped"): HeldState.DROPPED,
}


@dataclass(slots=True)
class Held:
    """One upstream replica the relay holds."""

    utag: str
    spec: p.JobSpec  # as the upstream sent it: deadline_s counts from got_at
    got_at: float
    result: p.Result | None = None  # done: the result for upstream (its tag is utag)
    by: str = ""  # done: the key of the jobber of ours that gave the result
    for_key: str = ""  # attributed: the jobber of ours it was fetched for ("": any)
    local: set[str] = field(default_factory=set)  # local tags out for it
    state: HeldState = HeldState.QUEUED

    def __post_init__(self) -> None:  # (as a journal kept it)
        if self.result is not None:
            self.state = HeldState.DONE
        elif self.local:
            self.state = HeldState.OUT

    @property
    def deadline_at(self) -> float:
        return self.got_at + self.spec.deadline_s

    def fire(self, event: str) -> None:
        try:
            self.state = HELD_TRANSITIONS[(self.state, event)]
        except KeyError:
            raise RelayError(
                f"held {self.utag}: {event} not allowed in state {self.state.value}"
            ) from None


@dataclass(frozen=True, slots=True)
class Local:
    """One replica sent to one of our jobbers."""

    ltag: str
    utag: str
    key: str
    address: str
    sent_at: float


@dataclass(slots=True)
class Jobber:
    """One of our jobbers, as its requests showed it."""

    key: str
    address: str = ""
    label: str = ""
    host: p.HostFacts | None = None
    last_seen: float = 0.0
    results: int = 0  # results taken from it
    asked_at: float = 0.0  # attributed: when the relay last asked upstream on its behalf
    quiet_until: float = 0.0  # attributed: the upstream's retry_later for it
    done: deque[float] = field(default_factory=deque)  # when its recent results came
    allowance: int = QUOTA  # replicas of ours it may hold (see Standing in relay._core)
    implausible: int = 0  # results refused here as implausible
    won: int = 0  # its outputs the upstream accepted in a quorum (as it last said)
    lost: int = 0  # its outputs that lost the vote upstream (as it last said)
    denied: str = ""  # why it is denied here ("": it is not)

    def good(self) -> None:
        self.allowance = min(MAX_ALLOWANCE, self.allowance + 1)

    def bad(self) -> None:
        self.allowance = max(1, self.allowance // 2)
