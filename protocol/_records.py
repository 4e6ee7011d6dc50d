"""The wire's value records (limits, host facts, jobs, results, signatures), its enums and
its size caps: what messages (protocol._messages) are made of.

Each record is declared once, its fields with their checks (protocol._schema);
docs/protocol.md describes them for other implementations, and
tests/protocol/test_wire_caps.py pins every bound to it.
"""

from __future__ import annotations

import enum
import re

from protocol._schema import (
    MAX_U64,
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

# Size caps. A payload module is the largest thing on the wire; 32 MiB leaves
# room for real programs (a C kernel is ~50 KB) while a single frame cannot
# exhaust a dealer's or jobber's memory.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024
MAX_BATCH = 4096  # jobs in one `jobs`, results in one `results`
MAX_ARGS = 1024
MAX_STDIN_BYTES = 16 * 1024 * 1024
MAX_OUTPUT_BYTES = 32 * 1024 * 1024
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024  # one job's saved state (limits.checkpoint_kb)
MAX_CACHED = 4096  # payload hashes a jobber may report
MAX_PAYLOADS = 64  # payloads (and signatures of payloads) in one `jobs`
MAX_HOLDING = 8192  # tags a jobber may say it holds from one dealer (quotas keep it far below)
MAX_PLATFORM = 256  # HostFacts.platform: a name, compared for equality only
# Input files (JobSpec.files): read-only files a job's payload sees at their guest paths,
# named by their SHA-256 and fetched once per jobber, a chunk at a time (`fetch`, `chunk`)
MAX_JOB_FILES = 256  # files one job names
MAX_FILE_BYTES = 1 << 40  # one input file: 1 TiB (an owner's --max-input-mb is far lower)
CHUNK_BYTES = 4 * 1024 * 1024  # a file travels in chunks of this size; the last may be shorter
MAX_HELD_FILES = 4096  # file hashes a jobber may say it holds (HostFacts.files)
MAX_RUNTIMES = 8  # runtimes a dealer may ask a jobber to prepare (RetryLater.runtimes)
MAX_FETCHES = 8  # `fetch` requests a jobber may have out to one dealer at once
MAX_TASK_NAME = 128  # About.task: a name for people
MAX_CONTACT = 256  # About.contact: an address or URL for people

_SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z")
_KEY_HEX = _SHA256_HEX  # a CurveZMQ public key: 32 bytes as 64 lowercase hex digits
# A guest path: absolute, 1 to 16 components of letters, digits and ._+- (no "." or
# ".." component), so it means the same on every machine and names no host file
_GUEST_PATH = re.compile(r"\A(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9._+-]{1,255}){1,16}\Z")


def chunk_count(size: int) -> int:
    """How many chunks a file of `size` bytes travels in (an empty file: one, empty)."""
    return max(1, -(-size // CHUNK_BYTES))


class Status(str, enum.Enum):
    """How a job ended on a jobber. Part of the wire: sent in each result."""

    OK = "ok"  # the payload exited with code 0
    EXIT = "exit"  # the payload exited with a nonzero code
    FUEL = "fuel"  # out of fuel (instruction budget)
    TIME = "time"  # wall-clock limit reached
    MEMORY = "memory"  # linear memory (or table/instance) limit reached
    OUTPUT = "output"  # tried to write more than the output limit
    STACK = "stack"  # call stack exhausted
    TRAP = "trap"  # unreachable, divide by zero, out-of-bounds access, ...
    INVALID = "invalid"  # not a valid WebAssembly module or not a WASI command
    IMPORT = "import"  # imports something the sandbox does not provide
    CRASH = "crash"  # the worker process running the job died
    ABANDONED = "abandoned"  # the jobber gave the job up without running it to the end


class ErrorCode(str, enum.Enum):
    """Why a request (or one result in it) was refused."""

    MALFORMED = "malformed"  # did not decode as a message
    VERSION = "version"  # a protocol version this peer does not speak
    UNEXPECTED = "unexpected"  # a valid message that makes no sense here
    UNKNOWN_TAG = "unknown_tag"  # no replica with this tag was sent to you
    SETTLED = "settled"  # the job is already decided; the result changes nothing
    DUPLICATE = "duplicate"  # this result was already received
    INTERNAL = "internal"  # the peer failed on its own; try later
    DENIED = "denied"  # this identity is banned from the dealer
    IMPLAUSIBLE = "implausible"  # a result no honest sandbox could give (fuel, output, status)
    FORBIDDEN = "forbidden"  # the request needs the dealer's admin key
    UNKNOWN_FILE = "unknown_file"  # `fetch`: this dealer serves no file of that hash
    BUSY = "busy"  # `fetch`: rationed; ask again after `retry_s`. Not a failure


@record
class Limits(_Record):
    """What one job may use. Every limit exceeded ends the job with its own Status.

    fuel: WebAssembly instructions (roughly 7 to 14 per ns on a current core).
    memory_mb: linear memory in MiB.
    time_s: wall-clock seconds.
    output_kb: stdout in KiB; a write past it fails and the job ends as OUTPUT.
    native_nans: True: NaN bits may be as the jobber's CPU makes them (the dealer lets
    only jobbers of one platform vote together); nil or False: every NaN canonical.
    Not a limit, but how the job runs, so it travels with them to the sandbox.
    checkpoint_kb: what the job's checkpoint directory may hold (sandbox._scratch).
    checkpoint_every_s: how often a jobber sends the job's latest saved state to its
    dealer (`save`); nil: the jobber's own interval. Not a limit either.
    """

    fuel: int = checked(_int(1, 2**62), 100_000_000_000)
    memory_mb: int = checked(_int(1, 65536), 256)
    time_s: float = checked(_float(0.001, 1e7), 60.0)
    output_kb: int = checked(_int(0, MAX_OUTPUT_BYTES // 1024), 1024)
    native_nans: bool | None = checked(_optional(_bool()), None)
    # the most bytes the job's checkpoint directory may hold (/checkpoint, its saved
    # state among them), KiB; nil or 0: it has none
    checkpoint_kb: int | None = checked(_optional(_int(0, MAX_CHECKPOINT_BYTES // 1024)), None)
    # seconds between the saved states a jobber sends its dealer while the job runs
    # (`save`); nil: the jobber's own choice (the reference jobber: CHECKPOINT_EVERY_S)
    checkpoint_every_s: float | None = checked(_optional(_float(1.0, 1e7)), None)

    def __post_init__(self) -> None:
        self._check_self("limits")


@record
class HostFacts(_Record):
    """What a jobber tells a dealer about its machine with each request."""

    cpus: int = checked(_int(1, 1 << 20))
    memory_mb: int = checked(_int(0, 1 << 40))
    slots: int = checked(_int(0, 1 << 20))
    cached: tuple[str, ...] = checked(
        _list(_str(64, _SHA256_HEX), MAX_CACHED), ()
    )  # sha256 hex of payloads the jobber holds
    # the most its owner lets one job use (nil: not said); a dealer whose jobs need
    # more sends none, and a jobber gives back unrun any job that asks for more
    max_time_s: float | None = checked(_optional(_float(0.001, 1e7)), None)
    max_fuel: int | None = checked(_optional(_int(1, 2**62)), None)
    max_output_kb: int | None = checked(_optional(_int(0, MAX_OUTPUT_BYTES // 1024)), None)
    # what a job's bytes depend on beyond the job when its NaNs are native: CPU
    # architecture, OS, wasmtime version and engine flags (sandbox.PLATFORM); nil: not
    # said (a jobber older than the field, which canonicalizes every NaN)
    platform: str | None = checked(_optional(_str(MAX_PLATFORM)), None)
    # how this jobber counts the fuel of jobs whose NaNs are canonical (every job but those
    # with limits.native_nans true), e.g. "nan-guards-1" (sandbox.NAN_FUEL): two jobbers
    # must send the same name only if they give the same fuel for every such job; nil:
    # fuel as cranelift's canonicalization counts it (every jobber older than the field)
    nan_fuel: str | None = checked(_optional(_str(MAX_PLATFORM)), None)
    # the most one job's input files (JobSpec.files) may total here, in MiB; nil: this
    # jobber takes no job with files (every jobber older than them)
    input_mb: int | None = checked(_optional(_int(0, MAX_FILE_BYTES >> 20)), None)
    # sha256 hex of input files the jobber holds whole, most recently used first: a
    # dealer prefers to send it jobs that read them (locality)
    # (nil: none)
    files: tuple[str, ...] | None = checked(
        _optional(_list(_str(64, _SHA256_HEX), MAX_HELD_FILES)), None
    )

    def refuses(self, limits: Limits) -> str | None:
        """Why a job with `limits` is more than this jobber allows, or None."""
        if limits.memory_mb > self.memory_mb:
            return f"{limits.memory_mb} MiB of memory (this machine allows {self.memory_mb})"
        if self.max_time_s is not None and limits.time_s > self.max_time_s:
            return f"{limits.time_s:g} s of time (this machine allows {self.max_time_s:g})"
        if self.max_fuel is not None and limits.fuel > self.max_fuel:
            return f"{limits.fuel} fuel (this machine allows {self.max_fuel})"
        if self.max_output_kb is not None and limits.output_kb > self.max_output_kb:
            return f"{limits.output_kb} KiB of output (this machine allows {self.max_output_kb})"
        return None

    def refuses_inputs(self, size: int) -> str | None:
        """Why a job whose input files total `size` bytes is more than this jobber takes,
        or None."""
        if size == 0:
            return None
        if self.input_mb is None:
            return "input files (this jobber takes none)"
        if size > self.input_mb << 20:
            return f"{size} bytes of input files (this machine allows {self.input_mb} MiB)"
        return None


@record
class FileRef(_Record):
    """An input file, named by its content: what a job reads, and how big it is."""

    hash: str = checked(_str(64, _SHA256_HEX))  # sha256 hex of the file's bytes
    size: int = checked(_int(0, MAX_FILE_BYTES))  # bytes


@record
class Resume(_Record):
    """The saved state a replica starts from (a checkpoint another replica of the job
    sent its dealer), fetched with `fetch` as an input file is, and what the job had used
    when it was saved: a jobber that resumes counts these against the job's limits."""

    hash: str = checked(_str(64, _SHA256_HEX))  # sha256 hex of the state's bytes
    size: int = checked(_int(0, MAX_CHECKPOINT_BYTES))  # bytes
    fuel: int = checked(_int(0, 2**62))  # fuel the job had used when it was saved
    time_s: float = checked(_float(0.0, 1e7))  # running time it had used, seconds


@record
class JobSpec(_Record):
    """One replica of a job, as sent to one jobber."""

    tag: str = checked(_str())
    payload: str = checked(_str(64, _SHA256_HEX))  # sha256 hex of the wasm module
    args: tuple[str, ...] = checked(_list(_str(), MAX_ARGS))
    stdin: bytes = checked(_bytes(MAX_STDIN_BYTES))
    limits: Limits = checked(_record(Limits))
    deadline_s: float = checked(
        _float(0.0, 1e9)
    )  # seconds, from receipt, the dealer waits for the result
    # read-only input files the payload sees, by guest path (nil: none); sent only to a
    # jobber whose host.input_mb holds their total
    files: dict[str, FileRef] | None = checked(
        _optional(_map(_str(4096, _GUEST_PATH), _record(FileRef), MAX_JOB_FILES)),
        None,
        hashed=False,
    )

    # the saved state to start from, instead of from the beginning (nil: the beginning)
    resume: Resume | None = checked(_optional(_record(Resume)), None, hashed=False)

    def input_bytes(self) -> int:
        """What the job's input files total, in bytes."""
        return sum(f.size for f in (self.files or {}).values())

    def fetched(self) -> list[FileRef]:
        """Every file a jobber fetches for this job: its input files, and the saved
        state it resumes from (`resume`), if any."""
        refs = list((self.files or {}).values())
        if self.resume is not None:
            refs.append(FileRef(self.resume.hash, self.resume.size))
        return refs


@record
class Attribution(_Record):
    """A jobber behind a relay, as the relay saw it: the key its CurveZMQ handshake with
    the relay proved, and the address it connected to the relay from. The relay's word:
    a dealer keeps each named jobber's standing apart, but counts its address as a
    machine only from a relay it trusts (`--trust-relay`)."""

    key: str = checked(_str(64, _KEY_HEX))  # CurveZMQ public key, 64 hex digits
    machine: str = checked(_str(256))  # the source address the relay saw


@record
class Standing(_Record):
    """What a dealer holds of one jobber behind a relay, told to that relay (`ack`,
    `alive_ack`), so that the relay can hold its jobber to it: votes it won and lost
    upstream, and whether it is denied there. The dealer's word, for the relay."""

    key: str = checked(
        _str(64, _KEY_HEX)
    )  # the jobber's key, as the relay named it (`by.key`, `behalf.key`)
    valid: int = checked(_int(0, MAX_U64))  # its outputs in an accepted quorum
    invalid: int = checked(_int(0, MAX_U64))  # its outputs that lost the vote
    denied: bool = checked(_bool())  # the dealer gives it no work and refuses its results


@record
class About(_Record):
    """What a dealer says of its batch to the lenders whose machines run it: the task's
    name and how to reach its researcher. Words for people, shown as they are."""

    task: str = checked(_str(MAX_TASK_NAME))  # the task's name
    contact: str | None = checked(
        _optional(_str(MAX_CONTACT)), None
    )  # the researcher's address or URL (nil: not said)


@record
class Account(_Record):
    """What a dealer holds of the jobber it answers, in all (totals, not changes): the
    outputs of its that an accepted quorum took, those that lost the vote, the replicas
    that failed on it and were judged its machine's, and the credit it earned (the fuel
    of its accepted replicas)."""

    valid: int = checked(_int(0, MAX_U64))
    invalid: int = checked(_int(0, MAX_U64))
    errors: int = checked(_int(0, MAX_U64))
    credit: int = checked(_int(0, MAX_U64))


def credit_text(fuel: int | None) -> str:
    """Credit (fuel units) in readable units: 12.3 G. What every program shows of credit
    (the jobber's status, the dealer's dashboard)."""
    if fuel is None:
        return "-"
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if fuel >= size:
            return f"{fuel / size:.1f} {unit}"
    return str(fuel)


@record
class Result(_Record):
    """How one replica ended, sent back with its tag.

    `by`: sent by a relay, the jobber of its that ran it (nil: the sender itself).
    """

    tag: str = checked(_str())
    status: Status = checked(_enum(Status))
    output: bytes = checked(_bytes(MAX_OUTPUT_BYTES), b"")
    fuel: int = checked(_int(0, MAX_U64), 0)  # fuel used
    detail: str = checked(_str(), "")  # human-readable: the trap message, the limit hit
    by: Attribution | None = checked(_optional(_record(Attribution)), None)


@record
class Rejection(_Record):
    """One result the dealer refused, and why. The jobber must not send it again."""

    tag: str = checked(_str())
    code: ErrorCode = checked(_enum(ErrorCode))
    text: str = checked(_str())


MAX_ROTATIONS = 8  # links in one Signature.chain
SIGNATURE_BYTES = 64  # an ed25519 signature
_SIGN_KEY = _str(64, _KEY_HEX)  # an ed25519 public key: 32 bytes as 64 lowercase hex digits


@record
class Rotation(_Record):
    """One link of a key rotation: the key `old` hands over to the key `new`.

    `sig` is old's ed25519 signature of b"borednet key rotation v1\\0" + new's 32 bytes
    (protocol/_signing.py makes and checks it).
    """

    old: str = checked(_SIGN_KEY)  # ed25519 public key, hex
    new: str = checked(_SIGN_KEY)  # ed25519 public key, hex
    sig: bytes = checked(_bytes(SIGNATURE_BYTES, SIGNATURE_BYTES))


@record
class Signature(_Record):
    """A task author's signature of one payload, sent in `jobs.signatures`.

    `sig` is `key`'s ed25519 signature of b"borednet payload v1\\0" + the payload's
    32-byte sha256 digest. `chain` leads, oldest link first, from an older key of the
    author's to `key` (empty: none). Decoding checks only the shapes; whether the
    signature is good and the key trusted is protocol._signing.verify_payload's to say.
    """

    key: str = checked(_SIGN_KEY)  # ed25519 public key, hex
    sig: bytes = checked(_bytes(SIGNATURE_BYTES, SIGNATURE_BYTES))
    chain: tuple[Rotation, ...] = checked(_list(_record(Rotation), MAX_ROTATIONS), ())
