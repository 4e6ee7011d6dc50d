"""`python -m dealer results|jobs DB`: a batch's results and history from its journal
alone, read without writing: after a batch, while its dealer runs, and after it was
killed. With real dealer and jobber processes on loopback: tests/e2e/test_results.py."""

from __future__ import annotations

import base64
import csv
import io
import json
import subprocess

from dealer._core import Policy
from dealer._history import History, read_history
from dealer._journal import Journal
from dealer._service import Service
from dealer.cli import main
from tests.helpers import PY, ROOT, Few

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
