"""The dealer and several jobbers, their real cores wired together in memory with a fake
clock, under kills, freezes, partitions, restarts, cancels and late results.

The dealer is its real service (dealer._service: the core, the journal in a real SQLite
file, the task) without sockets; each jobber is its real core (jobber._core) with a
simulated slot and spool. Messages go through a model of the network: in flight until
delivered, lost when a side resets its link or restarts, or while a partition lasts.
Whatever happens: no job is accepted twice, every accepted output is the right one,
no drawn job is lost, and once the world heals every batch ends.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import protocol as p
from dealer._core import Policy
from dealer._journal import Journal
from dealer._service import Peer, Service
from jobber import _core as jc
from tasks import Job, Limits, Payload, Task

JOBS = 12
WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
LIMITS = Limits(fuel=10**6, memory_mb=1, time_s=30.0, output_kb=1)


def right(args: tuple[str, ...]) -> bytes:
    return f"{int(args[0]) ** 2}".encode()


class Squares(Task):
    limits = LIMITS

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "squares")
        self.outputs: dict[str, bytes] = {}
        self.twice: list[str] = []

    def jobs(self):
        return [Job((str(i),)) for i in range(JOBS)]

    def on_output(self, job: Job, output: bytes) -> None:
        if job.args[0] in self.outputs:
            self.twice.append(job.args[0])
        self.outputs[job.args[0]] = output

    def result(self):
        return len(self.outputs)

    def total(self) -> int:
        return JOBS


@dataclass
class Running:
    key: str
    spec: p.JobSpec
    left_s: float  # running time still needed


@dataclass
class SimJobber:
    """One jobber: its core, an identity, a machine, a slot that runs jobs for `speed_s`
    each, and a spool that survives kills."""

    name: str
    key: str
    address: str
    speed_s: float
    core: jc.JobberCore | None = None
    spool: dict[tuple[str, str], p.Result] = field(default_factory=dict)
    running: dict[str, Running] = field(default_factory=dict)
    frozen: bool = False
    cut: bool = False  # its network link is down
    epoch: int = 0  # bumped when it resets its link or restarts: older replies are lost


DEALER = "tcp://127.0.0.1:7117"


class System(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="borednet-machine-"))
        self.now = 1000.0
        self.to_dealer: list[tuple[SimJobber, int, p.Message]] = []
        self.to_jobber: list[tuple[SimJobber, int, p.Message]] = []
        self.rng = random.Random(0)
        self.service: Service | None = None
        self.task: Squares | None = None
        self.jobbers: list[SimJobber] = []
        self.dealer_down = False

    @initialize(
        redundancy=st.sampled_from([(1, 1), (2, 2), (3, 2)]),
        speeds=st.lists(st.sampled_from([0.5, 1.0, 4.0]), min_size=3, max_size=4),
    )
    def start(self, redundancy, speeds):
        r, q = redundancy
        self.policy = Policy(
            redundancy=r, quorum=q, max_errors=8, deadline_s=40.0, lease_s=6.0, backups=1
        )
        self.start_dealer()
        for i, speed in enumerate(speeds):
            j = SimJobber(f"j{i}", f"{i + 1:064x}", f"127.0.0.{i + 1}", speed)
            self.jobbers.append(j)
            self.start_jobber(j)

    # --- the world ------------------------------------------------------------------

    def start_dealer(self) -> None:
        self.task = Squares()
        journal = Journal(self.dir / "journal.sqlite", "Squares")
        self.service = Service(self.task, journal, policy=self.policy, now=self.now)
        self.dealer_down = False

    def start_jobber(self, j: SimJobber) -> None:
        s = jc.Settings(
            name=j.name,
            slots=1,
            cpus=1,
            memory_mb=64,
            buffer=1,
            min_backoff_s=0.5,
            max_backoff_s=4.0,
            request_timeout_s=3.0,
        )
        spooled = [(d, r) for (d, _), r in sorted(j.spool.items())]
        j.core = jc.JobberCore(
            s, [f"{DEALER}#{'d' * 64}"], self.now, spooled=spooled, rng=random.Random(j.key)
        )
        j.running = {}
        j.epoch += 1
        self.carry_out(j)

    def carry_out(self, j: SimJobber) -> None:
        assert j.core is not None
        while actions := j.core.take_actions():
            for a in actions:
                if isinstance(a, jc.Send):
                    if not j.cut:
                        self.to_dealer.append((j, j.epoch, a.msg))
                elif isinstance(a, jc.Reset):
                    j.epoch += 1  # a new socket: replies to the old one are lost
                elif isinstance(a, jc.Start):
                    j.running[a.key] = Running(a.key, a.spec, j.speed_s)
                elif isinstance(a, jc.Stop):
                    r = j.running.pop(a.key, None)
                    if r is not None:
                        stopped = p.Result(r.spec.tag, p.Status.ABANDONED, b"", 0, "cancelled")
                        j.core.job_done(a.key, stopped, 0.0, self.now)
                elif isinstance(a, jc.Spool):
                    j.spool[(a.dealer, a.result.tag)] = a.result
                    j.core.spooled([(a.dealer, a.result.tag)])
                elif isinstance(a, jc.Unspool):
                    j.spool.pop((a.dealer, a.tag), None)
                elif isinstance(a, jc.ProbeDisk):
                    j.core.disk_ok()
                # Hello and Pin: the dealer's key is given, so none are asked for

    def deliver(self) -> None:
        """Every message in flight arrives, unless its link was reset or is cut; the dealer
        commits its journal before any reply goes out, as its shell does."""
        inbox, self.to_dealer = self.to_dealer, []
        replies = []
        for j, epoch, msg in inbox:
            if self.dealer_down or j.cut or epoch != j.epoch:
                continue
            assert self.service is not None
            reply = self.service.handle(msg, self.now, Peer(j.key, j.address))
            if reply is not None:
                replies.append((j, epoch, reply))
        if self.service is not None and not self.dealer_down:
            self.service.commit()
            self.service.after_turn(self.now)
        self.to_jobber += replies
        waiting, self.to_jobber = self.to_jobber, []
        for j, epoch, msg in waiting:
            if j.frozen:  # a frozen process reads nothing; the kernel keeps it queued
                self.to_jobber.append((j, epoch, msg))
                continue
            if j.core is None or j.cut or epoch != j.epoch:
                continue
            j.core.received(DEALER, msg, self.now)
            self.carry_out(j)

    def advance(self, dt: float) -> None:
        """`dt` seconds pass in steps of at most 0.5 s: jobs run, cores tick, messages go."""
        while dt > 1e-9:
            step = min(dt, 0.5)
            dt -= step
            self.now += step
            if self.service is not None and not self.dealer_down:
                self.service.tick(self.now)
                self.service.commit()
                self.service.after_turn(self.now)
            for j in self.jobbers:
                if j.core is None or j.frozen:
                    continue
                for r in list(j.running.values()):
                    r.left_s -= step
                    if r.left_s <= 0:
                        del j.running[r.key]
                        out = p.Result(r.spec.tag, p.Status.OK, right(r.spec.args), 7, "")
                        j.core.job_done(r.key, out, j.speed_s, self.now)
                j.core.tick(self.now)
                self.carry_out(j)
            self.deliver()

    # --- rules -----------------------------------------------------------------------

    @rule(dt=st.sampled_from([0.5, 1.0, 3.0, 10.0]))
    def time_passes(self, dt):
        self.advance(dt)

    @rule(i=st.integers(0, 3))
    def kill_jobber(self, i):
        j = self.jobbers[i % len(self.jobbers)]
        j.core, j.running, j.frozen = None, {}, False
        j.epoch += 1

    @rule(i=st.integers(0, 3))
    def restart_jobber(self, i):
        j = self.jobbers[i % len(self.jobbers)]
        if j.core is None:
            self.start_jobber(j)

    @rule(i=st.integers(0, 3), s=st.sampled_from([2.0, 8.0, 30.0]))
    def freeze_jobber(self, i, s):
        j = self.jobbers[i % len(self.jobbers)]
        if j.core is not None:
            j.frozen = True
            self.advance(s)
            j.frozen = False

    @rule(i=st.integers(0, 3), s=st.sampled_from([2.0, 8.0, 30.0]))
    def cut_jobber(self, i, s):
        j = self.jobbers[i % len(self.jobbers)]
        j.cut = True
        self.advance(s)
        j.cut = False

    @precondition(lambda self: not self.dealer_down)
    @rule()
    def kill_dealer(self):
        assert self.service is not None
        self.service.close()
        self.service, self.task, self.dealer_down = None, None, True

    @precondition(lambda self: self.dealer_down)
    @rule()
    def restart_dealer(self):
        self.start_dealer()

    # --- what must always hold ---------------------------------------------------------

    @invariant()
    def nothing_accepted_twice_and_every_output_right(self):
        if self.task is None:
            return
        assert not self.task.twice, f"accepted twice: {self.task.twice}"
        for arg, out in self.task.outputs.items():
            assert out == right((arg,)), (arg, out)

    @invariant()
    def no_drawn_job_is_lost(self):
        if self.service is None:
            return
        core = self.service.core
        assert core.accepted + core.failed + core.in_flight == core.drawn
        assert len(self.task.outputs) == core.accepted

    @invariant()
    def a_jobber_holds_each_tag_once(self):
        for j in self.jobbers:
            if j.core is None:
                continue
            for dealer in j.core.links:
                tags = [h.spec.tag for h in j.core.buffer]
                tags += [h.spec.tag for h in j.core.running.values()]
                tags += list(j.core.unacked.get(dealer, {}))
                assert len(tags) == len(set(tags)), tags

    def teardown(self):
        try:
            if self.jobbers:
                self.heal_and_finish()
        finally:
            if self.service is not None:
                self.service.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def heal_and_finish(self) -> None:
        """Everything comes back: the batch must end, every job accepted once, rightly."""
        if self.dealer_down:
            self.start_dealer()
        for j in self.jobbers:
            j.cut = j.frozen = False
            if j.core is None:
                self.start_jobber(j)
        for _ in range(2400):  # 20 minutes of the fake clock at most
            if self.service.finished():
                break
            self.advance(0.5)
        assert self.service.finished(), (
            f"not finished: {self.service.core.accepted} accepted, "
            f"{self.service.core.in_flight} in flight, waiting: {self.service.waiting(self.now)}"
        )
        assert sorted(self.task.outputs, key=int) == [str(i) for i in range(JOBS)]
        assert not self.task.failures
        self.nothing_accepted_twice_and_every_output_right()


System.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_system = System.TestCase
