"""Relays: a relay speaks for the jobbers behind it (`bored.behalf`, `result.by`, its
`alive`). A part of dealer._service.Service (the `Relays` mixin), over the tables
Service.__init__ makes; it answers through the Service's own `_bored` and `_results`.

Any relay's jobbers are identities of their own here, each with its own standing (its
quota, lost votes, denial), derived from the relay's key and the jobber's, so a relay
can name no identity but its own jobbers'. Only a relay this dealer trusts
(`--trust-relay`) has its jobbers counted as machines of their own (votes); behind any
other relay, every jobber is on the relay's one machine. What one relay can make this
dealer remember is bounded (MAX_BEHIND names at once), and each reply tells the relay
the standing of its jobbers that changed (`standing`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import protocol as p
from dealer._core import Core
from dealer._policy import RETRY_IDLE_S
from protocol import Peer

# identities one relay may name behind it at once (forgotten when idle, as any): what a
# relay, trusted or not, can make this dealer remember is bounded per relay connection
MAX_BEHIND = 1024


@dataclass(frozen=True, slots=True)
class Relayed(Peer):
    """A jobber behind a relay, as the relay named it (`bored.behalf`, `result.by`). Its
    identity is derived from the relay's key and the jobber's, so a relay can name no
    identity but its own jobbers'. Behind a relay this dealer trusts (`--trust-relay`)
    its machine is the address the relay saw, within the relay's own namespace (a lab's
    10.0.0.5 is not another lab's); behind any other relay it is the relay's own machine
    (`under`), so the relay still has one vote and one machine quota, and the identity
    only carries the standing (its own quota, lost votes, denial) of the jobber that
    earned it."""

    relay: str = ""
    under: Peer | None = None  # untrusted: the relay, whose machine this identity is on

    def machine(self, distinct: str) -> str:
        if self.under is not None:
            return self.under.machine(distinct)
        return f"{self.relay[:16]}/{Peer.machine(self, distinct)}"


def behind(relay: Peer, who: p.Attribution, *, trusted: bool = True) -> Relayed:
    """The identity and machine a relay's jobber `who` is counted as."""
    key = hashlib.sha256(f"borednet relayed jobber {relay.key} {who.key}".encode()).hexdigest()
    return Relayed(key, who.machine, relay.key, None if trusted else relay)


class Relays:
    """Service's part that answers relays (see the module's docstring). It uses the
    Service's `_bored`, `_results` and `_label`."""

    core: Core
    distinct: str
    relays: frozenset[str]  # relays whose word on which jobber of theirs ran what is believed
    max_behind: int  # MAX_BEHIND, as it was when the service was made
    # relay key -> {identity behind it: the jobber key the relay named it by}, for the
    # relay's alive and the standing it is told (any relay: see Relayed)
    _behind: dict[str, dict[str, str]]
    # relay key -> {identity behind it: (valid, invalid, denied) as the relay was last
    # told}, so that each ack tells it what changed since (votes settle after an ack)
    _told: dict[str, dict[str, tuple[int, int, bool]]]

    def _speaks_for_others(self, msg: p.Bored | p.Results | p.Alive, peer: Peer) -> bool:
        """A relay's request: from a trusted relay, or naming jobbers behind the sender."""
        if peer.key in self.relays:
            return True
        if isinstance(msg, p.Bored):
            return msg.behalf is not None
        if isinstance(msg, p.Results):
            return any(r.by is not None for r in msg.results)
        return peer.key in self._behind

    def _relayed(self, msg: p.Bored | p.Results | p.Alive, now: float, relay: Peer) -> p.Message:
        """A relay's request: for the jobber it names, or for itself. Any relay's jobbers
        are identities of their own here (their own standing); only a trusted relay's are
        machines of their own (votes): see Relayed."""
        trusted = relay.key in self.relays
        if self.core.is_denied(relay.key) and not (
            isinstance(msg, p.Bored) and msg.behalf is None
        ):  # a denied relay speaks for nobody (for itself, _bored says it is denied)
            return p.Error(msg.id, p.ErrorCode.DENIED, "this relay is denied by the dealer")
        if isinstance(msg, p.Bored):
            if msg.behalf is None:
                self._label(relay, msg.jobber)
                return self._bored(msg, now, relay)
            named = self._behind.get(relay.key, {})
            if (
                len(named) >= self.max_behind
                and behind(relay, msg.behalf, trusted=trusted).key not in named
            ):
                why = f"this relay names {self.max_behind} jobbers already (MAX_BEHIND)"
                return p.RetryLater(msg.id, RETRY_IDLE_S, why)
            who = self._named(relay, msg.behalf, trusted)
            self._label(who, f"{msg.jobber}/{msg.behalf.machine}")
            return self._bored(msg, now, who)
        if isinstance(msg, p.Results):
            self._label(relay, msg.jobber)
            return self._results(msg, now, relay, trusted=trusted, attributed=True)
        self._label(relay, msg.jobber)
        mine = f"{relay.key[:16]}/"  # the relay vouches for every jobber of its own
        names = self._behind.get(relay.key, {})
        jobbers = self.core.jobbers
        # leases only for the jobbers holding work (the rest may be forgotten when idle)
        keys = [k for k in names if k in jobbers and (jobbers[k].held or jobbers[k].gone)]
        if trusted:  # also those named before a restart of this dealer
            keys += [
                k
                for k, r in self.core.jobbers.items()
                if r.machine.startswith(mine) and k not in names and (r.held or r.gone)
            ]
        if relay.key in self.core.jobbers or (not keys and msg.holding):
            keys.append(relay.key)  # (a relay holding nothing is no identity of its own)
        cancel: dict[str, None] = {}
        for key in keys:
            machine = relay.machine(self.distinct) if key == relay.key else None
            cancel.update(dict.fromkeys(self.core.alive(key, now, msg.holding, machine)))
        standing = self._standing(relay, names, every=True)
        return p.AliveAck(msg.id, self.core.policy.lease_s, tuple(cancel), standing)

    def _named(self, relay: Peer, who: p.Attribution, trusted: bool) -> Relayed:
        """The identity of the relay's jobber `who`, remembered as behind the relay."""
        named = behind(relay, who, trusted=trusted)
        self._behind.setdefault(relay.key, {})[named.key] = who.key
        return named

    def _standing(
        self, relay: Peer, names: dict[str, str], *, every: bool = False
    ) -> tuple[p.Standing, ...]:
        """What the relay is told of the jobbers behind it: those in `names` (identity ->
        the key it named), and every other whose standing changed since it was last told
        (`every`: all of them), the first MAX_BATCH."""
        told = self._told.setdefault(relay.key, {})
        out = []
        for ident, key in self._behind.get(relay.key, {}).items():
            rec = self.core.jobbers.get(ident)
            if rec is None:
                continue
            now_ = (rec.valid, rec.invalid, self.core.is_denied(ident))
            if every or ident in names or told.get(ident) != now_:
                told[ident] = now_
                out.append(p.Standing(key, *now_))
                if len(out) >= p.MAX_BATCH:
                    break
        return tuple(out)
