"""The wire codec (protocol/_wire.py; its records in _schema.py, _records.py and
_messages.py), dealer addresses (protocol/_addr.py), docs/protocol.md and
tests/wrong_jobber.py, held against each other.

- every message survives encode/decode, for generated messages and at the caps;
- decode turns any bytes into a Message or a ProtocolError, never anything else;
- each way a frame can be wrong is refused with a message naming the field;
- the examples and names in docs/protocol.md match the real encoder;
- the jobber written from the doc alone builds frames the real decoder takes.

Known bugs are strict xfails: fixing one makes its test pass and the xfail fail,
so the marker has to go.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as p
from protocol import _messages, _records, _schema
from tests.helpers import fake_dealer

HERE = Path(__file__).resolve().parent.parent  # tests/
DOC = HERE.parent / "docs" / "protocol.md"

# Modest example counts: the whole file runs in a few seconds.
FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings(FAST, max_examples=150)


def _load_wrong_jobber() -> Any:
    spec = importlib.util.spec_from_file_location("wrong_jobber", HERE / "wrong_jobber.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wj = _load_wrong_jobber()


# --- strategies ------------------------------------------------------------------

u64 = st.integers(0, _schema.MAX_U64)
# Short strings, plus strings exactly at the cap in 1-, 2- and 4-byte UTF-8.
strs = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "x" * p.MAX_STR, "é" * p.MAX_STR, "\U0001f600" * p.MAX_STR]),
)
names = st.one_of(st.text(max_size=12), st.sampled_from(["n" * 256, "ü" * 256]))
shas = st.binary(max_size=16).map(lambda b: hashlib.sha256(b).hexdigest())
blobs = st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"\x00" * 1000, bytes(range(256))]))

limits = st.builds(
    p.Limits,
    fuel=st.integers(1, 2**62),
    memory_mb=st.integers(1, 65536),
    time_s=st.floats(0.001, 1e7),
    output_kb=st.integers(0, _records.MAX_OUTPUT_BYTES // 1024),
    native_nans=st.none() | st.booleans(),
    checkpoint_kb=st.none() | st.integers(0, 65536),
    checkpoint_every_s=st.none() | st.floats(1.0, 1e7),
)
hosts = st.builds(
    p.HostFacts,
    cpus=st.integers(1, 1 << 20),
    memory_mb=st.integers(0, 1 << 40),
    slots=st.integers(0, 1 << 20),
    cached=st.lists(shas, max_size=4).map(tuple),
    max_time_s=st.none() | st.floats(0.001, 1e7),
    max_fuel=st.none() | st.integers(1, 2**62),
    max_output_kb=st.none() | st.integers(0, _records.MAX_OUTPUT_BYTES // 1024),
    platform=st.none() | names,
    nan_fuel=st.none() | names,
    input_mb=st.none() | st.integers(0, 1 << 20),
    files=st.none() | st.lists(shas, max_size=4).map(tuple),
)
components = st.text("abcXYZ019._+-", min_size=1, max_size=255).filter(
    lambda c: c not in ".." and c != "."
)
guest_paths = st.lists(components, min_size=1, max_size=16).map(lambda cs: "/" + "/".join(cs))
file_refs = st.builds(p.FileRef, hash=shas, size=st.integers(0, 1 << 40))
resumes = st.builds(
    p.Resume,
    hash=shas,
    size=st.integers(0, p.MAX_CHECKPOINT_BYTES),
    fuel=st.integers(0, 2**62),
    time_s=st.floats(0.0, 1e7),
)
jobspecs = st.builds(
    p.JobSpec,
    tag=strs,
    payload=shas,
    args=st.lists(strs, max_size=4).map(tuple),
    stdin=blobs,
    limits=limits,
    deadline_s=st.floats(0.0, 1e9),
    files=st.none() | st.dictionaries(guest_paths, file_refs, max_size=3),
    resume=st.none() | resumes,
)
attributions = st.builds(p.Attribution, key=shas, machine=names)
results = st.builds(
    p.Result,
    tag=strs,
    status=st.sampled_from(p.Status),
    output=blobs,
    fuel=u64,
    detail=strs,
    by=st.none() | attributions,
)
rejections = st.builds(p.Rejection, tag=strs, code=st.sampled_from(p.ErrorCode), text=strs)
# Signatures as the codec sees them: well-shaped, not necessarily good (test_signing.py).
sig_bytes = st.binary(min_size=64, max_size=64)
rotations = st.builds(p.Rotation, old=shas, new=shas, sig=sig_bytes)
signatures = st.builds(
    p.Signature,
    key=shas,
    sig=sig_bytes,
    chain=st.lists(rotations, max_size=p.MAX_ROTATIONS).map(tuple),
)
hours = st.floats(0.0, 24.0)
prefs = st.builds(
    p.Prefs,
    slots=st.none() | st.integers(1, 4096),
    max_cpus_pct=st.none() | st.floats(1.0, 100.0),
    cpu_limit=st.none() | st.floats(1.0, 100.0),
    memory_mb=st.none() | st.integers(1, 1 << 20),
    cache_mb=st.none() | st.integers(1, 1 << 30),
    idle_only=st.none() | st.booleans(),
    idle_after_s=st.none() | st.floats(0.0, 1e7),
) | st.builds(
    lambda a, b, c, d: p.Prefs(start_hour=a, end_hour=b, net_start_hour=c, net_end_hour=d),
    hours,
    hours,
    hours,
    hours,
)
# What msgpack carries (as decode gives it back: lists, str keys, no NaN).
plain_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), _schema.MAX_U64)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=12,
)

# what a dealer tells a jobber of its batch and of the jobber's account there
abouts = st.none() | st.builds(
    p.About,
    task=st.text(max_size=p.MAX_TASK_NAME),
    contact=st.none() | st.text(max_size=p.MAX_CONTACT),
)
accounts = st.none() | st.builds(p.Account, *(st.integers(0, _schema.MAX_U64),) * 4)
told = {"about": abouts, "account": accounts}

MESSAGE_STRATEGIES: dict[type[p.Message], st.SearchStrategy[p.Message]] = {
    p.Bored: st.builds(
        p.Bored,
        id=u64,
        jobber=names,
        host=hosts,
        want=st.integers(0, p.MAX_BATCH),
        behalf=st.none() | attributions,
    ),
    p.Jobs: st.builds(
        p.Jobs,
        re=u64,
        jobs=st.lists(jobspecs, max_size=3).map(tuple),
        payloads=st.dictionaries(shas, blobs, max_size=3),
        signatures=st.none() | st.dictionaries(shas, signatures, max_size=3),
        **told,
    ),
    p.Referral: st.builds(p.Referral, re=u64, dealers=st.lists(names, max_size=4).map(tuple)),
    p.RetryLater: st.builds(
        p.RetryLater,
        re=u64,
        seconds=st.floats(0.0, 1e7),
        reason=st.none() | strs,
        more=st.none() | st.booleans(),
        **told,
    ),
    p.Results: st.builds(
        p.Results, id=u64, jobber=names, results=st.lists(results, max_size=3).map(tuple)
    ),
    p.Ack: st.builds(
        p.Ack,
        re=u64,
        tags=st.lists(strs, max_size=4).map(tuple),
        rejected=st.lists(rejections, max_size=3).map(tuple),
        **told,
    ),
    p.Error: st.builds(
        p.Error,
        re=u64,
        code=st.sampled_from(p.ErrorCode),
        text=strs,
        retry_s=st.none() | st.floats(0.0, 3600.0),
    ),
    p.StatusQuery: st.builds(p.StatusQuery, id=u64, page=st.none() | st.integers(0, 1 << 20)),
    p.Hello: st.builds(p.Hello, id=u64),
    p.HelloReply: st.builds(p.HelloReply, re=u64, key=shas),
    p.Deny: st.builds(p.Deny, id=u64, key=shas, reason=strs),
    p.AdminReply: st.builds(p.AdminReply, re=u64, text=strs),
    p.Alive: st.builds(
        p.Alive, id=u64, jobber=names, holding=st.none() | st.lists(strs, max_size=3).map(tuple)
    ),
    p.Finished: st.builds(p.Finished, re=u64, **told),
    p.AliveAck: st.builds(
        p.AliveAck,
        re=u64,
        lease_s=st.floats(1.0, 1e6),
        cancel=st.lists(strs, max_size=3).map(tuple),
        **told,
    ),
    p.WorkQuery: st.builds(p.WorkQuery, id=u64),
    p.Save: st.builds(
        p.Save,
        id=u64,
        jobber=names,
        tag=strs,
        hash=shas,
        size=st.integers(0, p.MAX_CHECKPOINT_BYTES),
        chunk=st.integers(0, 16),
        data=blobs,
        fuel=st.integers(0, 2**62),
        time_s=st.floats(0.0, 1e7),
    ),
    p.Saved: st.builds(p.Saved, re=u64, hash=shas, next=st.integers(0, 17)),
    p.Fetch: st.builds(p.Fetch, id=u64, hash=shas, chunk=st.integers(0, 1 << 18)),
    p.Chunk: st.builds(
        p.Chunk,
        re=u64,
        hash=shas,
        chunk=st.integers(0, 1 << 18),
        size=st.integers(0, 1 << 40),
        data=blobs,
        digests=st.none() | st.lists(st.binary(min_size=32, max_size=32), max_size=3).map(tuple),
    ),
    p.WorkOffer: st.builds(
        p.WorkOffer,
        re=u64,
        jobs=u64,
        limits=st.none() | limits,
        left=st.none() | u64,
        finished=st.none() | st.booleans(),
    ),
    p.StatusReply: st.builds(
        p.StatusReply, re=u64, info=st.dictionaries(st.text(max_size=8), plain_values, max_size=5)
    ),
    p.Instruct: st.builds(
        p.Instruct, id=u64, jobber=names, pool=names, host=hosts, serial=st.none() | u64
    ),
    p.Instructions: st.builds(
        p.Instructions,
        re=u64,
        pool=names,
        serial=u64,
        projects=st.lists(
            st.builds(p.Project, name=names, dealer=names, share=st.floats(0.0, 1e6)), max_size=3
        ).map(tuple),
        prefs=prefs,
        refresh_s=st.floats(0.1, 1e6),
    ),
    p.AllocAdmin: st.builds(
        p.AllocAdmin,
        id=u64,
        op=st.text(max_size=12),
        args=st.dictionaries(st.text(max_size=8), plain_values, max_size=5),
    ),
    p.AllocReply: st.builds(
        p.AllocReply,
        re=u64,
        text=strs,
        data=st.dictionaries(st.text(max_size=8), plain_values, max_size=5),
    ),
}
messages = st.one_of(*MESSAGE_STRATEGIES.values())

# Anything msgpack can carry, including what no field accepts: NaN, bools,
# negative and huge ints, nil, extension types, maps with int keys.
anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), _schema.MAX_U64)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4))
    | st.builds(msgpack.Timestamp, st.integers(0, 2**32), st.integers(0, 999_999_999)),
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.integers(-3, 3), kids, max_size=4)
    ),
    max_leaves=10,
)


def test_strategies_cover_every_message_type() -> None:
    assert set(MESSAGE_STRATEGIES) == set(p.MESSAGES.values())


# --- helpers ---------------------------------------------------------------------


def pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def wire(msg: p.Message) -> dict[str, Any]:
    """The msgpack map of `msg`, as another implementation would see it."""
    return msgpack.unpackb(p.encode(msg), raw=False)


SHA = hashlib.sha256(b"payload").hexdigest()
LIMITS = p.Limits(fuel=1000, memory_mb=16, time_s=1.5, output_kb=64)
HOST = p.HostFacts(cpus=2, memory_mb=1024, slots=2, cached=(SHA,))
SPEC = p.JobSpec("t1", SHA, ("factor", "91"), b"in", LIMITS, 60.0)
RESULT = p.Result("t1", p.Status.OK, b"7\n13\n", 1234, "")
SAMPLES: dict[str, p.Message] = {
    "bored": p.Bored(1, "ann", HOST, 2),
    "jobs": p.Jobs(1, (SPEC,), {SHA: b"payload"}),
    "referral": p.Referral(1, ("tcp://other:7117",)),
    "retry_later": p.RetryLater(1, 2.5),
    "results": p.Results(2, "ann", (RESULT,)),
    "ack": p.Ack(2, ("t1",), (p.Rejection("t2", p.ErrorCode.SETTLED, "too late"),)),
    "error": p.Error(3, p.ErrorCode.MALFORMED, "bad"),
    "status": p.StatusQuery(4),
    "status_reply": p.StatusReply(4, {"accepted": 3, "jobbers": {"ann": {"valid": 1}}}),
    "hello": p.Hello(5),
    "hello_reply": p.HelloReply(5, SHA),
    "deny": p.Deny(6, SHA, "lost too many votes"),
    "admin_reply": p.AdminReply(6, "denied"),
    "alive": p.Alive(7, "ann", ("t1",)),
    "alive_ack": p.AliveAck(7, 20.0, ("t1",)),
    "finished": p.Finished(8),
    "work_query": p.WorkQuery(9),
    "work_offer": p.WorkOffer(9, 12, LIMITS, 40),
    "instruct": p.Instruct(10, "ann", "physics-lab", HOST, 3),
    "instructions": p.Instructions(
        10, "physics-lab", 4, (p.Project("a", "tcp://d:7117", 3.0),), p.Prefs(), 60.0
    ),
    "alloc_admin": p.AllocAdmin(11, "project_share", {"name": "a", "share": 2}),
    "alloc_reply": p.AllocReply(11, "project a: share 2", {"serial": 5}),
}
DELETE = object()


def tampered(kind: str, path: tuple[Any, ...], value: Any) -> bytes:
    """SAMPLES[kind] on the wire with the value at `path` replaced (or deleted)."""
    body = wire(SAMPLES[kind])
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return pack(body)


def record_fields(body: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every field of every record in a wire map (not inside free-form maps)."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key in ("v", "type"):
                continue
            yield (*path, key)
            if key not in ("payloads", "info", "args", "data"):
                yield from record_fields(value, (*path, key))
    elif isinstance(body, list):
        for i, value in enumerate(body):
            yield from record_fields(value, (*path, i))


def all_paths(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every value nested in `obj`, at any depth."""
    children = (
        obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    )
    for key, value in children:
        yield (*path, key)
        yield from all_paths(value, (*path, key))


