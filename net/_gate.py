"""What one source address may cost a server: connections, handshakes and status, rationed.

Theory of operation
-------------------
libzmq bounds each connection of a ROUTER socket: at most RCVHWM messages of at
most MAXMSGSIZE bytes queued in, at most SNDHWM replies queued out (a reply to a
client that does not read is dropped, not buffered). What is left to bound is
how many connections there are, and how much one asker may make the server do.
This module decides both, with no sockets and no clock of its own (`now` in,
decisions out); net._router feeds it libzmq's monitor events and carries out
what it says.

A *source* is what one party is taken to hold (`source_of`): one IPv4 address,
or one IPv6 /64 (a home or an office is given a whole /64, so counting IPv6
addresses one by one would give one party 2^64 sources).

`Ration`: token buckets, one per source and one for all sources together.
`take(source, now)` spends a token and returns 0.0, or returns how many seconds
until the source (or everyone) has one again, and spends nothing. The number of
buckets kept is bounded: a full bucket says nothing and is forgotten first,
then the least recently used.

`Connections`: the live connections, each named by a `Conn` (the listening
socket that accepted it and its file descriptor), from the monitors' ACCEPTED
and DISCONNECTED events. `accepted` says whether to keep a new one: not when all
connections together are at `total`, when its source already holds
`per_source`, or when its source opened connections faster than its handshake
ration. `forget` drops a connection found closed by a sweep (a lost event must
not shut a source out for good).

Why a descriptor alone does not name a connection: a server listens on two
sockets (work and plaintext), each with a monitor of its own, and the kernel
gives a closed connection's descriptor to the next one accepted on either. Each
monitor's events come in the order they happened (one libzmq I/O thread emits
them), but the loop reads one monitor after the other, so a plaintext
connection's DISCONNECTED may be read after the ACCEPTED of the work connection
that took its descriptor. Counted by descriptor, that DISCONNECTED struck the
new connection off: its source held one more connection than counted, and one
more past its cap was kept. Named by socket and descriptor, each event meets
only its own connection. The price: until that late DISCONNECTED is read the
closed connection still counts, so a source at its cap may be refused one it
could have had (its client connects again).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import NamedTuple

import protocol as p

log = logging.getLogger(__name__)

MAX_BUCKETS = 65536  # sources remembered per ration: a few MB at most, then least recent go


def source_of(address: str) -> str:
    """The source an IP address belongs to, as --distinct host counts machines
    (protocol.machine_of): itself (IPv4, or IPv4 mapped into IPv6), its /64 (IPv6), or
    the text as given when it is not an IP address (ipc, inproc)."""
    return p.machine_of(address.strip("[]").partition("%")[0]) if address else address


class Ration:
    """Token buckets: `per_s` tokens a second up to `burst` per source, and `all_per_s` up
    to `all_burst` for every source together."""

    def __init__(
        self,
        per_s: float,
        burst: float,
        all_per_s: float,
        all_burst: float,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        if min(per_s, burst, all_per_s, all_burst) <= 0 or max_buckets < 1:
            raise ValueError("a ration needs positive rates and bursts")
        self.per_s, self.burst = per_s, burst
        self.all_per_s, self.all_burst = all_per_s, all_burst
        self.max_buckets = max_buckets
        self._buckets: dict[str, tuple[float, float]] = {}  # source -> (tokens, at); LRU order
        self._all = (all_burst, float("-inf"))
        self.refused = 0

    @staticmethod
    def _fill(bucket: tuple[float, float], per_s: float, burst: float, now: float) -> float:
        tokens, at = bucket
        return min(burst, tokens + max(0.0, now - at) * per_s)

    def take(self, source: str, now: float) -> float:
        """0.0 and one token spent, or the seconds until `source` may ask again."""
        mine = self._buckets.pop(source, None)
        tokens = self.burst if mine is None else self._fill(mine, self.per_s, self.burst, now)
        everyone = self._fill(self._all, self.all_per_s, self.all_burst, now)
        wait = 0.0
        if tokens < 1:
            wait = (1 - tokens) / self.per_s
        if everyone < 1:
            wait = max(wait, (1 - everyone) / self.all_per_s)
        if wait == 0.0:
            tokens, everyone = tokens - 1, everyone - 1
        else:
            self.refused += 1
        self._buckets[source] = (tokens, now)  # last: the most recently used
        self._all = (everyone, now)
        if len(self._buckets) > self.max_buckets:
            self._shrink(now)
        return wait

    def _shrink(self, now: float) -> None:
        full = [
            s
            for s, b in self._buckets.items()
            if self._fill(b, self.per_s, self.burst, now) >= self.burst
        ]
        for s in full:
            del self._buckets[s]
        while len(self._buckets) > self.max_buckets:  # none full: the least recent go
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


class Conn(NamedTuple):
    """One connection: which of a server's listening sockets accepted it (0, 1, ...)
    and its file descriptor (see the module's doc for why both)."""

    socket: int
    fd: int


class Connections:
    """Live connections, at most `per_source` from one source and `total` in all, opened
    no faster than `handshakes` allows."""

    def __init__(self, per_source: int, total: int, handshakes: Ration) -> None:
        if per_source < 1 or total < per_source:
            raise ValueError("need 1 <= per_source <= total")
        self.per_source, self.total = per_source, total
        self.handshakes = handshakes
        self._by_conn: dict[Conn, str] = {}
        self._live: Counter[str] = Counter()
        self.refused = 0

    def accepted(self, conn: Conn, source: str, now: float) -> str | None:
        """None: keep the connection `conn` from `source`; else why it is to be dropped."""
        if conn in self._by_conn:  # its descriptor was reused: the old connection is gone
            self.disconnected(conn)
        if len(self._by_conn) >= self.total:
            why = f"{self.total} connections open in all"
        elif self._live[source] >= self.per_source:
            why = f"{self.per_source} connections open from {source}"
        elif self.handshakes.take(source, now) > 0:
            why = f"{source} connects faster than {self.handshakes.per_s:g} a second"
        else:
            self._by_conn[conn] = source
            self._live[source] += 1
            return None
        self.refused += 1
        return why

    def disconnected(self, conn: Conn) -> None:
        source = self._by_conn.pop(conn, None)
        if source is None:  # one we refused, or never saw accepted
            return
        self._live[source] -= 1
        if self._live[source] <= 0:
            del self._live[source]

    forget = disconnected  # a sweep found `conn` closed: as if its event had come

    def conns(self) -> list[Conn]:
        return list(self._by_conn)

    def source(self, conn: Conn) -> str | None:
        return self._by_conn.get(conn)

    def live(self, source: str | None = None) -> int:
        """Connections open from `source`, or from everyone."""
        return len(self._by_conn) if source is None else self._live.get(source, 0)

    def status(self) -> dict:
        """For status: how many are open, from how many sources, and how many were refused."""
        return {
            "open": len(self._by_conn),
            "sources": len(self._live),
            "refused": self.refused,
            "per_source": self.per_source,
            "total": self.total,
        }
