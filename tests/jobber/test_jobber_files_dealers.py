"""Input files that several dealers' jobs read (jobber._inputs): which dealer a file comes
from, whose digests judge its chunks, whom a bad file blames; the core and the store
(jobber._files) never differing on a partial file; files in hand counted at their size;
jobs waiting for files given back once they cannot come; the store's writes and its
check off the loop. The core is driven directly (events and the time in, actions out),
the store with a real directory."""

from __future__ import annotations

import hashlib
import os
import random
import select

import pytest

import protocol as p
from jobber import _core as c
from jobber._files import Diverged, FileChecker, FileStore
from tests.helpers import wait_for
from tests.jobber.test_jobber_files import (
    CH,
    KEY_A,
    LIMITS,
    LIVE,
    MIB,
    SHA,
    chunk,
    content,
    core,
    core_settings,
    digests,
    fetches,
    given_back,
    keep_all,
    of,
    ref,
    spec,
    take,
)

KEY_B = "bb" * 32
LIVE2 = "tcp://127.0.0.1:7201"


def core2(**kw) -> c.JobberCore:
    """A core with two dealers, LIVE and LIVE2, their keys known."""
    told = core_settings(**({"request_timeout_s": 1000.0} | kw))
    j = c.JobberCore(told, [f"{LIVE}#{KEY_A}", f"{LIVE2}#{KEY_B}"], 0.0, rng=random.Random(1))
    j.cache_updated({SHA: (1000, 0)})
    j.take_actions()
    return j


def take_from(j: c.JobberCore, dealer: str, *specs: p.JobSpec, now: float = 0.0) -> list:
    """`dealer` answers the core's next ask to it with `specs`; the actions that follow."""
    bored = j.links[dealer].bored_id  # an ask out already (an earlier tick sent it)
    for k in range(0 if bored is not None else 200):
        j.tick(now + k * 0.01)
        asks = [
            a.msg
            for a in of(j.take_actions(), c.Send)
            if isinstance(a.msg, p.Bored) and a.dealer == dealer
        ]
        if asks:
            bored = asks[0].id
            break
    assert bored is not None, f"{dealer} never asked"
    j.received(dealer, p.Jobs(bored, specs), now)
    return j.take_actions()


def sent_fetches(actions) -> list[tuple[str, p.Fetch]]:
    return [(a.dealer, a.msg) for a in of(actions, c.Send) if isinstance(a.msg, p.Fetch)]


def both_read(j: c.JobberCore, f: p.FileRef, n: int = 0, now: float = 0.0) -> None:
    """m.`n` from LIVE and h.`n` from LIVE2 both read `f`; no fetch out yet."""
    take_from(j, LIVE, spec(f"m.{n}", {"/x": f}), now=now)
    take_from(j, LIVE2, spec(f"h.{n}", {"/x": f}), now=now + 0.1)
    forget_fetches(j)


def forget_fetches(j: c.JobberCore) -> None:
    """The fetches out are forgotten (those the asks' ticks sent, before the test's own)."""
    for link in j.links.values():
        for lane in list(link.fetches):
            link.req.forget(lane)
        link.fetches.clear()


def serve(j: c.JobberCore, data: bytes, store: FileStore, now: float, rounds: int = 20):
    """Each dealer answers every fetch out with the genuine chunk, until none is out."""
    for k in range(rounds):
        j.tick(now + k * 0.01)
        out = sent_fetches(j.take_actions())
        if not out:
            return
        for dealer, f in out:
            j.received(dealer, chunk(f.id, data, f.chunk), now + k * 0.01)
        keep_all(j, j.take_actions(), store)


# --- the cache: files in hand counted at their size ------------------------------------


def first_fetch_of_both(tmp_path, size: int = CH + 100, seed: int = 5):
    """A core whose buffered jobs from both dealers read one file of `size` bytes (two
    chunks by default), kept in a real store under `tmp_path`: the core, the file's bytes
    and ref, the store, and the dealer and `fetch` of its chunk 0, sent at 0.2."""
    data = content(size, seed=seed)
    f = ref(data)
    store = FileStore(tmp_path)
    j = core2()
    both_read(j, f)
    j.tick(0.2)
    ((dealer, f0),) = sent_fetches(j.take_actions())
    return j, data, f, store, dealer, f0


