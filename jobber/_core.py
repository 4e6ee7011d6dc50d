"""The jobber's decisions: a pure state machine. No sockets, no files, no processes, no clock.

Theory of operation
-------------------
The core knows the dealers (each a *link*), the jobs it holds (buffered,
running, or finished and waiting for their dealer's ack) and what it has asked
and not yet been answered. The shell (jobber._client) feeds it events, with
the time passed in:

=====================  ==========================================================
event                  from
=====================  ==========================================================
``received``           a decoded message on a dealer's work or key port, with what
                       the shell found of a ``jobs`` message's payloads
                       (``Untrusted``: not signed by a trusted key, given back
                       ABANDONED; ``BadHash``: not the bytes named, INVALID)
``contact_failed``     a send that could not go (queue full, host unknown) or
                       ZeroMQ saying the connection is refused or the key is wrong
``job_done``           a slot's outcome (or a job the shell could not start)
``spooled``            results are on disk now (the shell writes them off the loop)
``disk_failed``        a spool write or the disk probe failed; ``disk_ok`` after
``tick``               every turn of the shell's loop
``handle``             a typed event (jobber._actions): ``Owner`` (the owner's
                       word, the pool's hours, the machine in use, the CPU limit:
                       the core decides whether jobs are suspended and work is
                       asked for), ``StoreFailed`` (the disk would not keep a
                       payload: its jobs go back unrun), ``PayloadGone`` (a job's
                       payload, or an input file, left the store: given back
                       unrun), ``Resized`` (an allocator's new slots, memory and
                       cache), ``FileKept`` / ``FileBad`` / ``FileStoreFailed``
                       (an input file complete and checked whole, or not, or the
                       disk would not keep its chunk: jobber._inputs)
=====================  ==========================================================

and carries out the *actions* the core queues, in order (``take_actions``):
``Send`` and ``Hello`` (messages to a dealer's work or key port), ``Reset``
(close a dealer's sockets: what was in flight on them is gone), ``Start`` and
``Stop`` (slots), ``Suspend`` and ``Resume`` (the slots' workers), ``Spool``
and ``Unspool`` (the results on disk), ``Store`` (payloads of jobs taken, into
the cache), ``KeepChunk`` (a checked chunk of an input file, into the file
store), ``DropFile`` (a partial input file the core forgot: the store forgets it
too), ``Pin`` (a dealer's key learnt on first use) and ``ProbeDisk``.

Its parts: the dealers (jobber._dealers: each a ``Link`` whose requests out,
timeouts, backoff, socket resets and key are net._link's Lazy Pirate core), the
holdings (jobber._holding: jobs taken, results, the spool, payloads), their
records and constants (jobber._state), the settings (jobber._settings), the input
files (jobber._inputs: which jobs with files are taken, the fetches, the chunks' checks).

The rules, per turn (``tick``):

1. while the disk refuses writes, results kept in memory are spooled again and
   the disk is probed; no work is asked for meanwhile;
2. buffered jobs start on free slots (unless paused), the owner's limits
   checked first: a job asking for more is given back unrun (ABANDONED);
3. requests unanswered after ``request_timeout_s`` are failed contacts: the
   dealer is backed off (net._backoff) and its sockets reset (Lazy Pirate);
4. each dealer with results waiting gets one ``results`` request at a time;
5. each dealer whose work is held hears ``alive`` every ``alive_every_s``;
   jobs waiting for input files past their deadline are given back; each file
   a buffered job lacks is fetched from one dealer whose jobs read it, up to
   p.MAX_FETCHES chunks out per dealer (jobber._inputs);
6. while fewer than ``hi_water()`` jobs are running or buffered, dealers are
   asked (``bored``) for the difference: one running per slot and, buffered, as
   many as cover AHEAD_S of work at the job length seen (so short jobs never
   leave a slot waiting on a round trip or an fsync). Asking is per dealer: each has at most one
   ask out, dealers that answered before are asked first (round robin among
   them), and an ask to a dealer that never answered, or one slower than
   FETCH_PATIENCE_S, holds back no other. So dead or referred dealers never
   starve a live one; a referred dealer that never answered is dropped after
   DROP_UNREACHED_AFTER failed contacts, one that did after DROP_REFERRED_AFTER.

Keys. A dealer's key comes from its owner (``host:port#KEY`` on the command line
or in an allocator's instructions), from the known_dealers pins, or on first use
from its plaintext port; a key a referral names is used only for the entry that
referral made: it never replaces or pre-empts a key the jobber holds or pins for
that address (an owner-given plain ``host:port`` learns its key from the dealer
itself), and it is never pinned. A referral naming another key than the one the
jobber holds or later learns is logged as a key mismatch naming both keys, and
so is a dealer whose key is checked (``hello``, after a failed contact) and
differs from the one used; a referred entry with a wrong key is dropped.

A reply counts only as the answer to a request out to that dealer (its ``re``).
A ``jobs`` must answer the ``bored`` out, carry at most its ``want`` jobs,
payloads only for those jobs, and for each job a payload sent with it or held
(or listed in that ask's ``host.cached``): anything else is refused whole,
before the shell stores anything of it (payloads of jobs taken come back as a
``Store`` action), logged once with a count, and is a failed contact. Other
replies answering nothing asked change nothing.

Whatever a dealer sends, what it makes the jobber hold is counted before it
is taken (``_take_jobs``), per dealer and in all: the jobs' inputs in hand
within ``input_budget()`` (slots x memory_mb by default), the payloads and input
files of jobs in hand within ``cache_bytes`` (and payloads within
MAX_PAYLOADS_PER_SLOT), one job's input files within ``input_files_mb()``, and each dealer's
unacknowledged results plus what its jobs in hand may write (``may_hold``)
within its share of the spool (``spool_share_bytes``), all dealers' within
``spool_budget()``. A job that does not fit is given back unrun (abandoned,
with the reason), or dropped when even that would pass its dealer's share; the
next ask to that dealer is for what fits. A dealer whose share is full is
asked for no more work until it acknowledges results. docs/jobber.md ("What a
dealer can make this machine hold") gives the bounds as a formula. Time a
dealer says it still holds work (``retry_later.more``) counts as busy for
``max_idle_s``.
"""

