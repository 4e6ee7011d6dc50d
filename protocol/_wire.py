"""The borednet wire: every message a dealer and a jobber exchange.

Theory of operation
-------------------
A jobber holds a ZeroMQ DEALER socket connected to each dealer's ROUTER
socket. Every message is one ZeroMQ frame holding one msgpack map::

    {"v": 1, "type": "<name>", ...fields}

The work socket is CurveZMQ-encrypted: a jobber's identity is the public key
its handshake proved, never a name it writes (``jobber`` fields are labels for
people). A dealer also answers a plaintext socket on the next port up with
its public key (``hello``) and its status, for jobbers that trust on first use.

Requests (``bored``, ``results``, ``status``, ``hello``, ``deny``, ``alive``,
``work_query``) carry an
``id`` chosen by the sender; the reply to a request carries ``re`` equal to
that id, so a late reply to a request that already timed out is recognised
and dropped.

    jobber                          dealer
    bored(id, want=n)      ->
                           <-  jobs(re) | referral(re) | retry_later(re) | error(re)
    results(id, [r...])    ->
                           <-  ack(re, tags, rejected) | error(re)
    status(id)             ->
                           <-  status_reply(re, info) | error(re)
    hello(id)              ->  (plaintext socket)
                           <-  hello_reply(re, key)
    deny(id, key)          ->  (admin key only)
                           <-  admin_reply(re, text) | error(re)

    dealer                          peer dealer (either port)
    work_query(id)         ->
                           <-  work_offer(re, jobs, limits, left, finished)

``jobs`` carries several jobs and ``results`` several results: batching is how
one dealer goes past the message rate of one Python event loop.

This module is the only place that trusts nothing: ``decode`` checks the
version, the type, every field's type and every size cap, and raises
:class:`ProtocolError` (never anything else) for bytes that are not a valid
message. docs/protocol.md is the description for other implementations; keep
the two in step.
"""

from __future__ import annotations

import enum
import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack

VERSION = 2  # 2: CurveZMQ identities, hello, deny; see docs/protocol.md

# Size caps. A payload module is the largest thing on the wire; 32 MiB leaves
# room for real programs (a C kernel is ~50 KB) while a single frame cannot
# exhaust a dealer's or jobber's memory.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024
MAX_BATCH = 4096  # jobs in one `jobs`, results in one `results`
MAX_ARGS = 1024
MAX_STR = 4096  # tags, args, ids, addresses, texts
MAX_STDIN_BYTES = 16 * 1024 * 1024
MAX_OUTPUT_BYTES = 32 * 1024 * 1024
MAX_CACHED = 4096  # payload hashes a jobber may report
MAX_PAYLOADS = 64  # payloads (and signatures of payloads) in one `jobs`
MAX_HOLDING = 8192  # tags a jobber may say it holds from one dealer (quotas keep it far below)
MAX_PLATFORM = 256  # HostFacts.platform: a name, compared for equality only
MAX_U64 = 2**64 - 1

_SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z")
_KEY_HEX = _SHA256_HEX  # a CurveZMQ public key: 32 bytes as 64 lowercase hex digits


class ProtocolError(ValueError):
    """The bytes or fields given are not a valid borednet message."""


class VersionError(ProtocolError):
    """A well-formed frame of a protocol version this side does not speak."""


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


# --- field checkers -------------------------------------------------------
# Each checker has `parse(v)`, the Python value to store for the decoded msgpack
# value `v`, and `valid(v)`, the same checks without building anything (encode
# uses it). Both raise _Bad naming what is wrong; where it is wrong is added on
# the way out of each container, so the path is only ever formatted for an
# error, never for a field that is fine.


