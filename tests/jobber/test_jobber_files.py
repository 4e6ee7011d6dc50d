"""The jobber's core and input files (jobber._inputs): which jobs with files it takes,
the fetches it sends (chunk 0 first, several out at once), the checks each chunk passes,
a bad whole file, `unknown_file`, the cap, the cache and pinning. Driven directly:
events and the time in, actions out. The store on disk (jobber._files) and its resume
after a restart are tested at the end with a real directory."""

from __future__ import annotations

import hashlib
import logging
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol as p
from jobber import _core as c
from jobber._files import FileStore
from jobber._inputs import nested_paths

KEY_A = "aa" * 32
SHA = "ab" * 32
LIVE = "tcp://127.0.0.1:7200"
LIMITS = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=1)
MIB = 1 << 20
CH = p.CHUNK_BYTES


def core_settings(**kw) -> c.Settings:
    """The settings these tests' cores run with, `kw` over them."""
    base = dict(
        name="j",
        slots=1,
        cpus=1,
        memory_mb=256,
        min_backoff_s=1.0,
        max_backoff_s=60.0,
        input_mb=64,
        cache_bytes=256 * MIB,
        buffer=4,
    )
    return c.Settings(**(base | kw))


def core(**kw) -> c.JobberCore:
    j = c.JobberCore(core_settings(**kw), [f"{LIVE}#{KEY_A}"], 0.0, rng=random.Random(1))
    j.cache_updated({SHA: (1000, 0)})
    j.take_actions()
    return j


