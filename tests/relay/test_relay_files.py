"""The relay's input files (relay._files) through its pure core: a jobber's `fetch` of a
chunk the relay lacks is `busy` while the relay fetches it upstream (chunk 0 first, each
checked), then served from memory to every jobber; only files its jobs read (or its
runtimes need) are served; jobs with files or of a runtime go down only to jobbers that
take them; the upstream's runtime asks are passed down."""

from __future__ import annotations

import hashlib
import os

import pytest

import protocol as p
from net._link import Backoff, Link
from protocol._runtimes import PYTHON
from relay._files import (
    FETCH_RETRY_S,
    FETCHES,
    FILE_CACHE_MB,
    WANT_S,
    RelayFiles,
    runtime_files,
)
from tests.relay.test_relay import ANN, BOB, HOST, LIMITS, SHA, WASM, bored, core

DATA = os.urandom(p.CHUNK_BYTES + 1000)  # two chunks
FILE = hashlib.sha256(DATA).hexdigest()
CHUNKS = [DATA[: p.CHUNK_BYTES], DATA[p.CHUNK_BYTES :]]
DIGESTS = tuple(hashlib.sha256(c).digest() for c in CHUNKS)
TAKES = p.HostFacts(cpus=1, memory_mb=1024, slots=1, input_mb=64)


def with_file(tag: str) -> p.JobSpec:
    ref = p.FileRef(FILE, len(DATA))
    return p.JobSpec(tag, SHA, (tag,), b"", LIMITS, 100.0, files={"/input/t": ref})


def take(c, now: float, *specs: p.JobSpec, host=TAKES) -> None:
    """ANN asks; the relay asks upstream and takes `specs`."""
    bored(c, ANN, now, want=0, host=host)
    (ask,) = [m for m in c.upstream_requests(now) if isinstance(m, p.Bored)]
    c.upstream_reply(p.Jobs(ask.id, specs, {SHA: WASM}), now)


def fetch(c, key: str, index: int, now: float, sha: str = FILE) -> p.Message:
    return c.fetch(p.Fetch(7, sha, index), now, key)


def fetches(c, now: float) -> list[p.Fetch]:
    return [m for m in c.upstream_requests(now) if isinstance(m, p.Fetch)]


def chunk(req: p.Fetch, data=None, digests=DIGESTS) -> p.Chunk:
    return p.Chunk(
        req.id,
        req.hash,
        req.chunk,
        len(DATA),
        CHUNKS[req.chunk] if data is None else data,
        digests if req.chunk == 0 else None,
    )


def test_a_chunk_is_fetched_upstream_once_and_served_to_every_jobber():
    c = core()
    take(c, 0.0, with_file("u1"), with_file("u2"))
    busy = fetch(c, ANN, 1, 1.0)
    assert isinstance(busy, p.Error) and busy.code is p.ErrorCode.BUSY
    assert busy.retry_s == FETCH_RETRY_S and "coming from upstream" in busy.text
    first = fetches(c, 1.0)
    assert [(f.hash, f.chunk) for f in first] == [(FILE, 0)]  # the digests first
    c.upstream_reply(chunk(first[0]), 1.1)
    (second,) = fetches(c, 1.1)
    assert second.chunk == 1
    c.upstream_reply(chunk(second), 1.2)
    assert fetches(c, 1.3) == []
    for key in (ANN, BOB):  # both served from what the relay keeps
        zero, one = fetch(c, key, 0, 2.0), fetch(c, key, 1, 2.0)
        assert isinstance(zero, p.Chunk) and zero.digests == DIGESTS and zero.data == CHUNKS[0]
        assert isinstance(one, p.Chunk) and one.digests is None and one.data == CHUNKS[1]
        assert one.size == len(DATA)
    assert c.status(2.0, "up")["files"]["fetched"] == 2
    assert c.status(2.0, "up")["files"]["served"] == 4
    assert fetches(c, 3.0) == []  # nothing fetched again