def test_files_in_hand_count_at_their_size_across_jobs_messages():
    j = core(cache_bytes=12 * MIB, input_mb=12)
    a, b = p.FileRef("c1" * 32, 10 * MIB), p.FileRef("c2" * 32, 10 * MIB)
    assert not given_back(take(j, spec("t.0", {"/a": a})))  # no chunk of it has come
    j.links[LIVE].ask_after = 0.0
    back = given_back(take(j, spec("t.1", {"/b": b}), now=0.5))
    assert (
        back["t.1"].status is p.Status.ABANDONED and "does not fit the cache" in back["t.1"].detail
    )
    assert [h.spec.tag for h in j.buffer] == ["t.0"]
    j.links[LIVE].ask_after = 0.0
    # the same file again adds nothing; named bigger, it adds the difference
    assert not given_back(take(j, spec("t.2", {"/a": a}), now=1.0))
    j.links[LIVE].ask_after = 0.0
    bigger = p.FileRef(a.hash, 11 * MIB)
    assert not given_back(take(j, spec("t.3", {"/a": bigger}), now=1.5))
    assert j._files_in_hand() == {a.hash: 11 * MIB}


def test_the_cache_is_split_between_payloads_and_files_by_the_core():
    j = core(cache_bytes=10 * MIB)
    j.cache_updated({SHA: (1 * MIB, 2 * MIB), "ef" * 32: (4 * MIB, 0)})
    assert j.files_allowance() == 10 * MIB  # no job in hand: no payload is needed
    take(j, spec("t.0", {"/a": p.FileRef("c1" * 32, 100)}))
    assert j.files_allowance() == 7 * MIB  # what the payload of a job in hand leaves
    assert j.payloads_allowance(8 * MIB) == 2 * MIB
    assert j.payloads_allowance(11 * MIB) == 0
    assert core(cache_bytes=None).files_allowance() is None


# --- which dealer a file comes from ------------------------------------------------------


def _backed_off(j, link, now):
    link.req.failed(now)


def _refused(j, link, now):
    link.req.refuse("its key changed")


def _keyless(j, link, now):
    link.key = None


@pytest.mark.parametrize("cannot", [_backed_off, _refused, _keyless])
def test_a_file_two_dealers_jobs_read_comes_from_the_other_when_the_first_cannot_be_asked(
    cannot,
):
    data = content(100, seed=3)
    f = ref(data)
    j = core2()
    both_read(j, f)
    cannot(j, j.links[LIVE], 0.2)
    j.tick(0.2)
    actions = j.take_actions()
    assert [(d, m.chunk) for d, m in sent_fetches(actions)] == [(LIVE2, 0)]
    if cannot is _keyless:  # its key is asked for meanwhile
        assert [a.dealer for a in of(actions, c.Hello)] == [LIVE]


def test_a_silent_dealer_times_out_and_the_file_comes_from_the_other():
    data = content(100, seed=3)
    f = ref(data)
    j = core2(request_timeout_s=2.0)
    both_read(j, f)
    j.tick(0.2)
    assert [(d, m.chunk) for d, m in sent_fetches(j.take_actions())] == [(LIVE, 0)]
    j.tick(2.5)  # no answer: a failed contact, LIVE backed off
    assert [(d, m.chunk) for d, m in sent_fetches(j.take_actions())] == [(LIVE2, 0)]


# --- whose digests judge, whom a bad file blames -------------------------------------------


