"""End to end, against attackers: a real dealer process, real jobbers, and hostile
clients written from docs/protocol.md (tests/wrong_jobber.py) or by hand over the wire.

Each test is one attack from docs/security.md and checks what happens now.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

import protocol as p
import sandbox
from tests.helpers import (
    CHUNK,
    JOBS,
    LINE,
    PY,
    ROOT,
    CurveClient,
    N,
    by_name,
    free_port,
    summary,
    summary_rows,
    wait_for,
    wait_status,
)

WRONG = ROOT / "tests" / "wrong_jobber.py"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize(
    "voting", [("--redundancy", "2"), ("--redundancy", "3", "--quorum", "2")], ids=["2of2", "2of3"]
)
def test_sybil_one_process_with_two_keys_cannot_win_a_vote(procs, factor_wasm, voting):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.dealer("dealer", "factoring.py", str(N), "--chunk", CHUNK, *voting, port=port)
    sybil = procs.start(
        "sybil",
        [PY, WRONG, addr, "--identities", "2", "--name", "sybil", "--source", "127.0.0.50"]
        + ["--max-idle", "6", "--platform", sandbox.PLATFORM],
    )
    # both of its identities get in first
    wait_status(port, lambda s: {"sybil-0", "sybil-1"} <= set(by_name(s)))
    honest = [procs.jobber(f"h{i}", addr, extra=("--max-idle", "5")) for i in (1, 2)]
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE  # never the liar's "N = N"
    rows = summary(dealer.stderr)
    assert rows["sybil-0"][0] + rows["sybil-1"][0] == 0  # not one vote won
    assert rows["sybil-0"][3] + rows["sybil-1"][3] == 0  # no credit
    assert rows["h1"][0] + rows["h2"][0] >= 2 * JOBS  # every job: two honest machines
    assert "outputs disagreed" in dealer.stderr  # the disagreement is flagged
    for j in honest:
        assert j.wait(60) == 0
    assert sybil.wait(60) == 0


def test_a_hoarder_taking_a_new_name_each_time_delays_but_never_fails_the_batch(procs, factor_wasm):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.dealer(
        "dealer", "factoring.py", str(N), "--chunk", CHUNK, "--deadline", "3", port=port
    )
    hoarder = procs.start(
        "hoarder",
        [PY, WRONG, addr, "--hoard", "--want", "4096", "--source", "127.0.0.60", "--name", "hog"]
        + ["--max-idle", "6"],
    )
    wait_status(port, lambda s: s["replicas_out"] >= 1)
    honest = [procs.jobber(f"h{i}", addr, extra=("--max-idle", "5")) for i in (1, 2)]
    assert dealer.wait(120) == 0, dealer.stderr  # exit 0: no job failed
    assert dealer.stdout.strip() == LINE
    assert "failed job" not in dealer.stderr
    assert hoarder.wait(60) == 0
    taken, names = map(
        int, re.search(r"took (\d+) replicas under (\d+) names", hoarder.stderr).groups()
    )
    print(f"the hoarder took {taken} replicas under {names} names")
    assert names > 2  # it tried name after name...
    # ...but one machine's quota held: it never held more than the 4 a new machine may
    # (halved by each overdue one: tests/dealer/test_core_counts.py). Read from the journal,
    # each of its replicas counts from its sending until its deadline or its job's
    # settling, whichever came first. (How many it took in all grows with the batch's
    # length, one a deadline at the end, and so with how busy the machine is.)
    jobs = subprocess.run(
        [PY, "-m", "dealer", "jobs", procs.cwd / "dealer.sqlite", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    held = []
    for j in json.loads(jobs.stdout)["jobs"]:
        won = [r["returned_at"] for r in j["replicas"] if r["vote"] == "won" and r["returned_at"]]
        settled = max(won, default=float("inf"))
        for r in j["replicas"]:
            if r["machine"] == "127.0.0.60":
                held.append((r["sent_at"], min(r["deadline"], settled)))
    assert len(held) >= 4, held
    for sent, _ in held:
        assert sum(1 for s, end in held if s <= sent < end) <= 4, (sent, held)
    for j in honest:
        assert j.wait(60) == 0


def test_implausible_results_are_refused_and_never_credited(procs, factor_wasm):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.dealer("dealer", "factoring.py", str(N), "--chunk", CHUNK, port=port)
    fuel = procs.start(
        "fuel",
        [PY, WRONG, addr, "--fuel", str(2**64 - 1), "--count", "2", "--source", "127.0.0.70"]
        + ["--name", "fuel", "--max-idle", "10"],
    )
    big = procs.start(
        "big",
        [PY, WRONG, addr, "--output-bytes", str(100 * 1024), "--count", "2"]
        + ["--source", "127.0.0.71", "--name", "big", "--max-idle", "10"],
    )
    assert fuel.wait(60) == 0 and big.wait(60) == 0
    assert "implausible: fuel 18446744073709551615 exceeds the job's fuel limit" in fuel.stderr
    assert "implausible: 102400 bytes of output exceed the job's limit of 65536" in big.stderr
    honest = procs.jobber("h", addr, extra=("--max-idle", "5"))
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
    rows = summary(dealer.stderr)
    for liar in ("fuel", "big"):
        assert rows[liar][0] == 0 and rows[liar][3] == 0 and rows[liar][2] == 2
    assert rows["h"][0] == JOBS
    assert honest.wait(60) == 0


def test_floods_of_large_frames_leave_the_dealer_small_and_serving(procs, factor_wasm):
    port = free_port()
    dealer = procs.dealer("dealer", "factoring.py", str(N), "--chunk", CHUNK, port=port)
    info = wait_status(port, lambda s: s["drawn"] >= 0)
    address = f"tcp://127.0.0.1:{port}#{info['key']}"
    before = rss_mb(dealer.pid)
    blob = b"\x00" * (32 * 1024 * 1024)
    floods = [CurveClient(address, source=f"127.0.1.{i}") for i in range(1, 9)]
    try:
        for c in floods:
            for _ in range(4):
                c.send(blob)  # 8 connections x 4 frames of 32 MiB: 1 GiB offered
        probe = CurveClient(address, source="127.0.0.80")
        try:
            # the dealer still answers, and took none of it into memory
            assert isinstance(probe.ask(p.StatusQuery(1)), p.StatusReply)
        finally:
            probe.close()
        wait_for(lambda: rss_mb(dealer.pid) < before + 150, 60, "the dealer's memory to settle")
    finally:
        for c in floods:
            c.close()
    assert rss_mb(dealer.pid) < before + 150
    honest = procs.jobber("h", f"127.0.0.1:{port}", extra=("--max-idle", "5"))
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
    assert honest.wait(60) == 0


def test_deny_over_the_network_needs_the_admin_key(procs, factor_wasm):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    # redundancy 2: the liar alone cannot finish the batch while we deal with it
    dealer = procs.dealer(
        "dealer", "factoring.py", str(N), "--chunk", CHUNK, "--redundancy", "2", port=port
    )
    liar = procs.start(
        "liar", [PY, WRONG, addr, "--name", "liar", "--source", "127.0.0.90", "--max-idle", "4"]
    )
    info = wait_status(port, lambda s: "liar" in by_name(s))
    key = by_name(info)["liar"]["key"]
    stranger_key = procs.cwd / "stranger"
    keygen = procs.start("keygen", [PY, "-m", "dealer", "keygen", stranger_key])
    assert keygen.wait(30) == 0 and re.fullmatch(r"[0-9a-f]{64}\n", keygen.stdout)
    refused = procs.start(
        "refused", [PY, "-m", "dealer", "deny", key, addr, "--admin-key", stranger_key]
    )
    assert refused.wait(30) == 1 and "forbidden" in refused.stderr
    # the dealer made its admin key beside its journal
    allowed = procs.start(
        "allowed",
        [PY, "-m", "dealer", "deny", key, addr, "--admin-key", procs.cwd / "admin"]
        + ["--reason", "caught lying"],
    )
    assert allowed.wait(30) == 0, allowed.stderr
    assert f"{key} denied" in allowed.stdout
    info = wait_status(port, lambda s: key in s["denied"])
    assert by_name(info)["liar"]["denied"]
    assert liar.wait(60) == 0
    honest = [procs.jobber(f"h{i}", addr, extra=("--max-idle", "5")) for i in (1, 2)]
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
    for j in honest:
        assert j.wait(60) == 0


def test_a_pinned_dealer_that_changes_its_key_is_refused_loudly(procs, factor_wasm, tmp_path):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    first = procs.dealer("first", "factoring.py", str(N), "--chunk", CHUNK, port=port)
    j = procs.jobber("j", addr, extra=("-v",))
    j.wait_for(r"trusting its key [0-9a-f]{64} on first use", 30)
    j.wait_for(r"\d+ jobs from", 30)
    first.kill()
    other_dir = tmp_path / "elsewhere"
    other_dir.mkdir()
    impostor = procs.dealer(
        "impostor", "factoring.py", str(N), "--chunk", CHUNK, port=port, db=other_dir / "x.sqlite"
    )
    impostor.wait_for("listening on", 30)
    j.wait_for(
        r"dealer tcp://127.0.0.1:\d+: key mismatch: it now presents key [0-9a-f]{64}, "
        "not the pinned",
        60,
    )
    info = wait_status(port, lambda s: True)
    assert info["jobbers_total"] == 0  # the jobber never talked to it
    j.kill()
    impostor.kill()


def test_spoofing_another_jobbers_results_and_holding_changes_nothing(procs, factor_wasm):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    dealer = procs.dealer(
        "dealer", "factoring.py", str(N), "--chunk", CHUNK, "--redundancy", "2", port=port
    )
    victim = procs.jobber("victim", addr, extra=("--max-idle", "5"))
    info = wait_status(port, lambda s: s["replicas_out"] >= 1 and "victim" in by_name(s))
    spoofer = CurveClient(f"tcp://{addr}#{info['key']}", source="127.0.0.100")
    try:
        host = p.HostFacts(1, 1024, 1)
        mine = spoofer.ask(p.Bored(1, "victim", host, 1))
        assert isinstance(mine, p.Jobs) and mine.jobs
        prefix, _, seq = mine.jobs[0].tag.partition(".")
        # tags are easy to guess: try every one near its own, under the victim's name
        guesses = tuple(
            p.Result(f"{prefix}.{i:x}", p.Status.OK, b"", 1) for i in range(int(seq, 16) + 8)
        )
        forged = spoofer.ask(p.Results(2, "victim", guesses))
        assert isinstance(forged, p.Ack)
        took = set(forged.tags)
        assert took <= {mine.jobs[0].tag}  # only its own replica could count
        assert all(
            r.code in (p.ErrorCode.UNKNOWN_TAG, p.ErrorCode.SETTLED) for r in forged.rejected
        )
        # "the victim holds nothing": releases only the spoofer's own replicas
        spoofer.ask(p.Bored(3, "victim", host, 0, holding=()))
    finally:
        spoofer.close()
    honest = procs.jobber("h", addr, extra=("--max-idle", "5"))
    assert dealer.wait(120) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
    rows = summary_rows(dealer.stderr)
    victims = {key: counts for name, key, *counts in rows if name == "victim"}
    assert len(victims) == 2  # the name is a label: two keys wrote it
    real, fake = sorted(victims.values(), reverse=True)
    assert real[0] == JOBS and real[2] == 0  # every job; none lost, none failed
    assert fake[0] == 0 and fake[3] == 0  # the spoofer won nothing
    assert victim.wait(60) == 0 and honest.wait(60) == 0
