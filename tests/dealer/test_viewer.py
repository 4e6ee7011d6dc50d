"""The dashboard from a journal alone (dealer._viewer, `python -m dealer dashboard`): real
journals written by a real Service (no sockets) as two jobbers run a small batch with a
clock of the test's own, read back as the page's snapshot; failures grouped by reason
(dealer._figures); the viewer following a journal a dealer writes; the command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import urllib.request

import pytest

import protocol as p
from dealer import _viewer
from dealer._figures import EXAMPLES, MAX_GROUPS, FailureGroups, reason_group
from dealer._history import read_history
from dealer._journal import Journal
from dealer._service import Peer, Service
from net._keys import create_key_pair
from tasks import Job, Limits, Payload, Task
from tests.helpers import PY, ROOT, wait_for

WAT = '(module (memory (export "memory") 1) (func (export "_start")))'
JOBS = 10
A, B = Peer("aa" * 32, "127.0.0.2"), Peer("bb" * 32, "127.0.0.3")
NAMES = {A: "alpha", B: "beta"}
RUN_S = {A: 2.0, B: 4.0}  # each jobber's time out per replica
START = 100.0
OK_FUEL = 5_000_000


class Mixed(Task):
    """Ten jobs; those numbered 1 modulo 3 fail by their own bug (the test's jobbers
    answer them with exit code 3, a fuel of 1000 + the number)."""

    limits = Limits(fuel=10**9, memory_mb=1, time_s=5, output_kb=1)

    def __init__(self) -> None:
        super().__init__()
        self.payload = Payload.from_wat(WAT, "mixed")
        self.ok = 0

    def jobs(self):
        return [Job((str(i),)) for i in range(JOBS)]

    def total(self) -> int:
        return JOBS

    def on_output(self, job, output):
        self.ok += 1

    def summary(self) -> str:
        return f"{self.ok} jobs done so far"


def answer(spec: p.JobSpec, fail: bool = True) -> p.Result:
    i = int(spec.args[-1])
    if fail and i % 3 == 1:
        return p.Result(spec.tag, p.Status.EXIT, b"", 1000 + i, "exit code 3")
    return p.Result(spec.tag, p.Status.OK, b"ok", OK_FUEL)


def rounds(s: Service, n: int, t: float = START) -> float:
    """`n` rounds at `t`: each jobber asks for one job, A answers 2 s later, B 4 s later;
    the next round starts when B has answered. Returns the time after the last."""
    for _ in range(n):
        got = {}
        for peer in (A, B):
            jobs = s.handle(p.Bored(1, NAMES[peer], p.HostFacts(1, 1024, 1), 1), t, peer)
            s.commit()
            assert isinstance(jobs, p.Jobs) and len(jobs.jobs) == 1, jobs
            got[peer] = jobs
        for peer in (A, B):
            back = t + RUN_S[peer]
            results = tuple(answer(j) for j in got[peer].jobs)
            ack = s.handle(p.Results(2, NAMES[peer], results), back, peer)
            s.commit()
            s.after_turn(back)
            assert isinstance(ack, p.Ack) and len(ack.tags) == 1, ack
        t += RUN_S[B]
    return t


def batch(path, n: int = JOBS // 2, address: str | None = "tcp://dealer.example:7117#" + "cd" * 32):
    """A Service on the journal at `path`, `n` rounds run (all five: the batch is done)."""
    s = Service(Mixed(), Journal(path, f"{__name__}.Mixed"), now=START)
    if address:
        s.note(address=address)
    rounds(s, n)
    return s


def snapshot(path, now: float = 1000.0) -> dict:
    meta, h = read_history(path)
    return _viewer.snapshot_of(path, meta, h, now, _viewer.dealer_key(path))


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url + "status.json", timeout=10) as r:
        return json.loads(r.read())


def test_alike_failures_share_a_group_whatever_their_numbers_and_who_ran_them():
    own = "the same failure on 1 machine: exit: exit code 3 (fuel {})"
    assert reason_group([own.format(491542)]) == reason_group([own.format(7)])
    assert (
        reason_group([own.format(1)]) == "the same failure on N machine: exit: exit code N (fuel N)"
    )
    trap = "the same failure on 2 machines: trap: wasm trap at 0x1f3 in function #{} (fuel 9)"
    assert reason_group([trap.format(3)]) == reason_group([trap.format(17)])
    assert reason_group([trap.format(3)]) != reason_group([own.format(3)])
    # too many errors: the replicas' tags and jobbers vary, their errors are said once each
    one = [
        "more than 3 errors",
        f"0a1b2c3d.1f on {'ab' * 32}: crash: oops",
        "0a1b2c3d.20 on x: time",
    ]
    two = ["more than 3 errors", "ffee0011.3 on y: time", f"ffee0011.4 on {'cd' * 32}: crash: oops"]
    assert reason_group(one) == reason_group(two) == "more than N errors; crash: oops; time"
    refused = "job {} (args {}) can never be sent: its args are 9 bytes over the cap; see x"
    assert reason_group([refused.format(3, "a b")]) == reason_group([refused.format(40, "c (d)")])
    assert reason_group(["x" * 1000]).endswith("…") and len(reason_group(["x" * 1000])) == 300

    g = FailureGroups()
    for job in range(5):
        g.add(job, [str(job)], [own.format(job * 1000)], own=True)
    g.add(9, None, ["on_output raised ValueError: no"])
    rows = g.rows()
    assert [(r["count"], r["own"]) for r in rows] == [(5, True), (1, False)]
    assert [e["job"] for e in rows[0]["examples"]] == list(range(EXAMPLES))
    assert rows[0]["examples"][1] == {"job": 1, "args": ["1"], "reasons": [own.format(1000)]}
    for i in range(MAX_GROUPS + 5):  # distinct reasons past the cap are only counted
        g.add(100 + i, [], [f"reason {'x' * i}"])
    assert len(g.rows()) == MAX_GROUPS and g.ungrouped == 7 and g.total == 6 + MAX_GROUPS + 5


def test_a_finished_batch_read_back_from_its_journal(tmp_path):
    path = tmp_path / "mixed.sqlite"
    s = batch(path)
    assert s.done
    live_a, live_all, live_groups = s.times.of(A.key), s.times.overall(), s.failure_groups.rows()
    s.close()  # notes the task's summary line in the journal as it stops
    snap = snapshot(path)
    assert snap["source"] == "journal" and snap["state"] == "finished" and snap["finished"]
    assert snap["title"] == "Mixed" and snap["journal"] == str(path.absolute())
    assert (snap["total"], snap["drawn"], snap["accepted"], snap["failed"]) == (10, 10, 7, 3)
    assert snap["failed_own"] == 3 and snap["settled"] == 10 and snap["in_flight"] == 0
    assert snap["address"] == "tcp://dealer.example:7117#" + "cd" * 32 and snap["key"] == "cd" * 32
    assert snap["summary"] == "7 jobs done so far"
    # from the first job sent (100) to the last result (B's, at 120), not to now
    assert snap["started_at"] == START and snap["ended_at"] == START + 20
    assert snap["elapsed_s"] == 20 and snap["eta_s"] is None
    assert snap["rate_over"] == "whole run" and snap["rate"] == pytest.approx(10 / 20)
    assert snap["times"] == {"results": 10, "median_s": 3.0, "mean_s": 3.0}
    rows = {r["key"]: r for r in snap["jobbers"]}
    a, b = rows[A.key], rows[B.key]
    assert (a["results"], a["median_s"], a["mean_s"]) == (5, 2.0, 2.0)
    assert (b["results"], b["median_s"], b["mean_s"]) == (5, 4.0, 4.0)
    assert a["rate_per_min"] == pytest.approx(5 / 18 * 60)  # sent at 100, last back at 118
    assert b["rate_per_min"] == pytest.approx(5 / 20 * 60)
    assert a["holding"] == b["holding"] == 0
    assert (a["machine"], a["last_seen"], a["name"]) == ("127.0.0.2", 118.0, "-")
    assert (a["credit"], a["credit_text"]) == (4 * OK_FUEL, "20.0 M fuel")
    assert (b["credit_text"], snap["credit_text"]) == ("15.0 M fuel", "35.0 M fuel")
    # the three failures (jobs 1, 4, 7, with fuels 1001, 1004, 1007) are one group
    [group] = snap["failure_groups"]
    assert group["count"] == 3 and group["own"] and snap["failures_total"] == 3
    assert group["reason"] == "the same failure on N machine: exit: exit code N (fuel N)"
    assert group["shown"] == "; ".join(group["examples"][0]["reasons"])
    assert "fuel 1001" in group["shown"]
    assert [(e["job"], e["args"]) for e in group["examples"]] == [
        (1, ["1"]),
        (4, ["4"]),
        (7, ["7"]),
    ]
    # jobs settled over time: one point per result, from the start
    assert snap["history"] == [[START, 0]] + [[START + 2 * k, k] for k in range(1, 11)]
    # the live service's figures are the journal's
    assert live_a == {k: a[k] for k in live_a}
    assert live_all == snap["times"] and live_groups == snap["failure_groups"]
    assert json.loads(json.dumps(snap)) == snap  # what /status.json serves


def test_a_stopped_batch_ends_at_its_last_record_and_a_restart_replays_the_figures(tmp_path):
    path = tmp_path / "mixed.sqlite"
    batch(path, 2).close()  # 4 of 10 jobs, then stopped
    snap = snapshot(path, now=5000.0)
    assert snap["state"] == "stopped" and not snap["finished"]
    assert snap["ended_at"] == START + 8 and snap["elapsed_s"] == 8  # not to now
    assert snap["settled"] == 4 and snap["total"] == 10 and snap["rate_over"] == "whole run"
    assert snap["eta_s"] == pytest.approx(6 / (4 / 8))
    assert snap["summary"] == "3 jobs done so far"  # as the dealer stopped
    s = Service(Mixed(), Journal(path, f"{__name__}.Mixed"), now=9000.0)  # a restart: a replay
    try:
        rows = {r["key"]: r for r in snap["jobbers"]}
        for peer in (A, B):
            assert s.times.of(peer.key) == {k: rows[peer.key][k] for k in s.times.of(peer.key)}
        assert s.times.started_at == snap["started_at"] == START
        assert s.times.overall() == snap["times"]
        assert s.failure_groups.rows() == snap["failure_groups"] != []
    finally:
        s.close()


def test_a_batch_whose_failed_jobs_were_retried_counts_each_job_once(tmp_path):
    path = tmp_path / "mixed.sqlite"
    batch(path).close()  # jobs 1, 4 and 7 failed
    s = Service(Mixed(), Journal(path, f"{__name__}.Mixed"), now=200.0, retry=[])
    t = 200.0
    while not s.done:  # A alone runs the three again, and they succeed now
        jobs = s.handle(p.Bored(1, "alpha", p.HostFacts(1, 1024, 1), 1), t, A)
        s.commit()
        t += 2
        s.handle(p.Results(2, "alpha", tuple(answer(j, fail=False) for j in jobs.jobs)), t, A)
        s.commit()
        s.after_turn(t)
    assert t == 206.0 and s.failure_groups.rows() == []  # the failures were superseded
    s.close()
    snap = snapshot(path)
    assert snap["state"] == "finished" and (snap["accepted"], snap["failed"]) == (10, 0)
    assert snap["failure_groups"] == [] and snap["failures_total"] == 0
    # the chart steps back as the three are put back, and up as they settle again
    assert snap["history"][-7:] == [
        [120.0, 10],
        [200.0, 9],
        [200.0, 8],
        [200.0, 7],
        [202.0, 8],
        [204.0, 9],
        [206.0, 10],
    ]
    assert snap["elapsed_s"] == 106.0 and snap["settled"] == 10


def test_a_journal_that_does_not_say_its_address_shows_the_key_beside_it(tmp_path):
    path = tmp_path / "old.sqlite"
    batch(path, 1, address=None).close()
    meta = read_history(path)[0]
    meta.pop("total"), meta.pop("summary")  # as a journal from before those notes
    snap = _viewer.snapshot_of(path, meta, read_history(path)[1], 1000.0, None)
    assert (snap["address"], snap["key"], snap["total"], snap["summary"]) == ("", "", None, None)
    assert snapshot(path)["key"] == ""  # no key file beside it: not known
    pair = create_key_pair(tmp_path / "old.dealer")  # the batch's own (dealer._batch.batch_key)
    assert snapshot(path)["key"] == pair.public_hex and snapshot(path)["address"] == ""


def test_the_viewer_follows_a_journal_a_dealer_writes(tmp_path):
    path = tmp_path / "mixed.sqlite"
    s = batch(path, 1)  # open: a dealer runs on it
    viewer = _viewer.Viewer(path, "127.0.0.1", 0)
    runner = threading.Thread(target=viewer.run, daemon=True)
    try:
        snap = get_json(viewer.url)
        assert snap["state"] == "open" and snap["settled"] == 2 and snap["ended_at"] is None
        assert snap["rate_over"] == "last minute" and snap["summary"] is None
        assert not viewer.refresh()  # nothing changed: not read again
        rounds(s, 1, START + 4)
        assert viewer.refresh() and get_json(viewer.url)["settled"] == 4
        runner.start()  # now on its own, every second
        rounds(s, 1, START + 8)
        wait_for(lambda: get_json(viewer.url)["settled"] == 6, 30, "the viewer reads it again")
        s.close()
        s = None
        wait_for(lambda: get_json(viewer.url)["state"] == "stopped", 30, "it sees the dealer stop")
    finally:
        viewer.stop()
        if runner.is_alive():
            runner.join(10)
        viewer.close()
        if s is not None:
            s.close()
    assert not runner.is_alive()
    with pytest.raises(OSError):
        get_json(viewer.url)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_dashboard_command_serves_a_journal_until_a_signal(tmp_path, sig):
    path = tmp_path / "mixed.sqlite"
    batch(path).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [PY, "-m", "dealer", "dashboard", str(path)]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, **pipes)
    try:
        line = proc.stdout.readline()
        assert line.startswith("dashboard on http://127.0.0.1:") and str(path) in line, line
        url = line.split()[2]
        snap = get_json(url)
        assert snap["state"] == "finished" and snap["accepted"] == 7
        with urllib.request.urlopen(url + "?still", timeout=10) as r:
            assert b"<title>Mixed - borednet</title>" in r.read()
        proc.send_signal(sig)
        assert proc.wait(30) == 0
        assert proc.stderr.read() == ""  # stopped cleanly: no traceback, nothing to say
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    missing = subprocess.run(
        [*cmd[:4], str(tmp_path / "none.sqlite")], env=env, capture_output=True, text=True
    )
    assert missing.returncode == 1 and "no such journal" in missing.stderr
