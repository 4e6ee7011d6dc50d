"""A researcher's batch over an input file shared by every job, end to end: a real dealer
(tests/task_files/table_sum.py, a C payload that hashes its slice of a 9 MiB table and
reads a file of its own), two real jobbers, redundancy 2 so that every job runs on both
and is cross-checked byte for byte. The table crosses the wire at most once per jobber,
and a second batch over the same table on the same jobbers fetches none of it again."""

from __future__ import annotations

import hashlib
import os

from tests.helpers import free_port, summary
from tests.task_files.table_sum import own_file

TASK = "../tests/task_files/table_sum.py"  # relative to examples/
JOBS = 8
TABLE_BYTES = 9 * 1024 * 1024  # three chunks


def fnv1a64(data: bytes) -> int:
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) & (2**64 - 1)
    return h


def expected(table: bytes, jobs: int) -> str:
    """The report the batch must print, computed here alone (the payload's own rule)."""
    step = -(-len(table) // jobs)
    lines = []
    for i in range(jobs):
        part = table[min(i * step, len(table)) : min((i + 1) * step, len(table))]
        lines.append(f"{i} {fnv1a64(part):016x} {len(own_file(i))}")
    return ";".join(lines)


def test_a_batch_over_a_shared_file_is_cross_checked_and_the_file_crosses_once(procs, tmp_path):
    table = os.urandom(TABLE_BYTES // 64) * 64  # random, but quick to hash here
    path = tmp_path / "table.bin"
    path.write_bytes(table)
    name = hashlib.sha256(table).hexdigest()
    want = expected(table, JOBS)
    fetched = []  # per batch: how many times each jobber took the table whole
    for batch in (1, 2):
        port = free_port()
        argv = ("--table", str(path), "--jobs", str(JOBS), "--redundancy", "2")
        dealer = procs.dealer(f"d{batch}", TASK, *argv, port=port, db=tmp_path / f"{batch}.db")
        jobbers = [  # the same data directories both times
            procs.jobber(
                f"j{i}", f"127.0.0.1:{port}", extra=("--max-idle", "20"), log=f"j{i}-{batch}"
            )
            for i in (1, 2)
        ]
        assert dealer.wait(180) == 0, dealer.stderr
        assert dealer.stdout.strip() == want  # both replicas of every job agreed on it
        rows = summary(dealer.stderr)
        assert {r[0] for r in rows.values()} == {JOBS}  # each jobber ran every job once
        for j in jobbers:
            assert j.wait(60) == 0, j.stderr
        fetched.append([j.stderr.count(f"input file {name[:12]} held whole") for j in jobbers])
    assert fetched == [[1, 1], [0, 0]]  # once to each jobber, then kept (sticky)
    for i in (1, 2):  # by its hash in each jobber's data directory
        assert (tmp_path / f"data-j{i}" / "files" / name).read_bytes() == table