class _Bad(ProtocolError):
    """A refused value, and the path to it (innermost segment first) as it is found."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text
        self.path: list[str] = []

    def at(self, where: str) -> ProtocolError:
        return ProtocolError(f"{where}{''.join(reversed(self.path))}: {self.text}")


class Check:
    optional = False  # may be left out of its record (reads as nil)

    def parse(self, v: Any) -> Any:
        raise NotImplementedError

    def valid(self, v: Any) -> None:
        self.parse(v)

    def __call__(self, v: Any, where: str) -> Any:
        """Parse `v`, naming `where` in the error (for callers outside this module)."""
        try:
            return self.parse(v)
        except _Bad as e:
            raise e.at(where) from None


class _Int(Check):
    __slots__ = ("hi", "lo")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi

    def parse(self, v: Any) -> int:
        if type(v) is not int or not self.lo <= v <= self.hi:
            raise _Bad(f"expected an integer in [{self.lo}, {self.hi}], got {_show(v)}")
        return v

    valid = parse


class _Float(Check):
    __slots__ = ("hi", "lo")

    def __init__(self, lo: float, hi: float) -> None:
        self.lo, self.hi = lo, hi

    def parse(self, v: Any) -> float:
        if type(v) not in (int, float) or not math.isfinite(v) or not self.lo <= v <= self.hi:
            raise _Bad(f"expected a number in [{self.lo}, {self.hi}], got {_show(v)}")
        return float(v)


class _Str(Check):
    __slots__ = ("max_len", "pattern")

    def __init__(self, max_len: int, pattern: re.Pattern[str] | None) -> None:
        self.max_len, self.pattern = max_len, pattern

    def parse(self, v: Any) -> str:
        if type(v) is not str or len(v) > self.max_len:
            raise _Bad(f"expected a string of at most {self.max_len} characters")
        if self.pattern is not None and not self.pattern.match(v):
            raise _Bad(f"{_show(v)} does not match {self.pattern.pattern}")
        return v

    valid = parse


class _Bool(Check):
    def parse(self, v: Any) -> bool:
        if type(v) is not bool:
            raise _Bad(f"expected true or false, got {_show(v)}")
        return v

    valid = parse


class _Bytes(Check):
    __slots__ = ("max_len", "min_len", "size")

    def __init__(self, max_len: int, min_len: int) -> None:
        self.max_len, self.min_len = max_len, min_len
        self.size = f"exactly {max_len}" if min_len == max_len else f"at most {max_len}"

    def parse(self, v: Any) -> bytes:
        if type(v) is not bytes or not self.min_len <= len(v) <= self.max_len:
            raise _Bad(f"expected binary of {self.size} bytes")
        return v

    valid = parse


class _Enum(Check):
    __slots__ = ("cls", "values")

    def __init__(self, cls: type[enum.Enum]) -> None:
        self.cls = cls
        self.values = {m.value: m for m in cls}

    def parse(self, v: Any) -> Any:
        try:
            return self.values[v]
        except (KeyError, TypeError):
            allowed = ", ".join(m.value for m in self.cls)
            raise _Bad(f"expected one of {allowed}, got {_show(v)}") from None


class _List(Check):
    __slots__ = ("item", "max_len")

    def __init__(self, item: Check, max_len: int) -> None:
        self.item, self.max_len = item, max_len

    def _shape(self, v: Any) -> None:
        if type(v) is not list or len(v) > self.max_len:
            raise _Bad(f"expected a list of at most {self.max_len} items")

    def parse(self, v: Any) -> tuple[Any, ...]:
        self._shape(v)
        parse = self.item.parse
        out = []
        for i, x in enumerate(v):
            try:
                out.append(parse(x))
            except _Bad as e:
                e.path.append(f"[{i}]")
                raise
        return tuple(out)

    def valid(self, v: Any) -> None:
        self._shape(v)
        valid = self.item.valid
        for i, x in enumerate(v):
            try:
                valid(x)
            except _Bad as e:
                e.path.append(f"[{i}]")
                raise


class _Map(Check):
    __slots__ = ("key", "max_len", "value")

    def __init__(self, key: Check, value: Check, max_len: int) -> None:
        self.key, self.value, self.max_len = key, value, max_len

    def parse(self, v: Any) -> dict[Any, Any]:
        if type(v) is not dict or len(v) > self.max_len:
            raise _Bad(f"expected a map of at most {self.max_len} entries")
        out = {}
        for k, x in v.items():
            try:
                k2 = self.key.parse(k)
            except _Bad as e:
                e.path.append(" key")
                raise
            try:
                out[k2] = self.value.parse(x)
            except _Bad as e:
                e.path.append(f"[{k!r}]")
                raise
        return out


MAX_DEPTH = 8  # nesting allowed inside free-form maps (status_reply.info)


def _depth(v: Any, limit: int) -> bool:
    """True if `v` nests no deeper than `limit` lists/maps."""
    if type(v) in (list, dict):
        if limit == 0:
            return False
        items = v.values() if type(v) is dict else v
        return all(_depth(x, limit - 1) for x in items)
    return True


class _AnyMap(Check):
    __slots__ = ("max_len",)

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len

    def parse(self, v: Any) -> dict[str, Any]:
        if type(v) is not dict or len(v) > self.max_len:
            raise _Bad("expected a map")
        if not _depth(v, MAX_DEPTH):
            raise _Bad(f"nested deeper than {MAX_DEPTH}")
        return v

    valid = parse


class _Optional(Check):
    __slots__ = ("inner",)
    optional = True

    def __init__(self, inner: Check) -> None:
        self.inner = inner

    def parse(self, v: Any) -> Any:
        return None if v is None else self.inner.parse(v)

    def valid(self, v: Any) -> None:
        if v is not None:
            self.inner.valid(v)


class _RecordOf(Check):
    __slots__ = ("cls",)

    def __init__(self, cls: type[_Record]) -> None:
        self.cls = cls

    def parse(self, v: Any) -> Any:
        return self.cls._parse(v)

    def valid(self, v: Any) -> None:
        self.cls._valid(v)


def _int(lo: int = 0, hi: int = MAX_U64) -> Check:
    return _Int(lo, hi)


def _float(lo: float = 0.0, hi: float = 1e12) -> Check:
    return _Float(lo, hi)


def _str(max_len: int = MAX_STR, pattern: re.Pattern[str] | None = None) -> Check:
    return _Str(max_len, pattern)


def _bool() -> Check:
    return _Bool()


def _bytes(max_len: int, min_len: int = 0) -> Check:
    return _Bytes(max_len, min_len)


def _enum(cls: type[enum.Enum]) -> Check:
    return _Enum(cls)


def _list(item: Check, max_len: int) -> Check:
    return _List(item, max_len)


def _map(key: Check, value: Check, max_len: int) -> Check:
    return _Map(key, value, max_len)


def _any_map(max_len: int = 4096) -> Check:
    return _AnyMap(max_len)


def _optional(check: Check) -> Check:
    return _Optional(check)


def _record(cls: type[_Record]) -> Check:
    return _RecordOf(cls)


_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 100, 60


def _show(v: Any) -> str:
    """A short, safe rendering of a value from the wire (deeply nested ones too)."""
    return _REPR.repr(v)


# --- records --------------------------------------------------------------

_SCALARS = (int, str, bytes, float, bool, type(None))


class _Record:
    """A frozen dataclass with a schema: {field name: checker}."""

    __slots__ = ()
    _SCHEMA: ClassVar[dict[str, Check]]
    # (name, checker, optional) in schema order, and the dataclass's field names;
    # made once per class on first use
    _PLAN: ClassVar[tuple[tuple[str, Check, bool], ...]]
    _NAMES: ClassVar[tuple[tuple[str, bool], ...]]
    _parse_fields: ClassVar[Any]
    _valid_fields: ClassVar[Any]

    @classmethod
    def _plan(cls) -> tuple[tuple[str, Check, bool], ...]:
        plan = cls.__dict__.get("_PLAN")
        if plan is None:
            plan = tuple((n, c, c.optional) for n, c in cls._SCHEMA.items())
            cls._parse_fields = staticmethod(_compile(cls, plan, parse=True))
            cls._valid_fields = staticmethod(_compile(cls, plan, parse=False))
            # _NAMES and _PLAN last, _PLAN the very last: they are what says the rest is
            # made, and another thread (a jobber's allocator link) may be encoding the
            # same class for the first time at this moment
            cls._NAMES = tuple(
                (f.name, getattr(cls._SCHEMA.get(f.name), "optional", False))
                for f in fields(cls)  # type: ignore[arg-type]
            )
            cls._PLAN = plan
        return plan

    def _to_wire(self) -> dict[str, Any]:
        cls = type(self)
        if "_NAMES" not in cls.__dict__:
            cls._plan()
        out: dict[str, Any] = {}
        for name, optional in cls._NAMES:
            value = getattr(self, name)
            if value is None and optional:
                continue  # an optional field left out reads as nil
            out[name] = value if type(value) in _SCALARS else _to_wire(value)
        return out

    @classmethod
    def _parse(cls, v: Any) -> Any:
        if "_PLAN" not in cls.__dict__:
            cls._plan()
        kwargs = cls._parse_fields(v)
        try:
            return cls(**kwargs)
        except _Bad:
            raise
        except (TypeError, ValueError) as e:
            raise _Bad(str(e)) from e

    @classmethod
    def _valid(cls, v: Any) -> None:
        if "_PLAN" not in cls.__dict__:
            cls._plan()
        cls._valid_fields(v)

    @classmethod
    def _from_wire(cls, v: Any, where: str) -> Any:
        """The record `v` (a decoded msgpack map) describes; ProtocolError naming `where`."""
        try:
            return cls._parse(v)
        except _Bad as e:
            raise e.at(where) from None


def _compile(cls: type, plan: tuple[tuple[str, Check, bool], ...], parse: bool):
    """A function checking (and with `parse`, converting) the fields of a map for `cls`,
    written out field by field, as dataclasses writes its __init__: the generic loop was
    most of the codec's time. Same checks, same messages."""
    lines = [
        "def fields_of(v):",
        "    if type(v) is not dict:",
        "        raise _Bad(f'expected a map, got {_show(v)}')",
    ]
    env: dict[str, Any] = {"_Bad": _Bad, "_show": _show}
    out = []
    for i, (name, check, optional) in enumerate(plan):
        env[f"c{i}"] = check.parse if parse else check.valid
        if optional:
            lines += [
                f"    x = v.get({name!r})",
                "    if x is None:",
                f"        a{i} = None",
                "    else:",
                "        try:",
                f"            a{i} = c{i}(x)",
                "        except _Bad as e:",
                f"            e.path.append({'.' + name!r})",
                "            raise",
            ]
        else:
            lines += [
                "    try:",
                f"        x = v[{name!r}]",
                "    except KeyError:",
                f"        raise _Bad({f'missing field {name!r}'!r}) from None",
                "    try:",
                f"        a{i} = c{i}(x)",
                "    except _Bad as e:",
                f"        e.path.append({'.' + name!r})",
                "        raise",
            ]
        out.append(f"{name!r}: a{i}")
    lines.append("    return {" + ", ".join(out) + "}" if parse else "    return None")
    exec("\n".join(lines), env)  # noqa: S102 - code made here from the class's own schema
    return env["fields_of"]


