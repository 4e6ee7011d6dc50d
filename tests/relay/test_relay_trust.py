"""Trust across a relay, at the dealer (dealer._service driven directly, a real SQLite
journal): behind an untrusted relay everything is the relay's one machine, but each
jobber it names keeps its own standing (a lost vote and a denial are that jobber's); a
relay the dealer trusts (`--trust-relay`) has each of its jobbers counted as a machine
of its own, within the relay's namespace, and can move no replica from one of its
jobbers to another."""

from __future__ import annotations

import protocol as p
from dealer._core import Policy
from dealer._journal import Journal
from dealer._service import Peer, Service, behind
from tasks import Job, Limits, Payload, Task

WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
RELAY = Peer("ee" * 32, "192.0.2.7")
X = p.Attribution("aa" * 32, "10.0.0.5")
Y = p.Attribution("bb" * 32, "10.0.0.6")
HOST = p.HostFacts(1, 1024, 1)


class Few(Task):
    limits = Limits(fuel=10**6, memory_mb=1, time_s=5, output_kb=1)

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "few")

    def jobs(self):
        return (Job((str(i),)) for i in range(4))

    def on_output(self, job, output):
        pass


def service(tmp_path, trusted: bool) -> Service:
    return Service(
        Few(),
        Journal(tmp_path / "j.sqlite", "Few"),
        now=0.0,
        policy=Policy(redundancy=2, quorum=2, quota=64),
        relays=(RELAY.key,) if trusted else (),
    )


def ask(s: Service, who: p.Attribution | None, now: float, peer: Peer = RELAY) -> p.Message:
    reply = s.handle(p.Bored(1, "lab", HOST, 2, None, who), now, peer)
    s.commit()
    return reply


def send(s: Service, tag: str, who: p.Attribution | None, now: float, peer: Peer = RELAY):
    r = p.Result(tag, p.Status.OK, b"1", 7, "", who)
    ack = s.handle(p.Results(2, "lab", (r,)), now, peer)
    s.commit()
    s.after_turn(now)
    return ack


def args(jobs: p.Message) -> set[str]:
    assert isinstance(jobs, p.Jobs), jobs
    return {j.args[0] for j in jobs.jobs}


def test_behind_an_untrusted_relay_every_jobber_is_the_relay(tmp_path):
    s = service(tmp_path, trusted=False)
    for_x, for_y = ask(s, X, 0.0), ask(s, Y, 0.1)
    assert args(for_x).isdisjoint(args(for_y))  # one replica of a job per identity
    tag = for_x.jobs[0].tag
    assert send(s, tag, X, 1.0).tags == (tag,)  # X's identity, on the relay's machine
    assert s.core.accepted == 0  # one machine's vote of the two needed
    assert {r["machine"] for r in s.jobbers()} == {RELAY.address}


def test_a_trusted_relay_s_jobbers_are_machines_of_their_own(tmp_path):
    s = service(tmp_path, trusted=True)
    for_x, for_y = ask(s, X, 0.0), ask(s, Y, 0.1)
    both = args(for_x) & args(for_y)
    assert both  # the two replicas of a job went to two jobbers behind the one relay
    by_args_y = {j.args[0]: j.tag for j in for_y.jobs}
    for j in for_x.jobs:
        if j.args[0] in both:
            assert send(s, j.tag, X, 1.0).tags == (j.tag,)
            assert send(s, by_args_y[j.args[0]], Y, 1.0).tags == (by_args_y[j.args[0]],)
    assert s.core.accepted == len(both)  # two machines agreed
    machines = {r["machine"] for r in s.jobbers()}
    assert machines == {f"{RELAY.key[:16]}/10.0.0.5", f"{RELAY.key[:16]}/10.0.0.6"}
    assert behind(RELAY, X).key not in (X.key, RELAY.key)  # it names no one else's identity


