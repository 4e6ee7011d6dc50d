"""ModuleCache: payload bytes and compiled modules on disk, corrupt entries rebuilt."""

from __future__ import annotations

import hashlib

import pytest
import wasmtime

import sandbox
from protocol import Limits, Status
from sandbox import _cache, _engine
from sandbox._precheck import Refused
from tests.wat import printing

HELLO = printing("cached\n")
SHA = hashlib.sha256(HELLO).hexdigest()


@pytest.fixture
def cache(tmp_path) -> sandbox.ModuleCache:
    return sandbox.ModuleCache(tmp_path / "cache")


def run_cached(cache: sandbox.ModuleCache, sha256: str) -> sandbox.Outcome:
    """A job as a worker runs it: the module from the cache (for a worker's watched
    engine), no in-memory reuse. It never has to be stopped from outside."""
    stuck: list = []
    prepared = _engine._check(sha256, cache.module(sha256))
    outcome = _engine.execute(prepared, (), b"", Limits(), on_stuck=stuck.append)
    assert stuck == []
    return outcome


def test_put_has_hashes_wasm(cache):
    assert cache.hashes() == [] and not cache.has(SHA)
    assert cache.put(HELLO) == SHA
    assert cache.put(HELLO) == SHA  # idempotent
    other = cache.put(b"not even wasm")
    assert cache.has(SHA) and cache.has(other)
    assert cache.hashes() == sorted([SHA, other])
    assert cache.wasm(SHA) == HELLO
    assert not cache.has("0" * 64)
    assert not cache.has("../../etc/passwd")
    with pytest.raises(KeyError):
        cache.wasm("0" * 64)
    with pytest.raises(ValueError):
        cache.wasm("nope")
    # nothing but whole files under their final names
    assert not [p for p in cache.root.rglob("*") if p.name.endswith(".part")]


def test_corrupt_payload_is_detected_and_removed(cache):
    cache.put(HELLO)
    path = next(cache.root.rglob(f"{SHA}.wasm"))
    path.write_bytes(HELLO[:-1] + b"\0")
    with pytest.raises(KeyError, match="corrupt"):
        cache.wasm(SHA)
    assert not cache.has(SHA)
    path.write_bytes(b"damaged again")
    assert cache.put(HELLO) == SHA  # a damaged copy is replaced when the payload comes again
    assert cache.wasm(SHA) == HELLO


def test_compiled_once_then_loaded(cache, monkeypatch):
    cache.put(HELLO)
    assert run_cached(cache, SHA).stdout == b"cached\n"
    compiled = cache.compiled_path(SHA)
    assert compiled.exists()
    stamp = compiled.stat().st_mtime_ns
    monkeypatch.setattr(_engine, "compile", lambda wasm: pytest.fail("compiled twice"))
    again = sandbox.ModuleCache(cache.root)  # as another worker process would
    assert run_cached(again, SHA).stdout == b"cached\n"
    assert compiled.stat().st_mtime_ns == stamp


def damage_body(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


def foreign_key(data: bytes) -> bytes:
    return data[:8] + b"f" * 32 + data[40:]


@pytest.mark.parametrize(
    "damage",
    [damage_body, foreign_key, lambda d: d[:20], lambda d: b"", lambda d: b"x" * len(d)],
    ids=["flipped-byte", "other-engine", "truncated", "empty", "garbage"],
)
def test_corrupt_or_foreign_compiled_entry_is_rebuilt(cache, damage):
    cache.put(HELLO)
    cache.module(SHA)
    path = cache.compiled_path(SHA)
    good = path.read_bytes()
    path.write_bytes(damage(good))
    assert run_cached(cache, SHA).stdout == b"cached\n"
    assert path.read_bytes() == good  # rebuilt, byte for byte


def test_entries_are_per_engine_configuration(cache):
    cache.put(HELLO)
    cache.module(SHA)
    assert cache.compiled_path(SHA).parent.name == _engine.ENGINE_KEY


def test_missing_payload_is_a_key_error(cache):
    with pytest.raises(KeyError):
        cache.module(SHA)


def test_invalid_payload_raises_refused_or_wasmtime_error(cache):
    sha = cache.put(b"garbage")  # not framed as a module: the pre-check says so
    with pytest.raises(Refused, match="not a valid module: bad magic number"):
        cache.module(sha)
    # framed, but a function of a type that does not exist: wasmtime's to refuse
    sha = cache.put(b"\0asm\x01\0\0\0" + b"\x03\x02\x01\x00")
    with pytest.raises(wasmtime.WasmtimeError, match="type index out of bounds"):
        cache.module(sha)
    assert not cache.compiled_path(sha).exists()


def test_a_compiled_form_over_the_cap_is_not_stored(cache, monkeypatch):
    small = len(cache.module(cache.put(HELLO)).serialize()) - 1
    other = printing("too big to keep\n")
    sha = cache.put(other)
    monkeypatch.setattr(_cache, "MAX_COMPILED_BYTES", small)
    with pytest.raises(Refused, match=r"compiled code, over the cap of [\d,]+ \(MAX_COMPILED"):
        cache.module(sha)
    assert not cache.compiled_path(sha).exists()
    o = sandbox.run(other, cache=cache)
    assert o.status is Status.MEMORY and "MAX_COMPILED_BYTES" in o.detail
    assert not cache.compiled_path(sha).exists()
    # one stored before the cap (HELLO's, one byte over it now) is removed, not loaded
    assert cache.compiled_path(SHA).exists()
    assert cache.load(SHA) is None and not cache.compiled_path(SHA).exists()


def test_run_through_a_cache_stores_both_forms(cache):
    o = sandbox.run(HELLO, cache=cache)
    assert o.status is Status.OK and o.stdout == b"cached\n"
    # compiled for the in-process engines (epoch checks), apart from the workers' form
    assert cache.has(SHA) and cache.compiled_path(SHA, watched=False).exists()
    assert not cache.compiled_path(SHA).exists()


def test_the_cache_evicts_the_least_recently_used_payloads_never_those_in_use(tmp_path):
    import os

    cache = sandbox.ModuleCache(tmp_path / "c")
    blobs = [printing(f"payload {i}\n") for i in range(5)]
    shas = [cache.put(b) for b in blobs]
    for i, sha in enumerate(shas):  # put in order: 0 is the least recently used
        os.utime(cache._wasm_path(sha), (1000 + i, 1000 + i))
    cache.module(shas[0])  # compiled forms count too
    cache.touch(shas[1])  # just used
    removed = cache.evict(10**9, 3, keep={shas[0]})  # at most 3 payloads
    assert removed == 2
    assert cache.hashes() == sorted([shas[0], shas[1], shas[4]])  # kept, touched, newest
    assert cache.compiled_path(shas[0]).exists()
    assert cache.evict(0, 0, keep=set(shas)) == 0  # what is in use stays, whatever the cap
    one = cache.compiled_path(shas[0]).stat().st_size + len(blobs[0])
    assert cache.evict(one, 9, keep={shas[0]}) == 2  # bytes: all but the one in use go
    assert cache.hashes() == [shas[0]]
    assert cache.evict(0, 0) == 1 and cache.hashes() == []
    assert not list((tmp_path / "c").glob("compiled/*/*.cwasm"))