def _to_wire(v: Any) -> Any:
    if type(v) in _SCALARS:
        return v
    if isinstance(v, _Record):
        return v._to_wire()
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, tuple | list):
        return [x if type(x) in _SCALARS else _to_wire(x) for x in v]
    if isinstance(v, Mapping):
        return {k: x if type(x) in _SCALARS else _to_wire(x) for k, x in v.items()}
    return v


@dataclass(frozen=True, slots=True)
class Limits(_Record):
    """What one job may use. Every limit exceeded ends the job with its own Status.

    fuel: WebAssembly instructions (roughly 7 to 14 per ns on a current core).
    memory_mb: linear memory in MiB.
    time_s: wall-clock seconds.
    output_kb: stdout in KiB; a write past it fails and the job ends as OUTPUT.
    native_nans: True: NaN bits may be as the jobber's CPU makes them (the dealer lets
    only jobbers of one platform vote together); nil or False: every NaN canonical.
    Not a limit, but how the job runs, so it travels with them to the sandbox.
    """

    fuel: int = 100_000_000_000
    memory_mb: int = 256
    time_s: float = 60.0
    output_kb: int = 1024
    native_nans: bool | None = None

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "fuel": _int(1, 2**62),
        "memory_mb": _int(1, 65536),
        "time_s": _float(0.001, 1e7),
        "output_kb": _int(0, MAX_OUTPUT_BYTES // 1024),
        "native_nans": _optional(_bool()),
    }

    def __post_init__(self) -> None:
        for name, check in self._SCHEMA.items():
            try:
                check.valid(getattr(self, name))
            except _Bad as e:
                raise e.at(f"limits.{name}") from None