def test_up_to_max_fetches_go_upstream_at_once_and_a_lost_one_is_asked_again():
    c = core()
    big = os.urandom(20 * p.CHUNK_BYTES)
    sha = hashlib.sha256(big).hexdigest()
    ref = p.FileRef(sha, len(big))
    take(c, 0.0, p.JobSpec("u1", SHA, (), b"", LIMITS, 100.0, files={"/input/b": ref}))
    digests = tuple(
        hashlib.sha256(big[i * p.CHUNK_BYTES : (i + 1) * p.CHUNK_BYTES]).digest() for i in range(20)
    )
    for i in range(20):
        fetch(c, ANN, i, 0.0, sha)
    (zero,) = fetches(c, 0.0)
    c.upstream_reply(p.Chunk(zero.id, sha, 0, len(big), big[: p.CHUNK_BYTES], digests), 0.1)
    out = fetches(c, 0.1)
    assert len(out) == len(FETCHES) == p.MAX_FETCHES
    assert [f.chunk for f in out] == list(range(1, 9))
    c.upstream_failed(0.2)  # a failed contact: all of them lost, asked again later
    again = fetches(c, 5.0)
    assert [f.chunk for f in again] == list(range(1, 9))


def test_a_chunk_that_fails_a_check_is_refused_and_wanted_again():
    c = core()
    take(c, 0.0, with_file("u1"))
    fetch(c, ANN, 0, 0.0)
    (req,) = fetches(c, 0.0)
    c.upstream_reply(chunk(req, data=b"x" * p.CHUNK_BYTES), 0.1)
    assert c.status(0.1, "up")["files"]["refused"] == 1
    assert isinstance(fetch(c, ANN, 0, 0.2), p.Error)  # still coming
    (again,) = fetches(c, 0.2)
    short = p.Chunk(again.id, FILE, 0, len(DATA), CHUNKS[0], DIGESTS[:1])  # one digest of two
    c.upstream_reply(short, 0.3)
    assert c.status(0.3, "up")["files"]["refused"] == 2
    (third,) = fetches(c, 0.4)
    c.upstream_reply(chunk(third), 0.5)
    assert isinstance(fetch(c, ANN, 0, 0.6), p.Chunk)


def test_only_files_the_relay_has_reason_to_serve_are_fetched():
    c = core()
    take(c, 0.0, with_file("u1"))
    other = fetch(c, ANN, 0, 0.0, "cd" * 32)
    assert isinstance(other, p.Error) and other.code is p.ErrorCode.UNKNOWN_FILE
    past = fetch(c, ANN, 2, 0.0)
    assert isinstance(past, p.Error) and past.code is p.ErrorCode.UNEXPECTED
    fetch(c, ANN, 0, 0.0)
    (req,) = fetches(c, 0.0)
    c.upstream_reply(p.Error(req.id, p.ErrorCode.UNKNOWN_FILE, "no such file"), 0.1)
    gone = fetch(c, ANN, 0, 0.2)
    assert isinstance(gone, p.Error) and gone.code is p.ErrorCode.UNKNOWN_FILE
    assert fetches(c, 0.3) == []


def test_a_busy_upstream_holds_the_relays_fetches_for_its_retry_s():
    c = core()
    take(c, 0.0, with_file("u1"))
    fetch(c, ANN, 0, 0.0)
    (req,) = fetches(c, 0.0)
    c.upstream_reply(p.Error(req.id, p.ErrorCode.BUSY, "busy: rationed", retry_s=2.0), 0.1)
    said = fetch(c, ANN, 0, 0.5)
    assert isinstance(said, p.Error) and said.retry_s == 1.6  # what is left of the wait
    assert fetches(c, 1.0) == []
    assert [f.chunk for f in fetches(c, 2.2)] == [0]


def test_jobs_with_files_go_only_to_jobbers_that_take_them():
    c = core()
    take(c, 0.0, with_file("u1"))
    no = bored(c, BOB, 1.0, host=HOST)  # takes no input files
    assert isinstance(no, p.RetryLater)
    assert no.reason == "every job here needs input files (this jobber takes none)"
    yes = bored(c, ANN, 1.0, host=TAKES)
    assert isinstance(yes, p.Jobs) and yes.jobs[0].files == with_file("x").files


