"""What the jobber core keeps per dealer (`Link`) and per job in hand (`Held`), the
rules' constants, and how results and inputs are weighed. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import protocol as p
from net._link import HELLO
from net._link import Link as NetLink
from protocol._wire import MAX_OUTPUT_BYTES

# the kinds of request a jobber has out to a dealer, one of each at most (net._link)
BORED, RESULTS, ALIVE = "bored", "results", "alive"
SAVE = "save"  # a chunk of a job's saved state out (jobber._saving): one at a time
# ... and up to p.MAX_FETCHES `fetch` requests, each its own kind (one per lane), so the
# Lazy Pirate core keeps their ids, deadlines and failures as it keeps the others'
FETCHES = tuple(f"fetch{i}" for i in range(p.MAX_FETCHES))
# a fetch out whose file was started over since it went (two dealers' digests and chunks
# disagreed): its answer, whatever it is, is taken as an answer and nothing of it kept
STALE = -1
# a dealer answering `denied` to this many fetches in a row serves us no file: its jobs
# waiting for files are given back
DENIED_GIVE_UP = 3
# a fetch answered `busy` (the dealer's ration) with no `retry_s`: no fetch goes to that
# dealer for this long (with one, for as long as it says)
BUSY_WAIT_S = 1.0

# what fits one results message: protocol's rule, which a relay follows too
MAX_RESULTS_PER_MESSAGE = p.MAX_RESULTS_PER_MESSAGE
MAX_RESULTS_BYTES = p.MAX_RESULTS_BYTES
_weight = p.result_weight
_batch = p.results_that_fit
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
MAX_OUTPUT_KB = MAX_OUTPUT_BYTES // 1024  # the wire's cap on one result's output


def _request(kind: str, doc: str) -> property:
    """The id of the request of `kind` out to the dealer (net._link keeps it), or None;
    setting it records one out (keeping when it went) or forgets it."""

    def get(self: Link) -> int | None:
        r = self.req.out.get(kind)
        return None if r is None else r.id

    def set_(self: Link, rid: int | None) -> None:
        old = self.req.forget(kind)
        if rid is not None:
            self.req.sent(kind, 0.0 if old is None else old.sent_at, rid)

    return property(get, set_, doc=doc)


def _sent_at(kind: str) -> property:
    def get(self: Link) -> float:
        r = self.req.out.get(kind)
        return 0.0 if r is None else r.sent_at

    return property(get, doc=f"when the {kind} out went (0.0 if none is out)")


def _of_req(name: str, doc: str) -> property:
    def get(self: Link):
        return getattr(self.req, name)

    def set_(self: Link, value) -> None:
        setattr(self.req, name, value)

    return property(get, set_, doc=doc)


PROBE_EVERY_S = 10.0  # a dealer backed off, its key in doubt: its plaintext port asked so often


@dataclass
class Link:
    """One dealer as this jobber sees it. Its requests out, their timeouts, the backoff,
    the socket resets and its key are the Lazy Pirate core's (net._link, `req`); the
    rest is the jobber's own."""

    address: str  # the endpoint, without the key
    pinned: bool  # given on the command line: never dropped
    depth: int
    req: NetLink  # the requests out (bored, results, alive, hello), backoff, reset, key
    answered: bool = False  # it has answered us at least once (in this run)
    finished: bool = False  # it said its task is finished
    problem: str = ""  # what the transport last said about connecting
    bored_want: int = 0  # the `want` of the ask out: a `jobs` carries no more
    bored_cached: frozenset[str] = frozenset()  # payloads it said it holds (host.cached)
    unasked: int = 0  # replies it sent that answered nothing we asked (refused, counted)
    input_hint: int = 0  # bytes of input its last jobs brought (to ask for what fits)
    results_tags: tuple[str, ...] = ()
    ask_after: float = 0.0  # "retry later": no bored before this (results still go)
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
    # the `fetch` requests out (their kind, one of FETCHES) -> (file hash, chunk index,
    # or STALE once that file was started over)
    fetches: dict[str, tuple[str, int]] = field(default_factory=dict)
    denied: int = 0  # fetches it answered `denied` in a row (DENIED_GIVE_UP: its jobs go)
    fetch_after: float = 0.0  # it answered a fetch `busy`: no fetch to it before this
    saving: str | None = None  # the job whose state's chunk is out (`save`), by tag
    # what the lender is shown (jobber._status): what the dealer says of its batch and of
    # this jobber's account there, the latest reason it gave no work ("" once it does),
    # the results it recorded in this run, and the owner's pause of it
    about: p.About | None = None
    account: p.Account | None = None
    no_work: str = ""
    done: int = 0
    paused: bool = False  # by the owner: asked for no work (results and alive still go)
    # hellos asked inside the backoff after a failed contact (at once, then every
    # PROBE_EVERY_S): has its key changed? (silence counts no failure; an answer resets
    # no backoff)
    probe_at: float = float("inf")  # when the next is due
    probing: bool = False  # one is out
    # (the key pinned, the key it presents) once a hello showed another key
    mismatch: tuple[str, str] | None = None

    bored_id = _request(BORED, "the ask out (`bored`)")
    results_id = _request(RESULTS, "the `results` out")
    alive_id = _request(ALIVE, "the `alive` out")
    hello_id = _request(HELLO, "the `hello` out, to the plaintext port")
    bored_at = _sent_at(BORED)
    results_at = _sent_at(RESULTS)
    hello_at = _sent_at(HELLO)
    backoff = _of_req("backoff", "the failed contacts' backoff (net._backoff)")
    key = _of_req("key", "the dealer's public key, hex; None until known")
    key_from_hello = _of_req("key_from_hello", "learnt on first use (re-checked on failures)")
    check_key = _of_req("check_key", "ask hello before the next request: has the key changed?")
    refused = _of_req("refused", "why this dealer is never contacted (its key changed)")

    def usable(self) -> bool:
        return self.req.usable()

    def req_id(self, kind: str) -> int | None:
        """The id of the request of `kind` out, or None."""
        r = self.req.out.get(kind)
        return None if r is None else r.id

    def may_ask(self, now: float) -> bool:
        return (
            not self.retired
            and not self.paused
            and now >= self.ask_after
            and self.req.may_send(BORED, now)
        )

    def sent(self, kind: str, rid: int, now: float) -> None:
        """A request of `kind` went, with id `rid` (the core numbers all its requests)."""
        self.req.sent(kind, now, rid)

    def answered_by(self, kind: str, now: float) -> None:
        """Its request of `kind` is answered: done, and the backoff reset."""
        r = self.req.out.get(kind)
        if r is None:  # answered already (tests set ids by hand): the backoff still resets
            self.req.backoff.succeeded()
        else:
            self.req.answered(r.id, now, (kind,))
        if kind == BORED:
            self.bored_want, self.bored_cached = 0, frozenset()
        elif kind == RESULTS:
            self.results_tags = ()

    def forget_requests(self) -> None:
        self.req.out.clear()
        self.fetches.clear()
        self.saving = None
        self.results_tags = ()
        self.bored_want, self.bored_cached = 0, frozenset()