@dataclass(frozen=True, slots=True)
class HostFacts(_Record):
    """What a jobber tells a dealer about its machine with each request."""

    cpus: int
    memory_mb: int
    slots: int
    cached: tuple[str, ...] = ()  # sha256 hex of payloads the jobber holds
    # the most its owner lets one job use (nil: not said); a dealer whose jobs need
    # more sends none, and a jobber gives back unrun any job that asks for more
    max_time_s: float | None = None
    max_fuel: int | None = None
    max_output_kb: int | None = None
    # what a job's bytes depend on beyond the job when its NaNs are native: CPU
    # architecture, OS, wasmtime version and engine flags (sandbox.PLATFORM); nil: not
    # said (a jobber older than the field, which canonicalizes every NaN)
    platform: str | None = None

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "cpus": _int(1, 1 << 20),
        "memory_mb": _int(0, 1 << 40),
        "slots": _int(0, 1 << 20),
        "cached": _list(_str(64, _SHA256_HEX), MAX_CACHED),
        "max_time_s": _optional(_float(0.001, 1e7)),
        "max_fuel": _optional(_int(1, 2**62)),
        "max_output_kb": _optional(_int(0, MAX_OUTPUT_BYTES // 1024)),
        "platform": _optional(_str(MAX_PLATFORM)),
    }

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


@dataclass(frozen=True, slots=True)
class JobSpec(_Record):
    """One replica of a job, as sent to one jobber."""

    tag: str
    payload: str  # sha256 hex of the wasm module
    args: tuple[str, ...]
    stdin: bytes
    limits: Limits
    deadline_s: float  # seconds, from receipt, the dealer waits for the result

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "tag": _str(),
        "payload": _str(64, _SHA256_HEX),
        "args": _list(_str(), MAX_ARGS),
        "stdin": _bytes(MAX_STDIN_BYTES),
        "limits": _record(Limits),
        "deadline_s": _float(0.0, 1e9),
    }


