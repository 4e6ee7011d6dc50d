"""A finished batch restarts from what its journal kept of it, without replaying every
record; anything else replays. The dealer's service driven directly, real SQLite."""

from __future__ import annotations

import logging

import pytest

import protocol as p
from dealer._core import JournalMismatch, Policy
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
    for k in ("drawn", "accepted", "failed", "in_flight", "disputed", "jobbers_total"):
        assert after[k] == before[k], k
    row = {r["key"]: r for r in after["jobbers"]}[A.key]
    assert row["valid"] == {r["key"]: r for r in before["jobbers"]}[A.key]["valid"] > 0
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
