"""The jobber's link to its allocator: a thread that asks for instructions periodically.

It owns one DEALER socket (CurveZMQ, to the allocator's key: the one in the
address, else the one pinned in known_dealers, else the one its plaintext port
announces, as for a dealer) and asks `instruct` every `refresh_s` the last
answer gave. A failed contact (no answer within the timeout, an error, a key
refused) backs off as from a dealer, and the socket is made anew (Lazy
Pirate): the request, its deadline, the backoff and the key are a net._link
Link, the one rule every link of the project follows; this thread only blocks
on the socket (a fresh one for each ask, so there is never a stale one to
reset). Everything it learns goes to the loop through `events`, as typed
records: `InstructionsCame`, `KeyLearnt` or `ContactFailed`; the loop applies
instructions, pins keys and keeps the last instructions on disk. The
allocator never holds up the jobber: while it is away, the last instructions
stand.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, fields

import zmq

import protocol as p
from net._keys import KeyPair, z85_of_hex
from net._link import HELLO, Backoff, Link
from protocol._alloc import Instruct, Instructions

log = logging.getLogger(__name__)

INSTRUCT = "instruct"  # the kind of the allocator link's one request under its key


class _Event:
    """What the link tells the loop. Indexing gives the old tuple form, (KIND, fields...),
    which jobber._client still reads until it matches on the types."""

    KIND = ""

    def __getitem__(self, i: int) -> object:
        return (self.KIND, *(getattr(self, f.name) for f in fields(self)))[i]  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class InstructionsCame(_Event):
    """The allocator answered with instructions (for our pool)."""

    KIND = "instructions"
    msg: Instructions


@dataclass(frozen=True, slots=True)
class KeyLearnt(_Event):
    """The allocator's key, learnt on first use from its plaintext port: to be pinned."""

    KIND = "pin"
    endpoint: str
    key: str


@dataclass(frozen=True, slots=True)
class ContactFailed(_Event):
    """A contact that gave no instructions, and why."""

    KIND = "failed"
    why: str


Event = InstructionsCame | KeyLearnt | ContactFailed


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
        # a key learnt is pinned and kept, never asked again (as always for the allocator)
        self.line = Link(timeout_s, backoff, key=key or pinned_key, recheck_learnt=False)
        self.pool = pool
        self.jobber = name
        self._ctx = ctx
        self._keys = keys
        self._connect = connect
        self.join_token = join  # the pool's join token: sent until the allocator first answers
        self.facts: p.HostFacts | None = None  # replaced whole by the loop
        self.serial: int | None = None  # of the instructions held
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.ok_at: float | None = None  # monotonic time of the last answer
        self.problem = ""
        self._halt = threading.Event()

    @property
    def key(self) -> str | None:
        return self.line.key

    @property
    def backoff(self) -> Backoff:
        return self.line.backoff

    @property
    def timeout_s(self) -> float:
        return self.line.timeout_s

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.timeout_s + 1)

    def run(self) -> None:
        wait, posted_at = 0.0, float("-inf")
        while not self._halt.wait(wait):
            try:
                msg = self._ask()
            except _Failed as e:
                if self._halt.is_set():
                    return
                # (each ask has a socket of its own: the reset the link asks is already done)
                wait = self.line.failed(time.monotonic())
                self.line.take_reset()
                self.problem = str(e)
                log.info(
                    "allocator %s: %s; failure %d, next try in %.1f s",
                    self.endpoint,
                    e,
                    self.backoff.failures,
                    wait,
                )
                self.events.put(ContactFailed(str(e)))
                continue
            if self.join_token is not None:
                log.info("allocator %s: admitted to pool %s", self.endpoint, self.pool)
                self.join_token = None  # admitted now: the token is not sent again
            self.ok_at = time.monotonic()
            self.problem = ""
            # the loop hears of a change at once, and of the same instructions every refresh_s
            if msg.serial != self.serial or self.ok_at - posted_at >= msg.refresh_s:
                self.events.put(InstructionsCame(msg))
                posted_at = self.ok_at
            self.serial = msg.serial
            wait = msg.refresh_s if msg.check_s is None else min(msg.check_s, msg.refresh_s)

    def _request(self, sock: zmq.Socket, kind: str, make: callable) -> tuple[int, p.Message]:
        """Send the request `make(id)` of `kind` and wait for the reply; on this fresh
        socket the reply that comes answers it. Returns its id and the reply."""
        request = self.line.sent(kind, time.monotonic())
        sock.send(p.encode(make(request.id)))
        while not sock.poll(100):  # in slices, so that stop() need not wait for a timeout
            if self._halt.is_set():
                raise _Failed("stopping")
            if self.line.is_late(request, time.monotonic()):
                raise _Failed(f"no answer within {self.timeout_s:g} s")
        try:
            return request.id, p.decode(sock.recv())
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

    def _learn_key(self) -> None:
        s = self._socket(p.public_endpoint(self.endpoint), None)
        try:
            _, reply = self._request(s, HELLO, p.Hello)
        finally:
            s.close()
        if not isinstance(reply, p.HelloReply):
            raise _Failed(f"its plaintext port answered hello with {reply.TYPE}")
        # the key only: the backoff is reset by instructions alone, as it always was
        self.line.forget(HELLO)
        self.line.heard_key(reply.key)  # none was held (so learnt): asked only then
        log.warning(
            "allocator %s: trusting its key %s on first use (pinned in known_dealers)",
            self.endpoint,
            reply.key,
        )
        self.events.put(KeyLearnt(self.endpoint, reply.key))

    def _ask(self) -> Instructions:
        if self.key is None:
            self._learn_key()
        facts = self.facts
        if facts is None:
            raise _Failed("no host facts yet")  # pragma: no cover - set before start
        s = self._socket(self.endpoint, self.key)
        try:
            rid, reply = self._request(
                s,
                INSTRUCT,
                lambda rid: Instruct(
                    rid, self.jobber, self.pool, facts, self.serial, self.join_token
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
        self.line.answered(rid, time.monotonic())  # instructions: the backoff is reset
        return reply


class _Failed(Exception):
    """A contact with the allocator that did not give instructions."""
