"""The dealer's service driven directly (no sockets; a real SQLite journal): how much work
one jobber may hold at once."""

from __future__ import annotations

import dataclasses

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


def ask_on(
    s: Service,
    peer: Peer,
    platform: str | None,
    now: float,
    want: int = 1,
    nan_fuel: str | None = None,
) -> p.Message:
    host = p.HostFacts(1, 1024, 1, platform=platform, nan_fuel=nan_fuel)
    reply = s.handle(p.Bored(1, "j", host, want), now, peer)
    s.commit()
    return reply


class CrossPlatform(Many):
    cross_platform = True


def test_jobs_ask_for_native_nans_and_stay_on_their_platform(tmp_path):
    s = service(tmp_path, redundancy=2, quorum=2)
    x1, x2, arm = (
        Peer("aa" * 32, "10.0.0.1"),
        Peer("bb" * 32, "10.0.0.2"),
        Peer("cc" * 32, "10.0.0.3"),
    )
    first = ask_on(s, x1, "x86_64", 0.0)
    assert ask_on(s, x2, "x86_64", 0.0).jobs[0].args == first.jobs[0].args == ("0",)
    second = ask_on(s, x1, "x86_64", 0.0)  # job 1, its first replica on x86
    assert second.jobs[0].limits == dataclasses.replace(Many.limits, native_nans=True)
    # job 1 waits for x86 machine x2 (active, fresh to it): arm gets job 2
    assert ask_on(s, arm, "aarch64", 1.0).jobs[0].args == ("2",)
    assert ask_on(s, x2, "x86_64", 1.0).jobs[0].args == ("1",)
    sent = [r for r in s.journal.records() if type(r).__name__ == "Sent"]
    assert [r.platform for r in sent] == ["x86_64", "x86_64", "x86_64", "aarch64", "x86_64"]
    s.close()


def test_a_cross_platform_task_asks_for_canonical_nans_and_any_platforms_vote(tmp_path):
    task = CrossPlatform()
    s = Service(
        task,
        Journal(tmp_path / "j.sqlite", "Many"),
        now=0.0,
        policy=Policy(redundancy=2, quorum=2),
    )
    x86, arm = Peer("aa" * 32, "10.0.0.1"), Peer("cc" * 32, "10.0.0.3")
    jobs = [ask_on(s, x86, "x86_64", 0.0), ask_on(s, arm, "aarch64", 0.0)]
    assert [j.jobs[0].args for j in jobs] == [("0",), ("0",)]  # any platform goes on with it
    assert jobs[0].jobs[0].limits.native_nans is None  # canonical NaNs
    for peer, got in zip((x86, arm), jobs, strict=True):
        answer(s, peer, got, 1.0)
    s.after_turn(1.0)
    assert s.core.accepted == 1
    s.close()


def test_with_canonical_nans_replicas_vote_with_jobbers_that_count_fuel_alike(tmp_path):
    s = Service(
        CrossPlatform(),
        Journal(tmp_path / "j.sqlite", "Many"),
        now=0.0,
        policy=Policy(redundancy=2, quorum=2),
    )
    new_x86, new_arm, old = (Peer(k * 32, f"10.0.0.{i}") for i, k in enumerate("abc", 1))

    def run(peer: Peer, got: p.Jobs, fuel: int) -> None:
        results = tuple(p.Result(j.tag, p.Status.OK, b"same", fuel) for j in got.jobs)
        s.handle(p.Results(2, "j", results), 1.0, peer)
        s.commit()
        s.after_turn(1.0)

    first = ask_on(s, new_x86, "x86_64", 0.0, nan_fuel="nan-guards-1")
    assert first.jobs[0].limits.native_nans is None  # canonical NaNs
    # an older jobber counts fuel as cranelift does: the same output, other fuel
    moved = ask_on(s, old, "x86_64", 0.0)  # no other machine of the first's kind yet
    assert moved.jobs[0].args == first.jobs[0].args == ("0",)
    run(new_x86, first, 100)
    run(old, moved, 90)
    assert s.core.accepted == 0 and s.core.disputed == 0  # not compared: no quorum, no lie
    # a machine counting fuel as the first does, on another platform, makes the quorum
    third = ask_on(s, new_arm, "aarch64", 2.0, nan_fuel="nan-guards-1")
    assert third.jobs[0].args == ("0",)
    run(new_arm, third, 100)
    assert s.core.accepted == 1 and s.core.jobbers[old.key].errors == 0
    sent = [r for r in s.journal.records() if type(r).__name__ == "Sent"]
    assert [r.platform for r in sent][:3] == ["nan-guards-1", None, "nan-guards-1"]
    s.close()


class Named(Many):
    name = "Prime sieve"
    contact = "ann@lab.example"


def test_every_reply_to_a_jobber_tells_it_the_batch_and_its_account(tmp_path):
    s = service(tmp_path, quota=4096)
    peer = Peer("dd" * 32, "127.0.0.5")
    jobs = ask(s, peer, 2, 0.0)
    assert jobs.about == p.About("Many", None)  # the class's name when the task says none
    assert jobs.account == p.Account(0, 0, 0, 0)  # known from its first ask
    answer(s, peer, jobs, 0.1)  # redundancy 1: each output accepted as it comes
    s.after_turn(0.1)
    alive = s.handle(p.Alive(3, "j", ()), 0.2, peer)
    assert alive.account.valid == 2 and alive.account.credit == 2  # the fuel of each: 1
    results = s.handle(p.Results(4, "j", ()), 0.3, peer)
    assert isinstance(results, p.Ack) and results.account.valid == 2
    # what others are answered carries no account of anyone
    status = s.handle(p.StatusQuery(5), 0.3, peer)
    assert not hasattr(status, "account")
    s.close()
    n = Service(Named(), Journal(tmp_path / "n.sqlite", "Named"), now=0.0, policy=Policy())
    later = n.handle(p.Bored(1, "j", p.HostFacts(1, 1024, 1), 1), 0.0, peer)
    assert later.about == p.About("Prime sieve", "ann@lab.example")
    n.close()


def test_what_lenders_are_told_is_cut_to_the_wire_s_bounds():
    from dealer._report import about_of

    class Long(Many):
        name = "n" * 500
        contact = "c" * 500

    about = about_of(Long.__new__(Long))
    assert (len(about.task), len(about.contact)) == (p.MAX_TASK_NAME, p.MAX_CONTACT)
    assert p.decode(p.encode(p.Finished(1, about))).about == about
