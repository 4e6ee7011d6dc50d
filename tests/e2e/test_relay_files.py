"""Input files through a relay, end to end: a real dealer serving a batch over a shared
table (tests/task_files/table_sum.py), `python -m relay`, and two unchanged jobbers that
know only the relay. The jobbers fetch the table and each job's own file from the relay,
which fetches each chunk upstream once and serves it from memory to both; the report is
the one computed here alone."""

from __future__ import annotations

import hashlib
import os
import signal

from tests.e2e.test_input_files_batch import expected
from tests.e2e.test_relay import _relay
from tests.helpers import free_port, wait_status

TASK = "../tests/task_files/table_sum.py"  # relative to examples/
JOBS = 8
TABLE_BYTES = 9 * 1024 * 1024  # three chunks


def test_jobbers_behind_a_relay_take_input_files_each_chunk_fetched_upstream_once(procs, tmp_path):
    table = os.urandom(TABLE_BYTES // 64) * 64
    path = tmp_path / "table.bin"
    path.write_bytes(table)
    name = hashlib.sha256(table).hexdigest()
    up_port, relay_port = free_port(), free_port()
    dealer = procs.dealer("d", TASK, "--table", str(path), "--jobs", str(JOBS), port=up_port)
    relay = _relay(procs, "relay", f"127.0.0.1:{up_port}", relay_port, tmp_path / "r" / "r.db")
    jobbers = [
        procs.jobber(f"j{i}", f"127.0.0.1:{relay_port}", extra=("--max-idle", "20")) for i in (1, 2)
    ]
    assert dealer.wait(180) == 0, dealer.stderr + relay.stderr
    assert dealer.stdout.strip() == expected(table, JOBS)
    for j in jobbers:  # done: stopped as their owner would stop them (no idle wait)
        j.signal(signal.SIGTERM)
        assert j.wait(60) == 0, j.stderr
    took = [j.stderr.count(f"input file {name[:12]} held whole") for j in jobbers]
    assert sum(took) >= 1 and max(took) == 1, took  # at most once each, from the relay
    # upstream, each chunk went once: the table's three and each job's own file
    files = wait_status(relay_port, lambda s: True)["files"]
    assert files["fetched"] == 3 + JOBS, files
    assert files["refused"] == 0 and files["served"] >= files["fetched"]


def test_a_python_batch_runs_behind_a_relay_that_passes_the_runtime_ask_down(
    procs, tmp_path, python_runtime
):
    from protocol._runtimes import PYTHON
    from tests.e2e.test_python_batch import ROWS, table

    data = tmp_path / "data.bin"
    table(data, ROWS)
    out = tmp_path / "slopes.csv"
    up_port, relay_port = free_port(), free_port()
    argv = ["--data", str(data), "--jobs", "2", "--replicates", "2", "--out", str(out)]
    argv += ["--redundancy", "1"]  # a relay is one machine upstream (untrusted)
    dealer = procs.dealer("d", "bootstrap.py", *argv, port=up_port)
    relay = _relay(procs, "relay", f"127.0.0.1:{up_port}", relay_port, tmp_path / "r" / "r.db")
    # the runtime's module (104.5 MB) and library come through the relay in chunks
    extra = ("--runtime-cache", str(python_runtime), "--max-idle", "30")
    jobber = procs.jobber("j1", f"127.0.0.1:{relay_port}", extra=extra)
    assert dealer.wait(600) == 0, dealer.stderr + relay.stderr
    assert "95% interval" in dealer.stdout
    assert len(out.read_text().splitlines()) == 1 + 2 * 2  # a header, then every replicate
    jobber.signal(signal.SIGTERM)
    assert jobber.wait(60) == 0, jobber.stderr
    assert jobber.stderr.count(f"input file {PYTHON.sha256[:12]} held whole") == 1
    assert "runtime python is ready" in jobber.stderr
    assert "upstream runs pinned runtimes" in relay.stderr
