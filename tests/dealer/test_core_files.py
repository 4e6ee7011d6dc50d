"""Input files in the dealer: jobs matched on `host.input_mb`, offered first to jobbers
holding their files (dealer._locality), pinned in the journal by their files' hashes,
and served by `fetch` (dealer._service)."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

import protocol as p
from dealer._core import Core, JournalMismatch, Policy
from dealer._fileserver import FETCH_BURST, FETCH_PER_TURN, FileServer
from dealer._journal import Journal
from dealer._service import Peer, Service
from protocol import Status
from tasks import InputFile, Job, Limits, Payload, Task

MiB = 1 << 20
OK = Status.OK
WAT = '(module (memory (export "memory") 1) (func (export "_start")))'


def blob(name: str, size: int = 10) -> InputFile:
    return InputFile.from_bytes(name.encode().ljust(size, b"."))


def core_of(jobs, files=None, **policy) -> Core:
    policy.setdefault("deadline_s", 100.0)
    policy.setdefault("lease_s", 1e6)
    policy.setdefault("backups", 0)
    policy.setdefault("quota", 64)
    return Core(jobs, Policy(**policy), "t", files=files)


def ids(assignments) -> list[int]:
    return [a.job_id for a in assignments]


def test_a_job_with_files_goes_only_to_a_jobber_whose_input_mb_holds_them():
    big = blob("big", 3 * MiB)
    jobs = [Job(("0",)), Job(("1",), files={"big": big}), Job(("2",))]
    core = core_of(jobs, redundancy=3, quorum=3)
    # a jobber that takes no files gets the jobs without, never job 1
    assert ids(core.bored("old", 10, 1000, 0.0)) == [0, 2]
    assert ids(core.bored("small", 10, 1000, 0.0, input_mb=2)) == [0, 2]
    assert core.files_need(None) is None  # jobs 0 and 2 want more replicas: they fit
    only_big = core_of([Job(("1",), files={"big": big})])
    assert only_big.bored("old", 1, 1000, 0.0) == []
    assert only_big.files_need(None) == only_big.files_need(2) == 3 * MiB  # why it waits
    assert only_big.files_need(3) is None
    got = core.bored("roomy", 10, 1000, 0.0, input_mb=3)
    assert ids(got) == [0, 2, 1]  # those without files first: they need nothing fetched
    assert got[2].files == {"/input/big": big} and got[0].files == {}
    # an assignment stays a hashable value with its files (a map, left out of its hash)
    assert len({*got, *got}) == 3


def test_a_jobber_is_offered_first_the_jobs_whose_files_it_holds():
    x, y = blob("x"), blob("y")
    jobs = [Job((str(i),), files={"f": (x, y)[i % 2]}) for i in range(6)]  # x, y, x, y, ...
    core = core_of(jobs, window=6)
    for _ in range(6):  # draw them all, send none: every job wants a replica
        core._draw()
    holds_y = core.bored("a", 2, 1000, 0.0, input_mb=1, files=[y.sha256])
    assert ids(holds_y) == [1, 3]  # y's jobs, though job 0 is older
    holds_x = core.bored("b", 2, 1000, 0.0, input_mb=1, files=[x.sha256, "00" * 32])
    assert ids(holds_x) == [0, 2]
    holds_none = core.bored("c", 1, 1000, 0.0, input_mb=1)
    assert ids(holds_none) == [4]  # oldest first
    # a file set is preferred only when all of it is held
    both = Job(("b",), files={"x": x, "y": y})
    core2 = core_of([Job(("0",), files={"x": x}), both], window=2)
    core2._draw()
    core2._draw()
    assert ids(core2.bored("d", 1, 1000, 0.0, input_mb=1, files=[y.sha256])) == [0]
    assert ids(core2.bored("e", 1, 1000, 0.0, input_mb=1, files=[x.sha256, y.sha256])) == [1]


def test_task_wide_files_need_room_but_tell_no_job_from_another():
    table = blob("table", 2 * MiB)
    shared = {"/input/table": table}
    core = core_of([Job((str(i),)) for i in range(3)], files=shared)
    assert core.bored("old", 5, 1000, 0.0) == []  # every job reads the table
    assert core.bored("small", 5, 1000, 0.0, input_mb=1) == []
    got = core.bored("roomy", 5, 1000, 0.0, input_mb=2)
    assert ids(got) == [0, 1, 2] and all(a.files == shared for a in got)
    assert core.input_file(table.sha256) is table


def test_jobs_a_jobber_cannot_take_are_drawn_a_few_at_a_time_not_the_whole_window():
    f = blob("f")
    core = core_of((Job((str(i),), files={"f": f}) for i in range(100_000)), window=10_000)
    for _ in range(5):
        assert core.bored("old", 4, 1000, 0.0) == []
    assert core.drawn <= 5 * 4 + 1


def test_backups_at_the_tail_go_only_where_the_files_fit():
    f = blob("f", 2 * MiB)
    core = core_of([Job(("0",), files={"f": f})], backups=1)
    [a] = core.bored("a", 1, 1000, 0.0, input_mb=2)
    assert core.bored("b", 1, 1000, 1.0, input_mb=1) == []
    assert ids(core.bored("c", 1, 1000, 1.0, input_mb=2)) == [0]
    assert a.job_id == 0


def test_a_job_s_own_file_is_served_until_it_settles():
    own, other = blob("own"), blob("other")
    core = core_of([Job(("0",), files={"own": own}), Job(("1",), files={"o": other})])
    [a] = core.bored("a", 1, 1000, 0.0, input_mb=1)
    core._draw()
    assert core.input_file(own.sha256) is own and core.input_file(other.sha256) is other
    assert core.result("a", a.tag, OK, b"x", 1, "", 1.0) is None
    assert core.input_file(own.sha256) is None  # settled: nobody should still need it
    assert core.input_file(other.sha256) is other
    assert core.input_file("ab" * 32) is None


def test_a_repeated_name_or_too_many_files_fail_the_job_as_it_is_drawn():
    t = blob("t")
    shared = {"/input/t": t}
    jobs = [
        Job(("0",), files={"t": blob("mine")}),
        Job(("1",), files={str(i): t for i in range(p.MAX_JOB_FILES)}),  # 256 + the task's
        Job(("2",)),
    ]
    core = core_of(jobs, files=shared)
    got = core.bored("a", 5, 1000, 0.0, input_mb=1)
    assert ids(got) == [2]
    failed = {s.job_id: s.reasons[0] for s in core.take_settled()}
    assert "input file 't' repeats a task-wide one" in failed[0]
    assert "257 input files, over the wire's cap of 256" in failed[1]


def test_a_job_whose_files_are_all_empty_still_goes_only_to_a_jobber_that_takes_files():
    empty = InputFile.from_bytes(b"")
    core = core_of([Job(("0",), files={"e": empty})])
    assert core.bored("old", 1, 1000, 0.0) == []  # the wire: it takes no job with files
    assert core.files_need(None) == 0  # why it waits: it needs a jobber that takes files
    assert ids(core.bored("new", 1, 1000, 0.0, input_mb=0)) == [0]  # 0 bytes fit 0 MiB


def test_a_jobber_taking_no_files_that_says_it_holds_some_is_offered_the_plain_jobs():
    x = blob("x")
    core = core_of([Job(("0",), files={"x": x}), Job(("1",))], window=2)
    core._draw()
    core._draw()
    # `host.files` without `input_mb`: the files it holds do not make it take any
    assert ids(core.bored("old", 2, 1000, 0.0, files=[x.sha256])) == [1]
    assert ids(core.bored("new", 2, 1000, 0.0, input_mb=1, files=[x.sha256])) == [0]


def test_files_totalling_exactly_the_allowance_are_held_first_and_one_byte_more_never():
    half = MiB // 2
    table = blob("table", half)  # every job reads it: it counts in each job's total
    small, exact, over = blob("small"), blob("exact", half), blob("over", half + 1)
    jobs = [Job(("0",), files={"f": f}) for f in (small, exact, over)]
    core = core_of(jobs, files={"/input/table": table}, window=3)
    for _ in range(3):
        core._draw()
    held = [over.sha256, exact.sha256]
    # job 1's files total 1 MiB to the byte: held, it comes first; job 2's are a byte over
    assert ids(core.bored("a", 3, 1000, 0.0, input_mb=1, files=held)) == [1, 0]
    assert ids(core.bored("b", 3, 1000, 0.0, input_mb=2)) == [2]


def test_one_ask_names_each_wanting_job_once_however_it_reaches_it():
    """The generator an ask walks (Locality._candidates): a group reached through two
    held files is read once, and the oldest-first pass at the end goes past the groups
    already read, the plain one too (bored would not send a job twice to one jobber, but
    a job named twice costs the ask a second look)."""
    x, y = blob("x"), blob("y")
    jobs = [Job(("0",)), Job(("1",), files={"x": x, "y": y}), Job(("2",), files={"x": x})]
    core = core_of(jobs, window=3)
    for _ in range(3):
        core._draw()
    assert list(core._candidates(MiB, [x.sha256, y.sha256])) == [1, 2, 0]
    assert list(core._candidates(MiB, [y.sha256])) == [0, 1, 2]  # y's, plain, the rest
    assert list(core._candidates(MiB, ())) == [0, 1, 2]
    assert ids(core.bored("a", 5, 1000, 0.0, input_mb=1, files=[y.sha256, x.sha256])) == [1, 2, 0]


def test_a_settled_batch_leaves_no_group_no_index_entry_and_no_held_file():
    """The groups and the index from file to groups hold only wanting jobs, and the held
    files only unsettled jobs' (the module's promise: an ask costs the files a jobber
    holds and their groups; memory does not grow over a long batch). Read from the
    core's own tables: nothing a jobber is sent tells them apart."""
    x, y = blob("x"), blob("y")
    jobs = [
        Job(("0",), files={"x": x, "y": y}),
        Job(("1",), files={"x": x}),
        Job(("2",)),
        Job(("3",), files={"x": x, "y": y}),
    ]
    core = core_of(jobs, redundancy=2, quorum=2)
    first = core.bored("a", 4, 1000, 0.0, input_mb=1)
    assert ids(first) == [0, 1, 2, 3]  # each wants a second replica
    assert core._readers.keys() == {x.sha256, y.sha256} and len(core._groups) == 3
    second = core.bored("b", 4, 1000, 0.0, input_mb=1, files=[x.sha256, y.sha256])
    assert ids(second) == [0, 3, 1, 2]  # x and y's, x's, then the plain job
    # nothing wants a replica: no group, no index entry, nothing a jobber waits for
    assert (core._groups, core._readers, core.files_need(None)) == ({}, {}, None)
    assert core.input_file(x.sha256) is x and core.input_file(y.sha256) is y  # still read
    for jobber, sent in (("a", first), ("b", second)):
        for a in sent:
            assert core.result(jobber, a.tag, OK, b"same", 1, "", 1.0) is None
    assert sorted(s.job_id for s in core.take_settled()) == [0, 1, 2, 3]
    assert core._held_files == {} and core.input_file(x.sha256) is None


