"""What the jobber core keeps per dealer (`Link`) and per job in hand (`Held`), the
rules' constants, and how results and inputs are weighed. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import protocol as p
from net._backoff import Backoff

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
# What a held job's result may add to the spool beyond its output: its tag and a
# detail of at most MAX_STR code points (4 bytes each at most) and the record's framing,
# as _weight counts a result
RESULT_OVERHEAD_BYTES = 4 * p.MAX_STR + 64
# What a job's tag and args may take in memory beyond their code points' bytes (a
# Python str of non-ASCII text takes up to 4 bytes per code point) and per object
INPUT_OVERHEAD_BYTES = 64
MAX_OUTPUT_KB = 32 * 1024  # the wire's cap on one result's output (docs/protocol.md, Caps)


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
