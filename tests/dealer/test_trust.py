"""Trust, against a real dealer in this process: real CurveZMQ sockets, a real journal.

Each test plays an attacker with a client written against the wire (a raw
DEALER socket with its own key pair) and checks what the dealer does.
"""

from __future__ import annotations

import subprocess
import threading

import pytest
import zmq

import protocol as p
from dealer import Dealer, Journal
from dealer._service import policy_for
from net._author_keys import create_author_key, load_author_key
from net._keys import KeyPair, create_key_pair, load_public_keys
from net._router import frame_cap
from protocol._signing import AuthorKey, sign_rotation
from tasks import Job, Limits, Payload, Task
from tests.helpers import PY, ROOT, CurveClient, wait_for
from tests.wat import printing

HOST = p.HostFacts(cpus=2, memory_mb=1024, slots=2)


class Collect(Task):
    """N trivial jobs whose outputs are collected."""

    limits = Limits(fuel=10**6, memory_mb=16, time_s=5, output_kb=1)

    def __init__(self, n: int, redundancy: int = 1) -> None:
        super().__init__()
        self.n = n
        self.redundancy = redundancy
        self.payload = Payload(printing("hi\n"), "hi")
        self.outputs: dict[str, bytes] = {}

    def jobs(self):
        return (Job((str(i),)) for i in range(self.n))

    def on_output(self, job, output):
        assert job.args[0] not in self.outputs, "accepted twice"
        self.outputs[job.args[0]] = output

    def result(self):
        return self.outputs


class Serving:
    """A dealer run in a thread on a free loopback port, stopped at the end."""

    def __init__(self, tmp_path, task: Task, **kw) -> None:
        self.task = task
        self.journal_path = tmp_path / "d.sqlite"
        policy = kw.pop("policy", None) or policy_for(task, redundancy=task.redundancy)
        self.dealer = Dealer(
            task,
            kw.pop("bind", "tcp://127.0.0.1:*"),
            Journal(self.journal_path, "collect"),
            policy=policy,
            **kw,
        )
        self.thread = threading.Thread(target=self.dealer.run, kwargs={"max_s": 60}, daemon=True)
        self.thread.start()
        self.clients: list[CurveClient] = []

    def client(self, source: str = "127.0.0.1", **kw) -> CurveClient:
        c = CurveClient(self.dealer.address, source=source, **kw)
        self.clients.append(c)
        return c

    def status(self) -> dict:
        c = self.client()
        reply = c.ask(p.StatusQuery(99))
        assert isinstance(reply, p.StatusReply)
        return reply.info

    def stop(self) -> None:
        for c in self.clients:
            c.close()
        self.dealer.stop()
        self.thread.join(timeout=30)
        self.dealer.close()