def test_a_chunk_that_fails_another_dealers_digests_starts_the_file_over_blaming_neither(
    tmp_path,
):
    j, data, f, store, dealer, f0 = first_fetch_of_both(tmp_path)
    assert (dealer, f0.chunk) == (LIVE, 0)
    bogus = bytes(len(data))  # LIVE lies: its chunk 0 and digests are of other bytes
    ds = (hashlib.sha256(bogus[:CH]).digest(), hashlib.sha256(bogus[CH:]).digest())
    j.received(LIVE, p.Chunk(f0.id, f.hash, 0, f.size, bogus[:CH], ds), 0.3)
    keep_all(j, j.take_actions(), store)
    assert j.partials[f.hash].source == LIVE
    j.links[LIVE].req.failed(0.35)  # LIVE backed off: chunk 1 comes from LIVE2
    j.tick(0.4)
    ((dealer, f1),) = sent_fetches(j.take_actions())
    assert (dealer, f1.chunk) == (LIVE2, 1)
    j.received(LIVE2, chunk(f1.id, data, 1), 0.5)  # genuine: it fails LIVE's digests
    actions = j.take_actions()
    assert not of(actions, c.KeepChunk) and of(actions, c.DropFile) == [c.DropFile(f.hash)]
    keep_all(j, actions, store)
    assert j.links[LIVE2].backoff.failures == 0  # the honest dealer is not blamed
    assert f.hash not in j.partials and f.hash not in store.partials  # both forgot it
    assert not given_back(actions)  # both jobs wait on
    # it starts over from chunk 0, asked of the dealer whose chunk disagreed
    j.tick(0.6)
    ((dealer, g0),) = sent_fetches(j.take_actions())
    assert (dealer, g0.chunk) == (LIVE2, 0)
    j.received(LIVE2, chunk(g0.id, data, 0), 0.7)
    keep_all(j, j.take_actions(), store)
    serve(j, data, store, 0.8)
    assert f.hash in j.files_held and store.path(f.hash).read_bytes() == data


def test_fetches_out_when_a_file_starts_over_answer_for_nothing(tmp_path):
    data = content(3 * CH + 1, seed=6)
    f = ref(data)
    j = core2()
    both_read(j, f)
    j.tick(0.2)
    ((_, f0),) = sent_fetches(j.take_actions())
    j.received(LIVE, chunk(f0.id, data, 0), 0.3)  # genuine chunk 0 from LIVE
    keep_all(j, j.take_actions(), FileStore(tmp_path))
    j.tick(0.4)
    out = sent_fetches(j.take_actions())
    assert sorted(m.chunk for _, m in out) == [1, 2, 3] and {d for d, _ in out} == {LIVE}
    # LIVE2 had a fetch out from before (say): its lying answer starts the file over
    j.links[LIVE2].fetches["fetch0"] = (f.hash, 1)
    j.links[LIVE2].sent("fetch0", 999, 0.4)
    j.received(LIVE2, p.Chunk(999, f.hash, 1, f.size, bytes(CH), None), 0.5)
    assert of(j.take_actions(), c.DropFile)
    # LIVE's answers to fetches sent before that are taken and kept nowhere, blaming none
    for _, m in out:
        j.received(LIVE, chunk(m.id, data, m.chunk), 0.6)
    assert not of(j.take_actions(), c.KeepChunk)
    assert j.links[LIVE].backoff.failures == 0 and not j.links[LIVE].fetches


def test_a_bad_whole_file_blames_only_the_dealer_whose_digests_and_chunks_made_it(tmp_path):
    j, data, f, store, dealer, fe = first_fetch_of_both(tmp_path, size=100)
    assert dealer == LIVE
    bogus = bytes(100)
    j.received(LIVE, p.Chunk(fe.id, f.hash, 0, 100, bogus, (hashlib.sha256(bogus).digest(),)), 0.3)
    keep_all(j, j.take_actions(), store)
    back = given_back(j.take_actions())
    assert set(back) == {"m.0"} and "hash to" in back["m.0"].detail  # LIVE's job alone
    assert j.links[LIVE].ask_after >= c.REFUSED_PAYLOAD_WAIT_S
    assert j.links[LIVE2].ask_after < c.REFUSED_PAYLOAD_WAIT_S  # the honest one is not
    assert [h.spec.tag for h in j.buffer] == ["h.0"]
    j.tick(0.4)  # h.0 fetches it again, from its own dealer
    assert [(d, m.chunk) for d, m in sent_fetches(j.take_actions())] == [(LIVE2, 0)]


