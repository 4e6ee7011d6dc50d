"""End to end, a researcher's journals: the batch says where its journal is, an
output-only option (`--out`) reads the same journal instead of starting over, and
`python -m dealer results|jobs` find the journal from nothing, a glob, or the task
file and its arguments."""

from __future__ import annotations

import os
import subprocess

from tests.helpers import PY, ROOT, free_port

COUNTS = str(ROOT / "tests" / "task_files" / "counts.py")


def run(cwd, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, BOREDNET_JOB_PRIORITY="normal")
    return subprocess.run(
        [PY, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def batch(cwd, n: int, *extra: str) -> subprocess.CompletedProcess:
    bind = f"tcp://127.0.0.1:{free_port()}"
    done = run(cwd, COUNTS, str(n), "--jobbers", "1", "--quiet", "--bind", bind, *extra)
    assert done.returncode == 0, done.stderr
    return done


def test_journals_are_said_found_and_kept_across_output_options(tmp_path):
    first = batch(tmp_path, 12, "--out", "a.txt")
    (journal,) = (tmp_path / ".borednet").glob("counts-*.sqlite")
    rel = journal.relative_to(tmp_path)
    assert f"journal {rel} (python -m dealer results {rel})" in first.stderr
    assert (tmp_path / "a.txt").read_text() == "46\n"
    # another --out: the same journal, read, not computed again
    again = batch(tmp_path, 12, "--out", "b.txt")
    assert f"journal {rel} " in again.stderr and (tmp_path / "b.txt").read_text() == "46\n"
    assert [j.name for j in (tmp_path / ".borednet").glob("counts-*.sqlite")] == [journal.name]
    # another N: another journal (it decides the jobs)
    batch(tmp_path, 3)
    journals = sorted((tmp_path / ".borednet").glob("counts-*.sqlite"))
    assert len(journals) == 2
    newest = max(journals, key=lambda x: x.stat().st_mtime)
    # nothing given: the newest here, said so
    out = run(tmp_path, "-m", "dealer", "results")
    assert out.returncode == 0, out.stderr
    assert f"reading the newest of 2 journals in .borednet/: {newest.relative_to(tmp_path)}" in (
        out.stderr
    )
    assert "3 jobs drawn: 3 accepted, 0 failed" in out.stdout
    # a glob: several journals, the newest read, never "unrecognized arguments"
    globbed = run(tmp_path, "-m", "dealer", "jobs", *map(str, journals))
    assert globbed.returncode == 0 and "2 journals given: reading the newest" in globbed.stderr
    # the task file and its arguments name the journal that command keeps
    by_task = run(tmp_path, "-m", "dealer", "results", COUNTS, "12", "--out", "c.txt", "--csv")
    assert by_task.returncode == 0, by_task.stderr
    assert by_task.stdout.count(",accepted,") == 12 and by_task.stderr == ""
    missing = run(tmp_path, "-m", "dealer", "results", COUNTS, "99")
    assert missing.returncode == 2 and "with these arguments has no journal here" in (
        missing.stderr
    )
    none = run(tmp_path / ".borednet", "-m", "dealer", "jobs")
    assert none.returncode == 2 and "no journal in .borednet/ here" in none.stderr