@dataclass(frozen=True, slots=True)
class Attribution(_Record):
    """A jobber behind a relay, as the relay saw it: the key its CurveZMQ handshake with
    the relay proved, and the address it connected to the relay from. The relay's word:
    a dealer keeps each named jobber's standing apart, but counts its address as a
    machine only from a relay it trusts (`--trust-relay`)."""

    key: str  # CurveZMQ public key, 64 hex digits
    machine: str  # the source address the relay saw

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "key": _str(64, _KEY_HEX),
        "machine": _str(256),
    }


@dataclass(frozen=True, slots=True)
class Standing(_Record):
    """What a dealer holds of one jobber behind a relay, told to that relay (`ack`,
    `alive_ack`), so that the relay can hold its jobber to it: votes it won and lost
    upstream, and whether it is denied there. The dealer's word, for the relay."""

    key: str  # the jobber's key, as the relay named it (`by.key`, `behalf.key`)
    valid: int  # its outputs in an accepted quorum
    invalid: int  # its outputs that lost the vote
    denied: bool  # the dealer gives it no work and refuses its results

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "key": _str(64, _KEY_HEX),
        "valid": _int(0, MAX_U64),
        "invalid": _int(0, MAX_U64),
        "denied": _bool(),
    }


@dataclass(frozen=True, slots=True)
class Result(_Record):
    """How one replica ended, sent back with its tag.

    `by`: sent by a relay, the jobber of its that ran it (nil: the sender itself).
    """

    tag: str
    status: Status
    output: bytes = b""
    fuel: int = 0  # fuel used
    detail: str = ""  # human-readable: the trap message, the limit hit
    by: Attribution | None = None

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "tag": _str(),
        "status": _enum(Status),
        "output": _bytes(MAX_OUTPUT_BYTES),
        "fuel": _int(0, MAX_U64),
        "detail": _str(),
        "by": _optional(_record(Attribution)),
    }


@dataclass(frozen=True, slots=True)
class Rejection(_Record):
    """One result the dealer refused, and why. The jobber must not send it again."""

    tag: str
    code: ErrorCode
    text: str

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "tag": _str(),
        "code": _enum(ErrorCode),
        "text": _str(),
    }