from __future__ import annotations

import logging
import math
import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import replace

import protocol as p
from jobber._actions import (
    Action,
    BadHash,
    DropFile,
    Event,
    FileBad,
    FileKept,
    FileStoreFailed,
    ForgetState,
    Hello,
    KeepChunk,
    Owner,
    PayloadGone,
    Pin,
    ProbeDisk,
    Reset,
    Resized,
    Resume,
    RuntimeEvent,
    Screened,
    Send,
    SendSave,
    Spool,
    Start,
    StateSaved,
    Stop,
    Store,
    StoreFailed,
    Suspend,
    Unspool,
    Untrusted,
)
from jobber._dealers import Dealers
from jobber._holding import Holdings
from jobber._inputs import Inputs
from jobber._owner import OwnerRule
from jobber._quiet import Repeats
from jobber._runtimes import Runtimes
from jobber._saving import Saving
from jobber._settings import MIB, SPOOL_SHARES_IN_ALL, Settings
from jobber._shares import Shares
from jobber._state import (
    AHEAD_S,
    ALIVE,
    BORED,
    BUSY_WAIT_S,
    DENIED_GIVE_UP,
    DISK_PROBE_S,
    DROP_REFERRED_AFTER,
    DROP_UNREACHED_AFTER,
    FETCH_PATIENCE_S,
    INPUT_OVERHEAD_BYTES,
    MAX_BUFFER_PER_SLOT,
    MAX_DEALERS,
    MAX_OUTPUT_KB,
    MAX_PAYLOADS_PER_SLOT,
    MAX_REFERRAL_DEPTH,
    MAX_RESULTS_BYTES,
    MAX_RESULTS_PER_MESSAGE,
    MAX_SHUNNED,
    PIPELINE_BELOW_S,
    PIPELINE_DEPTH,
    PROBE_EVERY_S,
    PROGRESS_EVERY_S,
    REFUSED_PAYLOAD_WAIT_S,
    RESULT_OVERHEAD_BYTES,
    RESULTS,
    SAVE,
    SHUN_DROPPED_S,
    Held,
    Link,
    Partial,
    _batch,
    _input_of,
    _weight,
)

log = logging.getLogger(__name__)

