"""End to end, machines that vanish: a frozen and a killed jobber cost the batch
seconds (their lease), not the deadline; settled replicas are cancelled."""

from __future__ import annotations

import signal

from tests.helpers import (
    LINE,
    N,
    by_name,
    free_port,
    jobber_status,
    summary,
    wait_for,
    wait_status,
)

CHUNK_23 = "45000000"  # 23 jobs of about 0.15 s


def test_a_frozen_and_a_killed_jobber_cost_their_lease_not_the_deadline(procs, factor_wasm):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    # a deadline far beyond the test's patience: only leases can finish the batch in time
    dealer = procs.dealer(
        "dealer",
        "factoring.py",
        str(N),
        "--chunk",
        CHUNK_23,
        "--deadline",
        "600",
        "--lease",
        "8",
        "--backups",
        "0",  # the lease alone (backups would end this batch sooner still)
        port=port,
    )
    frozen = procs.jobber("frozen", addr, extra=("-v",))
    killed = procs.jobber("killed", addr, extra=("-v",))
    frozen.wait_for(r"\d+ jobs from", 30)
    killed.wait_for(r"\d+ jobs from", 30)
    frozen.signal(signal.SIGSTOP)  # its sockets stay open: the kernel says nothing
    killed.kill()
    survivor = procs.jobber("survivor", addr, extra=("--max-idle", "30"))
    try:
        # both shown as gone once their leases ran out (unless one held nothing by then)
        info = wait_status(
            port,
            lambda s: all(
                by_name(s)[n]["gone"] or not by_name(s)[n]["holding"] for n in ("frozen", "killed")
            ),
            timeout=60,
        )
        assert by_name(info)["frozen"]["gone"] or by_name(info)["killed"]["gone"]
        assert dealer.wait(90) == 0, dealer.stderr  # within the lease, far within the deadline
    finally:
        frozen.signal(signal.SIGCONT)
    assert dealer.stdout.strip() == LINE
    rows = summary(dealer.stderr)
    assert sum(r[0] for r in rows.values()) == 23  # every job accepted once
    assert rows["frozen"][2] == rows["killed"][2] == 0  # gone is nobody's fault
    assert "Traceback" not in killed.stderr  # its slot worker leaves quietly
    survivor.signal(signal.SIGTERM)
    assert survivor.wait(60) == 0


def test_a_straggler_no_longer_holds_up_the_end_of_a_batch(procs, factor_wasm):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.dealer("dealer", "factoring.py", str(N), "--chunk", CHUNK_23, port=port)
    fast = procs.jobber("fast", addr, extra=("--max-idle", "30"))
    slow = procs.jobber("slow", addr, extra=("--cpu-limit", "5", "--max-idle", "30"))
    assert dealer.wait(90) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
    rows = summary(dealer.stderr)
    assert rows["fast"][0] + rows["slow"][0] == 23  # each job accepted once

    # the batch ended without waiting for the straggler: its last jobs were backed up by
    # the fast jobber, and it was told to drop them (by the finished dealer, which stays
    # a moment) or still holds them
    def passed_by() -> bool:
        if "jobs cancelled (settled without them)" in slow.stderr:
            return True
        held = jobber_status(procs.cwd / "data-slow")
        return bool(held["running"] or held["buffered"] or held["spooled"])

    wait_for(passed_by, 30, "the straggler's jobs to be settled without it")
    for j in (fast, slow):
        j.signal(signal.SIGTERM)
        assert j.wait(60) == 0
