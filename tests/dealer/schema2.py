"""Two batches driven through a real Service, for tests/dealer/test_journal_format.py:
their journals as the dealer of schema 2 wrote them are in tests/dealer/data/
(`schema2-NAME.sqlite`), with what that dealer made of them (`schema2-NAME.json`,
`summary`). They were written by this module run in a checkout of that dealer (commit
900576b): `python -m tests.dealer.schema2 tests/dealer/data`. Run by the dealer of
now, the same scenarios must end the same (the format on disk changed, not the
behaviour).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import protocol as p
from dealer import Journal
from dealer._service import Service, policy_for
from protocol import Peer
from tasks import Job, Limits, Payload, Task

NOP = '(module (memory (export "memory") 1) (func (export "_start")))'
A, B, C, ADMIN = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
OK, TRAP, EXIT = p.Status.OK, p.Status.TRAP, p.Status.EXIT


class Old(Task):
    """`n` jobs (job 3 with a stdin); what the task is handed is kept in `seen`."""

    limits = Limits(fuel=10**6, memory_mb=16, time_s=5, output_kb=1)

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.payload = Payload.from_wat(NOP)
        self.seen: list[list[str]] = []

    def jobs(self):
        return [Job((str(i),), b"in" if i == 3 else b"") for i in range(self.n)]

    def on_output(self, job, output):
        self.seen.append(["ok", job.args[0], output.decode()])

    def on_failure(self, job, reasons):
        self.seen.append(["failed", job.args[0], reasons[0][:40]])


def unfinished_service(path, **kw) -> Service:
    task = Old(8)
    pol = policy_for(task, redundancy=2, quorum=2, max_errors=1, quota=8)
    return Service(
        task, Journal(path, "old"), now=1000.0, policy=pol, distinct="key", admins=[ADMIN], **kw
    )


def finished_service(path, **kw) -> Service:
    task = Old(3)
    pol = policy_for(task, redundancy=1, quorum=1, max_errors=0, quota=8)
    return Service(task, Journal(path, "old"), now=1000.0, policy=pol, distinct="key", **kw)


def peer(key: str) -> Peer:
    return Peer(key, f"10.0.0.{key[0]}")


def bored(svc: Service, key: str, want: int, now: float) -> p.Message:
    host = p.HostFacts(1, 1024, 4, (svc.task.payload.sha256,))
    return svc.handle(p.Bored(1, "j", host, want), now, peer(key))


def results(svc: Service, key: str, rs, now: float) -> p.Message:
    return svc.handle(p.Results(2, "j", tuple(p.Result(*r) for r in rs)), now, peer(key))


def turn(svc: Service, now: float, *calls):
    """One turn of the server: tick, the messages, commit, then the task is handed what
    settled."""
    svc.tick(now)
    out = [c() for c in calls]
    svc.commit()
    svc.after_turn(now)
    return out


def summary(svc: Service) -> dict:
    c = svc.core
    return {
        "seen": svc.task.seen,
        "accepted": c.accepted,
        "failed": c.failed,
        "drawn": c.drawn,
        "next_tag": c._next_tag,
        "denied": sorted(c.denied),
        "jobbers": {
            k: [r.valid, r.invalid, r.errors, r.credit, r.held]
            for k, r in sorted(c.jobbers.items())
        },
        "unsettled": sorted(c._jobs),
        "disputed": c.disputed,
    }


def unfinished(path) -> dict:
    """Redundancy 2: agreement, a deterministic failure agreed on, a disagreement settled
    by a third machine, a denial, a jobber gone silent, replicas overdue."""
    svc = unfinished_service(path)
    ja, jb = turn(svc, 1000.0, lambda: bored(svc, A, 4, 1000.0), lambda: bored(svc, B, 4, 1000.0))
    ta, tb = [s.tag for s in ja.jobs], [s.tag for s in jb.jobs]
    turn(
        svc,
        1001.0,
        lambda: results(
            svc,
            A,
            [
                (ta[0], OK, b"out0", 5),
                (ta[1], OK, b"out1", 5),
                (ta[2], TRAP, b"", 3, "boom"),
                (ta[3], OK, b"x", 2),
            ],
            1001.0,
        ),
        lambda: results(
            svc,
            B,
            [(tb[0], OK, b"out0", 5), (tb[1], OK, b"DIFF", 5), (tb[2], TRAP, b"", 3, "boom")],
            1001.0,
        ),
    )
    (jc,) = turn(svc, 1002.0, lambda: bored(svc, C, 4, 1002.0))
    tc = {s.args[0]: s.tag for s in jc.jobs}
    turn(svc, 1003.0, lambda: results(svc, C, [(tc["1"], OK, b"out1", 5)], 1003.0))
    turn(svc, 1003.5, lambda: svc.handle(p.Deny(3, C, "test"), 1003.5, peer(ADMIN)))
    turn(svc, 1100.0)  # past B's lease and the deadlines
    s = summary(svc)
    svc.close()
    return s


def finished(path) -> dict:
    """Redundancy 1, three jobs: two accepted, one failed; the batch finished."""
    svc = finished_service(path)
    (ja,) = turn(svc, 1000.0, lambda: bored(svc, A, 4, 1000.0))
    t = [s.tag for s in ja.jobs]
    rs = [(t[0], OK, b"r0", 1), (t[1], EXIT, b"", 1, "exit 3"), (t[2], OK, b"r2", 1)]
    turn(svc, 1001.0, lambda: results(svc, A, rs, 1001.0))
    assert svc.finished()
    s = summary(svc)
    svc.close()
    return s


SCENARIOS = {"unfinished": unfinished, "finished": finished}

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(exist_ok=True)
    for name, make in SCENARIOS.items():
        f = out / f"schema2-{name}.sqlite"
        f.unlink(missing_ok=True)
        (out / f"schema2-{name}.json").write_text(
            json.dumps(make(f), indent=1, sort_keys=True) + "\n"
        )