def test_the_relay_lists_upstream_its_payloads_and_the_runtimes_its_jobbers_have_ready():
    c = core()
    take(c, 0.0, with_file("u1"))  # the relay holds payload SHA
    ready = p.HostFacts(cpus=1, memory_mb=1024, slots=1, cached=(PYTHON.sha256, "ef" * 32))
    bored(c, BOB, 1.0, want=0, host=ready)
    assert c.host(1.0).cached == (PYTHON.sha256, SHA)  # not BOB's own other payloads


def test_the_upstreams_runtime_asks_go_down_and_its_jobs_only_to_jobbers_with_it_ready():
    c = core()
    bored(c, ANN, 0.0, want=0)
    (ask,) = [m for m in c.upstream_requests(0.0) if isinstance(m, p.Bored)]
    assert PYTHON.sha256 not in ask.host.cached
    c.upstream_reply(p.RetryLater(ask.id, 5.0, "needs python", None, (PYTHON.sha256,)), 0.0)
    told = bored(c, ANN, 1.0)
    assert isinstance(told, p.RetryLater) and told.runtimes == (PYTHON.sha256,)
    # the runtime's module is served through the relay (fetched upstream meanwhile)
    busy = fetch(c, ANN, 0, 1.0, PYTHON.sha256)
    assert isinstance(busy, p.Error) and busy.code is p.ErrorCode.BUSY
    assert [(f.hash, f.chunk) for f in fetches(c, 1.0)] == [(PYTHON.sha256, 0)]
    # a jobber with it ready is listed upstream, and gets its jobs; one without, not
    ready = p.HostFacts(cpus=1, memory_mb=1024, slots=1, cached=(PYTHON.sha256,))
    bored(c, BOB, 10.0, want=0, host=ready)
    (ask,) = [m for m in c.upstream_requests(10.0) if isinstance(m, p.Bored)]
    assert PYTHON.sha256 in ask.host.cached
    py = p.JobSpec("u9", PYTHON.sha256, ("/s.py",), b"", LIMITS, 100.0)
    c.upstream_reply(p.Jobs(ask.id, (py,), {}), 10.0)  # a runtime's module never comes
    assert c.counts()["queued"] == 1  # kept, not given back invalid
    lacking = bored(c, ANN, 11.0)
    assert isinstance(lacking, p.RetryLater) and "python runtime ready" in lacking.reason
    assert lacking.runtimes == (PYTHON.sha256,)
    got = bored(c, BOB, 11.0, host=ready)
    assert isinstance(got, p.Jobs) and got.payloads == {}
    assert got.jobs[0].payload == PYTHON.sha256


# --- relay._files alone ------------------------------------------------------------


def files(max_bytes: int = 3 * p.CHUNK_BYTES) -> RelayFiles:
    return RelayFiles(Link(10.0, Backoff(min_s=1.0, max_s=8.0)), max_bytes)


def got(f: RelayFiles, now: float, sizes: dict[str, int], *chunks: tuple[str, int, bytes]):
    """Each (hash, index, bytes) asked by a jobber, fetched upstream and answered."""
    digests = {}
    for sha, index, _ in chunks:
        f.fetch(p.Fetch(1, sha, index), now, sizes)
    while True:
        reqs = f.requests(now, sizes)
        if not reqs:
            return
        for req in reqs:
            sha, data_of = req.hash, {i: d for s, i, d in chunks if s == req.hash}
            data = data_of[req.chunk]
            digests.setdefault(
                sha, tuple(hashlib.sha256(data_of[i]).digest() for i in sorted(data_of))
            )
            zero = digests[sha] if req.chunk == 0 else None
            f.reply(p.Chunk(req.id, sha, req.chunk, sizes[sha], data, zero), now, sizes)


def one_chunk_file(fill: int) -> tuple[str, bytes]:
    data = bytes([fill]) * p.CHUNK_BYTES
    return hashlib.sha256(data).hexdigest(), data


