"""End to end, with failures: killed jobbers, a killed dealer, a dishonest jobber.

Each test runs a real dealer process (examples/factoring.py) and real jobber
processes on loopback, breaks something, and checks that the printed
factorization is still right and that every job was accepted exactly once.
"""

from __future__ import annotations

import json
import re
import signal

import sandbox
from dealer._history import read_history
from tests.helpers import (
    CHUNK,
    JOBS,
    LINE,
    PY,
    ROOT,
    N,
    by_name,
    free_port,
    jobber_status,
    summary,
    wait_for,
    wait_status,
)


def test_jobber_killed_mid_job_is_replaced(procs, factor_wasm):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.dealer(
        "dealer", "factoring.py", str(N), "--chunk", CHUNK, "--deadline", "3", port=port
    )
    victim = procs.jobber("victim", addr, extra=("-v",))
    victim.wait_for(r"jobs from", 30)
    victim.kill()
    survivor = procs.jobber("survivor", addr, extra=("--max-idle", "5"))
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
    rows = summary(dealer.stderr)
    assert sum(r[0] for r in rows.values()) == JOBS  # each job accepted once
    assert survivor.wait(60) == 0


def test_dealer_killed_and_restarted_resumes_with_spooled_results(procs, factor_wasm, tmp_path):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    db = tmp_path / "journal.sqlite"
    first = procs.dealer("first", "factoring.py", str(N), "--chunk", CHUNK, port=port, db=db)
    jobbers = [procs.jobber(f"j{i}", addr, extra=("--max-idle", "30")) for i in (1, 2)]
    wait_status(port, lambda s: s["accepted"] >= 3)
    first.signal(signal.SIGKILL)
    first.popen.wait()
    # the jobbers finish what they hold and keep the results in their spools
    wait_for(
        lambda: any(jobber_status(tmp_path / f"data-j{i}")["spooled"] for i in (1, 2)),
        30,
        "a result spooled while the dealer was down",
        0.1,
    )
    second = procs.dealer("second", "factoring.py", str(N), "--chunk", CHUNK, port=port, db=db)
    assert second.wait(120) == 0, second.stderr
    assert second.stdout.strip() == LINE
    rows = summary(second.stderr)
    assert sum(r[0] for r in rows.values()) == JOBS  # none lost, none accepted twice
    for j in jobbers:  # idle now: a polite stop ends them at once
        j.signal(signal.SIGTERM)
        assert j.wait(30) == 0
    # the same command on the finished journal replays it and prints the same answer
    third = procs.dealer("third", "factoring.py", str(N), "--chunk", CHUNK, port=port, db=db)
    assert third.wait(60) == 0 and third.stdout.strip() == LINE


def test_changed_task_on_an_old_journal_is_refused(procs, factor_wasm, tmp_path):
    port = free_port()
    db = tmp_path / "journal.sqlite"
    first = procs.dealer(
        "first", "factoring.py", "1000036000099", "--chunk", "50000", port=port, db=db
    )
    wait_status(port, lambda s: s["drawn"] >= 1)
    first.kill()
    other = procs.dealer(
        "other",
        "factoring.py",
        "1000036000099",
        "--chunk",
        "70000",
        port=port,
        db=db,
        listening=False,
    )
    assert other.wait(60) == 2
    assert "differs from the journal" in other.stderr
    afresh = "to start the batch afresh, pass another --db, or --fresh to move this journal aside"
    assert f"{db}: {afresh}" in other.stderr


def test_dishonest_jobber_is_outvoted(procs, factor_wasm):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.dealer(
        "dealer", "factoring.py", str(N), "--chunk", CHUNK, "--redundancy", "2", port=port
    )
    liar = procs.start(
        "liar",
        [PY, ROOT / "tests" / "wrong_jobber.py", addr, "--name", "liar", "--max-idle", "5"]
        # it claims the honest jobbers' platform, or its replicas would never be compared
        + ["--platform", sandbox.PLATFORM],
    )
    wait_status(port, lambda s: "liar" in by_name(s))  # it gets in first
    honest = [procs.jobber(f"h{i}", addr, extra=("--max-idle", "5")) for i in (1, 2)]
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
    rows = summary(dealer.stderr)
    assert rows["liar"][0] == 0 and rows["liar"][1] >= 1 and rows["liar"][3] == 0
    assert rows["h1"][0] + rows["h2"][0] == 2 * JOBS  # every job: two honest votes
    for j in honest:
        assert j.wait(60) == 0
    assert liar.wait(60) == 0


