"""The jobber's shell: sockets, files and processes around its pure core (jobber._core).

Theory of operation
-------------------
One thread, one zmq.Poller over a DEALER socket per dealer (and, while its key
is being learnt, one to its plaintext port), ZeroMQ's monitor sockets for
those, the slots' worker pipes and the local control socket. Each turn:

1. finished jobs are collected from the slots and given to the core;
2. suspension is decided (owner, idle detection, CPU limit) and applied;
3. the core ticks, and its actions are carried out in order: messages sent,
   sockets reset, jobs started and stopped in slots, results written to and
   removed from the spool, keys pinned;
4. the loop polls until a message, an outcome, a backoff's end or POLL_S.

Decisions (what to ask and when, backoff, buffering, liveness, cancels, the
spool's bookkeeping) are the core's; everything here does what it is told,
and tells the core what happened (a reply, a failed send, a full disk).

Every link is CurveZMQ-encrypted with the jobber's own key pair (made on first
start in the data directory: its identity to every dealer) and checked against
the dealer's public key: the one in the address (`host:port#key`), else the one
pinned in `known_dealers` in the data directory, else the one the dealer's
plaintext port announces on first contact (`hello`), which is then pinned, as
SSH does. A pinned dealer that later presents another key is refused loudly.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

import protocol as p
import sandbox
from jobber import _control, _instructions
from jobber import _core as c
from jobber._allocator_link import AllocatorLink
from jobber._idle import IdleDetector, Throttle, read_host
from jobber._quiet import Repeats
from jobber._settings import MAX_JOB_TIME_S, MIB, REQUEST_TIMEOUT_S, SPOOL_MB
from jobber._spool import Spool
from net._author_keys import load_trusted_key
from net._backoff import MAX_BACKOFF_S, MIN_BACKOFF_S, Backoff
from net._files import write_atomic
from net._keys import load_or_create_key_pair, z85_of_hex
from net._pins import Pins
from protocol._alloc import Instructions, allocator_address

log = logging.getLogger(__name__)

POLL_S = 0.25  # longest sleep of the loop: signals and backoff expiries are noticed this fast
# with short jobs queued in the slots, the loop waits this long after a first outcome
# so that one turn takes several: a turn costs far more than a job of a millisecond
COALESCE_S = 0.002
# what ZeroMQ can tell about a connection that a missing reply cannot; the first two
# are definite: a request out to such a dealer has failed, without waiting for its timeout
_PROBLEMS = {
    zmq.EVENT_CONNECT_RETRIED: "cannot connect: refused, or the host is unreachable",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the dealer refused our key (denied, or a closed pool)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the encryption handshake failed (a wrong dealer key?)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the encryption handshake failed (a wrong dealer key?)",
}
_DEFINITE = (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_HANDSHAKE_FAILED_AUTH)
# Frames ZeroMQ may queue from one dealer before this loop reads them (ZMQ_RCVHWM): a
# dealer answers each request once and the loop reads every turn, so a queue of two
# never holds an honest reply back (a full queue stops reading the connection; nothing
# is dropped), while a dealer pushing frames unasked makes the jobber hold at most this
# many, and one more being received, of p.MAX_MESSAGE_BYTES each (docs/jobber.md)
RECV_HWM = 2
# after a new payload's first job starts (its compiled form may be written), the cache is
# brought back under its size this long after, at the latest
EVICT_AFTER_S = 5.0
_WATCHED = zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
for _event in _PROBLEMS:
    _WATCHED |= _event


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
    request_timeout_s: float = REQUEST_TIMEOUT_S
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
    spool_mb: int = SPOOL_MB  # results one dealer may leave unacknowledged before it gets no work
    max_job_time_s: float = (
        MAX_JOB_TIME_S  # the owner's ceilings for one job, whatever a dealer asks
    )
    max_fuel: int | None = None
    max_output_kb: int | None = None
    # the owner's ceilings for compiling a module (None: the sandbox's fixed fences); the
    # memory fence is never more than memory_mb either
    compile_memory_mb: int | None = None
    compile_time_s: float | None = None
    exit_with: int | None = None  # the pid of our parent: stop when we are no longer its child
    # author keys (files) whose signed payloads alone may run; empty: any payload may
    trust: list[Path] = field(default_factory=list)
    # an allocator to take dealers, shares and preferences from, for the machines of `pool`
    allocator: str | None = None
    pool: str | None = None
    join: str | None = None  # the pool's join token, presented to the allocator once
    # the fields above its owner set (command line, --config): a pool never loosens these
    explicit: frozenset[str] = frozenset()


@dataclass
class _Sockets:
    """A dealer's sockets and what ZeroMQ says about them."""

    sock: zmq.Socket | None = None
    hello: zmq.Socket | None = None  # to the plaintext port, while a key is being learnt
    monitors: dict = field(default_factory=dict)  # socket -> its ZeroMQ event socket
    resolved: bool = False  # its host name resolved (checked again after a reset)

    def close(self, which: zmq.Socket | None = None) -> None:
        """Close `which` (default: all) and its monitor."""
        for s in [which] if which is not None else [self.sock, self.hello]:
            if s is None:
                continue
            mon = self.monitors.pop(s, None)
            if mon is not None:
                mon.close(linger=0)
            s.close(linger=0)
            if s is self.sock:
                self.sock = None
            if s is self.hello:
                self.hello = None