def test_a_file_two_unsettled_jobs_read_is_served_until_the_last_of_them_settles():
    shared = blob("shared")  # each job's own, not the task's: the same bytes in both
    jobs = [Job(("0",), files={"a": shared}), Job(("1",), files={"b": shared})]
    core = core_of(jobs)
    got = core.bored("j", 2, 1000, 0.0, input_mb=1)
    assert ids(got) == [0, 1]
    assert core.result("j", got[0].tag, OK, b"x", 1, "", 1.0) is None
    assert core.input_file(shared.sha256) is shared  # job 1 still reads it
    assert core.result("j", got[1].tag, OK, b"x", 1, "", 1.0) is None
    assert core.input_file(shared.sha256) is None  # nobody does now


# --- the journal: a job is pinned by its files' hashes -------------------------


def test_a_replay_under_changed_files_is_refused_and_jobs_without_files_keep_their_digest():
    a, b = blob("a"), blob("b")
    records = _run([Job(("0",), files={"f": a}), Job(("1",))])
    for jobs, shared in (
        ([Job(("0",), files={"f": b}), Job(("1",))], None),  # its own file's bytes changed
        ([Job(("0",), files={"g": a}), Job(("1",))], None),  # renamed
        ([Job(("0",), files={"f": a}), Job(("1",))], {"/input/t": a}),  # a task-wide one added
    ):
        fresh = core_of(jobs, files=shared)
        with pytest.raises(JournalMismatch, match="its input files changed"):
            for rec in records:
                fresh.apply(rec)
    same = core_of([Job(("0",), files={"f": a}), Job(("1",))])
    for rec in records:
        same.apply(rec)
    assert same.drawn == 2
    # a job without files is pinned as it was before files existed
    plain = next(r for r in records if type(r).__name__ == "Drawn" and r.job_id == 1)
    old = hashlib.sha256(b"\x92\x91\xa11\xc4\x00").hexdigest()  # msgpack [["1"], b""]
    assert plain.digest == old


