"""End to end: machines that hold nothing hold nothing back (docs/security.md, "A made-up
platform holds back only its own replicas"). A real dealer, real jobbers, and hostile
clients written from docs/protocol.md (tests/wrong_jobber.py, or by hand over the wire).

Before the rule that a job waits only for a *present* machine (one that asked for work it
could take, or returned a result, within the lease), each attack below held a batch for
five minutes or more; the tests bound the batch at 90 s (a loaded machine's margin), and
the times they print are the measurements of the closing notes.
"""

from __future__ import annotations

import threading
import time

import protocol as p
from tests.helpers import (
    LINE,
    PY,
    ROOT,
    CurveClient,
    N,
    by_name,
    free_port,
    summary,
    wait_status,
)

WRONG = ROOT / "tests" / "wrong_jobber.py"
CHUNK_23 = "45000000"  # 23 jobs of about 0.15 s
HOST = p.HostFacts(cpus=1, memory_mb=4096, slots=1)


def test_a_made_up_platform_holds_back_only_its_own_replicas(procs, factor_wasm):
    """Redundancy 2. Machine A asks for 128 jobs and answers each at once with garbage,
    claiming a platform nobody else has; machine B claims it too, takes one job (its
    garbage disagrees with A's), and then only asks for nothing, twice a second. Two
    honest jobbers then finish the batch with the right answer."""
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.dealer(
        "dealer", "factoring.py", str(N), "--chunk", CHUNK_23, "--redundancy", "2", port=port
    )
    full = dealer.wait_for(r"listening on (\S+)", 60).group(1)
    made_up = p.HostFacts(cpus=64, memory_mb=4096, slots=64, platform="made-up")
    procs.start(
        "a",
        [PY, WRONG, addr, "--platform", "made-up", "--max-idle", "60", "--name", "a"]
        + ["--want", "128", "--source", "127.0.0.60"],
    )
    wait_status(port, lambda s: "a" in by_name(s) and by_name(s)["a"]["holding"] == 0)
    b = CurveClient(full, source="127.0.0.61")
    jobs = b.ask(p.Bored(1, "b", made_up, 1))
    assert isinstance(jobs, p.Jobs) and len(jobs.jobs) == 1
    garbage = p.Result(jobs.jobs[0].tag, p.Status.OK, b"14\n", 1)
    assert isinstance(b.ask(p.Results(2, "b", (garbage,))), p.Ack)
    stop = threading.Event()

    def ask_for_nothing() -> None:
        rid = 3
        while not stop.wait(0.5):
            try:
                b.ask(p.Bored(rid, "b", made_up, 0), timeout_s=2.0)
            except AssertionError:  # no reply: the batch ended and its dealer with it
                return
            rid += 1

    asker = threading.Thread(target=ask_for_nothing, daemon=True)
    asker.start()
    try:
        started = time.monotonic()
        honest = [procs.jobber(f"h{i}", addr, extra=("--max-idle", "5")) for i in (1, 2)]
        assert dealer.wait(90) == 0, dealer.stderr
        took = time.monotonic() - started
    finally:
        stop.set()
        asker.join(10)
        b.close()
    rows = summary(dealer.stderr)
    print(
        f"\nmade-up platform: batch done {took:.1f} s after the honest jobbers started; "
        f"a: {rows.get('a')}, b: {rows.get('b')}"
    )
    assert dealer.stdout.strip() == LINE
    for h in honest:
        assert h.wait(60) == 0 or "never reached any dealer" in h.stderr, h.stderr


def test_silent_and_alive_only_identities_hold_no_job(procs, factor_wasm):
    """Redundancy 1, one real jobber on 127.0.0.70. From the same address, one fresh key
    takes a job and falls silent, and three fresh keys each say `alive` once and nothing
    more. The job goes to the real jobber once the silent key's lease runs out."""
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.dealer(
        "dealer", "factoring.py", str(N), "--chunk", CHUNK_23, "--lease", "8", port=port
    )
    line = dealer.wait_for(r"listening on (\S+)", 60)
    full = line.group(1)
    taker = CurveClient(full, source="127.0.0.70")
    jobs = taker.ask(p.Bored(1, "taker", HOST, 1))
    assert isinstance(jobs, p.Jobs) and len(jobs.jobs) == 1
    for i in range(3):
        c = CurveClient(full, source="127.0.0.70")
        assert isinstance(c.ask(p.Alive(1, f"alive-{i}", ())), p.AliveAck)
        c.close()
    status = wait_status(port, lambda s: len(s["jobbers"]) == 4)
    machines = {j["machine"] for j in status["jobbers"]}
    assert machines == {"127.0.0.70"}, machines  # each placed on its machine at once
    started = time.monotonic()
    real = procs.jobber("real", addr, source="127.0.0.70", extra=("--max-idle", "5"))
    assert dealer.wait(90) == 0, dealer.stderr
    print(
        f"\nsilent taker and alive-only keys: batch done {time.monotonic() - started:.1f} s "
        "after the real jobber started (lease 8 s)"
    )
    assert dealer.stdout.strip() == LINE
    assert real.wait(60) == 0, real.stderr
    taker.close()
