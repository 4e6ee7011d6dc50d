"""The jobber's core and what jobs with input files take of the cache (jobber._holding):
each file counted once, at the largest size its jobs name, beside the payloads of the
jobs in hand, to the byte; the files a starting job reads become the most recently used;
jobs waiting for their files keep their place. Driven directly: messages and the time
in, actions out."""

from __future__ import annotations

import hashlib

import protocol as p
from jobber import _core as c
from tests.jobber.test_jobber_files import LIVE, SHA, core, given_back, of, spec, take

FILE_A = "cd" * 32
MIB = 1 << 20
PAYLOAD = 5 * MIB  # the payload's size in the cache
F = 10 * MIB  # room for files beside it (input_mb, within the cache, is then 15)


def cache_core(cache_bytes: int = PAYLOAD + F) -> c.JobberCore:
    j = core(cache_bytes=cache_bytes)
    j.cache_updated({SHA: (PAYLOAD, 0)})
    j.take_actions()
    return j


def jobs(j: c.JobberCore, *specs: p.JobSpec, payloads=None) -> dict[str, p.Result]:
    """Answer the core's `bored` with these jobs: what it gives back at once."""
    j.tick(0.0)
    (bored,) = [x.msg for x in of(j.take_actions(), c.Send) if isinstance(x.msg, p.Bored)]
    j.received(LIVE, p.Jobs(bored.id, specs, payloads or {}), 0.0)
    return given_back(j.take_actions())


def test_a_new_file_that_just_fits_the_cache_beside_its_payload_is_taken() -> None:
    j = cache_core()
    assert not jobs(j, spec("t.0", {"/in/a": p.FileRef(FILE_A, F)}))
    assert [h.spec.tag for h in j.buffer] == ["t.0"]


def test_a_new_file_one_byte_over_the_cache_is_given_back_with_what_it_takes() -> None:
    j = cache_core()
    back = jobs(j, spec("t.0", {"/in/a": p.FileRef(FILE_A, F + 1)}))
    assert back["t.0"].status is p.Status.ABANDONED
    assert back["t.0"].detail == (
        f"refused: what its payload and input files take ({PAYLOAD + F + 1:,} bytes) does "
        f"not fit the cache ({PAYLOAD + F:,} bytes, 0 in use by jobs in hand)"
    )


def test_a_one_byte_file_counts() -> None:
    j = cache_core(PAYLOAD)
    back = jobs(j, spec("t.0", {"/in/a": p.FileRef(FILE_A, 1)}))
    assert f"({PAYLOAD + 1:,} bytes) does not fit the cache ({PAYLOAD:,} bytes" in (
        back["t.0"].detail
    )


def test_a_file_in_hand_costs_a_second_job_nothing_and_only_its_new_payload_is_named() -> None:
    j = cache_core()
    wasm = b"\0asm\1\0\0\0"  # another payload, sent with the jobs
    other = hashlib.sha256(wasm).hexdigest()
    a = p.FileRef(FILE_A, F)
    second = p.JobSpec("t.1", other, (), b"", spec("x").limits, 100.0, {"/in/a": a})
    third = spec("t.2", {"/in/b": a})  # the same file by another name, the same payload
    back = jobs(j, spec("t.0", {"/in/a": a}), second, third, payloads={other: wasm})
    assert set(back) == {"t.1"}
    assert back["t.1"].detail == (
        f"refused: its payload (8 bytes) does not fit the cache ({PAYLOAD + F:,} bytes, "
        f"{PAYLOAD + F:,} in use by jobs in hand)"
    )
    assert [h.spec.tag for h in j.buffer] == ["t.0", "t.2"]


def test_a_file_named_with_two_sizes_counts_at_the_larger() -> None:
    # one hash, two sizes: a dealer's mistake or a lie; the cache is kept for the larger
    j = cache_core(PAYLOAD + F + 1)
    small, large = p.FileRef(FILE_A, F), p.FileRef(FILE_A, F + 2)
    back = jobs(j, spec("t.0", {"/a": small}), spec("t.1", {"/a": large}))
    assert set(back) == {"t.1"}
    assert (
        f"(2 bytes) does not fit the cache ({PAYLOAD + F + 1:,} bytes, {PAYLOAD + F:,} in use"
        in (back["t.1"].detail)
    )


def test_a_starting_job_makes_its_files_the_most_recently_used() -> None:
    j = core()
    older, newer = "11" * 32, "22" * 32
    j.files_updated([(newer, 5), (older, 7)], {})
    assert j.host_facts().files == (newer, older)
    take(j, spec("t.0", {"/in/x": p.FileRef(older, 7)}))
    j.tick(0.0)
    (start,) = of(j.take_actions(), c.Start)
    assert start.spec.tag == "t.0"
    assert j.host_facts().files == (older, newer)  # the store evicts the other first


def test_jobs_past_the_free_slots_stay_buffered_behind_one_waiting_for_files() -> None:
    j = core()
    waiting = spec("t.0", {"/x": p.FileRef(FILE_A, 10)})
    take(j, waiting, spec("t.1"), spec("t.2"), spec("t.3"))
    j.tick(0.0)
    (start,) = of(j.take_actions(), c.Start)  # one slot (pipelined: one more may queue)
    started = {start.spec.tag}
    assert "t.0" not in started
    in_hand = {h.spec.tag for h in j.buffer} | {h.spec.tag for h in j.running.values()}
    assert in_hand == {"t.0", "t.1", "t.2", "t.3"}  # none lost
    assert j.buffer[0].spec.tag == "t.0"  # it keeps its place, ahead of the rest
    assert SHA in j.held_payloads()
