"""The relay's shell: its jobbers' ROUTER, one DEALER socket upstream, the journal.

One thread. Each turn (net._router.RouterServer.turn, with the upstream
around it):

1. `before_turn`: replies from upstream are drained and given to the core
   (relay._core.RelayCore); a request upstream unanswered for its timeout is a
   failed contact (Lazy Pirate, net._link: the socket is closed and a fresh one
   opened for the next try, after the backoff); the core ticks. The core's
   link keeps the requests' deadlines, on the one clock of the turn's `now`;
2. our jobbers' messages are handled by the core;
3. `commit`: everything the core changed is written to the relay's journal in
   one transaction, and only then are the replies sent;
4. `after_turn`: the requests the core wants upstream now (results, bored,
   alive) are sent.

Upstream the relay is a CurveZMQ client with its own key pair (kept beside its
journal), checked against the upstream's key: the one in the address
(`host:port#key`), else the one pinned in `known_dealers` beside the journal,
else the one the upstream's plaintext port announces (`hello`), then pinned,
as a jobber does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from pathlib import Path

import zmq

import protocol as p
from net._keys import KeyPair, z85_of_hex
from net._link import HELLO
from net._pins import Pins
from net._router import DEALER_SNDHWM, RouterServer, frame_cap
from protocol import Peer
from protocol._wire import MAX_OUTPUT_BYTES
from relay._core import RelayCore
from relay._journal import RelayJournal

log = logging.getLogger(__name__)

POLL_S = 0.25  # longest sleep: request timeouts, backoffs and alive are noticed this fast


class Relay(RouterServer):
    """Serves jobbers from a buffer of an upstream dealer's jobs, on `bind`."""

    def __init__(
        self,
        upstream: str,
        bind: str,
        journal: RelayJournal,
        core: RelayCore,
        *,
        keys: KeyPair,
        pins: Path,
        allow: Collection[str] | None = None,
    ) -> None:
        """`allow`: a closed relay: only these jobbers' keys complete the handshake."""
        # replies queued per jobber: as a dealer's (up to 8 fetches and 3 others out)
        cap = frame_cap(MAX_OUTPUT_BYTES // 1024)
        super().__init__(bind, keys, allow=allow, max_frame=cap, sndhwm=DEALER_SNDHWM)
        self.journal = journal
        self.core = core
        self.upstream, key = p.split_key(p.dealer_address(upstream))
        self.pins = Pins(pins)
        pinned = self.pins.get(self.upstream)
        if key is not None and pinned is not None and pinned != key:
            log.warning("upstream %s: the key given replaces the pinned %s", self.upstream, pinned)
        if key is not None:
            self.pins.put(self.upstream, key)
        core.upstream.given_key(key or pinned)
        self._up: zmq.Socket | None = None
        self._hello: zmq.Socket | None = None

    @property
    def upstream_key(self) -> str | None:
        return self.core.up.line.key

    # --- the upstream socket -------------------------------------------------

    def _up_socket(self) -> zmq.Socket:
        if self._up is None:
            assert self.upstream_key is not None
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
            s.curve_secretkey = self.keys.secret
            s.curve_publickey = self.keys.public
            s.curve_serverkey = z85_of_hex(self.upstream_key)
            s.connect(self.upstream)
            self._up = s
        return self._up

    def _close_up(self) -> None:
        for s in (self._up, self._hello):
            if s is not None:
                s.close(linger=0)
        self._up = self._hello = None

    def _failed(self, now: float, why: str) -> None:
        wait = self.core.upstream_failed(now)
        if self.core.upstream.take_reset():
            self._close_up()
        log.warning("upstream %s: %s; next try in %.1f s", self.upstream, why, wait)

    def _learn_key(self, now: float) -> None:
        """Ask the upstream's plaintext port for its key (trust on first use)."""
        if self._hello is None:
            hello = self.core.upstream.hello(now)
            if hello is None:
                return
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
            s.connect(p.public_endpoint(self.upstream))
            s.send(p.encode(hello))
            self._hello = s
            return
        if self._hello.poll(0):
            try:
                reply = p.decode(self._hello.recv())
            except p.ProtocolError as e:
                self._failed(now, f"malformed hello reply: {e}")
                return
            if not isinstance(reply, p.HelloReply):
                self._failed(now, f"hello answered with {reply.TYPE}")
                return
            self.core.upstream.hello_reply(reply, now)  # none was held: learnt
            log.warning(
                "upstream %s: trusting its key %s on first use (pinned in %s)",
                self.upstream,
                reply.key,
                self.pins.path,
            )
            self.pins.put(self.upstream, reply.key)
            self._hello.close(linger=0)
            self._hello = None

    # --- each turn -----------------------------------------------------------

    def before_turn(self, now: float) -> None:
        if self.upstream_key is None:
            self._learn_key(now)
        if self._up is not None:
            while True:
                try:
                    data = self._up.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    msg = p.decode(data)
                except p.ProtocolError as e:
                    log.warning("upstream sent a malformed message: %s", e)
                    continue
                self.core.upstream_reply(msg, now)
        late = self.core.upstream.late(now)
        if late:
            to = " to hello" if any(r.kind == HELLO for r in late) else ""
            self._failed(now, f"no answer{to} within {self.core.up.line.timeout_s:g} s")
        self.core.tick(now)

    def commit(self) -> None:
        self.journal.apply(self.core.take_ops())

    def after_turn(self) -> None:
        now = time.time()
        if self.upstream_key is None:
            return
        requests = self.core.upstream_requests(now)
        if requests:
            self.commit()  # nothing the core decided goes out before it is on disk
        for msg in requests:
            try:
                data = p.encode(msg)
            except p.ProtocolError as e:  # our own bug: say so, and try later
                log.error("cannot send %s upstream: %s", msg.TYPE, e)
                self._failed(now, "a request could not be encoded")
                return
            try:
                self._up_socket().send(data, zmq.NOBLOCK)
            except zmq.ZMQError as e:
                self._failed(now, f"send failed: {e}")
                return

    # --- our jobbers -----------------------------------------------------------

    def handle(self, msg: p.Message, now: float, peer: Peer) -> p.Message | None:
        if isinstance(msg, p.Bored):
            return self.core.bored(msg, now, peer.key, peer.address)
        if isinstance(msg, p.Results):
            return self.core.results(msg, now, peer.key, peer.address)
        if isinstance(msg, p.Alive):
            return self.core.alive(msg, now, peer.key, peer.address)
        if isinstance(msg, p.Fetch):
            return self.core.fetch(msg, now, peer.key)
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, self.status(now))
        return self.unexpected(msg, "a relay")

    def handle_public(self, msg: p.Message, now: float) -> p.Message | None:
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, self.status(now))
        return super().handle_public(msg, now)

    def work_offer(self, msg: p.WorkQuery, now: float) -> p.WorkOffer:
        return self.core.offer(msg.id, now)

    def status(self, now: float) -> dict:
        info = self.core.status(now, self.upstream)
        info["key"] = self.keys.public_hex
        return info

    def run(self, *, max_s: float | None = None) -> None:
        stop_at = None if max_s is None else time.monotonic() + max_s
        while not self._stopping:
            if stop_at is not None and time.monotonic() >= stop_at:
                break
            poller = zmq.Poller()
            for s in (self.sock, self.public, self._up, self._hello):
                if s is not None:
                    poller.register(s, zmq.POLLIN)
            poller.poll(int(POLL_S * 1000))
            self.turn()

    def close(self) -> None:
        self._close_up()
        super().close()
        self.journal.close()
