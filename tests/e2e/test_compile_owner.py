"""Compiling obeys the owner, with a real dealer and two real jobbers (tests/sandbox/
test_sandbox_compile_owner.py has the rest)."""

from __future__ import annotations

from tests.helpers import PY, ROOT
from tests.sandbox.test_sandbox_compile_owner import linux_only


@linux_only
def test_a_small_jobber_gives_a_costly_compile_back_and_a_larger_one_runs_it(procs):
    """A jobber with --memory 64 compiles the payload once, gives its jobs back unrun
    (the owner's limit, not the payload's fault) and asks that dealer no more for a
    while; a jobber with room compiles and runs every job: none fails."""
    from dealer._core import Returned
    from dealer._reader import ReadOnly
    from tests.helpers import free_port, wait_for
    from tests.task_files.deep import JOBS

    port = free_port()
    db = procs.cwd / "deep.sqlite"
    dealer = procs.start(
        "dealer",
        [PY, ROOT / "tests" / "task_files" / "deep.py", "--bind", f"tcp://127.0.0.1:{port}"]
        + ["--db", db, "--quiet"],
    )
    small = procs.jobber("small", f"127.0.0.1:{port}", extra=("--memory", "64", "-v"))
    wait_for(
        lambda: "refused: compiling it needs more than the 64 MiB" in small.stderr,
        120,
        "the small jobber to give a job back",
    )
    big = procs.jobber("big", f"127.0.0.1:{port}", extra=("--memory", "1024", "--max-idle", "5"))
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == f"{JOBS} done, 0 failed"
    with ReadOnly(db) as journal:
        back = [
            r
            for r in journal.records()
            if isinstance(r, Returned) and r.status == "abandoned" and "64 MiB" in r.detail
        ]
    assert back and all(r.detail.startswith("refused: compiling it needs more") for r in back)
    assert sum("(remembered)" not in r.detail for r in back) <= 1  # compiled once at most
    assert big.wait(60) == 0 or "never reached any dealer" in big.stderr