@pytest.fixture
def serve(tmp_path):
    started: list[Serving] = []

    def start(task: Task, **kw) -> Serving:
        s = Serving(tmp_path, task, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def ok(spec: p.JobSpec, output: bytes = b"hi\n", fuel: int = 9) -> p.Result:
    return p.Result(spec.tag, p.Status.OK, output, fuel)


# --- identities that cannot be claimed ------------------------------------------------


def test_a_result_counts_only_from_the_identity_its_replica_went_to(serve):
    s = serve(Collect(3))
    ann = s.client()
    jobs = ann.ask(p.Bored(1, "ann", HOST, 1))
    assert isinstance(jobs, p.Jobs) and len(jobs.jobs) == 1
    spec = jobs.jobs[0]
    # another key, even from the same address and under ann's name, is a stranger
    mallory = s.client()
    forged = mallory.ask(p.Results(2, "ann", (ok(spec, b"evil\n"),)))
    assert isinstance(forged, p.Ack) and forged.tags == ()
    assert forged.rejected[0].code is p.ErrorCode.UNKNOWN_TAG
    # a bored under ann's name saying it holds nothing releases none of ann's replicas
    mallory.ask(p.Bored(3, "ann", HOST, 0, holding=()))
    honest = ann.ask(p.Results(4, "ann", (ok(spec),)))
    assert isinstance(honest, p.Ack) and honest.tags == (spec.tag,)
    wait_for(lambda: s.task.outputs.get("0") == b"hi\n", 10, "ann's output accepted")
    rows = {r["key"]: r for r in s.status()["jobbers"]}
    assert rows[ann.key]["name"] == "ann" and rows[ann.key]["valid"] == 1
    assert mallory.key in rows and rows[mallory.key]["valid"] == 0


def test_status_names_no_tags_and_pages_its_jobbers(serve):
    s = serve(Collect(1000), policy=policy_for(Collect(1000), quota=1))
    # 230 identities, on 230 machines so that no machine quota stops them
    clients = [s.client(source=f"127.0.{1 + i // 200}.{2 + i % 200}") for i in range(230)]
    for i, c in enumerate(clients):
        c.send(p.Bored(1, f"n{i}", HOST, 1))
    tags = []
    for c in clients:
        reply = c.recv()
        assert isinstance(reply, p.Jobs)
        tags += [spec.tag for spec in reply.jobs]
    assert len(tags) == 230
    info = s.status()
    assert info["jobbers_total"] == 230 and info["pages"] == 3 and len(info["jobbers"]) == 100
    frame = p.encode(p.StatusReply(1, info))
    assert len(frame) < 64 * 1024
    assert not any(tag.encode() in frame for tag in tags)
    last = s.client().ask(p.StatusQuery(2, page=2))
    assert len(last.info["jobbers"]) == 30


def test_want_zero_gets_no_job_and_want_is_capped_by_slots_and_quota(serve):
    s = serve(Collect(100), policy=policy_for(Collect(100), quota=3))
    c = s.client()
    none = c.ask(p.Bored(1, "c", HOST, 0))
    assert isinstance(none, p.Jobs) and none.jobs == ()
    one_slot = c.ask(p.Bored(2, "c", p.HostFacts(1, 1024, 1), 4096))
    assert isinstance(one_slot, p.Jobs) and len(one_slot.jobs) == 2  # 2 x slots
    more = c.ask(p.Bored(3, "c", p.HostFacts(1, 1024, 64), 4096))
    assert isinstance(more, p.Jobs) and len(more.jobs) == 1  # the quota of 3, all held now
    assert isinstance(c.ask(p.Bored(4, "c", HOST, 4096)), p.RetryLater)
    # fresh names from the same machine share its quota
    fresh = s.client()
    assert isinstance(fresh.ask(p.Bored(5, "x", HOST, 4096)), p.RetryLater)
    # returning good results earns more
    done = c.ask(p.Results(6, "c", tuple(ok(j) for j in one_slot.jobs + more.jobs)))
    assert len(done.tags) == 3
    again = c.ask(p.Bored(7, "c", p.HostFacts(1, 1024, 64), 4096))
    assert isinstance(again, p.Jobs) and len(again.jobs) == 6  # quota 3 + 3 good results


# --- plausible results only ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "output", "fuel", "why"),
    [
        (p.Status.OK, b"hi\n", 2**64 - 1, "exceeds the job's fuel limit"),
        (p.Status.OK, b"x" * 1025, 9, "exceed the job's limit of 1024"),
        (p.Status.OUTPUT, b"x" * 10, 9, "status output with 10 bytes"),
        (p.Status.FUEL, b"", 5, "status fuel with 5 fuel used"),
        (p.Status.INVALID, b"x", 0, "the payload never ran"),
        (p.Status.IMPORT, b"", 3, "the payload never ran"),
    ],
)
def test_implausible_results_are_refused_and_counted(serve, status, output, fuel, why):
    s = serve(Collect(2))
    c = s.client()
    [spec] = c.ask(p.Bored(1, "c", HOST, 1)).jobs
    ack = c.ask(p.Results(2, "c", (p.Result(spec.tag, status, output, fuel),)))
    assert ack.tags == () and ack.rejected[0].code is p.ErrorCode.IMPLAUSIBLE
    assert why in ack.rejected[0].text
    [row] = s.status()["jobbers"]
    assert row["errors"] == 1 and row["credit"] == 0 and row["valid"] == 0
    assert s.task.outputs == {}
    # the replica is closed: the job goes to another machine at once
    other = s.client(source="127.0.0.2")
    again = other.ask(p.Bored(3, "o", HOST, 2))
    assert spec.args in [j.args for j in again.jobs]


def test_a_frame_over_the_task_s_cap_drops_the_connection_not_the_dealer(serve):
    s = serve(Collect(2))
    cap = frame_cap(Collect.limits.output_kb)
    assert cap < 2 * 1024 * 1024
    flood = s.client()
    flood.sock.setsockopt(zmq.SNDTIMEO, 5000)
    flood.send(b"\x00" * (cap + 1))
    with pytest.raises(AssertionError, match="no reply"):
        flood.recv(timeout_s=1.0)
    c = s.client()
    assert isinstance(c.ask(p.Bored(1, "c", HOST, 1)), p.Jobs)


# --- no vote won by one machine --------------------------------------------------------


