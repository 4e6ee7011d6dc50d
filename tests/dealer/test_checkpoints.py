"""The dealer's folder of saved states (dealer._checkpoints) on a real folder: states
taken a chunk at a time, in order, bounded, checked whole, kept and served, found
again after a restart, dropped when damaged, stale or no longer needed."""

from __future__ import annotations

import hashlib

import pytest

import protocol as p
from dealer import _checkpoints as ck
from dealer._replicas import Rejected
from protocol import ErrorCode

C = p.CHUNK_BYTES


def ok():
    return None


def save(store, data: bytes, chunk: int, now: float = 0.0, tag="t", size=None, sha=None, **kw):
    """One `save` of chunk `chunk` of `data` (its hash and size unless given)."""
    sha = sha or hashlib.sha256(data).hexdigest()
    msg = p.Save(7, "j", tag, sha, len(data) if size is None else size, chunk,
                 data[chunk * C : (chunk + 1) * C], 10, 1.0)  # fmt: skip
    return store.save(msg, "me", now, kw.get("may", ok), kw.get("record", ok))


def test_a_state_of_chunks_comes_in_order_is_kept_served_and_counted(tmp_path):
    store = ck.Checkpoints(tmp_path / "a" / "b")  # made, parents too, at the first state
    data = bytes(range(256)) * (C // 256) + b"tail"
    sha = hashlib.sha256(data).hexdigest()
    recorded = []
    record = lambda: recorded.append(1)  # noqa: E731
    assert save(store, data, 0, record=record) == p.Saved(7, sha, 1)
    assert save(store, data, 0, record=record) == p.Saved(7, sha, 1)  # again: chunk 1, please
    # a chunk that says the state is of another size is not taken: still chunk 1
    assert save(store, data, 1, size=len(data) + 1, record=record).next == 1
    assert save(store, data, 1, record=record) == p.Saved(7, sha, 2)
    assert recorded == [1]
    assert (tmp_path / "a" / "b" / sha).read_bytes() == data
    f = store.lookup(sha)
    assert f.digests == (hashlib.sha256(data[:C]).digest(), hashlib.sha256(data[C:]).digest())
    assert f.read_chunk(1) == data[C:]
    assert store.status() == {
        "checkpoints_received": 1,
        "checkpoints_bytes": len(data),
        "checkpoints_coming": 0,
    }
    other = b"another state"
    assert save(store, other, 0).next == 1  # a second state: the folder is there already
    assert store.lookup(hashlib.sha256(other).hexdigest()).size == len(other)


def test_what_is_refused_is_dropped_and_begins_again_from_chunk_0(tmp_path):
    store = ck.Checkpoints(tmp_path)
    data = bytes(C + 10)
    assert save(store, data, 0).next == 1
    no = Rejected(ErrorCode.SETTLED, "settled")
    refused = save(store, data, 1, may=lambda: no)
    assert isinstance(refused, p.Error) and refused.code is ErrorCode.SETTLED
    assert save(store, data, 1).next == 0  # what came of it is gone
    assert save(store, data, 0).next == 1
    short = save(store, data[:-1], 1, sha=hashlib.sha256(data).hexdigest(), size=len(data))
    assert isinstance(short, p.Error) and short.code is ErrorCode.UNEXPECTED
    assert save(store, data, 1).next == 0  # a chunk of the wrong length drops the state too
    # the core refuses it once whole: the error is the core's
    bad = save(bytes_store := ck.Checkpoints(tmp_path / "x"), b"s", 0, record=lambda: no)
    assert isinstance(bad, p.Error) and bad.code is ErrorCode.SETTLED
    assert bytes_store.status()["checkpoints_received"] == 0


def test_states_coming_are_bounded_in_all(tmp_path, monkeypatch):
    monkeypatch.setattr(ck, "MAX_COMING", 2 * C)
    store = ck.Checkpoints(tmp_path)
    a, b = bytes(C + 1), b"\x01" * C
    assert save(store, a, 0, tag="a").next == 1
    busy = save(store, b, 0, tag="b")
    assert isinstance(busy, p.Error) and busy.code is ErrorCode.BUSY
    assert busy.retry_s == ck.BUSY_S and "busy" in busy.text
    fits = b"\x02" * (C - 1)
    assert save(store, fits, 0, tag="b").next == 1  # exactly the bound: taken
    # a new state of a replica replaces what came of its last one, not beside it
    a2 = b"\x03" * (C + 1)
    assert save(store, a2, 0, tag="a").next == 1


def test_a_state_not_continued_is_dropped_after_stale_s_of_silence(tmp_path):
    store = ck.Checkpoints(tmp_path)
    data = bytes(2 * C + 1)
    assert save(store, data, 0, now=0.0).next == 1
    assert save(store, data, 1, now=500.0).next == 2
    store.tick(500.0 + ck.STALE_S)  # silent for exactly STALE_S: kept
    assert save(store, data, 2, now=500.0 + ck.STALE_S).next == 3
    assert save(store, data, 0, tag="u", now=0.0).next == 1
    store.tick(ck.STALE_S + 1)
    assert save(store, data, 1, tag="u", now=ck.STALE_S + 1).next == 0


def test_a_disk_that_refuses_is_an_internal_error(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    store = ck.Checkpoints(tmp_path / "file")  # a folder that cannot be made
    out = save(store, b"s", 0)
    assert isinstance(out, p.Error) and out.code is ErrorCode.INTERNAL


def test_states_are_found_again_after_a_restart_and_damaged_ones_are_not(tmp_path):
    store = ck.Checkpoints(tmp_path)
    data = b"state" * 100
    sha = hashlib.sha256(data).hexdigest()
    save(store, data, 0)
    again = ck.Checkpoints(tmp_path)  # the dealer restarted
    f = again.lookup(sha)
    assert f is not None and f.sha256 == sha and f.read_chunk(0) == data
    (tmp_path / sha).unlink()
    assert again.lookup(sha) is f  # kept from the first lookup
    assert again.lookup("ab" * 32) is None and again.lookup("short") is None
    (tmp_path / ("cd" * 32)).write_bytes(b"not what it is named")
    assert again.lookup("cd" * 32) is None


def test_a_damaged_state_is_dropped_and_pruning_keeps_only_what_jobs_use(tmp_path):
    store = ck.Checkpoints(tmp_path)
    keep, drop, damaged = b"keep", b"drop", b"damaged"
    for s in (keep, drop, damaged):
        save(store, s, 0, tag=s.decode())
    k, d, x = (hashlib.sha256(s).hexdigest() for s in (keep, drop, damaged))
    assert store.damaged(x) and not (tmp_path / x).exists() and store.lookup(x) is None
    assert store.damaged("ef" * 32) is False  # no state of ours
    store.prune({k})
    assert sorted(q.name for q in tmp_path.iterdir()) == [k]
    assert store.lookup(k) is not None
    (tmp_path / d).write_bytes(drop)  # even what was served before: gone from the cache
    assert store.lookup(d) is not None
    store.prune(set())
    assert list(tmp_path.iterdir()) == [] and store.lookup(k) is None
    ck.Checkpoints(tmp_path / "never").prune(set())  # no folder yet: nothing to do


@pytest.mark.parametrize("size", [0, 1])
def test_an_empty_or_tiny_state_is_one_chunk(tmp_path, size):
    store = ck.Checkpoints(tmp_path)
    data = bytes(size)
    assert save(store, data, 0).next == 1
    assert store.lookup(hashlib.sha256(data).hexdigest()).size == size
