"""Saved states at the dealer: the core's rules (dealer._saves) driven directly, and the
service's `save` handling with a real SQLite journal and a real folder of states
(dealer._checkpoints)."""

from __future__ import annotations

import hashlib

import pytest

import protocol as p
from dealer._core import Accepted, Core, Policy
from dealer._journal import Journal
from dealer._service import Peer, Service
from protocol import ErrorCode, Status
from tasks import Job, Limits, Payload, Task

LIMIT = 64 * 1024


def core(**kw) -> Core:
    policy = Policy(
        **{"deadline_s": 100.0, "lease_s": 10.0, "checkpoint_bytes": LIMIT, "backups": 0, **kw}
    )
    return Core((Job((str(i),)) for i in range(1)), policy, "d")


def send(c: Core, who: str, now: float, **kw):
    (a,) = c.bored(who, 1, 1000, now, machine=f"m-{who}", input_mb=1, **kw)
    return a


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_replica_sent_after_one_fell_silent_starts_from_its_latest_state():
    c = core()
    a = send(c, "a", 0.0)
    assert a.resume is None
    assert c.checkpointed("a", a.tag, sha("1"), 10, 1000, 5.0, 1.0) is None
    assert c.checkpointed("a", a.tag, sha("2"), 12, 2000, 9.0, 2.0) is None
    assert c.bored("b", 1, 1000, 3.0, machine="m-b", input_mb=1) == []  # a is out
    c.tick(20.0)  # a is silent past its lease: gone
    b = send(c, "b", 20.0)
    assert (b.resume.hash, b.resume.fuel, b.resume.time_s) == (sha("2"), 2000, 9.0)
    assert c.checkpoint_hashes() == {sha("2")}  # the older state is kept no more
    # the jobber may only send states of its own replica, within the limit
    assert c.checkpointed("a", b.tag, sha("3"), 1, 1, 1.0, 21.0).code is ErrorCode.UNKNOWN_TAG
    big = c.checkpointed("b", b.tag, sha("3"), LIMIT + 1, 3000, 1.0, 21.0)
    assert big.code is ErrorCode.UNEXPECTED
    behind = c.checkpointed("b", b.tag, sha("3"), 1, 1999, 1.0, 21.0)
    assert behind.code is ErrorCode.IMPLAUSIBLE  # less fuel than the state it started from
    # fuel differs between a resumed replica and one run straight: outputs alone vote
    assert c.result("b", b.tag, Status.OK, b"42", 7777, "", 30.0) is None
    (done,) = c.take_settled()
    assert isinstance(done, Accepted) and done.output == b"42"
    assert c.checkpointed("b", b.tag, sha("4"), 1, 8000, 1.0, 31.0).code is ErrorCode.SETTLED


def test_a_state_is_not_resumed_by_a_jobber_that_takes_no_files_or_has_no_room():
    c = core(checkpoint_bytes=4 << 20)
    a = send(c, "a", 0.0)
    assert c.checkpointed("a", a.tag, sha("1"), 2 << 20, 1000, 5.0, 1.0) is None
    c.result("a", a.tag, Status.ABANDONED, b"", 0, "quit", 2.0)  # given back: spare
    (none,) = c.bored("b", 1, 1000, 3.0, machine="m-b", input_mb=None)
    assert none.resume is None  # it fetches no files
    c.result("b", none.tag, Status.ABANDONED, b"", 0, "quit", 4.0)
    (small,) = c.bored("c", 1, 1000, 5.0, machine="m-c", input_mb=1)
    assert small.resume is None  # 2 MiB does not fit its 1 MiB
    c.result("c", small.tag, Status.ABANDONED, b"", 0, "quit", 6.0)
    (room,) = c.bored("e", 1, 1000, 7.0, machine="m-e", input_mb=4)
    assert room.resume is not None and room.resume.hash == sha("1")


def test_a_backup_starts_from_the_latest_state_of_the_replica_still_out():
    c = core(backups=1)
    a = send(c, "a", 0.0)
    c.checkpointed("a", a.tag, sha("1"), 10, 500, 5.0, 1.0)
    b = send(c, "b", 2.0)  # nothing left to draw: a backup of the job out longest
    assert b.resume is not None and b.resume.hash == sha("1")
    assert c._replicas[b.tag].lineage == {"m-a", "m-b"}