def test_two_dealers_a_give_back_and_a_fetch_again_make_the_right_file(tmp_path):
    """The real core and store together: a file begun from LIVE, its jobs given back
    (`unknown_file`), finished from LIVE2 against LIVE's digests; later dropped when no
    job reads it, and fetched again whole."""
    j, data, f, store, _, f0 = first_fetch_of_both(tmp_path, size=2 * CH + 100, seed=8)
    j.received(LIVE, chunk(f0.id, data, 0), 0.3)
    keep_all(j, j.take_actions(), store)
    j.tick(0.4)
    out = sent_fetches(j.take_actions())
    assert sorted(m.chunk for _, m in out) == [1, 2] and {d for d, _ in out} == {LIVE}
    one = next(m for _, m in out if m.chunk == 1)
    two = next(m for _, m in out if m.chunk == 2)
    j.received(LIVE, chunk(one.id, data, 1), 0.5)
    keep_all(j, j.take_actions(), store)
    j.received(LIVE, p.Error(two.id, p.ErrorCode.UNKNOWN_FILE, "gone"), 0.6)
    actions = j.take_actions()
    assert set(given_back(actions)) == {"m.0"}
    assert not of(actions, c.DropFile)  # h.0 still reads it: its chunks stay
    assert store.partials[f.hash].have == j.partials[f.hash].have == {0, 1}
    j.links[LIVE2].ask_after = 0.0
    serve(j, data, store, 0.7)  # chunk 2 from LIVE2, judged by LIVE's (honest) digests
    assert f.hash in j.files_held and store.path(f.hash).read_bytes() == data
    ((key, h),) = j.running.items()  # started once its file was whole
    assert h.spec.tag == "h.0"

    # a second file: begun, its only job given back past its deadline, so both the core
    # and the store forget it; a new job reads it: fetched again from chunk 0, whole
    data2 = content(CH + 7, seed=9)
    g = ref(data2)
    j.links[LIVE2].ask_after = 0.0
    j.job_done(key, p.Result("h.0", p.Status.OK, b"", 1, ""), 0.1, 1.1)
    take_from(j, LIVE2, p.JobSpec("s.0", SHA, (), b"", LIMITS, 5.0, {"/y": g}), now=2.0)
    j.tick(2.1)
    ((_, g0),) = sent_fetches(j.take_actions())
    j.received(LIVE2, chunk(g0.id, data2, 0), 2.2)
    keep_all(j, j.take_actions(), store)
    assert g.hash in store.partials
    j.tick(100.0)  # past its deadline
    actions = j.take_actions()
    assert "s.0" in given_back(actions) and c.DropFile(g.hash) in actions
    keep_all(j, actions, store)
    assert g.hash not in store.partials and g.hash not in j.partials
    j.links[LIVE2].ask_after = 0.0
    take_from(j, LIVE2, spec("s.1", {"/y": g}), now=101.0)
    serve(j, data2, store, 101.5)
    assert g.hash in j.files_held and store.path(g.hash).read_bytes() == data2


# --- the core and the store never differ ------------------------------------------------


def test_after_unknown_file_wrong_bytes_are_never_kept_under_the_files_name(tmp_path):
    data = content(CH + 100, seed=9)
    f = ref(data)
    store = FileStore(tmp_path)
    j = core()
    take(j, spec("t.0", {"/x": f}))
    j.tick(0.0)
    (f0,) = fetches(j.take_actions())
    j.received(LIVE, chunk(f0.id, data, 0), 0.1)  # genuine chunk 0
    keep_all(j, j.take_actions(), store)
    j.tick(0.2)
    (f1,) = fetches(j.take_actions())
    j.received(LIVE, p.Error(f1.id, p.ErrorCode.UNKNOWN_FILE, "x"), 0.3)
    actions = j.take_actions()
    assert "t.0" in given_back(actions) and c.DropFile(f.hash) in actions
    keep_all(j, actions, store)
    assert f.hash not in j.partials and f.hash not in store.partials  # the same view
    j.links[LIVE].ask_after = 0.0
    take_from(j, LIVE, spec("t.1", {"/x": f}), now=200.0)
    j.tick(200.1)
    (g0,) = fetches(j.take_actions())
    assert g0.chunk == 0
    bogus0 = b"\xee" * CH  # a lie, with digests to match
    ds = (hashlib.sha256(bogus0).digest(), hashlib.sha256(data[CH:]).digest())
    j.received(LIVE, p.Chunk(g0.id, f.hash, 0, f.size, bogus0, ds), 200.2)
    keep_all(j, j.take_actions(), store)
    j.tick(200.3)
    (g1,) = fetches(j.take_actions())
    j.received(LIVE, chunk(g1.id, data, 1, with_digests=False), 200.4)
    keep_all(j, j.take_actions(), store)
    back = given_back(j.take_actions())
    assert "hash to" in back["t.1"].detail  # the whole file's check caught it
    assert f.hash not in j.files_held and not store.has(f.hash)
    assert list(tmp_path.iterdir()) == []


