"""The wire's messages: what a dealer, a jobber, a relay and a peer dealer say to each
other (protocol._wire's docstring draws who sends what), each declared once with its
fields' checks (protocol._schema), and MESSAGES, the table `decode` reads a type from.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from protocol._records import (
    _KEY_HEX,
    _SHA256_HEX,
    CHUNK_BYTES,
    MAX_BATCH,
    MAX_CHECKPOINT_BYTES,
    MAX_FILE_BYTES,
    MAX_HOLDING,
    MAX_PAYLOAD_BYTES,
    MAX_PAYLOADS,
    MAX_RUNTIMES,
    MAX_U64,
    About,
    Account,
    Attribution,
    ErrorCode,
    HostFacts,
    JobSpec,
    Limits,
    Rejection,
    Result,
    Signature,
    Standing,
)
from protocol._schema import (
    _any_map,
    _bool,
    _bytes,
    _enum,
    _float,
    _int,
    _list,
    _map,
    _optional,
    _Record,
    _record,
    _str,
    checked,
    record,
)

# --- messages -------------------------------------------------------------


class Message(_Record):
    __slots__ = ()
    TYPE: ClassVar[str]


_ID = _int(0, MAX_U64)
_JOBBER = _str(256)
# what a dealer tells the jobber it answers of its batch and of that jobber: in `jobs`,
# `retry_later`, `finished`, `ack` and `alive_ack` (nil: not said; older dealers)
_ABOUT = _optional(_record(About))
_ACCOUNT = _optional(_record(Account))


@record
class Bored(Message):
    """Jobber -> dealer: I can take up to `want` more jobs.

    `holding` lists every tag from this dealer the jobber still has (buffered,
    running, or finished and not yet acknowledged). The dealer treats its other
    open replicas on this jobber as lost (say, by a jobber that crashed and
    restarted) and reissues them at once. nil: the jobber does not say.

    `behalf`: a relay asking for jobs for one of its jobbers (relay._core; counted as
    that jobber's machine only by a dealer that trusts the relay).
    """

    TYPE: ClassVar[str] = "bored"
    id: int = checked(_ID)
    jobber: str = checked(_JOBBER)  # a label for people; the identity is the CurveZMQ key
    host: HostFacts = checked(_record(HostFacts))
    want: int = checked(_int(0, MAX_BATCH), 1)
    holding: tuple[str, ...] | None = checked(_optional(_list(_str(), MAX_HOLDING)), None)
    # sent by a relay: the jobs are for this jobber of its (nil: for the sender itself)
    behalf: Attribution | None = checked(_optional(_record(Attribution)), None)


@record
class Jobs(Message):
    """Dealer -> jobber: jobs to run; payload bytes for hashes the jobber lacks.

    `signatures`: the author's signature of payloads the jobs use, by hash, sent even
    when the bytes are not (the jobber may hold them already). nil: the dealer signs
    nothing. Optional, so a version 2 peer that predates it ignores it.
    """

    TYPE: ClassVar[str] = "jobs"
    re: int = checked(_ID)
    jobs: tuple[JobSpec, ...] = checked(_list(_record(JobSpec), MAX_BATCH))
    payloads: dict[str, bytes] = checked(
        _map(_str(64, _SHA256_HEX), _bytes(MAX_PAYLOAD_BYTES), MAX_PAYLOADS), factory=dict
    )
    signatures: dict[str, Signature] | None = checked(
        _optional(_map(_str(64, _SHA256_HEX), _record(Signature), MAX_PAYLOADS)), None
    )
    about: About | None = checked(_ABOUT, None)
    account: Account | None = checked(_ACCOUNT, None)


@record
class Referral(Message):
    """Dealer -> jobber: no work here; these dealers may have some."""

    TYPE: ClassVar[str] = "referral"
    re: int = checked(_ID)
    dealers: tuple[str, ...] = checked(_list(_str(256), 64))


@record
class RetryLater(Message):
    """Dealer -> jobber: no work for you now; ask again after `seconds`."""

    TYPE: ClassVar[str] = "retry_later"
    re: int = checked(_ID)
    seconds: float = checked(_float(0.0, 1e7))
    reason: str | None = checked(
        _optional(_str()), None
    )  # why, for the jobber's log (nil: not said)
    more: bool | None = checked(
        _optional(_bool()), None
    )  # true: unsettled work here may still come to you (nil: not said)
    # sha256 hex of pinned runtimes (protocol._runtimes) this dealer's jobs run and your
    # host.cached lacks: prepare one (fetch it here, compile it) to be sent those jobs
    # (nil: none)
    runtimes: tuple[str, ...] | None = checked(
        _optional(_list(_str(64, _SHA256_HEX), MAX_RUNTIMES)), None
    )
    about: About | None = checked(_ABOUT, None)
    account: Account | None = checked(_ACCOUNT, None)


@record
class Finished(Message):
    """Dealer -> jobber: this dealer's task is done; there will be no more work here.

    Deliver what you hold for it (it stays a few seconds to take late results),
    then stop asking it.
    """

    TYPE: ClassVar[str] = "finished"
    re: int = checked(_ID)
    about: About | None = checked(_ABOUT, None)
    account: Account | None = checked(_ACCOUNT, None)


@record
class Results(Message):
    """Jobber -> dealer: finished replicas."""

    TYPE: ClassVar[str] = "results"
    id: int = checked(_ID)
    jobber: str = checked(_JOBBER)
    results: tuple[Result, ...] = checked(_list(_record(Result), MAX_BATCH))


# What a client puts in one `results` (the reference jobber, and a relay upstream): at
# most MAX_RESULTS_PER_MESSAGE results, and under MAX_RESULTS_BYTES unless it carries
# one result: a dealer takes frames of 1 MiB plus one output (docs/protocol.md).
MAX_RESULTS_PER_MESSAGE = 256
MAX_RESULTS_BYTES = 768 * 1024


def result_weight(r: Result) -> int:
    """About how many bytes a result takes in a message (and on a jobber's disk)."""
    return len(r.output) + 4 * (len(r.tag) + len(r.detail)) + 64


def results_that_fit(results: Iterable[Result]) -> tuple[Result, ...]:
    """The first of `results` that fit one `results` message, and always at least one."""
    out: list[Result] = []
    size = 0
    for r in results:
        size += result_weight(r)
        if out and (size > MAX_RESULTS_BYTES or len(out) >= MAX_RESULTS_PER_MESSAGE):
            break
        out.append(r)
    return tuple(out)


@record
class Ack(Message):
    """Dealer -> jobber: these results are durably recorded; those were refused.

    Either way the jobber is done with every tag named here.

    `standing`: to a relay, the standing of the jobbers its results named (`by`); nil
    otherwise, and from a dealer that predates the field.
    """

    TYPE: ClassVar[str] = "ack"
    re: int = checked(_ID)
    tags: tuple[str, ...] = checked(_list(_str(), MAX_BATCH))
    rejected: tuple[Rejection, ...] = checked(_list(_record(Rejection), MAX_BATCH), ())
    standing: tuple[Standing, ...] | None = checked(
        _optional(_list(_record(Standing), MAX_BATCH)), None
    )
    about: About | None = checked(_ABOUT, None)
    account: Account | None = checked(_ACCOUNT, None)


@record
class Error(Message):
    """Either way: the request (`re`, or 0 if it could not be read) was refused.

    `retry_s`: with code BUSY (sent only in answer to `fetch`), how long to wait before
    asking again; nil: not said. Optional, so it changed no version.
    """

    TYPE: ClassVar[str] = "error"
    re: int = checked(_ID)
    code: ErrorCode = checked(_enum(ErrorCode))
    text: str = checked(_str())
    retry_s: float | None = checked(_optional(_float(0.0, 3600.0)), None)  # nil: not said


@record
class StatusQuery(Message):
    """Anyone -> dealer: report your tasks and jobbers (jobbers listed a page at a time)."""

    TYPE: ClassVar[str] = "status"
    id: int = checked(_ID)
    page: int | None = checked(_optional(_int(0, 1 << 20)), None)  # nil: the first page (0)


@record
class StatusReply(Message):
    """Dealer -> asker: a map of counts and records (see docs/protocol.md)."""

    TYPE: ClassVar[str] = "status_reply"
    re: int = checked(_ID)
    info: dict[str, Any] = checked(_any_map())


_KEY = _str(64, _KEY_HEX)
ALIVE_INTERVAL_S = 5.0  # how often a jobber holding work from a dealer says it is alive


@record
class Alive(Message):
    """Jobber -> dealer: I am alive (sent every ALIVE_INTERVAL_S while holding its work).

    `holding` as in `bored`: the tags from this dealer the jobber still has.
    """

    TYPE: ClassVar[str] = "alive"
    id: int = checked(_ID)
    jobber: str = checked(_JOBBER)
    holding: tuple[str, ...] | None = checked(_optional(_list(_str(), MAX_HOLDING)), None)


@record
class AliveAck(Message):
    """Dealer -> jobber: heard. `lease_s`: silence after which you are taken as gone.

    `cancel`: held tags whose jobs are settled; stop running them, send nothing for them.
    `standing`: the standing of every jobber the dealer keeps behind the sender (a relay;
    empty for a jobber that named none); nil from a dealer that keeps none (older ones).
    """

    TYPE: ClassVar[str] = "alive_ack"
    re: int = checked(_ID)
    lease_s: float = checked(_float(1.0, 1e6))
    cancel: tuple[str, ...] = checked(_list(_str(), MAX_HOLDING), ())
    standing: tuple[Standing, ...] | None = checked(
        _optional(_list(_record(Standing), MAX_BATCH)), None
    )
    about: About | None = checked(_ABOUT, None)
    account: Account | None = checked(_ACCOUNT, None)


@record
class Hello(Message):
    """Anyone -> dealer's plaintext socket: which public key does your work socket have?"""

    TYPE: ClassVar[str] = "hello"
    id: int = checked(_ID)


@record
class HelloReply(Message):
    """Dealer -> asker: the work socket's public key, 64 lowercase hex digits."""

    TYPE: ClassVar[str] = "hello_reply"
    re: int = checked(_ID)
    key: str = checked(_KEY)


@record
class Deny(Message):
    """Admin -> dealer: ban the identity `key` (it gets no work and its results are refused)."""

    TYPE: ClassVar[str] = "deny"
    id: int = checked(_ID)
    key: str = checked(_KEY)
    reason: str = checked(_str())


@record
class AdminReply(Message):
    """Dealer -> admin: the request was carried out and made durable."""

    TYPE: ClassVar[str] = "admin_reply"
    re: int = checked(_ID)
    text: str = checked(_str())


@record
class WorkQuery(Message):
    """Dealer -> peer dealer (either port): what work can you hand out now?"""

    TYPE: ClassVar[str] = "work_query"
    id: int = checked(_ID)


@record
class WorkOffer(Message):
    """Dealer -> asker: how much work it can hand out now, and what one job needs.

    `jobs`: jobs that want a replica now, plus those it could draw into its window
    now (a cheap measure, not a promise). `limits`: what each of its jobs asks for
    (a jobber whose HostFacts.refuses them cannot run them); nil: it hands out no
    jobs of its own (a referral-only dealer). `left`: jobs of its batch not yet
    settled, nil if it cannot say. `finished`: its batch is done.
    """

    TYPE: ClassVar[str] = "work_offer"
    re: int = checked(_ID)
    jobs: int = checked(_int(0, MAX_U64))
    limits: Limits | None = checked(_optional(_record(Limits)), None)
    left: int | None = checked(_optional(_int(0, MAX_U64)), None)
    finished: bool | None = checked(_optional(_bool()), None)  # nil: not finished


@record
class Fetch(Message):
    """Jobber -> dealer (work port): send me chunk `chunk` of the input file `hash`.

    A file of `size` bytes travels as `chunk_count(size)` chunks of CHUNK_BYTES, the last
    one shorter. A jobber may have up to MAX_FETCHES fetches out to one dealer at once.
    """

    TYPE: ClassVar[str] = "fetch"
    id: int = checked(_ID)
    hash: str = checked(_str(64, _SHA256_HEX))  # sha256 hex of the whole file
    chunk: int = checked(_int(0, MAX_FILE_BYTES // CHUNK_BYTES))  # which chunk, from 0


@record
class Chunk(Message):
    """Dealer -> jobber: one chunk of an input file, the answer to `fetch`.

    `digests`: the SHA-256 of every chunk of the file, in order, so that each chunk can
    be checked as it comes; sent with chunk 0 (nil otherwise, or the same list again).
    The whole file is checked against `hash` once it is complete.
    """

    TYPE: ClassVar[str] = "chunk"
    re: int = checked(_ID)
    hash: str = checked(_str(64, _SHA256_HEX))
    chunk: int = checked(_int(0, MAX_FILE_BYTES // CHUNK_BYTES))
    size: int = checked(_int(0, MAX_FILE_BYTES))  # the whole file's bytes
    data: bytes = checked(_bytes(CHUNK_BYTES))
    digests: tuple[bytes, ...] | None = checked(
        _optional(_list(_bytes(32, 32), MAX_FILE_BYTES // CHUNK_BYTES)), None
    )


@record
class Save(Message):
    """Jobber -> dealer (work port): chunk `chunk` of the latest saved state of the job
    run as replica `tag`. A state of `size` bytes travels as `chunk_count(size)` chunks of
    CHUNK_BYTES, in order, one `save` out at a time; the dealer journals the state once
    every chunk is in and it hashes to `hash`, and a replica sent later to replace this
    one may start from it (`JobSpec.resume`).
    """

    TYPE: ClassVar[str] = "save"
    id: int = checked(_ID)
    jobber: str = checked(_JOBBER)
    tag: str = checked(_str())
    hash: str = checked(_str(64, _SHA256_HEX))  # sha256 hex of the whole state
    size: int = checked(_int(0, MAX_CHECKPOINT_BYTES))  # the whole state's bytes
    chunk: int = checked(_int(0, MAX_CHECKPOINT_BYTES // CHUNK_BYTES))
    data: bytes = checked(_bytes(CHUNK_BYTES))
    fuel: int = checked(_int(0, 2**62))  # fuel the job had used when it saved the state
    time_s: float = checked(_float(0.0, 1e7))  # running time it had used, seconds


@record
class Saved(Message):
    """Dealer -> jobber: the answer to `save`. `next`: the chunk of that state the dealer
    wants next; chunk_count(size) once the whole state is journaled."""

    TYPE: ClassVar[str] = "saved"
    re: int = checked(_ID)
    hash: str = checked(_str(64, _SHA256_HEX))
    next: int = checked(_int(0, MAX_CHECKPOINT_BYTES // CHUNK_BYTES + 1))


MESSAGES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Bored,
        Jobs,
        Referral,
        RetryLater,
        Results,
        Ack,
        Error,
        StatusQuery,
        StatusReply,
        Hello,
        HelloReply,
        Deny,
        AdminReply,
        Alive,
        AliveAck,
        Finished,
        WorkQuery,
        WorkOffer,
        Fetch,
        Chunk,
        Save,
        Saved,
    )
}
