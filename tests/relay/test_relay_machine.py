"""The relay's core under arbitrary interleavings (hypothesis RuleBasedStateMachine), with
its real journal (SQLite in a temporary directory) and a model upstream.

Two jobbers ask, return results (good, given back, or implausible), forget what they
hold (a crash); the upstream answers, loses requests, cancels jobs; the clock jumps
past leases and deadlines; the relay restarts from its journal. The shell's rule is
kept: after every step the core's operations are written before anything it said is
acted on. After every step:

- every job the upstream handed out is held by the relay, was acknowledged upstream,
  or was cancelled by it: none lost;
- every result the upstream got is the right output of its job, or the job given
  back unrun (`abandoned`); an implausible result never reaches it;
- every local replica names a held job, and the held jobs' local sets agree with it.

At the end, with the upstream answering and the jobbers honest, everything the relay
holds is delivered.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import protocol as p
from net._backoff import Backoff
from relay._core import RelayCore
from relay._journal import RelayJournal

WASM = b"\0asm\1\0\0\0"
SHA = hashlib.sha256(WASM).hexdigest()
LIMITS = p.Limits(fuel=1000, memory_mb=64, time_s=5.0, output_kb=1)
JOBBERS = {"aa" * 32: "10.0.0.1", "bb" * 32: "10.0.0.2"}
HOST = p.HostFacts(cpus=1, memory_mb=1024, slots=1)
MAX_JOBS = 40  # jobs the model upstream hands out in all


def right(utag: str) -> bytes:
    return f"out-{utag}".encode()


class RelayMachine(RuleBasedStateMachine):
    @initialize(attribute=st.booleans())
    def start(self, attribute: bool) -> None:
        self.dir = Path(tempfile.mkdtemp())
        self.attribute = attribute
        self.now = 1000.0
        self.journal = RelayJournal(self.dir / "relay.sqlite")
        self.core = self._core()
        self.issued: set[str] = set()
        self.delivered: dict[str, p.Result] = {}
        self.cancelled: set[str] = set()
        self.holding: dict[str, dict[str, p.JobSpec]] = {k: {} for k in JOBBERS}
        self.done: dict[str, dict[str, p.Result]] = {k: {} for k in JOBBERS}

    def _core(self) -> RelayCore:
        c = RelayCore(
            self.journal.tag_prefix,
            max_buffer=12,
            backoff=Backoff(min_s=1.0, max_s=4.0),
            attribute=self.attribute,
        )
        c.load(
            self.journal.held(),
            self.journal.payloads(),
            self.journal.local(),
            self.journal.next_tag(),
            self.now,
        )
        return c

    def _commit(self) -> None:
        self.journal.apply(self.core.take_ops())

    def teardown(self) -> None:
        self.journal.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- our jobbers -------------------------------------------------------------

    @rule(who=st.sampled_from(sorted(JOBBERS)), want=st.integers(0, 3), say=st.booleans())
    def jobber_asks(self, who: str, want: int, say: bool) -> None:
        held = (*self.holding[who], *self.done[who]) if say else None
        reply = self.core.bored(p.Bored(1, who[:2], HOST, want, held), self.now, who, JOBBERS[who])
        self._commit()
        if isinstance(reply, p.Jobs):
            assert len(reply.jobs) <= max(want, 0)
            for j in reply.jobs:
                assert j.tag not in self.holding[who]
                assert j.deadline_s > 0
                self.holding[who][j.tag] = j

    @rule(
        who=st.sampled_from(sorted(JOBBERS)),
        how=st.sampled_from(["ok", "ok", "abandoned", "implausible"]),
    )
    def jobber_finishes_one(self, who: str, how: str) -> None:
        if not self.holding[who]:
            return
        tag, spec = next(iter(self.holding[who].items()))
        del self.holding[who][tag]
        if how == "ok":
            r = p.Result(tag, p.Status.OK, right(spec.args[0]), 10)
        elif how == "abandoned":
            r = p.Result(tag, p.Status.ABANDONED)
        else:
            r = p.Result(tag, p.Status.OK, b"x" * 5000, 10)  # over the output limit
        self.done[who][tag] = r

    @rule(who=st.sampled_from(sorted(JOBBERS)))
    def jobber_delivers(self, who: str) -> None:
        if not self.done[who]:
            return
        ack = self.core.results(
            p.Results(2, who[:2], tuple(self.done[who].values())), self.now, who, JOBBERS[who]
        )
        self._commit()
        for tag in ack.tags:
            del self.done[who][tag]
        for r in ack.rejected:
            del self.done[who][r.tag]

    @rule(who=st.sampled_from(sorted(JOBBERS)))
    def jobber_crashes(self, who: str) -> None:
        self.holding[who].clear()  # its spool survives: self.done[who] stays

    @rule(who=st.sampled_from(sorted(JOBBERS)))
    def jobber_alive(self, who: str) -> None:
        held = (*self.holding[who], *self.done[who])
        ack = self.core.alive(p.Alive(3, who[:2], held), self.now, who, JOBBERS[who])
        self._commit()
        for tag in ack.cancel:
            self.holding[who].pop(tag, None)
            self.done[who].pop(tag, None)

    # --- the upstream ------------------------------------------------------------

    @rule(lose=st.booleans(), cancel=st.booleans(), n=st.integers(0, 4))
    def upstream_turn(self, lose: bool, cancel: bool, n: int) -> None:
        requests = self.core.upstream_requests(self.now)
        self._commit()
        if lose and requests:
            self.core.upstream_failed(self.now)
            self._commit()
            return
        for msg in requests:
            self.core.upstream_reply(self._answer(msg, cancel, n), self.now)
            self._commit()

    def _answer(self, msg: p.Message, cancel: bool, n: int) -> p.Message:
        if isinstance(msg, p.Bored):
            assert msg.want >= 1 and (msg.behalf is not None) == self.attribute
            assert set(msg.holding) <= self.issued
            k = min(n, msg.want, MAX_JOBS - len(self.issued))
            specs = []
            for _ in range(k):
                utag = f"up.{len(self.issued)}"
                self.issued.add(utag)
                specs.append(p.JobSpec(utag, SHA, (utag,), b"", LIMITS, 30.0))
            return p.Jobs(msg.id, tuple(specs), {SHA: WASM})
        if isinstance(msg, p.Results):
            tags, rejected = [], []
            for r in msg.results:
                assert r.tag in self.issued and r.tag not in self.cancelled
                if r.status is p.Status.ABANDONED:
                    assert (r.output, r.fuel) == (b"", 0)
                else:
                    assert r.status is p.Status.OK and r.output == right(r.tag), r
                    assert r.by is not None and r.by.key in JOBBERS
                if r.tag in self.delivered:
                    rejected.append(p.Rejection(r.tag, p.ErrorCode.DUPLICATE, "again"))
                else:
                    self.delivered[r.tag] = r
                    tags.append(r.tag)
            return p.Ack(msg.id, tuple(tags), tuple(rejected))
        assert isinstance(msg, p.Alive)
        gone = ()
        if cancel and msg.holding:
            gone = (msg.holding[0],)
            if gone[0] not in self.delivered:
                self.cancelled.add(gone[0])
        return p.AliveAck(msg.id, 20.0, gone)

    # --- time and restarts ---------------------------------------------------------

    @rule(dt=st.sampled_from([0.5, 3.0, 25.0, 40.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        self.core.tick(self.now)
        self._commit()

    @rule()
    def relay_restarts(self) -> None:
        self.journal.close()
        self.journal = RelayJournal(self.dir / "relay.sqlite")
        self.core = self._core()

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def nothing_lost(self) -> None:
        held = set(self.core.held)
        assert self.issued == held | set(self.delivered) | self.cancelled, (
            self.issued - held - set(self.delivered) - self.cancelled
        )

    @invariant()
    def local_replicas_agree(self) -> None:
        for ltag, loc in self.core.local.items():
            assert ltag in self.core.held[loc.utag].local
        for h in self.core.held.values():
            assert all(self.core.local[t].utag == h.utag for t in h.local)
            if self.attribute:
                assert all(self.core.local[t].key == h.for_key for t in h.local)
        assert len(self.core.held) <= 12 + 4  # the buffer (a bored in flight may top it up)

    @invariant()
    def each_held_replica_is_in_the_state_its_fields_say(self) -> None:
        """The transition table (relay._records.HELD_TRANSITIONS) and the fields agree."""
        for h in self.core.held.values():
            said = "done" if h.result is not None else "out" if h.local else "queued"
            assert h.state.value == said, (h.utag, h.state, said)

    def drain(self) -> None:
        """Everyone honest and answering, until the relay holds nothing."""
        for _ in range(400):
            if not self.core.held:
                return
            for who in JOBBERS:
                self.jobber_asks(who, 3, True)
                while self.holding[who]:
                    self.jobber_finishes_one(who, "ok")
                self.jobber_delivers(who)
            self.upstream_turn(False, False, 0)
            self.time_passes(3.0)
        raise AssertionError(f"still held: {sorted(self.core.held)}")


class Drained(RelayMachine):
    def teardown(self) -> None:
        if hasattr(self, "core"):
            self.drain()
            assert self.issued == set(self.delivered) | self.cancelled
        super().teardown()


Drained.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_relay_under_arbitrary_interleavings = Drained.TestCase
