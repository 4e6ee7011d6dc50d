"""The dealer's service driven directly (no sockets; a real SQLite journal): how much work
one jobber may hold at once."""

from __future__ import annotations

import protocol as p
from dealer._core import Policy
from dealer._journal import Journal
from dealer._service import PACE_WINDOW_S, RETRY_QUOTA_S, Peer, Service
from tasks import Job, Limits, Payload, Task

WAT = '(module (memory (export "memory") 1) (func (export "_start")))'


class Many(Task):
    limits = Limits(fuel=10**6, memory_mb=1, time_s=5, output_kb=1)

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "many")

    def jobs(self):
        return (Job((str(i),)) for i in range(100_000))

    def on_output(self, job, output):
        pass


def service(tmp_path, **policy) -> Service:
    return Service(Many(), Journal(tmp_path / "j.sqlite", "Many"), now=0.0, policy=Policy(**policy))


def ask(s: Service, peer: Peer, want: int, now: float, rid: int = 1) -> p.Message:
    reply = s.handle(p.Bored(rid, "j", p.HostFacts(1, 1024, 1), want), now, peer)
    s.commit()
    return reply


def answer(s: Service, peer: Peer, jobs: p.Jobs, now: float) -> None:
    results = tuple(p.Result(j.tag, p.Status.OK, b"1", 1) for j in jobs.jobs)
    ack = s.handle(p.Results(2, "j", results), now, peer)
    s.commit()
    assert isinstance(ack, p.Ack) and len(ack.tags) == len(results)


def test_a_jobber_holds_what_it_runs_in_a_second_and_a_hoarder_two_per_slot(tmp_path):
    s = service(tmp_path, quota=4096)
    fast, hoarder = Peer("aa" * 32, "127.0.0.2"), Peer("bb" * 32, "127.0.0.3")
    now = 0.0
    for _ in range(200):  # 2 jobs every 5 ms: 400 results a second
        jobs = ask(s, fast, 500, now)
        assert len(jobs.jobs) <= 500
        answer(s, fast, jobs, now)
        now += 0.005
    assert now > 2 * PACE_WINDOW_S
    big = ask(s, fast, 500, now)
    assert 300 <= len(big.jobs) <= 500  # about what it ran in the last second
    assert len(ask(s, hoarder, 500, now).jobs) == 2  # nothing returned: two per slot
    assert len(ask(s, hoarder, 500, now + 1).jobs) == 2
    s.close()


def test_a_jobber_at_its_quota_is_told_to_come_back_soon(tmp_path):
    s = service(tmp_path)  # a new identity may hold 4
    peer = Peer("cc" * 32, "127.0.0.4")
    assert len(ask(s, peer, 2, 0.0).jobs) == 2
    assert len(ask(s, peer, 2, 0.0, rid=3).jobs) == 2
    full = ask(s, peer, 2, 0.0, rid=4)
    assert isinstance(full, p.RetryLater) and full.seconds == RETRY_QUOTA_S
    assert "quota" in full.reason and full.more
    s.close()
