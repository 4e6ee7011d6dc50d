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
``received``           a decoded message on a dealer's work or key port
``contact_failed``     a send that could not go (queue full, host unknown) or
                       ZeroMQ saying the connection is refused or the key is wrong
``job_done``           a slot's outcome (or a job the shell could not start)
``spooled``            results are on disk now (the shell writes them off the loop)
``disk_failed``        a spool write or the disk probe failed; ``disk_ok`` after
``tick``               every turn of the shell's loop
=====================  ==========================================================

and carries out the *actions* the core queues, in order (``take_actions``):
``Send`` and ``Hello`` (messages to a dealer's work or key port), ``Reset``
(close a dealer's sockets: what was in flight on them is gone), ``Start`` and
``Stop`` (slots), ``Spool`` and ``Unspool`` (the results on disk), ``Store``
(payloads of jobs taken, into the cache), ``Pin`` (a dealer's key learnt on
first use) and ``ProbeDisk``.

The rules, per turn (``tick``):

1. while the disk refuses writes, results kept in memory are spooled again and
   the disk is probed; no work is asked for meanwhile;
2. buffered jobs start on free slots (unless paused), the owner's limits
   checked first: a job asking for more is given back unrun (ABANDONED);
3. requests unanswered after ``request_timeout_s`` are failed contacts: the
   dealer is backed off (net._backoff) and its sockets reset (Lazy Pirate);
4. each dealer with results waiting gets one ``results`` request at a time;
5. each dealer whose work is held hears ``alive`` every ``alive_every_s``;
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

Under an allocator (``set_projects``) the jobber asks only the dealers its
instructions list, and the dealers they referred it to (at any depth) only while
the listed dealer at the root of that referral chain (``Link.via``) is listed: a
project removed, its referred dealers are asked for nothing more at once, and
forgotten as soon as they hold nothing of ours.

A reply counts only as the answer to a request out to that dealer (its ``re``).
A ``jobs`` must answer the ``bored`` out, carry at most its ``want`` jobs,
payloads only for those jobs, and for each job a payload sent with it or held
(or listed in that ask's ``host.cached``): anything else is refused whole,
before the shell stores anything of it (payloads of jobs taken come back as a
``Store`` action), logged once with a count, and is a failed contact. Other
replies answering nothing asked change nothing.

Whatever a dealer sends, what it makes the jobber hold is counted before it
is taken (``_take_jobs``), per dealer and in all: the jobs' inputs in hand
within ``input_budget()`` (slots x memory_mb by default), the payloads of jobs
in hand within ``cache_bytes`` and MAX_PAYLOADS_PER_SLOT, and each dealer's
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
from dataclasses import dataclass

import protocol as p
from jobber._quiet import Repeats
from jobber._shares import Shares
from net._backoff import MAX_BACKOFF_S, MIN_BACKOFF_S, Backoff

log = logging.getLogger(__name__)

MAX_RESULTS_PER_MESSAGE = 256
# A results message stays under this many bytes unless it carries one result:
# a dealer takes frames of 1 MiB plus one output (docs/protocol.md).
MAX_RESULTS_BYTES = 768 * 1024
MAX_DEALERS = 32  # dealers known at once, command line included
MAX_REFERRAL_DEPTH = 3  # a referral from a referred dealer is depth 2, and so on
DROP_REFERRED_AFTER = 5  # failed contacts in a row before a referred dealer is forgotten
DROP_UNREACHED_AFTER = 2  # ... when it never answered at all (a dead or bogus referral)
# a dropped dealer is not taken back from referrals this long: a dealer that keeps
# referring to dead ones costs two failed contacts per dead one per ten minutes
SHUN_DROPPED_S = 600.0
MAX_SHUNNED = 1024
FETCH_PATIENCE_S = 1.0  # an ask to a live dealer unanswered this long lets others be asked
PROGRESS_EVERY_S = 60.0  # a summary line of finished jobs this often, at the default level
# Buffered work per slot, in time: more than a round trip to a dealer and a spool
# fsync, so that a slot never waits for either; for jobs of a second or more this
# is one job per slot, for jobs of a millisecond a few hundred
AHEAD_S = 0.25
MAX_BUFFER_PER_SLOT = 256
# Jobs shorter than this are also queued in the slots' workers, PIPELINE_DEPTH per
# slot, so that a worker goes from one to the next without waiting for this loop's
# turn (a cancelled queued job then runs for nothing: a few milliseconds at most)
PIPELINE_BELOW_S = 0.02
PIPELINE_DEPTH = 16
# A deep buffer is for jobs that share their payloads: past this many distinct
# payloads per slot in hand nothing more is asked for, so a dealer sending a new
# payload with every job cannot make the jobber keep more than a few beyond its cache
MAX_PAYLOADS_PER_SLOT = 2
DISK_PROBE_S = 1.0  # while the disk refuses writes, try it again this often
REFUSED_PAYLOAD_WAIT_S = 600.0  # a dealer whose payloads we cannot run: ask again this late
MIB = 1024 * 1024
# Results held in the spool for all dealers together, in shares of one dealer's
# (`spool_share_bytes`): a few dealers may each fill theirs while one does not ack,
# but dealers made up by referrals (up to MAX_DEALERS) cannot fill MAX_DEALERS shares
SPOOL_SHARES_IN_ALL = 4
# What a held job's result may add to the spool beyond its output: its tag and a
# detail of at most MAX_STR code points (4 bytes each at most) and the record's framing,
# as _weight counts a result
RESULT_OVERHEAD_BYTES = 4 * p.MAX_STR + 64
# What a job's tag and args may take in memory beyond their code points' bytes (a
# Python str of non-ASCII text takes up to 4 bytes per code point) and per object
INPUT_OVERHEAD_BYTES = 64
MAX_OUTPUT_KB = 32 * 1024  # the wire's cap on one result's output (docs/protocol.md, Caps)


# --- actions: what the shell carries out --------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    dealer: str
    msg: p.Message


@dataclass(frozen=True, slots=True)
class Hello:
    """Ask the dealer's plaintext port for its key (trust on first use, or a check)."""

    dealer: str
    msg: p.Hello


@dataclass(frozen=True, slots=True)
class Reset:
    """Close the dealer's sockets; whatever was in flight on them is lost."""

    dealer: str


@dataclass(frozen=True, slots=True)
class Start:
    key: str  # the slot key: the shell reports the outcome under it
    dealer: str
    spec: p.JobSpec
    depth: int = 1  # jobs a slot may hold, running and queued behind (sandbox.Slots.start)


@dataclass(frozen=True, slots=True)
class Stop:
    key: str


@dataclass(frozen=True, slots=True)
class Spool:
    dealer: str
    result: p.Result


@dataclass(frozen=True, slots=True)
class Unspool:
    dealer: str
    tag: str


@dataclass(frozen=True, slots=True)
class Pin:
    dealer: str
    key: str


@dataclass(frozen=True, slots=True)
class ProbeDisk:
    pass


@dataclass(frozen=True, slots=True)
class Store:
    """Keep these payloads (hash, bytes) in the cache: jobs just taken need them. Only
    payloads of jobs taken are ever stored (nothing of a refused `jobs` is)."""

    dealer: str
    payloads: tuple[tuple[str, bytes], ...]


Action = Send | Hello | Reset | Start | Stop | Spool | Unspool | Pin | ProbeDisk | Store


# --- state --------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What the core is told once: this machine, its owner's limits, the timing rules."""

    name: str
    slots: int
    cpus: int
    memory_mb: int  # per job
    buffer: int | None = None  # jobs held beyond running ones; default: one per slot
    max_idle_s: float | None = None
    min_backoff_s: float = MIN_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    request_timeout_s: float = 10.0
    max_job_time_s: float = 3600.0
    max_fuel: int | None = None
    max_output_kb: int | None = None
    # results one dealer may leave unacknowledged before it is asked for no more work
    spool_share_bytes: int = 256 * 1024 * 1024
    # The most a dealer can make the jobber hold, decided before a `jobs` is taken
    # (docs/jobber.md, "What a dealer can make this machine hold"). None: derived.
    # Jobs' inputs (stdin, args, tags) in hand, buffered and running, in all dealers;
    # default slots x memory_mb MiB: as much as the running jobs themselves may use
    input_bytes: int | None = None
    # payload bytes (and compiled forms known) of the jobs in hand, which the cache
    # keeps whatever its size: at most this (the shell: --cache-mb); None: unbounded
    cache_bytes: int | None = None
    # results unacknowledged plus what held jobs may write, in all dealers; default
    # SPOOL_SHARES_IN_ALL shares
    spool_bytes: int | None = None

    def input_budget(self) -> int:
        if self.input_bytes is not None:
            return self.input_bytes
        return self.slots * self.memory_mb * MIB

    def spool_budget(self) -> int:
        if self.spool_bytes is not None:
            return self.spool_bytes
        return SPOOL_SHARES_IN_ALL * self.spool_share_bytes


@dataclass
class Link:
    """One dealer as this jobber sees it."""

    address: str  # the endpoint, without the key
    pinned: bool  # given on the command line: never dropped
    depth: int
    backoff: Backoff
    key: str | None = None  # the dealer's public key, hex; None until known
    key_from_hello: bool = False  # learnt on first use (so worth re-checking on failures)
    check_key: bool = False  # ask hello before the next request: has the key changed?
    refused: str = ""  # why this dealer is never contacted (its key changed)
    answered: bool = False  # it has answered us at least once (in this run)
    finished: bool = False  # it said its task is finished
    problem: str = ""  # what the transport last said about connecting
    hello_id: int | None = None
    hello_at: float = 0.0
    bored_id: int | None = None
    bored_at: float = 0.0
    bored_want: int = 0  # the `want` of the ask out: a `jobs` carries no more
    bored_cached: frozenset[str] = frozenset()  # payloads it said it holds (host.cached)
    unasked: int = 0  # replies it sent that answered nothing we asked (refused, counted)
    input_hint: int = 0  # bytes of input its last jobs brought (to ask for what fits)
    results_id: int | None = None
    results_at: float = 0.0
    results_tags: tuple[str, ...] = ()
    ask_after: float = 0.0  # "retry later": no bored before this (results still go)
    alive_id: int | None = None
    alive_at: float = 0.0  # when the last `alive` was sent
    alive_every_s: float = p.ALIVE_INTERVAL_S  # shortened if the dealer's lease is short
    last_reason: str = ""  # the last "retry later" reason logged (each is logged once)
    flooded: bool = False  # its unacknowledged results passed its spool share (logged once)
    holding_at: float = float("-inf")  # when `holding` last went to it (bored or alive)
    output_hint: int = 0  # bytes of output its last jobs may write (their output limit)
    # the referral that gave `key` (the referring dealer), "" if it came from elsewhere
    key_referred_by: str = ""
    key_checked: bool = False  # its key was checked against its plaintext port in this run
    # keys referrals named for this address and not used: key -> referring dealer
    claims: dict[str, str] | None = None
    via: str | None = None  # the depth-0 dealer whose referral chain led here
    retired: bool = False  # referred by a project no longer listed: asked for nothing more

    def usable(self) -> bool:
        return not self.refused and self.key is not None and not self.check_key

    def may_ask(self, now: float) -> bool:
        return (
            self.bored_id is None
            and not self.refused
            and not self.retired
            and now >= self.ask_after
            and self.backoff.ready(now)
        )

    def forget_requests(self) -> None:
        self.bored_id = self.results_id = self.hello_id = self.alive_id = None
        self.results_tags = ()
        self.bored_want, self.bored_cached = 0, frozenset()


@dataclass
class Held:
    """A job in our hands: buffered until `key` is set, then running."""

    dealer: str
    spec: p.JobSpec
    deadline: float  # on the core's clock
    key: str = ""
    started: float = 0.0
    depth: int = 1  # the slot pipeline's depth it was started with

    @property
    def may_write(self) -> int:
        """The most output bytes it may leave in the spool."""
        return self.spec.limits.output_kb * 1024

    @property
    def may_hold(self) -> int:
        """The most its result may take in the spool (its output, tag and detail)."""
        return self.may_write + 4 * len(self.spec.tag) + RESULT_OVERHEAD_BYTES

    @property
    def input(self) -> int:
        """About the most memory its stdin, args and tag take."""
        return _input_of(self.spec)


class JobberCore:
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
        self.paused = ""  # why no job may start now ("" while they may); set by the shell
        self.fetch_paused = False  # the machine is wanted by its owner: ask for nothing
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
        return tuple(tags) if len(tags) <= p.MAX_HOLDING else None

    def host_facts(self) -> p.HostFacts:
        """This machine as dealers should see it: what it is and what its owner allows,
        and the platform its sandbox runs native-NaN jobs for (replicas vote with their
        own platform's)."""
        from sandbox import PLATFORM  # a constant; imported here to keep the core light

        s = self.s
        return p.HostFacts(
            s.cpus,
            s.memory_mb,
            s.slots,
            tuple(self.cached[: p.MAX_CACHED]),
            max_time_s=s.max_job_time_s,
            max_fuel=s.max_fuel,
            max_output_kb=self.max_output_kb(),
            platform=PLATFORM,
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
        return {h.spec.payload for h in self.buffer} | {
            h.spec.payload for h in self.running.values()
        }

    def idle_too_long(self, now: float) -> bool:
        """True once `max_idle_s` passed with nothing to run, deliver or wait for."""
        if self.running or self.buffer or self._delivering():
            self._last_busy = now
            return False
        return self.s.max_idle_s is not None and now - self._last_busy >= self.s.max_idle_s

    def idle_s(self, now: float) -> float:
        return now - self._last_busy

    def busy(self, now: float) -> None:
        """Count `now` as busy (the owner suspended the jobber: that is not idling)."""
        self._last_busy = now

    def wake_at(self, now: float) -> float:
        """The earliest time after `now` at which a backoff or retry-later wait ends."""
        wake = float("inf")
        for link in self.links.values():
            w = max(link.backoff.until, link.ask_after)
            if link.bored_id is None and w > now:
                wake = min(wake, w)
        return wake

    # --- dealers ------------------------------------------------------------------

    def add_dealer(
        self, text: str, depth: int, *, via: str | None = None, referrer: str = ""
    ) -> None:
        """Know the dealer `text` (`endpoint` or `endpoint#key`); depth 0: from its owner (the
        command line, an allocator's instructions). `referrer`: the dealer whose referral
        named it, `via`: the depth-0 dealer at the root of that referral chain."""
        addr, key = p.split_key(text)
        link = self.links.get(addr)
        if link is None and key is not None:  # the same dealer under another spelling
            twin = next((x for x in self.links.values() if x.key == key), None)
            if twin is not None:
                log.debug("dealer %s is %s (the same key): not added twice", addr, twin.address)
                return
        if link is None:
            if len(self.links) >= MAX_DEALERS and not (depth == 0 and self._evict_referred()):
                return
            backoff = Backoff(self.s.min_backoff_s, self.s.max_backoff_s, rng=self._rng)
            link = self.links[addr] = Link(addr, depth == 0, depth, backoff, via=via)
            self._rr.append(addr)
            if depth:
                log.info("dealer %s added by referral (depth %d)", addr, depth)
            pinned = self._pins.get(addr)
            if pinned is not None and (key is None or depth > 0):
                link.key, link.key_from_hello = pinned, True
        elif depth == 0 and not link.pinned:  # the owner names a dealer known by referral
            link.pinned, link.depth, link.via, link.retired = True, 0, None, False
            if link.key_referred_by and key != link.key:  # a referral's key: not the owner's
                self._claim(link, link.key, link.key_referred_by)
                # the owner's key (set below), else the one pinned, else learnt on first use
                link.key = self._pins.get(addr) if key is None else None
                link.key_referred_by, link.key_from_hello = "", link.key is not None
                link.forget_requests()
                self._actions.append(Reset(addr))
        elif depth > 0 and link.depth > 0 and link.retired and via is not None:
            link.via, link.retired = via, False  # referred again, by a listed project
        if key is None or key == link.key:
            return
        if depth > 0:
            # a referral's key is for an entry that referral made, and only while the
            # jobber knows no key for the address
            if link.key is None and not link.pinned:
                link.key, link.key_referred_by = key, referrer or "a referral"
            else:
                self._claim(link, key, referrer or "a referral")
            return
        if link.key is None:
            link.key = key
            if self._pins.get(addr) not in (None, key):
                log.warning("dealer %s: using the key given, not the one pinned before", addr)
            self._pin(addr, key)

    def _claim(self, link: Link, key: str, referrer: str) -> None:
        """A referral named `key` for `link`, and it is not used: a key mismatch if the jobber
        holds another key, else noted until the dealer's own key is learnt."""
        if link.claims is None:
            link.claims = {}
        if key in link.claims or len(link.claims) >= 4:  # said once; a few kept
            return
        link.claims[key] = referrer
        if link.key is not None:
            log.warning(
                "dealer %s: key mismatch: %s referred to it with key %s, but it is %s (%s); "
                "the referral's key is not used",
                link.address,
                referrer,
                key,
                link.key,
                "learnt from it" if link.key_from_hello else "given by the owner",
            )
        else:
            log.info(
                "dealer %s: %s referred to it with key %s; its key is learnt from it, not "
                "from a referral, since its owner named it",
                link.address,
                referrer,
                key,
            )

    def _evict_referred(self) -> bool:
        """Room for a dealer the owner names: a referred one that holds nothing goes."""
        for link in self.links.values():
            if link.depth > 0 and not self.holds_from(link.address):
                log.info("dealer %s dropped: room for a dealer named by the owner", link.address)
                self._drop(link, float("-inf"))  # not shunned: it did nothing wrong
                return True
        return False

    def _pin(self, addr: str, key: str) -> None:
        self._pins[addr] = key
        self._actions.append(Pin(addr, key))

    def _drop(self, link: Link, now: float) -> None:
        self._shunned[link.address] = now + SHUN_DROPPED_S
        if len(self._shunned) > MAX_SHUNNED:
            del self._shunned[min(self._shunned, key=self._shunned.__getitem__)]
        del self.links[link.address]
        self._rr.remove(link.address)
        self._actions.append(Reset(link.address))

    # --- events -------------------------------------------------------------------

    def stop(self, now: float) -> None:
        """Wind down: buffered jobs are given back unstarted, running ones may finish,
        no more work is asked for; results are still delivered."""
        if self.stopping:
            return
        self.stopping = True
        log.info(
            "stopping: %d running, %d not started, %d results to deliver",
            len(self.running),
            len(self.buffer),
            self.count_unacked(),
        )
        while self.buffer:
            h = self.buffer.popleft()
            self._finish(
                h,
                p.Result(
                    h.spec.tag, p.Status.ABANDONED, b"", 0, "jobber stopped before starting it"
                ),
            )

    def job_done(self, key: str, result: p.Result, wall_s: float, now: float) -> None:
        """A slot finished the job started as `key` (or it could not be started)."""
        h = self.running.pop(key, None)
        if key in self._cancelled:  # stopped because the dealer settled it elsewhere
            self._cancelled.discard(key)
            return
        if h is None:
            log.warning("slot reported unknown job %s", key)
            return
        # the slot's own clock is coarse (10 ms ticks) and leaves out the pipe to the
        # worker: the time from start to outcome on ours is what buffering must cover
        took = max(wall_s, (now - h.started) / h.depth, 1e-6)
        if result.status is not p.Status.ABANDONED:  # given back unrun: no job's length
            self._job_s = took if not self._job_s else 0.8 * self._job_s + 0.2 * took
        if self.shares is not None:  # what the job ran, compiling left out (Outcome.wall_s)
            self.shares.charge(h.dealer, wall_s if wall_s > 0 else took, self.eligible(now))
        self._finish(h, result)
        link = self.links.get(h.dealer)
        if result.status is p.Status.ABANDONED and result.detail.startswith("refused") and link:
            # this machine cannot run that dealer's payload (compiling it needs more than
            # the owner allows): the dealer sends the job elsewhere; ask it less
            if link.ask_after < now + REFUSED_PAYLOAD_WAIT_S:
                log.warning("job %s from %s given back: %s", result.tag, h.dealer, result.detail)
            link.ask_after = max(link.ask_after, now + REFUSED_PAYLOAD_WAIT_S)
        log.debug(
            "job %s from %s: %s, %d fuel, %.3f s",
            result.tag,
            h.dealer,
            result.status.value,
            result.fuel,
            wall_s,
        )

    def disk_failed(self, why: str, dealer: str | None = None, tag: str | None = None) -> None:
        """A write to the data directory failed; `dealer`/`tag`: the result not spooled."""
        if dealer is not None and tag is not None and tag in self.unacked.get(dealer, {}):
            self._unspooled[(dealer, tag)] = self.unacked[dealer][tag]
            self._undurable.discard((dealer, tag))  # delivered from memory meanwhile
        if not self.disk_trouble:
            log.warning(
                "%s; keeping finished results in memory and asking for no work until "
                "the disk takes them again",
                why,
            )
        self.disk_trouble = why

    def disk_ok(self) -> None:
        """The disk probe succeeded."""
        if self.disk_trouble and not self._unspooled:
            log.warning("the disk takes writes again: asking for work again")
            self.disk_trouble = ""

    def contact_failed(self, dealer: str, now: float, why: str, problem: str = "") -> None:
        """A message could not go to `dealer`, or the transport says it cannot be reached
        (refused, our key refused): a failed contact if a request is out, else noted."""
        link = self.links.get(dealer)
        if link is None:
            return
        if problem:
            link.problem = problem
        out = (link.bored_id, link.results_id, link.hello_id, link.alive_id)
        if any(x is not None for x in out):
            self._failed(link, now, why)

    def problem(self, dealer: str, text: str) -> None:
        """What the transport says about a dealer's connection ("" once it connects)."""
        link = self.links.get(dealer)
        if link is not None:
            link.problem = text

    def received(
        self,
        dealer: str,
        msg: p.Message,
        now: float,
        unusable: Mapping[str, tuple[p.Status, str]] | None = None,
    ) -> None:
        """A message from `dealer`. `unusable`: payloads of a `jobs` message the shell could
        not keep or may not run, with the status and reason their jobs are given back with."""
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
        if isinstance(msg, p.Jobs | p.RetryLater | p.Referral | p.Finished):
            link.bored_id = None
            link.bored_want, link.bored_cached = 0, frozenset()
        if isinstance(msg, p.Jobs):
            link.backoff.succeeded()
            self._take_jobs(link, msg, now, unusable or {})
        elif isinstance(msg, p.RetryLater):
            link.backoff.succeeded()
            link.ask_after = now + msg.seconds
            if msg.more:  # work may still come from there: waiting for it is not idling
                self._last_busy = now
            if msg.reason and msg.reason != link.last_reason:
                link.last_reason = msg.reason
                log.info("dealer %s has no work for us: %s", link.address, msg.reason)
            log.debug("dealer %s: retry in %.1f s", link.address, msg.seconds)
        elif isinstance(msg, p.Referral):
            link.backoff.succeeded()
            link.ask_after = now + self.s.min_backoff_s
            if link.depth < MAX_REFERRAL_DEPTH:
                self._referred(link, msg.dealers, now)
        elif isinstance(msg, p.Finished):
            link.backoff.succeeded()
            # no more work there: ask again only after the longest backoff (a new batch
            # may start on the same address); results still go while it lingers
            link.ask_after = now + self.s.max_backoff_s
            if not link.finished:
                log.info("dealer %s: its task is finished", link.address)
            link.finished = True
        elif isinstance(msg, p.AliveAck):
            link.alive_id = None
            link.backoff.succeeded()
            link.alive_every_s = min(p.ALIVE_INTERVAL_S, msg.lease_s / 4)
            if msg.cancel:
                self._cancel(link.address, msg.cancel)
        elif isinstance(msg, p.Ack):
            link.results_id = None
            link.results_tags = ()
            link.backoff.succeeded()
            self._acked(link.address, msg, now)
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

    def _unanswered(self, link: Link, msg: p.Message) -> str:
        """Why `msg` is no answer to a request of ours out to `link` ("" if it is one).
        A `jobs` must also carry what that ask asked for and nothing else: at most its
        `want` jobs, payloads only for those jobs, and for each job a payload sent with
        it or one we hold (or said we held: it may have been evicted since)."""
        re_ = getattr(msg, "re", None)
        if isinstance(msg, p.Jobs | p.RetryLater | p.Referral | p.Finished):
            if link.bored_id is None or re_ != link.bored_id:
                return (
                    "it answers no ask of ours"
                    if link.bored_id is None
                    else (f"it answers ask {re_}, not the ask out ({link.bored_id})")
                )
        elif isinstance(msg, p.Ack):
            if link.results_id is None or re_ != link.results_id:
                return "it acknowledges no results we sent"
        elif isinstance(msg, p.AliveAck):
            if link.alive_id is None or re_ != link.alive_id:
                return "it answers no alive of ours"
        elif isinstance(msg, p.Error):
            if re_ is None or re_ not in (link.bored_id, link.results_id, link.alive_id):
                return "an error about no request of ours"
        else:
            return f"a {msg.TYPE} is no reply a jobber asks for"
        if not isinstance(msg, p.Jobs):
            return ""
        if len(msg.jobs) > link.bored_want:
            return f"{len(msg.jobs)} jobs for an ask of {link.bored_want}"
        named = {spec.payload for spec in msg.jobs}
        extra = set(msg.payloads) - named
        if extra:
            return f"{len(extra)} payloads no job of it names"
        known = link.bored_cached | set(self.sizes) | set(self.cached)
        missing = named - set(msg.payloads) - known
        if missing:
            return f"jobs of payload {min(missing)[:12]}, neither sent nor held here"
        return ""

    def _unasked(self, link: Link, msg: p.Message, now: float, why: str) -> None:
        """A reply to nothing we asked (or a `jobs` carrying more than asked): it changes
        nothing; logged once with a count. A `jobs` is refused whole (nothing of it is
        kept: the dealer learns from the next `holding` that we hold none of it) and is a
        failed contact: the dealer is backed off and its sockets, with whatever else it
        queued to us, closed."""
        link.unasked += 1
        self._repeats.warn(
            now,
            f"unasked {link.address}",
            lambda: (
                f"dealer {link.address} sent a {msg.TYPE} we did not ask for ({why}): "
                f"refused, {link.unasked} such so far"
            ),
        )
        if isinstance(msg, p.Jobs):
            self._failed(link, now, f"an unasked {msg.TYPE} refused")

    def tick(self, now: float) -> None:
        """One turn: spool again, start jobs, time out requests, send results, alive, ask."""
        if self.disk_trouble:
            self._retry_spool(now)
        if not self.paused and not self.stopping:
            self._start_jobs(now)
        self._check_timeouts(now)
        self._send_results(now)
        self._send_alive(now)
        if not (self.stopping or self.fetch_paused):
            self._fetch(now)
        self._say_progress(now)

    # --- jobs ---------------------------------------------------------------------

    def _take_jobs(
        self, link: Link, msg: p.Jobs, now: float, unusable: Mapping[str, tuple[p.Status, str]]
    ) -> None:
        """Take the jobs of a `jobs` that answers our ask, each only if what it makes us
        hold fits the owner's limits (Settings: input_budget, cache_bytes, the spool's
        share and spool_budget) with everything held already; the others are given back
        unrun (abandoned: the dealer reissues them at once), or, when even that result
        would not fit the dealer's spool share, dropped (its next `holding` says so)."""
        s = self.s
        host = self.host_facts()
        inputs = sum(h.input for h in self._in_hand())
        pinned = self.held_payloads()
        cache = sum(self._payload_bytes(sha) for sha in pinned)
        spool = self._spool_in_all()
        mine = self._spool_of(link.address)
        refused = unfit = dropped = never = 0
        for spec in msg.jobs:
            h = Held(link.address, spec, now + spec.deadline_s)
            link.output_hint = h.may_write
            link.input_hint = h.input
            bad = unusable.get(spec.payload)
            why = None if bad is None else bad[1]
            too_much = host.refuses(spec.limits)
            owner = why is None and too_much is not None
            if owner:  # the owner's limits win, no fault
                log.warning("job %s from %s asks for %s: refused", spec.tag, h.dealer, too_much)
                why = f"refused: it asks for {too_much}"
            new_payload = 0
            if spec.payload not in pinned:
                wasm = msg.payloads.get(spec.payload)
                new_payload = self._payload_bytes(spec.payload, wasm)
            if why is None and inputs + h.input > s.input_budget():
                why = (
                    f"refused: its input ({h.input:,} bytes) does not fit what this jobber "
                    f"holds ({s.input_budget():,} bytes of job input in hand at most)"
                )
            elif (
                why is None
                and s.cache_bytes is not None
                and (new_payload and cache + new_payload > s.cache_bytes)
            ):
                why = (
                    f"refused: its payload ({new_payload:,} bytes) does not fit the cache "
                    f"({s.cache_bytes:,} bytes, {cache:,} in use)"
                )
            elif why is None and new_payload and len(pinned) >= self._max_payloads():
                why = f"refused: jobs of {len(pinned)} payloads in hand already"
            elif why is None and (
                mine + h.may_hold > s.spool_share_bytes or spool + h.may_hold > s.spool_budget()
            ):
                why = (
                    f"refused: its result may take {h.may_hold:,} bytes; the spool holds "
                    f"{s.spool_share_bytes:,} per dealer, {s.spool_budget():,} in all"
                )
            if why is None:
                self._owe(h, +1)
                self.buffer.append(h)
                inputs += h.input
                mine += h.may_hold
                spool += h.may_hold
                if spec.payload not in pinned:
                    pinned.add(spec.payload)
                    cache += new_payload
                    self._coming[spec.payload] = new_payload
                continue
            status = p.Status.ABANDONED if bad is None else bad[0]
            result = p.Result(spec.tag, status, b"", 0, why[: p.MAX_STR])
            weight = _weight(result)
            if mine + weight > s.spool_share_bytes or spool + weight > s.spool_budget():
                dropped += 1  # not even its refusal fits: the next `holding` says it
                continue
            mine += weight
            spool += weight
            self._owe(h, +1)
            self._finish(h, result)
            if bad is not None:
                refused += status is p.Status.ABANDONED
            elif owner:
                unfit += 1
            else:
                unfit += 1
                # alone bigger than what the owner allows: it can never be taken here
                never += (
                    h.input > s.input_budget()
                    or (s.cache_bytes is not None and new_payload > s.cache_bytes)
                    or h.may_hold > min(s.spool_share_bytes, s.spool_budget())
                )
        if (refused or never) and not self.disk_trouble:  # jobs we will not run: ask less
            link.ask_after = max(link.ask_after, now + REFUSED_PAYLOAD_WAIT_S)
        elif unfit or dropped:  # they may fit once what is held is done: not every turn
            link.ask_after = max(link.ask_after, now + self.s.min_backoff_s)
        taken = {h.spec.payload for h in self.buffer if h.dealer == link.address}
        keep = tuple((sha, wasm) for sha, wasm in msg.payloads.items() if sha in taken)
        if keep:
            self._actions.append(Store(link.address, keep))
        if unfit or dropped:
            self._repeats.warn(
                now,
                f"unfit {link.address}",
                lambda: (
                    f"dealer {link.address}: {unfit + dropped} of {len(msg.jobs)} jobs "
                    "given back unrun: they do not fit the owner's limits beside what is "
                    "held (docs/jobber.md, 'What a dealer can make this machine hold')"
                ),
            )
        if msg.jobs:
            self._last_busy = now
            log.debug("%d jobs from %s", len(msg.jobs), link.address)

    def payload_lost(self, sha: str, status: p.Status, why: str) -> None:
        """Payload `sha` could not be kept (a full disk): its buffered jobs go back unrun."""
        kept: deque[Held] = deque()
        for h in self.buffer:
            if h.spec.payload == sha:
                self._finish(h, p.Result(h.spec.tag, status, b"", 0, why[: p.MAX_STR]))
            else:
                kept.append(h)
        self.buffer = kept
        self._coming.pop(sha, None)

    def _in_hand(self) -> list[Held]:
        """Jobs buffered or running (those cancelled too, until their slot ends them)."""
        return [*self.buffer, *self.running.values()]

    def _max_payloads(self) -> int:
        return MAX_PAYLOADS_PER_SLOT * self.s.slots

    def _payload_bytes(self, sha: str, wasm: bytes | None = None) -> int:
        """What payload `sha` takes in the cache: its bytes and compiled forms as the
        shell last saw them, else what was sent (its compiled form counts once built)."""
        wasm_bytes, compiled = self.sizes.get(sha, (0, 0))
        sent = len(wasm) if wasm is not None else self._coming.get(sha, 0)
        return max(wasm_bytes + compiled, sent)

    def _spool_of(self, dealer: str) -> int:
        """Results of `dealer` unacknowledged, and what its jobs in hand may add."""
        held = sum(h.may_hold for h in self._in_hand() if h.dealer == dealer)
        return self._unacked_bytes.get(dealer, 0) + held

    def _spool_in_all(self) -> int:
        held = sum(h.may_hold for h in self._in_hand())
        return sum(self._unacked_bytes.values()) + held

    def cache_updated(self, sizes: Mapping[str, tuple[int, int]]) -> None:
        """The shell's cache as it is now: payload hash -> (bytes, compiled forms' bytes)."""
        self.sizes = sizes
        self.cached = tuple(sorted(sizes))
        held = self.held_payloads()
        self._coming = {sha: n for sha, n in self._coming.items() if sha in held}

    def _start_jobs(self, now: float) -> None:
        host = self.host_facts()
        depth = PIPELINE_DEPTH if self.pipelined else 1
        while self.buffer and len(self.running) < self.s.slots * depth:
            h = self.buffer.popleft()
            too_much = host.refuses(h.spec.limits)
            if too_much is not None:  # the owner's limits win: given back unrun, no fault
                log.warning("job %s from %s asks for %s: refused", h.spec.tag, h.dealer, too_much)
                why = f"refused: it asks for {too_much}"
                self._finish(h, p.Result(h.spec.tag, p.Status.ABANDONED, b"", 0, why))
                continue
            h.key = f"{self._next_key:x}"
            self._next_key += 1
            h.started, h.depth = now, depth
            self.running[h.key] = h
            self._actions.append(Start(h.key, h.dealer, h.spec, depth))

    def _owe(self, h: Held, sign: int) -> None:
        self._owed[h.dealer] = self._owed.get(h.dealer, 0) + sign * h.may_write

    def _finish(self, h: Held, result: p.Result) -> None:
        self._owe(h, -1)
        self._summary[result.status.value] = self._summary.get(result.status.value, 0) + 1
        if not self.done:
            log.info("first job done: %s from %s, %s", result.tag, h.dealer, result.status.value)
        self.done += 1
        self._hold_result(h.dealer, result)
        self._undurable.add((h.dealer, result.tag))
        self._actions.append(Spool(h.dealer, result))

    def spooled(self, keys: Iterable[tuple[str, str]]) -> None:
        """These (dealer, tag) results are on disk now: they may be sent."""
        for key in keys:
            self._undurable.discard(key)

    def _hold_result(self, dealer: str, result: p.Result) -> None:
        results = self.unacked.setdefault(dealer, {})
        old = results.get(result.tag)
        results[result.tag] = result
        self._unacked_bytes[dealer] = (
            self._unacked_bytes.get(dealer, 0)
            + _weight(result)
            - (0 if old is None else _weight(old))
        )

    def _release_result(self, dealer: str, tag: str) -> None:
        results = self.unacked.get(dealer, {})
        old = results.pop(tag, None)
        if old is not None:
            self._unacked_bytes[dealer] -= _weight(old)
            self._actions.append(Unspool(dealer, tag))
        self._unspooled.pop((dealer, tag), None)
        self._undurable.discard((dealer, tag))
        if not results:
            self.unacked.pop(dealer, None)
            self._unacked_bytes.pop(dealer, None)

    def _retry_spool(self, now: float) -> None:
        """While the disk refuses, spool the results kept in memory again, and probe it."""
        if now - self._probe_at < DISK_PROBE_S:
            return
        self._probe_at = now
        retry, self._unspooled = self._unspooled, {}
        for (dealer, tag), result in retry.items():
            if tag in self.unacked.get(dealer, {}):
                self._actions.append(Spool(dealer, result))  # a failure puts it back
        self._actions.append(ProbeDisk())

    def _cancel(self, dealer: str, tags: tuple[str, ...]) -> None:
        """The dealer settled these jobs elsewhere: drop them, stop them, send nothing."""
        gone = set(tags)
        kept: deque[Held] = deque()
        n = 0
        for h in self.buffer:
            if h.dealer == dealer and h.spec.tag in gone:
                self._owe(h, -1)
                n += 1
            else:
                kept.append(h)
        self.buffer = kept
        for key, h in self.running.items():
            if h.dealer == dealer and h.spec.tag in gone and key not in self._cancelled:
                self._owe(h, -1)
                self._cancelled.add(key)
                self._actions.append(Stop(key))
                n += 1
        for tag in gone & set(self.unacked.get(dealer, {})):
            self._release_result(dealer, tag)
            n += 1
        if n:
            log.info("dealer %s: %d jobs cancelled (settled without them)", dealer, n)

    def _acked(self, dealer: str, msg: p.Ack, now: float) -> None:
        for tag in msg.tags:
            self._release_result(dealer, tag)
        late = 0
        for rej in msg.rejected:
            if rej.code is p.ErrorCode.SETTLED:  # a backup or late replica: nothing wrong
                late += 1
                self._release_result(dealer, rej.tag)
                continue
            self._repeats.warn(
                now,
                f"refused {dealer} {rej.code.value}",
                lambda rej=rej: (
                    f"dealer {dealer} refused result {rej.tag}: {rej.code.value}: {rej.text}"
                ),
            )
            self._release_result(dealer, rej.tag)
        if late:
            log.info("dealer %s: %d results not needed (their jobs were settled)", dealer, late)
        link = self.links.get(dealer)
        one = 0 if link is None else link.output_hint + RESULT_OVERHEAD_BYTES
        if link is not None and link.flooded and not self._over_share(dealer, one):
            link.flooded = False
        if link is not None and link.retired:
            self._drop_retired(link)

    def _delivering(self) -> bool:
        """Results wait for a dealer that is answering: finish delivering them first."""
        return any(
            results and addr in self.links and self.links[addr].backoff.failures == 0
            for addr, results in self.unacked.items()
        )

    def _over_share(self, dealer: str, one: int = RESULT_OVERHEAD_BYTES) -> bool:
        """Its unacknowledged results leave no room in its share for `one` more result."""
        return self._unacked_bytes.get(dealer, 0) + one > self.s.spool_share_bytes

    def _say_progress(self, now: float) -> None:
        """A line a minute while jobs finish, so a lender sees the machine at work."""
        if now - self._summary_at < PROGRESS_EVERY_S:
            return
        if self._summary:
            n = sum(self._summary.values())
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(self._summary.items()))
            log.info("%d jobs finished in the last %.0f s (%s)", n, now - self._summary_at, kinds)
        self._summary_at, self._summary = now, {}

    # --- talking to dealers -----------------------------------------------------------

    def _rid(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _hello(self, link: Link, now: float) -> None:
        if link.hello_id is not None or not link.backoff.ready(now) or link.refused:
            return
        rid = self._rid()
        link.hello_id, link.hello_at = rid, now
        self._actions.append(Hello(link.address, p.Hello(rid)))

    def _hello_reply(self, link: Link, msg: p.HelloReply, now: float) -> None:
        self.reached = True
        link.hello_id = None
        link.backoff.succeeded()
        link.check_key, link.key_checked = False, True
        pinned = self._pins.get(link.address)
        if link.key_referred_by and link.key != msg.key:  # only a referral said otherwise
            log.error(
                "dealer %s: key mismatch: it presents key %s, not the key %s that %s referred "
                "to it with; not used",
                link.address,
                msg.key,
                link.key,
                link.key_referred_by,
            )
            if self.unacked.get(link.address):  # results for it: kept, listed, never sent
                link.refused = f"key mismatch: it presents key {msg.key}, not {link.key}"
                link.forget_requests()
                self._actions.append(Reset(link.address))
            else:
                self._drop(link, now)
            return
        if pinned is not None and pinned != msg.key:
            link.refused = (
                f"key mismatch: it now presents key {msg.key}, not the pinned {pinned}. If the "
                f"change is expected, give it as {link.address}#{msg.key} or remove its line "
                "from the known_dealers file in the data directory"
            )
            log.error("dealer %s: %s", link.address, link.refused)
            link.forget_requests()
            self._actions.append(Reset(link.address))
            return
        for claimed, referrer in (link.claims or {}).items():
            if claimed != msg.key:
                log.warning(
                    "dealer %s: key mismatch: it presents key %s; %s referred to it with key "
                    "%s, which was not used",
                    link.address,
                    msg.key,
                    referrer,
                    claimed,
                )
        link.claims = None
        if link.key is None:
            twin = next((x for x in self.links.values() if x.key == msg.key), None)
            if twin is not None and not link.pinned and not self.unacked.get(link.address):
                log.info("dealer %s is %s (the same key): dropped", link.address, twin.address)
                self._drop(link, now)
                return
            log.warning(
                "dealer %s: trusting its key %s on first use (pinned in known_dealers)",
                link.address,
                msg.key,
            )
            link.key, link.key_from_hello = msg.key, True
            self._pin(link.address, msg.key)

    def _send(self, link: Link, msg: p.Message) -> None:
        self._actions.append(Send(link.address, msg))

    def _fetch(self, now: float) -> None:
        if self.disk_trouble:  # no new work while finished work cannot be kept safely
            return
        have = len(self.buffer) + len(self.running) - len(self._cancelled)
        # what asks still out to dealers that answer may bring
        hi_water = self.hi_water()
        coming = sum(
            hi_water - have
            for link in self.links.values()
            if link.bored_id is not None
            and link.answered
            and now - link.bored_at < FETCH_PATIENCE_S
        )
        # ask below the low-water mark, for the difference: a few large asks, not one
        # per finished job (with one slot and long jobs: as soon as one job is missing).
        # Checked first: most turns stop here, before the checks that walk the buffer.
        low = hi_water - max(1, (hi_water - self.s.slots) // 2)
        if have + coming > low:
            return
        if self.buffer and self._job_s:
            # never hold more than the buffered jobs' deadlines allow: the last one
            # starts after about len(buffer) / slots job lengths
            start_in = (len(self.buffer) / self.s.slots + 1) * self._job_s
            if now + start_in > min(h.deadline for h in self.buffer):
                return
        payloads = {h.spec.payload for h in self.buffer}
        payloads |= {h.spec.payload for h in self.running.values()}
        if len(payloads) >= MAX_PAYLOADS_PER_SLOT * self.s.slots:
            return  # jobs of many payloads: no deep buffer (see MAX_PAYLOADS_PER_SLOT)
        want = min(p.MAX_BATCH, hi_water - have - coming)
        if want <= 0:
            return
        # dealers that answered before first, round robin among equals
        order = sorted(self._rr, key=lambda a: not self.links[a].answered)
        if self.shares is not None:  # the allocator's: the most owed first
            order = self._by_debt(order)
        inputs = None  # jobs' inputs in hand, counted once a dealer's jobs bring any
        for addr in order:
            link = self.links[addr]
            if not link.may_ask(now):
                continue
            if link.key is None or link.check_key:
                self._hello(link, now)
                continue  # the key first; others may still be asked
            # what its results and jobs in hand may take of its share of the spool, and
            # what one more job's result may (its output limit as last seen, tag, detail)
            owed = self._spool_of(addr)
            one = link.output_hint + RESULT_OVERHEAD_BYTES
            full = owed + one > self.s.spool_share_bytes
            if full and not self._over_share(addr, one):
                continue  # its jobs in hand may fill its share: no more until they are done
            if full:
                if not link.flooded:
                    link.flooded = True
                    log.warning(
                        "dealer %s has not acknowledged %d results (%d MiB): asking it for "
                        "no more work until it does",
                        addr,
                        len(self.unacked.get(addr, {})),
                        self._unacked_bytes.get(addr, 0) // (1024 * 1024),
                    )
                continue
            # no more than its share of the spool could take
            n = min(want, max(1, (self.s.spool_share_bytes - owed) // one))
            if link.input_hint:  # no more than the jobs' inputs room left holds
                if inputs is None:
                    inputs = sum(h.input for h in self._in_hand())
                room = self.s.input_budget() - inputs
                if room < link.input_hint and inputs:
                    continue  # its jobs wait for room: asked once jobs in hand are done
                n = min(n, max(1, room // link.input_hint))
            # `holding` lets a dealer release what we lost (a restart); `alive` says it
            # too, so a bored names it only when that is not said already
            holding = None
            if now - link.holding_at >= p.ALIVE_INTERVAL_S:
                holding = self.holding(addr)
                link.holding_at = now
            rid = self._rid()
            host = self.host_facts()
            self._send(link, p.Bored(rid, self.s.name, host, n, holding))
            link.bored_id, link.bored_at = rid, now
            link.bored_want, link.bored_cached = n, frozenset(host.cached)
            self._rr.remove(addr)  # to the back of the round
            self._rr.append(addr)
            if link.answered:
                return  # one live dealer at a time; dealers that never answered hold none back

    # --- resource shares (an allocator's instructions) ---------------------------------

    def set_projects(self, projects: Mapping[str, float], debts: Mapping[str, float] = {}) -> None:
        """The allocator's dealers (`endpoint#key` or `endpoint`) and their shares. Dealers
        no longer listed get no more asks (their results and alives still go); `debts`:
        saved ones, by address, for dealers new to this run."""
        shares: dict[str, float] = {}
        for text, share in projects.items():
            self.add_dealer(text, depth=0)
            addr = p.split_key(text)[0]
            if addr in self.links:
                shares[addr] = share
        if self.shares is None:
            self.shares = Shares()
        self.shares.set(shares, debts)
        for link in list(self.links.values()):  # referred by a project no longer listed
            if link.depth > 0 and link.via is not None and link.via not in shares:
                if not link.retired:
                    log.info(
                        "dealer %s: asked for nothing more (%s, which referred to it, is not "
                        "listed now)",
                        link.address,
                        link.via,
                    )
                link.retired = True
                self._drop_retired(link)

    def _drop_retired(self, link: Link) -> None:
        """A retired dealer is forgotten once it holds nothing of ours."""
        if link.retired and link.address in self.links and not self.holds_from(link.address):
            self._drop(link, float("-inf"))  # not shunned: it did nothing wrong

    def eligible(self, now: float) -> list[str]:
        """Projects that have work for us, or may: they count in the debts' accounting."""
        assert self.shares is not None
        out = []
        for addr in self.shares.share:
            link = self.links.get(addr)
            if link is None or not link.usable() or link.finished or link.backoff.failures:
                continue
            if now >= link.ask_after or self.holds_from(addr):
                out.append(addr)
        return out

    def _by_debt(self, order: list[str]) -> list[str]:
        assert self.shares is not None
        job_s = self._job_s or AHEAD_S
        in_hand: dict[str, float] = {}
        for h in (*self.buffer, *self.running.values()):
            in_hand[h.dealer] = in_hand.get(h.dealer, 0.0) + job_s
        ranked = self.shares.rank(order, in_hand)
        # a dealer from the allocator that it no longer lists is asked for nothing more, nor
        # are those it referred to, nor dealers from an earlier run's spool
        share = self.shares.share
        return [a for a in ranked if a in share or self.links[a].via in share]

    def _send_results(self, now: float) -> None:
        for addr, results in self.unacked.items():
            link = self.links.get(addr)
            if not results or link is None or link.results_id is not None or link.refused:
                continue
            if not link.backoff.ready(now):
                continue
            if link.key is None or link.check_key:
                self._hello(link, now)
                continue
            ready = [r for r in results.values() if (addr, r.tag) not in self._undurable]
            if not ready:
                continue  # on its way to disk: sent once it is there
            batch = _batch(ready)
            rid = self._rid()
            self._send(link, p.Results(rid, self.s.name, batch))
            link.results_id, link.results_at = rid, now
            link.results_tags = tuple(r.tag for r in batch)

    def _send_alive(self, now: float) -> None:
        """Tell each dealer whose work we hold that we are alive, every few seconds, even
        while every slot is busy: a dealer takes a silent jobber as gone (docs/protocol.md)."""
        for addr, link in self.links.items():
            if not link.usable() or link.alive_id is not None:
                continue
            if now - link.alive_at < link.alive_every_s or not link.backoff.ready(now):
                continue
            if not self.holds_from(addr):
                continue
            rid = self._rid()
            # `holding` only while no `jobs` reply can be in flight: tags the dealer has
            # just sent us would otherwise read as lost (docs/protocol.md, section 6)
            holding = self.holding(addr) if link.bored_id is None else None
            if holding is not None:
                link.holding_at = now
            self._send(link, p.Alive(rid, self.s.name, holding))
            link.alive_id, link.alive_at = rid, now

    def _check_timeouts(self, now: float) -> None:
        limit = self.s.request_timeout_s
        for link in list(self.links.values()):
            late_bored = link.bored_id is not None and now - link.bored_at > limit
            late_results = link.results_id is not None and now - link.results_at > limit
            late_hello = link.hello_id is not None and now - link.hello_at > limit
            late_alive = link.alive_id is not None and now - link.alive_at > limit
            if late_bored or late_results or late_hello or late_alive:
                self._failed(link, now, f"no answer within {limit:g} s")

    def _failed(self, link: Link, now: float, why: str) -> None:
        # a key learnt on first use: before asking again, has it changed? A key a referral
        # gave that never worked in this run: is it the dealer's, or a key mismatch? (Not
        # if asking for the key failed.)
        unproven = bool(link.key_referred_by) and not link.answered and not link.key_checked
        link.check_key = (link.key_from_hello or unproven) and link.hello_id is None
        link.forget_requests()
        self._actions.append(Reset(link.address))
        wait = link.backoff.failed(now)
        log.info(
            "dealer %s: %s; failure %d, backed off for %.2f s%s",
            link.address,
            why,
            link.backoff.failures,
            wait,
            f"; {link.problem}" if link.problem else "",
        )
        limit = DROP_REFERRED_AFTER if link.answered else DROP_UNREACHED_AFTER
        if (
            not link.pinned
            and link.backoff.failures >= limit
            and not self.unacked.get(link.address)
        ):
            log.info(
                "dealer %s dropped after %d failed contacts", link.address, link.backoff.failures
            )
            self._drop(link, now)

    def _referred(self, link: Link, dealers: tuple[str, ...], now: float) -> None:
        via = link.via if link.depth else link.address
        if self.shares is not None and via not in self.shares.share:
            log.debug("dealer %s: its referral not followed (not listed by the allocator)", via)
            return
        for text in dealers:
            try:
                addr = p.dealer_address(text)
            except ValueError as e:
                log.warning("dealer %s referred to a bad address: %s", link.address, e)
                continue
            if not addr.startswith("tcp://"):  # a remote dealer names no local sockets
                log.warning("dealer %s referred to %s: only tcp is followed", link.address, addr)
                continue
            if self._shunned.get(p.split_key(addr)[0], 0.0) > now:
                continue  # dropped a moment ago: not again so soon
            self.add_dealer(addr, link.depth + 1, via=via, referrer=link.address)


def _input_of(spec: p.JobSpec) -> int:
    """About the most memory a job's stdin, args and tag take in our hands."""
    text = len(spec.tag) + sum(len(a) for a in spec.args)
    return len(spec.stdin) + 4 * text + INPUT_OVERHEAD_BYTES * (2 + len(spec.args))


def _weight(r: p.Result) -> int:
    """About how many bytes a result takes on disk and in a message."""
    return len(r.output) + 4 * (len(r.tag) + len(r.detail)) + 64


def _batch(results) -> tuple[p.Result, ...]:
    """The first results that fit one message: at most MAX_RESULTS_PER_MESSAGE of them
    and MAX_RESULTS_BYTES (roughly: outputs, tags and details), and always at least one."""
    out: list[p.Result] = []
    size = 0
    for r in results:
        size += _weight(r)
        if out and (size > MAX_RESULTS_BYTES or len(out) >= MAX_RESULTS_PER_MESSAGE):
            break
        out.append(r)
    return tuple(out)