def content(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def ref(data: bytes) -> p.FileRef:
    return p.FileRef(hashlib.sha256(data).hexdigest(), len(data))


def digests(data: bytes) -> tuple[bytes, ...]:
    n = p.chunk_count(len(data))
    return tuple(hashlib.sha256(data[i * CH : (i + 1) * CH]).digest() for i in range(n))


def chunk(re_: int, data: bytes, index: int, with_digests: bool | None = None) -> p.Chunk:
    give = index == 0 if with_digests is None else with_digests
    return p.Chunk(
        re_,
        ref(data).hash,
        index,
        len(data),
        data[index * CH : (index + 1) * CH],
        digests(data) if give else None,
    )


def spec(tag: str, files: dict[str, p.FileRef] | None = None) -> p.JobSpec:
    return p.JobSpec(tag, SHA, (), b"", LIMITS, 100.0, files)


def of(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def fetches(actions) -> list[p.Fetch]:
    return [a.msg for a in of(actions, c.Send) if isinstance(a.msg, p.Fetch)]


def take(j: c.JobberCore, *specs: p.JobSpec, now: float = 0.0) -> list:
    j.tick(now)
    (bored,) = [a.msg for a in of(j.take_actions(), c.Send) if isinstance(a.msg, p.Bored)]
    j.received(LIVE, p.Jobs(bored.id, specs), now)
    return j.take_actions()


def given_back(actions) -> dict[str, p.Result]:
    return {a.result.tag: a.result for a in of(actions, c.Spool)}


def keep_all(j: c.JobberCore, actions, store: FileStore | None = None) -> list:
    """Do what a shell does with KeepChunk actions: report a file whole once complete."""
    out = of(actions, c.KeepChunk)
    for a in actions:
        if store is not None and isinstance(a, c.DropFile):
            store.drop_partial(a.sha)
        if not isinstance(a, c.KeepChunk):
            continue
        if store is not None and store.keep_chunk(a.sha, a.size, a.index, a.data, a.digests):
            got = store.finish(a.sha)
            j.handle(c.FileKept(a.sha, a.size) if got is None else c.FileBad(a.sha, got), 0.0)
    if store is None:
        for sha in {a.sha for a in out}:
            if not j.partials[sha].missing():
                j.handle(c.FileKept(sha, j.partials[sha].size), 0.0)
    return out


def chunk_0_kept(seed: int, size: int = CH + 10) -> tuple[c.JobberCore, bytes, p.FileRef]:
    """A core holding job t.0, whose file of `size` bytes (two chunks by default) has come
    as far as its chunk 0 (and the digests with it), kept at 0.1."""
    data = content(size, seed=seed)
    f = ref(data)
    j = core()
    take(j, spec("t.0", {"/d": f}))
    j.tick(0.0)
    (f0,) = fetches(j.take_actions())
    j.received(LIVE, chunk(f0.id, data, 0), 0.1)
    keep_all(j, j.take_actions())
    return j, data, f


# --- what a jobber says and takes -----------------------------------------------------


def test_host_facts_say_the_cap_within_the_cache_and_the_files_held_newest_first():
    assert core().host_facts().input_mb == 64
    assert core(input_mb=4096, cache_bytes=100 * MIB).host_facts().input_mb == 100
    assert core(input_mb=None).host_facts().input_mb is None  # takes no job with files
    j = core()
    j.files_updated([("11" * 32, 5), ("22" * 32, 7)], {})
    assert j.host_facts().files == ("11" * 32, "22" * 32)
    assert core().host_facts().files is None


def test_a_job_over_the_cap_is_given_back_abandoned_with_the_reason():
    j = core(input_mb=8)
    big = p.FileRef("cd" * 32, 9 * MIB)
    back = given_back(take(j, spec("t.0", {"/in/big": big})))
    assert back["t.0"].status is p.Status.ABANDONED
    assert "input files" in back["t.0"].detail and "8 MiB" in back["t.0"].detail
    assert not j.buffer


def test_a_jobber_that_takes_no_files_gives_jobs_with_files_back():
    j = core(input_mb=None)
    back = given_back(take(j, spec("t.0", {"/x": p.FileRef("cd" * 32, 1)})))
    assert back["t.0"].status is p.Status.ABANDONED


def test_nested_guest_paths_are_invalid():
    assert nested_paths({"/a": None, "/a/b": None}) is not None  # type: ignore[dict-item]
    assert nested_paths({"/a/b": None, "/a/c": None, "/ab": None}) is None  # type: ignore[dict-item]
    j = core()
    f = p.FileRef("cd" * 32, 1)
    back = given_back(take(j, spec("t.0", {"/in": f, "/in/x": f})))
    assert back["t.0"].status is p.Status.INVALID and "nest" in back["t.0"].detail


def test_files_that_do_not_fit_the_cache_beside_those_pinned_are_given_back():
    j = core(cache_bytes=12 * MIB, input_mb=12)
    a, b = p.FileRef("c1" * 32, 6 * MIB), p.FileRef("c2" * 32, 6 * MIB)
    actions = take(j, spec("t.0", {"/a": a}), spec("t.1", {"/b": b}), spec("t.2", {"/a": a}))
    back = given_back(actions)
    # the payload's 1000 bytes and t.0's file fit; t.1's file does not beside them;
    # t.2 reads the file t.0 pins already: nothing new to keep
    assert list(back) == ["t.1"] and "does not fit the cache" in back["t.1"].detail
    assert [h.spec.tag for h in j.buffer] == ["t.0", "t.2"]
    assert j.held_files() == {a.hash}


# --- fetching ---------------------------------------------------------------------------


def test_a_job_waits_for_its_file_chunk_0_first_then_several_chunks_at_once():
    data = content(9 * MIB)
    f = ref(data)
    j = core()
    take(j, spec("t.0", {"/in/data": f}))
    j.tick(0.0)
    actions = j.take_actions()
    assert not of(actions, c.Start)  # held, not runnable: its file is not here
    (first,) = fetches(actions)
    assert (first.hash, first.chunk) == (f.hash, 0)  # alone: it brings the digests
    j.received(LIVE, chunk(first.id, data, 0), 0.1)
    keep_all(j, j.take_actions())
    j.tick(0.2)
    rest = fetches(j.take_actions())
    assert sorted(x.chunk for x in rest) == [1, 2]  # the others, all at once
    for x in rest:
        j.received(LIVE, chunk(x.id, data, x.chunk), 0.3)
    keep_all(j, j.take_actions())
    assert f.hash in j.files_held
    j.tick(0.4)
    (start,) = of(j.take_actions(), c.Start)
    assert start.spec.files == {"/in/data": f}
    assert j.host_facts().files == (f.hash,)


def test_at_most_eight_fetches_are_out_to_a_dealer():
    j, data, f = chunk_0_kept(seed=0, size=40 * MIB + 1)  # 11 chunks
    j.tick(0.2)
    out = fetches(j.take_actions())
    assert len(out) == p.MAX_FETCHES and len({x.id for x in out}) == p.MAX_FETCHES
    j.tick(0.3)
    assert not fetches(j.take_actions())  # none more while eight are out
    j.received(LIVE, chunk(out[0].id, data, out[0].chunk), 0.4)
    j.tick(0.5)
    (more,) = fetches(j.take_actions())
    assert more.chunk == 9


def test_a_job_waiting_for_files_lets_others_start_past_it():
    j = core()
    f = p.FileRef("cd" * 32, 10)
    take(j, spec("t.0", {"/x": f}), spec("t.1"))
    j.tick(0.0)
    (start,) = of(j.take_actions(), c.Start)
    assert start.spec.tag == "t.1"
    assert [h.spec.tag for h in j.buffer] == ["t.0"]
    assert "t.0" in (j.holding(LIVE) or ())  # held: the dealer hears it is ours


def test_bad_chunks_are_dropped_back_the_dealer_off_and_are_asked_again():
    data = content(5 * MIB)
    f = ref(data)
    j = core()
    take(j, spec("t.0", {"/d": f}))
    j.tick(0.0)
    (first,) = fetches(j.take_actions())
    wrong = bytearray(chunk(first.id, data, 0).data)
    wrong[0] ^= 1
    good = chunk(first.id, data, 0)
    j.received(LIVE, p.Chunk(first.id, f.hash, 0, f.size, bytes(wrong), good.digests), 0.1)
    assert not of(j.take_actions(), c.KeepChunk)
    link = j.links[LIVE]
    assert link.backoff.failures == 1 and not link.fetches
    j.tick(0.2)
    assert not fetches(j.take_actions())  # backed off
    j.tick(5.0)
    (again,) = fetches(j.take_actions())
    assert again.chunk == 0
    j.received(LIVE, chunk(again.id, data, 0), 5.1)
    (kept,) = of(j.take_actions(), c.KeepChunk)
    assert kept.index == 0 and kept.digests == digests(data)
    assert link.backoff.failures == 0


@pytest.mark.parametrize("flaw", ["hash", "index", "size", "length", "digest", "digests", "none"])
def test_every_kind_of_bad_chunk_is_refused_and_the_log_says_why(flaw, caplog):
    data = content(CH + 100, seed=3)
    f = ref(data)
    j = core()
    take(j, spec("t.0", {"/d": f}))
    j.tick(0.0)
    (first,) = fetches(j.take_actions())
    m = chunk(first.id, data, 0)
    fields = dict(re=m.re, hash=m.hash, chunk=m.chunk, size=m.size, data=m.data, digests=m.digests)
    if flaw == "hash":
        fields["hash"] = "ee" * 32
    elif flaw == "index":
        fields["chunk"] = 1
    elif flaw == "size":
        fields["size"] = f.size + 1
    elif flaw == "length":
        fields["data"] = m.data[:-1]
    elif flaw == "digest":
        fields["digests"] = (b"\0" * 32, m.digests[1])
    elif flaw == "digests":
        fields["digests"] = m.digests[:1]
    elif flaw == "none":
        fields["digests"] = None
    with caplog.at_level(logging.WARNING, logger="jobber._core"):
        j.received(LIVE, p.Chunk(**fields), 0.1)
    assert not of(j.take_actions(), c.KeepChunk)
    assert j.links[LIVE].backoff.failures == 1
    # the lender's log says which dealer sent what, and what was wrong with it
    why = {
        "hash": f"it is chunk 0 of {'ee' * 6}, not the one asked",
        "index": f"it is chunk 1 of {f.hash[:12]}, not the one asked",
        "size": f"it says the file is {f.size + 1:,} bytes, not {f.size:,}",
        "length": f"{CH - 1:,} bytes, not {CH:,}",
        "digest": "its bytes do not match its digest",
        "digests": "no digests for its 2 chunks",
        "none": "no digests for its 2 chunks",
    }[flaw]
    assert f"dealer {LIVE}: chunk 0 of input file {f.hash[:12]} refused: {why}; failure 1" in (
        caplog.text
    )


def test_a_chunk_answering_no_fetch_is_refused():
    j = core()
    data = content(10)
    j.received(LIVE, chunk(77, data, 0), 0.0)
    assert not of(j.take_actions(), c.KeepChunk) and j.links[LIVE].unasked == 1


def test_a_whole_file_that_is_not_its_name_is_dropped_and_its_jobs_given_back(tmp_path):
    data = content(100)
    named = p.FileRef("cd" * 32, 100)  # a name the bytes do not hash to
    j = core()
    take(j, spec("t.0", {"/d": named}))
    j.tick(0.0)
    (first,) = fetches(j.take_actions())
    m = chunk(first.id, data, 0)
    j.received(LIVE, p.Chunk(first.id, named.hash, 0, 100, data, m.digests), 0.1)
    store = FileStore(tmp_path)
    keep_all(j, j.take_actions(), store)
    back = given_back(j.take_actions())
    assert back["t.0"].status is p.Status.ABANDONED and "hash to" in back["t.0"].detail
    assert not j.buffer and named.hash not in j.files_held and not store.partials
    assert j.links[LIVE].ask_after >= c.REFUSED_PAYLOAD_WAIT_S  # asked less from now on
    assert list(tmp_path.iterdir()) == []


def test_unknown_file_gives_its_jobs_back_abandoned():
    j = core()
    f = p.FileRef("cd" * 32, 10)
    take(j, spec("t.0", {"/x": f}), spec("t.1", {"/y": f}))
    j.tick(0.0)
    (first,) = fetches(j.take_actions())
    j.received(LIVE, p.Error(first.id, p.ErrorCode.UNKNOWN_FILE, "no such file"), 0.1)
    back = given_back(j.take_actions())
    assert set(back) == {"t.0", "t.1"}
    assert all(r.status is p.Status.ABANDONED and "serves no" in r.detail for r in back.values())


def test_a_timed_out_fetch_is_a_failed_contact_and_asked_again():
    j = core(request_timeout_s=2.0)
    take(j, spec("t.0", {"/x": p.FileRef("cd" * 32, 10)}))
    j.tick(0.0)
    assert len(fetches(j.take_actions())) == 1
    j.tick(2.5)
    actions = j.take_actions()
    assert c.Reset(LIVE) in actions and j.links[LIVE].backoff.failures == 1
    assert not j.links[LIVE].fetches
    j.tick(10.0)
    assert [x.chunk for x in fetches(j.take_actions())] == [0]


def test_a_file_held_already_is_not_fetched_and_pinned_while_a_job_reads_it():
    j = core()
    f = p.FileRef("cd" * 32, 10)
    j.files_updated([(f.hash, 10)], {})
    take(j, spec("t.0", {"/x": f}))
    j.tick(0.0)
    actions = j.take_actions()
    assert not fetches(actions) and len(of(actions, c.Start)) == 1
    assert j.held_files() == {f.hash}


# --- the store on disk: chunks as they come, resume after a restart, eviction ------------


def test_a_restarted_store_resumes_from_the_chunks_it_has(tmp_path):
    data = content(3 * CH + 5, seed=7)
    f = ref(data)
    ds = digests(data)
    store = FileStore(tmp_path)
    assert not store.keep_chunk(f.hash, f.size, 0, data[:CH], ds)
    assert not store.keep_chunk(f.hash, f.size, 2, data[2 * CH : 3 * CH], None)
    # a torn write: chunk 3 half there (the digest check refuses it on restart)
    with open(tmp_path / f"{f.hash}.part", "r+b") as fh:
        fh.seek(3 * CH)
        fh.write(data[3 * CH : 3 * CH + 2])
    again = FileStore(tmp_path)  # a restart
    assert again.partials[f.hash].have == {0, 2}
    j = core()
    j.files_updated(again.whole(), again.partials)
    take(j, spec("t.0", {"/d": f}))
    j.tick(0.0)
    out = fetches(j.take_actions())
    assert sorted(x.chunk for x in out) == [1, 3]  # only the missing chunks
    for x in out:
        j.received(LIVE, chunk(x.id, data, x.chunk), 0.1)
    keep_all(j, j.take_actions(), again)
    assert f.hash in j.files_held and again.whole() == [(f.hash, f.size)]
    assert (tmp_path / f.hash).read_bytes() == data
    assert not (tmp_path / f"{f.hash}.digests").exists()
    assert (tmp_path / f.hash).stat().st_mode & 0o222 == 0  # read-only


def test_the_store_evicts_least_recently_used_first_never_those_kept(tmp_path):
    store = FileStore(tmp_path)
    shas = []
    for i in range(3):
        data = content(1000, seed=i)
        sha = hashlib.sha256(data).hexdigest()
        store.keep_chunk(sha, 1000, 0, data, digests(data))
        assert store.finish(sha) is None
        os.utime(store.path(sha), (100 + i, 100 + i))
        shas.append(sha)
    assert [s for s, _ in store.whole()] == shas[::-1]  # most recently used first
    assert store.evict(1500, keep={shas[0]}) == 2  # the oldest is kept: the next two go
    assert [s for s, _ in store.whole()] == [shas[0]]


@settings(max_examples=10, deadline=None)
@given(order=st.permutations(range(4)), size=st.integers(3 * CH + 1, 4 * CH))
def test_chunks_in_any_order_make_the_file(tmp_path_factory, order, size):
    root = tmp_path_factory.mktemp("store")
    data = content(size, seed=size)
    f = ref(data)
    store = FileStore(root)
    ds = digests(data)
    store.keep_chunk(f.hash, size, 0, data[:CH], ds)
    done = False
    for i in [i for i in order if i != 0]:
        done = store.keep_chunk(f.hash, size, i, data[i * CH : (i + 1) * CH], None)
    assert done and store.finish(f.hash) is None
    assert store.path(f.hash).read_bytes() == data


def test_a_learnt_key_in_doubt_is_checked_before_fetches_go_on():
    j = core()
    link = j.links[LIVE]
    link.key_from_hello = True  # learnt on first use: re-checked after a failure
    take(j, spec("t.0", {"/x": p.FileRef("cd" * 32, 10)}))
    j.tick(0.0)
    assert len(fetches(j.take_actions())) == 1
    j.tick(20.0)  # the fetch timed out: a failed contact, the key in doubt
    j.take_actions()
    j.tick(50.0)
    actions = j.take_actions()
    (hello,) = of(actions, c.Hello)
    assert not fetches(actions)
    j.received(LIVE, p.HelloReply(hello.msg.id, KEY_A), 50.1)
    j.tick(50.2)
    assert [x.chunk for x in fetches(j.take_actions())] == [0]


@settings(max_examples=15, deadline=None)
@given(
    size=st.integers(0, 3 * CH + 10),
    fates=st.lists(st.sampled_from(["answer", "corrupt", "lose", "late"]), max_size=40),
)
def test_whatever_the_dealer_does_only_right_chunks_are_kept_once_each(size, fates):
    """Chunks answered, corrupted, lost (timed out) or answered late, in any order: every
    chunk kept is the file's own bytes at its index, none twice; with honest answers after,
    the file is whole."""
    data = content(size, seed=size)
    f = ref(data)
    j = core(request_timeout_s=2.0, min_backoff_s=0.5, max_backoff_s=1.0)
    take(j, spec("t.0", {"/d": f}))
    now, out, late = 0.0, [], []
    kept: list[int] = []
    fates = fates + ["answer"] * 60
    for fate in fates:
        now += 0.3
        j.tick(now)
        out += fetches(j.take_actions())
        if f.hash in j.files_held:
            break
        if not out:
            now += 1.0  # backed off or waiting on a timeout
            continue
        x = out.pop(0)
        m = chunk(x.id, data, x.chunk)
        if fate == "corrupt" and m.data:
            m = p.Chunk(
                m.re, m.hash, m.chunk, m.size, bytes([m.data[0] ^ 1]) + m.data[1:], m.digests
            )
        if fate == "lose":
            continue
        if fate == "late":
            late.append(m)
            continue
        for msg in [*late, m]:
            j.received(LIVE, msg, now)
        late.clear()
        for a in keep_all(j, j.take_actions()):
            assert a.data == data[a.index * CH : (a.index + 1) * CH]
            kept.append(a.index)
    assert f.hash in j.files_held
    assert sorted(kept) == list(range(p.chunk_count(size)))


def test_the_cap_said_never_passes_the_wires():
    huge = core(input_mb=10**9, cache_bytes=None).host_facts()
    assert huge.input_mb == p.MAX_FILE_BYTES >> 20


def test_a_job_waiting_past_its_deadline_for_its_files_is_given_back_and_asking_goes_on():
    j = core(buffer=None)
    j._job_s = 1.0
    late = p.JobSpec("t.0", SHA, (), b"", LIMITS, 5.0, {"/x": p.FileRef("cd" * 32, 10)})
    take(j, late)
    j.links[LIVE].ask_after = 0.0
    assert len(j.buffer) == 1  # it waits for its file
    j.tick(50.0)  # its deadline passed while its file is still coming
    actions = j.take_actions()
    back = given_back(actions)
    assert back["t.0"].status is p.Status.ABANDONED and "deadline" in back["t.0"].detail
    assert not j.buffer
    asks = [a.msg for a in of(actions, c.Send) if isinstance(a.msg, p.Bored)]
    assert len(asks) == 1


def test_busy_is_no_failure_the_chunk_is_asked_again_after_retry_s_and_asking_goes_on():
    data = content(9 * MIB)
    f = ref(data)
    j = core()
    take(j, spec("t.0", {"/d": f}))
    j.tick(0.0)
    sent = [a.msg for a in of(j.take_actions(), c.Send)]
    (first,) = fetches([c.Send(LIVE, m) for m in sent])
    (ask,) = [m for m in sent if isinstance(m, p.Bored)]
    link = j.links[LIVE]
    busy = "busy: fetch is rationed; ask again in 2.00 s"
    j.received(LIVE, p.Error(first.id, p.ErrorCode.BUSY, busy, retry_s=2.0), 0.1)
    assert link.backoff.failures == 0 and link.backoff.ready(0.1) and not link.fetches
    assert c.Reset(LIVE) not in j.take_actions() and link.bored_id == ask.id  # the ask stays
    assert [h.spec.tag for h in j.buffer] == ["t.0"]  # it waits on
    assert j.wake_at(0.2) == 2.1  # the shell wakes for the fetch
    j.received(LIVE, p.RetryLater(ask.id, 0.0), 0.15)
    j.tick(0.2)
    actions = j.take_actions()
    assert not fetches(actions)  # not before retry_s
    assert [a.msg for a in of(actions, c.Send) if isinstance(a.msg, p.Bored)]  # asks go on
    j.tick(2.09)
    assert not fetches(j.take_actions())
    j.tick(2.1)
    (again,) = fetches(j.take_actions())
    assert (again.hash, again.chunk) == (f.hash, 0) and again.id != first.id
    # no retry_s said: BUSY_WAIT_S, the second docs/protocol.md gives the reference jobber
    assert c.BUSY_WAIT_S == 1.0
    j.received(LIVE, p.Error(again.id, p.ErrorCode.BUSY, "busy"), 3.0)
    j.tick(3.0 + c.BUSY_WAIT_S - 0.01)
    assert not fetches(j.take_actions())
    j.tick(3.0 + c.BUSY_WAIT_S)
    (third,) = fetches(j.take_actions())
    j.received(LIVE, chunk(third.id, data, 0), 4.1)
    assert [k.index for k in of(j.take_actions(), c.KeepChunk)] == [0]
    assert link.backoff.failures == 0


def test_a_dealer_busy_for_ever_keeps_its_waiting_job_only_until_its_deadline():
    j = core(buffer=None)
    f = p.FileRef("cd" * 32, 10)
    take(j, spec("t.0", {"/x": f}))  # its deadline: 100 s
    now, asked, back = 0.0, 0, {}
    while j.buffer and now < 200.0:
        j.tick(now)
        actions = j.take_actions()
        back.update(given_back(actions))
        for x in [a.msg for a in of(actions, c.Send)]:
            if isinstance(x, p.Fetch):
                asked += 1
                j.received(LIVE, p.Error(x.id, p.ErrorCode.BUSY, "busy", retry_s=10.0), now)
            elif isinstance(x, p.Bored):
                j.received(LIVE, p.RetryLater(x.id, 5.0), now)
            elif isinstance(x, p.Alive):
                j.received(LIVE, p.AliveAck(x.id, 20.0), now)
        now += 1.0
    assert back["t.0"].status is p.Status.ABANDONED and "deadline" in back["t.0"].detail
    assert now == 101.0 and asked == 10  # asked every 10 s, never backed off
    assert j.links[LIVE].backoff.failures == 0


# --- what the store says it holds, and what a job may name --------------------------------


def test_a_partial_file_the_store_no_longer_holds_is_fetched_from_chunk_0_again():
    data = content(CH + 10, seed=20)
    f = ref(data)
    j = core()
    j.files_updated([], {f.hash: c.Partial(f.size, digests(data), {0})})
    j.files_updated([], {})  # the store lost it since (say, its chunk 0 failed a re-check)
    take(j, spec("t.0", {"/d": f}))
    j.tick(0.0)
    # not chunk 1 against digests the store no longer keeps: from the start
    assert [(x.hash, x.chunk) for x in fetches(j.take_actions())] == [(f.hash, 0)]


@pytest.mark.parametrize("same", [True, False])
def test_who_sent_a_partial_files_digests_is_kept_while_the_store_keeps_those_digests(same):
    """The shell reports the store after each chunk: the dealer whose chunk 0 brought the
    digests stays blamed for a bad file while the store keeps its digests, not after."""
    j, data, f = chunk_0_kept(seed=21)
    kept = digests(data) if same else digests(content(CH + 10, seed=22))
    j.files_updated([], {f.hash: c.Partial(f.size, kept, {0})})
    j.handle(c.FileBad(f.hash, "ee" * 32), 0.2)
    back = given_back(j.take_actions())
    if same:  # LIVE made it: its job goes back, and it is asked less
        assert "hash to" in back["t.0"].detail
        assert j.links[LIVE].ask_after >= c.REFUSED_PAYLOAD_WAIT_S
    else:  # begun from digests no dealer of this run sent: nobody blamed, it waits on
        assert not back and [h.spec.tag for h in j.buffer] == ["t.0"]
        assert j.links[LIVE].ask_after < c.REFUSED_PAYLOAD_WAIT_S


@pytest.mark.parametrize("held", ["whole", "partial"])
def test_a_job_naming_a_file_held_at_another_size_is_invalid(held):
    sha = "cd" * 32
    j = core()
    if held == "whole":
        j.files_updated([(sha, 100)], {})
    else:
        j.files_updated([], {sha: c.Partial(100, (b"\0" * 32,), {0})})
    back = given_back(take(j, spec("t.0", {"/d": p.FileRef(sha, 200)}), spec("t.1")))
    assert back["t.0"].status is p.Status.INVALID
    assert f"input file /d ({sha[:12]}) is 100 bytes, not 200" in back["t.0"].detail
    assert "t.1" not in back  # the others in the same message are taken


def test_an_empty_input_file_takes_no_room_in_the_cache():
    empty = p.FileRef(hashlib.sha256(b"").hexdigest(), 0)
    j = core(cache_bytes=MIB)
    assert not given_back(take(j, spec("t.0", {"/e": empty})))
    j.links[LIVE].ask_after = 0.0
    rest = p.FileRef("c3" * 32, MIB - 1000)  # all the payload's 1000 bytes leave
    assert not given_back(take(j, spec("t.1", {"/r": rest}), now=0.5))  # exactly full
    assert [h.spec.tag for h in j.buffer] == ["t.0", "t.1"]


def test_payloads_over_the_cache_leave_input_files_nothing():
    j = core(cache_bytes=10 * MIB)
    take(j, spec("t.0", {"/a": p.FileRef("c1" * 32, 100)}))
    j.cache_updated({SHA: (8 * MIB, 4 * MIB)})  # its payload, compiled: past the cache
    assert j.files_allowance() == 0


def test_of_a_jobs_files_only_those_not_held_are_fetched():
    held, wanted = p.FileRef("c1" * 32, 10), p.FileRef("c2" * 32, 10)
    j = core()
    j.files_updated([(held.hash, 10)], {})
    take(j, spec("t.0", {"/a": held, "/b": wanted}))
    j.tick(0.0)
    assert [(x.hash, x.chunk) for x in fetches(j.take_actions())] == [(wanted.hash, 0)]


# --- jobs that wait, and the dealer's answers to fetches ------------------------------------


def test_only_the_jobs_past_their_deadline_are_given_back_for_want_of_files():
    f = p.FileRef("cd" * 32, 10)
    j = core()
    short = p.JobSpec("t.0", SHA, (), b"", LIMITS, 5.0, {"/x": f})
    take(j, short, spec("t.1", {"/x": f}))  # t.1's deadline: 100 s
    j.tick(10.0)
    back = given_back(j.take_actions())
    assert list(back) == ["t.0"] and "deadline" in back["t.0"].detail
    assert back["t.0"].fuel == 0 and not back["t.0"].output  # given back unrun
    assert [h.spec.tag for h in j.buffer] == ["t.1"]  # its own deadline is far: it waits


def _answer_next_fetch(j: c.JobberCore, now: float, reply) -> dict[str, p.Result]:
    """The next fetch the core sends at `now` is answered `reply(fetch)`; the jobs that
    are given back then."""
    j.tick(now)
    (fe,) = fetches(j.take_actions())
    j.received(LIVE, reply(fe), now)
    return given_back(j.take_actions())


def test_denied_counts_in_a_row_a_chunk_or_busy_between_starts_it_again():
    data = content(CH + 10, seed=23)
    f = ref(data)
    j = core(request_timeout_s=1000.0)
    take(j, p.JobSpec("t.0", SHA, (), b"", LIMITS, 10_000.0, {"/x": f}))

    def denied(fe):
        return p.Error(fe.id, p.ErrorCode.DENIED, "banned")

    def busy(fe):
        return p.Error(fe.id, p.ErrorCode.BUSY, "busy", retry_s=1.0)

    def genuine(fe):
        return chunk(fe.id, data, fe.chunk)

    now = 0.0
    for reply in [denied, denied, busy, denied, denied, genuine, denied, denied]:
        now += 100.0  # past any backoff
        assert not _answer_next_fetch(j, now, reply)  # never three denials in a row
    keep_all(j, [])
    assert [h.spec.tag for h in j.buffer] == ["t.0"]
    back = _answer_next_fetch(j, now + 100.0, denied)  # the third in a row
    assert "denies" in back["t.0"].detail
    # and it is asked for no file again: a later job of its gets no fetch out to it
    j.received(LIVE, p.Jobs(j.links[LIVE].bored_id, (spec("t.1", {"/x": f}),)), now + 200.0)
    assert [h.spec.tag for h in j.buffer] == ["t.1"]
    j.tick(now + 250.0)  # its backoff over, t.1's deadline not yet
    assert not fetches(j.take_actions())


def test_busy_is_an_answer_the_fetch_never_times_out_after_it():
    j = core(request_timeout_s=2.0)
    take(j, spec("t.0", {"/x": p.FileRef("cd" * 32, 10)}))
    j.tick(0.0)
    (fe,) = fetches(j.take_actions())
    j.received(LIVE, p.Error(fe.id, p.ErrorCode.BUSY, "busy", retry_s=30.0), 0.1)
    actions = _quiet_until(j, 0.2, 10.0)
    assert c.Reset(LIVE) not in actions and j.links[LIVE].backoff.failures == 0


def test_a_chunk_no_job_needs_any_more_is_an_answer_all_the_same():
    data = content(100, seed=24)
    f = ref(data)
    j = core(request_timeout_s=10.0)
    take(j, p.JobSpec("t.0", SHA, (), b"", LIMITS, 5.0, {"/x": f}))
    j.tick(0.0)
    (fe,) = fetches(j.take_actions())
    j.tick(6.0)  # past its deadline: given back
    assert "t.0" in given_back(j.take_actions())
    j.received(LIVE, chunk(fe.id, data, 0), 6.5)  # its fetch answered late
    assert not of(j.take_actions(), c.KeepChunk)  # no job reads it: nothing kept
    actions = _quiet_until(j, 7.0, 15.0)  # past the fetch's deadline: nothing is out
    assert c.Reset(LIVE) not in actions and j.links[LIVE].backoff.failures == 0


def _quiet_until(j: c.JobberCore, start: float, end: float) -> list:
    """Turns from `start` to `end`, a second apart: LIVE answers its `alive` and ask out
    (no work) at once, and nothing else. All the actions."""
    out, now, link = [], start, j.links[LIVE]
    while now <= end:
        j.tick(now)
        out += j.take_actions()
        if link.alive_id is not None:
            j.received(LIVE, p.AliveAck(link.alive_id, 60.0), now)
        if link.bored_id is not None:
            j.received(LIVE, p.RetryLater(link.bored_id, 0.5), now)
        out += j.take_actions()
        now += 1.0
    return out


def test_a_chunk_bringing_other_digests_than_chunk_0_s_is_refused(caplog):
    j, data, f = chunk_0_kept(seed=25)
    j.tick(0.2)
    (f1,) = fetches(j.take_actions())
    other = digests(content(CH + 10, seed=26))
    m = chunk(f1.id, data, 1)  # its bytes are right; the digests it brings are not
    with caplog.at_level(logging.WARNING, logger="jobber._core"):
        j.received(LIVE, p.Chunk(m.re, m.hash, 1, m.size, m.data, other), 0.3)
    assert not of(j.take_actions(), c.KeepChunk)
    assert j.links[LIVE].backoff.failures == 1  # its own digests: its fault
    assert "its digests differ from chunk 0's" in caplog.text


def test_a_learnt_key_in_doubt_is_checked_for_a_fetch_even_while_no_work_is_asked():
    j = core(request_timeout_s=2.0)
    link = j.links[LIVE]
    link.key_from_hello = True
    take(j, spec("t.0", {"/x": p.FileRef("cd" * 32, 10)}))
    link.ask_after = 1000.0  # it said: no work for a while (so no ask goes, nor its hello)
    j.tick(0.0)
    assert len(fetches(j.take_actions())) == 1
    j.tick(3.0)  # the fetch timed out: the key in doubt
    j.take_actions()
    j.tick(50.0)
    actions = j.take_actions()
    (hello,) = of(actions, c.Hello)  # asked for the fetch's sake
    assert not fetches(actions)
    j.received(LIVE, p.HelloReply(hello.msg.id, KEY_A), 50.1)
    j.tick(50.2)
    assert [x.chunk for x in fetches(j.take_actions())] == [0]


# --- the disk refuses an input file --------------------------------------------------------


def test_a_disk_that_will_not_keep_a_chunk_gives_its_files_jobs_back_and_stops_the_rest():
    f, g = p.FileRef("c1" * 32, 10), p.FileRef("c2" * 32, 10)
    j = core(request_timeout_s=1000.0)
    take(j, spec("t.0", {"/f": f}), spec("t.1", {"/g": g}))
    j.tick(0.0)
    out = {x.hash: x for x in fetches(j.take_actions())}
    assert set(out) == {f.hash, g.hash}
    j.received(LIVE, p.Error(out[g.hash].id, p.ErrorCode.BUSY, "busy", retry_s=1.0), 0.1)
    j.handle(c.FileStoreFailed(f.hash, "No space left on device"), 0.1)
    back = given_back(j.take_actions())
    assert list(back) == ["t.0"] and back["t.0"].status is p.Status.ABANDONED
    assert "disk is full or read-only" in back["t.0"].detail
    assert "cannot store an input file: No space left on device" in j.disk_trouble
    j.tick(2.0)
    actions = j.take_actions()
    assert of(actions, c.ProbeDisk)  # the disk is probed until it takes writes again
    assert not of(actions, c.Send)  # no fetch, no ask for work
    j.disk_ok()
    j.tick(3.0)
    assert [x.hash for x in fetches(j.take_actions())] == [g.hash]
