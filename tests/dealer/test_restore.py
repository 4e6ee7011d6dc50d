"""A finished batch restarts from what its journal kept of it, without replaying every
record; anything else replays. The dealer's service driven directly, real SQLite."""

from __future__ import annotations

import json
import logging

import pytest

import protocol as p
from dealer._core import Core, CoreError, JournalMismatch, Policy
from dealer._journal import Journal
from dealer._service import Peer, Service
from tasks import Job, Limits, Payload, Task

WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
A, B = Peer("aa" * 32, "127.0.0.2"), Peer("bb" * 32, "127.0.0.3")
HOST = p.HostFacts(1, 1024, 4)


class Squares(Task):
    """`n` jobs; job 3's output is refused by the jobbers (a failure), the rest squared."""

    limits = Limits(fuel=10**6, memory_mb=1, time_s=5, output_kb=1)
    max_errors = 0

    def __init__(self, n: int = 12) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "squares")
        self.n = n
        self.seen: list[tuple[str, bytes]] = []

    def jobs(self):
        return (Job((str(i),)) for i in range(self.n))

    def on_output(self, job: Job, output: bytes) -> None:
        self.seen.append((job.args[0], output))

    def result(self):
        return self.seen


def service(path, task: Task) -> Service:
    return Service(task, Journal(path, "Squares"), now=0.0, policy=Policy(redundancy=2))


def run_to_the_end(s: Service) -> None:
    rid = 0
    while not s.finished():
        for peer in (A, B):
            if s.finished():  # the other peer's results ended it
                return
            rid += 1
            jobs = s.handle(p.Bored(rid, "j", HOST, 4), 1.0, peer)
            s.commit()
            s.after_turn(1.0)
            results = tuple(
                p.Result(j.tag, p.Status.TRAP, b"", 0, "boom")
                if j.args[0] == "3"
                else p.Result(j.tag, p.Status.OK, str(int(j.args[0]) ** 2).encode(), 5)
                for j in jobs.jobs
            )
            rid += 1
            s.handle(p.Results(rid, "j", results), 1.0, peer)
            s.commit()
            s.after_turn(1.0)


def test_a_finished_batch_is_restored_as_it_ended(tmp_path, caplog):
    first = Squares()
    s = service(tmp_path / "j.sqlite", first)
    run_to_the_end(s)
    before = s.status(2.0)
    s.close()
    caplog.set_level(logging.INFO)
    again = Squares()
    restored = service(tmp_path / "j.sqlite", again)
    assert "restored the finished batch: 11 jobs accepted, 1 failed" in caplog.text
    assert "replayed" not in caplog.text
    assert restored.finished()
    assert again.seen == first.seen  # the same outputs, in the same order
    assert [f.job for f in again.failures] == [Job(("3",))]
    assert again.failures[0].reasons == first.failures[0].reasons
    after = restored.status(2.0)
    for k in ("drawn", "accepted", "failed", "failed_own", "in_flight", "disputed"):
        assert after[k] == before[k], k
    assert after["jobbers_total"] == before["jobbers_total"]
    assert after["failed_own"] == 1  # job 3's trap: its own bug, counted on nobody
    row = {r["key"]: r for r in after["jobbers"]}[A.key]
    assert row["valid"] == {r["key"]: r for r in before["jobbers"]}[A.key]["valid"] > 0
    assert [r["errors"] for r in after["jobbers"]] == [r["errors"] for r in before["jobbers"]]
    assert [r["errors"] for r in after["jobbers"]] == [0, 0]
    assert again.failures[0].reasons[0].startswith("the same failure on 1 machine:")
    late = restored.handle(
        p.Results(99, "j", (p.Result(f"{restored.journal.tag_prefix}.0", p.Status.OK, b"0", 5),)),
        3.0,
        A,
    )
    assert isinstance(late, p.Ack) and late.rejected[0].code is p.ErrorCode.SETTLED
    restored.close()


def test_a_journal_changed_since_it_finished_is_replayed(tmp_path, caplog):
    first = Squares()
    s = service(tmp_path / "j.sqlite", first)
    run_to_the_end(s)
    s.core.deny(B.key, "after the end", 5.0)  # a record after the finish mark
    s.commit()
    s.close()
    caplog.set_level(logging.INFO)
    again = Squares()
    replayed = service(tmp_path / "j.sqlite", again)
    assert "replayed" in caplog.text and "restored the finished batch" not in caplog.text
    assert again.seen == first.seen and replayed.core.is_denied(B.key)
    replayed.close()


