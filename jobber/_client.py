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
import logging
import os
import queue
import socket
import time
from pathlib import Path

import zmq

import protocol as p
import sandbox
from jobber import _control, _instructions
from jobber import _core as c
from jobber._actions import DownloadRuntime, PrepareRuntime
from jobber._allocation import Allocation, owner_of
from jobber._allocator_link import AllocatorLink
from jobber._files import Diverged, FileChecker, FileStore
from jobber._idle import IdleDetector, Throttle
from jobber._lender import Lender
from jobber._prepare import Preparing, RuntimePreparer
from jobber._quiet import Repeats
from jobber._settings import Config, JobberError
from jobber._sockets import DealerSockets, Sockets
from jobber._spool import Spool, SpoolWriter
from jobber._states import Saves, States
from jobber._status import Control
from jobber._trust import Trust
from net._files import write_atomic
from net._keys import load_or_create_key_pair
from net._pins import Pins

log = logging.getLogger(__name__)

POLL_S = 0.25  # longest sleep of the loop: signals and backoff expiries are noticed this fast
# with short jobs queued in the slots, the loop waits this long after a first outcome
# so that one turn takes several: a turn costs far more than a job of a millisecond
COALESCE_S = 0.002
# after a new payload's first job starts (its compiled form may be written), the cache is
# brought back under its size this long after, at the latest
EVICT_AFTER_S = 5.0