def test_a_replica_resumed_from_a_liars_state_votes_once_with_the_liar():
    """The liar saves a poisoned state and falls silent; an honest jobber resumes from
    it and prints what the poison makes; the liar's late result says the same. Two
    machines, one lineage: no quorum of two. An independent replica decides."""
    c = core(redundancy=2, quorum=2, backups=0)
    liar = send(c, "liar", 0.0)
    h1 = send(c, "h1", 0.0)
    c.checkpointed("liar", liar.tag, sha("poison"), 10, 500, 5.0, 1.0)
    c.tick(20.0)  # both silent past their lease (h1 too: it was never heard again)
    h2 = send(c, "h2", 20.0)
    assert h2.resume is not None and h2.resume.hash == sha("poison")
    assert c.result("h2", h2.tag, Status.OK, b"13", 900, "", 21.0) is None
    assert c.result("liar", liar.tag, Status.OK, b"13", 600, "", 22.0) is None
    assert c.take_settled() == []  # m-liar and m-h2 share a lineage: one vote
    assert c.result("h1", h1.tag, Status.OK, b"right", 700, "", 23.0) is None
    h3 = send(c, "h3", 24.0)
    assert h3.resume is None or "m-liar" not in c._replicas[h3.tag].lineage
    assert c.result("h3", h3.tag, Status.OK, b"right", 800, "", 25.0) is None
    (done,) = c.take_settled()
    assert isinstance(done, Accepted) and done.output == b"right"


def test_replay_rebuilds_the_segments():
    c = core()
    a = send(c, "a", 0.0)
    c.checkpointed("a", a.tag, sha("1"), 10, 1000, 5.0, 1.0)
    c.tick(20.0)
    b = send(c, "b", 20.0)
    records = c.take_records()
    again = core()
    for rec in records:
        again.apply(rec)
    r = again._replicas[b.tag]
    assert r.resume.hash == sha("1") and r.lineage == {"m-a", "m-b"} and r.sent_at == 20.0
    assert again._replicas[a.tag].saves == 1


# --- the service: `save` over a real journal and folder -----------------------------------

WAT = '(module (memory (export "memory") 1) (func (export "_start")))'


class Long(Task):
    limits = Limits(fuel=10**9, memory_mb=1, time_s=5, output_kb=1, checkpoint_kb=LIMIT // 1024)

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "long")
        self.outputs: list[bytes] = []

    def jobs(self):
        return iter([Job(("0",))])

    def on_output(self, job, output):
        self.outputs.append(output)


ME, OTHER = Peer("aa" * 32, "127.0.0.2"), Peer("bb" * 32, "127.0.0.3")
HOST = p.HostFacts(1, 1024, 1, input_mb=1)


@pytest.fixture
def service(tmp_path):
    s = Service(
        Long(),
        Journal(tmp_path / "j.sqlite", "Long"),
        now=0.0,
        policy=Policy(lease_s=10.0, checkpoint_bytes=LIMIT),
    )
    yield s
    s.close()


def handle(s: Service, msg: p.Message, peer: Peer, now: float) -> p.Message:
    reply = s.handle(msg, now, peer)
    s.commit()
    return reply


def upload(s: Service, peer: Peer, tag: str, data: bytes, now: float, fuel: int = 10) -> list:
    h = hashlib.sha256(data).hexdigest()
    replies = []
    for i in range(p.chunk_count(len(data))):
        chunk = data[i * p.CHUNK_BYTES : (i + 1) * p.CHUNK_BYTES]
        msg = p.Save(i + 10, "me", tag, h, len(data), i, chunk, fuel, 1.0)
        replies.append(handle(s, msg, peer, now))
    return replies


def test_a_state_sent_is_journaled_kept_on_disk_and_served_to_the_replica_that_resumes(
    service, tmp_path
):
    (spec,) = handle(service, p.Bored(1, "me", HOST, 1), ME, 0.0).jobs
    state = b"state!" * 100
    (reply,) = upload(service, ME, spec.tag, state, 1.0)
    sha_ = hashlib.sha256(state).hexdigest()
    assert reply == p.Saved(10, sha_, 1)
    assert (tmp_path / "j.sqlite-checkpoints" / sha_).read_bytes() == state
    service.tick(30.0)  # its jobber is gone
    (again,) = handle(service, p.Bored(2, "other", HOST, 1), OTHER, 30.0).jobs
    assert again.resume == p.Resume(sha_, len(state), 10, 1.0)
    assert again.fetched()[-1] == p.FileRef(sha_, len(state))
    chunk = handle(service, p.Fetch(3, sha_, 0), OTHER, 30.0)
    assert isinstance(chunk, p.Chunk) and chunk.data == state
    status = service.status(30.0)
    assert status["checkpoints_received"] == 1
    assert status["long_jobs"][0]["resumed_fuel"] == 10
    # a state damaged on disk is served as no file: that jobber starts over
    (tmp_path / "j.sqlite-checkpoints" / sha_).write_bytes(bytes(len(state)))
    gone = handle(service, p.Fetch(4, sha_, 0), OTHER, 31.0)
    assert isinstance(gone, p.Error) and gone.code is ErrorCode.UNKNOWN_FILE