def test_a_trusted_relay_cannot_move_a_replica_to_another_of_its_jobbers(tmp_path):
    s = service(tmp_path, trusted=True)
    for_x = ask(s, X, 0.0)
    tag = for_x.jobs[0].tag
    ack = send(s, tag, Y, 1.0)  # fetched for X, claimed by Y
    assert ack.tags == () and ack.rejected[0].code is p.ErrorCode.UNKNOWN_TAG
    ack = send(s, tag, None, 1.0)  # nor by the relay itself
    assert ack.rejected[0].code is p.ErrorCode.UNKNOWN_TAG
    # nor from anyone else naming X: only the relay's own connection speaks for X
    other = Peer("cc" * 32, "192.0.2.8")
    assert send(s, tag, X, 1.0, other).rejected[0].code is p.ErrorCode.UNKNOWN_TAG
    assert send(s, tag, X, 1.1).tags == (tag,)


def test_the_relay_s_alive_vouches_for_its_jobbers(tmp_path):
    s = service(tmp_path, trusted=True)
    for_x = ask(s, X, 0.0)
    lease = s.core.policy.lease_s
    holding = tuple(j.tag for j in for_x.jobs)
    for now in (lease * 0.6, lease * 1.2, lease * 1.8):
        s.tick(now)
        ack = s.handle(p.Alive(3, "lab", holding), now, RELAY)
        s.commit()
        assert isinstance(ack, p.AliveAck) and ack.cancel == ()
    s.tick(lease * 2.0)
    x = next(r for r in s.jobbers() if r["key"] == behind(RELAY, X).key)
    assert not x["gone"] and x["holding"] == len(holding)
    # a holding without them releases them, as from any jobber
    s.handle(p.Alive(4, "lab", ()), lease * 2.1, RELAY)
    s.commit()
    x = next(r for r in s.jobbers() if r["key"] == behind(RELAY, X).key)
    assert x["holding"] == 0


class Many(Few):
    def jobs(self):
        return (Job((str(i),)) for i in range(12))


def result(s: Service, tag: str, out: bytes, who: p.Attribution | None, now: float, peer: Peer):
    r = p.Result(tag, p.Status.OK, out, 7, "", who)
    ack = s.handle(p.Results(2, "x", (r,)), now, peer)
    s.commit()
    s.after_turn(now)
    return ack