@dataclass
class Partial:
    """An input file coming a chunk at a time: its size, the digests of its chunks (from
    chunk 0; None until it came) and the chunks kept on disk; in the core, also the
    dealer whose chunk 0 brought the digests (`source`; None for a file resumed from an
    earlier run) and the dealers whose chunks were kept (`senders`): a file that fails
    whole is their fault, no other dealer's."""

    size: int
    digests: tuple[bytes, ...] | None = None
    have: set[int] = field(default_factory=set)
    source: str | None = None
    senders: set[str] = field(default_factory=set)

    def missing(self) -> list[int]:
        """The chunks still to fetch: chunk 0 alone until the digests are known."""
        if self.digests is None:
            return [0]
        return [i for i in range(p.chunk_count(self.size)) if i not in self.have]


@dataclass
class Held:
    """A job in our hands: buffered until `key` is set, then running."""

    dealer: str
    spec: p.JobSpec
    deadline: float  # on the core's clock
    key: str = ""
    started: float = 0.0
    paused_s: float = 0.0  # time it spent suspended since it started (not run time)
    depth: int = 1  # the slot pipeline's depth it was started with
    # its latest saved state the shell keeps (jobber._saving): hash, size, fuel, time
    saved: p.Resume | None = None
    sent_state: str = ""  # the hash of the last state its dealer took whole
    sent_time_s: float = 0.0  # the job's running time when that state was saved
    sending: p.Resume | None = None  # the state going to its dealer, a chunk at a time
    next_chunk: int = 0
    save_refused: bool = False  # its dealer takes no state of it: none is sent again
    save_after: float = 0.0  # its dealer said `busy`: no chunk before this

    @property
    def saves(self) -> bool:
        """The job may save its state (limits.checkpoint_kb)."""
        return bool(self.spec.limits.checkpoint_kb)

    @property
    def may_write(self) -> int:
        """The most output bytes it may leave in the spool."""
        return self.spec.limits.output_kb * 1024

    @property
    def may_hold(self) -> int:
        """The most its result may take in the spool (its output, tag and detail), and its
        saved state, if it saves one."""
        state = (self.spec.limits.checkpoint_kb or 0) * 1024
        return self.may_write + 4 * len(self.spec.tag) + RESULT_OVERHEAD_BYTES + state

    @property
    def input(self) -> int:
        """About the most memory its stdin, args and tag take."""
        return _input_of(self.spec)


def _input_of(spec: p.JobSpec) -> int:
    """About the most memory a job's stdin, args and tag take in our hands."""
    text = len(spec.tag) + sum(len(a) for a in spec.args)
    return len(spec.stdin) + 4 * text + INPUT_OVERHEAD_BYTES * (2 + len(spec.args))