def dotted(kind: str, path: tuple[Any, ...]) -> str:
    """How decode names a field in its errors: bored.host.cpus, jobs.jobs[0].tag."""
    return kind + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in path)


def decodes_or_refuses(data: Any) -> p.Message | None:
    """decode's contract: a Message or a ProtocolError with a message, nothing else."""
    try:
        msg = p.decode(data)
    except p.ProtocolError as e:
        assert str(e)
        return None
    assert isinstance(msg, p.Message)
    again = p.encode(msg)  # what decode accepts, encode can send on
    assert p.encode(p.decode(again)) == again
    return msg


# --- round trips -------------------------------------------------------------------


@FAST
@given(messages)
def test_round_trip(msg: p.Message) -> None:
    data = p.encode(msg)
    back = p.decode(data)
    assert back == msg
    assert type(back) is type(msg)
    assert p.decode(bytearray(data)) == msg
    assert p.decode(memoryview(data)) == msg


@FAST
@given(messages)
def test_frame_is_one_map_with_version_and_type(msg: p.Message) -> None:
    body = wire(msg)
    assert body["v"] == p.VERSION == 2
    assert body["type"] == msg.TYPE
    schema = type(msg)._SCHEMA
    required = {k for k, check in schema.items() if not getattr(check, "optional", False)}
    assert required | {"v", "type"} <= set(body) <= {"v", "type", *schema}


