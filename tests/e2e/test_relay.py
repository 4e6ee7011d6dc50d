"""End to end through a relay: upstream dealer <- relay <- two jobbers, real processes.

The upstream is the factoring example (examples/factoring.py), the relay is
`python -m relay`, the jobbers are unchanged `python -m jobber`s that
know only the relay. Each test breaks something (the upstream killed mid-batch
and restarted on its journal; the relay killed with kill -9 and restarted on
its journal) and checks that the printed factorization is right and that
every job was accepted once, from the relay, with nothing lost.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from tests.helpers import CHUNK, JOBS, LINE, PY, N, free_port, summary, wait_for, wait_status


def _relay(procs, name: str, upstream: str, port: int, db: Path, *extra: str):
    # the relay's own program (tests/e2e/test_relay_trust.py runs the older spelling,
    # python -m dealer relay, which execs it)
    argv = [PY, "-m", "relay", upstream, "--bind", f"tcp://127.0.0.1:{port}"]
    argv += ["--db", db, "--min-backoff", "0.2", "--max-backoff", "1", "--request-timeout", "2"]
    return procs.start(name, [*argv, *extra])


def _jobs(db: Path) -> list[dict]:
    """The upstream's jobs with their replicas, read from its journal."""
    out = subprocess.run(
        [PY, "-m", "dealer", "jobs", db, "--json"], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)["jobs"]


def _reissued_only_if_lost(db: Path, kept: set[str] = frozenset()) -> None:
    """Each job went out once, but for jobs lost on their way to the relay when one end
    was killed (journaled as sent upstream, never journaled by the relay): the upstream
    sends those again once the relay says it does not hold them. Those are the only
    second replicas allowed, and none of them may be a tag in `kept`, the relay's journal."""
    jobs = _jobs(db)
    assert len(jobs) == JOBS
    for job in jobs:
        first_sent, *again = job["replicas"]
        if again:
            assert first_sent["tag"] not in kept, job
            assert "lost: the jobber no longer holds it" in first_sent["detail"], job
            assert len(again) == 1, job


def _journaled(db: Path) -> set[str]:
    """The upstream tags a (stopped) relay's journal holds, read without touching it (a
    writing connection's close would fold its write-ahead log in and delete it)."""
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        return {row[0] for row in c.execute("SELECT utag FROM held")}


def _relayed(rows: dict[str, tuple[int, int, int, int]]) -> tuple[int, int, int]:
    """(valid, invalid, errors) summed over the relay and the jobbers behind it, as the
    upstream's closing table names them (`relay`, `relay/ADDRESS`): nothing else."""
    assert rows and all(name == "relay" or name.startswith("relay/") for name in rows), rows
    return tuple(sum(r[i] for r in rows.values()) for i in range(3))  # type: ignore[return-value]


def _batch(procs, name: str, port: int, db: Path, *extra: str):
    return procs.dealer(name, "factoring.py", str(N), "--chunk", CHUNK, *extra, port=port, db=db)


def test_upstream_killed_mid_batch_the_relay_buffers_and_delivers(procs, factor_wasm, tmp_path):
    up_port, relay_port = free_port(), free_port()
    up_db = tmp_path / "up" / "journal.sqlite"
    first = _batch(procs, "up1", up_port, up_db)
    relay = _relay(
        procs, "relay", f"127.0.0.1:{up_port}", relay_port, tmp_path / "r" / "relay.sqlite"
    )
    for i in (1, 2):
        procs.jobber(f"j{i}", f"127.0.0.1:{relay_port}", extra=("--max-idle", "30"))
    wait_status(up_port, lambda s: s["accepted"] >= 2)
    first.kill()
    # the jobbers go on from the relay's buffer; their results wait in its journal
    # (and the relay has found the upstream gone: a failed contact)
    wait_status(
        relay_port,
        lambda s: s["done"] >= 2 and s["queued"] + s["out"] == 0 and s["upstream"]["failures"],
        30,
    )
    second = _batch(procs, "up2", up_port, up_db)
    assert second.wait(90) == 0, second.stderr + relay.stderr
    assert second.stdout.strip() == LINE
    # upstream, the relay's jobbers are identities of their own (attributed by default)
    valid, invalid, errors = _relayed(summary(second.stderr))
    assert (valid, invalid) == (JOBS, 0)  # every job accepted once: none lost, none twice
    assert errors == 0, second.stderr  # nothing was given back or went overdue
    _reissued_only_if_lost(up_db)  # nothing else reissued upstream: the relay kept it all
    # and the relay let go of everything once the upstream acknowledged it
    wait_status(relay_port, lambda s: s["queued"] + s["out"] + s["done"] == 0, 30)