class Jobber(DealerSockets, Trust, Allocation, Control, Preparing, Saves, Lender):
    """The shell: the loop, the slots, the spool and the cache around a JobberCore; its
    dealers' sockets are jobber._sockets, signed payloads jobber._trust, an allocator's
    instructions jobber._allocation, the control socket and status jobber._status."""

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
        if cfg.input_mb < 0:
            raise JobberError("--max-input-mb must not be negative")
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
        self.files = FileStore(cfg.data_dir / "files")  # input files, kept with the cache
        self._writer: SpoolWriter | None = None
        self._checker: FileChecker | None = None  # checks complete input files off the loop
        self._preparer: RuntimePreparer | None = None  # compiles runtimes off the loop
        # running job's key -> when it last saved a checkpoint (sandbox._scratch), its size
        self._saved: dict[str, tuple[float, int]] = {}
        self.states = States(cfg.data_dir / "states")  # their latest states (jobber._states)
        # running job's key -> the fuel and time it used before the state it resumed from
        self._offsets: dict[str, tuple[int, float]] = {}
        self._poll: zmq.Poller | None = None
        self._present: set[str] = set()  # payloads known to be in the cache
        self._poll_key: tuple = ()
        self._owner = owner_of(cfg)
        self._eff = _instructions.effective(self._owner, None)
        self._kept: _instructions.Kept | None = None  # the allocator's, as last heard
        self._alink: AllocatorLink | None = None
        self._facts_at = 0.0
        settings = cfg.core_settings(
            self.name,
            os.cpu_count() or 1,
            self._owner.memory_mb,
            self._eff.cache_mb,
            sandbox.PLATFORM,
            sandbox.NAN_FUEL,
        )
        dealers = [p.dealer_address(text) for text in cfg.dealers]
        spooled = [(s.dealer, s.result) for s in self.spool.load()]
        self.core = c.JobberCore(
            settings, dealers, time.monotonic(), pins=self.pins.all(), spooled=spooled
        )
        self.core.restore(self.states.load(), time.monotonic())
        self._cache_updated()
        self.core.files_updated(self.files.whole(), self.files.partials)
        self._evict_at: float | None = None  # when the cache is checked for its size next
        fixed_s = sandbox.COMPILE_TIME_S  # an owner's compile time limit may only be lower
        self.slots = sandbox.Slots(
            cfg.slots,
            cfg.data_dir / "cache",
            compile_time_s=min(cfg.compile_time_s or fixed_s, fixed_s),
            compile_memory_mb=self._compile_memory_mb(self._owner.memory_mb),
        )
        self._socks: dict[str, Sockets] = {}
        self._repeats = Repeats(log)
        self._stopping = False
        self._load_owner(cfg.data_dir)  # jobber._lender: suspended, paused, preferences
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
        """Bound the cache's disk, payloads and input files together, as the core splits
        it (JobberCore.files_allowance, payloads_allowance: whatever dealers send, it
        keeps its size, but never removes what jobs in hand need), and tell the core what
        it holds."""
        held = self.core.held_payloads()
        files_may = self.core.files_allowance()
        files_gone = 0 if files_may is None else self.files.evict(files_may, self.core.held_files())
        if files_gone:
            log.info(
                "cache over %d MiB (%s): %d least used input files removed",
                self._eff.cache_mb,
                why,
                files_gone,
            )
        self.core.files_updated(self.files.whole(), self.files.partials)
        payloads_may = self.core.payloads_allowance(self.files.total())
        gone = 0 if payloads_may is None else self.cache.evict(payloads_may, p.MAX_CACHED, held)
        if gone:
            self._present.clear()
            log.info(
                "payload cache over %d MiB (%s): %d least used removed",
                self._eff.cache_mb,
                why,
                gone,
            )
        self._cache_updated()

    def _keep_chunk(self, a: c.KeepChunk) -> None:
        """Write a chunk the core checked; a file with every chunk is checked whole off the
        loop (FileChecker: the core hears once it is done, `_files_checked`)."""
        try:
            complete = self.files.keep_chunk(a.sha, a.size, a.index, a.data, a.digests)
        except OSError as e:
            self.files.drop_partial(a.sha)
            self.core.handle(c.FileStoreFailed(a.sha, str(e.strerror or e)), time.monotonic())
            return
        except Diverged as e:  # the core's bug, caught here: the store's word wins
            log.error("%s; the store's partial file dropped, fetched again", e)
            self.files.drop_partial(a.sha)
            self.core.files_updated(self.files.whole(), self.files.partials)
            return
        if complete:
            if self._checker is None:
                self._checker = FileChecker(self.files)
                self._checker.start()
            self._checker.put(a.sha, self.files.complete(a.sha))

    def _files_checked(self) -> None:
        """Files the checker is done with: the core hears whether each is held whole."""
        assert self._checker is not None
        with contextlib.suppress(BlockingIOError):
            os.read(self._checker.fd, 4096)
        now = time.monotonic()
        while True:
            try:
                sha, got, err = self._checker.done.get_nowait()
            except queue.Empty:
                break
            size = self.files.checked(sha)
            if err is not None:
                self.core.handle(c.FileStoreFailed(sha, str(err.strerror or err)), now)
            elif got is None:
                self.core.handle(c.FileKept(sha, size), now)
            else:
                self.core.handle(c.FileBad(sha, got), now)
            self._evict(f"input file {sha[:12]}")
        self._carry_out()

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
            self._writer = SpoolWriter(self.spool)
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
            files = {}
            for guest, ref in (spec.files or {}).items():
                if not self.files.has(ref.hash):  # never evicted while held: a lost disk
                    gone = c.PayloadGone(a.key, ref.hash, "input file")
                    self.core.handle(gone, time.monotonic())
                    return
                self.files.touch(ref.hash)
                files[guest] = str(self.files.path(ref.hash))
            state, limits, *used = self._resume(a)
            try:  # the worker maps the files read-only, each at its guest path
                self.slots.start(
                    a.key, spec.payload, spec.args, spec.stdin, limits, a.depth, files, state
                )
                self._offsets[a.key] = (used[0], used[1])
            except ValueError as e:  # its guest paths make no tree the sandbox serves
                why = f"its input files: {e}"[: p.MAX_STR]
                result = p.Result(spec.tag, p.Status.INVALID, b"", 0, why)
                self.core.job_done(a.key, result, 0.0, time.monotonic())
        elif isinstance(a, c.Stop):
            self.slots.cancel(a.key)
        elif isinstance(a, c.SendSave):
            self._send_save(a)
        elif isinstance(a, c.ForgetState):
            self.states.forget(a.dealer, a.tag)
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
        elif isinstance(a, c.KeepChunk):
            self._keep_chunk(a)
        elif isinstance(a, c.DropFile):
            self.files.drop_partial(a.sha)
        elif isinstance(a, PrepareRuntime | DownloadRuntime):
            self._runtime_action(a)
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
        self._tell_owner(now)
        self.core.tick(now)
        self._carry_out()
        if self._evict_at is not None and now >= self._evict_at:
            self._evict_at = None
            self._evict("compiled forms")

    def _collect(self) -> None:
        done = self.slots.collect()
        for s in self.slots.take_saves():
            self._saved[s.key] = (time.monotonic(), len(s.state))
            self._state_saved(s)
        for key, outcome in done:
            self._outcome(key, outcome)
        for key in [k for k in self._saved if k not in self.core.running]:
            del self._saved[key]  # ended (or cancelled): only running jobs are shown
        self._carry_out()

    def _outcome(self, key: str, outcome: sandbox.Outcome) -> None:
        held = self.core.running.get(key)
        tag = held.spec.tag if held is not None else "?"
        fuel = outcome.fuel + self._offsets.pop(key, (0, 0.0))[0]  # the whole job's
        result = p.Result(tag, outcome.status, outcome.stdout, fuel, outcome.detail[: p.MAX_STR])
        self.core.job_done(key, result, outcome.wall_s, time.monotonic())

    def _poller(self) -> zmq.Poller:
        """A poller over every socket and pipe the loop reads; made anew only when that
        set changes (a dealer's sockets reset, a slot worker replaced), not every turn."""
        watched = [s for ss in self._socks.values() for s in (ss.sock, ss.hello)]
        watched += [m for ss in self._socks.values() for m in ss.monitors.values()]
        watched += self.slots.fds()
        watched += [self._writer.fd if self._writer else None, self._control]
        watched += [self._checker.fd if self._checker else None]
        watched += [self._preparer.fd if self._preparer else None]
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
        if self._checker is not None and self._checker.fd in ready:
            self._files_checked()
        if self._preparer is not None and self._preparer.fd in ready:
            self._runtimes_prepared()
        if self._control is not None and self._control in ready:
            self._serve_control()

    # --- shutdown ------------------------------------------------------------

    def _shutdown(self) -> None:
        self.core.stop(time.monotonic())
        self._carry_out()
        # jobs the owner or the machine holds stay so: given back (or parked) at once
        held = self.core.suspended and self.core.why_suspended != "cpu limit"
        grace_s = 0.0 if held else self.cfg.grace_s
        deadline = time.monotonic() + grace_s
        while self.core.running and time.monotonic() < deadline:
            self._turn(time.monotonic())
            self._wait()
        for key, outcome in self.slots.close(0.0):
            self._outcome(key, outcome)
        self._carry_out()
        flush_until = time.monotonic() + min(5.0, self.cfg.request_timeout_s)
        while (self.core.count_unacked() or self.core.uploads_pending()) and (
            time.monotonic() < flush_until
        ):
            self._turn(time.monotonic())
            self._wait()
        if self.core.count_unacked():
            log.info("%d results stay in the spool for next time", self.core.count_unacked())

    # --- local control ------------------------------------------------------------

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
        if self._checker is not None:  # a check under way ends (kept or not) before we go
            self._checker.stop()
            self._checker = None
        if self._preparer is not None:  # a compile under way is killed: done again later
            self._preparer.stop()
            self._preparer = None
        if self._writer is not None:  # what is queued reaches the disk before we go
            self._writer.stop()
            self._writer = None
        for dealer in list(self._socks):
            self._reset(dealer)
        if self._lock >= 0:  # (closed once: a second close is nothing)
            os.close(self._lock)
            self._lock = -1