def test_a_finished_batch_restored_under_changed_files_is_refused():
    a, b = blob("a"), blob("b")
    core = core_of([Job(("0",), files={"f": a})])
    [x] = core.bored("a", 1, 1000, 0.0, input_mb=1)
    core.result("a", x.tag, OK, b"out", 1, "", 1.0)
    rows, snap = core.peek_settled_rows(), core.snapshot()
    changed = core_of([Job(("0",), files={"f": b})])
    with pytest.raises(JournalMismatch, match="its input files changed"):
        changed.restore(snap, rows)
    same = core_of([Job(("0",), files={"f": a})])
    same.restore(snap, rows)
    assert same.accepted == 1


def _run(jobs) -> list:
    core = core_of(jobs)
    core.bored("a", 2, 1000, 0.0, input_mb=1)
    return core.take_records()


# --- the service: jobs carry their files; fetch --------------------------------


class WithFiles(Task):
    limits = Limits(fuel=10**6, memory_mb=1, time_s=5, output_kb=1)

    def __init__(self, table: bytes = b"table" * 1000) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "files")
        self.files = {"table": InputFile.from_bytes(table)}

    def jobs(self):
        return (Job((str(i),), files={"own": blob(str(i))}) for i in range(1000))

    def on_output(self, job, output):
        pass


