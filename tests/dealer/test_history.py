"""dealer._history: a journal's records, made by a real Core, replayed without the task
into results and per-job history; and the queries of the core and the service only read."""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest

from dealer import _history as hist
from dealer._core import Accepted, Core, Drawn, Failed, Policy, Returned, Sent
from dealer._journal import Journal
from dealer._service import Service
from protocol import Status
from tasks import Job
from tests.helpers import Few

OK = Status.OK


def core_of(jobs: list[Job], **policy) -> Core:
    policy.setdefault("deadline_s", 100.0)
    policy.setdefault("lease_s", 1e6)
    policy.setdefault("backups", 0)
    return Core(jobs, Policy(**policy), "t")


def replay(records, **policy) -> hist.History:
    policy.setdefault("deadline_s", 100.0)
    return hist.History.of(Policy(**policy), "t", records)


def test_a_vote_with_a_liar_is_replayed_with_who_won_and_when():
    jobs = [Job(("a", "b c")), Job(("2",), b"stdin bytes"), Job(("3",))]
    core = core_of(jobs, redundancy=2, quorum=2)
    records = []
    x = core.bored("honest1", 3, 1000, 10.0, machine="m1")
    y = core.bored("honest2", 3, 1000, 11.0, machine="m2")
    z = core.bored("liar", 1, 1000, 12.0, machine="m3")
    assert [a.job_id for a in x] == [0, 1, 2] and [a.job_id for a in y] == [0, 1, 2]
    assert z == []  # every job has its two replicas out
    core.result("honest1", x[0].tag, OK, b"right\n", 5, "", 20.0)
    core.result("honest2", y[0].tag, Status.TRAP, b"", 3, "unreachable", 21.0)
    records += core.take_records()
    [w] = core.bored("liar", 1, 1000, 22.0, machine="m3")  # job 0 needs another replica
    assert w.job_id == 0
    core.result("liar", w.tag, OK, b"wrong\n", 5, "", 23.0)
    [v] = core.bored("honest3", 1, 1000, 24.0, machine="m4")
    core.result("honest3", v.tag, OK, b"right\n", 5, "", 30.5)
    core.result("honest1", x[1].tag, OK, b"\x00\xff", 9, "", 31.0)
    core.result("honest2", y[1].tag, OK, b"\x00\xff", 9, "", 32.0)
    records += core.take_records()
    live = core.take_settled()
    assert [type(s) for s in live] == [Accepted, Accepted]

    h = replay(records, redundancy=2, quorum=2)
    # the core's own voting, replayed: the same outcomes the live core handed out
    assert [(j.job_id, j.state, j.output) for j in h.select(("accepted",))] == [
        (s.job_id, "accepted", s.output) for s in live
    ]
    assert h.counts() == {"drawn": 3, "accepted": 2, "failed": 0, "unsettled": 1}
    j0 = h.jobs[0]
    assert j0.args == ("a", "b c") and j0.stdin_size == 0 and j0.stdin_sha256 is None
    assert h.jobs[1].stdin_size == len(b"stdin bytes") and len(h.jobs[1].stdin_sha256) == 16
    rows = h.replica_rows(j0)
    assert [(r["jobber"], r["machine"], r["state"], r["vote"]) for r in rows] == [
        ("honest1", "m1", "ok", "won"),
        ("honest2", "m2", "error", None),
        ("liar", "m3", "ok", "lost"),
        ("honest3", "m4", "ok", "won"),
    ]
    assert [(r["sent_at"], r["returned_at"]) for r in rows] == [
        (10.0, 20.0),
        (11.0, 21.0),
        (22.0, 23.0),
        (24.0, 30.5),
    ]
    assert rows[1]["status"] == "trap" and rows[1]["detail"] == "trap: unreachable"
    assert rows[0]["fuel"] == 5 and rows[0]["deadline"] == 110.0
    assert rows[0]["output_sha256"] == rows[3]["output_sha256"] != rows[2]["output_sha256"]
    # the unsettled job: its replicas are out
    [j2] = h.select(("unsettled",))
    assert j2.job_id == 2 and [r["state"] for r in h.replica_rows(j2)] == ["out", "out"]
    assert [r["returned_at"] for r in h.replica_rows(j2)] == [None, None]

    text = hist.jobs_text(h)
    assert "job 0  accepted  args a 'b c'" in text
    assert "job 1  accepted  args 2  stdin 11 bytes" in text
    assert "0001ff" not in text and "00ff (binary, 2 bytes, in hex)" in text
    assert text.splitlines()[-1] == "3 jobs drawn: 2 accepted, 0 failed, 1 unsettled"
    [liar] = [line.split() for line in text.splitlines() if " liar " in line]
    assert liar[:6] == [w.tag, "liar", "m3", "ok", "ok", "5"] and liar[-2:] == ["1.0s", "lost"]
    [late] = [line.split() for line in text.splitlines() if " honest3 " in line]
    assert late[-2:] == ["6.5s", "won"]  # sent at 24.0, back at 30.5