def test_the_store_refuses_a_chunk_it_holds_or_other_digests(tmp_path):
    data = content(2 * CH, seed=4)
    f = ref(data)
    ds = digests(data)
    store = FileStore(tmp_path)
    store.keep_chunk(f.hash, f.size, 0, data[:CH], ds)
    with pytest.raises(Diverged):
        store.keep_chunk(f.hash, f.size, 0, b"\0" * CH, ds)  # a chunk held: never rewritten
    with pytest.raises(Diverged):
        other = (hashlib.sha256(b"\0" * CH).digest(), ds[1])
        store.keep_chunk(f.hash, f.size, 1, data[CH:], other)
    with pytest.raises(Diverged):
        store.keep_chunk("cd" * 32, 10, 0, b"x" * 10, None)  # a chunk before its digests
    assert (tmp_path / f"{f.hash}.part").read_bytes()[:CH] == data[:CH]
    assert store.keep_chunk(f.hash, f.size, 1, data[CH:], None)
    assert store.finish(f.hash) is None and store.path(f.hash).read_bytes() == data


# --- jobs waiting for files that cannot come ----------------------------------------------


def test_jobs_of_a_dropped_dealer_waiting_for_files_are_given_back():
    j = core()
    take(j, spec("t.0", {"/x": p.FileRef("cd" * 32, 10)}))
    j._drop(j.links[LIVE], 1.0)  # e.g. a referred dealer after repeated failures
    back = given_back(j.take_actions())
    assert back["t.0"].status is p.Status.ABANDONED and "dropped" in back["t.0"].detail
    assert not j.buffer


def test_a_dealer_denying_fetches_has_its_waiting_jobs_given_back():
    j = core(request_timeout_s=1000.0)
    long = p.JobSpec("t.0", SHA, (), b"", LIMITS, 10_000.0, {"/x": p.FileRef("cd" * 32, 10)})
    take(j, long)
    now = 0.0
    for k in range(c.DENIED_GIVE_UP):
        now += 30.0  # past its backoff
        j.tick(now)
        (fe,) = fetches(j.take_actions())
        assert not given_back(j.take_actions())
        j.received(LIVE, p.Error(fe.id, p.ErrorCode.DENIED, "banned"), now)
        back = given_back(j.take_actions())
        assert bool(back) is (k == c.DENIED_GIVE_UP - 1)
    assert "denies" in back["t.0"].detail and not j.buffer


def test_a_job_waiting_for_files_is_given_back_at_its_deadline_whatever_the_dealer_does():
    j = core(request_timeout_s=2.0)
    take(j, spec("t.0", {"/x": p.FileRef("cd" * 32, 10)}))  # deadline 100 s
    back: dict = {}
    t = 0.0
    while t < 200 and not back:
        t += 5
        j.tick(t)
        back = given_back(j.take_actions())
    assert 100 <= t < 105 and back["t.0"].status is p.Status.ABANDONED


# --- the store: no fsync per chunk, the hash rebuilt on restart, the check off the loop ----