def test_optional_holding_is_absent_nil_or_a_list_of_tags() -> None:
    with_tags = p.Bored(1, "ann", HOST, 2, ("t.1", "t.2"))
    assert p.decode(p.encode(with_tags)) == with_tags
    assert "holding" not in wire(p.Bored(1, "ann", HOST, 2))  # left out when nil
    assert p.decode(p.encode(p.Bored(1, "ann", HOST, 2))).holding is None
    body = wire(with_tags)
    body["holding"] = None
    assert p.decode(pack(body)).holding is None
    body["holding"] = "t.1"
    refused(pack(body), r"bored\.holding: expected a list")


def test_platform_and_native_nans_round_trip_and_are_absent_when_nil() -> None:
    platform = "x86_64-linux-wasmtime-50.0.1-c069f2cb"
    bored = p.Bored(1, "ann", dataclasses.replace(HOST, platform=platform), 2)
    assert wire(bored)["host"]["platform"] == platform
    assert p.decode(p.encode(bored)).host.platform == platform
    for native in (True, False):
        spec = dataclasses.replace(SPEC, limits=dataclasses.replace(LIMITS, native_nans=native))
        jobs = p.Jobs(1, (spec,))
        assert wire(jobs)["jobs"][0]["limits"]["native_nans"] is native
        assert p.decode(p.encode(jobs)).jobs[0].limits.native_nans is native
    # nil is left out, so a peer older than the fields sends and reads just what it did
    assert "platform" not in wire(SAMPLES["bored"])["host"]
    assert "native_nans" not in wire(SAMPLES["jobs"])["jobs"][0]["limits"]
    assert p.decode(p.encode(SAMPLES["bored"])).host.platform is None
    assert p.decode(p.encode(SAMPLES["jobs"])).jobs[0].limits.native_nans is None
    body = wire(bored)
    body["host"]["platform"] = None
    assert p.decode(pack(body)).host.platform is None
    body["host"]["platform"] = 7
    refused(pack(body), r"bored\.host\.platform: expected a string of at most 256")
    body["host"]["platform"] = "p" * 257
    refused(pack(body), r"bored\.host\.platform: expected a string of at most 256")
    body = wire(SAMPLES["jobs"])
    body["jobs"][0]["limits"]["native_nans"] = 1
    refused(pack(body), r"jobs\.jobs\[0\]\.limits\.native_nans: expected true or false")


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_samples_round_trip(kind: str) -> None:
    msg = SAMPLES[kind]
    assert kind == msg.TYPE
    assert p.decode(p.encode(msg)) == msg


def test_enums_decode_as_enums() -> None:
    back = p.decode(p.encode(SAMPLES["ack"]))
    assert isinstance(back, p.Ack)
    assert back.rejected[0].code is p.ErrorCode.SETTLED
    res = p.decode(p.encode(SAMPLES["results"]))
    assert isinstance(res, p.Results)
    assert res.results[0].status is p.Status.OK


def test_numbers_may_come_as_int_or_float32() -> None:
    body = wire(SAMPLES["retry_later"])
    body["seconds"] = 3
    msg = p.decode(pack(body))
    assert msg == p.RetryLater(1, 3.0)
    assert type(msg.seconds) is float
    # a float 32 (0xca) from another implementation
    frame = b"\x84" + pack("v") + b"\x02" + pack("type") + pack("retry_later")
    frame += pack("re") + b"\x01" + pack("seconds") + b"\xca\x40\x20\x00\x00"  # 2.5
    assert p.decode(frame) == p.RetryLater(1, 2.5)


def test_batches_at_the_cap_round_trip() -> None:
    many = p.MAX_BATCH
    for msg in (
        p.Jobs(1, (SPEC,) * many),
        p.Results(1, "ann", (RESULT,) * many),
        p.Ack(1, ("t",) * many, (p.Rejection("t", p.ErrorCode.DUPLICATE, ""),) * many),
        p.Bored(1, "ann", p.HostFacts(1, 1, 1, (SHA,) * p.MAX_CACHED), p.MAX_BATCH),
        p.Jobs(1, (), {hashlib.sha256(bytes([i])).hexdigest(): b"" for i in range(64)}),
        p.Referral(1, ("d" * 256,) * 64),
    ):
        assert p.decode(p.encode(msg)) == msg


def test_scalars_at_their_bounds_round_trip() -> None:
    lo = p.Limits(fuel=1, memory_mb=1, time_s=0.001, output_kb=0)
    hi = p.Limits(
        fuel=2**62, memory_mb=65536, time_s=1e7, output_kb=_records.MAX_OUTPUT_BYTES // 1024
    )
    spec = p.JobSpec("a" * p.MAX_STR, SHA, ("a" * p.MAX_STR,) * _records.MAX_ARGS, b"", hi, 1e9)
    for msg in (
        p.Jobs(_schema.MAX_U64, (p.JobSpec("", SHA, (), b"", lo, 0.0), spec)),
        p.Bored(0, "", p.HostFacts(1, 0, 0), 0),
        p.Bored(_schema.MAX_U64, "j" * 256, p.HostFacts(1 << 20, 1 << 40, 1 << 20), p.MAX_BATCH),
        p.Results(1, "j", (p.Result("t", p.Status.OK, b"", _schema.MAX_U64, "d" * p.MAX_STR),)),
        p.RetryLater(0, 0.0),
        p.RetryLater(0, 1e7),
    ):
        assert p.decode(p.encode(msg)) == msg


def test_largest_payload_stdin_and_output_round_trip() -> None:
    wasm = b"\x00asm" + bytes(p.MAX_PAYLOAD_BYTES - 4)
    msg = p.Jobs(1, (), {hashlib.sha256(wasm).hexdigest(): wasm})
    assert p.decode(p.encode(msg)) == msg
    spec = p.JobSpec("t", SHA, (), bytes(_records.MAX_STDIN_BYTES), LIMITS, 1.0)
    assert p.decode(p.encode(p.Jobs(1, (spec,)))) == p.Jobs(1, (spec,))
    res = p.Results(1, "j", (p.Result("t", p.Status.OK, bytes(_records.MAX_OUTPUT_BYTES)),))
    assert p.decode(p.encode(res)) == res


def test_unknown_keys_are_ignored_everywhere() -> None:
    body = wire(SAMPLES["jobs"])
    body["later"] = [1, 2]
    body["jobs"][0]["priority"] = 5
    body["jobs"][0]["limits"]["gpu"] = True
    assert p.decode(pack(body)) == SAMPLES["jobs"]