def test_a_state_comes_in_order_and_whole_or_not_at_all(service, tmp_path):
    (spec,) = handle(service, p.Bored(1, "me", HOST, 1), ME, 0.0).jobs
    tag = spec.tag
    data = b"x" * 100
    h = hashlib.sha256(data).hexdigest()
    # a chunk of a state not begun: from chunk 0
    assert handle(service, p.Save(5, "me", tag, h, 100, 1, b"", 1, 1.0), ME, 1.0).next == 0
    # bytes that do not hash to their name
    bad = handle(service, p.Save(6, "me", tag, h, 100, 0, b"y" * 100, 1, 1.0), ME, 1.0)
    assert isinstance(bad, p.Error) and bad.code is ErrorCode.UNEXPECTED and "hash" in bad.text
    # a chunk of the wrong length
    short = handle(service, p.Save(7, "me", tag, h, 100, 0, b"x" * 99, 1, 1.0), ME, 1.0)
    assert isinstance(short, p.Error) and short.code is ErrorCode.UNEXPECTED
    # over the jobs' checkpoint_kb, or not the sender's replica
    big = handle(service, p.Save(8, "me", tag, h, LIMIT + 1, 0, b"", 1, 1.0), ME, 1.0)
    assert isinstance(big, p.Error) and big.code is ErrorCode.UNEXPECTED
    theirs = handle(service, p.Save(9, "o", tag, h, 100, 0, data, 1, 1.0), OTHER, 1.0)
    assert isinstance(theirs, p.Error) and theirs.code is ErrorCode.UNKNOWN_TAG
    assert not (tmp_path / "j.sqlite-checkpoints").exists()
    assert service.status(1.0)["checkpoints_received"] == 0


