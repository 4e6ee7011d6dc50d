"""Checkpoints on a real jobber: a dealer serving tests/task_files/chain.py (jobs that
save their state in /checkpoint as they run, Limits.checkpoint_kb) and a real jobber.
Its status shows, for the job it runs, when the job last saved and how much; the
batch's output is the one the payload prints run straight through here."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import sandbox
from protocol import Limits
from tests.helpers import PY, free_port, jobber_status

TASK = "../tests/task_files/chain.py"  # relative to examples/
STEPS = 400_000  # seconds of work on a 2-core machine: long enough to be seen saving


def test_a_jobbers_status_shows_when_its_running_job_last_saved(procs, tmp_path):
    from tasks import compile_c
    from tests.helpers import ROOT

    wasm = compile_c((ROOT / "tests" / "task_files" / "chain.c").read_text())
    lim = Limits(fuel=10**12, memory_mb=16, time_s=300, output_kb=1, checkpoint_kb=1)
    straight = sandbox.run(wasm, (str(STEPS), "500"), limits=lim)
    assert straight.ok
    port = free_port()
    dealer = procs.dealer("d", TASK, "--steps", str(STEPS), port=port)
    jobber = procs.jobber("j1", f"127.0.0.1:{port}", extra=("--max-idle", "30"))
    data = tmp_path / "data-j1"
    deadline = time.monotonic() + 120
    seen = None
    while seen is None:  # a condition, polled: the job runs at idle priority
        assert dealer.popen.poll() is None, "the batch ended before a save was seen"
        assert time.monotonic() < deadline, "no save shown in the jobber's status"
        try:
            running = jobber_status(data)["running"]
        except Exception:  # not listening yet
            running = []
        seen = next((j for j in running if j["saved_s_ago"] is not None), None)
        time.sleep(0.2)
    assert seen["saved_bytes"] == 16 and seen["saved_s_ago"] >= 0
    # as its owner reads it: held still (suspended) so that it is there to be read
    cli = [PY, "-m", "jobber", "--data-dir", str(data)]
    subprocess.run([*cli, "suspend"], check=True, capture_output=True, timeout=30)
    plain = subprocess.run([*cli, "status"], check=True, capture_output=True, text=True)
    assert re.search(
        r"running \S+ \(Chain\) from \S+: \d+ s run, .* left of its time limit, "
        r"last saved \d+ s ago \(16 B\)",
        plain.stdout,
    )
    subprocess.run([*cli, "resume"], check=True, capture_output=True, timeout=30)
    assert dealer.wait(300) == 0, dealer.stderr
    assert dealer.stdout.strip() == straight.stdout.decode().strip()
    jobber.signal(signal.SIGTERM)
    assert jobber.wait(60) == 0, jobber.stderr
