"""Every cap of the wire, at the cap and one past it, generated from the schemas.

Each record's and message's `_SCHEMA` is read back (the bounds its checkers
close over), and for every bounded field in every message a frame is built
at the lower and upper bound (decoded, and the value kept) and one past each
(refused, naming the field and the bound). So a new field or cap gets these
tests without writing any. `PINNED` states the same bounds as docs/protocol.md
does, written out: a cap changed in the code and not in the docs (or a
schema the table does not know) fails `test_every_schema_is_pinned`.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import reprlib
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

import protocol as p
from protocol import _alloc, _messages, _records, _schema

MiB = 1024 * 1024
U64 = 2**64 - 1
HEX64 = r"\A[0-9a-f]{64}\Z"
STR = ("str", 4096, None)
NAME = ("str", 256, None)
HASH = ("str", 64, HEX64)
GUEST_PATH = r"\A(?:/(?!\.\.?(?:/|\Z))[A-Za-z0-9._+-]{1,255}){1,16}\Z"
ID = ("int", 0, U64)

# The bounds docs/protocol.md gives, field by field (sections 3 and 5).
PINNED: dict[str, dict[str, tuple]] = {
    "Limits": {
        "fuel": ("int", 1, 2**62),
        "memory_mb": ("int", 1, 65536),
        "time_s": ("float", 0.001, 1e7),
        "output_kb": ("int", 0, 32768),
        "native_nans": ("optional", ("bool",)),
        "checkpoint_kb": ("optional", ("int", 0, 65536)),
        "checkpoint_every_s": ("optional", ("float", 1.0, 1e7)),
    },
    "HostFacts": {
        "cpus": ("int", 1, 2**20),
        "memory_mb": ("int", 0, 2**40),
        "slots": ("int", 0, 2**20),
        "cached": ("list", 4096, HASH),
        "max_time_s": ("optional", ("float", 0.001, 1e7)),
        "max_fuel": ("optional", ("int", 1, 2**62)),
        "max_output_kb": ("optional", ("int", 0, 32768)),
        "platform": ("optional", NAME),
        "nan_fuel": ("optional", NAME),
        "input_mb": ("optional", ("int", 0, 2**20)),
        "files": ("optional", ("list", 4096, HASH)),
    },
    "FileRef": {"hash": HASH, "size": ("int", 0, 2**40)},
    "Resume": {
        "hash": HASH,
        "size": ("int", 0, 64 * MiB),
        "fuel": ("int", 0, 2**62),
        "time_s": ("float", 0.0, 1e7),
    },
    "JobSpec": {
        "tag": STR,
        "payload": HASH,
        "args": ("list", 1024, STR),
        "stdin": ("bytes", 0, 16 * MiB),
        "limits": ("record", "Limits"),
        "deadline_s": ("float", 0.0, 1e9),
        "files": ("optional", ("map", 256, ("str", 4096, GUEST_PATH), ("record", "FileRef"))),
        "resume": ("optional", ("record", "Resume")),
    },
    "Result": {
        "tag": STR,
        "status": ("enum", "Status"),
        "output": ("bytes", 0, 32 * MiB),
        "fuel": ("int", 0, U64),
        "detail": STR,
        "by": ("optional", ("record", "Attribution")),
    },
    "Attribution": {"key": HASH, "machine": NAME},
    "Standing": {"key": HASH, "valid": ID, "invalid": ID, "denied": ("bool",)},
    "About": {"task": ("str", 128, None), "contact": ("optional", ("str", 256, None))},
    "Account": {"valid": ID, "invalid": ID, "errors": ID, "credit": ID},
    "Rejection": {"tag": STR, "code": ("enum", "ErrorCode"), "text": STR},
    "Rotation": {"old": HASH, "new": HASH, "sig": ("bytes", 64, 64)},
    "Signature": {
        "key": HASH,
        "sig": ("bytes", 64, 64),
        "chain": ("list", 8, ("record", "Rotation")),
    },
    "Bored": {
        "id": ID,
        "jobber": NAME,
        "host": ("record", "HostFacts"),
        "want": ("int", 0, 4096),
        "holding": ("optional", ("list", 8192, STR)),
        "behalf": ("optional", ("record", "Attribution")),
    },
    "Jobs": {
        "re": ID,
        "jobs": ("list", 4096, ("record", "JobSpec")),
        "payloads": ("map", 64, HASH, ("bytes", 0, 32 * MiB)),
        "signatures": ("optional", ("map", 64, HASH, ("record", "Signature"))),
        "about": ("optional", ("record", "About")),
        "account": ("optional", ("record", "Account")),
    },
    "Referral": {"re": ID, "dealers": ("list", 64, NAME)},
    "RetryLater": {
        "re": ID,
        "seconds": ("float", 0.0, 1e7),
        "reason": ("optional", STR),
        "more": ("optional", ("bool",)),
        "runtimes": ("optional", ("list", 8, HASH)),
        "about": ("optional", ("record", "About")),
        "account": ("optional", ("record", "Account")),
    },
    "Finished": {
        "re": ID,
        "about": ("optional", ("record", "About")),
        "account": ("optional", ("record", "Account")),
    },
    "Results": {"id": ID, "jobber": NAME, "results": ("list", 4096, ("record", "Result"))},
    "Ack": {
        "re": ID,
        "tags": ("list", 4096, STR),
        "rejected": ("list", 4096, ("record", "Rejection")),
        "standing": ("optional", ("list", 4096, ("record", "Standing"))),
        "about": ("optional", ("record", "About")),
        "account": ("optional", ("record", "Account")),
    },
    "Error": {
        "re": ID,
        "code": ("enum", "ErrorCode"),
        "text": STR,
        "retry_s": ("optional", ("float", 0.0, 3600.0)),
    },
    "StatusQuery": {"id": ID, "page": ("optional", ("int", 0, 2**20))},
    "StatusReply": {"re": ID, "info": ("any_map", 4096)},
    "Alive": {"id": ID, "jobber": NAME, "holding": ("optional", ("list", 8192, STR))},
    "AliveAck": {
        "re": ID,
        "lease_s": ("float", 1.0, 1e6),
        "cancel": ("list", 8192, STR),
        "standing": ("optional", ("list", 4096, ("record", "Standing"))),
        "about": ("optional", ("record", "About")),
        "account": ("optional", ("record", "Account")),
    },
    "Hello": {"id": ID},
    "HelloReply": {"re": ID, "key": HASH},
    "Deny": {"id": ID, "key": HASH, "reason": STR},
    "AdminReply": {"re": ID, "text": STR},
    # the allocator's (docs/protocol.md, section 10)
    "Prefs": {
        **dict.fromkeys(
            ("start_hour", "end_hour", "net_start_hour", "net_end_hour"),
            ("optional", ("float", 0.0, 24.0)),
        ),
        "max_cpus": ("optional", ("int", 1, 4096)),
        "max_cpus_pct": ("optional", ("float", 1.0, 100.0)),
        "cpu_usage_limit": ("optional", ("float", 1.0, 100.0)),
        "memory_mb": ("optional", ("int", 1, 2**20)),
        "disk_mb": ("optional", ("int", 1, 2**30)),
        "idle_only": ("optional", ("bool",)),
        "idle_after_s": ("optional", ("float", 0.0, 1e7)),
    },
    "Project": {"name": NAME, "dealer": NAME, "share": ("float", 0.0, 1e6)},
    "Instruct": {
        "id": ID,
        "jobber": NAME,
        "pool": NAME,
        "host": ("record", "HostFacts"),
        "serial": ("optional", ("int", 0, U64)),
        "join": ("optional", NAME),
    },
    "Instructions": {
        "re": ID,
        "pool": NAME,
        "serial": ("int", 0, U64),
        "projects": ("list", 64, ("record", "Project")),
        "prefs": ("record", "Prefs"),
        "refresh_s": ("float", 0.1, 1e6),
        "check_s": ("optional", ("float", 0.1, 1e6)),
    },
    "AllocAdmin": {"id": ID, "op": ("str", 64, None), "args": ("any_map", 256)},
    "AllocReply": {"re": ID, "text": STR, "data": ("any_map", 4096)},
    "WorkQuery": {"id": ID},
    "WorkOffer": {
        "re": ID,
        "jobs": ID,
        "limits": ("optional", ("record", "Limits")),
        "left": ("optional", ID),
        "finished": ("optional", ("bool",)),
    },
    "Fetch": {"id": ID, "hash": HASH, "chunk": ("int", 0, 2**18)},
    "Chunk": {
        "re": ID,
        "hash": HASH,
        "chunk": ("int", 0, 2**18),
        "size": ("int", 0, 2**40),
        "data": ("bytes", 0, 4 * MiB),
        "digests": ("optional", ("list", 2**18, ("bytes", 32, 32))),
    },
    "Save": {
        "id": ID,
        "jobber": NAME,
        "tag": STR,
        "hash": HASH,
        "size": ("int", 0, 64 * MiB),
        "chunk": ("int", 0, 16),
        "data": ("bytes", 0, 4 * MiB),
        "fuel": ("int", 0, 2**62),
        "time_s": ("float", 0.0, 1e7),
    },
    "Saved": {"re": ID, "hash": HASH, "next": ("int", 0, 17)},
}


def describe(check: Any) -> tuple:
    """A checker as data: its kind and its bounds."""
    kind = type(check).__name__
    if kind == "_Optional":
        return ("optional", describe(check.inner))
    if kind in ("_Int", "_Float"):
        return (kind[1:].lower(), check.lo, check.hi)
    if kind == "_Str":
        return ("str", check.max_len, None if check.pattern is None else check.pattern.pattern)
    if kind == "_Bytes":
        return ("bytes", check.min_len, check.max_len)
    if kind == "_Bool":
        return ("bool",)
    if kind in ("_Enum", "_RecordOf"):
        return ("enum" if kind == "_Enum" else "record", check.cls.__name__)
    if kind == "_List":
        return ("list", check.max_len, describe(check.item))
    if kind == "_Map":
        return ("map", check.max_len, describe(check.key), describe(check.value))
    if kind == "_AnyMap":
        return ("any_map", check.max_len)
    raise AssertionError(f"unknown checker {kind}")


RECORDS = {
    c.__name__: c
    for module in (_records, _messages, _alloc)
    for c in vars(module).values()
    if isinstance(c, type) and issubclass(c, _schema._Record) and "_SCHEMA" in vars(c)
}


def test_every_schema_is_pinned() -> None:
    assert set(RECORDS) == set(PINNED)
    for name, cls in RECORDS.items():
        assert {f: describe(c) for f, c in cls._SCHEMA.items()} == PINNED[name], name


def test_the_constants_of_the_contract() -> None:
    # the caps that live outside the schemas, as docs/protocol.md states them
    assert (p.VERSION, p.ALIVE_INTERVAL_S, _schema.MAX_DEPTH) == (2, 5.0, 8)
    assert (64 * MiB, 32 * MiB) == (p.MAX_MESSAGE_BYTES, p.MAX_PAYLOAD_BYTES)
    assert (16 * MiB, 32 * MiB, U64) == (
        _records.MAX_STDIN_BYTES,
        _records.MAX_OUTPUT_BYTES,
        _schema.MAX_U64,
    )
    assert (p.MAX_BATCH, _records.MAX_ARGS, p.MAX_STR, p.MAX_CACHED) == (4096, 1024, 4096, 4096)
    assert (p.MAX_PAYLOADS, p.MAX_HOLDING, p.MAX_ROTATIONS, _records.SIGNATURE_BYTES) == (
        64,
        8192,
        8,
        64,
    )
    # input files
    assert (4 * MiB, 2**40, 256) == (p.CHUNK_BYTES, p.MAX_FILE_BYTES, p.MAX_JOB_FILES)
    assert (p.MAX_HELD_FILES, p.MAX_FETCHES) == (4096, 8)
    assert [p.chunk_count(n) for n in (0, 1, 4 * MiB, 4 * MiB + 1)] == [1, 1, 1, 2]


# --- full samples: every optional field present, every list and map non-empty -------

SHA = hashlib.sha256(b"payload").hexdigest()
LIMITS = p.Limits(
    fuel=1000,
    memory_mb=16,
    time_s=1.5,
    output_kb=64,
    native_nans=True,
    checkpoint_kb=64,
    checkpoint_every_s=30.0,
)
HOST = p.HostFacts(
    2,
    1024,
    2,
    (SHA,),
    max_time_s=10.0,
    max_fuel=1000,
    max_output_kb=64,
    platform="x86_64-linux",
    nan_fuel="nan-guards-1",
    input_mb=100,
    files=(SHA,),
)
SPEC = p.JobSpec(
    "t1",
    SHA,
    ("factor",),
    b"in",
    LIMITS,
    60.0,
    {"/input/a.csv": p.FileRef(SHA, 7)},
    p.Resume(SHA, 9, 500, 0.5),
)
SIGNATURE = p.Signature(SHA, bytes(64), (p.Rotation(SHA, SHA, bytes(64)),))
ABOUT = p.About("MonteCarloPi", "ann@lab.example")
ACCOUNT = p.Account(40, 1, 2, 123_456_789)
FULL: dict[str, p.Message] = {
    m.TYPE: m
    for m in (
        p.Bored(1, "ann", HOST, 2, ("t1",), p.Attribution(SHA, "10.0.0.5")),
        p.Jobs(1, (SPEC,), {SHA: b"payload"}, {SHA: SIGNATURE}, ABOUT, ACCOUNT),
        p.Referral(1, ("tcp://other:7117",)),
        p.RetryLater(1, 2.5, "busy", True, (SHA,), ABOUT, ACCOUNT),
        p.Finished(1, ABOUT, ACCOUNT),
        p.Results(
            2, "ann", (p.Result("t1", p.Status.OK, b"7\n", 12, "d", p.Attribution(SHA, "m")),)
        ),
        p.Ack(
            2,
            ("t1",),
            (p.Rejection("t2", p.ErrorCode.SETTLED, "late"),),
            (p.Standing(SHA, 3, 1, False),),
            ABOUT,
            ACCOUNT,
        ),
        p.Error(3, p.ErrorCode.BUSY, "busy: rationed", 0.25),
        p.StatusQuery(4, 0),
        p.StatusReply(4, {"accepted": 3}),
        p.Hello(5),
        p.HelloReply(5, SHA),
        p.Deny(6, SHA, "lost votes"),
        p.AdminReply(6, "denied"),
        p.Alive(7, "ann", ("t1",)),
        p.AliveAck(7, 20.0, ("t1",), (p.Standing(SHA, 0, 4, True),), ABOUT, ACCOUNT),
        p.Instruct(8, "ann", "lab", HOST, 3, "a-join-token"),
        p.Instructions(
            8,
            "lab",
            4,
            (p.Project("a", "tcp://d:7117", 3.0),),
            p.Prefs(1.0, 2.0, 3.0, 4.0, 2, 50.0, 80.0, 512, 1024, True, 60.0),
            60.0,
            5.0,
        ),
        p.AllocAdmin(9, "project_share", {"name": "a"}),
        p.AllocReply(9, "done", {"serial": 4}),
        p.WorkQuery(8),
        p.WorkOffer(8, 12, LIMITS, 40, True),
        p.Fetch(10, SHA, 1),
        p.Chunk(10, SHA, 0, 7, b"abcdefg", (bytes(32),)),
        p.Save(11, "ann", "t1", SHA, 7, 0, b"abcdefg", 500, 0.5),
        p.Saved(11, SHA, 1),
    )
}


def test_the_samples_cover_every_message() -> None:
    assert set(FULL) == set(p.MESSAGES)
    for msg in FULL.values():
        assert p.decode(p.encode(msg)) == msg


def wire(msg: p.Message) -> dict[str, Any]:
    return msgpack.unpackb(p.encode(msg), raw=False)


def fields_of(kind: str) -> Iterator[tuple[tuple, str, tuple]]:
    """(path in the wire map, the name decode gives it, checker) of every field of
    FULL[kind], nested records, list items and map values included."""

    def walk(cls: type, body: dict, path: tuple, where: str) -> Iterator:
        for name, check in cls._SCHEMA.items():
            yield from leaf(describe(check), body[name], (*path, name), f"{where}.{name}")

    def leaf(d: tuple, value: Any, path: tuple, where: str) -> Iterator:
        if d[0] == "optional":
            d = d[1]
        if d[0] == "record":
            yield from walk(RECORDS[d[1]], value, path, where)
            return
        yield path, where, d
        if d[0] == "list":
            yield from leaf(d[2], value[0], (*path, 0), f"{where}[0]")
        elif d[0] == "map":
            key = next(iter(value))
            yield path, f"{where} key", ("key", *d[2])
            yield from leaf(d[3], value[key], (*path, key), f"{where}[{key!r}]")

    yield from walk(p.MESSAGES[kind], wire(FULL[kind]), (), kind)


def put(kind: str, path: tuple, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(wire(FULL[kind]))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return body


def get(body: Any, path: tuple) -> Any:
    for key in path:
        body = body[key]
    return body


def bounds(kind: str, path: tuple, where: str, d: tuple) -> Iterator[tuple]:
    """(path, value, None if decode takes it, else the text its refusal has)."""
    sample = get(wire(FULL[kind]), path[:-1])[path[-1]] if path else None
    name = re.escape(where)
    if d[0] == "int":
        _, lo, hi = d
        text = rf"{name}: expected an integer in \[{lo}, {hi}\]"
        yield path, lo, None
        yield path, hi, None
        yield path, lo - 1, text
        if hi < U64:  # msgpack carries nothing past 2**64 - 1
            yield path, hi + 1, text
    elif d[0] == "float":
        _, lo, hi = d
        text = rf"{name}: expected a number in \[{re.escape(str(lo))}, {re.escape(str(hi))}\]"
        yield path, lo, None
        yield path, hi, None
        yield path, math.nextafter(lo, -math.inf), text
        yield path, math.nextafter(hi, math.inf), text
    elif d[0] == "str":
        _, n, pattern = d
        text = rf"{name}: expected a string of at most {n} characters"
        ok = "0" * n if pattern else "\U0001f600" * n  # code points, not bytes
        yield path, ok, None
        yield path, ok + "0", text
    elif d[0] == "bytes":
        _, lo, hi = d
        size = f"exactly {hi}" if lo == hi else f"at most {hi}"
        text = rf"{name}: expected binary of {size} bytes"
        yield path, bytes(hi), None
        yield path, bytes(hi + 1), text
        if lo:
            if lo != hi:
                yield path, bytes(lo), None
            yield path, bytes(lo - 1), text
    elif d[0] == "list":
        n = d[1]
        text = rf"{name}: expected a list of at most {n} items"
        yield path, [sample[0]] * n, None
        yield path, [sample[0]] * (n + 1), text
    elif d[0] == "map":
        n = d[1]
        first = next(iter(sample.values()))
        if d[2] == ("str", 4096, GUEST_PATH):
            keys = [f"/input/{i}" for i in range(n + 1)]
        else:
            keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n + 1)]
        text = rf"{name}: expected a map of at most {n} entries"
        yield path, dict.fromkeys(keys[:n], first), None
        yield path, dict.fromkeys(keys, first), text
    elif d[0] == "key":  # a map's keys: hashes, or guest paths
        _, _, n, pattern = d
        first = next(iter(sample.values()))
        longest = "0" * n if pattern != GUEST_PATH else ("/" + "a" * 255) * 16
        assert len(longest) == n
        yield path, {longest: first}, None
        yield path, {longest + "0": first}, rf"{name}: expected a string of at most {n}"
    elif d[0] == "bool":
        yield path, True, None
        yield path, False, None
        yield path, 1, rf"{name}: expected true or false, got 1"
    elif d[0] == "any_map":
        n = d[1]
        yield path, {str(i): i for i in range(n)}, None
        yield path, {str(i): i for i in range(n + 1)}, rf"{name}: expected a map"


CASES = [
    (where, path, value, text)
    for kind in sorted(FULL)
    for path, where, d in fields_of(kind)
    for path, value, text in bounds(kind, path, where, d)
]


def case_id(case: tuple) -> str:
    where, path, value, text = case
    size = len(value) if hasattr(value, "__len__") else value
    return f"{where}={size}-{'refused' if text else 'taken'}"


def test_every_bounded_field_has_cases() -> None:
    ids = {case_id(c) for c in CASES}
    assert len(ids) == len(CASES)
    named = {where for where, _, _, _ in CASES}
    for where in ("bored.host.cpus", "bored.host.slots", "bored.host.memory_mb", "alive.holding"):
        assert where in named, where
    assert len(CASES) > 150


@pytest.mark.parametrize(("where", "path", "value", "text"), CASES, ids=map(case_id, CASES))
def test_a_cap_is_taken_at_its_bound_and_refused_one_past_it(
    where: str, path: tuple, value: Any, text: str | None
) -> None:
    kind = where.split(".")[0].split(" ")[0]
    body = put(kind, path, value)
    frame = msgpack.packb(body, use_bin_type=True)
    if text is not None:
        with pytest.raises(p.ProtocolError, match=text):
            p.decode(frame)
        # encode refuses what decode refuses, naming the same field (a bad Limits or
        # Prefs is refused already when it is made)
        try:
            msg = build(p.MESSAGES[kind], body)
        except p.ProtocolError as e:
            assert "limits" in str(e) or "prefs" in str(e)
            return
        with pytest.raises(p.ProtocolError, match=text):
            p.encode(msg)
        return
    msg = p.decode(frame)
    assert p.decode(p.encode(build(p.MESSAGES[kind], body))) == msg
    back = wire(msg)  # taken whole: the value kept, and encode sends it on
    if isinstance(value, dict) and path[-1] in ("payloads", "signatures"):
        assert set(get(back, path)) == set(value)
    elif path[-1] != "payloads" or not isinstance(value, dict):
        kept = get(back, path)
        assert kept == value and type(kept) is type(value) or float(kept) == value


def build(cls: type, body: dict) -> Any:
    """The record a wire map describes, made without any checks but the record's own
    (as a program might make a bad one), so that encode can be asked to refuse it."""
    kw = {}
    for attr, name, check in cls._FIELDS:  # the attribute's name, and the wire's
        if name in body:
            kw[attr] = unchecked(describe(check), body[name])
    return cls(**kw)


def unchecked(d: tuple, v: Any) -> Any:
    if d[0] == "optional":
        return None if v is None else unchecked(d[1], v)
    if d[0] == "record":
        return build(RECORDS[d[1]], v) if isinstance(v, dict) else v
    if d[0] == "list" and isinstance(v, list):
        return tuple(unchecked(d[2], x) for x in v)
    if d[0] == "map" and isinstance(v, dict):
        return {k: unchecked(d[3], x) for k, x in v.items()}
    if d[0] == "enum":
        try:
            return getattr(p, d[1])(v)
        except ValueError:
            return v
    return v


def test_a_checker_called_names_where_its_value_is():
    cpus = p.HostFacts._SCHEMA["cpus"]
    assert cpus(5, "here") == 5
    with pytest.raises(p.ProtocolError, match=r"^here: expected an integer in \[1, 1048576\]"):
        cpus(0, "here")
    cached = p.HostFacts._SCHEMA["cached"]
    with pytest.raises(p.ProtocolError, match=r"^x\[1\]: 'nope' does not match"):
        cached([SHA, "nope"], "x")
    with pytest.raises(NotImplementedError):
        _schema.Check().parse(1)


def test_a_record_is_planned_on_first_use_whichever_way_it_is_first_used():
    def forget() -> None:
        for cls in RECORDS.values():
            for attr in ("_PLAN", "_NAMES", "_parse_fields", "_valid_fields"):
                if attr in vars(cls):
                    delattr(cls, attr)

    frames = {kind: p.encode(msg) for kind, msg in FULL.items()}
    forget()
    for kind, frame in frames.items():  # decode first
        assert p.decode(frame) == FULL[kind]
    plans = {name: vars(cls)["_parse_fields"] for name, cls in RECORDS.items()}
    for frame in frames.values():
        p.decode(frame)
    assert plans == {name: vars(cls)["_parse_fields"] for name, cls in RECORDS.items()}
    forget()
    for kind, msg in FULL.items():  # encode first
        assert p.encode(msg) == frames[kind]
    assert all("_PLAN" in vars(cls) for cls in RECORDS.values())


# --- the frame, nesting, and what errors show ---------------------------------------


def jobs_frame(size: int) -> p.Jobs:
    """A `jobs` message whose frame is exactly `size` bytes (two payloads)."""
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    probe = p.encode(p.Jobs(1, (), {a: bytes(70_000), b: bytes(70_000)}))  # bin 32 both
    half = 32 * MiB - 16
    rest = size - (len(probe) - 140_000) - half
    assert 65_536 < rest <= 32 * MiB
    return p.Jobs(1, (), {a: bytes(half), b: bytes(rest)})


def test_a_frame_of_exactly_the_cap_is_taken_and_one_byte_more_is_not() -> None:
    cap = 64 * MiB
    msg = jobs_frame(cap)
    frame = p.encode(msg)
    assert len(frame) == cap
    assert p.decode(frame) == msg
    over = jobs_frame(cap + 1)
    with pytest.raises(p.ProtocolError, match=r"jobs message of 67108865 bytes exceeds 67108864"):
        p.encode(over)
    body = wire(msg)
    body["payloads"][next(iter(body["payloads"]))] += b"\x00"
    frame = msgpack.packb(body, use_bin_type=True)
    assert len(frame) == cap + 1
    with pytest.raises(p.ProtocolError, match=r"message of 67108865 bytes exceeds 67108864"):
        p.decode(frame)


def nested(depth: int, kind: str) -> Any:
    """`depth` containers, one inside the other, around a 1."""
    v: Any = 1
    for _ in range(depth):
        v = [v] if kind == "list" else {"k": v}
    return v


@pytest.mark.parametrize("kind", ["list", "map"])
def test_status_info_nests_8_deep_and_no_deeper(kind: str) -> None:
    # info itself is the first of the eight
    ok = p.StatusReply(1, {"k": nested(7, kind)})
    assert p.decode(p.encode(ok)) == p.StatusReply(1, {"k": nested(7, kind)})
    deep = pack_reply({"k": nested(8, kind)})
    with pytest.raises(p.ProtocolError, match=r"status_reply\.info: nested deeper than 8"):
        p.decode(deep)
    with pytest.raises(p.ProtocolError, match=r"nested deeper than 8"):
        p.encode(p.StatusReply(1, {"k": nested(8, kind)}))
    wide = {"a": 1, "b": [1, {"c": nested(5, kind)}], "d": nested(7, kind)}
    assert p.decode(pack_reply(wide)).info == wide  # every branch is looked at
    with pytest.raises(p.ProtocolError, match=r"nested deeper"):
        p.decode(pack_reply({**wide, "e": [1, nested(8, kind)]}))


def pack_reply(info: dict) -> bytes:
    return msgpack.packb({"v": 2, "type": "status_reply", "re": 1, "info": info})


REFERENCE = reprlib.Repr()  # what refusals show of a bad value: docs/protocol.md
REFERENCE.maxlevel, REFERENCE.maxstring, REFERENCE.maxother = 3, 100, 60


@pytest.mark.parametrize(
    "value",
    ["v" * 500, "v" * 101, b"\x01" * 500, [[[[[1]]]]], {"a": {"b": {"c": {"d": 1}}}}],
    ids=["long-str", "str-101", "bytes", "deep-list", "deep-map"],
)
def test_a_refusal_shows_a_short_rendering_of_the_value(value: Any) -> None:
    frame = msgpack.packb({"v": value, "type": "status", "id": 1}, use_bin_type=True)
    with pytest.raises(p.VersionError) as e:
        p.decode(frame)
    assert str(e.value) == f"protocol version {REFERENCE.repr(value)} is not 2"
    assert len(REFERENCE.repr(value)) <= 100


def test_a_nil_in_a_field_that_is_not_optional_is_refused_by_encode_by_name() -> None:
    with pytest.raises(p.ProtocolError, match=r"error\.text: expected a string"):
        p.encode(p.Error(1, p.ErrorCode.MALFORMED, None))  # type: ignore[arg-type]
    with pytest.raises(p.ProtocolError, match=r"bored\.host\.max_fuel: expected an integer"):
        p.encode(p.Bored(1, "a", p.HostFacts(1, 1, 1, max_fuel=0)))


# --- HostFacts.refuses: the owner's limits, at and past each -----------------------


@pytest.mark.parametrize(
    ("field", "allowed", "asked", "text"),
    [
        ("memory_mb", 64, 64, None),
        ("memory_mb", 64, 65, "65 MiB of memory (this machine allows 64)"),
        ("max_time_s", 10.0, 10.0, None),
        ("max_time_s", 10.0, 10.5, "10.5 s of time (this machine allows 10)"),
        ("max_fuel", 1000, 1000, None),
        ("max_fuel", 1000, 1001, "1001 fuel (this machine allows 1000)"),
        ("max_output_kb", 64, 64, None),
        ("max_output_kb", 64, 65, "65 KiB of output (this machine allows 64)"),
        ("max_output_kb", 0, 0, None),
        ("max_output_kb", 0, 1, "1 KiB of output (this machine allows 0)"),
    ],
)
def test_a_job_is_refused_only_past_an_owner_limit(field, allowed, asked, text) -> None:
    lim = {"memory_mb": 1, "time_s": 1.0, "fuel": 1, "output_kb": 0}
    lim[
        {"max_time_s": "time_s", "max_fuel": "fuel", "max_output_kb": "output_kb"}.get(field, field)
    ] = asked
    host = p.HostFacts(
        1,
        1 if field != "memory_mb" else allowed,
        1,
        **({} if field == "memory_mb" else {field: allowed}),
    )
    assert host.refuses(p.Limits(**lim)) == text
    unlimited = p.HostFacts(1, 1 << 40, 1)  # nil: the owner said nothing
    assert unlimited.refuses(p.Limits(fuel=2**62, memory_mb=65536, time_s=1e7)) is None


def test_records_are_frozen_slotted_and_hashable():
    import dataclasses

    for kind, msg in FULL.items():
        for cls in (type(msg), *RECORDS.values()):
            assert "__slots__" in vars(cls), cls.__name__
        assert not hasattr(msg, "__dict__"), kind
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg, next(iter(type(msg)._SCHEMA)), 1)
    records = (LIMITS, HOST, SPEC, SIGNATURE, SIGNATURE.chain[0], *FULL["ack"].rejected)
    records += (FULL["instructions"].prefs, *FULL["instructions"].projects)
    records += (
        FULL["bored"].behalf,
        *FULL["ack"].standing,
        *SPEC.files.values(),
        SPEC.resume,
        ABOUT,
        ACCOUNT,
    )
    for record in (*records, *FULL["results"].results):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(record, next(iter(type(record)._SCHEMA)), 1)
        assert hash(record) == hash(copy.deepcopy(record))
    # fields count in the hash (all but maps: JobSpec.files, which counts for equality)
    assert hash(p.FileRef("ab" * 32, 1)) != hash(p.FileRef("ab" * 32, 2))
    assert hash(SPEC) == hash(dataclasses.replace(SPEC, files=None)) and SPEC.files
    assert dataclasses.replace(SPEC, files=None) != SPEC
    assert {type(r).__name__ for r in records} | {"Result"} == set(RECORDS) - {
        m.__name__ for m in p.MESSAGES.values()
    }


def test_encode_refuses_a_value_the_wire_does_not_carry_even_in_an_optional_field():
    import decimal

    with pytest.raises(p.ProtocolError, match=r"bored\.host\.max_time_s: expected a number"):
        p.encode(p.Bored(1, "a", p.HostFacts(1, 1, 1, max_time_s=decimal.Decimal(1))))
    with pytest.raises(p.ProtocolError, match=r"alive\.holding: expected a list"):
        p.encode(p.Alive(1, "a", frozenset({"t"})))  # type: ignore[arg-type]


def test_the_defaults_of_the_records():
    assert p.Limits() == p.Limits(fuel=100_000_000_000, memory_mb=256, time_s=60.0, output_kb=1024)
    host = p.HostFacts(1, 2, 3)
    assert (host.cached, host.max_time_s, host.max_fuel, host.max_output_kb) == (
        (),
        None,
        None,
        None,
    )
    bored = p.Bored(1, "a", host)
    assert (bored.want, bored.holding) == (1, None)
    assert p.Result("t", p.Status.OK) == p.Result("t", p.Status.OK, b"", 0, "")
    assert p.Jobs(1, ()) == p.Jobs(1, (), {}, None)
    assert p.RetryLater(1, 2.0) == p.RetryLater(1, 2.0, None, None)
    assert p.Ack(1, ()).rejected == () and p.AliveAck(1, 5.0).cancel == ()
    assert p.StatusQuery(1).page is None and p.Alive(1, "a").holding is None
    assert p.Signature(SHA, bytes(64)).chain == ()


def test_schema_helpers_keep_their_stated_contracts() -> None:
    """The schema language's own small rules, as its docstrings state them."""
    # _float() with no bounds: any finite number from 0 to 1e12, both included
    number = _schema._float()
    assert number.parse(0) == 0.0 and number.parse(0.5) == 0.5 and number.parse(1e12) == 1e12
    for bad in (-0.5, 1e12 + 1):
        with pytest.raises(p.ProtocolError):
            number.parse(bad)
    # _depth answers True or False, never a falsy something else
    assert _schema._depth([[1]], 2) is True
    assert _schema._depth([[1]], 1) is False
    assert _schema._depth([1], 0) is False