def test_a_changed_task_is_refused_on_restore_too(tmp_path):
    s = service(tmp_path / "j.sqlite", Squares())
    run_to_the_end(s)
    s.close()
    with pytest.raises(JournalMismatch, match="yields more than the 12 jobs"):
        service(tmp_path / "j.sqlite", Squares(13))


# --- the core's side: snapshot() and restore() ---------------------------------


def core_of(task_jobs: list[Job]) -> Core:
    policy = Policy(redundancy=3, quorum=2, deadline_s=100.0, lease_s=1e6, backups=0)
    return Core(task_jobs, policy, "t")


def numbered(n: int) -> list[Job]:
    return [Job((str(i),)) for i in range(n)]


def finished_core() -> Core:
    """Three jobs, each on machines ma, mb, mc: job 0 accepted over a dispute (c said
    otherwise), job 1 failed (the same trap everywhere), job 2 accepted; c denied after."""
    core = core_of(numbered(3))
    for i in range(3):
        a, b, c = (core.bored(n, 1, 1000, float(i), machine=f"m{n}")[0] for n in "abc")
        assert a.job_id == b.job_id == c.job_id == i
        for who, r, out in (("a", a, b"x"), ("c", c, b"y" if i == 0 else b"x"), ("b", b, b"x")):
            status = p.Status.TRAP if i == 1 else p.Status.OK
            core.result(who, r.tag, status, b"" if i == 1 else out, 1, "boom", float(i) + 0.5)
    core.refill()  # finds the task's jobs at an end
    core.deny("c", "disagreed", 5.0)
    assert core.finished() and core.disputed == 1 and core.denied and core.machines
    assert (core.accepted, core.failed) == (2, 1)
    return core


def journalled(snap: dict) -> dict:
    """The snapshot as the journal gives it back (it keeps it as JSON)."""
    return json.loads(json.dumps(snap))


def test_restore_makes_the_core_the_snapshot_describes():
    core = finished_core()
    rows = core.peek_settled_rows()
    snap = journalled(core.snapshot())
    settled = core.take_settled()
    assert [r[2] for r in rows] == ["accepted", "failed", "accepted"]
    fresh = core_of(numbered(3))
    fresh.restore(snap, iter(rows))
    # the settled jobs wait to be taken, as the journal keeps them, in the same order
    assert fresh.peek_settled_rows() == rows
    assert fresh.take_settled() == settled
    # every field of the snapshot comes back: disputes, denials, identities, machines
    assert fresh.snapshot() == snap
    assert fresh.disputed == 1 and list(fresh.disputes) == snap["disputes"] != []
    assert fresh.denied == {"c": "disagreed"} and fresh.is_denied("c")
    assert fresh.machines.keys() == {"ma", "mb", "mc"}
    assert fresh.machines["mc"].allowance < fresh.machines["ma"].allowance
    assert fresh.finished() and fresh.bored("d", 1, 1000, 10.0) == []
    # tags go on where the batch left them
    assert fresh.snapshot()["next_tag"] == core.snapshot()["next_tag"] == 9


def test_restore_is_for_a_fresh_core():
    core = finished_core()  # every job drawn and settled: none unsettled, yet not fresh
    rows, snap = core.peek_settled_rows(), journalled(core.snapshot())
    with pytest.raises(CoreError, match="for a fresh core"):
        core.restore(snap, rows)
    started = core_of(numbered(3))
    started.refill()  # one job drawn
    with pytest.raises(CoreError, match="for a fresh core"):
        started.restore(snap, rows)


def test_restore_refuses_jobs_that_are_not_the_journals():
    core = finished_core()
    rows, snap = core.peek_settled_rows(), journalled(core.snapshot())
    changed = core_of([Job(("0",)), Job(("other",)), Job(("2",))])
    with pytest.raises(JournalMismatch, match="job 1 of the task differs"):
        changed.restore(snap, rows)
    with pytest.raises(JournalMismatch, match="holds job 2 but the task yields only 2 jobs"):
        core_of(numbered(2)).restore(snap, rows)
    # a settled job missing from the journal: the jobs drawn are not those settled
    with pytest.raises(JournalMismatch, match="finished batch does not match"):
        core_of(numbered(3)).restore(snap, [rows[0], rows[2]])
    # a snapshot that drew more jobs than the journal settled and the task yields
    with pytest.raises(JournalMismatch, match="finished batch does not match"):
        core_of(numbered(3)).restore({**snap, "drawn": 4}, rows)