def test_relay_killed_and_restarted_on_its_journal_loses_nothing(procs, factor_wasm, tmp_path):
    up_port, relay_port = free_port(), free_port()
    rdb = tmp_path / "r" / "relay.sqlite"
    # the upstream waits for its silent relay a lease (20 s by default) before it releases
    # the relay's jobs to others; under load the relay may be down longer than that while
    # its jobbers notice, and reissued jobs are right then. The point here is the relay's
    # journal, so the upstream waits longer.
    dealer = _batch(procs, "up", up_port, tmp_path / "up.sqlite", "--lease", "300")
    first = _relay(procs, "relay1", f"127.0.0.1:{up_port}", relay_port, rdb)
    jobbers = [
        procs.jobber(f"j{i}", f"127.0.0.1:{relay_port}", extra=("--max-idle", "30")) for i in (1, 2)
    ]
    # killed while its jobbers run its jobs and it holds more in its buffer
    wait_status(relay_port, lambda s: s["out"] >= 1 and s["queued"] >= 1 and s["target"] > 0)
    wait_status(up_port, lambda s: s["accepted"] >= 1)
    first.signal(signal.SIGKILL)
    first.popen.wait()
    kept = _journaled(rdb)
    assert kept
    # the jobbers finish what they hold and keep the results in their spools
    wait_for(
        lambda: any("spool" in j.stderr or "no contact" in j.stderr for j in jobbers),
        30,
        "a jobber to notice the relay is gone",
        0.1,
    )
    second = _relay(procs, "relay2", f"127.0.0.1:{up_port}", relay_port, rdb)
    second.wait_for(r"resumed from .*: \d+ jobs queued, \d+ out", 30)
    assert dealer.wait(90) == 0, dealer.stderr + second.stderr
    assert dealer.stdout.strip() == LINE
    valid, invalid, errors = _relayed(summary(dealer.stderr))
    assert (valid, invalid, errors) == (JOBS, 0, 0), dealer.stderr
    # nothing the relay's journal held was reissued upstream
    _reissued_only_if_lost(tmp_path / "up.sqlite", kept)
    # the results the jobbers spooled while the relay was down were taken, not refused:
    # the restarted relay knew the tags it had handed out
    for j in jobbers:
        assert "refused result" not in j.stderr, j.stderr
    wait_status(relay_port, lambda s: s["queued"] + s["out"] + s["done"] == 0, 30)


def test_a_relay_behind_a_relay(procs, factor_wasm, tmp_path):
    up_port, outer_port, inner_port = free_port(), free_port(), free_port()
    dealer = _batch(procs, "up", up_port, tmp_path / "up.sqlite")
    _relay(procs, "outer", f"127.0.0.1:{up_port}", outer_port, tmp_path / "o" / "relay.sqlite")
    inner = _relay(
        procs, "inner", f"127.0.0.1:{outer_port}", inner_port, tmp_path / "i" / "relay.sqlite"
    )
    for i in (1, 2):
        procs.jobber(f"j{i}", f"127.0.0.1:{inner_port}", extra=("--max-idle", "30"))
    assert dealer.wait(90) == 0, dealer.stderr + inner.stderr
    assert dealer.stdout.strip() == LINE
    rows = summary(dealer.stderr)
    # upstream, the outer relay's one jobber (the inner relay, on 127.0.0.1)
    assert set(rows) <= {"relay", "relay/127.0.0.1"} and _relayed(rows) == (JOBS, 0, 0)
    # the outer relay served one jobber, the inner one, which served two
    outer = wait_status(outer_port, lambda s: s["queued"] + s["out"] + s["done"] == 0, 30)
    assert [j["results"] for j in outer["jobbers"]] == [JOBS]
    inner_status = wait_status(inner_port, lambda s: s["done"] == 0, 30)
    assert sum(j["results"] for j in inner_status["jobbers"]) == JOBS
    assert len(inner_status["jobbers"]) == 2


def _machines(db: Path) -> list[set[str]]:
    """The machines the upstream counted the replicas of each job on."""
    out = subprocess.run(
        [PY, "-m", "dealer", "jobs", db, "--json"], capture_output=True, text=True, check=True
    ).stdout
    return [{r["machine"] for r in job["replicas"]} for job in json.loads(out)["jobs"]]


def test_a_trusted_relay_s_jobbers_are_two_machines_for_redundancy_two(
    procs, factor_wasm, tmp_path
):
    up_port, relay_port = free_port(), free_port()
    home = tmp_path / "r"
    home.mkdir()
    key = subprocess.run(
        [PY, "-m", "dealer", "keygen", home / "relay"], capture_output=True, text=True, check=True
    ).stdout.strip()
    db = tmp_path / "up.sqlite"
    small = 1000003 * 1000033  # 11 short jobs: the point is where their replicas go
    argv = ["factoring.py", str(small), "--chunk", "100000", "--redundancy", "2"]
    argv += ["--trust-relay", key]
    dealer = procs.dealer("up", *argv, port=up_port, db=db)
    relay = _relay(
        procs, "relay", f"127.0.0.1:{up_port}", relay_port, home / "relay.sqlite", "--attribute"
    )
    for i in (1, 2):  # two machines (two source addresses) behind the one relay
        procs.jobber(f"j{i}", f"127.0.0.1:{relay_port}", extra=("--max-idle", "30"))
    assert dealer.wait(90) == 0, dealer.stderr + relay.stderr
    assert dealer.stdout.strip() == f"{small} = 1000003 * 1000033"
    # every job: two replicas, on two machines, both behind the relay (its namespace)
    machines = _machines(db)
    assert len(machines) == 11
    assert all(
        len(m) == 2 and all(x.startswith(key[:16] + "/127.0.0.") for x in m) for m in machines
    )
    rows = summary(dealer.stderr)
    assert sum(valid for valid, *_ in rows.values()) == 2 * 11
    assert "relay" not in rows  # the relay itself ran nothing, and holds no identity