def test_chunks_are_not_fsynced_one_by_one_the_whole_file_is(tmp_path, monkeypatch):
    data = content(2 * CH + 3, seed=2)
    f = ref(data)
    store = FileStore(tmp_path)
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    store.keep_chunk(f.hash, f.size, 0, data[:CH], digests(data))
    n = len(synced)  # the digests' durable write
    store.keep_chunk(f.hash, f.size, 2, data[2 * CH :], None)
    assert store.keep_chunk(f.hash, f.size, 1, data[CH : 2 * CH], None)
    assert len(synced) == n  # no chunk synced on its own
    assert store.finish(f.hash) is None
    assert len(synced) > n  # the whole file, before its rename


def test_a_restart_rebuilds_the_whole_files_hash_as_it_rechecks(tmp_path, monkeypatch):
    data = content(3 * CH + 9, seed=1)
    f = ref(data)
    store = FileStore(tmp_path)
    for i in (0, 1, 2):
        store.keep_chunk(
            f.hash, f.size, i, data[i * CH : (i + 1) * CH], digests(data) if i == 0 else None
        )
    again = FileStore(tmp_path)  # a restart
    run = again._hashing[f.hash]
    assert run.next == 3  # chunks 0 to 2 hashed as they were re-checked
    assert again.keep_chunk(f.hash, f.size, 3, data[3 * CH :], None)
    monkeypatch.setattr("jobber._files._READ", 0)  # nothing may be read back at the end
    assert again.finish(f.hash) is None and again.path(f.hash).read_bytes() == data


def test_the_checker_checks_complete_files_off_the_loop(tmp_path):
    good, bad = content(CH + 1, seed=11), content(50, seed=12)
    store = FileStore(tmp_path)
    checker = FileChecker(store)
    checker.start()
    try:
        gf = ref(good)
        store.keep_chunk(gf.hash, gf.size, 0, good[:CH], digests(good))
        assert store.keep_chunk(gf.hash, gf.size, 1, good[CH:], None)
        named = "cd" * 32  # a name its bytes do not hash to
        assert store.keep_chunk(named, 50, 0, bad, digests(bad))
        checker.put(gf.hash, store.complete(gf.hash))
        checker.put(named, store.complete(named))
        with pytest.raises(Diverged):  # nothing writes a file being checked
            store.keep_chunk(named, 50, 0, bad, digests(bad))
        store.drop_partial(named)  # nor drops it: the check decides
        assert named in store.partials
        done = []

        def two_done():
            if select.select([checker.fd], [], [], 0)[0]:
                while not checker.done.empty():
                    done.append(checker.done.get_nowait())
            return len(done) == 2

        wait_for(two_done, 10.0, "both checks done")
        assert dict((sha, (got, err)) for sha, got, err in done) == {
            gf.hash: (None, None),
            named: (hashlib.sha256(bad).hexdigest(), None),
        }
        assert store.checked(gf.hash) == gf.size and store.checked(named) == 50
        assert store.whole() == [(gf.hash, gf.size)] and not store.partials
        assert sorted(x.name for x in tmp_path.iterdir()) == [gf.hash]
    finally:
        checker.stop()


# --- which dealer, whom to blame, and what a start over leaves ------------------------------


def answer_asks(j: c.JobberCore, now: float) -> None:
    """Each dealer answers its `alive` and its ask for work (none for now) out, at once."""
    for addr, link in j.links.items():
        if link.alive_id is not None:
            j.received(addr, p.AliveAck(link.alive_id, 60.0), now)
        if link.bored_id is not None:
            j.received(addr, p.RetryLater(link.bored_id, 0.5), now)


def lied_chunk(re_: int, data: bytes, index: int, with_digests: bool) -> p.Chunk:
    """Chunk `index` of a lie about `data`'s file: zeros, with digests to match."""
    zeros = bytes(len(data))
    m = chunk(re_, zeros, index, with_digests)
    return p.Chunk(re_, ref(data).hash, index, len(data), m.data, m.digests)


def fetch_out_from_before(j: c.JobberCore, dealer: str, sha: str, index: int) -> int:
    """`dealer` has a fetch of chunk `index` of `sha` out, from before (as when another
    dealer was backed off for a while): its id."""
    j.links[dealer].fetches["fetch7"] = (sha, index)
    j.links[dealer].sent("fetch7", 999, 0.0)
    return 999


