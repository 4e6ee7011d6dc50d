"""Long jobs that survive their machine, with real processes: a dealer serving
tests/task_files/chain.py (a chain of steps whose state the payload saves in
/checkpoint) and real jobbers. A job whose jobber is killed (-9) resumes on another
from the latest state the dealer journaled; a jobber that is suspended and quits
resumes its own job when started again; damaged states are refused, and the job runs
from the beginning. Each time the batch's output is the one the payload prints run
straight through, and the journal (`dealer jobs`) shows the segments.

Every wait is for a condition (a state at the dealer, a line in a log): the jobs run
at idle priority, so a busy machine only makes the waits longer."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

import sandbox
from protocol import Limits
from tests.helpers import PY, ROOT, free_port, jobber_status, wait_for, wait_status

TASK = "../tests/task_files/chain.py"  # relative to examples/
STEPS = 2_000_000  # about ten seconds of work on a current core
WAIT_S = 300.0  # the longest any condition is waited for (a loaded machine)


@pytest.fixture(scope="module")
def straight() -> str:
    """What a chain of STEPS steps prints, run straight through here."""
    from tasks import compile_c

    wasm = compile_c((ROOT / "tests" / "task_files" / "chain.c").read_text())
    lim = Limits(fuel=10**12, memory_mb=16, time_s=300, output_kb=1, checkpoint_kb=1)
    out = sandbox.run(wasm, (str(STEPS), "500"), limits=lim)
    assert out.ok, out.detail
    return out.stdout.decode().strip()


def _jobs(db: Path) -> list[dict]:
    """The journal's replicas of job 0, as `python -m dealer jobs --json` gives them."""
    out = subprocess.run(
        [PY, "-m", "dealer", "jobs", str(db), "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return json.loads(out.stdout)["jobs"][0]["replicas"]


def _states_at_dealer(port: int, n: int) -> dict:
    """Wait until the dealer holds at least `n` states of the running job."""
    info = wait_status(
        port,
        lambda s: any(j["saves"] >= n for j in s.get("long_jobs") or []),
        WAIT_S,
    )
    return info["long_jobs"][0]


def _moving_dealer(procs, port: int, *extra: str):
    """A dealer of one chain whose jobs move only when a jobber's lease (3 s) runs out (no
    backup replicas), its jobbers sending the job's state every second."""
    args = ("--steps", str(STEPS), "--send-every", "1", "--lease", "3", "--backups", "0")
    return procs.dealer("d", TASK, *args, *extra, port=port)


def test_a_job_whose_jobber_is_killed_resumes_on_another_from_its_latest_state(
    procs, tmp_path, straight
):
    port = free_port()
    # no backup replicas: the job moves only when its jobber's lease runs out; states
    # of two chunks (5 MB), through the dealer's frame cap and back by `fetch`
    dealer = _moving_dealer(
        procs, port, "--pad", "5000000", "--every", "100000"
    )  # a state of 5 MB every twentieth of the job
    j1 = procs.jobber("j1", f"127.0.0.1:{port}")
    row = _states_at_dealer(port, 2)
    assert row["run_s"] >= 0 and row["resumed_fuel"] is None  # started from the beginning
    j1.kill()  # SIGKILL: nothing of it says goodbye
    j2 = procs.jobber("j2", f"127.0.0.1:{port}")
    assert dealer.wait(WAIT_S) == 0, dealer.stderr
    assert dealer.stdout.strip() == straight
    first, second = _jobs(tmp_path / "d.sqlite")
    assert first["state"] == "gone" and first["saves"] >= 2
    # the second replica started from the first's latest state, not from the beginning
    assert second["resumed_from"] == first["tag"]
    assert second["resumed_fuel"] == first["saved_fuel"] > 0
    assert second["state"] == "ok" and second["vote"] == "won"
    j2.signal(signal.SIGTERM)
    assert j2.wait(60) == 0, j2.stderr


@pytest.mark.parametrize("how", ["suspended and quit", "killed"])
def test_a_jobber_stopped_resumes_its_own_job_when_started_again(procs, tmp_path, straight, how):
    port = free_port()
    # a lease long enough that the dealer keeps the job for the jobber while it is away
    dealer = procs.dealer(
        "d", TASK, "--steps", str(STEPS), "--send-every", "1", "--lease", "600", port=port
    )
    j1 = procs.jobber("j1", f"127.0.0.1:{port}")
    data = tmp_path / "data-j1"
    _states_at_dealer(port, 1)

    def saved():
        try:
            running = jobber_status(data)["running"]
        except Exception:
            return None
        return next((j for j in running if j["saved_s_ago"] is not None), None)

    wait_for(saved, WAIT_S, "the job's state saved by the jobber")
    if how == "killed":  # a crash, a power cut: nothing of it says goodbye
        j1.kill()
    else:
        cli = [PY, "-m", "jobber", "--data-dir", str(data)]
        subprocess.run([*cli, "suspend"], check=True, capture_output=True, timeout=30)
        wait_for(lambda: jobber_status(data)["suspended"], 60, "the jobs suspended")
        j1.signal(signal.SIGTERM)  # its owner quits it while the job is held still
        assert j1.wait(60) == 0, j1.stderr
        assert "1 jobs stopped with their saved states, to resume" in j1.stderr
    assert len(list((data / "states").glob("*.state"))) == 1
    again = procs.jobber("j1", f"127.0.0.1:{port}", log="j1-again")
    if how != "killed":  # the owner's suspension outlived the quit: the owner lifts it
        again.wait_for("jobs stay suspended, as the owner left them", 60)
        wait_for(lambda: _status_or_none(data), 60, "the jobber answering again")
        cli = [PY, "-m", "jobber", "--data-dir", str(data)]
        subprocess.run([*cli, "resume"], check=True, capture_output=True, timeout=30)
    assert dealer.wait(WAIT_S) == 0, dealer.stderr
    assert "resuming 1 jobs from the states an earlier run saved" in again.stderr
    assert dealer.stdout.strip() == straight
    (only,) = _jobs(tmp_path / "d.sqlite")  # the same replica ran on: none was sent again
    assert only["state"] == "ok" and only["resumed_from"] is None
    again.signal(signal.SIGTERM)
    assert again.wait(60) == 0, again.stderr
    assert not list((data / "states").glob("*.state"))  # gone with its result


def test_damaged_states_are_refused_and_the_job_runs_from_the_beginning(procs, tmp_path, straight):
    port = free_port()
    dealer = _moving_dealer(procs, port)
    j1 = procs.jobber("j1", f"127.0.0.1:{port}")
    _states_at_dealer(port, 1)
    data = tmp_path / "data-j1"
    wait_for(lambda: list((data / "states").glob("*.state")), WAIT_S, "a state on the disk")
    j1.kill()
    # the jobber's own state, torn; the dealer's, overwritten with other bytes
    for path in (data / "states").glob("*.state"):
        path.write_bytes(path.read_bytes()[:-5])
    kept = list((tmp_path / "d.sqlite-checkpoints").iterdir())
    assert kept
    for path in kept:
        path.write_bytes(bytes(len(path.read_bytes())))
    again = procs.jobber("j1", f"127.0.0.1:{port}", log="j1-again")
    assert dealer.wait(WAIT_S) == 0, dealer.stderr
    assert dealer.stdout.strip() == straight
    assert re.search(r"saved state \S+\.state refused \(.*\): removed", again.stderr)
    assert re.search(r"serves no such file; it runs from the beginning", again.stderr)
    replicas = _jobs(tmp_path / "d.sqlite")
    assert replicas[-1]["state"] == "ok" and replicas[-1]["resumed_from"] == replicas[0]["tag"]
    again.signal(signal.SIGTERM)
    assert again.wait(60) == 0, again.stderr


def _status_or_none(data):
    try:
        return jobber_status(data)
    except (ConnectionError, TimeoutError):
        return None