MAX_ROTATIONS = 8  # links in one Signature.chain
SIGNATURE_BYTES = 64  # an ed25519 signature
_SIGN_KEY = _str(64, _KEY_HEX)  # an ed25519 public key: 32 bytes as 64 lowercase hex digits


@dataclass(frozen=True, slots=True)
class Rotation(_Record):
    """One link of a key rotation: the key `old` hands over to the key `new`.

    `sig` is old's ed25519 signature of b"borednet key rotation v1\\0" + new's 32 bytes
    (protocol/_signing.py makes and checks it).
    """

    old: str  # ed25519 public key, hex
    new: str  # ed25519 public key, hex
    sig: bytes

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "old": _SIGN_KEY,
        "new": _SIGN_KEY,
        "sig": _bytes(SIGNATURE_BYTES, SIGNATURE_BYTES),
    }


@dataclass(frozen=True, slots=True)
class Signature(_Record):
    """A task author's signature of one payload, sent in `jobs.signatures`.

    `sig` is `key`'s ed25519 signature of b"borednet payload v1\\0" + the payload's
    32-byte sha256 digest. `chain` leads, oldest link first, from an older key of the
    author's to `key` (empty: none). Decoding checks only the shapes; whether the
    signature is good and the key trusted is protocol._signing.verify_payload's to say.
    """

    key: str  # ed25519 public key, hex
    sig: bytes
    chain: tuple[Rotation, ...] = ()

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "key": _SIGN_KEY,
        "sig": _bytes(SIGNATURE_BYTES, SIGNATURE_BYTES),
        "chain": _list(_record(Rotation), MAX_ROTATIONS),
    }


# --- messages -------------------------------------------------------------


class Message(_Record):
    __slots__ = ()
    TYPE: ClassVar[str]


_ID = _int(0, MAX_U64)
_JOBBER = _str(256)


@dataclass(frozen=True, slots=True)
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
    id: int
    jobber: str  # a label for people; the identity is the CurveZMQ key
    host: HostFacts
    want: int = 1
    holding: tuple[str, ...] | None = None
    # sent by a relay: the jobs are for this jobber of its (nil: for the sender itself)
    behalf: Attribution | None = None

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "id": _ID,
        "jobber": _JOBBER,
        "host": _record(HostFacts),
        "want": _int(0, MAX_BATCH),
        "holding": _optional(_list(_str(), MAX_HOLDING)),
        "behalf": _optional(_record(Attribution)),
    }


@dataclass(frozen=True, slots=True)
class Jobs(Message):
    """Dealer -> jobber: jobs to run; payload bytes for hashes the jobber lacks.

    `signatures`: the author's signature of payloads the jobs use, by hash, sent even
    when the bytes are not (the jobber may hold them already). nil: the dealer signs
    nothing. Optional, so a version 2 peer that predates it ignores it.
    """

    TYPE: ClassVar[str] = "jobs"
    re: int
    jobs: tuple[JobSpec, ...]
    payloads: dict[str, bytes] = field(default_factory=dict)
    signatures: dict[str, Signature] | None = None

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "re": _ID,
        "jobs": _list(_record(JobSpec), MAX_BATCH),
        "payloads": _map(_str(64, _SHA256_HEX), _bytes(MAX_PAYLOAD_BYTES), MAX_PAYLOADS),
        "signatures": _optional(_map(_str(64, _SHA256_HEX), _record(Signature), MAX_PAYLOADS)),
    }


@dataclass(frozen=True, slots=True)
class Referral(Message):
    """Dealer -> jobber: no work here; these dealers may have some."""

    TYPE: ClassVar[str] = "referral"
    re: int
    dealers: tuple[str, ...]

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "re": _ID,
        "dealers": _list(_str(256), 64),
    }


@dataclass(frozen=True, slots=True)
class RetryLater(Message):
    """Dealer -> jobber: no work for you now; ask again after `seconds`."""

    TYPE: ClassVar[str] = "retry_later"
    re: int
    seconds: float
    reason: str | None = None  # why, for the jobber's log (nil: not said)
    more: bool | None = None  # true: unsettled work here may still come to you (nil: not said)

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "re": _ID,
        "seconds": _float(0.0, 1e7),
        "reason": _optional(_str()),
        "more": _optional(_bool()),
    }