def test_failures_replay_with_their_reasons():
    core = core_of([Job(("0",)), Job(("1",))], max_errors=1, redundancy=2, quorum=2)
    a = core.bored("a", 2, 1000, 0.0, machine="ma")
    b = core.bored("b", 2, 1000, 0.0, machine="mb")
    # job 0: two machines agree on a deterministic failure: it fails at once
    core.result("a", a[0].tag, Status.TRAP, b"", 4, "boom", 1.0)
    core.result("b", b[0].tag, Status.TRAP, b"", 4, "boom", 1.0)
    # job 1: errors past max_errors
    core.result("a", a[1].tag, Status.CRASH, b"", 0, "oops", 1.0)
    core.result("b", b[1].tag, Status.TIME, b"", 0, "slow", 1.0)
    records = core.take_records()
    live = core.take_settled()
    assert all(isinstance(s, Failed) for s in live) and len(live) == 2
    h = replay(records, max_errors=1, redundancy=2, quorum=2)
    assert [(j.state, j.reasons) for j in h.jobs.values()] == [("failed", s.reasons) for s in live]
    assert [r["vote"] for r in h.replica_rows(h.jobs[0])] == ["won", "won"]  # agreed on it
    assert [r["vote"] for r in h.replica_rows(h.jobs[1])] == [None, None]
    out = hist.results_json(h)
    assert out["failed"] == 2 and out["jobs"][1]["reasons"][0] == "more than 1 errors"
    assert out["jobs"][0]["output_base64"] is None
    text = hist.results_text(h)
    assert "the same failure on 2 machines: trap: boom (fuel 4)" in text
    assert "on a: crash: oops" in text and "on b: time: slow" in text


def test_released_gone_and_overdue_replicas_show_as_such():
    core = core_of([Job(("0",))], lease_s=10.0, deadline_s=50.0)
    [x] = core.bored("a", 1, 1000, 0.0)
    core.tick(20.0)  # a is silent past its lease: gone
    [y] = core.bored("b", 1, 1000, 21.0)
    core.bored("b", 0, 1000, 22.0, holding=[])  # b lost it: released
    [z] = core.bored("c", 1, 1000, 23.0)
    core.tick(80.0)  # c's deadline (and a's) passed
    records = core.take_records()
    h = replay(records, lease_s=10.0, deadline_s=50.0)
    rows = h.replica_rows(h.jobs[0])
    assert [r["tag"] for r in rows] == [x.tag, y.tag, z.tag]
    assert [r["state"] for r in rows] == ["overdue", "released", "overdue"]
    assert rows[1]["returned_at"] == 22.0 and rows[1]["detail"].startswith("released: lost")
    assert rows[2]["detail"] == "overdue: no result by the deadline"


