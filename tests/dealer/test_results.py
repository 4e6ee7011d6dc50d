"""`python -m dealer results|jobs DB`: a batch's results and history from its journal
alone, read without writing: after a batch, while its dealer runs, and after it was
killed. The e2e tests run real dealer and jobber processes on loopback."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess
import time

import pytest

from dealer._core import Policy
from dealer._history import History, read_history
from dealer._journal import Journal, JournalError, ReadOnly
from dealer._service import Service
from dealer.cli import main
from tests.helpers import CHUNK, JOBS, LINE, PY, ROOT, Few, N, free_port, summary_rows, wait_for

SMALL = 1000003 * 1000033  # 6 jobs of 200000 candidates: a batch of a second or two
SMALL_LINE = f"{SMALL} = 1000003 * 1000033"


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "dealer", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=cwd or ROOT)


def ranges(n: int, chunk: int) -> list[list[str]]:
    """The args of the factoring example's jobs (examples/factoring.py)."""
    import math

    top = math.isqrt(n)
    return [[str(n), str(lo), str(min(lo + chunk, top + 1))] for lo in range(2, top + 1, chunk)]


def divisor_lines(n: int, args: list[str]) -> str:
    """What the kernel prints for a job: the divisors of n in its range, one a line."""
    lo, hi = int(args[1]), int(args[2])
    found = [d for d in (1000003, 1000033, 1000000007, 1000000009) if lo <= d < hi and n % d == 0]
    return "".join(f"{d}\n" for d in found)


def files(db) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(db.parent.glob(db.name + "*"))}


# --- in process ----------------------------------------------------------------------------


def test_a_missing_or_unserved_journal_is_refused_naming_it(tmp_path, capsys):
    missing = tmp_path / "nothing.sqlite"
    assert main(["results", str(missing)]) == 1
    assert (
        capsys.readouterr().err == f"error: {missing}: no such journal (there is no file there)\n"
    )
    assert not missing.exists()
    bare = tmp_path / "bare.sqlite"
    Journal(bare, "t").close()
    assert main(["jobs", str(bare), "--json"]) == 1
    assert "does not record its voting rules" in capsys.readouterr().err


def test_results_of_a_batch_served_in_process(tmp_path, capsys):
    db = tmp_path / "few.sqlite"
    service = Service(Few(3), Journal(db, "Few"), now=1.0, policy=Policy())
    core = service.core
    got = core.bored("k" * 64, 3, 1000, 2.0, machine="10.0.0.7")
    for a, out in zip(got, (b"zero\n", b"\xff\xfe", b"two"), strict=True):
        core.result("k" * 64, a.tag, "ok", out, 3, "", 3.0)
    service.commit()
    service.after_turn(3.0)
    assert main(["results", str(db), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["job"], r["args"], r["state"], r["output"]) for r in rows] == [
        ("0", "0", "accepted", "zero\n"),
        ("1", "1", "accepted", "base64:" + base64.b64encode(b"\xff\xfe").decode()),
        ("2", "2", "accepted", "two"),
    ]
    assert main(["jobs", str(db), "--state", "failed", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["jobs"] == [] and doc["accepted"] == 3 and doc["open"] is True
    assert main(["jobs", str(db)]) == 0
    text = capsys.readouterr().out
    assert "job 1  accepted  args 1" in text and "fffe (binary, 2 bytes, in hex)" in text
    assert text.count(" 10.0.0.7 ") == 3 and "kkkkkkkkkkkk " in text
    service.close()


def test_a_closed_journal_a_dealer_opens_while_it_is_read_is_read_again(tmp_path, monkeypatch):
    db = tmp_path / "few.sqlite"
    service = Service(Few(2), Journal(db, "Few"), now=1.0, policy=Policy())
    [a] = service.core.bored("k" * 64, 1, 1000, 2.0)
    service.core.result("k" * 64, a.tag, "ok", b"0", 3, "", 3.0)
    service.commit()
    service.close()
    real = History.of
    dealers = []

    def of(*args):  # the first read is overtaken by a dealer opening the journal
        if not dealers:
            dealers.append(Journal(db, "Few"))
        return real(*args)

    monkeypatch.setattr(History, "of", of)
    meta, h = read_history(db)
    assert len(dealers) == 1 and meta["state"].startswith("open")  # read again, as it is now
    assert h.counts() == {"drawn": 2, "accepted": 1, "failed": 0, "unsettled": 1}
    dealers[0].close()


# --- real processes -----------------------------------------------------------------------


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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
    assert dealer.wait(10) == 0, dealer.stderr
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


def test_the_command_line_refuses_a_damaged_file_and_takes_a_closed_pipe(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a journal" * 100)
    out = cli("results", junk, cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (
        f"error: {junk}: not a usable journal: file is not a database: it was damaged, or "
        "is not a journal\n"
    )
    # `python -m dealer jobs DB | head -1`: more than a pipe holds, and a reader that
    # stops early: no traceback, exit 0
    db = tmp_path / "many.sqlite"
    service = Service(Few(1500), Journal(db, "Few"), now=1.0, policy=Policy(quota=4096))
    while not service.finished():
        got = service.core.bored("k" * 64, 500, 1000, 2.0)
        for a in got:
            service.core.result("k" * 64, a.tag, "ok", b"x" * 40, 3, "", 3.0)
        service.commit()
        service.after_turn(3.0)
    service.close()
    proc = subprocess.Popen(
        [PY, "-m", "dealer", "jobs", str(db)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout.readline().startswith(b"journal ")
    proc.stdout.close()
    assert proc.wait(60) == 0
    assert proc.stderr.read() == b""
    proc.stderr.close()
