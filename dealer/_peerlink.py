"""The sockets of a dealer's peer links: `work_query` out, `work_offer` in, never blocking.

dealer._peers decides whom to ask and what the answers mean; this module only
carries the messages. One DEALER socket per peer, connected to the peer's
plaintext port (the work port + 1; `NAME.public` for ipc and inproc peers),
polled by the dealer's own loop beside its ROUTER sockets: every send and
receive is non-blocking, so a slow or dead peer never holds up a jobber. A
query that goes unanswered has its socket closed and a fresh one made for the
next (Lazy Pirate), so nothing stale is left queued for a dead peer.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import zmq

import protocol as p
from dealer._peers import Peers

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 64 * 1024  # a work_offer is about 100 bytes
MAX_DRAIN = 16  # replies read from one peer per turn (one is expected)


class PeerLinks:
    """The sockets to every peer's plaintext port, fed to and from `peers`."""

    def __init__(self, ctx: zmq.Context, peers: Peers) -> None:
        self.peers = peers
        self._ctx = ctx
        self._socks: dict[str, zmq.Socket] = {}
        self._by_sock: dict[zmq.Socket, str] = {}
        self.changed = True  # the set of sockets changed since the poller last read it
        self._next_at = 0.0  # nothing to expire or send before this (turns are many)

    def sockets(self) -> list[zmq.Socket]:
        self.changed = False
        return list(self._by_sock)

    def timeout_s(self, now: float) -> float:
        return self.peers.next_due(now)

    def turn(self, now: float, readable: Collection[zmq.Socket] | None = None) -> None:
        """Read what peers said, give up on queries too old, send the queries due.
        `readable`: the sockets the poller saw ready (None: look at every one); a turn
        with nothing readable and nothing due costs next to nothing."""
        self.drain(now, readable)
        if now < self._next_at:
            return
        for address in self.peers.expire(now):
            self._reset(address)
        for address, query in self.peers.due(now):
            try:
                self._socket(address).send(p.encode(query), zmq.NOBLOCK)
            except (zmq.ZMQError, ValueError) as e:  # queue full (never here) or a bad endpoint
                if self.peers.unreachable(address, now, f"cannot send: {e}"):
                    self._reset(address)
        self._next_at = now + self.peers.next_due(now)

    def drain(self, now: float, readable: Collection[zmq.Socket] | None = None) -> None:
        if readable is None:
            pairs = list(self._by_sock.items())
        else:  # only what the poll saw ready: no walk over every peer's socket
            pairs = [(s, self._by_sock[s]) for s in readable if s in self._by_sock]
        for sock, address in pairs:
            for _ in range(MAX_DRAIN):
                try:
                    data = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                except zmq.ZMQError as e:
                    if self.peers.unreachable(address, now, f"cannot receive: {e}"):
                        self._reset(address)
                    break
                try:
                    msg = p.decode(data)
                except p.ProtocolError as e:
                    if self.peers.unreachable(address, now, f"sent a malformed reply: {e}"):
                        self._reset(address)
                    break
                if self.peers.heard(address, msg, now):
                    self._next_at = 0.0  # when to ask next has changed
                else:
                    log.debug("peer %s: stale %s dropped", address, msg.TYPE)

    def _socket(self, address: str) -> zmq.Socket:
        s = self._socks.get(address)
        if s is None:
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
            s.setsockopt(zmq.SNDHWM, 4)
            try:
                s.connect(p.public_endpoint(address))
            except (zmq.ZMQError, ValueError):
                s.close()
                raise
            self._socks[address] = s
            self._by_sock[s] = address
            self.changed = True
        return s

    def _reset(self, address: str) -> None:
        self._next_at = 0.0
        s = self._socks.pop(address, None)
        if s is not None:
            del self._by_sock[s]
            s.close(linger=0)
            self.changed = True

    def close(self) -> None:
        for address in list(self._socks):
            self._reset(address)
