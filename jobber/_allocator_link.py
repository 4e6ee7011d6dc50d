"""The jobber's link to its allocator: a thread that asks for instructions periodically.

It owns one DEALER socket (CurveZMQ, to the allocator's key: the one in the
address, else the one pinned in known_dealers, else the one its plaintext port
announces, as for a dealer) and asks `instruct` every `refresh_s` the last
answer gave. A failed contact (no answer within the timeout, an error, a key
refused) backs off as from a dealer (net._backoff), and the socket is made
anew (Lazy Pirate). Everything it learns goes to the loop through `events`:
("instructions", msg), ("pin", endpoint, key) or ("failed", why); the loop
applies instructions, pins keys and keeps the last instructions on disk. The
allocator never holds up the jobber: while it is away, the last instructions
stand.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import zmq

import protocol as p
from net._backoff import Backoff
from net._keys import KeyPair, z85_of_hex
from protocol._alloc import Instruct, Instructions

log = logging.getLogger(__name__)


class AllocatorLink(threading.Thread):
    def __init__(
        self,
        ctx: zmq.Context,
        address: str,
        pool: str,
        keys: KeyPair,
        *,
        name: str,
        pinned_key: str | None,
        connect: callable,  # endpoint -> the endpoint to connect to (the source address)
        backoff: Backoff,
        timeout_s: float,
        join: str | None = None,
    ) -> None:
        super().__init__(name="allocator-link", daemon=True)
        self.endpoint, key = p.split_key(address)
        self.key = key or pinned_key
        self.pool = pool
        self.jobber = name
        self._ctx = ctx
        self._keys = keys
        self._connect = connect
        self.backoff = backoff
        self.timeout_s = timeout_s
        self.join_token = join  # the pool's join token: sent until the allocator first answers
        self.facts: p.HostFacts | None = None  # replaced whole by the loop
        self.serial: int | None = None  # of the instructions held
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.ok_at: float | None = None  # monotonic time of the last answer
        self.problem = ""
        self._halt = threading.Event()
        self._rid = 0

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.timeout_s + 1)

    def run(self) -> None:
        wait = 0.0
        while not self._halt.wait(wait):
            try:
                msg = self._ask()
            except _Failed as e:
                if self._halt.is_set():
                    return
                wait = self.backoff.failed(time.monotonic())
                self.problem = str(e)
                log.info(
                    "allocator %s: %s; failure %d, next try in %.1f s",
                    self.endpoint,
                    e,
                    self.backoff.failures,
                    wait,
                )
                self.events.put(("failed", str(e)))
                continue
            self.backoff.succeeded()
            if self.join_token is not None:
                log.info("allocator %s: admitted to pool %s", self.endpoint, self.pool)
                self.join_token = None  # admitted now: the token is not sent again
            self.ok_at = time.monotonic()
            self.problem = ""
            self.serial = msg.serial
            self.events.put(("instructions", msg))
            wait = msg.refresh_s

    def _next_id(self) -> int:
        self._rid += 1
        return self._rid

    def _request(self, sock: zmq.Socket, msg: p.Message) -> p.Message:
        sock.send(p.encode(msg))
        deadline = time.monotonic() + self.timeout_s
        while not sock.poll(100):  # in slices, so that stop() need not wait for a timeout
            if self._halt.is_set():
                raise _Failed("stopping")
            if time.monotonic() >= deadline:
                raise _Failed(f"no answer within {self.timeout_s:g} s")
        try:
            return p.decode(sock.recv())
        except p.ProtocolError as e:
            raise _Failed(f"a malformed answer: {e}") from None

    def _socket(self, endpoint: str, server_key: str | None) -> zmq.Socket:
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, 1024 * 1024)
        if server_key is not None:
            s.curve_secretkey, s.curve_publickey = self._keys.secret, self._keys.public
            s.curve_serverkey = z85_of_hex(server_key)
        s.connect(self._connect(endpoint))
        return s

    def _learn_key(self) -> str:
        host, _, port = self.endpoint.rpartition(":")
        plain = f"{host}:{int(port) + 1}" if self.endpoint.startswith("tcp://") else ""
        if not plain:
            plain = self.endpoint + ".public"
        s = self._socket(plain, None)
        try:
            reply = self._request(s, p.Hello(self._next_id()))
        finally:
            s.close()
        if not isinstance(reply, p.HelloReply):
            raise _Failed(f"its plaintext port answered hello with {reply.TYPE}")
        log.warning(
            "allocator %s: trusting its key %s on first use (pinned in known_dealers)",
            self.endpoint,
            reply.key,
        )
        self.events.put(("pin", self.endpoint, reply.key))
        return reply.key

    def _ask(self) -> Instructions:
        if self.key is None:
            self.key = self._learn_key()
        facts = self.facts
        if facts is None:
            raise _Failed("no host facts yet")  # pragma: no cover - set before start
        s = self._socket(self.endpoint, self.key)
        try:
            reply = self._request(
                s,
                Instruct(
                    self._next_id(), self.jobber, self.pool, facts, self.serial, self.join_token
                ),
            )
        finally:
            s.close()
        if isinstance(reply, p.Error):
            if reply.code is p.ErrorCode.FORBIDDEN:  # not admitted: the owner must act
                log.warning("allocator %s: %s", self.endpoint, reply.text)
            raise _Failed(f"refused: {reply.code.value}: {reply.text}")
        if not isinstance(reply, Instructions):
            raise _Failed(f"answered with {reply.TYPE}")
        if reply.pool != self.pool:
            raise _Failed(f"answered for pool {reply.pool!r}, not {self.pool!r}")
        return reply


class _Failed(Exception):
    """A contact with the allocator that did not give instructions."""