def test_two_identities_on_one_machine_have_one_vote(serve):
    s = serve(Collect(3, redundancy=2))  # a third job keeps the dealer running
    a, b = s.client(source="127.0.0.3"), s.client(source="127.0.0.3")
    ja = a.ask(p.Bored(1, "a", HOST, 2)).jobs
    assert len(ja) == 2
    # the second identity on the same machine gets no replica of the same jobs
    jb = b.ask(p.Bored(1, "b", HOST, 2)).jobs
    assert [j.args for j in jb] == [("2",)]
    a.ask(p.Results(2, "a", tuple(ok(j, b"13\n", 1) for j in ja)))
    assert s.task.outputs == {}
    honest = s.client(source="127.0.0.4")
    jh = honest.ask(p.Bored(1, "h", HOST, 2)).jobs
    honest.ask(p.Results(2, "h", tuple(ok(j) for j in jh)))
    # one for each output: no quorum of 2 machines yet; a third machine settles it
    third = s.client(source="127.0.0.5")
    j3 = third.ask(p.Bored(1, "t", HOST, 3)).jobs  # jobs 0 and 1, and 2 (held by b)
    third.ask(p.Results(2, "t", tuple(ok(j) for j in j3)))
    wait_for(lambda: len(s.task.outputs) == 2, 10, "both jobs accepted")
    assert set(s.task.outputs.values()) == {b"hi\n"}
    info = s.status()
    assert info["disputed"] == 2
    losers = [g for d in info["disputes"] for g in d["groups"] if not g["won"]]
    assert all(g["jobbers"] == [a.key] and g["machines"] == ["127.0.0.3"] for g in losers)


def test_a_jobber_that_keeps_losing_votes_is_denied(serve):
    s = serve(Collect(20, redundancy=2), policy=policy_for(Collect(20, 2), deny_after=2))
    liar, h1, h2 = (s.client(source=f"127.0.0.{i}") for i in (6, 7, 8))
    for rid in range(1, 4):
        for c, out in ((liar, b"13\n"), (h1, b"hi\n"), (h2, b"hi\n")):
            reply = c.ask(p.Bored(rid, "x", HOST, 1))
            if isinstance(reply, p.Jobs):
                c.ask(p.Results(100 + rid, "x", tuple(ok(j, out) for j in reply.jobs)))
    wait_for(lambda: _denied(s, liar.key), 10, "the liar denied")
    refused = liar.ask(p.Bored(9, "x", HOST, 1))
    assert isinstance(refused, p.Error) and refused.code is p.ErrorCode.DENIED


def _denied(s: Serving, key: str) -> bool:
    return any(r["key"] == key and r["denied"] for r in s.status()["jobbers"])


# --- open or closed; deny --------------------------------------------------------------


def test_deny_needs_the_admin_key_and_survives_a_restart(serve, tmp_path):
    admin = KeyPair(*zmq.curve_keypair())
    task = Collect(5)
    s = serve(task, admins=(admin.public_hex,))
    victim = s.client(source="127.0.0.9")
    [spec] = victim.ask(p.Bored(1, "v", HOST, 1)).jobs
    stranger = s.client()
    no = stranger.ask(p.Deny(2, victim.key, "because"))
    assert isinstance(no, p.Error) and no.code is p.ErrorCode.FORBIDDEN
    boss = s.client(keys=(admin.public, admin.secret))
    yes = boss.ask(p.Deny(3, victim.key, "cheating"))
    assert isinstance(yes, p.AdminReply) and victim.key in yes.text
    # its replica went back to the pool; its result is refused
    late = victim.ask(p.Results(4, "v", (ok(spec),)))
    assert isinstance(late, p.Ack) and late.tags == ()
    # the next handshake of that key fails at the gate
    again = s.client(source="127.0.0.9", keys=(victim.public, victim.secret))
    again.send(p.Bored(5, "v", HOST, 1))
    with pytest.raises(AssertionError, match="no reply"):
        again.recv(timeout_s=1.0)
    s.stop()
    # a restarted dealer on the same journal still denies it
    journal = Journal(s.journal_path, "collect")
    restarted = Dealer(Collect(5), "tcp://127.0.0.1:*", journal)
    try:
        assert restarted.core.is_denied(victim.key)
        assert victim.key in restarted.gate.denied
    finally:
        restarted.close()


def test_a_closed_dealer_admits_only_the_keys_it_allows(serve, tmp_path):
    allowed = create_key_pair(tmp_path / "keys" / "member")
    s = serve(Collect(3), allow=load_public_keys(tmp_path / "keys"), distinct="key")
    member = s.client(keys=(allowed.public, allowed.secret))
    assert isinstance(member.ask(p.Bored(1, "m", HOST, 1)), p.Jobs)
    outsider = s.client()
    outsider.send(p.Bored(1, "o", HOST, 1))
    with pytest.raises(AssertionError, match="no reply"):
        outsider.recv(timeout_s=1.0)