@dataclass(frozen=True, slots=True)
class Finished(Message):
    """Dealer -> jobber: this dealer's task is done; there will be no more work here.

    Deliver what you hold for it (it stays a few seconds to take late results),
    then stop asking it.
    """

    TYPE: ClassVar[str] = "finished"
    re: int

    _SCHEMA: ClassVar[dict[str, Check]] = {"re": _ID}


@dataclass(frozen=True, slots=True)
class Results(Message):
    """Jobber -> dealer: finished replicas."""

    TYPE: ClassVar[str] = "results"
    id: int
    jobber: str
    results: tuple[Result, ...]

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "id": _ID,
        "jobber": _JOBBER,
        "results": _list(_record(Result), MAX_BATCH),
    }


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """Dealer -> jobber: these results are durably recorded; those were refused.

    Either way the jobber is done with every tag named here.

    `standing`: to a relay, the standing of the jobbers its results named (`by`); nil
    otherwise, and from a dealer that predates the field.
    """

    TYPE: ClassVar[str] = "ack"
    re: int
    tags: tuple[str, ...]
    rejected: tuple[Rejection, ...] = ()
    standing: tuple[Standing, ...] | None = None

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "re": _ID,
        "tags": _list(_str(), MAX_BATCH),
        "rejected": _list(_record(Rejection), MAX_BATCH),
        "standing": _optional(_list(_record(Standing), MAX_BATCH)),
    }


@dataclass(frozen=True, slots=True)
class Error(Message):
    """Either way: the request (`re`, or 0 if it could not be read) was refused."""

    TYPE: ClassVar[str] = "error"
    re: int
    code: ErrorCode
    text: str

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "re": _ID,
        "code": _enum(ErrorCode),
        "text": _str(),
    }


@dataclass(frozen=True, slots=True)
class StatusQuery(Message):
    """Anyone -> dealer: report your tasks and jobbers (jobbers listed a page at a time)."""

    TYPE: ClassVar[str] = "status"
    id: int
    page: int | None = None  # nil: the first page (0)

    _SCHEMA: ClassVar[dict[str, Check]] = {"id": _ID, "page": _optional(_int(0, 1 << 20))}


@dataclass(frozen=True, slots=True)
class StatusReply(Message):
    """Dealer -> asker: a map of counts and records (see docs/protocol.md)."""

    TYPE: ClassVar[str] = "status_reply"
    re: int
    info: dict[str, Any]

    _SCHEMA: ClassVar[dict[str, Check]] = {"re": _ID, "info": _any_map()}


_KEY = _str(64, _KEY_HEX)
ALIVE_INTERVAL_S = 5.0  # how often a jobber holding work from a dealer says it is alive


@dataclass(frozen=True, slots=True)
class Alive(Message):
    """Jobber -> dealer: I am alive (sent every ALIVE_INTERVAL_S while holding its work).

    `holding` as in `bored`: the tags from this dealer the jobber still has.
    """

    TYPE: ClassVar[str] = "alive"
    id: int
    jobber: str
    holding: tuple[str, ...] | None = None

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "id": _ID,
        "jobber": _JOBBER,
        "holding": _optional(_list(_str(), MAX_HOLDING)),
    }


@dataclass(frozen=True, slots=True)
class AliveAck(Message):
    """Dealer -> jobber: heard. `lease_s`: silence after which you are taken as gone.

    `cancel`: held tags whose jobs are settled; stop running them, send nothing for them.
    `standing`: the standing of every jobber the dealer keeps behind the sender (a relay;
    empty for a jobber that named none); nil from a dealer that keeps none (older ones).
    """

    TYPE: ClassVar[str] = "alive_ack"
    re: int
    lease_s: float
    cancel: tuple[str, ...] = ()
    standing: tuple[Standing, ...] | None = None

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "re": _ID,
        "lease_s": _float(1.0, 1e6),
        "cancel": _list(_str(), MAX_HOLDING),
        "standing": _optional(_list(_record(Standing), MAX_BATCH)),
    }


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """Anyone -> dealer's plaintext socket: which public key does your work socket have?"""

    TYPE: ClassVar[str] = "hello"
    id: int

    _SCHEMA: ClassVar[dict[str, Check]] = {"id": _ID}