def test_a_state_of_several_chunks_is_taken_a_chunk_at_a_time(service, tmp_path):
    (spec,) = handle(service, p.Bored(1, "me", HOST, 1), ME, 0.0).jobs
    small = Long.limits.checkpoint_kb * 1024
    assert small < p.CHUNK_BYTES  # this batch's states are one chunk: a bigger batch's
    s = Service(
        Long(),
        Journal(tmp_path / "big.sqlite", "Long"),
        now=0.0,
        policy=Policy(lease_s=10.0, checkpoint_bytes=16 << 20),
    )
    try:
        (spec,) = handle(s, p.Bored(1, "me", HOST, 1), ME, 0.0).jobs
        data = bytes(range(256)) * (p.CHUNK_BYTES // 256) + b"tail"
        replies = upload(s, ME, spec.tag, data, 1.0)
        assert [r.next for r in replies] == [1, 2]
        assert s.core._replicas[spec.tag].checkpoint.size == len(data)
    finally:
        s.close()


def test_the_edges_of_what_a_jobber_may_save():
    plain = Core(iter([Job(("0",))]), Policy(deadline_s=100.0), "d")
    (a,) = plain.bored("a", 1, 1000, 0.0, machine="m-a", input_mb=1)
    assert plain.may_save("a", a.tag, 1).code is ErrorCode.UNEXPECTED  # the batch saves none
    c = core(redundancy=2, quorum=2, fuel_limit=5000)
    a, b = send(c, "a", 0.0), send(c, "b", 0.0)
    assert c.checkpointed("a", a.tag, sha("0"), LIMIT, 0, 1.0, 3.0) is None  # at the limits
    assert c.jobbers["a"].last_seen == 3.0  # a state says its jobber is alive
    assert c.checkpointed("a", a.tag, sha("1"), 1, 5000, 1.0, 4.0) is None
    over = c.checkpointed("a", a.tag, sha("2"), 1, 5001, 1.0, 4.0)
    assert over.code is ErrorCode.IMPLAUSIBLE
    assert c.result("a", a.tag, Status.OK, b"x", 9, "", 5.0) is None
    # its result is in, its job is not settled (b is out): no more states of it
    assert c.checkpointed("a", a.tag, sha("3"), 1, 5000, 1.0, 6.0).code is ErrorCode.SETTLED
    assert c.checkpointed("b", b.tag, sha("4"), 1, 1, 1.0, 6.0) is None
    c.tick(30.0)  # b gone: its state is spare
    e = send(c, "e", 30.0)
    assert e.resume.hash == sha("4")
    assert c.checkpointed("e", e.tag, sha("5"), 1, 1, 1.0, 31.0) is None  # as much as before


def test_a_backups_state_is_spared_by_the_replica_still_running_it_once_it_ends():
    c = core(backups=1)
    a = send(c, "a", 0.0)
    c.checkpointed("a", a.tag, sha("1"), 10, 500, 5.0, 1.0)
    b = send(c, "b", 2.0)  # a backup, from a's latest state
    c.result("b", b.tag, Status.ABANDONED, b"", 0, "quit", 3.0)
    assert c._jobs[0].spare == []  # a still runs from there: no spare yet
    c.tick(20.0)  # a gone: its state is spare, once
    c.alive("a", 21.0, holding=())  # and lost, as its jobber says: still once
    assert [ck.hash for ck in c._jobs[0].spare] == [sha("1")]


def test_a_state_fits_beside_the_jobs_input_files_or_is_not_sent():
    from tasks import InputFile

    table = InputFile.from_bytes(bytes(700 << 10))
    policy = Policy(deadline_s=100.0, lease_s=10.0, checkpoint_bytes=1 << 20, backups=0)
    c = Core(iter([Job(("0",), files={"t": table})]), policy, "d")
    (a,) = c.bored("a", 1, 1000, 0.0, machine="m-a", input_mb=2)
    c.checkpointed("a", a.tag, sha("big"), 400 << 10, 10, 1.0, 1.0)
    c.result("a", a.tag, Status.ABANDONED, b"", 0, "quit", 2.0)
    (b,) = c.bored("b", 1, 1000, 3.0, machine="m-b", input_mb=1)
    assert b.resume is None  # 700 KiB of files and 400 of state: over 1 MiB
    c.result("b", b.tag, Status.ABANDONED, b"", 0, "quit", 4.0)
    # the spare stays for a jobber with room
    (e,) = c.bored("e", 1, 1000, 5.0, machine="m-e", input_mb=2)
    assert e.resume is not None and e.resume.size == 400 << 10


def test_a_journal_naming_a_state_the_job_never_had_is_refused():
    from dealer._records import Sent
    from dealer._replicas import CoreError

    c = core()
    send(c, "a", 0.0)
    (drawn, _) = c.take_records()
    again = core()
    again.apply(drawn)
    with pytest.raises(CoreError, match="unknown to it"):
        again.apply(Sent("d.0", 0, "a", 100.0, "m-a", 0.0, None, sha("never")))


def test_long_jobs_show_how_long_each_has_run_and_how_old_its_state_is():
    c = core(redundancy=2)
    a = send(c, "a", 0.0)
    b = send(c, "b", 10.0)
    c.checkpointed("b", b.tag, sha("1"), 10, 500, 5.0, 12.0)
    rows = c.long_jobs(20.0)
    assert [(r["tag"], r["run_s"], r["saved_s_ago"], r["saves"]) for r in rows] == [
        (a.tag, 20.0, None, 0),
        (b.tag, 10.0, 8.0, 1),
    ]
    assert rows[1]["saved_fuel"] == 500 and rows[0]["resumed_fuel"] is None
    assert len(c.long_jobs(20.0, limit=1)) == 1


def test_long_jobs_are_listed_longest_running_first_and_a_state_may_fill_the_room():
    c = Core((Job((str(i),)) for i in range(2)), Policy(checkpoint_bytes=1 << 20), "d")
    (a,) = c.bored("a", 1, 1000, 0.0, machine="m-a", input_mb=1)
    (b,) = c.bored("b", 1, 1000, 5.0, machine="m-b", input_mb=1)
    assert c.checkpointed("a", a.tag, sha("all"), 1 << 20, 10, 1.0, 5.5) is None
    c.result("a", a.tag, Status.ABANDONED, b"", 0, "quit", 6.0)
    (e,) = c.bored("e", 1, 1000, 7.0, machine="m-e", input_mb=1)
    assert e.job_id == a.job_id and e.resume.size == 1 << 20  # exactly its 1 MiB
    assert [r["tag"] for r in c.long_jobs(20.0)] == [b.tag, e.tag]  # b: 15 s, e: 13 s