def test_dealer_status_command(procs, factor_wasm):
    port = free_port()
    dealer = procs.dealer("dealer", "factoring.py", str(N), "--chunk", CHUNK, port=port)
    wait_status(port, lambda s: s["accepted"] == 0)
    out = procs.start("status", [PY, "-m", "dealer", "status", f"127.0.0.1:{port}", "--json"])
    assert out.wait(30) == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["task"] == "Factoring" and info["total"] == JOBS and info["accepted"] == 0
    text = procs.start("status-text", [PY, "-m", "dealer", "status", f"127.0.0.1:{port}"])
    assert text.wait(30) == 0
    assert re.search(
        rf"task Factoring: 0 accepted, 0 failed, \d in flight, \d drawn of {JOBS}", text.stdout
    ), text.stdout
    dealer.kill()
    gone = procs.start(
        "gone", [PY, "-m", "dealer", "status", f"127.0.0.1:{port}", "--timeout", "0.5"]
    )
    assert gone.wait(30) == 1 and "no answer" in gone.stderr


def test_a_job_that_always_fails_ends_the_batch_listed(procs):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.start(
        "dealer",
        [
            PY,
            ROOT / "tests" / "task_files" / "flaky.py",
            "--bind",
            f"tcp://127.0.0.1:{port}",
            "--quiet",
            "--db",
            procs.cwd / "flaky.sqlite",
        ],
    )
    dealer.wait_for("listening on", 120)  # before the jobbers' --max-idle runs out
    jobbers = [procs.jobber(f"j{i}", addr, extra=("--max-idle", "4")) for i in (1, 2)]
    assert dealer.wait(60) == 1, dealer.stderr  # finished, with a failure
    assert dealer.stdout.strip() == "2 done, 1 failed"
    # a trap is the same on every machine: one machine's (the quorum is 1) settles it
    assert re.search(
        r"failed job boom: the same failure on 1 machine: trap: .*unreachable", dealer.stderr
    ), dealer.stderr
    _, history = read_history(procs.cwd / "flaky.sqlite")
    [boom] = [j for j in history.jobs.values() if j.args == ("boom",)]
    # tried once, not max_errors + 1 times: one replica, or two if the tail's backup went
    # to the other jobber while the first was out (a busy machine; the backup is then
    # cancelled or agrees); none of them is a machine's fault
    assert boom.own and len(boom.replicas) <= 2
    assert [r.fault for r in boom.replicas].count("job") >= 1
    assert not [r for r in boom.replicas if r.fault == "machine"], boom.replicas
    rows = summary(dealer.stderr)
    assert sum(r[2] for r in rows.values()) == 0  # the job's own bug: no jobber's error
    for j in jobbers:  # a jobber that came too late for this short batch says so
        assert j.wait(60) == 0 or "never reached any dealer" in j.stderr


def test_a_job_that_exits_3_on_every_machine_is_its_own_bug_not_the_jobbers(procs):
    """Redundancy and quorum 2: both machines get exit code 3 for every buggy job. The
    jobs fail by their own bug, shown so in the status while the batch runs, and neither
    jobber is counted an error for them, then or in the dealer's closing table."""
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.start(
        "dealer",
        [
            PY,
            ROOT / "tests" / "task_files" / "exits3.py",
            "--bind",
            f"tcp://127.0.0.1:{port}",
            "--quiet",
            "--db",
            procs.cwd / "exits3.sqlite",
        ],
    )
    dealer.wait_for("listening on", 120)
    for i in (1, 2):
        procs.jobber(f"j{i}", addr, slots=2, extra=("--max-idle", "5"))
    # the buggy jobs are done long before the spinning one
    info = wait_status(port, lambda s: s["failed"] == 4, 120)
    assert info["failed_own"] == 4 and info["accepted"] <= 1
    rows = by_name(info)
    assert {n: (r["errors"], r["denied"]) for n, r in rows.items()} == {
        "j1": (0, False),
        "j2": (0, False),
    }
    assert dealer.wait(120) == 1, dealer.stderr  # finished, with failures
    assert dealer.stdout.strip() == "2 done, 4 failed"
    failed = re.findall(r"failed job bug: (.*)", dealer.stderr)
    assert len(failed) == 4, dealer.stderr
    own = r"the same failure on 2 machines: exit: exit code 3 \(fuel \d+\)"
    assert all(re.fullmatch(own, reason) for reason in failed), failed
    rows = summary(dealer.stderr)
    assert {n: r[2] for n, r in rows.items()} == {"j1": 0, "j2": 0}  # no errors
    assert {n: r[0] for n, r in rows.items()} == {"j1": 2, "j2": 2}  # both ran the good ones