# --- any bytes: a Message or a ProtocolError ---------------------------------------


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_refuse(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(messages, st.data())
def test_mutated_frames_decode_or_refuse(msg: p.Message, data: st.DataObject) -> None:
    frame = bytearray(p.encode(msg))
    op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "append"]))
    i = data.draw(st.integers(0, len(frame) - 1))
    if op == "flip":
        frame[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        del frame[i:]
    elif op == "insert":
        frame[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    elif op == "delete":
        del frame[i : i + data.draw(st.integers(1, 8))]
    else:
        frame += data.draw(st.binary(min_size=1, max_size=8))
    msg_back = decodes_or_refuses(bytes(frame))
    if op in ("truncate", "append"):
        assert msg_back is None  # a frame is one whole map and nothing after it


@FUZZ
@given(anything)
def test_msgpack_of_anything_decodes_or_refuses(obj: Any) -> None:
    decodes_or_refuses(pack(obj))


@FUZZ
@given(st.sampled_from(sorted(p.MESSAGES)), st.data())
def test_wrong_shaped_maps_decode_or_refuse(kind: str, data: st.DataObject) -> None:
    fields = [*p.MESSAGES[kind]._SCHEMA, "v", "type", "x"]
    body = data.draw(st.dictionaries(st.sampled_from(fields), anything, max_size=len(fields)))
    body.setdefault("v", 2)
    body.setdefault("type", kind)
    decodes_or_refuses(pack(body))


@FUZZ
@given(messages, st.data())
def test_one_field_tampered_decodes_or_refuses(msg: p.Message, data: st.DataObject) -> None:
    body = wire(msg)
    path = data.draw(st.sampled_from(list(all_paths(body))))
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(anything)
    decodes_or_refuses(pack(body))


@pytest.mark.parametrize("data", ["text", None, 5, 1.5, [b"\x80"]])
def test_non_bytes_input_is_refused(data: Any) -> None:
    with pytest.raises(p.ProtocolError, match="expected bytes"):
        p.decode(data)


# --- specific refusals -------------------------------------------------------------


def refused(data: bytes, pattern: str) -> None:
    with pytest.raises(p.ProtocolError, match=pattern):
        p.decode(data)


NAN, INF = float("nan"), float("inf")
BIG_STR = "x" * (p.MAX_STR + 1)
CASES = [
    # version and type
    ("status", ("v",), 1, r"protocol version 1 is not 2"),
    ("status", ("v",), DELETE, r"protocol version None is not 2"),
    ("status", ("v",), "2", r"protocol version '2' is not 2"),
    ("status", ("type",), "gimme", r"unknown message type 'gimme'"),
    ("status", ("type",), DELETE, r"unknown message type None"),
    ("status", ("type",), 1, r"unknown message type 1"),
    ("status", ("type",), b"status", r"unknown message type b'status'"),
    ("status", ("type",), "Status", r"unknown message type 'Status'"),
    # missing fields, top level and nested (no field is optional on the wire)
    ("bored", ("want",), DELETE, r"bored: missing field 'want'"),
    ("bored", ("host", "cached"), DELETE, r"bored\.host: missing field 'cached'"),
    ("jobs", ("payloads",), DELETE, r"jobs: missing field 'payloads'"),
    (
        "jobs",
        ("jobs", 0, "limits", "fuel"),
        DELETE,
        r"jobs\.jobs\[0\]\.limits: missing field 'fuel'",
    ),
    ("results", ("results", 0, "detail"), DELETE, r"results\.results\[0\]: missing field 'detail'"),
    ("ack", ("rejected",), DELETE, r"ack: missing field 'rejected'"),
    # wrong msgpack types
    ("status", ("id",), "4", r"status\.id: expected an integer"),
    ("jobs", ("jobs", 0, "stdin"), "in", r"jobs\.jobs\[0\]\.stdin: expected binary"),
    ("jobs", ("jobs", 0, "tag"), b"t1", r"jobs\.jobs\[0\]\.tag: expected a string"),
    ("jobs", ("jobs",), {"0": 1}, r"jobs\.jobs: expected a list"),
    ("jobs", ("payloads",), [], r"jobs\.payloads: expected a map"),
    ("jobs", ("payloads", SHA), "payload", r"jobs\.payloads\['[0-9a-f]{64}'\]: expected binary"),
    ("bored", ("host",), [2, 1024, 2, []], r"bored\.host: expected a map"),
    ("results", ("results", 0, "output"), "7\n", r"results\.results\[0\]\.output: expected binary"),
    ("status_reply", ("info",), [], r"status_reply\.info: expected a map"),
    ("referral", ("dealers",), "tcp://x:1", r"referral\.dealers: expected a list"),
    ("error", ("code",), None, r"error\.code: expected one of malformed, version"),
    # enums
    ("results", ("results", 0, "status"), "OK", r"expected one of ok, exit, fuel"),
    ("results", ("results", 0, "status"), "", r"expected one of ok"),
    ("ack", ("rejected", 0, "code"), "nope", r"ack\.rejected\[0\]\.code: expected one of"),
    # negative, fractional and out-of-range integers
    ("status", ("id",), -1, r"status\.id: expected an integer in \[0, 18446744073709551615\]"),
    ("status", ("id",), 1.0, r"status\.id: expected an integer .* got 1\.0"),
    ("bored", ("want",), 2.5, r"bored\.want: expected an integer in \[0, 4096\], got 2\.5"),
    ("bored", ("want",), p.MAX_BATCH + 1, r"bored\.want: expected an integer in \[0, 4096\]"),
    ("bored", ("host", "cpus"), 0, r"bored\.host\.cpus: expected an integer in \[1, "),
    ("results", ("results", 0, "fuel"), -1, r"results\.results\[0\]\.fuel: expected an integer"),
    ("jobs", ("jobs", 0, "limits", "fuel"), 0, r"limits\.fuel: expected an integer in \[1, "),
    ("jobs", ("jobs", 0, "limits", "fuel"), 2**62 + 1, r"limits\.fuel: expected an integer"),
    ("jobs", ("jobs", 0, "limits", "memory_mb"), 65537, r"limits\.memory_mb: expected an"),
    ("jobs", ("jobs", 0, "limits", "output_kb"), 32769, r"limits\.output_kb: expected an"),
    ("jobs", ("jobs", 0, "limits", "time_s"), 0.0, r"limits\.time_s: expected a number in"),
    ("retry_later", ("seconds",), -0.5, r"retry_later\.seconds: expected a number in"),
    ("retry_later", ("seconds",), 1e7 + 1, r"retry_later\.seconds: expected a number in"),
    # NaN and infinities
    ("retry_later", ("seconds",), NAN, r"retry_later\.seconds: expected a number .* got nan"),
    ("retry_later", ("seconds",), INF, r"retry_later\.seconds: expected a number .* got inf"),
    ("retry_later", ("seconds",), -INF, r"got -inf"),
    ("jobs", ("jobs", 0, "limits", "time_s"), INF, r"limits\.time_s: expected a number"),
    ("jobs", ("jobs", 0, "deadline_s"), NAN, r"jobs\.jobs\[0\]\.deadline_s: expected a number"),
    # msgpack bools are not numbers
    ("status", ("id",), True, r"status\.id: expected an integer .* got True"),
    ("bored", ("want",), False, r"bored\.want: expected an integer .* got False"),
    ("bored", ("host", "cpus"), True, r"bored\.host\.cpus: expected an integer .* got True"),
    ("results", ("results", 0, "fuel"), True, r"fuel: expected an integer .* got True"),
    ("jobs", ("jobs", 0, "limits", "fuel"), True, r"limits\.fuel: expected an integer"),
    ("retry_later", ("seconds",), True, r"retry_later\.seconds: expected a number .* got True"),
    ("jobs", ("jobs", 0, "limits", "time_s"), False, r"limits\.time_s: expected a number"),
    # sizes over their caps
    ("jobs", ("jobs", 0, "tag"), BIG_STR, r"tag: expected a string of at most 4096 characters"),
    ("ack", ("tags", 0), "\U0001f600" * (p.MAX_STR + 1), r"ack\.tags\[0\]: .* at most 4096"),
    ("error", ("text",), BIG_STR, r"error\.text: expected a string of at most 4096"),
    ("bored", ("jobber",), "j" * 257, r"bored\.jobber: expected a string of at most 256"),
    ("referral", ("dealers", 0), "d" * 257, r"referral\.dealers\[0\]: .* at most 256"),
    ("referral", ("dealers",), ["d"] * 65, r"referral\.dealers: expected a list of at most 64"),
    ("jobs", ("jobs", 0, "args"), ["a"] * 1025, r"args: expected a list of at most 1024 items"),
    ("jobs", ("jobs",), [wire(SAMPLES["jobs"])["jobs"][0]] * 4097, r"jobs\.jobs: .* at most 4096"),
    ("results", ("results",), [{}] * 4097, r"results\.results: expected a list of at most 4096"),
    ("ack", ("tags",), ["t"] * 4097, r"ack\.tags: expected a list of at most 4096"),
    ("ack", ("rejected",), [{}] * 4097, r"ack\.rejected: expected a list of at most 4096"),
    ("bored", ("host", "cached"), [SHA] * 4097, r"cached: expected a list of at most 4096"),
    ("status_reply", ("info",), {str(i): i for i in range(4097)}, r"info: expected a map"),
    (
        "jobs",
        ("payloads",),
        {hashlib.sha256(bytes([i])).hexdigest(): b"" for i in range(65)},
        r"jobs\.payloads: expected a map of at most 64 entries",
    ),
    # sha256 hex
    ("jobs", ("jobs", 0, "payload"), SHA.upper(), r"payload: '[0-9A-F]{64}' does not match"),
    ("jobs", ("jobs", 0, "payload"), SHA[:63], r"payload: '[0-9a-f]{63}' does not match"),
    ("jobs", ("jobs", 0, "payload"), SHA + "0", r"payload: expected a string of at most 64"),
    ("jobs", ("jobs", 0, "payload"), "g" * 64, r"payload: 'g{64}' does not match"),
    ("jobs", ("jobs", 0, "payload"), SHA[:63] + "\n", r"does not match"),
    ("jobs", ("jobs", 0, "payload"), "", r"payload: '' does not match"),
    ("bored", ("host", "cached", 0), "0x" + SHA[:62], r"cached\[0\]: '0x.*' does not match"),
]


def case_id(case: tuple) -> str:
    kind, path, value, _ = case
    shown = "deleted" if value is DELETE else repr(value)
    return dotted(kind, path) + "=" + (shown if len(shown) <= 24 else shown[:21] + "...")


@pytest.mark.parametrize(("kind", "path", "value", "pattern"), CASES, ids=map(case_id, CASES))
def test_refused_with_a_clear_message(kind: str, path: tuple, value: Any, pattern: str) -> None:
    refused(tampered(kind, path, value), pattern)


def test_sha256_keys_of_payloads_are_checked() -> None:
    body = wire(SAMPLES["jobs"])
    body["payloads"] = {SHA.upper(): b"x"}
    refused(pack(body), r"jobs\.payloads key: '[0-9A-F]{64}' does not match")


def optional(kind: str, path: tuple[Any, ...]) -> bool:
    """A message field that may be left out (or nil): `holding`, `page`."""
    check = p.MESSAGES[kind]._SCHEMA.get(path[0]) if len(path) == 1 else None
    return bool(getattr(check, "optional", False))


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_every_field_is_required(kind: str) -> None:
    paths = [
        q
        for q in record_fields(wire(SAMPLES[kind]))
        if not isinstance(q[-1], int) and not optional(kind, q)
    ]
    assert paths
    for path in paths:
        where = dotted(kind, path[:-1])
        refused(tampered(kind, path, DELETE), rf"{re.escape(where)}: missing field '{path[-1]}'")


@pytest.mark.parametrize("kind", sorted(SAMPLES))
@pytest.mark.parametrize("value", [None, True, msgpack.ExtType(5, b"x")], ids=repr)
def test_nil_bool_and_ext_fit_no_field(kind: str, value: Any) -> None:
    for path in record_fields(wire(SAMPLES[kind])):
        if value is None and optional(kind, path):
            assert getattr(p.decode(tampered(kind, path, value)), path[0]) is None  # nil: absent
            continue
        refused(tampered(kind, path, value), re.escape(dotted(kind, path)) + r": expected")


@pytest.mark.parametrize(
    ("top", "name"),
    [
        ([], "list"),
        (1, "int"),
        ("status", "str"),
        (None, "NoneType"),
        (b"x", "bytes"),
        (1.5, "float"),
    ],
)
def test_top_level_must_be_a_map(top: Any, name: str) -> None:
    refused(pack(top), rf"expected a msgpack map, got {name}")


def test_trailing_bytes_are_refused() -> None:
    frame = p.encode(SAMPLES["status"])
    refused(frame + b"\xc0", r"not msgpack: ExtraData")
    refused(frame + frame, r"not msgpack: ExtraData")


def test_truncated_and_empty_frames_are_refused() -> None:
    frame = p.encode(SAMPLES["jobs"])
    for cut in range(len(frame)):
        refused(frame[:cut], r"not msgpack")


def test_bad_utf8_and_int_keys_are_refused() -> None:
    good = pack({"v": 2, "type": "error", "re": 1, "code": "malformed", "text": "ab"})
    refused(good.replace(b"\xa2ab", b"\xa2\xff\xfe"), r"not msgpack: UnicodeDecodeError")
    refused(pack({"v": 2, "type": "status", "id": 1, 5: 0}), r"not msgpack: .*map key")
    info = {"v": 2, "type": "status_reply", "re": 1, "info": {"a": {1: 2}}}
    refused(pack(info), r"not msgpack: .*map key")


def test_oversize_frame_is_refused_before_parsing() -> None:
    refused(b"\x80" + bytes(p.MAX_MESSAGE_BYTES), rf"exceeds {p.MAX_MESSAGE_BYTES}")


def test_oversize_binaries_are_refused() -> None:
    big = bytes(p.MAX_PAYLOAD_BYTES + 1)
    refused(tampered("jobs", ("payloads", SHA), big), r"payloads\[.*\]: expected binary of at most")
    refused(
        tampered("jobs", ("jobs", 0, "stdin"), bytes(_records.MAX_STDIN_BYTES + 1)),
        r"stdin: .*16777216",
    )
    big_out = bytes(_records.MAX_OUTPUT_BYTES + 1)
    refused(tampered("results", ("results", 0, "output"), big_out), r"output: .*33554432 bytes")


def test_encode_refuses_an_oversize_frame() -> None:
    spec = p.JobSpec("t", SHA, (), bytes(_records.MAX_STDIN_BYTES), LIMITS, 1.0)
    with pytest.raises(p.ProtocolError, match=r"jobs message of \d+ bytes exceeds 67108864"):
        p.encode(p.Jobs(1, (spec,) * 5))


def test_limits_are_checked_when_made() -> None:
    with pytest.raises(p.ProtocolError, match=r"limits\.fuel"):
        p.Limits(fuel=0)
    with pytest.raises(p.ProtocolError, match=r"limits\.time_s"):
        p.Limits(time_s=float("nan"))
    with pytest.raises(p.ProtocolError, match=r"limits\.memory_mb"):
        p.Limits(memory_mb=True)


# Bugs found by these tests, fixed since.


@pytest.mark.parametrize("version", [True, 2.0, 1])
def test_version_must_be_the_integer_2(version: Any) -> None:
    refused(tampered("status", ("v",), version), r"protocol version")


@pytest.mark.parametrize("opener", [b"\x91", b"\x81\xa1k"], ids=["arrays", "maps"])
def test_deeply_nested_field_is_refused(opener: bytes) -> None:
    frame = b"\x83" + pack("v") + b"\x02" + pack("type") + pack("status") + pack("id")
    frame += opener * 1020 + b"\x01"  # msgpack itself stops at depth 1024
    refused(frame, r"status\.id: expected an integer")


def test_what_decode_accepts_encode_can_send() -> None:
    frame = b"\x84" + pack("v") + b"\x02" + pack("type") + pack("status_reply")
    frame += pack("re") + b"\x01" + pack("info") + b"\x81\xa1k" + b"\x91" * 1020 + b"\x01"
    decodes_or_refuses(frame)


@pytest.mark.parametrize(
    "msg",
    [
        p.Referral(1, ("d" * 257,)),
        p.Bored(-1, "ann", HOST),
        p.Bored(2**64, "ann", HOST),
        p.Error(1, p.ErrorCode.INTERNAL, "\ud800"),
        p.Results(1, "ann", (p.Result("t", p.Status.OK, "not bytes"),)),  # type: ignore[arg-type]
    ],
    ids=["long-address", "negative-id", "huge-id", "surrogate", "str-output"],
)
def test_encode_refuses_what_decode_refuses(msg: p.Message) -> None:
    with pytest.raises(p.ProtocolError):
        p.encode(msg)


# --- request_id ----------------------------------------------------------------------


@FAST
@given(st.one_of(MESSAGE_STRATEGIES[c] for c in (p.Bored, p.Results, p.StatusQuery)))
def test_request_id_of_a_request(msg: p.Message) -> None:
    assert p.request_id(p.encode(msg)) == msg.id  # type: ignore[attr-defined]


@FAST
@given(st.one_of(MESSAGE_STRATEGIES[c] for c in MESSAGE_STRATEGIES if "re" in c._SCHEMA))
def test_request_id_of_a_reply_is_0(msg: p.Message) -> None:
    assert p.request_id(p.encode(msg)) == 0


@pytest.mark.parametrize(
    "body",
    [
        {"v": 2, "type": "bored", "id": 42},  # missing fields
        {"v": 1, "type": "bored", "id": 42},  # wrong version
        {"v": 2, "type": "gimme", "id": 42},  # unknown type
        {"id": 42},
        {"v": 2, "type": "results", "id": 42, "jobber": "j", "results": [{"tag": 1}]},
    ],
)
def test_request_id_of_a_refused_request(body: dict[str, Any]) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(pack(body))
    assert p.request_id(pack(body)) == 42


@pytest.mark.parametrize(
    "data",
    [
        pack({"id": -1}),
        pack({"id": 1.0}),
        pack({"id": True}),
        pack({"id": "42"}),
        pack({"id": [42]}),
        pack({"re": 42}),
        pack([42]),
        pack(42),
        b"",
        b"\xc1",
        pack({"id": 42})[:-1],
        b"\x91" * 2000 + b"\x01",
    ],
)
def test_request_id_is_0_when_there_is_none(data: bytes) -> None:
    assert p.request_id(data) == 0


def test_request_id_takes_the_largest_id() -> None:
    assert p.request_id(pack({"id": _schema.MAX_U64})) == _schema.MAX_U64


@FUZZ
@given(st.binary(max_size=100) | anything.map(pack))
def test_request_id_never_raises(data: bytes) -> None:
    rid = p.request_id(data)
    assert type(rid) is int and 0 <= rid <= _schema.MAX_U64


# --- dealer addresses --------------------------------------------------------------

GOOD_ADDRESSES = [
    ("example.org", "tcp://example.org:7117"),
    ("example.org:9000", "tcp://example.org:9000"),
    ("tcp://example.org:9000", "tcp://example.org:9000"),
    ("tcp://example.org", "tcp://example.org:7117"),
    ("127.0.0.1", "tcp://127.0.0.1:7117"),
    ("127.0.0.1:1", "tcp://127.0.0.1:1"),
    ("h:65535", "tcp://h:65535"),
    ("h:08", "tcp://h:8"),
    ("  h:5 \n", "tcp://h:5"),
    ("[::1]", "tcp://[::1]:7117"),
    ("[::1]:9000", "tcp://[::1]:9000"),
    ("tcp://[fe80::1]:7200", "tcp://[fe80::1]:7200"),
    ("ipc:///run/dealer.sock", "ipc:///run/dealer.sock"),
    ("inproc://dealer", "inproc://dealer"),
]
BAD_ADDRESSES = [
    ("", r"empty dealer address"),
    ("  ", r"empty dealer address"),
    ("h:0", r"bad port '0'"),
    ("h:65536", r"bad port '65536'"),
    ("h:-1", r"bad port '-1'"),
    ("h:+1", r"bad port"),
    ("h:x", r"bad port 'x'"),
    ("h:1.5", r"bad port"),
    ("h: 1", r"bad port"),
    ("h:99999999999999999999", r"bad port"),
    ("tcp://h:1/x", r"bad port"),
    ("udp://h:1", r"only tcp://, ipc:// and inproc:// are known"),
    ("http://h", r"only tcp://"),
    ("TCP://h", r"only tcp://"),
    ("ipc://", r"only tcp://"),
    ("inproc://", r"only tcp://"),
    ("tcp://", r"bad host"),
    ("tcp://h/x", r"bad host"),
    (":7117", r"bad host"),
    ("a b:1", r"bad host"),
    ("[::1", r"unclosed \["),
    ("[::1]x", r"junk after \]"),
    ("[::1]:99999", r"bad port"),
]


@pytest.mark.parametrize(("text", "endpoint"), GOOD_ADDRESSES)
def test_dealer_address(text: str, endpoint: str) -> None:
    assert p.dealer_address(text) == endpoint
    assert p.dealer_address(endpoint) == endpoint


@pytest.mark.parametrize(("text", "pattern"), BAD_ADDRESSES)
def test_bad_dealer_address(text: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        p.dealer_address(text)


hostnames = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?\Z")


@FAST
@given(hostnames, st.integers(1, 65535) | st.none(), st.booleans())
def test_dealer_address_of_host_and_port(host: str, port: int | None, scheme: bool) -> None:
    text = ("tcp://" if scheme else "") + host + ("" if port is None else f":{port}")
    endpoint = p.dealer_address(text)
    assert endpoint == f"tcp://{host}:{p.DEFAULT_PORT if port is None else port}"
    assert p.dealer_address(endpoint) == endpoint


@FAST
@given(st.text(max_size=30))
def test_dealer_address_gives_an_endpoint_or_value_error(text: str) -> None:
    try:
        endpoint = p.dealer_address(text)
    except ValueError as e:
        assert str(e)
        return
    assert endpoint.startswith(("tcp://", "ipc://", "inproc://"))


@pytest.mark.parametrize(
    "text",
    [
        "::1",
        "fe80::1:8080",
        "h:1:2",
    ],
)
def test_dealer_address_refuses_or_brackets_bare_ipv6(text: str) -> None:
    """Write IPv6 in brackets: 'tcp://::1:7117' cannot be read back, 'a::1:80' is ambiguous."""
    try:
        endpoint = p.dealer_address(text)
    except ValueError:
        return
    assert p.dealer_address(endpoint) == endpoint


@pytest.mark.parametrize("port", ["\uff17\uff11", "\u0667"], ids=["fullwidth", "arabic-indic"])
def test_dealer_address_port_is_ascii(port: str) -> None:
    with pytest.raises(ValueError, match="bad port"):
        p.dealer_address(f"h:{port}")


# --- docs/protocol.md ---------------------------------------------------------------


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text()


def test_doc_names_every_type_field_status_and_code(doc: str) -> None:
    named = set(re.findall(r"`([a-z_0-9]+)`", doc))
    records = (p.Limits, p.HostFacts, p.JobSpec, p.Result, p.Rejection, p.Prefs, p.Project)
    records += (p.Attribution, p.Standing, p.About, p.Account)
    wanted = {*p.MESSAGES, *(m.value for m in p.Status), *(m.value for m in p.ErrorCode)}
    for cls in (*p.MESSAGES.values(), *records):
        wanted |= set(cls._SCHEMA)
    assert wanted - named == set()
    for cls in records:
        assert f"### {cls.__name__}" in doc


def test_doc_states_the_caps(doc: str) -> None:
    for number in (
        p.MAX_MESSAGE_BYTES,
        p.MAX_PAYLOAD_BYTES,
        _records.MAX_STDIN_BYTES,
        _records.MAX_OUTPUT_BYTES,
    ):
        assert f"{number:,}" in doc
    for number in (p.MAX_BATCH, p.MAX_STR, _records.MAX_ARGS, p.MAX_CACHED, p.DEFAULT_PORT):
        assert str(number) in doc


def test_doc_examples_are_what_the_encoder_writes(doc: str) -> None:
    blocks = re.findall(r"```text\n((?:[0-9a-f]{2} )*[0-9a-f]{2})\n```", doc)
    expected = [
        p.Bored(7, "ann", p.HostFacts(cpus=2, memory_mb=1024, slots=2), want=2),
        p.Results(8, "ann", (p.Result("t1", p.Status.OK, b"3\n", 1234),)),
        p.Ack(8, ("t1",)),
    ]
    assert [bytes.fromhex(b) for b in blocks] == [p.encode(m) for m in expected]
    assert f"{len(p.encode(expected[0]))}-byte frame" in doc


# --- tests/wrong_jobber.py: written from the doc alone -------------------------------------


def test_wrong_jobber_builds_valid_frames() -> None:
    assert p.decode(wj.bored(5, "liar", 3, [SHA])) == p.Bored(
        5, "liar", p.HostFacts(1, wj.MEMORY_MB, 1, (SHA,)), 3
    )
    claimed = p.decode(wj.bored(5, "liar", 3, [], "x86_64-linux-wasmtime-50.0.1-0123abcd"))
    assert claimed.host.platform == "x86_64-linux-wasmtime-50.0.1-0123abcd"
    batch = [wj.wrong_result("t1"), wj.wrong_result("\U0001f600")]
    assert p.decode(wj.results(6, "liar", batch)) == p.Results(
        6,
        "liar",
        (
            p.Result("t1", p.Status.OK, b"13\n", 1, ""),
            p.Result("\U0001f600", p.Status.OK, b"13\n", 1, ""),
        ),
    )


@pytest.mark.parametrize(
    "kind", ["jobs", "referral", "retry_later", "ack", "error", "status_reply", "hello_reply"]
)
def test_wrong_jobber_reads_real_replies(kind: str) -> None:
    reply = wj.parse_reply(p.encode(SAMPLES[kind]))
    assert reply == {**wire(SAMPLES[kind])}
    assert reply["type"] == kind and reply["re"] == SAMPLES[kind].re  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",
        pack([1]),
        tampered("ack", ("v",), 1),
        tampered("ack", ("v",), True),
        tampered("ack", ("re",), DELETE),
        tampered("ack", ("type",), 3),
    ],
)
def test_wrong_jobber_drops_what_is_not_a_reply(frame: bytes) -> None:
    assert wj.parse_reply(frame) is None


@pytest.mark.parametrize(("text", "endpoint"), GOOD_ADDRESSES)
def test_wrong_jobber_reads_addresses_like_the_project(text: str, endpoint: str) -> None:
    assert wj.endpoint(text) == endpoint
    key = "Ab" * 32
    assert wj.address(f"{text}#{key}") == (endpoint, key.lower())
    assert p.split_key(p.dealer_address(f"{text}#{key}")) == (endpoint, key.lower())


@pytest.mark.parametrize("text", [text for text, _ in BAD_ADDRESSES])
def test_wrong_jobber_refuses_bad_addresses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        wj.endpoint(text)


class FakeDealer:
    """A CurveZMQ ROUTER socket on loopback that speaks through protocol.encode/decode;
    `endpoint` is its full address, key included."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock, self.endpoint = fake_dealer(self.ctx)

    def recv(self, timeout_s: float = 10.0) -> tuple[bytes, p.Message]:
        assert self.sock.poll(int(timeout_s * 1000)), "the jobber sent nothing"
        ident, frame = self.sock.recv_multipart()  # exactly one frame after the identity
        return ident, p.decode(frame)

    def send(self, ident: bytes, msg: p.Message) -> None:
        self.sock.send_multipart([ident, p.encode(msg)])

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def test_wrong_jobber_against_a_fake_dealer() -> None:
    dealer = FakeDealer()
    wasm = b"\x00asm\x01\x00\x00\x00"
    sha = hashlib.sha256(wasm).hexdigest()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "wrong_jobber.py"), dealer.endpoint, "--name", "liar"]
        + ["--count", "3", "--max-idle", "20"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ident, msg = dealer.recv()
        assert isinstance(msg, p.Bored) and msg.jobber == "liar" and msg.host.cached == ()
        dealer.send(ident, p.RetryLater(msg.id, 0.05))

        ident, msg = dealer.recv()
        assert isinstance(msg, p.Bored)
        specs = (
            p.JobSpec("a", sha, ("x",), b"", LIMITS, 60.0),
            p.JobSpec("b", sha, (), b"", LIMITS, 60.0),
        )
        bad = hashlib.sha256(b"other").hexdigest()  # bytes that do not match: not cached
        dealer.send(ident, p.Jobs(msg.id, specs, {sha: wasm, bad: b"nope"}))

        ident, msg = dealer.recv()
        assert isinstance(msg, p.Results) and msg.jobber == "liar"
        assert {r.tag for r in msg.results} == {"a", "b"}
        assert all((r.status, r.output, r.fuel) == (p.Status.OK, b"13\n", 1) for r in msg.results)
        dealer.send(ident, p.Ack(msg.id, ("a",)))  # "b" named nowhere: sent again

        ident, msg = dealer.recv()
        assert isinstance(msg, p.Results) and [r.tag for r in msg.results] == ["b"]
        dealer.send(ident, p.Ack(msg.id, ("b",)))

        ident, msg = dealer.recv()
        assert isinstance(msg, p.Bored) and msg.host.cached == (sha,) and msg.want == 1
        dealer.send(ident, p.Jobs(msg.id, (p.JobSpec("c", sha, (), b"", LIMITS, 9.0),)))

        ident, msg = dealer.recv()
        assert isinstance(msg, p.Results) and [r.tag for r in msg.results] == ["c"]
        dealer.send(ident, p.Ack(msg.id, (), (p.Rejection("c", p.ErrorCode.SETTLED, "late"),)))

        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "3 wrong results delivered" in err
    finally:
        proc.kill()
        proc.wait()
        dealer.close()


def test_wrong_jobber_stops_when_idle() -> None:
    dealer = FakeDealer()
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "wrong_jobber.py"), dealer.endpoint, "--max-idle", "0.5"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ident, msg = dealer.recv()
        assert isinstance(msg, p.Bored) and msg.jobber == "wrong-jobber"
        dealer.send(ident, p.RetryLater(msg.id, 60.0))  # longer than --max-idle
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert time.monotonic() - start < 9
    finally:
        proc.kill()
        proc.wait()
        dealer.close()


# --- jobs.signatures (signed payloads) ----------------------------------------------------

ROT = p.Rotation(hashlib.sha256(b"old").hexdigest(), SHA, bytes(range(64)))
SIGNATURE = p.Signature(SHA, bytes(range(64, 128)), (ROT,))
SIGNED_JOBS = p.Jobs(1, (SPEC,), {}, {SHA: SIGNATURE})


def test_signed_jobs_round_trip_with_and_without_the_bytes() -> None:
    for msg in (
        SIGNED_JOBS,
        p.Jobs(1, (SPEC,), {SHA: b"payload"}, {SHA: SIGNATURE}),
        p.Jobs(1, (), signatures={SHA: p.Signature(SHA, bytes(64))}),
        p.Jobs(1, (SPEC,), signatures={}),
    ):
        back = p.decode(p.encode(msg))
        assert back == msg
        assert all(type(v) is p.Signature for v in (back.signatures or {}).values())
    body = wire(SIGNED_JOBS)["signatures"][SHA]
    assert body == {"key": SHA, "sig": bytes(range(64, 128)), "chain": [wire_rotation(ROT)]}
    assert type(body["sig"]) is bytes  # bin on the wire, not str


def wire_rotation(rot: p.Rotation) -> dict[str, Any]:
    return {"old": rot.old, "new": rot.new, "sig": rot.sig}


def test_signatures_are_optional_absent_or_nil() -> None:
    plain = p.Jobs(1, (SPEC,), {SHA: b"payload"})
    assert "signatures" not in wire(plain)  # a dealer that signs nothing sends nothing new
    assert p.decode(p.encode(plain)).signatures is None
    body = wire(SIGNED_JOBS)
    body["signatures"] = None
    assert p.decode(pack(body)).signatures is None
    # an old peer's view: the same jobs, with a key it does not know
    old_view = wire(SIGNED_JOBS)
    assert p.decode(pack({k: v for k, v in old_view.items() if k != "signatures"})) == p.Jobs(
        1, (SPEC,), {}
    )


def test_signatures_at_their_caps_round_trip() -> None:
    many = {hashlib.sha256(bytes([i])).hexdigest(): SIGNATURE for i in range(p.MAX_PAYLOADS)}
    chain = (ROT,) * p.MAX_ROTATIONS
    for msg in (
        p.Jobs(1, (), signatures=many),
        p.Jobs(1, (), signatures={SHA: p.Signature(SHA, bytes(64), chain)}),
    ):
        assert p.decode(p.encode(msg)) == msg


SIG_PATH = ("signatures", SHA)
SIGNATURE_CASES = [
    (("signatures",), [], r"jobs\.signatures: expected a map"),
    (("signatures",), "sig", r"jobs\.signatures: expected a map"),
    (
        ("signatures",),
        {
            hashlib.sha256(bytes([i])).hexdigest(): wire(SIGNED_JOBS)["signatures"][SHA]
            for i in range(65)
        },
        r"jobs\.signatures: expected a map of at most 64 entries",
    ),
    (SIG_PATH, [], r"jobs\.signatures\['[0-9a-f]{64}'\]: expected a map"),
    ((*SIG_PATH, "key"), DELETE, r"signatures\['[0-9a-f]{64}'\]: missing field 'key'"),
    ((*SIG_PATH, "sig"), DELETE, r"missing field 'sig'"),
    ((*SIG_PATH, "chain"), DELETE, r"missing field 'chain'"),
    ((*SIG_PATH, "key"), SHA.upper(), r"\.key: '[0-9A-F]{64}' does not match"),
    ((*SIG_PATH, "key"), bytes(32), r"\.key: expected a string"),
    ((*SIG_PATH, "sig"), bytes(63), r"\.sig: expected binary of exactly 64 bytes"),
    ((*SIG_PATH, "sig"), bytes(65), r"\.sig: expected binary of exactly 64 bytes"),
    ((*SIG_PATH, "sig"), b"", r"\.sig: expected binary of exactly 64 bytes"),
    ((*SIG_PATH, "sig"), "x" * 64, r"\.sig: expected binary of exactly 64 bytes"),
    ((*SIG_PATH, "sig"), None, r"\.sig: expected binary"),
    ((*SIG_PATH, "chain"), None, r"\.chain: expected a list"),
    ((*SIG_PATH, "chain"), [wire_rotation(ROT)] * 9, r"\.chain: expected a list of at most 8"),
    ((*SIG_PATH, "chain", 0), "link", r"\.chain\[0\]: expected a map"),
    ((*SIG_PATH, "chain", 0, "old"), DELETE, r"\.chain\[0\]: missing field 'old'"),
    ((*SIG_PATH, "chain", 0, "new"), DELETE, r"\.chain\[0\]: missing field 'new'"),
    ((*SIG_PATH, "chain", 0, "sig"), DELETE, r"\.chain\[0\]: missing field 'sig'"),
    ((*SIG_PATH, "chain", 0, "new"), SHA[:63], r"\.chain\[0\]\.new: .* does not match"),
    ((*SIG_PATH, "chain", 0, "sig"), bytes(32), r"\.chain\[0\]\.sig: expected binary of exactly"),
    ((*SIG_PATH, "chain", 0, "old"), True, r"\.chain\[0\]\.old: expected a string"),
]


def signed_tampered(path: tuple[Any, ...], value: Any) -> bytes:
    body = wire(SIGNED_JOBS)
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return pack(body)


@pytest.mark.parametrize(
    ("path", "value", "pattern"),
    SIGNATURE_CASES,
    ids=[case_id(("jobs", path, value, "")) for path, value, _ in SIGNATURE_CASES],
)
def test_bad_signatures_are_refused_with_a_clear_message(
    path: tuple, value: Any, pattern: str
) -> None:
    refused(signed_tampered(path, value), pattern)


def test_signature_keys_are_payload_hashes() -> None:
    body = wire(SIGNED_JOBS)
    body["signatures"] = {"payload": body["signatures"][SHA]}
    refused(pack(body), r"jobs\.signatures key: 'payload' does not match")


def test_doc_describes_the_signature_records(doc: str) -> None:
    for cls in (p.Signature, p.Rotation):
        section = doc.split(f"### {cls.__name__}\n", 1)[1].split("\n### ", 1)[0]
        rows = re.findall(r"^\| `([a-z_]+)` \|", section, re.M)
        assert rows == list(cls._SCHEMA), cls.__name__
    jobs = doc.split("### `jobs` (dealer to jobber)\n", 1)[1].split("\n### ", 1)[0]
    assert (
        "| `signatures` | map of hash to Signature, or nil | at most 64 entries; optional" in jobs
    )
    assert "also when it does not send the bytes" in jobs
    assert "`jobs.signatures`" in doc.split("## 1. Transport", 1)[0]  # the version note


def test_wrong_jobber_reads_signed_jobs_and_ignores_the_signatures() -> None:
    wasm = b"\x00asm\x01\x00\x00\x00"
    sha = hashlib.sha256(wasm).hexdigest()
    spec = p.JobSpec("a", sha, (), b"", LIMITS, 60.0)
    msg = p.Jobs(3, (spec,), {sha: wasm}, {sha: p.Signature(SHA, bytes(64), (ROT,))})
    reply = wj.parse_reply(p.encode(msg))
    assert reply is not None and reply["type"] == "jobs" and reply["re"] == 3
    jobber = wj.WrongJobber(None, "liar", None, None)
    jobber._take_jobs(reply)
    assert jobber.cached == [sha] and list(jobber.unacked) == ["a"]


def test_a_record_class_is_made_ready_safely_by_threads_encoding_it_at_once() -> None:
    """The codec compiles a class's checks on first use; a jobber's allocator link encodes
    from a thread of its own, possibly the same class as the loop, for the first time."""
    errors: list[BaseException] = []
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch all the time: any window shows
    try:
        _encode_fresh_classes_in_threads(errors)
    finally:
        sys.setswitchinterval(switch)
    assert errors == []


def _encode_fresh_classes_in_threads(errors: list[BaseException]) -> None:
    import threading
    from dataclasses import dataclass

    for i in range(60):

        @dataclass(frozen=True, slots=True)
        class Fresh(_messages.Message):  # a class no thread has encoded yet
            id: int
            host: p.HostFacts
            TYPE = f"fresh{i}"  # unannotated: class attributes, not fields
            _SCHEMA = {"id": _messages._ID, "host": _schema._record(p.HostFacts)}  # noqa: RUF012

        msg = Fresh(1, p.HostFacts(1, 1, 1))
        start = threading.Barrier(4)

        def encode(msg=msg, start=start) -> None:
            start.wait()
            try:
                p.encode(msg)
            except BaseException as e:  # noqa: BLE001 - collected for the assert below
                errors.append(e)

        threads = [threading.Thread(target=encode) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def test_a_preference_has_one_name_in_the_code_and_its_wire_name_on_the_wire() -> None:
    """Prefs names a preference as the jobber does; the BOINC-style name it has on the
    wire, in admin requests and in the allocator's tables is declared beside it, once."""
    prefs = p.Prefs(slots=2, cpu_limit=50.0, cache_mb=512, memory_mb=64)
    named = {"max_cpus": 2, "cpu_usage_limit": 50.0, "memory_mb": 64, "disk_mb": 512}
    assert prefs.named() == named
    msg = p.Instructions(1, "lab", 4, (), prefs, 60.0)
    assert wire(msg)["prefs"] == named
    assert p.decode(p.encode(msg)).prefs == prefs
    assert p.Prefs.from_names(named) == prefs
    assert p.Prefs.from_names({"max_cpus": None}) == p.Prefs()  # nil: not set
    with pytest.raises(p.ProtocolError, match="unknown preference 'slots'"):
        p.Prefs.from_names({"slots": 2})  # the code's name is not a wire name
    body = wire(msg)
    body["prefs"]["max_cpus"] = 0
    refused(pack(body), r"instructions\.prefs\.max_cpus: expected an integer in \[1, 4096\]")
    with pytest.raises(p.ProtocolError, match=r"prefs\.disk_mb"):
        p.Prefs(cache_mb=0)


def test_a_record_is_declared_once_and_its_schema_follows() -> None:
    """The schema (wire name: checker) is made from the fields' declarations, in field
    order, and a record without `checked` fields has none."""
    for cls in (*p.MESSAGES.values(), p.Limits, p.HostFacts, p.Prefs, p.Signature):
        names = [f.name for f in dataclasses.fields(cls)]
        assert [a for a, _, _ in cls._FIELDS] == names, cls.__name__
        assert list(cls._SCHEMA) == [n for _, n, _ in cls._FIELDS], cls.__name__
        assert all(c is cls._SCHEMA[n] for _, n, c in cls._FIELDS)
