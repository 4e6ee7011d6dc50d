"""A researcher's Python batch end to end: a real dealer serving examples/bootstrap.py
(a numpy kernel in a Python file, over a data table shared by every job), two real
jobbers that have never run Python: each is asked by the dealer to prepare the runtime,
takes its module (104.5 MB) and standard library from the dealer in chunks (one jobber)
or from the package index (the other, --runtimes-from-index), makes it ready (the
compiled forms come from the machine's shared module cache, --runtime-cache: the
python_runtime fixture compiled them once), and only then gets jobs. Redundancy 2:
every job runs on both and is accepted only if their outputs agree byte for byte."""

from __future__ import annotations

import csv
import random
import signal
import struct

from protocol._runtimes import PYTHON
from tests.helpers import free_port, summary

JOBS = 4
REPLICATES = 3
ROWS = 20_000


def table(path, rows: int) -> None:
    rng = random.Random(5)
    values = []
    for _ in range(rows):
        x = rng.gauss(0.0, 1.0)
        values += (x, 2.0 * x + 1.0 + rng.gauss(0.0, 0.5))
    path.write_bytes(struct.pack(f"<{len(values)}d", *values))


def test_a_python_batch_runs_on_jobbers_that_prepare_the_runtime_at_the_dealers_word(
    procs, tmp_path, python_runtime
):
    data = tmp_path / "data.bin"
    table(data, ROWS)
    out = tmp_path / "slopes.csv"
    port = free_port()
    argv = ["--data", str(data), "--jobs", str(JOBS), "--replicates", str(REPLICATES)]
    argv += ["--out", str(out), "--redundancy", "2"]
    dealer = procs.dealer("d", "bootstrap.py", *argv, port=port)
    extra = ("--runtime-cache", str(python_runtime), "--max-idle", "30")
    # j1 takes the runtime's files from the dealer; j2 from the package index (here the
    # user's cache, which the python_runtime fixture filled), each file checked by hash
    jobbers = [
        procs.jobber("j1", f"127.0.0.1:{port}", extra=extra),
        procs.jobber("j2", f"127.0.0.1:{port}", extra=(*extra, "--runtimes-from-index")),
    ]
    assert dealer.wait(900) == 0, dealer.stderr
    rows = summary(dealer.stderr)
    assert {r[0] for r in rows.values()} == {JOBS}  # each jobber ran every job, both agreed
    with open(out) as f:
        slopes = [float(r["slope"]) for r in csv.DictReader(f)]
    assert len(slopes) == JOBS * REPLICATES
    assert all(1.9 < s < 2.1 for s in slopes)  # the table's slope is 2
    assert "95% interval" in dealer.stdout
    for j in jobbers:  # done: stopped as their owner would stop them (no idle wait)
        j.signal(signal.SIGTERM)
        assert j.wait(120) == 0, j.stderr
        assert "runtime python is ready" in j.stderr
    from_dealer, from_index = (j.stderr for j in jobbers)
    assert from_dealer.count(f"input file {PYTHON.sha256[:12]} held whole") == 1  # once
    assert "came from the package index" not in from_dealer
    assert "runtime python: its files came from the package index, each checked" in from_index
    assert f"input file {PYTHON.sha256[:12]}" not in from_index  # no chunk of it fetched
