"""The allocator's ZeroMQ shell: the dealer's RouterServer around allocator._core.

The work socket is CurveZMQ with the allocator's own key pair, and the
plaintext port one up answers `hello` (its key, for trust on first use) and a
short `status`, as a dealer's do. Every key may complete the handshake: a
jobber is a key admitted to the pool it names, an admin is a key with a role,
and what a key may do is the allocator core's to decide (allocator._core).

A statistics thread polls each project's dealer for its status (the plaintext
port: every page of jobbers every `poll_s` seconds, the first page every
WATCH_S between) and hands the rows to the loop, which records them: credit is
attributed to pools by jobber key, and a dealer's runs (its batches) add up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import protocol as p
from allocator._core import Allocator, AllocatorError
from allocator._page import AllocatorPage
from net._ask import query_status
from net._keys import KeyPair
from net._router import PER_SOURCE_CONNECTIONS, REQUEST_BYTES, RouterServer
from protocol import Peer
from protocol._alloc import AllocAdmin, AllocReply, Instruct

log = logging.getLogger(__name__)


POLL_S = 60.0  # how often the dealers' credit is gathered
STATUS_TIMEOUT_S = 5.0
MAX_PAGES = 100  # status pages read from one dealer per poll (100 jobbers a page)


WATCH_S = 1.0  # how often each dealer's first status page is read between full polls


class _CreditPoller(threading.Thread):
    """Asks each project's dealer for its jobbers' credit, off the loop: every page every
    `every_s`, and the first page (the hundred keys of most credit) every WATCH_S between,
    so that a batch whose dealer exits between two full polls is counted too."""

    def __init__(self, every_s: float, watch_s: float = WATCH_S) -> None:
        super().__init__(name="credit-poller", daemon=True)
        self.every_s = every_s
        self.watch_s = min(watch_s, every_s)
        self.projects: list[tuple[str, str]] = []  # (name, dealer), replaced whole by the loop
        # per poll: ({project: rows}, {project: (dealer key, accepted)})
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        next_full = time.monotonic() + self.every_s
        while not self._halt.wait(self.watch_s):
            full = time.monotonic() >= next_full
            if full:
                next_full = time.monotonic() + self.every_s
            polled: dict[str, list[dict]] = {}
            runs: dict[str, tuple[str, int]] = {}
            for name, dealer in list(self.projects):
                rows: list[dict] = []
                try:
                    page, pages = 0, 1
                    while page < min(pages, MAX_PAGES if full else 1):
                        info = query_status(dealer, STATUS_TIMEOUT_S, page)
                        rows += [r for r in info.get("jobbers", []) if isinstance(r, dict)]
                        pages = int(info.get("pages", 1))
                        if page == 0:
                            runs[name] = (str(info.get("key")), int(info.get("accepted", 0)))
                        page += 1
                # TypeError: a status of the wrong shapes, from a dealer that is not ours
                except (
                    TimeoutError,
                    RuntimeError,
                    ValueError,
                    TypeError,
                    OSError,
                    p.ProtocolError,
                ) as e:
                    log.log(
                        logging.INFO if full else logging.DEBUG,
                        "project %s: no status from %s: %s",
                        name,
                        dealer,
                        e,
                    )
                    runs.pop(name, None)
                    continue
                polled[name] = rows
            if polled:
                self.out.put((polled, runs))


class AllocatorServer(RouterServer):
    def __init__(
        self,
        bind: str,
        alloc: Allocator,
        keys: KeyPair | None = None,
        *,
        poll_s: float = POLL_S,
        page: AllocatorPage | None = None,
    ) -> None:
        # as many connections from one source as machines it may admit from there
        per_source = max(PER_SOURCE_CONNECTIONS, alloc.max_per_address)
        super().__init__(bind, keys, max_frame=REQUEST_BYTES, per_source=per_source)
        self.alloc = alloc
        self.page = page
        self.poller = _CreditPoller(poll_s)
        self.poller.projects = [(n, d) for n, d, _ in alloc.projects()]
        self.poller.start()

    def handle(self, msg: p.Message, now: float, peer: Peer) -> p.Message | None:
        try:
            if isinstance(msg, Instruct):
                return self.alloc.instruct(peer.key, peer.address or "", msg, now)
            if isinstance(msg, AllocAdmin):
                text, data = self.alloc.admin(peer.key, msg.op, msg.args, now)
                self.poller.projects = [(n, d) for n, d, _ in self.alloc.projects()]
                log.info("admin %s: %s: %s", peer.key[:12], msg.op, text)
                return AllocReply(msg.id, text[: p.MAX_STR], data)
        except AllocatorError as e:
            # a stranger's instruct is refused at debug: thousands of them are no news
            level = logging.DEBUG if isinstance(msg, Instruct) else logging.INFO
            log.log(level, "refused %s from %s: %s", msg.TYPE, peer.key[:12], e)
            return p.Error(msg.id, e.code, str(e)[: p.MAX_STR])
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, self.summary())
        return self.unexpected(msg, "an allocator")

    def handle_public(self, msg: p.Message, now: float) -> p.Message | None:
        if isinstance(msg, p.StatusQuery):
            return p.StatusReply(msg.id, self.summary())
        return super().handle_public(msg, now)

    def summary(self) -> dict:
        """What anyone may know: that this is an allocator, its key, its serial."""
        return {
            "allocator": True,
            "key": self.keys.public_hex,
            "serial": self.alloc.serial,
            "projects": len(self.alloc.projects()),
        }

    def before_turn(self, now: float) -> None:
        while True:
            try:
                polled, runs = self.poller.out.get_nowait()
            except queue.Empty:
                break
            self.alloc.record_credit(polled, now, runs)
        if self.page is not None and self.page.due(now):
            self.page.publish({**self.alloc.snapshot(now), "key": self.keys.public_hex})

    def close(self) -> None:
        self.poller.stop()
        if self.page is not None:
            self.page.close()
        super().close()


def serve(server: AllocatorServer, *, max_s: float | None = None) -> None:
    """Run until stopped (a signal calls server.stop)."""
    started = time.monotonic()
    log.info("allocator serving on %s", server.address)
    server.run(max_s=max_s)
    log.info("allocator stopped after %.0f s", time.monotonic() - started)