def test_records_of_an_older_journal_replay_with_unknowns():
    """Records as the dealer wrote them before Drawn.args, Sent.at and Returned.at."""
    core = core_of([Job(("x",)), Job(("y",))])
    a = core.bored("a", 2, 1000, 5.0)
    core.result("a", a[0].tag, OK, b"out", 1, "", 6.0)
    old = []
    for rec in core.take_records():
        if isinstance(rec, Drawn):
            rec = Drawn(rec.job_id, rec.digest)
        elif isinstance(rec, Sent):
            rec = Sent(rec.tag, rec.job_id, rec.jobber, rec.deadline, rec.machine)
        elif isinstance(rec, Returned):
            rec = Returned(rec.tag, rec.status, rec.output, rec.fuel, rec.detail)
        old.append(rec)
    h = replay(old)
    assert h.jobs[0].args is None and h.jobs[0].output == b"out"
    assert h.replica_rows(h.jobs[0])[0]["sent_at"] is None
    text = hist.jobs_text(h)
    assert "job 0  accepted  args ?" in text
    assert "  -  " in text  # unknown times
    assert "?: args not recorded" in hist.results_text(h)
    assert next(csv.reader(io.StringIO(hist.results_csv(h).splitlines()[1])))[1] == "?"


def test_outputs_render_as_text_when_they_are_text_and_exactly_in_json_and_csv():
    outputs = [b"plain\nlines\n", b"\x00\x01binary", "caf\u00e9 \u2603\n".encode(), b"base64:trap"]
    outputs.append(b"x" * 1000)
    core = core_of([Job((str(i),)) for i in range(len(outputs))], quota=10)
    got = core.bored("a", len(outputs), 1000, 0.0)
    for a, out in zip(got, outputs, strict=True):
        core.result("a", a.tag, OK, out, 1, "", 1.0)
    h = replay(core.take_records())
    doc = json.loads(json.dumps(hist.results_json(h)))
    assert [base64.b64decode(j["output_base64"]) for j in doc["jobs"]] == outputs
    assert [j["output_text"] for j in doc["jobs"]] == [
        "plain\nlines\n",
        None,
        "caf\u00e9 \u2603\n",
        "base64:trap",
        "x" * 1000,
    ]
    rows = list(csv.DictReader(io.StringIO(hist.results_csv(h))))
    assert list(rows[0]) == ["job", "args", "state", "output", "reasons"]

    def back(cell: str) -> bytes:
        if cell.startswith("base64:"):
            return base64.b64decode(cell.removeprefix("base64:"))
        return cell.encode()

    assert [back(r["output"]) for r in rows] == outputs  # exact, even "base64:..." text
    text = hist.results_text(h)
    assert "plain" in text and "\n" + " " * text.splitlines()[1].index("plain") + "lines" in text
    assert "000162696e617279 (binary, 8 bytes, in hex)" in text
    assert "x" * hist.SHOWN_CHARS + "… (1000 bytes in all; --full shows all)" in text
    assert "x" * 1000 in hist.results_text(h, full=True)


def test_policy_of_reads_the_voting_pin():
    p = hist.policy_of("redundancy=3 quorum=2 max_errors=1 max_replicas=9 distinct=subnet")
    assert (p.redundancy, p.quorum, p.max_errors, p.max_replicas) == (3, 2, 1, 9)
    with pytest.raises(ValueError, match="cannot be read"):
        hist.policy_of("redundancy=3")


# --- queries only read ------------------------------------------------------------------


def test_core_finished_draws_nothing_and_refill_does():
    core = core_of([Job(("0",))])
    for _ in range(3):
        assert not core.finished()
    assert core.drawn == 0 and core.take_records() == []
    core.refill()
    assert core.drawn == 1 and [type(r) for r in core.take_records()] == [Drawn]
    core.refill()  # one is unsettled: nothing more
    assert core.take_records() == [] and not core.finished()
    empty = core_of([])
    assert not empty.finished()
    empty.refill()  # finds the generator empty
    assert empty.finished() and empty.take_records() == [] and empty.drawn == 0


def test_service_finished_only_reads_and_an_empty_batch_still_ends(tmp_path):
    empty = Service(Few(0), Journal(tmp_path / "e.sqlite", "Few"), now=1.0, policy=Policy())
    assert empty.finished() and empty.journal.count() == 0
    empty.close()
    service = Service(Few(2), Journal(tmp_path / "f.sqlite", "Few"), now=1.0, policy=Policy())
    assert service.journal.count() == 1  # its first job drawn as it starts, and journaled
    for _ in range(3):
        assert not service.finished()
    assert service.journal.count() == 1 and service.core.drawn == 1
    assert service.core.take_records() == []
    service.close()
