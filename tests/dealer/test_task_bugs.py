"""A task's own bugs do not crash the batch: the dealer's service, driven directly, with a
real SQLite journal (no sockets)."""

from __future__ import annotations

import logging

import protocol as p
from dealer._core import Policy
from dealer._journal import Journal
from dealer._service import Peer, Service
from tasks import Job, Limits, Payload, Task

WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
PEER = Peer("ab" * 32, "127.0.0.9")
HOST = p.HostFacts(1, 1024, 4)


class Picky(Task):
    """Five jobs; its on_output cannot parse the output of job 2, and with `broken` its
    jobs() raises after three jobs."""

    limits = Limits(fuel=10**6, memory_mb=1, time_s=5, output_kb=1)

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "picky")
        self.broken = broken
        self.got: dict[str, int] = {}

    def jobs(self):
        for i in range(5):
            if self.broken and i == 3:
                raise RuntimeError("the task ran out of ideas")
            yield Job((str(i),))

    def on_output(self, job: Job, output: bytes) -> None:
        self.got[job.args[0]] = int(output)  # b"two" does not parse

    def result(self):
        return sorted(self.got)


def serve(service: Service, now: float = 100.0) -> None:
    """Play a jobber: take every job, answer each with its number (job 2 with "two")."""
    rid = 1
    while not service.finished():
        reply = service.handle(p.Bored(rid, "j", HOST, 4), now, PEER)
        service.commit()
        service.after_turn(now)
        rid += 1
        assert isinstance(reply, p.Jobs), reply
        results = tuple(
            p.Result(s.tag, p.Status.OK, b"two" if s.args[0] == "2" else s.args[0].encode(), 9)
            for s in reply.jobs
        )
        ack = service.handle(p.Results(rid, "j", results), now, PEER)
        service.commit()
        service.after_turn(now)
        rid += 1
        assert isinstance(ack, p.Ack) and len(ack.tags) == len(results)


def test_an_output_the_task_cannot_take_fails_that_job_and_the_batch_goes_on(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    task = Picky()
    service = Service(task, Journal(tmp_path / "j.sqlite", "Picky"), now=100.0, policy=Policy())
    serve(service)
    assert task.result() == ["0", "1", "3", "4"]
    (failure,) = task.failures
    assert failure.job == Job(("2",))
    assert failure.reasons[0].startswith("on_output raised ValueError: invalid literal")
    assert "job 2 (args 2): the task's on_output raised" in caplog.text
    assert "Traceback" in caplog.text  # the author gets the traceback
    assert service.failures == 1
    service.close()
    # a restarted dealer replays to the same state, without crashing
    again = Picky()
    replayed = Service(again, Journal(tmp_path / "j.sqlite", "Picky"), now=200.0, policy=Policy())
    assert again.result() == ["0", "1", "3", "4"]
    assert [f.job for f in again.failures] == [Job(("2",))]
    assert replayed.finished()
    replayed.close()


def test_a_task_whose_jobs_raise_ends_with_the_jobs_it_gave(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    task = Picky(broken=True)
    service = Service(task, Journal(tmp_path / "j.sqlite", "Picky"), now=100.0, policy=Policy())
    serve(service)
    assert task.result() == ["0", "1"]  # job 2's output is still refused by on_output
    assert service.core.drawn == 3
    assert service.core.source_error == "RuntimeError: the task ran out of ideas"
    assert "the task's jobs() raised after 3 jobs; drawing no more" in caplog.text
    status = service.status(100.0)
    assert status["task_error"] == "RuntimeError: the task ran out of ideas"
    service.close()


def test_a_task_yielding_something_else_than_jobs_is_stopped_there(tmp_path):
    class Sloppy(Picky):
        def jobs(self):
            yield Job(("0",))
            yield ("1",)  # not a Job

    task = Sloppy()
    service = Service(task, Journal(tmp_path / "j.sqlite", "Sloppy"), now=100.0, policy=Policy())
    serve(service)
    assert task.result() == ["0"]
    assert "not a tasks.Job" in service.core.source_error
    service.close()


class Uncounted(Picky):
    """Its total() raises: the batch, its status and its offers to peers go on without it."""

    def total(self) -> int:
        raise ZeroDivisionError("no idea how many")


def test_a_total_that_raises_leaves_status_and_offers_without_a_total(tmp_path, caplog):
    task = Uncounted()
    service = Service(task, Journal(tmp_path / "u.sqlite", "Uncounted"), now=1.0, policy=Policy())
    with caplog.at_level(logging.ERROR, logger="dealer._service"):
        assert service.status(1.0)["total"] is None
        offer = service.handle(p.WorkQuery(3), 1.0, PEER)
        assert isinstance(offer, p.WorkOffer) and offer.left is None and offer.jobs >= 1
        assert service.status(2.0)["total"] is None
    assert sum("total() failed" in r.getMessage() for r in caplog.records) == 1  # once
    serve(service)
    assert task.result() == ["0", "1", "3", "4"]
    service.close()
