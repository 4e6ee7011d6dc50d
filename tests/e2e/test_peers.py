"""End to end, peers that know: real dealers asking each other what work they have, real
jobbers referred only to the peer with work they can run (issue 13, part 1)."""

from __future__ import annotations

from tests.helpers import CHUNK, LINE, PY, N, by_name, free_port, summary, wait_status


def _peer(info: dict, port: int) -> dict:
    (row,) = [r for r in info["peers"] if r["address"] == f"tcp://127.0.0.1:{port}"]
    return row


def test_jobbers_are_referred_only_to_the_peer_with_work_they_can_run(
    procs, factor_wasm, sieve_wasm
):
    """A (referral-only) peers with B (factoring jobs of 16 MiB), C (sieve jobs of 80 MiB:
    more than the jobbers give a job) and a port where nothing listens. C itself peers
    with B and the dead port. Two jobbers started against A only, and one against C only,
    all do B's work; none is referred to C or to the dead port; B's batch finishes with
    the right factors; the dead peer is backed off and shown as never having answered."""
    a, b, c, dead = free_port(), free_port(), free_port(), free_port()
    addr = {port: f"127.0.0.1:{port}" for port in (a, b, c, dead)}
    B = procs.dealer("b", "factoring.py", str(N), "--chunk", CHUNK, port=b)
    C = procs.dealer("c", "primes.py", "300000000", "--peer", addr[b], "--peer", addr[dead], port=c)
    A = procs.start(
        "a",
        [PY, "-m", "dealer", "refer", "--bind", f"tcp://127.0.0.1:{a}"]
        + ["--peer", addr[b], "--peer", addr[c], "--peer", addr[dead]],
    )
    A.wait_for("referring jobbers", 30)

    # A has heard B and C, and given up on the dead port, before any jobber asks
    info = wait_status(
        a,
        lambda i: _peer(i, b)["jobs"] and _peer(i, c)["jobs"] and _peer(i, dead)["failures"],
        timeout=30,
    )
    assert _peer(info, b)["limits"]["memory_mb"] == 16
    assert _peer(info, c)["limits"]["memory_mb"] == 80
    gone = _peer(info, dead)
    assert gone["said_at"] is None and "no answer" in gone["error"]
    wait_status(c, lambda i: _peer(i, b)["jobs"], timeout=30)  # C has heard B too

    small = ("--memory", "64", "--max-idle", "3")
    j1 = procs.jobber("j1", addr[a], extra=small)
    j2 = procs.jobber("j2", addr[a], extra=small)
    j3 = procs.jobber("j3", addr[c], extra=small)
    assert B.wait(90) == 0, B.stderr
    assert B.stdout.strip() == LINE
    for j in (j1, j2, j3):
        j.wait_for(rf"dealer tcp://127\.0\.0\.1:{b} added by referral", 5)
        assert f"127.0.0.1:{dead}" not in j.stderr, j.stderr  # never referred to the dead port
    for j in (j1, j2):
        assert f"127.0.0.1:{c} added by referral" not in j.stderr, j.stderr
    # B's work was done by the referred jobbers alone (no jobber was given B's address)
    rows = summary(B.stderr)
    assert set(rows) <= {"j1", "j2", "j3"} and sum(r[0] for r in rows.values()) > 0, B.stderr
    assert all(r[1:3] == (0, 0) for r in rows.values()), rows

    # C heard only from its own jobber, which it could not use: j1 and j2 never went there
    seen = by_name(wait_status(c, lambda i: "j3" in by_name(i), timeout=60))
    assert set(seen) == {"j3"} and seen["j3"]["valid"] == 0

    # B gone: its offer goes stale, and A refers no one (the jobbers idle out and exit)
    for j in (j1, j2, j3):
        assert j.wait(60) == 0, j.stderr
    info = wait_status(a, lambda i: _peer(i, b)["failures"] >= 1, timeout=30)
    assert _peer(info, dead)["failures"] >= 2
    assert _peer(info, dead)["said_at"] is None
    assert C.popen.poll() is None, C.stderr  # C serves on: its work waits for bigger jobbers