def test_a_dropped_dealers_jobs_waiting_for_files_go_back_and_no_other_dealers():
    f, g = p.FileRef("c1" * 32, 10), p.FileRef("c2" * 32, 10)
    j = core2()
    take_from(j, LIVE, spec("m.0", {"/x": f}))
    take_from(j, LIVE2, spec("h.0", {"/y": g}), now=0.1)
    j._drop(j.links[LIVE], 1.0)
    back = given_back(j.take_actions())
    assert list(back) == ["m.0"] and "dropped" in back["m.0"].detail
    assert [h.spec.tag for h in j.buffer] == ["h.0"]  # its dealer is there: it waits on


def test_a_file_comes_from_a_dealer_that_failed_no_contact_before_one_that_did():
    data = content(100, seed=3)
    f = ref(data)
    j = core2()
    both_read(j, f)
    j.links[LIVE].req.failed(0.2)  # LIVE failed a contact; its backoff ends in seconds
    assert j.links[LIVE].backoff.ready(50.0)
    j.tick(50.0)  # either may be asked: the one that did not fail, though it is second
    actions = j.take_actions()
    assert not given_back(actions)
    assert [(d, m.chunk) for d, m in sent_fetches(actions)] == [(LIVE2, 0)]


def test_a_bad_whole_file_blames_every_dealer_whose_chunks_made_it(tmp_path):
    j, data, f, store, dealer, f0 = first_fetch_of_both(tmp_path)
    assert dealer == LIVE
    j.received(LIVE, lied_chunk(f0.id, data, 0, True), 0.3)  # digests of zeros
    keep_all(j, j.take_actions(), store)
    j.links[LIVE].req.failed(0.35)  # LIVE backed off: chunk 1 comes from LIVE2
    j.tick(0.4)
    ((dealer, f1),) = sent_fetches(j.take_actions())
    assert (dealer, f1.chunk) == (LIVE2, 1)
    j.received(LIVE2, lied_chunk(f1.id, data, 1, False), 0.5)  # the same lie: it matches
    actions = j.take_actions()
    assert [k.index for k in of(actions, c.KeepChunk)] == [1]
    keep_all(j, actions, store)  # whole: the store finds it hashes to the zeros' hash
    back = given_back(j.take_actions())
    assert set(back) == {"m.0", "h.0"}  # LIVE's digests and LIVE2's chunk made it
    assert all("hash to" in r.detail for r in back.values())
    assert all(j.links[d].ask_after >= c.REFUSED_PAYLOAD_WAIT_S for d in (LIVE, LIVE2))