__all__ = [  # the core's face: its parts' names stay reachable here
    "AHEAD_S",
    "BUSY_WAIT_S",
    "DENIED_GIVE_UP",
    "DISK_PROBE_S",
    "DROP_REFERRED_AFTER",
    "DROP_UNREACHED_AFTER",
    "FETCH_PATIENCE_S",
    "INPUT_OVERHEAD_BYTES",
    "MAX_BUFFER_PER_SLOT",
    "MAX_DEALERS",
    "MAX_OUTPUT_KB",
    "MAX_PAYLOADS_PER_SLOT",
    "MAX_REFERRAL_DEPTH",
    "PROBE_EVERY_S",
    "MAX_RESULTS_BYTES",
    "MAX_RESULTS_PER_MESSAGE",
    "MAX_SHUNNED",
    "MIB",
    "PIPELINE_BELOW_S",
    "PIPELINE_DEPTH",
    "PROGRESS_EVERY_S",
    "REFUSED_PAYLOAD_WAIT_S",
    "RESULT_OVERHEAD_BYTES",
    "SHUN_DROPPED_S",
    "SPOOL_SHARES_IN_ALL",
    "Action",
    "BadHash",
    "DropFile",
    "Event",
    "FileBad",
    "FileKept",
    "FileStoreFailed",
    "ForgetState",
    "Held",
    "Hello",
    "JobberCore",
    "KeepChunk",
    "Link",
    "Owner",
    "Partial",
    "PayloadGone",
    "Pin",
    "ProbeDisk",
    "Reset",
    "Resized",
    "Resume",
    "Screened",
    "Send",
    "SendSave",
    "Settings",
    "Spool",
    "Start",
    "StateSaved",
    "Stop",
    "Store",
    "StoreFailed",
    "Suspend",
    "Unspool",
    "Untrusted",
    "_batch",
    "_input_of",
    "_weight",
]