def service(tmp_path, task=None) -> Service:
    task = task or WithFiles()
    return Service(task, Journal(tmp_path / "j.sqlite", "WithFiles"), now=0.0, policy=Policy())


def bored(s: Service, peer: Peer, input_mb: int | None, now: float = 0.0) -> p.Message:
    reply = s.handle(p.Bored(1, "j", p.HostFacts(1, 1024, 1, input_mb=input_mb), 2), now, peer)
    s.commit()
    return reply


def test_the_service_sends_files_only_to_jobbers_that_take_them_and_says_why(tmp_path):
    s = service(tmp_path)
    peer = Peer("aa" * 32, "10.0.0.1")
    no = bored(s, peer, None)
    assert isinstance(no, p.RetryLater) and "this jobber takes none" in no.reason
    small = bored(s, peer, 0)
    assert isinstance(small, p.RetryLater) and "5010 bytes of input files" in small.reason
    assert "1 jobber cannot take the jobs' input files (the latest: jobs here need 5010" in (
        " ".join(s.status(0.0)["waiting"])
    )
    jobs = bored(s, peer, 1)
    assert isinstance(jobs, p.Jobs) and len(jobs.jobs) == 2
    assert "input files" not in " ".join(s.status(0.0)["waiting"])  # it takes them now
    table = s.task.files["table"]
    for spec in jobs.jobs:
        own = blob(spec.args[0])
        assert spec.files == {"/input/table": table.ref, "/input/own": own.ref}
        assert spec.input_bytes() == table.size + own.size
    s.close()