def test_a_start_over_asks_the_disagreeing_dealer_first_and_leaves_other_fetches_alone():
    """LIVE lies about f (zeros, digests to match); LIVE2's genuine chunk 1 disagrees: f
    starts over, its chunk 0 asked of LIVE2 though LIVE, first in the buffer, failed
    nothing; LIVE's answers to fetches of f from before answer for nothing (they cannot
    start it over again), while its fetch of another file, g, is answered and kept."""
    data, gdata = content(3 * CH, seed=30), content(CH + 5, seed=31)
    f, g = ref(data), ref(gdata)
    j = core2(request_timeout_s=5.0)
    take_from(j, LIVE, spec("m.0", {"/x": f}), spec("m.1", {"/y": g}))
    take_from(j, LIVE2, spec("h.0", {"/x": f}), now=0.1)
    answer_asks(j, 0.1)
    forget_fetches(j)
    j.tick(0.2)
    first = {m.hash: m for _, m in sent_fetches(j.take_actions())}
    assert {(h, m.chunk) for h, m in first.items()} == {(f.hash, 0), (g.hash, 0)}
    j.received(LIVE, lied_chunk(first[f.hash].id, data, 0, True), 0.3)
    keep_all(j, j.take_actions())
    j.tick(0.4)
    out = sent_fetches(j.take_actions())
    assert sorted((d, m.chunk) for d, m in out) == [(LIVE, 1), (LIVE, 2)]
    rid = fetch_out_from_before(j, LIVE2, f.hash, 1)
    j.received(LIVE2, chunk(rid, data, 1), 0.5)  # genuine: it fails LIVE's digests
    assert of(j.take_actions(), c.DropFile) == [c.DropFile(f.hash)]
    j.tick(0.6)
    ((dealer, again),) = sent_fetches(j.take_actions())
    assert (dealer, again.chunk, j.links[LIVE].backoff.failures) == (LIVE2, 0, 0)
    j.received(LIVE2, chunk(again.id, data, 0), 0.7)
    keep_all(j, j.take_actions())
    assert j.partials[f.hash].source == LIVE2
    for _, m in out:  # LIVE's lies from before: taken, nothing kept, nothing dropped
        j.received(LIVE, lied_chunk(m.id, data, m.chunk, False), 0.8)
    actions = j.take_actions()
    assert not of(actions, c.KeepChunk) and not of(actions, c.DropFile)
    assert j.partials[f.hash].have == {0} and j.links[LIVE].backoff.failures == 0
    j.received(LIVE, chunk(first[g.hash].id, gdata, 0), 0.9)  # g's fetch went on
    assert [(k.sha, k.index) for k in of(j.take_actions(), c.KeepChunk)] == [(g.hash, 0)]
    # every answer ended its request: nothing times out, nobody is blamed
    now, seen = 1.0, []
    while now < 8.0:
        j.tick(now)
        actions = j.take_actions()
        seen += actions
        answer_asks(j, now)
        for dealer, m in sent_fetches(actions):
            got = {f.hash: data, g.hash: gdata}[m.hash]
            j.received(dealer, chunk(m.id, got, m.chunk), now)
        keep_all(j, j.take_actions())
        now += 0.5
    assert f.hash in j.files_held and g.hash in j.files_held
    assert not of(seen, c.Reset) and j.links[LIVE2].backoff.failures == 0


def _chunk_0_kept_then_lost(j, data):
    j.tick(1.0)
    ((dealer, g0),) = sent_fetches(j.take_actions())
    assert dealer == LIVE2  # the start over's first ask
    j.received(LIVE2, lied_chunk(g0.id, data, 0, True), 1.1)
    keep_all(j, j.take_actions())
    j.files_updated([], {})  # the store lost it since
    return 2.0


def _no_job_reads_it(j, data):
    j.tick(101.0)  # both jobs past their deadlines
    assert set(given_back(j.take_actions())) == {"m.0", "h.0"}
    both_read(j, ref(data), n=1, now=102.0)  # it is read again
    return 103.0


def _kept_whole(j, data):
    j.handle(c.FileKept(ref(data).hash, len(data)), 1.0)  # the store's check, under way
    j.files_updated([], {})  # the store lost it since
    return 2.0


@pytest.mark.parametrize("end", [_chunk_0_kept_then_lost, _no_job_reads_it, _kept_whole])
def test_a_start_over_asks_its_dealer_first_only_until_it_is_done_with(end):
    """The dealer whose chunk started a file over is asked its chunk 0 first only for that
    chunk 0: once it came, once no job reads the file, or once the file proved whole,
    a file fetched again from chunk 0 is asked in the buffer's order."""
    data = content(CH + 100, seed=32)
    f = ref(data)
    j = core2()
    both_read(j, f)
    j.tick(0.2)
    ((_, f0),) = sent_fetches(j.take_actions())
    j.received(LIVE, chunk(f0.id, data, 0), 0.3)  # genuine
    j.take_actions()
    j.tick(0.4)
    ((_, f1),) = sent_fetches(j.take_actions())
    j.received(LIVE, chunk(f1.id, data, 1), 0.5)  # all of it came
    j.take_actions()
    rid = fetch_out_from_before(j, LIVE2, f.hash, 1)
    j.received(LIVE2, lied_chunk(rid, data, 1, False), 0.6)  # LIVE2 lies: a start over
    assert of(j.take_actions(), c.DropFile)
    now = end(j, data)
    forget_fetches(j)
    j.tick(now)
    assert [(d, m.chunk) for d, m in sent_fetches(j.take_actions())] == [(LIVE, 0)]
