"""`python -m dealer results|jobs DB` with real dealer and jobber processes on loopback:
after a batch, while its dealer runs, after it was killed (tests/dealer/test_results.py has
the rest)."""

from __future__ import annotations

import base64
import csv
import io
import json
import time

from dealer._history import read_history
from dealer._journal import JournalError
from dealer._reader import ReadOnly
from tests.dealer.test_results import SMALL, SMALL_LINE, cli, divisor_lines, files, ranges
from tests.helpers import CHUNK, JOBS, LINE, PY, ROOT, N, free_port, summary_rows, wait_for


def test_results_and_jobs_after_a_batch(procs, factor_wasm, tmp_path):
    db = tmp_path / "factor.sqlite"
    cmd = [PY, ROOT / "examples" / "factoring.py", SMALL, "--chunk", "200000", "--quiet"]
    cmd += ["--bind", f"tcp://127.0.0.1:{free_port()}", "--jobbers", "1", "--db", db]
    dealer = procs.start("dealer", cmd)
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == SMALL_LINE
    [(_, key, valid, *_)] = summary_rows(dealer.stderr)
    before = files(db)
    assert list(before) == [db.name]  # closed: the main file alone

    out = cli("results", db, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    expected = ranges(SMALL, 200000)
    assert (doc["drawn"], doc["accepted"], doc["failed"], doc["unsettled"]) == (
        len(expected),
        len(expected),
        0,
        0,
    )
    assert doc["open"] is False and doc["task"] == "__main__.Factoring"
    assert [j["args"] for j in doc["jobs"]] == expected
    for j in doc["jobs"]:  # the exact bytes, and their text
        assert base64.b64decode(j["output_base64"]).decode() == j["output_text"]
        assert j["output_text"] == divisor_lines(SMALL, j["args"])
    assert "".join(j["output_text"] for j in doc["jobs"]) == "1000003\n"

    text = cli("results", db, cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    [row] = [line for line in text.stdout.splitlines() if line.endswith(" 1000003")]
    assert row.split()[:2] == ["5", "accepted"]
    table = cli("results", db, "--csv", cwd=tmp_path)
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    assert [r["output"] for r in rows] == [j["output_text"] for j in doc["jobs"]]

    hist = cli("jobs", db, "--json", cwd=tmp_path)
    assert hist.returncode == 0, hist.stderr
    jobs = json.loads(hist.stdout)["jobs"]
    assert len(jobs) == len(expected) == valid
    for j in jobs:
        [r] = j["replicas"]  # one jobber, redundancy 1: one replica each, which won
        assert r["jobber"].startswith(key) and r["machine"] == "127.0.0.2"
        assert (r["state"], r["status"], r["vote"]) == ("ok", "ok", "won")
        assert r["fuel"] > 0 and r["sent_at"] <= r["returned_at"] < r["deadline"]
    assert files(db) == before  # reading wrote nothing


def test_a_running_then_killed_dealers_journal_is_read_and_the_batch_resumes(
    procs, factor_wasm, tmp_path
):
    db = tmp_path / "factor.sqlite"
    port = free_port()
    dealer = procs.dealer("dealer", "factoring.py", str(N), "--chunk", CHUNK, port=port, db=db)
    dealer.wait_for("listening on", 60)
    procs.jobber("j1", f"127.0.0.1:{port}", extra=("--max-idle", "30"))

    # read while it runs: each read a consistent snapshot, the batch going on
    def some_accepted():
        meta, h = read_history(db)
        assert meta["state"].startswith("open")
        c = h.counts()
        assert c["accepted"] + c["failed"] + c["unsettled"] == c["drawn"]
        return c["accepted"] >= 2 and c

    seen = wait_for(some_accepted, 60, "two jobs accepted, read from the live journal")
    assert dealer.popen.poll() is None
    dealer.kill()  # SIGKILL: its last commits are in the -wal
    before = files(db)
    assert before[db.name + "-wal"], "the killed dealer's log"

    out = cli("results", db, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["open"] is True and doc["accepted"] >= seen["accepted"]
    assert doc["accepted"] + doc["unsettled"] == doc["drawn"] and doc["unsettled"] > 0
    expected = ranges(N, int(CHUNK))
    for j in doc["jobs"]:
        assert j["args"] == expected[j["job"]]
        assert j["output_text"] == divisor_lines(N, j["args"])
    out = cli("jobs", db, "--state", "unsettled", "--json", cwd=tmp_path)
    unsettled = json.loads(out.stdout)["jobs"]
    assert len(unsettled) == doc["unsettled"]
    assert all(r["state"] == "out" for j in unsettled for r in j["replicas"])
    after = files(db)  # the -shm is SQLite's shared memory, which readers use: not compared
    for name in (db.name, db.name + "-wal"):
        assert after[name] == before[name], f"{name} changed by reading"

    again = procs.dealer("again", "factoring.py", str(N), "--chunk", CHUNK, port=port, db=db)
    assert again.wait(120) == 0, again.stderr
    assert again.stdout.strip() == LINE
    doc = json.loads(cli("results", db, "--json", cwd=tmp_path).stdout)
    assert (doc["accepted"], doc["unsettled"], doc["open"]) == (JOBS, 0, False)
    assert "".join(j["output_text"] for j in doc["jobs"]) == "1000000007\n"


def test_reading_all_along_does_not_disturb_a_dealer(procs, factor_wasm, tmp_path):
    db = tmp_path / "factor.sqlite"
    cmd = [PY, ROOT / "examples" / "factoring.py", N, "--chunk", CHUNK, "--quiet"]
    cmd += ["--bind", f"tcp://127.0.0.1:{free_port()}", "--jobbers", "1", "--db", db]
    dealer = procs.start("dealer", cmd)
    reads, last = 0, -1
    early = ("no such journal", "empty file", "has no meta", "voting rules")
    while dealer.popen.poll() is None:  # read all along until it is done
        time.sleep(0.02)  # a polling interval, not a wait for anything
        try:
            meta, h = read_history(db)
        except JournalError as e:  # a journal being made (before its tables) is refused
            assert any(why in str(e) for why in early), e
            continue
        c = h.counts()
        assert c["accepted"] >= last, "a read went back in time"
        last = c["accepted"]
        reads += 1 if meta["state"].startswith("open") and c["unsettled"] else 0
    assert dealer.wait(60) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
    assert reads >= 3, "the reads never overlapped the running batch"
    # closed whole: the main file alone says so and holds everything. A read at the very
    # moment the dealer closed may have left its emptied -wal (and the -shm) beside it.
    left = files(db)
    assert set(left) <= {db.name, db.name + "-wal", db.name + "-shm"}
    assert left.get(db.name + "-wal", b"") == b"", "a -wal with commits not checkpointed"
    with ReadOnly(db) as r:
        assert r.meta["state"] == "closed"
    doc = json.loads(cli("results", db, "--json", cwd=tmp_path).stdout)
    assert doc["accepted"] == JOBS and not doc["open"]
