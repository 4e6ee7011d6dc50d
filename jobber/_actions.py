"""What passes between the jobber's core and its shell: the actions the core queues
(the shell carries them out, in order) and the events it is fed beyond messages and
outcomes (the shell reports what it saw; the core decides what follows).
"""

from __future__ import annotations

from dataclasses import dataclass

import protocol as p

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
    # the saved state it starts from: its own, spooled by the shell (`local`), or the one
    # the dealer named (spec.resume, in the file store); None: from the beginning
    resume: p.Resume | None = None
    local: bool = False


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


@dataclass(frozen=True, slots=True)
class KeepChunk:
    """Write chunk `index` of input file `sha` (of `size` bytes) to the file store, its
    checks passed; `digests` (every chunk's SHA-256) come with chunk 0, to be kept beside
    the partial file. Once the file has every chunk, the shell checks it whole and says
    FileKept or FileBad (or FileStoreFailed, if the disk would not take it)."""

    sha: str
    size: int
    index: int
    data: bytes
    digests: tuple[bytes, ...] | None = None


@dataclass(frozen=True, slots=True)
class DropFile:
    """The core forgot partial input file `sha` (no job in hand reads it, or two dealers
    disagree on it and it starts over from chunk 0): the file store drops it too, its
    chunks, digests and running hash, so the two never differ on what is kept."""

    sha: str


@dataclass(frozen=True, slots=True)
class PrepareRuntime:
    """Make pinned runtime `sha` ready to run: its module (input file `sha`, held whole)
    into the payload cache and compiled there, off the loop, at low priority, under the
    runtime's compile fences (sandbox prepare); the shell reports RuntimePrepared."""

    sha: str


@dataclass(frozen=True, slots=True)
class DownloadRuntime:
    """Take pinned runtime `sha`'s module and files from the package index (the owner's
    --runtimes-from-index), off the loop, each checked by its hash, into the file store
    whole; the shell reports RuntimeDownloaded."""

    sha: str


@dataclass(frozen=True, slots=True)
class Suspend:
    """Stop the slots' workers where they are (the owner's activity, the CPU limit)."""


@dataclass(frozen=True, slots=True)
class Resume:
    """Let the slots' workers go on."""


@dataclass(frozen=True, slots=True)
class SendSave:
    """Send chunk `chunk` of the latest saved state of job `tag` to its dealer (`save`,
    request `rid`): the shell reads it from the state it took at chunk 0 (jobber._saving)."""

    dealer: str
    tag: str
    rid: int
    chunk: int


@dataclass(frozen=True, slots=True)
class ForgetState:
    """Job `tag` of `dealer` ended (or was given up): its saved state goes, from memory and
    from the disk."""

    dealer: str
    tag: str


Action = (
    Send
    | Hello
    | Reset
    | Start
    | Stop
    | Spool
    | Unspool
    | Pin
    | ProbeDisk
    | Store
    | KeepChunk
    | DropFile
    | PrepareRuntime
    | DownloadRuntime
    | Suspend
    | Resume
    | SendSave
    | ForgetState
)


# --- events: what the shell saw, for the core to decide on --------------------


@dataclass(frozen=True, slots=True)
class Owner:
    """The machine and its owner this turn, as the shell read them."""

    suspended: bool = False  # the owner said `suspend` (the control socket)
    stopping: bool = False  # the jobber winds down: running jobs get their grace
    computes: bool = True  # inside the pool's compute hours
    asks: bool = True  # inside the pool's network hours
    in_use: bool = False  # idle-only, and the machine is in use (jobber._idle)
    cpu_off: bool = False  # the CPU limit's off-period (jobber._idle.Throttle)
    # an owner's preference holds the jobs, and why: outside the owner's compute hours,
    # on batteries, a job bigger than the memory allowed while the machine is in use
    held: str = ""


@dataclass(frozen=True, slots=True)
class Untrusted:
    """A payload of a `jobs` not signed by a key the owner trusts (--trust), and why."""

    sha: str
    reason: str


@dataclass(frozen=True, slots=True)
class BadHash:
    """A payload of a `jobs` whose bytes hash to `got`, not to its name."""

    sha: str
    got: str


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """The disk would not keep the payload of jobs taken (a Store), and why."""

    sha: str
    why: str


@dataclass(frozen=True, slots=True)
class PayloadGone:
    """A Start whose payload the cache no longer holds (evicted since the ask), or, with
    `what` "input file", one of whose input files the file store no longer holds."""

    key: str
    payload: str
    what: str = "payload"


@dataclass(frozen=True, slots=True)
class FileKept:
    """Input file `sha` (of `size` bytes) has every chunk and its bytes hash to its name:
    it is held whole."""

    sha: str
    size: int


@dataclass(frozen=True, slots=True)
class FileBad:
    """Input file `sha` has every chunk (each matched its digest), but the whole hashes to
    `got`: it was dropped whole."""

    sha: str
    got: str


@dataclass(frozen=True, slots=True)
class FileStoreFailed:
    """The disk would not keep a chunk of input file `sha` (a KeepChunk), and why."""

    sha: str
    why: str


@dataclass(frozen=True, slots=True)
class Resized:
    """An allocator's instructions changed what this machine gives: slots, memory per
    job, cache bytes."""

    slots: int
    memory_mb: int
    cache_bytes: int


@dataclass(frozen=True, slots=True)
class RuntimePrepared:
    """A PrepareRuntime ended: the runtime is in the payload cache, compiled (`why` ""),
    or it could not be made ready, and why."""

    sha: str
    why: str = ""


@dataclass(frozen=True, slots=True)
class RuntimeDownloaded:
    """A DownloadRuntime ended: the runtime's module and files are in the file store whole
    (`why` ""), or they could not be had from the package index, and why."""

    sha: str
    why: str = ""


@dataclass(frozen=True, slots=True)
class StateSaved:
    """A running job (`dealer`, `tag`) saved its state, of `size` bytes hashing to `sha`,
    and the shell keeps it (in memory and in its spool); `fuel` and `time_s`: what the job
    had used then, from its beginning (what it resumed from included)."""

    dealer: str
    tag: str
    sha: str
    size: int
    fuel: int
    time_s: float


RuntimeEvent = RuntimePrepared | RuntimeDownloaded
Screened = Untrusted | BadHash  # what the shell found of a `jobs` message's payloads
Event = (
    Owner
    | StoreFailed
    | PayloadGone
    | Resized
    | FileKept
    | FileBad
    | FileStoreFailed
    | RuntimePrepared
    | RuntimeDownloaded
    | StateSaved
)