@pytest.mark.parametrize(
    ("input_mb", "size", "text"),
    [
        (None, 0, None),  # a job reading nothing goes anywhere
        (0, 0, None),
        (None, 1, "input files (this jobber takes none)"),
        (0, 1, "1 bytes of input files (this machine allows 0 MiB)"),
        (2, 2 * MiB, None),
        (2, 2 * MiB + 1, f"{2 * MiB + 1} bytes of input files (this machine allows 2 MiB)"),
    ],
)
def test_a_jobs_input_files_are_refused_only_past_the_owners_input_mb(input_mb, size, text):
    assert p.HostFacts(1, 1, 1, input_mb=input_mb).refuses_inputs(size) == text


def test_a_job_spec_totals_its_input_files() -> None:
    spec = p.JobSpec("t", "ab" * 32, (), b"", p.Limits(), 10.0)
    assert spec.input_bytes() == 0
    refs = {"/a": p.FileRef("cd" * 32, 5), "/b": p.FileRef("ef" * 32, 7)}
    assert p.JobSpec("t", "ab" * 32, (), b"", p.Limits(), 10.0, refs).input_bytes() == 12
    assert p.JobSpec("t", "ab" * 32, (), b"", p.Limits(), 10.0, {}).input_bytes() == 0


def _result(output: bytes, tag: str = "t", detail: str = "") -> p.Result:
    return p.Result(tag, p.Status.OK, output, 0, detail)


