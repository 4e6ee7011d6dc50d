"""End to end: a real dealer process and real jobber processes on loopback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import PY, ROOT, free_port


@pytest.mark.parametrize(
    ("n", "line"),
    [
        (1000003 * 1000033, "1000036000099 = 1000003 * 1000033"),  # both factors above 10^6
        (2**4 * 3**2 * 1000003, "144000432 = 2 * 2 * 2 * 2 * 3 * 3 * 1000003"),
        (1000003, "1000003 = 1000003"),  # a prime
    ],
)
def test_dealer_and_two_jobbers_factor(procs, factor_wasm, n, line):
    port = free_port()
    dealer = procs.dealer("dealer", "factoring.py", str(n), "--chunk", "50000", port=port)
    addr = f"127.0.0.1:{port}"
    jobbers = [procs.jobber(f"j{i}", addr, extra=("--max-idle", "5")) for i in (1, 2)]
    assert dealer.wait(90) == 0, dealer.stderr
    assert dealer.stdout.strip().splitlines()[-1] == line
    for j in jobbers:  # one may come too late for a batch of one job: it says so, exit 1
        assert j.wait(60) == 0 or "never reached any dealer" in j.stderr, j.stderr


def test_demo_command_starts_its_own_jobbers(procs, factor_wasm):
    dealer = procs.start(
        "demo",
        [
            PY,
            ROOT / "examples" / "factoring.py",
            str(1000003 * 1000033),
            "--bind",
            "tcp://127.0.0.1:*",
            "--jobbers",
            "2",
            "--quiet",
        ],
    )
    assert dealer.wait(90) == 0, dealer.stderr
    assert dealer.stdout.strip() == "1000036000099 = 1000003 * 1000033"


def test_bad_arguments_get_a_clear_error(procs):
    dealer = procs.start("bad", [PY, ROOT / "examples" / "factoring.py", "1"])
    assert dealer.wait(30) != 0
    assert "N must be in" in dealer.stderr


def test_local_jobbers_end_when_their_dealer_is_killed(procs, factor_wasm):
    import signal

    from tests.helpers import N, wait_for

    port = free_port()
    dealer = procs.start(
        "dealer",
        [PY, ROOT / "examples" / "factoring.py", str(N), "--chunk", "20000000"]
        + ["--bind", f"tcp://127.0.0.1:{port}", "--jobbers", "2", "--quiet"],
    )
    dealer.wait_for("listening on", 30)

    def children() -> list[int]:
        out = subprocess.run(
            ["pgrep", "-f", f"jobber tcp://127.0.0.1:{port}"], capture_output=True, text=True
        ).stdout
        return [int(x) for x in out.split()]

    pids = wait_for(lambda: len(children()) == 2 and children(), 30, "two local jobbers")
    dealer.signal(signal.SIGKILL)
    wait_for(lambda: not children(), 30, "the local jobbers to end")
    assert all(
        not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        for pid in pids
    )