def test_the_cache_keeps_at_most_its_bytes_least_recently_served_out_first():
    f = files()
    blobs = [one_chunk_file(i) for i in range(4)]
    sizes = {sha: p.CHUNK_BYTES for sha, _ in blobs}
    for i, (sha, data) in enumerate(blobs[:3]):
        got(f, float(i), sizes, (sha, 0, data))
    assert f.cached_bytes == 3 * p.CHUNK_BYTES == sum(len(d) for d in f.chunks.values())
    f.fetch(p.Fetch(2, blobs[0][0], 0), 5.0, sizes)  # served: the most recently used now
    got(f, 6.0, sizes, (blobs[3][0], 0, blobs[3][1]))
    assert f.cached_bytes == 3 * p.CHUNK_BYTES  # the least recently served went: blob 1
    assert {sha for sha, _ in f.chunks} == {blobs[0][0], blobs[2][0], blobs[3][0]}
    again = f.fetch(p.Fetch(3, blobs[1][0], 0), 7.0, sizes)
    assert isinstance(again, p.Error) and again.code is p.ErrorCode.BUSY
    assert f.status()["served"] == 1 and f.status()["served_bytes"] == p.CHUNK_BYTES
    # a chunk kept again replaces itself, counted once
    f._keep((blobs[0][0], 0), blobs[0][1])
    assert f.cached_bytes == 3 * p.CHUNK_BYTES and len(f.chunks) == 3  # none evicted
    with pytest.raises(ValueError, match="must hold one chunk"):
        files(p.CHUNK_BYTES - 1)
    assert files(p.CHUNK_BYTES).max_bytes == p.CHUNK_BYTES
    assert RelayFiles(Link(10.0)).max_bytes == FILE_CACHE_MB << 20 == 512 * 1024 * 1024


def test_what_no_job_reads_any_more_is_forgotten():
    f = files()
    (a, da), (b, db) = one_chunk_file(1), one_chunk_file(2)
    sizes = {a: p.CHUNK_BYTES, b: p.CHUNK_BYTES}
    got(f, 0.0, sizes, (a, 0, da), (b, 0, db))
    f.unknown = {a, "cd" * 32}
    f.forget([a])
    assert list(f.chunks) == [(a, 0)] and f.cached_bytes == p.CHUNK_BYTES
    assert set(f.digests) == {a} and f.unknown == {a}


def test_a_want_nobody_repeats_for_want_s_is_dropped():
    f = files()
    sha, data = one_chunk_file(3)
    sizes = {sha: p.CHUNK_BYTES}
    f.fetch_after = 100.0  # nothing goes out meanwhile
    f.fetch(p.Fetch(1, sha, 0), 10.0, sizes)
    assert f.requests(10.0 + WANT_S, sizes) == [] and (sha, 0) in f.wanted
    assert f.requests(10.01 + WANT_S, sizes) == [] and not f.wanted


def test_every_check_a_jobber_makes_refuses_a_chunk_from_upstream():
    sha, data = one_chunk_file(4)
    digests = (hashlib.sha256(data).digest(),)
    sizes = {sha: p.CHUNK_BYTES}
    bad = {
        "another file": lambda r: p.Chunk(r.id, "ab" * 32, 0, p.CHUNK_BYTES, data, digests),
        "another chunk": lambda r: p.Chunk(r.id, sha, 1, p.CHUNK_BYTES, data, digests),
        "another size": lambda r: p.Chunk(r.id, sha, 0, p.CHUNK_BYTES + 1, data, digests),
        "short": lambda r: p.Chunk(r.id, sha, 0, p.CHUNK_BYTES, data[:-1], digests),
        "not a chunk": lambda r: p.Ack(r.id, ()),
    }
    for why, reply in bad.items():
        f = files()
        f.fetch(p.Fetch(1, sha, 0), 0.0, sizes)
        (req,) = f.requests(0.0, sizes)
        f.reply(reply(req), 0.0, sizes)
        assert f.refused == 1 and not f.chunks and (sha, 0) in f.wanted, why
        assert not f.line.out, why  # answered: its lane is free again
    f = files()
    f.fetch(p.Fetch(1, sha, 0), 0.0, sizes)
    (req,) = f.requests(0.0, sizes)
    f.reply(p.Chunk(req.id, sha, 0, p.CHUNK_BYTES, data, digests), 0.0, sizes)
    assert f.refused == 0 and list(f.chunks) == [(sha, 0)] and not f.wanted