class _SpoolWriter(threading.Thread):
    """Writes the spool off the loop, so that the loop runs jobs while the disk syncs.

    Everything queued while a batch is being written goes into the next batch: one
    fsync serves every result finished meanwhile (group commit). Each batch done (or
    refused by the disk) is queued back in `done` and signalled on a pipe the loop
    polls; the loop then tells the core, which sends only results already on disk.
    """

    def __init__(self, spool: Spool) -> None:
        super().__init__(name="spool-writer", daemon=True)
        self.spool = spool
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()  # (batch, OSError | None)
        self.fd, self._signal = os.pipe()
        os.set_blocking(self.fd, False)

    def put(self, batch: list[tuple[str, p.Result]]) -> None:
        self._todo.put(("put", batch))

    def remove(self, dealer: str, tag: str) -> None:
        self._todo.put(("remove", (dealer, tag)))

    def stop(self) -> None:
        """Write what is queued, then end (joined)."""
        self._todo.put(("stop", None))
        self.join()
        os.close(self.fd)
        os.close(self._signal)

    def run(self) -> None:
        while True:
            items = [self._todo.get()]
            while True:
                try:
                    items.append(self._todo.get_nowait())
                except queue.Empty:
                    break
            batch = [r for kind, x in items if kind == "put" for r in x]
            if batch:
                try:
                    self.spool.put_many(batch)
                    self.done.put((batch, None))
                except OSError as e:
                    self.done.put((batch, e))
            for kind, x in items:
                if kind == "remove":
                    self.spool.remove(*x)
            if batch:
                os.write(self._signal, b"x")
            if any(kind == "stop" for kind, _ in items):
                return


def _physical_memory_mb() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
    except (ValueError, OSError):
        return 1024