def test_a_results_weight_is_its_output_its_texts_four_times_and_64() -> None:
    assert p.result_weight(_result(b"x" * 100, "tag", "detail")) == 100 + 4 * 9 + 64
    assert p.result_weight(_result(b"")) == 4 + 64


def test_results_that_fit_one_message_stop_at_the_byte_cap_or_the_count_cap() -> None:
    assert (p.MAX_RESULTS_PER_MESSAGE, p.MAX_RESULTS_BYTES) == (256, 768 * 1024)
    assert p.results_that_fit([]) == ()
    # by bytes: results that weigh exactly the cap together all fit; one byte more, not
    fill = p.MAX_RESULTS_BYTES // 3
    each = fill - p.result_weight(_result(b""))
    three = [_result(b"x" * each) for _ in range(3)]
    assert sum(map(p.result_weight, three)) == p.MAX_RESULTS_BYTES
    assert p.results_that_fit(three) == tuple(three)
    heavier = [*three[:2], _result(b"x" * (each + 1))]
    assert p.results_that_fit(heavier) == tuple(heavier[:2])
    # one result goes alone whatever it weighs; the next waits for a message of its own
    big = [_result(b"x" * (2 * p.MAX_RESULTS_BYTES)), _result(b"y")]
    assert p.results_that_fit(big) == (big[0],)
    assert p.results_that_fit(big[1:]) == (big[1],)
    # by count: MAX_RESULTS_PER_MESSAGE small results, not one more
    many = [_result(b"", f"t{i}") for i in range(p.MAX_RESULTS_PER_MESSAGE + 5)]
    assert p.results_that_fit(many) == tuple(many[: p.MAX_RESULTS_PER_MESSAGE])
    assert p.results_that_fit(iter(many[:3])) == tuple(many[:3])  # any iterable, in order