class JobberCore(Dealers, Holdings, Inputs, Runtimes, Saving, OwnerRule):
    """The jobber's decisions (see this module's theory of operation); its dealers'
    part is jobber._dealers, its holdings' jobber._holding, its input files'
    jobber._inputs, its runtimes' jobber._runtimes, its saved states' jobber._saving,
    its owner's word jobber._owner."""

    def __init__(
        self,
        settings: Settings,
        dealers: Iterable[str],
        now: float,
        *,
        pins: Mapping[str, str] | None = None,
        spooled: Iterable[tuple[str, p.Result]] = (),
        rng: random.Random | None = None,
    ) -> None:
        """`dealers`: from the command line (`endpoint` or `endpoint#key`, already parsed
        with protocol.dealer_address); `pins`: keys learnt before, by address; `spooled`:
        results on disk from an earlier run."""
        if settings.slots < 1:
            raise ValueError("slots must be at least 1")
        self.s = settings
        self._rng = rng or random.Random()
        self._pins = dict(pins or {})
        self._actions: list[Action] = []
        self.links: dict[str, Link] = {}
        self.owner_paused: set[str] = set()  # dealers the owner paused, known or not yet
        self._rr: deque[str] = deque()
        self._shunned: dict[str, float] = {}  # dropped dealer -> until when referrals skip it
        for text in dealers:
            self.add_dealer(text, depth=0)
        self.buffer: deque[Held] = deque()
        self.running: dict[str, Held] = {}  # slot key -> job (cancelled ones until collected)
        self._cancelled: set[str] = set()  # slot keys stopped at the dealer's word
        self.unacked: dict[str, dict[str, p.Result]] = {}  # dealer -> tag -> result
        self._unacked_bytes: dict[str, int] = {}
        self._owed: dict[str, int] = {}  # dealer -> output its held jobs may still write
        self._unspooled: dict[tuple[str, str], p.Result] = {}  # the disk refused these
        # finished results whose spool write is not done yet: not sent until it is, so a
        # result a dealer has seen is always on disk (or the disk refused it: see disk_failed)
        self._undurable: set[tuple[str, str]] = set()
        self.cached: tuple[str, ...] = ()  # payload hashes the shell holds (for HostFacts)
        # payload hash -> (its bytes, its compiled forms' bytes) in the shell's cache
        self.sizes: Mapping[str, tuple[int, int]] = {}
        # payloads taken with jobs and not yet in `sizes` (the shell is storing them)
        self._coming: dict[str, int] = {}
        # input files the shell's store holds whole: hash -> size, most recently used first
        self.files_held: dict[str, int] = {}
        self.partials: dict[str, Partial] = {}  # input files coming, a chunk at a time
        # input file started over -> the dealer to ask its chunk 0 of first (jobber._inputs)
        self.fetch_first: dict[str, str] = {}
        self._runtimes_init()
        self._saving_init()
        self.paused = ""  # why no job may start now ("" while they may): see `owner`
        self.fetch_paused = False  # the machine is wanted by its owner: ask for nothing
        self.suspended = False  # the slots' workers are stopped (a Suspend action went)
        self.suspended_at = 0.0  # when the slots were last suspended
        self.why_suspended = ""  # why, while they are
        # dealer -> why its payloads were last refused (unsigned: --trust)
        self.refused_payloads: dict[str, str] = {}
        self.stopping = False
        self.disk_trouble = ""  # why the data directory refuses writes, while it does
        self._probe_at = 0.0
        self.done = 0  # results produced by this run
        self.reached = False  # some dealer has answered us
        self._last_busy = now
        self._next_id = 1
        self._next_key = 0
        self._job_s = 0.0  # running mean of job wall time, for deadline-aware buffering
        self._summary_at = now
        self._summary: dict[str, int] = {}  # status -> jobs finished since the last summary
        self._repeats = Repeats(log)
        # an allocator's resource shares among the dealers (jobber._shares); None: none
        self.shares: Shares | None = None
        for dealer, result in spooled:
            self._hold_result(dealer, result)
            if dealer not in self.links:  # a referred dealer from an earlier run
                self.add_dealer(dealer, depth=1)
        if self.unacked:
            log.info("spool holds %d results from an earlier run", self.count_unacked())

    # --- queries -----------------------------------------------------------------

    def take_actions(self) -> list[Action]:
        out, self._actions = self._actions, []
        return out

    def count_unacked(self) -> int:
        return sum(len(r) for r in self.unacked.values())

    def holds_from(self, dealer: str) -> bool:
        return (
            any(h.dealer == dealer for h in self.buffer)
            or any(h.dealer == dealer for h in self.running.values())
            or bool(self.unacked.get(dealer))
            or any(d == dealer for d, _ in self.parked)
        )

    def holding(self, dealer: str) -> tuple[str, ...] | None:
        """Every tag from `dealer` still in our hands (see protocol.Bored.holding)."""
        tags = [h.spec.tag for h in self.buffer if h.dealer == dealer]
        tags += [
            h.spec.tag
            for k, h in self.running.items()
            if h.dealer == dealer and k not in self._cancelled
        ]
        tags += list(self.unacked.get(dealer, {}))
        tags += [tag for d, tag in self.parked if d == dealer]
        return tuple(tags) if len(tags) <= p.MAX_HOLDING else None

    def host_facts(self) -> p.HostFacts:
        """This machine as dealers should see it: what it is and what its owner allows,
        and the platform its sandbox runs native-NaN jobs for (replicas vote with their
        own platform's)."""
        s = self.s
        return p.HostFacts(
            s.cpus,
            s.memory_mb,
            s.slots,
            tuple(self.cached[: p.MAX_CACHED]),
            max_time_s=s.max_job_time_s,
            max_fuel=s.max_fuel,
            max_output_kb=self.max_output_kb(),
            platform=s.platform,
            nan_fuel=s.nan_fuel,
            input_mb=s.input_files_mb(),
            files=tuple(list(self.files_held)[: p.MAX_HELD_FILES]) if self.files_held else None,
        )

    def max_output_kb(self) -> int | None:
        """The owner's --max-output-kb, or less when one dealer's spool share could not
        hold a result of the wire's largest output: a job that may write more than the
        share is given back unrun (_take_jobs), so dealers are told not to send it."""
        s = self.s
        fits_kb = max(0, (s.spool_share_bytes - 4 * p.MAX_STR - RESULT_OVERHEAD_BYTES) // 1024)
        if fits_kb >= MAX_OUTPUT_KB:
            return s.max_output_kb
        return fits_kb if s.max_output_kb is None else min(s.max_output_kb, fits_kb)

    def hi_water(self) -> int:
        """Jobs to hold, running and buffered: one running per slot, and buffered as many as
        cover AHEAD_S of work at the mean job length seen (at least one per slot, at most
        MAX_BUFFER_PER_SLOT); the owner's `buffer` setting, when given, wins."""
        s = self.s
        if s.buffer is not None:
            return s.slots + s.buffer
        per_slot = 1
        if self._job_s > 0:
            per_slot = min(MAX_BUFFER_PER_SLOT, max(1, math.ceil(AHEAD_S / self._job_s)))
        return min(p.MAX_BATCH, s.slots * (1 + per_slot))

    @property
    def pipelined(self) -> bool:
        """Jobs are short enough to be queued in the slots' workers (PIPELINE_BELOW_S)."""
        return 0 < self._job_s < PIPELINE_BELOW_S

    def held_payloads(self) -> set[str]:
        """Payloads of jobs buffered or running: the cache must keep these."""
        in_hand = {h.spec.payload for h in (*self.buffer, *self.running.values())}
        return in_hand | self.runtimes_preparing()

    def idle_too_long(self, now: float) -> bool:
        """True once `max_idle_s` passed with nothing to run, deliver, wait for or prepare."""
        if self.running or self.buffer or self._delivering() or self.runtime_wants:
            self._last_busy = now
            return False
        return self.s.max_idle_s is not None and now - self._last_busy >= self.s.max_idle_s

    def idle_s(self, now: float) -> float:
        return now - self._last_busy

    def busy(self, now: float) -> None:
        """Count `now` as busy (the owner suspended the jobber: that is not idling)."""
        self._last_busy = now

    # --- events -------------------------------------------------------------------

    def received(
        self,
        dealer: str,
        msg: p.Message,
        now: float,
        unusable: Mapping[str, tuple[p.Status, str]] | None = None,
        screened: Iterable[Screened] = (),
    ) -> None:
        """A message from `dealer`. `screened`: what the shell found of a `jobs` message's
        payloads (unsigned, or bytes that do not hash to their name): their jobs are given
        back (`_unusable`). `unusable`: such payloads already decided on, with the status
        and reason their jobs are given back with."""
        link = self.links.get(dealer)
        if link is None:
            return
        if isinstance(msg, p.HelloReply):
            if msg.re == link.hello_id:
                self._hello_reply(link, msg, now)
            else:
                self._unasked(link, msg, now, "it answers no hello of ours")
            return
        why = self._unanswered(link, msg)
        if why:
            self._unasked(link, msg, now, why)
            return
        self.reached = True
        link.answered = True
        link.problem = ""
        if getattr(msg, "about", None) is not None:  # the dealer's word, shown as it is
            link.about = msg.about
        if getattr(msg, "account", None) is not None:
            link.account = msg.account
        if isinstance(msg, p.Jobs | p.RetryLater | p.Referral | p.Finished):
            link.answered_by(BORED, now)
        if isinstance(msg, p.Jobs):
            found = self._unusable(dealer, screened, now)
            self._take_jobs(link, msg, now, {**found, **(unusable or {})})
        elif isinstance(msg, p.RetryLater):
            link.ask_after = now + msg.seconds
            link.no_work = msg.reason or "it has no work for this machine now (no reason said)"
            if msg.more:  # work may still come from there: waiting for it is not idling
                self._last_busy = now
            if msg.reason and msg.reason != link.last_reason:
                link.last_reason = msg.reason
                log.info("dealer %s has no work for us: %s", link.address, msg.reason)
            log.debug("dealer %s: retry in %.1f s", link.address, msg.seconds)
            if msg.runtimes:
                self._runtimes_asked(link, msg.runtimes, now)
        elif isinstance(msg, p.Referral):
            link.ask_after = now + self.s.min_backoff_s
            link.no_work = "it has no work here; it referred this machine to other dealers"
            if link.depth < MAX_REFERRAL_DEPTH:
                self._referred(link, msg.dealers, now)
        elif isinstance(msg, p.Finished):
            # no more work there: ask again only after the longest backoff (a new batch
            # may start on the same address); results still go while it lingers
            link.ask_after = now + self.s.max_backoff_s
            link.no_work = "its task is finished"
            if not link.finished:
                log.info("dealer %s: its task is finished", link.address)
            link.finished = True
        elif isinstance(msg, p.AliveAck):
            link.answered_by(ALIVE, now)
            link.alive_every_s = min(p.ALIVE_INTERVAL_S, msg.lease_s / 4)
            if msg.cancel:
                self._cancel(link.address, msg.cancel)
        elif isinstance(msg, p.Ack):
            link.answered_by(RESULTS, now)
            self._acked(link.address, msg, now)
        elif isinstance(msg, p.Chunk):
            self._chunk(link, msg, now)
        elif isinstance(msg, p.Saved):
            self._saved_reply(link, msg, now)
        elif isinstance(msg, p.Error) and msg.re == link.req_id(SAVE):
            self._save_error(link, msg, now)
        elif isinstance(msg, p.Error) and self._fetch_lane(link, msg.re) is not None:
            log.log(
                logging.DEBUG if msg.code is p.ErrorCode.BUSY else logging.WARNING,
                "dealer %s refused fetch %d: %s: %s",
                link.address,
                msg.re,
                msg.code.value,
                msg.text,
            )
            self._fetch_error(link, msg, now)
        elif isinstance(msg, p.Error):
            log.warning(
                "dealer %s refused request %d: %s: %s",
                link.address,
                msg.re,
                msg.code.value,
                msg.text,
            )
            if msg.re in (link.bored_id, link.results_id):
                self._failed(link, now, f"error {msg.code.value}")

    # --- what the shell saw ----------------------------------------------------------

    def handle(self, event: Event, now: float) -> None:
        """An event the shell saw (jobber._actions): the core decides what follows."""
        if isinstance(event, Owner):
            self._owner(event, now)
        elif isinstance(event, StoreFailed):
            # a payload the disk would not keep: its jobs cannot run here, nobody's fault;
            # the disk is probed until it takes writes again
            self.disk_failed(f"cannot store a payload: {event.why}")
            self.payload_lost(
                event.sha, p.Status.ABANDONED, "the jobber's disk is full or read-only"
            )
        elif isinstance(event, PayloadGone):
            # evicted since the ask that listed it (or never held): given back unrun,
            # nobody's fault; the next ask lists the cache as it is, so it comes again
            h = self.running.get(event.key)
            why = f"{event.what} {event.payload[:12]} is no longer held here"
            result = p.Result(h.spec.tag if h else "?", p.Status.ABANDONED, b"", 0, why)
            self.job_done(event.key, result, 0.0, now)
        elif isinstance(event, FileKept | FileBad | FileStoreFailed):
            self._files_event(event, now)
        elif isinstance(event, RuntimeEvent):
            self._runtime_event(event, now)
        elif isinstance(event, StateSaved):
            self._state_saved(event, now)
        elif isinstance(event, Resized):
            self.s = replace(
                self.s,
                slots=event.slots,
                memory_mb=event.memory_mb,
                cache_bytes=event.cache_bytes,
            )
        else:  # pragma: no cover - an event the core does not know is our bug
            raise TypeError(f"unknown event {event!r}")

    def tick(self, now: float) -> None:
        """One turn: spool again, start jobs, time out requests, send results, alive, ask."""
        if self.disk_trouble:
            self._retry_spool(now)
        if not self.paused and not self.stopping:
            self._start_jobs(now)
        self._check_timeouts(now)
        self._probe_keys(now)
        self._send_results(now)
        self._send_saves(now)
        self._send_alive(now)
        if not self.stopping:
            self._give_up_waiting(now)
            self._send_fetches(now)
        if not (self.stopping or self.fetch_paused):
            self._fetch(now)
        self._say_progress(now)

    # --- jobs ---------------------------------------------------------------------

    def _say_progress(self, now: float) -> None:
        """A line a minute while jobs finish, so a lender sees the machine at work."""
        if now - self._summary_at < PROGRESS_EVERY_S:
            return
        if self._summary:
            n = sum(self._summary.values())
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self._summary.items()))
            log.info("%d jobs finished in the last %.0f s (%s)", n, now - self._summary_at, kinds)
        self._summary_at, self._summary = now, {}