@dataclass(frozen=True, slots=True)
class HelloReply(Message):
    """Dealer -> asker: the work socket's public key, 64 lowercase hex digits."""

    TYPE: ClassVar[str] = "hello_reply"
    re: int
    key: str

    _SCHEMA: ClassVar[dict[str, Check]] = {"re": _ID, "key": _KEY}


@dataclass(frozen=True, slots=True)
class Deny(Message):
    """Admin -> dealer: ban the identity `key` (it gets no work and its results are refused)."""

    TYPE: ClassVar[str] = "deny"
    id: int
    key: str
    reason: str

    _SCHEMA: ClassVar[dict[str, Check]] = {"id": _ID, "key": _KEY, "reason": _str()}


@dataclass(frozen=True, slots=True)
class AdminReply(Message):
    """Dealer -> admin: the request was carried out and made durable."""

    TYPE: ClassVar[str] = "admin_reply"
    re: int
    text: str

    _SCHEMA: ClassVar[dict[str, Check]] = {"re": _ID, "text": _str()}


@dataclass(frozen=True, slots=True)
class WorkQuery(Message):
    """Dealer -> peer dealer (either port): what work can you hand out now?"""

    TYPE: ClassVar[str] = "work_query"
    id: int

    _SCHEMA: ClassVar[dict[str, Check]] = {"id": _ID}


@dataclass(frozen=True, slots=True)
class WorkOffer(Message):
    """Dealer -> asker: how much work it can hand out now, and what one job needs.

    `jobs`: jobs that want a replica now, plus those it could draw into its window
    now (a cheap measure, not a promise). `limits`: what each of its jobs asks for
    (a jobber whose HostFacts.refuses them cannot run them); nil: it hands out no
    jobs of its own (a referral-only dealer). `left`: jobs of its batch not yet
    settled, nil if it cannot say. `finished`: its batch is done.
    """

    TYPE: ClassVar[str] = "work_offer"
    re: int
    jobs: int
    limits: Limits | None = None
    left: int | None = None
    finished: bool | None = None  # nil: not finished

    _SCHEMA: ClassVar[dict[str, Check]] = {
        "re": _ID,
        "jobs": _int(0, MAX_U64),
        "limits": _optional(_record(Limits)),
        "left": _optional(_int(0, MAX_U64)),
        "finished": _optional(_bool()),
    }


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
    )
}


def encode(msg: Message) -> bytes:
    """The single frame that carries `msg`; ProtocolError if `decode` would refuse it."""
    body = msg._to_wire()
    # the same checks decode applies, so nothing leaves that the peer must refuse
    try:
        type(msg)._valid(body)
    except _Bad as e:
        raise e.at(msg.TYPE) from None
    body["v"] = VERSION
    body["type"] = msg.TYPE
    try:
        data = msgpack.packb(body, use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as e:  # e.g. lone surrogates
        raise ProtocolError(f"{msg.TYPE}: cannot encode: {e}") from e
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{msg.TYPE} message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def decode(data: bytes) -> Message:
    """Parse one frame; raise ProtocolError for anything that is not a valid message."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        body = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except Exception as e:  # msgpack raises many types (ExtraData, FormatError, ...)
        raise ProtocolError(f"not msgpack: {type(e).__name__}: {e}") from e
    if type(body) is not dict:
        raise ProtocolError(f"expected a msgpack map, got {type(body).__name__}")
    version = body.get("v")
    if type(version) is not int or version != VERSION:
        raise VersionError(f"protocol version {_show(version)} is not {VERSION}")
    kind = body.get("type")
    cls = MESSAGES.get(kind) if type(kind) is str else None
    if cls is None:
        raise ProtocolError(f"unknown message type {_show(kind)}")
    return cls._from_wire(body, kind)


def request_id(data: bytes) -> int:
    """Best effort: the `id` of a request that failed to decode, else 0."""
    try:
        body = msgpack.unpackb(data, raw=False)
        rid = body.get("id") if type(body) is dict else None
    except Exception:
        return 0
    return rid if type(rid) is int and 0 <= rid <= MAX_U64 else 0