def test_fetch_serves_chunks_and_refuses_unknown_files_past_the_end_and_denied(tmp_path):
    table = bytes(range(256)) * (p.CHUNK_BYTES // 256) + b"tail"  # two chunks
    s = service(tmp_path, WithFiles(table))
    sha = hashlib.sha256(table).hexdigest()
    peer = Peer("aa" * 32, "10.0.0.1")
    zero = s.handle(p.Fetch(1, sha, 0), 0.0, peer)
    one = s.handle(p.Fetch(2, sha, 1), 0.0, peer)
    assert isinstance(zero, p.Chunk) and isinstance(one, p.Chunk)
    assert (zero.re, zero.chunk, zero.size, one.chunk) == (1, 0, len(table), 1)
    assert zero.data + one.data == table and one.digests is None
    assert zero.digests == tuple(hashlib.sha256(c).digest() for c in (zero.data, one.data))
    past = s.handle(p.Fetch(3, sha, 2), 0.0, peer)
    assert isinstance(past, p.Error) and past.code is p.ErrorCode.UNEXPECTED
    unknown = s.handle(p.Fetch(4, "ab" * 32, 0), 0.0, peer)
    assert isinstance(unknown, p.Error) and unknown.code is p.ErrorCode.UNKNOWN_FILE
    status = s.status(0.0)
    assert (status["fetches"], status["files_served_bytes"]) == (2, len(table))
    s.core.deny("aa" * 32, "test")
    denied = s.handle(p.Fetch(5, sha, 0), 0.0, peer)
    assert isinstance(denied, p.Error) and denied.code is p.ErrorCode.DENIED
    s.close()


def test_fetch_is_rationed_per_source_and_per_turn_and_busy_says_when_to_ask_again(tmp_path):
    s = service(tmp_path)
    sha = s.task.files["table"].sha256
    flood, other = Peer("aa" * 32, "10.0.0.1"), Peer("bb" * 32, "10.0.0.2")

    def fetch(peer: Peer, now: float) -> p.Message:
        s.tick(now)  # a turn each
        return s.handle(p.Fetch(1, sha, 0), now, peer)

    replies = [fetch(flood, 5.0) for _ in range(int(FETCH_BURST) + 10)]
    served = [r for r in replies if isinstance(r, p.Chunk)]
    busy = [r for r in replies if isinstance(r, p.Error)]
    assert len(served) == FETCH_BURST and len(busy) == 10
    assert all(r.code is p.ErrorCode.BUSY and "busy" in r.text for r in busy)
    assert "rationed" in busy[0].text and "ask again in 0.05 s" in busy[0].text
    # retry_s says when, as the text does: a token is back in 1/32 s, said as 0.05 s at least
    assert [r.retry_s for r in busy] == [0.05] * 10
    assert isinstance(fetch(other, 5.0), p.Chunk)  # other addresses are served
    assert isinstance(fetch(flood, 6.0), p.Chunk)  # and this one, a second later
    # one turn serves at most FETCH_PER_TURN chunks, whoever asks
    s.tick(100.0)
    many = [s.handle(p.Fetch(1, sha, 0), 100.0, Peer("cc" * 32, f"10.1.0.{i}")) for i in range(20)]
    assert sum(isinstance(r, p.Chunk) for r in many) == FETCH_PER_TURN
    assert "chunks are served a turn" in many[-1].text
    assert many[-1].code is p.ErrorCode.BUSY and many[-1].retry_s == 0.05
    assert s.status(100.0)["fetches_busy"] == 10 + 20 - FETCH_PER_TURN
    s.close()


def test_the_operator_sets_the_ration_in_mib_a_second_and_all_sources_get_four_times_it():
    # 64 MiB/s: 16 chunks a second per address after a burst of 16; 64 a second in all
    server = FileServer(serve_mib_s=64)
    table = InputFile.from_bytes(b"t" * 10)

    def fetch(source: str, now: float) -> p.Message:
        server.turn()
        return server.fetch(
            p.Fetch(1, table.sha256, 0), now, Peer("aa" * 32, source), {table.sha256: table}.get
        )

    def served(source: str, now: float, n: int) -> int:
        return sum(isinstance(fetch(source, now), p.Chunk) for _ in range(n))

    assert served("10.0.0.1", 0.0, 40) == FETCH_BURST
    assert served("10.0.0.1", 1.0, 40) == 16  # a second's worth: 64 MiB
    assert "rationed to 16 chunks a second" in fetch("10.0.0.1", 1.0).text
    # in all: a burst of 64, then 64 a second, whichever addresses ask
    assert sum(served(f"10.1.0.{i}", 10.0, 16) for i in range(8)) == 64
    assert sum(served(f"10.2.0.{i}", 11.0, 16) for i in range(8)) == 64
    # a big ration raises the burst with it: half a second's worth
    assert FileServer(serve_mib_s=1024).ration.burst == 128
    with pytest.raises(ValueError, match="--serve-mib-s must be above 0"):
        FileServer(serve_mib_s=0)


def test_a_restart_on_the_journal_with_a_changed_file_is_refused(tmp_path):
    s = service(tmp_path)
    assert isinstance(bored(s, Peer("aa" * 32, "10.0.0.1"), 1), p.Jobs)
    s.close()
    with pytest.raises(JournalMismatch, match="input files changed"):
        service(tmp_path, WithFiles(b"another table"))
    service(tmp_path).close()  # the same files: it resumes


class WithRuntime(WithFiles):
    """A payload that brings a file of its own (a language runtime's library)."""

    def __init__(self) -> None:
        super().__init__()
        lib = InputFile.from_bytes(b"stdlib")
        self.payload = dataclasses.replace(self.payload, files={"/usr/lib/rt.zip": lib})


def test_a_payload_s_own_files_are_in_every_job_and_pinned_with_them(tmp_path):
    s = service(tmp_path, WithRuntime())
    jobs = bored(s, Peer("aa" * 32, "10.0.0.1"), 1)
    lib = s.task.payload.files["/usr/lib/rt.zip"]
    assert all(spec.files["/usr/lib/rt.zip"] == lib.ref for spec in jobs.jobs)
    assert len(jobs.jobs[0].files) == 3
    assert isinstance(
        s.handle(p.Fetch(9, lib.sha256, 0), 0.0, Peer("aa" * 32, "10.0.0.1")), p.Chunk
    )
    s.close()
    with pytest.raises(JournalMismatch, match="input files changed"):
        service(tmp_path)  # the same task without the runtime's file