def test_an_error_from_upstream_frees_its_lane_and_a_busy_without_retry_s_waits_half_a_second():
    f = files()
    sha, _ = one_chunk_file(5)
    sizes = {sha: p.CHUNK_BYTES}
    f.fetch(p.Fetch(1, sha, 0), 0.0, sizes)
    (req,) = f.requests(0.0, sizes)
    f.reply(p.Error(req.id, p.ErrorCode.BUSY, "busy"), 1.0, sizes)
    assert not f.line.out and f.fetch_after == 1.5
    f.fetch(p.Fetch(1, sha, 0), 1.0, sizes)
    assert f.requests(1.4, sizes) == [] and len(f.requests(1.5, sizes)) == 1


def test_a_runtimes_files_are_its_module_and_its_library():
    assert runtime_files([PYTHON.sha256, "cd" * 32]) == {
        PYTHON.sha256: PYTHON.size,
        **dict(PYTHON.files.values()),
    }
    assert len(runtime_files([PYTHON.sha256])) == 2


def test_the_core_counts_fetch_replies_as_contacts_refuses_denied_jobbers_and_forgets():
    c = core()
    assert c.files.max_bytes == FILE_CACHE_MB << 20
    take(c, 0.0, with_file("u1"))
    fetch(c, ANN, 0, 1.0)
    (req,) = fetches(c, 1.0)
    before = c.up.contacts
    c.upstream_reply(chunk(req), 2.0)
    assert c.up.contacts == before + 1 and c.up.last_reply == 2.0
    assert c.files.chunks  # kept
    bored(c, BOB, 2.0, want=0)
    c.deny(BOB, "test")
    denied = fetch(c, BOB, 0, 2.0)
    assert isinstance(denied, p.Error) and denied.code is p.ErrorCode.DENIED
    # the job done: no held job reads the file, and the next tick forgets it
    (job,) = bored(c, ANN, 3.0, host=TAKES).jobs
    c.results(p.Results(9, "ann", (p.Result(job.tag, p.Status.OK, b"7", 10),)), 3.0, ANN, "x")
    c.tick(3.0)
    assert not c.files.chunks and not c.files.digests


def test_the_files_served_follow_every_change_to_what_is_held():
    c = core()
    assert c.file_sizes() == {}  # made once, then remade after each change below
    take(c, 0.0, with_file("u1"), with_file("u2"))
    assert c.file_sizes() == {FILE: len(DATA)}
    # u1's result: u2 still reads it; u2 cancelled upstream too: nobody does
    (job, _) = bored(c, ANN, 1.0, host=TAKES).jobs
    c.results(p.Results(9, "ann", (p.Result(job.tag, p.Status.OK, b"7", 10),)), 1.0, ANN, "x")
    assert c.file_sizes() == {FILE: len(DATA)}
    (alive,) = [m for m in c.upstream_requests(10.0) if isinstance(m, p.Alive)]  # one is due
    c.upstream_reply(p.AliveAck(alive.id, 20.0, ("u2",)), 10.0)
    assert c.file_sizes() == {}
    # a restart: what the journal held is served again
    again = core()
    assert again.file_sizes() == {}
    again.load([("u3", with_file("u3"), 0.0, None, "", "")], [], [], 0, 0.0)
    assert again.file_sizes() == {FILE: len(DATA)}


def test_a_done_job_no_longer_makes_its_files_served():
    c = core()
    take(c, 0.0, with_file("u1"))
    (job,) = bored(c, ANN, 1.0, host=TAKES).jobs
    assert c.file_sizes() == {FILE: len(DATA)}
    c.results(p.Results(9, "ann", (p.Result(job.tag, p.Status.OK, b"7", 10),)), 1.0, ANN, "x")
    assert c.file_sizes() == {}  # done: its result waits to go up, its file is not read
