"""The journal against damage, with real dealer processes: a rerun after a payload edit, and
a dealer SIGKILLed whose write-ahead log was then deleted (tests/dealer/test_journal.py has
the rest, on SQLite files)."""

from __future__ import annotations

import re
import signal

from tests.dealer.test_journal import AFRESH, meta, sha, shm, wal
from tests.helpers import PY, ROOT, free_port, wait_for

# --- real dealer processes ----------------------------------------------------------

ECHO = """\
import sys
from pathlib import Path

sys.path.insert(0, {root!r})

from tasks import Job, Limits, Payload, Task
from tests.wat import printing

HERE = Path(__file__).resolve().parent


class Echo(Task):
    \"\"\"Three jobs printing what message.txt says.\"\"\"

    limits = Limits(fuel=10**6, memory_mb=16, time_s=5, output_kb=1)

    def __init__(self):
        super().__init__()
        self.payload = Payload(printing((HERE / "message.txt").read_text()), "echo")
        self.outputs = []

    def jobs(self):
        return [Job((str(i),)) for i in range(3)]

    def total(self):
        return 3

    def on_output(self, job, output):
        self.outputs.append(output.decode())

    def result(self):
        return " ".join(self.outputs)


if __name__ == "__main__":
    from dealer import serve_task

    sys.exit(serve_task(Echo))
"""


def test_a_rerun_after_a_payload_edit_is_refused_and_fresh_starts_over(procs, tmp_path):
    (tmp_path / "echo.py").write_text(ECHO.format(root=str(ROOT)))
    (tmp_path / "message.txt").write_text("old")
    db = tmp_path / "journal.sqlite"
    cmd = [PY, tmp_path / "echo.py", "--quiet", "--jobbers", "1", "--db", db]
    cmd += ["--bind", f"tcp://127.0.0.1:{free_port()}"]
    first = procs.start("first", cmd)
    assert first.wait(120) == 0, first.stderr
    assert first.stdout.strip() == "old old old"
    (tmp_path / "message.txt").write_text("new")  # the author edits the payload
    rerun = procs.start("rerun", cmd)
    assert rerun.wait(60) == 2, rerun.stderr
    assert rerun.stdout == ""  # no stale answer
    assert (
        f"error: {db}: the payload changed: the journal was written for payload {sha('old')}, "
        f"the task now has {sha('new')}."
    ) in rerun.stderr
    assert AFRESH in rerun.stderr
    fresh = procs.start("fresh", [*cmd, "--fresh"])
    assert fresh.wait(120) == 0, fresh.stderr
    assert fresh.stdout.strip() == "new new new"
    moved = re.search(rf"moved the old journal {re.escape(str(db))} aside to (\S+)", fresh.stderr)
    assert moved, fresh.stderr
    aside = tmp_path / moved.group(1).rpartition("/")[2]
    assert re.fullmatch(r"journal\.\d{8}-\d{6}\.sqlite", aside.name)
    assert meta(aside)["payload"] == sha("old")  # kept whole, as it was
    assert meta(db)["payload"] == sha("new")


def test_a_dealer_killed_whose_wal_was_deleted_is_refused(procs, tmp_path):
    db = tmp_path / "journal.sqlite"
    port = free_port()
    dealer = procs.dealer("first", "../tests/task_files/flaky.py", port=port, db=db)
    dealer.wait_for(r"listening on", 60)
    # it draws a job as it starts: committed to the -wal, not yet in the main file
    wait_for(lambda: wal(db).exists() and wal(db).stat().st_size > 0, 30, "a commit in the -wal")
    dealer.signal(signal.SIGKILL)
    dealer.popen.wait()
    kept = tmp_path / "kept-wal"
    wal(db).rename(kept)
    shm(db).unlink()
    again = procs.dealer("again", "../tests/task_files/flaky.py", port=port, db=db, listening=False)
    assert again.wait(60) == 2, again.stderr
    assert (
        f"error: {db} was left open (its dealer was killed or crashed) and its write-ahead "
        "log journal.sqlite-wal is not beside it"
    ) in again.stderr
    assert "Put journal.sqlite-wal back beside it" in again.stderr
    assert AFRESH in again.stderr
    kept.rename(wal(db))  # put back, the same command resumes
    resumed = procs.dealer("resumed", "../tests/task_files/flaky.py", port=port, db=db)
    resumed.wait_for(r"listening on", 60)
    resumed.signal(signal.SIGTERM)
    resumed.popen.wait(timeout=30)