def test_status_and_retry_later_say_why_jobs_wait(serve):
    task = Collect(3, redundancy=2)
    s = serve(task)
    a = s.client(source="127.0.0.20")
    assert len(a.ask(p.Bored(1, "a", HOST, 3)).jobs) == 3
    busy = a.ask(p.Bored(2, "a", HOST, 3))
    assert isinstance(busy, p.RetryLater) and busy.reason
    tiny = s.client(source="127.0.0.21")
    small = tiny.ask(p.Bored(1, "tiny", p.HostFacts(1, 4, 1), 1))
    assert isinstance(small, p.RetryLater)
    assert small.reason == "jobs need 16 MiB each; you offer 4"
    waiting = s.status()["waiting"]
    # the tiny machine cannot take these jobs: it is not counted as present for them
    assert "3 jobs need a replica on another machine; 1 machine active" in waiting
    assert "jobs need 16 MiB each; 1 jobber offers at most 4" in waiting
    # the same jobber back with enough memory is too small no more
    tiny.ask(p.Bored(2, "tiny", HOST, 1))
    assert not [w for w in s.status()["waiting"] if "MiB each" in w]


def test_a_dealer_sends_no_job_to_a_machine_whose_owner_allows_less(serve):
    s = serve(Collect(3))  # jobs of up to 5 s, 16 MiB, 10^6 fuel, 1 KiB of output
    c = s.client()
    short = p.HostFacts(cpus=2, memory_mb=1024, slots=2, max_time_s=1.0)
    reply = c.ask(p.Bored(1, "c", short, 2))
    assert isinstance(reply, p.RetryLater)
    assert reply.reason == "jobs here need 5 s of time (this machine allows 1)"
    frugal = p.HostFacts(cpus=2, memory_mb=1024, slots=2, max_fuel=10, max_output_kb=1)
    assert "1000000 fuel (this machine allows 10)" in c.ask(p.Bored(2, "c", frugal, 2)).reason
    roomy = p.HostFacts(2, 1024, 2, max_time_s=5.0, max_fuel=10**6, max_output_kb=1)
    assert len(c.ask(p.Bored(3, "c", roomy, 2)).jobs) == 2


# --- signed payloads (the dealer's side; the jobber's --trust is tested with the jobber) ----


def test_a_dealer_without_a_key_signs_nothing(serve):
    s = serve(Collect(2))
    jobs = s.client().ask(p.Bored(1, "c", HOST, 1))
    assert isinstance(jobs, p.Jobs) and jobs.jobs and jobs.signatures is None
    assert s.status()["signer"] is None


def test_a_dealer_signs_its_payload_once_at_start(serve, tmp_path, monkeypatch):
    author = create_author_key(tmp_path / "author")
    signs = []
    real = AuthorKey.sign_payload
    monkeypatch.setattr(
        AuthorKey, "sign_payload", lambda self, sha: signs.append(sha) or real(self, sha)
    )
    task = Collect(3)
    s = serve(task, signer=load_author_key(tmp_path / "author"))
    assert signs == [task.payload.sha256]
    for rid, source in enumerate(("127.0.0.31", "127.0.0.32", "127.0.0.33"), 1):
        reply = s.client(source=source).ask(p.Bored(rid, "c", HOST, 1))
        assert p.verify_payload(
            task.payload.sha256, reply.signatures[task.payload.sha256], {author.public}
        ).accepted
    assert len(signs) == 1


def test_a_dealer_whose_key_chain_is_broken_refuses_to_start(tmp_path):
    a = create_author_key(tmp_path / "a")
    b = create_author_key(tmp_path / "b")
    stranger = create_author_key(tmp_path / "s")
    broken = AuthorKey(b.signing, (sign_rotation(stranger.signing, a.public),))  # ends at a, not b
    with pytest.raises(
        ValueError, match=r"the payload's own signature is refused: .*not at the signer"
    ):
        Dealer(
            Collect(1),
            "tcp://127.0.0.1:*",
            Journal(tmp_path / "j.sqlite", "collect"),
            signer=broken,
        )
    # and one on disk stops the task's command line with the file named
    (tmp_path / "b.rotations").write_text("nonsense\n")
    argv = [str(ROOT / "tests" / "task_files" / "flaky.py"), "--sign", str(tmp_path / "b")]
    argv += ["--bind", "tcp://127.0.0.1:*", "--quiet", "--db", str(tmp_path / "d.sqlite")]
    done = subprocess.run([PY, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "b.rotations: link 1 is not 'OLD NEW SIGNATURE'" in done.stderr
