"""Rerun what failed: a batch whose payload had a bug, fixed and rerun with
--retry-failed, runs only its failed jobs again, keeps every accepted result, and is
a finished batch like any other afterwards. Real dealers, real jobbers, real wasm."""

from __future__ import annotations

import json
import subprocess

from dealer._journal import RETRY_HINT
from tests.helpers import PY, ROOT

DIGITS = ROOT / "tests" / "task_files" / "digits.py"
N = 20  # digits 0..9 twice: 5..9 fail under the buggy kernel


def jobs_of(procs) -> dict[int, dict]:
    out = subprocess.run(
        [PY, "-m", "dealer", "jobs", "d.sqlite", "--json"],
        cwd=procs.cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {j["job"]: j for j in json.loads(out.stdout)["jobs"]}


def test_a_fixed_payload_reruns_only_the_failed_jobs_and_keeps_the_accepted(procs):
    argv = [PY, DIGITS, N, "--bind", "tcp://127.0.0.1:*", "--db", "d.sqlite", "--quiet"]
    first = procs.start("first", [*argv, "--jobbers", "1"])
    assert first.wait(300) == 1, first.stderr  # some jobs failed
    assert first.stdout == "sum 20 of 10 outputs, 10 jobs failed\n", first.stderr
    before = jobs_of(procs)
    assert sorted(i for i, j in before.items() if j["state"] == "failed") == [
        i for i in range(N) if i % 10 >= 5
    ]

    procs.env["DIGITS_KERNEL"] = "fixed"  # the researcher fixes the payload
    refused = procs.start("refused", argv)
    assert refused.wait(120) == 2, refused.stderr
    assert "the payload changed" in refused.stderr and RETRY_HINT in refused.stderr

    again = procs.start("again", [*argv, "--retry-failed", "--jobbers", "1"])
    assert again.wait(300) == 0, again.stderr
    assert again.stdout == "sum 90 of 20 outputs, 0 jobs failed\n", again.stderr
    after = jobs_of(procs)
    for i, j in after.items():
        assert j["state"] == "accepted", j
        if before[i]["state"] == "accepted":  # kept: not run again
            assert j["retries"] == 0 and j["replicas"] == before[i]["replicas"], i
        else:  # the failed try stays in the history, superseded
            assert j["retries"] == 1, j
            tries = [(r["status"], r["superseded"]) for r in j["replicas"]]
            assert tries == [("exit", True), ("ok", False)], (i, tries)
            assert j["output_text"] == str(i % 10)

    # the finished batch resumes like any other: the same answer, nothing run
    done = procs.start("done", argv)
    assert done.wait(120) == 0, done.stderr
    assert done.stdout == again.stdout
    assert jobs_of(procs) == after


def test_retry_picks_the_jobs_asked_for(procs):
    argv = [PY, DIGITS, 10, "--bind", "tcp://127.0.0.1:*", "--db", "d.sqlite", "--quiet"]
    first = procs.start("first", [*argv, "--jobbers", "1"])
    assert first.wait(300) == 1, first.stderr  # some jobs failed
    procs.env["DIGITS_KERNEL"] = "fixed"
    some = procs.start("some", [*argv, "--retry", "6", "--retry", "8", "--jobbers", "1"])
    assert some.wait(300) == 1, some.stderr  # 5, 7 and 9 still failed
    assert some.stdout == "sum 24 of 7 outputs, 3 jobs failed\n", some.stderr
    states = {i: j["state"] for i, j in jobs_of(procs).items()}
    assert [i for i, s in states.items() if s == "failed"] == [5, 7, 9]
    fresh = procs.start("fresh", [*argv, "--fresh", "--retry-failed"])
    assert fresh.wait(60) == 2
    assert "--fresh starts the batch over: it has no failed jobs to retry" in fresh.stderr