class Jobber:
    def __init__(self, cfg: Config, context: zmq.Context | None = None) -> None:
        if cfg.slots < 1:
            raise JobberError("--slots must be at least 1")
        if not cfg.dealers and cfg.allocator is None:
            raise JobberError("no dealer given")
        if cfg.allocator is not None and cfg.dealers:
            raise JobberError("give dealers or --allocator, not both")
        if cfg.allocator is not None and not cfg.pool:
            raise JobberError("--allocator needs --pool NAME")
        if (cfg.compile_memory_mb is not None and cfg.compile_memory_mb < 1) or (
            cfg.compile_time_s is not None and cfg.compile_time_s <= 0
        ):
            raise JobberError("--compile-memory and --compile-time must be positive")
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
        self._roots = self._load_trust(cfg.trust)
        self._learnt_path = cfg.data_dir / "trusted_keys"
        self._learnt = self._load_learnt()  # key -> the --trust key its rotation chain began at
        self._ctx = context or zmq.Context.instance()
        self._ctx.set(zmq.IPV6, 1)  # dealers and the allocator may be IPv6 (or dual-stack)
        self.cache = sandbox.ModuleCache(cfg.data_dir / "cache")
        self.spool = Spool(cfg.data_dir / "spool")
        self._writer: _SpoolWriter | None = None
        self._poll: zmq.Poller | None = None
        self._present: set[str] = set()  # payloads known to be in the cache
        self._poll_key: tuple = ()
        self._owner = _instructions.Owner(
            slots=cfg.slots,
            cpus=os.cpu_count() or 1,
            memory_mb=cfg.memory_mb or max(1, _physical_memory_mb() // cfg.slots),
            cpu_limit=cfg.cpu_limit,
            cache_mb=cfg.cache_mb,
            idle_only=cfg.idle_only,
            idle_after_s=cfg.idle_after_s,
            explicit=frozenset(cfg.explicit),
        )
        self._eff = _instructions.effective(self._owner, None)
        self._kept: _instructions.Kept | None = None  # the allocator's, as last heard
        self._alink: AllocatorLink | None = None
        self._facts_at = 0.0
        settings = c.Settings(
            name=self.name,
            slots=cfg.slots,
            cpus=os.cpu_count() or 1,
            memory_mb=self._owner.memory_mb,
            buffer=cfg.buffer,
            max_idle_s=cfg.max_idle_s,
            min_backoff_s=cfg.min_backoff_s,
            max_backoff_s=cfg.max_backoff_s,
            request_timeout_s=cfg.request_timeout_s,
            max_job_time_s=cfg.max_job_time_s,
            max_fuel=cfg.max_fuel,
            max_output_kb=cfg.max_output_kb,
            spool_share_bytes=cfg.spool_mb * MIB,
            cache_bytes=self._eff.cache_mb * MIB,
            platform=sandbox.PLATFORM,
        )
        dealers = [p.dealer_address(text) for text in cfg.dealers]
        spooled = [(s.dealer, s.result) for s in self.spool.load()]
        self.core = c.JobberCore(
            settings, dealers, time.monotonic(), pins=self.pins.all(), spooled=spooled
        )
        self.core.cache_updated(self.cache.sizes())
        self._evict_at: float | None = None  # when the cache is checked for its size next
        fixed_s = sandbox.COMPILE_TIME_S  # an owner's compile time limit may only be lower
        self.slots = sandbox.Slots(
            cfg.slots,
            cfg.data_dir / "cache",
            compile_time_s=min(cfg.compile_time_s or fixed_s, fixed_s),
            compile_memory_mb=self._compile_memory_mb(self._owner.memory_mb),
        )
        self._socks: dict[str, _Sockets] = {}
        self._repeats = Repeats(log)
        self._stopping = False
        self.user_suspended = False
        self._idle = IdleDetector(
            os.cpu_count() or 1, load_threshold=cfg.load_threshold, idle_after_s=cfg.idle_after_s
        )
        self._throttle = Throttle(cfg.cpu_limit)
        self._control = _control.serve_socket(self._ctx, cfg.data_dir) if cfg.control else None
        if cfg.allocator is not None:
            # no dealer is asked for work before the allocator's (or kept) instructions
            # list it: not those an earlier run's spool names (their results still go)
            self.core.set_projects({})
            self._start_allocator(cfg.allocator, cfg.pool or "")
        self._carry_out()

    # --- set-up ------------------------------------------------------------

    def _compile_memory_mb(self, memory_mb: int) -> int:
        """The compile memory fence: the least of the memory one job may use here, the
        owner's compile ceiling and the sandbox's fixed fence."""
        ceiling = self.cfg.compile_memory_mb or sandbox.COMPILE_MEMORY_MB
        return max(1, min(memory_mb, ceiling, sandbox.COMPILE_MEMORY_MB))

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

    # --- signed payloads ------------------------------------------------------

    @staticmethod
    def _load_trust(paths) -> frozenset[str]:
        keys = set()
        for path in paths:
            try:
                keys.add(load_trusted_key(path))
            except ValueError as e:
                raise JobberError(f"--trust: {e}") from None
        return frozenset(keys)

    def _load_learnt(self) -> dict[str, str]:
        """Keys learnt through rotations signed by a trusted key, as `KEY ROOT` lines;
        only those whose root is trusted now count."""
        out: dict[str, str] = {}
        try:
            text = self._learnt_path.read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] in self._roots:
                out[parts[0]] = parts[1]
        return out

    def trusted(self) -> frozenset[str]:
        return self._roots | frozenset(self._learnt)

    def _verdicts(self, msg: p.Jobs) -> list[c.Screened]:
        """With --trust: the payloads of `msg` not signed by a trusted key, and why (a
        rotation a trusted key signed is learnt on the way)."""
        refused: list[c.Screened] = []
        if not self._roots:
            return refused
        signatures = msg.signatures or {}
        for sha in sorted({spec.payload for spec in msg.jobs} | set(msg.payloads)):
            verdict = p.verify_payload(sha, signatures.get(sha), self.trusted())
            if not verdict.accepted:
                refused.append(c.Untrusted(sha, verdict.reason))
            elif verdict.learned:
                self._learn(signatures[sha], verdict.learned)
        return refused

    def _learn(self, signature: p.Signature, keys: tuple[str, ...]) -> None:
        trusted = self.trusted()
        start = next((x.old for x in signature.chain if x.old in trusted), signature.key)
        root = start if start in self._roots else self._learnt.get(start, start)
        for key in keys:
            if key not in self._learnt and key not in self._roots:
                self._learnt[key] = root
                log.warning("author key %s trusted from now on: a rotation from %s", key, root)
        body = "".join(f"{k} {r}\n" for k, r in sorted(self._learnt.items()))
        try:
            write_atomic(
                self._learnt_path, ("# author keys learnt by rotation: KEY ROOT\n" + body).encode()
            )
        except OSError as e:
            self.core.disk_failed(f"cannot write {self._learnt_path}: {e.strerror or e}")

    # --- sockets -------------------------------------------------------------

    def _connect_to(self, endpoint: str) -> str:
        """`endpoint` from this jobber's source address, if it has one."""
        if self.cfg.source is None or not endpoint.startswith("tcp://"):
            return endpoint
        source = f"[{self.cfg.source}]" if ":" in self.cfg.source else self.cfg.source
        return f"tcp://{source}:0;{endpoint[len('tcp://') :]}"

    def _sockets(self, dealer: str) -> _Sockets:
        return self._socks.setdefault(dealer, _Sockets())

    def _work_socket(self, dealer: str) -> zmq.Socket:
        ss = self._sockets(dealer)
        if ss.sock is None:
            key = self.core.links[dealer].key
            assert key is not None
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
            s.setsockopt(zmq.RCVHWM, RECV_HWM)
            s.curve_secretkey = self.keys.secret
            s.curve_publickey = self.keys.public
            s.curve_serverkey = z85_of_hex(key)
            ss.monitors[s] = s.get_monitor_socket(_WATCHED)
            s.connect(self._connect_to(dealer))
            ss.sock = s
        return ss.sock

    def _hello_socket(self, dealer: str) -> zmq.Socket:
        ss = self._sockets(dealer)
        if ss.hello is None:
            if not dealer.startswith("tcp://"):
                endpoint = dealer + ".public"
            else:
                host, _, port = dealer.rpartition(":")
                endpoint = f"{host}:{int(port) + 1}"
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
            ss.monitors[s] = s.get_monitor_socket(_WATCHED)
            s.connect(self._connect_to(endpoint))
            ss.hello = s
        return ss.hello

    def _reset(self, dealer: str) -> None:
        ss = self._socks.pop(dealer, None)
        if ss is not None:
            ss.close()

    def _resolves(self, dealer: str, now: float) -> bool:
        """False (and a failed contact) if the dealer's host name does not resolve."""
        ss = self._sockets(dealer)
        if ss.resolved or not dealer.startswith("tcp://"):
            return True
        host = dealer[len("tcp://") :].rpartition(":")[0].strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                socket.getaddrinfo(host, None)
            except OSError as e:
                problem = f"host {host} does not resolve ({e.strerror or e})"
                self.core.contact_failed(dealer, now, "no contact", problem)
                return False
        ss.resolved = True
        return True

    def _send(self, dealer: str, msg: p.Message, hello: bool = False) -> None:
        now = time.monotonic()
        if not self._resolves(dealer, now):
            return
        sock = self._hello_socket(dealer) if hello else self._work_socket(dealer)
        try:
            sock.send(p.encode(msg), zmq.NOBLOCK)
        except zmq.Again:  # its queue is full: treat as unreachable
            self.core.contact_failed(dealer, now, "send queue full")

    def _drain_monitors(self, dealer: str, ss: _Sockets) -> None:
        for mon in list(ss.monitors.values()):
            while mon.poll(0):
                try:
                    event = recv_monitor_message(mon, zmq.NOBLOCK)["event"]
                except (zmq.Again, zmq.ZMQError):
                    break
                if event in _DEFINITE:
                    self.core.contact_failed(
                        dealer, time.monotonic(), "no contact", _PROBLEMS[event]
                    )
                    self._carry_out()  # may reset these very sockets
                    return
                if event in _PROBLEMS:
                    self.core.problem(dealer, _PROBLEMS[event])
                elif event in (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                    self.core.problem(dealer, "")

    def _drain(self, dealer: str, sock: zmq.Socket):
        """The valid messages waiting on `sock`; malformed ones are logged."""
        while True:
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                yield p.decode(frame)
            except p.ProtocolError as e:
                log.warning("dealer %s sent a malformed message: %s", dealer, e)

    def _recv(self, dealer: str, sock: zmq.Socket) -> None:
        for msg in self._drain(dealer, sock):
            now = time.monotonic()
            screened = self._screen_payloads(msg) if isinstance(msg, p.Jobs) else []
            # the core decides what of a `jobs` is taken before anything of it is kept:
            # the payloads of jobs it takes come back as a Store action
            self.core.received(dealer, msg, now, screened=screened)
            ss = self._socks.get(dealer)
            if isinstance(msg, p.HelloReply) and ss is not None and sock is ss.hello:
                ss.close(sock)  # the key is known: the plaintext port is done with
            self._carry_out()
            ss = self._socks.get(dealer)
            if ss is None or sock not in (ss.sock, ss.hello):  # closed or reset meanwhile
                return

    def _screen_payloads(self, msg: p.Jobs) -> list[c.Screened]:
        """What the core must know of a `jobs` message's payloads: those not signed by a
        trusted key (--trust), and those whose bytes do not hash to their name. The core
        decides what follows; nothing is stored here."""
        found = self._verdicts(msg)
        untrusted = {f.sha for f in found}
        for sha, wasm in msg.payloads.items():
            if sha in untrusted:
                continue
            got = hashlib.sha256(wasm).hexdigest()
            if got != sha:
                found.append(c.BadHash(sha, got))
        return found

    def _store_payloads(self, dealer: str, payloads: tuple[tuple[str, bytes], ...]) -> None:
        """Keep the payloads of jobs the core took (c.Store); their jobs go back unrun if
        the disk will not have them."""
        for sha, wasm in payloads:
            try:
                self.cache.put(wasm)
            except OSError as e:
                self.core.handle(c.StoreFailed(sha, str(e.strerror or e)), time.monotonic())
            else:
                self.cache.touch(sha)
        self._evict(f"{len(payloads)} payloads from {dealer}")

    def _evict(self, why: str) -> None:
        """Bound the cache's disk (whatever dealers send, it keeps its size, but never
        removes what jobs in hand need) and tell the core what it holds."""
        held = self.core.held_payloads()
        gone = self.cache.evict(self._eff.cache_mb * MIB, p.MAX_CACHED, held)
        if gone:
            self._present.clear()
            log.info(
                "payload cache over %d MiB (%s): %d least used removed",
                self._eff.cache_mb,
                why,
                gone,
            )
        self.core.cache_updated(self.cache.sizes())

    # --- carrying out the core's actions ---------------------------------------------

    def _carry_out(self) -> None:
        """Do what the core decided, in order. Results to spool are gathered and written
        as one batch (one fsync) before the next action of any other kind: so a turn's
        results cost one fsync, and none is sent before it is on disk."""
        while True:
            actions = self.core.take_actions()
            if not actions:
                return
            batch: list[tuple[str, p.Result]] = []
            for a in actions:
                if isinstance(a, c.Spool):
                    batch.append((a.dealer, a.result))
                    continue
                if batch:
                    self._spool(batch)
                    batch = []
                self._do(a)
            self._spool(batch)

    def _spool(self, batch: list[tuple[str, p.Result]]) -> None:
        if not batch:
            return
        if self._writer is None:
            self._writer = _SpoolWriter(self.spool)
            self._writer.start()
        self._writer.put(batch)

    def _spooled(self) -> None:
        """Batches the writer finished: their results may go now (or live in memory)."""
        assert self._writer is not None
        with contextlib.suppress(BlockingIOError):
            os.read(self._writer.fd, 4096)
        while True:
            try:
                batch, err = self._writer.done.get_nowait()
            except queue.Empty:
                break
            if err is None:
                self.core.spooled((d, r.tag) for d, r in batch)
                continue
            why = f"cannot write the spool: {err.strerror or err}"  # disk full, read-only
            for dealer, result in batch:
                self.core.disk_failed(why, dealer, result.tag)
        self._carry_out()

    def _do(self, a: c.Action) -> None:
        if isinstance(a, c.Send):
            self._send(a.dealer, a.msg)
        elif isinstance(a, c.Hello):
            self._send(a.dealer, a.msg, hello=True)
        elif isinstance(a, c.Reset):
            self._reset(a.dealer)
        elif isinstance(a, c.Start):
            spec = a.spec
            if spec.payload not in self._present and not self.cache.has(spec.payload):
                self.core.handle(c.PayloadGone(a.key, spec.payload), time.monotonic())
                return
            if spec.payload not in self._present:
                self.cache.touch(spec.payload)  # used: the last to be evicted
                if self._evict_at is None:  # its first job may compile it: that counts too
                    self._evict_at = time.monotonic() + EVICT_AFTER_S
            self._present.add(spec.payload)  # a payload in use is never evicted
            self.slots.start(a.key, spec.payload, spec.args, spec.stdin, spec.limits, a.depth)
        elif isinstance(a, c.Stop):
            self.slots.cancel(a.key)
        elif isinstance(a, c.Suspend):
            self.slots.suspend()
        elif isinstance(a, c.Resume):
            self.slots.resume()
        elif isinstance(a, c.Unspool):
            if self._writer is not None:
                self._writer.remove(a.dealer, a.tag)
            else:
                self.spool.remove(a.dealer, a.tag)
        elif isinstance(a, c.Pin):
            try:
                self.pins.put(a.dealer, a.key)
            except OSError as e:
                self.core.disk_failed(f"cannot write {self.pins.path}: {e.strerror or e}")
        elif isinstance(a, c.Store):
            self._store_payloads(a.dealer, a.payloads)
        elif isinstance(a, c.ProbeDisk):
            try:
                write_atomic(self.cfg.data_dir / "probe", b"ok\n")
            except OSError as e:
                self.core.disk_failed(f"cannot write the data directory: {e.strerror or e}")
            else:
                self.core.disk_ok()
        else:  # pragma: no cover - a new action the shell does not know is our bug
            raise TypeError(f"unknown action {a!r}")

    # --- the loop ----------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to wind down (safe to call from a signal handler)."""
        self._stopping = True

    def run(self) -> int:
        log.info(
            "jobber %s: %d slots, dealers %s",
            self.name,
            self.cfg.slots,
            ", ".join(self.core.links),
        )
        try:
            while not self._stopping:
                now = time.monotonic()
                if self.cfg.exit_with is not None and os.getppid() != self.cfg.exit_with:
                    log.info("the process that started this jobber is gone: stopping")
                    self.stop()
                    continue
                self._turn(now)
                if self.core.idle_too_long(now):
                    log.info("no work for %.1f s: exiting", self.core.idle_s(now))
                    if not self.core.reached:
                        log.error("never reached any dealer: %s", ", ".join(self.core.links))
                        return 1
                    break
                self._wait()
            else:
                self._shutdown()
        finally:
            self.close()
        return 0

    def _turn(self, now: float) -> None:
        if self._alink is not None:
            self._allocator_events(now)
        self._collect()
        self._owner(now)
        self.core.tick(now)
        self._carry_out()
        if self._evict_at is not None and now >= self._evict_at:
            self._evict_at = None
            self._evict("compiled forms")

    def _collect(self) -> None:
        for key, outcome in self.slots.collect():
            self._outcome(key, outcome)
        self._carry_out()

    def _outcome(self, key: str, outcome: sandbox.Outcome) -> None:
        held = self.core.running.get(key)
        tag = held.spec.tag if held is not None else "?"
        result = p.Result(
            tag, outcome.status, outcome.stdout, outcome.fuel, outcome.detail[: p.MAX_STR]
        )
        self.core.job_done(key, result, outcome.wall_s, time.monotonic())

    def _owner(self, now: float) -> None:
        """Tell the core what the owner and the machine are doing; it decides whether jobs
        are suspended (and asks for it with Suspend or Resume)."""
        hour = _local_hour()
        running = 0 if self.core.suspended else len(self.core.running)
        self.core.handle(
            c.Owner(
                suspended=self.user_suspended,
                stopping=self._stopping,
                computes=self._eff.computes_at(hour),
                asks=self._eff.asks_at(hour),
                in_use=self._eff.idle_only and not self._idle.update(read_host(), running, now),
                cpu_off=not self._throttle.running(now),
            ),
            now,
        )
        self._carry_out()

    def _poller(self) -> zmq.Poller:
        """A poller over every socket and pipe the loop reads; made anew only when that
        set changes (a dealer's sockets reset, a slot worker replaced), not every turn."""
        watched = [s for ss in self._socks.values() for s in (ss.sock, ss.hello)]
        watched += [m for ss in self._socks.values() for m in ss.monitors.values()]
        watched += self.slots.fds()
        watched += [self._writer.fd if self._writer else None, self._control]
        # the objects themselves, not their ids: an id can come back for a new socket
        key = tuple(x for x in watched if x is not None)
        if len(key) != len(self._poll_key) or any(
            a is not b for a, b in zip(key, self._poll_key, strict=True)
        ):
            self._poll_key = key
            self._poll = zmq.Poller()
            for x in watched:
                if x is not None:
                    self._poll.register(x, zmq.POLLIN)
        return self._poll

    def _wait(self) -> None:
        poller = self._poller()
        now = time.monotonic()
        timeout = min(POLL_S, max(0.0, self.core.wake_at(now) - now))
        if self._eff.cpu_limit < 100 and self.core.running:
            timeout = min(timeout, self._throttle.next_change(now))
        try:
            ready = dict(poller.poll(max(1, int(timeout * 1000))))
        except zmq.ZMQError as e:  # EINTR from a signal
            log.debug("poll interrupted: %s", e)
            return
        if ready and self.core.pipelined and set(ready) <= set(self.slots.fds()):
            # only slots have news, and short jobs queued in the workers run on meanwhile:
            # a moment's wait lets one turn take several outcomes instead of one each
            time.sleep(COALESCE_S)
        for dealer, ss in list(self._socks.items()):
            if any(mon in ready for mon in ss.monitors.values()):
                self._drain_monitors(dealer, ss)
            for s in (ss.sock, ss.hello):
                if s is not None and s in ready and self._socks.get(dealer) is ss:
                    self._recv(dealer, s)
        if self._writer is not None and self._writer.fd in ready:
            self._spooled()
        if self._control is not None and self._control in ready:
            self._serve_control()

    # --- the allocator -----------------------------------------------------------

    def _start_allocator(self, address: str, pool: str) -> None:
        try:
            text = allocator_address(address)
        except ValueError as e:
            raise JobberError(f"--allocator: {e}") from None
        endpoint, key = p.split_key(text)
        try:
            kept = _instructions.load(self.cfg.data_dir)
        except ValueError as e:
            log.warning("last instructions not used: %s", e)
            kept = None
        try:
            kept_at = None if kept is None else p.split_key(allocator_address(kept.allocator))[0]
        except ValueError:
            kept_at = None
        if kept is not None and (kept.pool, kept_at) == (pool, endpoint):
            log.info(
                "using the last instructions (serial %d) until allocator %s answers",
                kept.serial,
                endpoint,
            )
            self._apply(kept)
        elif kept is not None:
            log.info("the last instructions are for another pool or allocator: not used")
        if key is not None:
            self.pins.put(endpoint, key)
        self._alink = AllocatorLink(
            self._ctx,
            text,
            pool,
            self.keys,
            name=self.name,
            pinned_key=self.pins.get(endpoint),
            connect=self._connect_to,
            backoff=Backoff(self.cfg.min_backoff_s, self.cfg.max_backoff_s),
            timeout_s=self.cfg.request_timeout_s,
            join=self.cfg.join,
        )
        self._alink.facts = self.core.host_facts()
        self._alink.serial = None if self._kept is None else self._kept.serial
        self._alink.start()

    def _allocator_events(self, now: float) -> None:
        assert self._alink is not None
        if now - self._facts_at >= 1.0:
            self._alink.facts = self.core.host_facts()
            self._facts_at = now
        while True:
            try:
                event = self._alink.events.get_nowait()
            except queue.Empty:
                return
            if event[0] == "pin":
                try:
                    self.pins.put(event[1], event[2])
                except OSError as e:
                    self.core.disk_failed(f"cannot write {self.pins.path}: {e.strerror or e}")
            elif event[0] == "instructions":
                msg: Instructions = event[1]
                kept = _instructions.from_message(
                    self._alink.endpoint, msg, time.time(), self._debts()
                )
                if self._kept is None or self._kept.serial != msg.serial:
                    log.info(
                        "instructions %d from the allocator: %s; preferences %s",
                        msg.serial,
                        ", ".join(f"{x.name} (share {x.share:g})" for x in msg.projects)
                        or "no projects",
                        _instructions.prefs_text(msg.prefs),
                    )
                self._apply(kept)
                self._save_instructions()

    def _debts(self) -> dict[str, float]:
        return dict(self.core.shares.debt) if self.core.shares is not None else {}

    def _save_instructions(self) -> None:
        if self._kept is None:
            return
        try:
            _instructions.save(self.cfg.data_dir, replace(self._kept, debts=self._debts()))
        except OSError as e:
            log.warning("cannot keep the instructions on disk: %s", e.strerror or e)

    def _apply(self, kept: _instructions.Kept) -> None:
        """Take instructions in, without a restart: dealers and shares, the pool's prefs."""
        eff = _instructions.effective(self._owner, kept.prefs)
        projects: dict[str, float] = {}
        for x in kept.projects:
            try:
                projects[p.dealer_address(x.dealer)] = x.share
            except ValueError as e:
                log.warning("allocator project %s: bad dealer address: %s", x.name, e)
        self.core.set_projects(projects, kept.debts)
        self.core.handle(c.Resized(eff.slots, eff.memory_mb, eff.cache_mb * MIB), time.monotonic())
        self.slots.in_use = eff.slots
        self.slots.compile_memory_mb = self._compile_memory_mb(eff.memory_mb)
        if eff.cpu_limit != self._eff.cpu_limit:
            self._throttle = Throttle(eff.cpu_limit)
        if eff.idle_after_s != self._eff.idle_after_s:
            self._idle = IdleDetector(
                os.cpu_count() or 1,
                load_threshold=self.cfg.load_threshold,
                idle_after_s=eff.idle_after_s,
            )
        self._eff = eff
        self._kept = kept

    def _allocator_status(self, now: float) -> dict | None:
        a, k = self._alink, self._kept
        if a is None:
            return None
        shares = self.core.shares
        return {
            "address": a.endpoint,
            "pool": self.cfg.pool,
            "serial": None if k is None else k.serial,
            "received": None if k is None else k.received,
            "failures": a.backoff.failures,
            "problem": a.problem or None,
            "answered_s_ago": None if a.ok_at is None else now - a.ok_at,
            "projects": [] if k is None else [asdict(x) for x in k.projects],
            "prefs": {} if k is None else _instructions.prefs_dict(k.prefs),
            "debts_s": {} if shares is None else dict(shares.debt),
            "work_s": {} if shares is None else dict(shares.done_s),
        }

    # --- shutdown ------------------------------------------------------------

    def _shutdown(self) -> None:
        self.core.stop(time.monotonic())
        self._carry_out()
        deadline = time.monotonic() + self.cfg.grace_s
        while self.core.running and time.monotonic() < deadline:
            self._turn(time.monotonic())
            self._wait()
        for key, outcome in self.slots.close(0.0):
            self._outcome(key, outcome)
        self._carry_out()
        flush_until = time.monotonic() + min(5.0, self.cfg.request_timeout_s)
        while self.core.count_unacked() and time.monotonic() < flush_until:
            self._turn(time.monotonic())
            self._wait()
        if self.core.count_unacked():
            log.info("%d results stay in the spool for next time", self.core.count_unacked())

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
        self._owner(time.monotonic())
        return self.status()

    def status(self) -> dict:
        now = time.monotonic()
        core = self.core
        return {
            "name": self.name,
            "key": self.keys.public_hex,
            "slots": self.cfg.slots,
            "suspended": core.why_suspended or None,
            "stopping": self._stopping,
            "dealers": [
                {
                    "address": link.address,
                    "key": link.key,
                    "refused": link.refused or None,
                    "pinned": link.pinned,
                    "failures": link.backoff.failures,
                    "backoff_s": max(0.0, link.backoff.until - now),
                    "finished": link.finished,
                    "problem": link.problem or None,
                    "unasked": link.unasked,
                }
                for link in core.links.values()
            ],
            "running": [
                {"tag": h.spec.tag, "dealer": h.dealer, "elapsed_s": now - h.started}
                for h in core.running.values()
            ],
            "buffered": len(core.buffer),
            "buffered_by_dealer": _count(h.dealer for h in core.buffer),
            "spooled": self.spool.count(),
            "disk_trouble": core.disk_trouble or None,
            "trust": sorted(self.trusted()),
            "refused_payloads": dict(core.refused_payloads),
            # results waiting for a dealer: kept until it acknowledges them; those for a
            # dealer gone for good stay here, listed, until the data directory is cleared
            "spooled_by_dealer": {d: len(r) for d, r in core.unacked.items() if r},
            "done": core.done,
            "settings": {f.name: _plain(getattr(self.cfg, f.name)) for f in fields(self.cfg)},
            "slots_in_use": self._eff.slots,
            "effective": _plain(asdict(self._eff)),
            "allocator": self._allocator_status(now),
        }

    def close(self) -> None:
        if self._alink is not None:
            self._alink.stop()
            self._save_instructions()
            self._alink = None
        if self._control is not None:
            self._control.close(linger=0)
            self._control = None
            (self.cfg.data_dir / "control").unlink(missing_ok=True)
        self.slots.close(0.0)
        if self._writer is not None:  # what is queued reaches the disk before we go
            self._writer.stop()
            self._writer = None
        for dealer in list(self._socks):
            self._reset(dealer)
        os.close(self._lock)


def _local_hour() -> float:
    t = time.localtime()
    return t.tm_hour + t.tm_min / 60 + t.tm_sec / 3600


def _plain(v):
    """A setting as the control socket's msgpack carries it (paths as text)."""
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, list | tuple | frozenset):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out
