"""The jobber's loop: ask dealers for work, run it in slots, send results back.

Theory of operation
-------------------
One thread, one zmq.Poller over a DEALER socket per dealer and the slots'
worker pipes. Each turn:

1. finished jobs are collected from the slots, written to the spool (disk)
   and queued for their dealer;
2. buffered jobs are started on free slots;
3. each reachable dealer with queued results gets one `results` request;
4. while fewer than `hi_water` jobs are running or buffered, the next ready
   dealer (round robin) gets one `bored` request for the difference;
5. requests unanswered after `request_timeout_s` count as a failed contact:
   the dealer is backed off (jobber._backoff) and its socket is rebuilt, which
   drops whatever was queued for it (the Lazy Pirate pattern).

At most one request of each kind is outstanding per dealer; replies carry the
request id, so a reply that arrives after its request timed out is known. Jobs
in such a reply are still taken: the dealer has recorded them as ours.

Every link is CurveZMQ-encrypted with the jobber's own key pair (made on first
start in the data directory: its identity to every dealer) and checked against
the dealer's public key: the one in the address (`host:port#key`), else the one
pinned in `known_dealers` in the data directory, else the one the dealer's
plaintext port announces on first contact (`hello`), which is then pinned, as
SSH does. A pinned dealer that later presents another key is refused loudly.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import socket
import time
from collections import deque
from dataclasses import dataclass, field, fields
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

import protocol as p
import sandbox
from jobber import _control
from jobber._backoff import MAX_BACKOFF_S, MIN_BACKOFF_S, Backoff
from jobber._idle import IdleDetector, Throttle, read_host
from jobber._pins import Pins
from jobber._quiet import Repeats
from jobber._spool import Spool
from protocol._files import write_atomic
from protocol._keys import load_or_create_key_pair, z85_of_hex

log = logging.getLogger(__name__)

POLL_S = 0.25  # longest sleep of the loop: signals and backoff expiries are noticed this fast
MAX_RESULTS_PER_MESSAGE = 256
# A results message stays under this many bytes unless it carries one result:
# a dealer takes frames of 1 MiB plus one output (docs/protocol.md).
MAX_RESULTS_BYTES = 768 * 1024
MAX_DEALERS = 32  # dealers known at once, command line included
MAX_REFERRAL_DEPTH = 3  # a referral from a referred dealer is depth 2, and so on
DROP_REFERRED_AFTER = 5  # failed contacts in a row before a referred dealer is forgotten
FETCH_PATIENCE_S = 1.0  # an ask unanswered this long lets the next dealer be asked too
# what ZeroMQ can tell about a connection that a missing reply cannot
_PROBLEMS = {
    zmq.EVENT_CONNECT_RETRIED: "cannot connect: refused, or the host is unreachable",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the dealer refused our key (denied, or a closed pool)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the encryption handshake failed (a wrong dealer key?)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the encryption handshake failed (a wrong dealer key?)",
}
_WATCHED = zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
for _event in _PROBLEMS:
    _WATCHED |= _event
PROGRESS_EVERY_S = 60.0  # a summary line of finished jobs this often, at the default level


class JobberError(Exception):
    """The jobber cannot start (data directory in use, bad option)."""


@dataclass
class Config:
    dealers: list[str]
    data_dir: Path
    slots: int = field(default_factory=lambda: os.cpu_count() or 1)
    name: str | None = None
    max_idle_s: float | None = None
    min_backoff_s: float = MIN_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    request_timeout_s: float = 10.0
    memory_mb: int | None = None  # per job; default: physical memory / slots
    grace_s: float = 30.0  # on shutdown, how long running jobs may go on
    buffer: int | None = None  # jobs held beyond running ones; default: one per slot
    idle_only: bool = False  # run only while the machine is otherwise idle
    idle_after_s: float = 60.0  # quiet this long before the machine counts as idle
    load_threshold: float = 0.5  # other processes' load per CPU that means "in use"
    cpu_limit: float = 100.0  # percent of each period jobs may run
    control: bool = True  # serve the local control socket
    source: str | None = None  # connect from this local IP address (one machine, many jobbers)
    cache_mb: int = 1024  # disk for payloads and their compiled forms; least used go first
    max_job_time_s: float = 3600.0  # the owner's ceilings for one job, whatever a dealer asks
    max_fuel: int | None = None
    max_output_kb: int | None = None
    exit_with: int | None = None  # the pid of our parent: stop when we are no longer its child


@dataclass
class _Link:
    """One dealer as this jobber sees it."""

    address: str  # the endpoint, without the key
    pinned: bool  # given on the command line: never dropped
    depth: int
    backoff: Backoff
    key: str | None = None  # the dealer's public key, hex; None until known
    key_from_hello: bool = False  # learnt on first use (so worth re-checking on failures)
    check_key: bool = False  # ask hello before the next request: has the key changed?
    refused: str = ""  # why this dealer is never contacted (its key changed)
    hello_id: int | None = None
    hello_at: float = 0.0
    hello_sock: zmq.Socket | None = None
    sock: zmq.Socket | None = None
    monitors: list = field(default_factory=list)  # ZeroMQ event sockets of sock, hello_sock
    problem: str = ""  # what ZeroMQ last said about connecting (refused, handshake failed)
    resolved: bool = False  # its host name resolved (checked again after a failure)
    bored_id: int | None = None
    bored_at: float = 0.0
    results_id: int | None = None
    results_at: float = 0.0
    results_tags: tuple[str, ...] = ()
    ask_after: float = 0.0  # "retry later": no bored before this (results still go)
    alive_id: int | None = None
    alive_at: float = 0.0  # when the last `alive` was sent
    alive_every_s: float = p.ALIVE_INTERVAL_S  # shortened if the dealer's lease is short
    last_reason: str = ""  # the last "retry later" reason logged (each is logged once)

    def may_ask(self, now: float) -> bool:
        return (
            self.bored_id is None
            and not self.refused
            and now >= self.ask_after
            and self.backoff.ready(now)
        )


@dataclass
class _Pending:
    dealer: str
    spec: p.JobSpec
    deadline: float  # monotonic
    started: float = 0.0  # monotonic, once running


def _physical_memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (ValueError, OSError):
        return 1024


class Jobber:
    def __init__(self, cfg: Config, context: zmq.Context | None = None) -> None:
        if cfg.slots < 1:
            raise JobberError("--slots must be at least 1")
        self.cfg = cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        owner = cfg.data_dir.stat().st_uid
        if owner != os.geteuid():  # its owner could plant a control socket or keys there
            raise JobberError(
                f"data directory {cfg.data_dir} belongs to another user (uid {owner}); "
                "pass a --data-dir of your own"
            )
        self._lock = self._take_lock(cfg.data_dir)
        self.name = self._load_name(cfg.data_dir, cfg.name)
        self.keys, made = load_or_create_key_pair(cfg.data_dir / "identity")
        if made:
            log.info("made a new identity in %s", cfg.data_dir / "identity.key_secret")
        self.pins = Pins(cfg.data_dir / "known_dealers")
        self.memory_mb = cfg.memory_mb or max(1, _physical_memory_mb() // cfg.slots)
        self.hi_water = cfg.slots + (cfg.slots if cfg.buffer is None else cfg.buffer)
        self._ctx = context or zmq.Context.instance()
        self.cache = sandbox.ModuleCache(cfg.data_dir / "cache")
        self.spool = Spool(cfg.data_dir / "spool")
        self.slots = sandbox.Slots(cfg.slots, cfg.data_dir / "cache")
        self._links: dict[str, _Link] = {}
        self._rr: deque[str] = deque()
        for text in cfg.dealers:
            self._add_link(p.dealer_address(text), depth=0)
        if not self._links:
            raise JobberError("no dealer given")
        self._buffer: deque[_Pending] = deque()
        self._running: dict[str, _Pending] = {}  # slot key -> job
        self._cancelled: set[str] = set()  # slot keys stopped at the dealer's word
        self._unacked: dict[str, dict[str, p.Result]] = {}  # dealer -> tag -> result
        self._next_id = 1
        self._next_key = 0
        self._stopping = False
        self._last_busy = time.monotonic()
        self.done = 0  # results produced by this process
        self.reached = False  # some dealer has answered us
        self.disk_trouble = ""  # why the data directory refuses writes, while it does
        self._repeats = Repeats(log)
        self._unspooled: dict[tuple[str, str], p.Result] = {}  # results not on disk yet
        self._summary_at = time.monotonic()
        self._summary: dict[str, int] = {}  # status -> jobs finished since the last summary
        self._job_s = 0.0  # running mean of job wall time, for deadline-aware buffering
        self.user_suspended = False
        self._suspended = False  # the slots' workers are stopped right now
        self._why_suspended = ""
        self._idle = IdleDetector(
            os.cpu_count() or 1, load_threshold=cfg.load_threshold, idle_after_s=cfg.idle_after_s
        )
        self._throttle = Throttle(cfg.cpu_limit)
        self._control = _control.serve_socket(self._ctx, cfg.data_dir) if cfg.control else None
        for s in self.spool.load():
            self._unacked.setdefault(s.dealer, {})[s.result.tag] = s.result
            if s.dealer not in self._links:  # a referred dealer from an earlier run
                self._add_link(s.dealer, depth=1)
        if self._unacked:
            log.info("spool holds %d results from an earlier run", self._count_unacked())

    # --- set-up ------------------------------------------------------------

    @staticmethod
    def _take_lock(data_dir: Path) -> int:
        fd = os.open(data_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JobberError(
                f"data directory {data_dir} is in use by another jobber; pass --data-dir"
            ) from None
        return fd

    @staticmethod
    def _load_name(data_dir: Path, given: str | None) -> str:
        """The name in the data directory; a name given once is kept there for next time."""
        path = data_dir / "name"
        if given is not None:
            write_atomic(path, (given + "\n").encode())
            return given
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            name = f"{socket.gethostname()}-{os.urandom(4).hex()}"
            write_atomic(path, (name + "\n").encode())
            return name

    def _add_link(self, text: str, depth: int) -> None:
        """Know the dealer `text` (`endpoint` or `endpoint#key`); depth 0: from the command line."""
        addr, key = p.split_key(text)
        link = self._links.get(addr)
        if link is None and key is not None:  # the same dealer under another spelling
            twin = next((x for x in self._links.values() if x.key == key), None)
            if twin is not None:
                log.debug("dealer %s is %s (the same key): not added twice", addr, twin.address)
                return
        if link is None:
            if len(self._links) >= MAX_DEALERS:
                return
            backoff = Backoff(self.cfg.min_backoff_s, self.cfg.max_backoff_s)
            link = self._links[addr] = _Link(addr, depth == 0, depth, backoff)
            self._rr.append(addr)
            if depth:
                log.info("dealer %s added by referral (depth %d)", addr, depth)
            pinned = self.pins.get(addr)
            if key is None and pinned is not None:
                link.key, link.key_from_hello = pinned, True
        if key is not None and link.key is None:
            link.key = key
            if depth == 0 and self.pins.get(addr) not in (None, key):
                log.warning("dealer %s: using the key given, not the one pinned before", addr)
            if depth == 0:
                self.pins.put(addr, key)

    def _connect_to(self, endpoint: str) -> str:
        """`endpoint` from this jobber's source address, if it has one."""
        if self.cfg.source is None or not endpoint.startswith("tcp://"):
            return endpoint
        return f"tcp://{self.cfg.source}:0;{endpoint[len('tcp://') :]}"

    def _socket(self, link: _Link) -> zmq.Socket:
        if link.sock is None:
            assert link.key is not None
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
            s.curve_secretkey = self.keys.secret
            s.curve_publickey = self.keys.public
            s.curve_serverkey = z85_of_hex(link.key)
            self._watch(link, s)
            s.connect(self._connect_to(link.address))
            link.sock = s
        return link.sock

    def _watch(self, link: _Link, sock: zmq.Socket) -> None:
        """Hear what ZeroMQ does on `sock`'s connection: refused, handshakes failing."""
        link.monitors.append(sock.get_monitor_socket(_WATCHED))

    def _drain_monitors(self, link: _Link) -> None:
        for mon in link.monitors:
            while mon.poll(0):
                try:
                    event = recv_monitor_message(mon, zmq.NOBLOCK)["event"]
                except (zmq.Again, zmq.ZMQError):
                    break
                if event in _PROBLEMS:
                    link.problem = _PROBLEMS[event]
                elif event in (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                    link.problem = ""

    def _reset_socket(self, link: _Link) -> None:
        for mon in link.monitors:
            mon.close(linger=0)
        link.monitors = []
        if link.sock is not None:
            link.sock.close(linger=0)
            link.sock = None
        if link.hello_sock is not None:
            link.hello_sock.close(linger=0)
            link.hello_sock = None
        link.bored_id = link.results_id = link.hello_id = link.alive_id = None
        link.results_tags = ()

    # --- learning a dealer's key ----------------------------------------------

    def _hello(self, link: _Link, now: float) -> None:
        """Ask the dealer's plaintext port for its key (trust on first use, or a check)."""
        if link.hello_id is not None or not link.backoff.ready(now) or link.refused:
            return
        if not self._resolves(link, now):
            return
        if not link.address.startswith("tcp://"):
            endpoint = link.address + ".public"
        else:
            host, _, port = link.address.rpartition(":")
            endpoint = f"{host}:{int(port) + 1}"
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
        self._watch(link, s)
        s.connect(self._connect_to(endpoint))
        link.hello_sock = s
        rid = self._rid()
        try:
            s.send(p.encode(p.Hello(rid)), zmq.NOBLOCK)
        except zmq.Again:
            self._failed(link, now, "send queue full")
            return
        link.hello_id, link.hello_at = rid, now

    def _hello_reply(self, link: _Link, msg: p.HelloReply) -> None:
        self.reached = True
        link.hello_id = None
        if link.hello_sock is not None:
            link.hello_sock.close(linger=0)
            link.hello_sock = None
        link.backoff.succeeded()
        link.check_key = False
        pinned = self.pins.get(link.address)
        if pinned is not None and pinned != msg.key:
            link.refused = (
                f"it now presents key {msg.key}, not the pinned {pinned}. If the change is "
                f"expected, give it as {link.address}#{msg.key} or remove its line from "
                f"{self.pins.path}"
            )
            log.error("dealer %s refused: %s", link.address, link.refused)
            self._reset_socket(link)
            return
        if link.key is None:
            log.warning(
                "dealer %s: trusting its key %s on first use (pinned in %s)",
                link.address,
                msg.key,
                self.pins.path,
            )
            link.key, link.key_from_hello = msg.key, True
            self.pins.put(link.address, msg.key)

    # --- the loop ----------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to wind down (safe to call from a signal handler)."""
        self._stopping = True

    def run(self) -> int:
        log.info(
            "jobber %s: %d slots, dealers %s", self.name, self.cfg.slots, ", ".join(self._links)
        )
        try:
            while not self._stopping:
                now = time.monotonic()
                if self.cfg.exit_with is not None and os.getppid() != self.cfg.exit_with:
                    log.info("the process that started this jobber is gone: stopping")
                    self.stop()
                    continue
                self._turn(now)
                self._say_progress(now)
                if self._idle_too_long(now):
                    log.info("no work for %.1f s: exiting", now - self._last_busy)
                    if not self.reached:
                        log.error("never reached any dealer: %s", ", ".join(self._links))
                        return 1
                    break
                self._wait()
            else:
                self._shutdown()
        finally:
            self.close()
        return 0

    def _turn(self, now: float) -> None:
        self._retry_spool()
        self._collect()
        self._apply_suspension(now)
        if not self._suspended:
            self._start_jobs(now)
        self._check_timeouts(now)
        self._send_results(now)
        self._send_alive(now)
        if not (self._stopping or self.user_suspended or self._why_suspended == "machine in use"):
            self._fetch(now)

    def _apply_suspension(self, now: float) -> None:
        why = ""
        if self._stopping:
            pass  # running jobs get their grace period, whatever held them
        elif self.user_suspended:
            why = "suspended by the owner"
        elif self.cfg.idle_only and not self._idle.update(
            read_host(), 0 if self._suspended else len(self._running), now
        ):
            why = "machine in use"
        elif not self._throttle.running(now):
            why = "cpu limit"
        if why and not self._suspended:
            self.slots.suspend()
            self._suspended = True
            if why != "cpu limit":
                log.info("jobs suspended: %s", why)
        elif not why and self._suspended:
            self.slots.resume()
            self._suspended = False
            if self._why_suspended != "cpu limit":
                log.info("jobs resumed")
        self._why_suspended = why

    def _idle_too_long(self, now: float) -> bool:
        if self._running or self._buffer or self.user_suspended or self._delivering():
            self._last_busy = now
            return False
        return self.cfg.max_idle_s is not None and now - self._last_busy >= self.cfg.max_idle_s

    def _wait(self) -> None:
        poller = zmq.Poller()
        for link in self._links.values():
            if link.sock is not None:
                poller.register(link.sock, zmq.POLLIN)
            if link.hello_sock is not None:
                poller.register(link.hello_sock, zmq.POLLIN)
            for mon in link.monitors:
                poller.register(mon, zmq.POLLIN)
        for fd in self.slots.fds():
            poller.register(fd, zmq.POLLIN)
        if self._control is not None:
            poller.register(self._control, zmq.POLLIN)
        timeout = POLL_S
        now = time.monotonic()
        if self.cfg.cpu_limit < 100 and self._running:
            timeout = min(timeout, self._throttle.next_change(now))
        for link in self._links.values():
            wake = max(link.backoff.until, link.ask_after)
            if link.bored_id is None and wake > now:
                timeout = min(timeout, wake - now)
        try:
            ready = dict(poller.poll(max(1, int(timeout * 1000))))
        except zmq.ZMQError as e:  # EINTR from a signal
            log.debug("poll interrupted: %s", e)
            return
        for link in list(self._links.values()):
            if any(mon in ready for mon in link.monitors):
                self._drain_monitors(link)
            if link.sock is not None and link.sock in ready:
                self._recv(link)
            if link.hello_sock is not None and link.hello_sock in ready:
                self._recv_hello(link)
        if self._control is not None and self._control in ready:
            self._serve_control()

    # --- jobs ----------------------------------------------------------------

    def _collect(self) -> None:
        for key, outcome in self.slots.collect():
            job = self._running.pop(key, None)
            if key in self._cancelled:  # stopped because the dealer settled it elsewhere
                self._cancelled.discard(key)
                continue
            if job is None:
                log.warning("slot reported unknown job %s", key)
                continue
            self._job_s = (
                outcome.wall_s if not self._job_s else 0.8 * self._job_s + 0.2 * outcome.wall_s
            )
            self._finish(
                job,
                p.Result(
                    job.spec.tag,
                    outcome.status,
                    outcome.stdout,
                    outcome.fuel,
                    outcome.detail[: p.MAX_STR],
                ),
            )
            log.debug(
                "job %s from %s: %s, %d fuel, %.3f s",
                job.spec.tag,
                job.dealer,
                outcome.status.value,
                outcome.fuel,
                outcome.wall_s,
            )

    def _say_progress(self, now: float) -> None:
        """A line a minute while jobs finish, so a lender sees the machine at work."""
        if now - self._summary_at < PROGRESS_EVERY_S:
            return
        if self._summary:
            n = sum(self._summary.values())
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self._summary.items()))
            log.info("%d jobs finished in the last %.0f s (%s)", n, now - self._summary_at, kinds)
        self._summary_at, self._summary = now, {}

    def _finish(self, job: _Pending, result: p.Result) -> None:
        self._summary[result.status.value] = self._summary.get(result.status.value, 0) + 1
        if not self.done:
            log.info("first job done: %s from %s, %s", result.tag, job.dealer, result.status.value)
        self._unacked.setdefault(job.dealer, {})[result.tag] = result
        self.done += 1
        try:
            self.spool.put(job.dealer, result)
        except OSError as e:  # disk full, read-only: keep it in memory, deliver it anyway
            self._unspooled[(job.dealer, result.tag)] = result
            self._disk_trouble(f"cannot write the spool: {e.strerror or e}")

    def _disk_trouble(self, why: str) -> None:
        if not self.disk_trouble:
            log.warning(
                "%s; keeping finished results in memory and asking for no work until "
                "the disk takes them again",
                why,
            )
        self.disk_trouble = why

    def _retry_spool(self) -> None:
        """While the disk refuses, try the results kept in memory again each turn."""
        if not self.disk_trouble:
            return
        for (dealer, tag), result in list(self._unspooled.items()):
            if tag not in self._unacked.get(dealer, {}):
                del self._unspooled[(dealer, tag)]  # acknowledged meanwhile
                continue
            try:
                self.spool.put(dealer, result)
            except OSError:
                return
            del self._unspooled[(dealer, tag)]
        if self._probe_disk():
            log.warning("the disk takes writes again: asking for work again")
            self.disk_trouble = ""

    def _probe_disk(self) -> bool:
        try:
            write_atomic(self.cfg.data_dir / "probe", b"ok\n")
        except OSError:
            return False
        return True

    def _host_facts(self) -> p.HostFacts:
        """This machine as dealers should see it: what it is and what its owner allows."""
        return p.HostFacts(
            os.cpu_count() or 1,
            self.memory_mb,
            self.cfg.slots,
            tuple(self.cache.hashes()[: p.MAX_CACHED]),
            max_time_s=self.cfg.max_job_time_s,
            max_fuel=self.cfg.max_fuel,
            max_output_kb=self.cfg.max_output_kb,
        )

    def _start_jobs(self, now: float) -> None:
        while self._buffer and self.slots.free > 0:
            job = self._buffer.popleft()
            spec = job.spec
            too_much = self._host_facts().refuses(spec.limits)
            if too_much is not None:  # the owner's limits win: given back unrun, no fault
                log.warning("job %s from %s asks for %s: refused", spec.tag, job.dealer, too_much)
                self._finish(
                    job,
                    p.Result(
                        spec.tag, p.Status.ABANDONED, b"", 0, f"refused: it asks for {too_much}"
                    ),
                )
                continue
            if not self.cache.has(spec.payload):
                self._finish(
                    job,
                    p.Result(
                        spec.tag,
                        p.Status.INVALID,
                        b"",
                        0,
                        f"payload {spec.payload[:12]} was not sent",
                    ),
                )
                continue
            key = f"{self._next_key:x}"
            self._next_key += 1
            self.slots.start(key, spec.payload, spec.args, spec.stdin, spec.limits)
            job.started = now
            self._running[key] = job

    # --- talking to dealers ------------------------------------------------------

    def _rid(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _resolves(self, link: _Link, now: float) -> bool:
        """False (and a failed contact) if the dealer's host name does not resolve."""
        if link.resolved or not link.address.startswith("tcp://"):
            return True
        host = link.address[len("tcp://") :].rpartition(":")[0].strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                socket.getaddrinfo(host, None)
            except OSError as e:
                link.problem = f"host {host} does not resolve ({e.strerror or e})"
                self._failed(link, now, "no contact")
                return False
        link.resolved = True
        return True

    def _send(self, link: _Link, msg: p.Message) -> bool:
        if not self._resolves(link, time.monotonic()):
            return False
        try:
            self._socket(link).send(p.encode(msg), zmq.NOBLOCK)
            return True
        except zmq.Again:  # its queue is full: treat as unreachable
            self._failed(link, time.monotonic(), "send queue full")
            return False

    def _fetch(self, now: float) -> None:
        if self.disk_trouble:  # no new work while finished work cannot be kept safely
            return
        have = len(self._buffer) + len(self._running)
        if have >= self.hi_water:
            return
        if self._buffer and self._job_s:
            # never hold more than the buffered jobs' deadlines allow: the last one
            # starts after about len(buffer) / slots job lengths
            start_in = (len(self._buffer) / self.cfg.slots + 1) * self._job_s
            if now + start_in > min(job.deadline for job in self._buffer):
                return
        # one ask at a time, but a dealer slow to answer does not hold up the others
        if any(
            link.bored_id is not None and now - link.bored_at < FETCH_PATIENCE_S
            for link in self._links.values()
        ):
            return
        for _ in range(len(self._rr)):
            addr = self._rr[0]
            self._rr.rotate(-1)
            link = self._links[addr]
            if not link.may_ask(now):
                continue
            if link.key is None or link.check_key:
                self._hello(link, now)
                return
            rid = self._rid()
            host = self._host_facts()
            holding = self._holding(addr)
            msg = p.Bored(rid, self.name, host, self.hi_water - have, holding)
            if self._send(link, msg):
                link.bored_id, link.bored_at = rid, now
            return

    def _holding(self, dealer: str) -> tuple[str, ...] | None:
        """Every tag from `dealer` still in our hands (see protocol.Bored.holding)."""
        tags = [job.spec.tag for job in self._buffer if job.dealer == dealer]
        tags += [job.spec.tag for job in self._running.values() if job.dealer == dealer]
        tags += list(self._unacked.get(dealer, {}))
        return tuple(tags) if len(tags) <= p.MAX_HOLDING else None

    def _send_results(self, now: float) -> None:
        for addr, results in self._unacked.items():
            link = self._links.get(addr)
            if not results or link is None or link.results_id is not None or link.refused:
                continue
            if not link.backoff.ready(now):
                continue
            if link.key is None or link.check_key:
                self._hello(link, now)
                continue
            batch = _batch(results.values())
            rid = self._rid()
            if self._send(link, p.Results(rid, self.name, batch)):
                link.results_id, link.results_at = rid, now
                link.results_tags = tuple(r.tag for r in batch)

    def _send_alive(self, now: float) -> None:
        """Tell each dealer whose work we hold that we are alive, every few seconds, even
        while every slot is busy: a dealer takes a silent jobber as gone (docs/protocol.md)."""
        for addr, link in self._links.items():
            if link.key is None or link.refused or link.check_key or link.alive_id is not None:
                continue
            if now - link.alive_at < link.alive_every_s or not link.backoff.ready(now):
                continue
            if not self._holds_from(addr):
                continue
            rid = self._rid()
            # `holding` only while no `jobs` reply can be in flight: tags the dealer has
            # just sent us would otherwise read as lost (docs/protocol.md, section 6)
            holding = self._holding(addr) if link.bored_id is None else None
            if self._send(link, p.Alive(rid, self.name, holding)):
                link.alive_id, link.alive_at = rid, now

    def _holds_from(self, dealer: str) -> bool:
        return (
            any(job.dealer == dealer for job in self._buffer)
            or any(job.dealer == dealer for job in self._running.values())
            or bool(self._unacked.get(dealer))
        )

    def _cancel(self, dealer: str, tags: tuple[str, ...]) -> None:
        """The dealer settled these jobs elsewhere: drop them, stop them, send nothing."""
        gone = set(tags)
        before = len(self._buffer)
        self._buffer = deque(
            j for j in self._buffer if not (j.dealer == dealer and j.spec.tag in gone)
        )
        n = before - len(self._buffer)
        for key, job in list(self._running.items()):
            if job.dealer == dealer and job.spec.tag in gone:
                self._cancelled.add(key)
                self.slots.cancel(key)
                n += 1
        results = self._unacked.get(dealer, {})
        for tag in gone & set(results):
            del results[tag]
            self.spool.remove(dealer, tag)
            n += 1
        if n:
            log.info("dealer %s: %d jobs cancelled (settled without them)", dealer, n)

    def _check_timeouts(self, now: float) -> None:
        limit = self.cfg.request_timeout_s
        for link in list(self._links.values()):
            late_bored = link.bored_id is not None and now - link.bored_at > limit
            late_results = link.results_id is not None and now - link.results_at > limit
            late_hello = link.hello_id is not None and now - link.hello_at > limit
            late_alive = link.alive_id is not None and now - link.alive_at > limit
            if late_bored or late_results or late_hello or late_alive:
                self._failed(link, now, f"no answer within {limit:g} s")
                # a key learnt on first use: before asking again, has it changed?
                link.check_key = link.key_from_hello and not late_hello

    def _failed(self, link: _Link, now: float, why: str) -> None:
        self._drain_monitors(link)
        problem, link.resolved = link.problem, False
        self._reset_socket(link)
        wait = link.backoff.failed(now)
        log.info(
            "dealer %s: %s; failure %d, backed off for %.2f s (until %s)%s",
            link.address,
            why,
            link.backoff.failures,
            wait,
            time.strftime("%H:%M:%S", time.localtime(time.time() + wait)),
            f"; {problem}" if problem else "",
        )
        if (
            not link.pinned
            and link.backoff.failures >= DROP_REFERRED_AFTER
            and not self._unacked.get(link.address)
        ):
            log.info(
                "dealer %s dropped after %d failed contacts", link.address, link.backoff.failures
            )
            del self._links[link.address]
            self._rr.remove(link.address)

    def _drain(self, link: _Link, sock: zmq.Socket):
        """The valid messages waiting on `sock` (one of `link`'s); malformed ones are logged."""
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                yield p.decode(frame)
            except p.ProtocolError as e:
                log.warning("dealer %s sent a malformed message: %s", link.address, e)

    def _recv_hello(self, link: _Link) -> None:
        assert link.hello_sock is not None
        for msg in self._drain(link, link.hello_sock):
            if isinstance(msg, p.HelloReply) and msg.re == link.hello_id:
                self._hello_reply(link, msg)
                return  # the hello socket is closed now
            log.warning("dealer %s: unexpected %s on its key port", link.address, msg.TYPE)

    def _recv(self, link: _Link) -> None:
        assert link.sock is not None
        sock = link.sock
        for msg in self._drain(link, sock):
            self._handle(link, msg)
            if link.sock is not sock:  # the link was reset while handling: stop reading
                return

    def _handle(self, link: _Link, msg: p.Message) -> None:
        now = time.monotonic()
        self.reached = True
        re_ = getattr(msg, "re", None)
        if isinstance(msg, p.Jobs):
            if re_ == link.bored_id:
                link.bored_id = None
            link.backoff.succeeded()
            self._take_jobs(link, msg, now)
        elif isinstance(msg, p.RetryLater):
            if re_ == link.bored_id:
                link.bored_id = None
            link.backoff.succeeded()
            link.ask_after = now + msg.seconds
            if msg.more:  # work may still come from there: waiting for it is not idling
                self._last_busy = now
            if msg.reason and msg.reason != link.last_reason:
                link.last_reason = msg.reason
                log.info("dealer %s has no work for us: %s", link.address, msg.reason)
            log.debug("dealer %s: retry in %.1f s", link.address, msg.seconds)
        elif isinstance(msg, p.Referral):
            if re_ == link.bored_id:
                link.bored_id = None
            link.backoff.succeeded()
            link.ask_after = now + self.cfg.min_backoff_s
            if link.depth < MAX_REFERRAL_DEPTH:
                for text in msg.dealers:
                    try:
                        addr = p.dealer_address(text)
                    except ValueError as e:
                        log.warning("dealer %s referred to a bad address: %s", link.address, e)
                        continue
                    if not addr.startswith("tcp://"):  # a remote dealer names no local sockets
                        log.warning(
                            "dealer %s referred to %s: only tcp is followed", link.address, addr
                        )
                        continue
                    self._add_link(addr, link.depth + 1)
        elif isinstance(msg, p.Finished):
            if re_ == link.bored_id:
                link.bored_id = None
            link.backoff.succeeded()
            # no more work there: ask again only after the longest backoff (a new batch
            # may start on the same address); results still go while it lingers
            link.ask_after = now + self.cfg.max_backoff_s
            log.info("dealer %s: its task is finished", link.address)
        elif isinstance(msg, p.AliveAck):
            if re_ == link.alive_id:
                link.alive_id = None
            link.backoff.succeeded()
            link.alive_every_s = min(p.ALIVE_INTERVAL_S, msg.lease_s / 4)
            if msg.cancel:
                self._cancel(link.address, msg.cancel)
        elif isinstance(msg, p.Ack):
            if re_ == link.results_id:
                link.results_id = None
                link.results_tags = ()
            link.backoff.succeeded()
            self._acked(link.address, msg)
        elif isinstance(msg, p.Error):
            log.warning(
                "dealer %s refused request %d: %s: %s",
                link.address,
                msg.re,
                msg.code.value,
                msg.text,
            )
            if re_ in (link.bored_id, link.results_id):
                self._failed(link, now, f"error {msg.code.value}")
        else:
            log.warning("dealer %s sent an unexpected %s", link.address, msg.TYPE)

    def _take_jobs(self, link: _Link, msg: p.Jobs, now: float) -> None:
        for sha, wasm in msg.payloads.items():
            try:
                got = self.cache.put(wasm)
            except OSError as e:
                self._disk_trouble(f"cannot store a payload: {e.strerror or e}")
                for spec in msg.jobs:  # give them back unrun: no fault of this machine
                    job = _Pending(link.address, spec, now + spec.deadline_s)
                    why = "the jobber's disk is full or read-only"
                    self._finish(job, p.Result(spec.tag, p.Status.ABANDONED, b"", 0, why))
                return
            if got != sha:
                self._repeats.warn(
                    now,
                    f"badhash {link.address}",
                    lambda sha=sha, got=got: (
                        f"dealer {link.address} sent payload {sha[:12]} "
                        f"whose bytes hash to {got[:12]}; ignored"
                    ),
                )
        for spec in msg.jobs:
            self._buffer.append(_Pending(link.address, spec, now + spec.deadline_s))
            self.cache.touch(spec.payload)
        if msg.payloads:  # bounded disk: whatever dealers send, the cache keeps its size
            held = {j.spec.payload for j in self._buffer}
            held |= {j.spec.payload for j in self._running.values()}
            gone = self.cache.evict(self.cfg.cache_mb * 1024 * 1024, p.MAX_CACHED, held)
            if gone:
                log.info(
                    "payload cache over %d MiB: %d least used removed", self.cfg.cache_mb, gone
                )
        if msg.jobs:
            self._last_busy = now
            log.debug("%d jobs from %s", len(msg.jobs), link.address)

    def _acked(self, dealer: str, msg: p.Ack) -> None:
        results = self._unacked.get(dealer, {})
        for tag in msg.tags:
            results.pop(tag, None)
            self._unspooled.pop((dealer, tag), None)
            self.spool.remove(dealer, tag)
        for rej in msg.rejected:
            self._repeats.warn(
                time.monotonic(),
                f"refused {dealer} {rej.code.value}",
                lambda rej=rej: (
                    f"dealer {dealer} refused result {rej.tag}: {rej.code.value}: {rej.text}"
                ),
            )
            results.pop(rej.tag, None)
            self.spool.remove(dealer, rej.tag)

    def _delivering(self) -> bool:
        """Results wait for a dealer that is answering: finish delivering them first."""
        return any(
            results and addr in self._links and self._links[addr].backoff.failures == 0
            for addr, results in self._unacked.items()
        )

    def _count_unacked(self) -> int:
        return sum(len(r) for r in self._unacked.values())

    # --- shutdown ------------------------------------------------------------

    def _shutdown(self) -> None:
        log.info(
            "stopping: %d running, %d not started, %d results to deliver",
            len(self._running),
            len(self._buffer),
            self._count_unacked(),
        )
        while self._buffer:
            job = self._buffer.popleft()
            self._finish(
                job,
                p.Result(
                    job.spec.tag, p.Status.ABANDONED, b"", 0, "jobber stopped before starting it"
                ),
            )
        deadline = time.monotonic() + self.cfg.grace_s
        while self._running and time.monotonic() < deadline:
            self._turn(time.monotonic())
            self._wait()
        for key, outcome in self.slots.close(0.0):
            job = self._running.pop(key, None)
            if job is not None:
                self._finish(
                    job,
                    p.Result(
                        job.spec.tag,
                        outcome.status,
                        outcome.stdout,
                        outcome.fuel,
                        outcome.detail[: p.MAX_STR],
                    ),
                )
        flush_until = time.monotonic() + min(5.0, self.cfg.request_timeout_s)
        while self._count_unacked() and time.monotonic() < flush_until:
            self._turn(time.monotonic())
            self._wait()
        if self._count_unacked():
            log.info("%d results stay in the spool for next time", self._count_unacked())

    # --- local control ------------------------------------------------------------

    def _serve_control(self) -> None:
        assert self._control is not None
        while True:
            try:
                data = self._control.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                cmd = _control.parse_request(data)
            except ValueError as e:
                reply = {"ok": False, "error": str(e)}
            else:
                reply = {"ok": True, **self._command(cmd)}
            self._control.send(_control.encode_reply(reply))

    def _command(self, cmd: str) -> dict:
        if cmd == "suspend":
            self.user_suspended = True
        elif cmd == "resume":
            self.user_suspended = False
        elif cmd == "quit":
            self.stop()
        self._apply_suspension(time.monotonic())
        return self.status()

    def status(self) -> dict:
        now = time.monotonic()
        return {
            "name": self.name,
            "key": self.keys.public_hex,
            "slots": self.cfg.slots,
            "suspended": self._why_suspended or None,
            "stopping": self._stopping,
            "dealers": [
                {
                    "address": link.address,
                    "key": link.key,
                    "refused": link.refused or None,
                    "pinned": link.pinned,
                    "failures": link.backoff.failures,
                    "backoff_s": max(0.0, link.backoff.until - now),
                }
                for link in self._links.values()
            ],
            "running": [
                {"tag": job.spec.tag, "dealer": job.dealer, "elapsed_s": now - job.started}
                for job in self._running.values()
            ],
            "buffered": len(self._buffer),
            "buffered_by_dealer": _count(job.dealer for job in self._buffer),
            "spooled": self.spool.count(),
            "disk_trouble": self.disk_trouble or None,
            # results waiting for a dealer: kept until it acknowledges them; those for a
            # dealer gone for good stay here, listed, until the data directory is cleared
            "spooled_by_dealer": {d: len(r) for d, r in self._unacked.items() if r},
            "done": self.done,
            "settings": {
                f.name: (str(v) if isinstance(v, Path) else v)
                for f in fields(self.cfg)
                for v in (getattr(self.cfg, f.name),)
            },
        }

    def close(self) -> None:
        if self._control is not None:
            self._control.close(linger=0)
            self._control = None
            (self.cfg.data_dir / "control").unlink(missing_ok=True)
        self.slots.close(0.0)
        for link in self._links.values():
            self._reset_socket(link)
        os.close(self._lock)


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def _batch(results) -> tuple[p.Result, ...]:
    """The first results that fit one message: at most MAX_RESULTS_PER_MESSAGE of them
    and MAX_RESULTS_BYTES (roughly: outputs, tags and details), and always at least one."""
    out: list[p.Result] = []
    size = 0
    for r in results:
        size += len(r.output) + 4 * (len(r.tag) + len(r.detail)) + 64
        if out and (size > MAX_RESULTS_BYTES or len(out) >= MAX_RESULTS_PER_MESSAGE):
            break
        out.append(r)
    return tuple(out)
