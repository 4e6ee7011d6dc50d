"""examples/mcmc.py: long Metropolis chains that save their state, in C
(examples/mcmc.c) and in Python (examples/mcmc_kernel.py). Each kernel stopped
halfway and resumed from its saved state prints what it prints run straight through;
the C batch, run by real jobbers one of which is killed mid-chain, reports the chains
a straight run gives, the killed chain resumed elsewhere from its last state."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess

import pytest

from protocol import Limits, Status
from tasks import Payload
from tests.helpers import PY, ROOT, wait_status

EXAMPLES = ROOT / "examples"
WAIT_S = 300.0


def _stopped_and_resumed(payload: Payload, args: list[str], limits: Limits) -> None:
    straight = payload.run(args, limits=limits)
    assert straight.status is Status.OK, straight.detail
    short = dataclasses.replace(limits, fuel=straight.fuel // 2)
    stopped = payload.run(args, limits=short)
    assert stopped.status is Status.FUEL and stopped.checkpoint, stopped.detail
    resumed = payload.run(args, limits=limits, checkpoint=stopped.checkpoint)
    assert resumed.status is Status.OK, resumed.detail
    assert b"resumed at step" in resumed.stderr
    assert resumed.stdout == straight.stdout
    # a state that is not the chain's own is ignored: it starts over, to the same output
    junk = payload.run(args, limits=limits, checkpoint=b"\x00" * 100)
    assert junk.stdout == straight.stdout and b"resumed" not in junk.stderr


def test_the_c_chain_resumes_from_its_state_to_the_straight_output():
    payload = Payload.from_c(EXAMPLES / "mcmc.c")
    lim = Limits(fuel=10**12, memory_mb=16, time_s=120, output_kb=1, checkpoint_kb=4)
    _stopped_and_resumed(payload, ["3", "400000", "50000"], lim)


def test_the_python_chain_resumes_from_its_state_to_the_straight_output(python_runtime):
    payload = Payload.python(EXAMPLES / "mcmc_kernel.py")
    lim = Limits(fuel=10**12, memory_mb=256, time_s=300, output_kb=1, checkpoint_kb=16)
    _stopped_and_resumed(payload, ["3", "40000", "5000"], lim)


@pytest.fixture(scope="module")
def straight_chains():
    payload = Payload.from_c(EXAMPLES / "mcmc.c")
    lim = Limits(fuel=10**13, memory_mb=16, time_s=300, output_kb=1, checkpoint_kb=4)
    out = {}
    for chain in (0, 1):
        run = payload.run([str(1_000_003 + chain), str(STEPS), "1000000"], limits=lim)
        assert run.status is Status.OK, run.detail
        out[chain] = run.stdout.split()
    return out


STEPS = 25_000_000  # about ten seconds a chain on a current core


def test_a_batch_of_chains_survives_a_killed_jobber(procs, tmp_path, straight_chains):
    from tests.helpers import free_port

    port = free_port()
    out = tmp_path / "chains.csv"
    dealer = procs.dealer(
        "d",
        "mcmc.py",
        *("--chains", "2", "--steps", str(STEPS), "--send-every", "1"),
        *("--lease", "3", "--backups", "0", "--out", str(out)),
        port=port,
    )
    j1 = procs.jobber("j1", f"127.0.0.1:{port}", slots=2)
    wait_status(
        port,
        lambda s: sum(j["saves"] >= 1 for j in s.get("long_jobs") or []) == 2,
        WAIT_S,
    )
    j1.kill()
    j2 = procs.jobber("j2", f"127.0.0.1:{port}", slots=2)
    assert dealer.wait(WAIT_S) == 0, dealer.stderr
    assert "2 chains of 25,000,000 steps" in dealer.stdout
    with out.open() as f:
        rows = {int(r["chain"]): r for r in csv.DictReader(f)}
    for chain, values in straight_chains.items():
        got = [rows[chain][k] for k in ("mean_x", "mean_y", "var_x", "var_y", "acceptance")]
        assert [float(v) for v in got] == [float(v) for v in values[:5]]
    history = subprocess.run(
        [PY, "-m", "dealer", "jobs", str(tmp_path / "d.sqlite"), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    resumed = [
        r for j in json.loads(history.stdout)["jobs"] for r in j["replicas"] if r["resumed_from"]
    ]
    assert len(resumed) == 2 and all(r["resumed_fuel"] > 0 for r in resumed)
    j2.signal(15)
    assert j2.wait(60) == 0, j2.stderr
