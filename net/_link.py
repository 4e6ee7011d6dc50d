"""One remote end as a requester sees it: the Lazy Pirate pattern, once. No sockets, no clock.

Theory of operation
-------------------
A jobber to its dealers, the relay to its upstream, a dealer to its peers, a
jobber to its allocator and a one-shot ask from the command line all talk to a
server the same way (the zguide's Lazy Pirate): send a request with an id,
wait for the reply that names that id, and give up after a timeout. This
module holds that rule; the shells own the sockets and the clock and pass
`now` in.

Requests. At most one request of each kind is out at a time (a jobber may
have a `bored`, a `results`, an `alive` and a `hello` out together, one of
each; a peer link has one `work_query`). Each has an id (from a counter here,
or given), its kind, when it went and its deadline (`sent_at + timeout_s`).
A reply is matched by its `re` against the request out; a reply to anything
else (late, after a timeout; a duplicate; forged) changes nothing.

Failures. A request past its deadline, or a send or receive the transport
refused, is a **failed contact**: every request out is forgotten (their
replies will no longer match), the backoff counts one failure (net._backoff,
the project's one rule: doubling from its minimum to its cap, jittered), and
the socket must be **reset** (`take_reset`), since a ZeroMQ REQ or DEALER
socket whose request went unanswered is in a state nobody knows (a reply may
still arrive on it, queued messages may still go). Several requests late at
once are still one failed contact. Any answer resets the backoff. An `error`
a caller counts as a failure is an answer all the same (`error_answer`): the
backoff counts it, the socket and the other requests on it stay.

Keys. The server's public key is **known** (given by its owner, or pinned
before), or not yet known: then its plaintext port is asked (`hello`) and
the key it announces is **learnt** on first use (the caller pins it). A key
learnt that way is **re-checked** by a `hello` after each failed contact
(has the server been replaced?), where the link asks it (`recheck_learnt`:
the jobber does; the relay and the allocator link keep the key they pinned).
A key heard that differs from the one held is **changed**: the link is
refused, never silently switched to it.

    verdict   the key heard in a hello            the link
    learnt    none was held                       uses it from now on (pin it)
    known     the one held                        goes on (any re-check is done)
    changed   another than the one held           refused: nothing more is asked

Deadlines. Two rules grew in the project: a request is late once `now` is
past its deadline (the jobber, the relay, the allocator link), or from its
deadline on (the peers, whose tests pin the boundary). `late_at_deadline`
chooses; it changes nothing but the one instant. Lateness is `now - sent_at`
against the timeout, the arithmetic each link had, so no boundary moved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from net._backoff import MAX_BACKOFF_S, MIN_BACKOFF_S, Backoff, backoff_s

__all__ = [
    "HELLO",
    "MAX_BACKOFF_S",
    "MIN_BACKOFF_S",
    "Backoff",
    "KeyVerdict",
    "Link",
    "Request",
    "backoff_s",
]

HELLO = "hello"  # the kind of the request that asks a server's plaintext port for its key


class KeyVerdict(str, Enum):
    """What a key heard in a `hello` means for the link (see the table above)."""

    LEARNT = "learnt"
    KNOWN = "known"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class Request:
    """One request out: its id, its kind, when it went and when it is given up on."""

    id: int
    kind: str
    sent_at: float
    deadline: float


@dataclass
class Link:
    """One remote end: the requests out, the backoff, whether the socket must be reset,
    and what is known of its key."""

    timeout_s: float
    backoff: Backoff = field(default_factory=Backoff)
    key: str | None = None  # the server's public key, hex; None until known
    key_from_hello: bool = False  # learnt on first use (so re-checked after failures)
    check_key: bool = False  # a hello must go before the next request: has the key changed?
    refused: str = ""  # why nothing more is asked of it ("" while it may be asked)
    late_at_deadline: bool = False  # late from the deadline on (else only once past it)
    recheck_learnt: bool = True  # a key learnt from a hello is re-checked after failures
    reset_due: bool = False  # the socket must be closed and made anew before the next send
    next_id: int = 1  # the id the next request takes when none is given
    out: dict[str, Request] = field(default_factory=dict)  # kind -> the request out

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"the timeout must be positive, not {self.timeout_s}")

    # --- queries ---------------------------------------------------------------

    def busy(self, kind: str | None = None) -> bool:
        """A request of `kind` is out (any kind: None)."""
        return bool(self.out) if kind is None else kind in self.out

    def may_send(self, kind: str, now: float) -> bool:
        """A request of `kind` may go now: none is out, the backoff is over, not refused."""
        return not self.refused and kind not in self.out and self.backoff.ready(now)

    def needs_hello(self) -> bool:
        """Its key must be asked for (unknown, or to be re-checked) before other requests."""
        return not self.refused and (self.key is None or self.check_key)

    def usable(self) -> bool:
        """Requests under its key may go (the key is known and not in doubt)."""
        return not self.refused and self.key is not None and not self.check_key

    def is_late(self, request: Request, now: float) -> bool:
        waited = now - request.sent_at  # (not `now > deadline`: the same float rounding
        # as the five links had, so a boundary test stays where it was)
        if self.late_at_deadline:
            return waited >= self.timeout_s
        return waited > self.timeout_s

    def late(self, now: float) -> list[Request]:
        """The requests out whose deadline has come (see `late_at_deadline`)."""
        return [r for r in self.out.values() if self.is_late(r, now)]

    def next_at(self, now: float) -> float:
        """When something may next change: the earliest deadline out, else the end of the
        backoff (`now` if it is over)."""
        if self.out:
            return min(r.deadline for r in self.out.values())
        return max(now, self.backoff.until)

    # --- requests --------------------------------------------------------------

    def sent(self, kind: str, now: float, rid: int | None = None) -> Request:
        """Record a request of `kind` as out (its id `rid`, else the next of the counter).
        A second request of a kind already out is a bug of the caller's: it raises."""
        if kind in self.out:
            raise ValueError(f"a {kind} is already out (request {self.out[kind].id})")
        if rid is None:
            rid = self.next_id
            self.next_id += 1
        request = Request(rid, kind, now, now + self.timeout_s)
        self.out[kind] = request
        return request

    def match(self, re: object, kinds: tuple[str, ...] | None = None) -> Request | None:
        """The request out that a reply naming `re` answers (only of `kinds`, if given);
        None if it answers none. Changes nothing."""
        if re is None:
            return None
        for request in self.out.values():
            if request.id == re and (kinds is None or request.kind in kinds):
                return request
        return None

    def answered(
        self, re: object, now: float, kinds: tuple[str, ...] | None = None
    ) -> Request | None:
        """A reply naming `re`: if it answers a request out (of `kinds`), that request is
        done and the backoff reset; else nothing changes. Returns the request answered."""
        request = self.match(re, kinds)
        if request is None:
            return None
        del self.out[request.kind]
        self.backoff.succeeded()
        return request

    def forget(self, kind: str) -> Request | None:
        """Stop waiting for the request of `kind` (no failure, no success)."""
        return self.out.pop(kind, None)

    # --- failures --------------------------------------------------------------

    def timed_out(self, now: float) -> float | None:
        """If any request out is late, one failed contact (see `failed`): its wait; else
        None and nothing changes."""
        if not self.late(now):
            return None
        return self.failed(now)

    def failed(self, now: float, recheck: bool = False) -> float:
        """A failed contact: every request out is forgotten, the socket must be reset, the
        backoff counts one failure. A key learnt from a hello (or, `recheck`, one the
        caller doubts) is re-checked before the next request, unless the failure was the
        hello itself. Returns the wait the backoff chose."""
        learnt = self.key_from_hello and self.recheck_learnt
        self.check_key = (learnt or recheck) and HELLO not in self.out
        self.out.clear()
        self.reset_due = True
        return self.backoff.failed(now)

    def error_answer(
        self, re: object, now: float, kinds: tuple[str, ...] | None = None
    ) -> float | None:
        """An error answering the request `re` (of `kinds`): that request is done and the
        backoff counts one failure, but the socket answered, so it stays, and so do the
        other requests out on it. Returns the wait chosen; None (nothing changes) if it
        answers no request out."""
        request = self.match(re, kinds)
        if request is None:
            return None
        del self.out[request.kind]
        return self.backoff.failed(now)

    def take_reset(self) -> bool:
        """Whether the socket must be reset now; the caller does it (asked once)."""
        due, self.reset_due = self.reset_due, False
        return due

    # --- keys ------------------------------------------------------------------

    def heard_key(self, key: str) -> KeyVerdict:
        """The key a hello announced. Learnt if none was held, known if the same, changed
        (and the link refused) if another: a changed key is never taken silently."""
        self.check_key = False
        if self.key is None:
            self.key, self.key_from_hello = key, True
            return KeyVerdict.LEARNT
        if key == self.key:
            return KeyVerdict.KNOWN
        self.refuse(f"key mismatch: it presents key {key}, not {self.key}")
        return KeyVerdict.CHANGED

    def refuse(self, why: str) -> None:
        """Nothing more is asked of it: its requests are forgotten, its socket reset."""
        self.refused = why
        self.out.clear()
        self.reset_due = True