def test_behind_an_untrusted_relay_a_lost_vote_costs_the_jobber_that_lied(tmp_path):
    s = Service(
        Many(),
        Journal(tmp_path / "j.sqlite", "Many"),
        now=0.0,
        policy=Policy(redundancy=2, quorum=2, quota=64),
    )
    d1, d2 = Peer("d1" * 32, "192.0.2.21"), Peer("d2" * 32, "192.0.2.22")
    liar = ask(s, X, 0.0)
    assert len(liar.jobs) == 2
    for j in liar.jobs:  # the liar behind the relay and an honest machine disagree
        assert result(s, j.tag, b"13", X, 0.1, RELAY).tags == (j.tag,)
    for j in ask(s, None, 0.2, d1).jobs:
        result(s, j.tag, b"1", None, 0.3, d1)
    for j in ask(s, None, 0.4, d2).jobs:  # a third machine settles them
        result(s, j.tag, b"1", None, 0.5, d2)
    assert s.core.accepted == 2
    x, y = behind(RELAY, X, trusted=False), behind(RELAY, Y, trusted=False)
    assert s.core.jobbers[x.key].invalid == 2 and not s.core.is_denied(x.key)
    # one more lost vote denies it; the reply to the relay says so
    third = ask(s, X, 1.0)
    ack = result(s, third.jobs[0].tag, b"13", X, 1.1, RELAY)
    for j in ask(s, None, 1.2, d1).jobs:
        result(s, j.tag, b"1", None, 1.3, d1)
    for j in ask(s, None, 1.4, d2).jobs:
        result(s, j.tag, b"1", None, 1.5, d2)
    assert s.core.is_denied(x.key)
    denied = ask(s, X, 2.0)
    assert isinstance(denied, p.Error) and denied.code is p.ErrorCode.DENIED
    # the honest jobber behind the same relay is not denied: it gets work and earns
    honest = ask(s, Y, 2.1)
    assert isinstance(honest, p.Jobs) and len(honest.jobs) == 2
    ack = result(s, honest.jobs[0].tag, b"1", Y, 2.2, RELAY)
    for j in ask(s, None, 2.3, d1).jobs:
        result(s, j.tag, b"1", None, 2.4, d1)
    rec = s.core.jobbers[y.key]
    assert rec.valid >= 1 and rec.credit > 0 and rec.invalid == 0
    # the ack to Y's result tells the relay of Y, and of X, whose standing changed since
    told = {t.key: t for t in ack.standing}
    assert set(told) == {X.key, Y.key}
    assert told[X.key] == p.Standing(X.key, 0, 3, True)
    assert not told[Y.key].denied and told[Y.key].invalid == 0
    again = result(s, honest.jobs[-1].tag, b"1", Y, 2.5, RELAY).standing
    assert [t.key for t in again] == [Y.key]  # X's is as it was last told
    assert not s.core.is_denied(y.key) and not s.core.is_denied(RELAY.key)
    # on the relay's one machine all the same: one vote for the two of them
    assert {s.core.jobbers[k].machine for k in (x.key, y.key)} == {RELAY.address}
    # the relay's alive is told both; a jobber that named none is told none
    tell = s.handle(p.Alive(5, "lab", None), 3.0, RELAY)
    assert {(t.key, t.denied) for t in tell.standing} == {(X.key, True), (Y.key, False)}
    assert s.handle(p.Alive(6, "d1", None), 3.0, d1).standing == ()
    # a name the relay makes up to start afresh inherits the relay machine's lost standing
    fresh = behind(RELAY, p.Attribution("cc" * 32, "10.0.0.7"), trusted=False)
    assert fresh.key not in s.core.jobbers
    assert s.core.room(fresh.key, RELAY.machine("host")) < s.core.policy.quota // 4


def test_what_one_relay_can_make_the_dealer_remember_is_bounded(tmp_path, monkeypatch):
    """Names behind one relay are capped (MAX_BEHIND): a relay making up a fresh jobber
    for every ask gets `retry_later` past the cap, and the dealer keeps no more rows."""
    import dealer._service as service_module

    monkeypatch.setattr(service_module, "MAX_BEHIND", 3)
    s = service(tmp_path, trusted=False)
    for i in range(3):
        reply = ask(s, p.Attribution(f"{i:02x}" * 32, "10.0.0.9"), 0.1)
        assert isinstance(reply, p.Jobs | p.RetryLater) and "MAX_BEHIND" not in str(reply)
    past = ask(s, p.Attribution("ff" * 32, "10.0.0.9"), 0.2)
    assert isinstance(past, p.RetryLater) and "MAX_BEHIND" in past.reason
    assert len(s.core.jobbers) == 3
    again = ask(s, p.Attribution("00" * 32, "10.0.0.9"), 0.3)  # one it named: still served
    assert "MAX_BEHIND" not in str(again)
    s.close()


def test_a_denied_relay_speaks_for_none_of_its_jobbers(tmp_path):
    s = service(tmp_path, trusted=False)
    jobs = ask(s, X, 0.1)
    assert isinstance(jobs, p.Jobs)
    s.core.deny(RELAY.key, "test", 0.2)
    s.commit()
    for msg in (
        p.Bored(3, "lab", HOST, 2, None, Y),
        p.Results(4, "lab", (p.Result(jobs.jobs[0].tag, p.Status.OK, b"1", 7, "", X),)),
        p.Alive(5, "lab", (jobs.jobs[0].tag,)),
    ):
        reply = s.handle(msg, 0.3, RELAY)
        assert isinstance(reply, p.Error) and reply.code is p.ErrorCode.DENIED, msg
    s.close()
