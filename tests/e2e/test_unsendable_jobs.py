"""A job that can never be sent, end to end: it fails alone and the batch finishes."""

from __future__ import annotations

import re

from tests.helpers import PY, ROOT, free_port
from tests.task_files.oversize import BIG, JOBS


def test_an_oversize_stdin_fails_alone_and_the_batch_finishes(procs):
    port = free_port()
    dealer = procs.start(
        "dealer",
        [
            PY,
            ROOT / "tests" / "task_files" / "oversize.py",
            "--bind",
            f"tcp://127.0.0.1:{port}",
            "--db",
            procs.cwd / "oversize.sqlite",
        ],
    )
    dealer.wait_for("listening on", 120)  # before the jobber's --max-idle runs out
    jobber = procs.jobber("j1", f"127.0.0.1:{port}", extra=("--max-idle", "4"))
    assert dealer.wait(120) == 1, dealer.stderr  # finished, with a failure
    assert dealer.stdout.strip() == f"{JOBS - 1} done, 1 failed"
    assert re.search(
        rf"job {BIG} \(args {BIG}\) can never be sent: stdin of 16,777,217 bytes, over the "
        r"wire's cap of 16,777,216 bytes",
        dealer.stderr,
    ), dealer.stderr
    assert "cannot send jobs" not in dealer.stderr
    assert jobber.wait(60) == 0 or "never reached any dealer" in jobber.stderr
