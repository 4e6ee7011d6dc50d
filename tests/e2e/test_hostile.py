"""End to end: a hostile dealer (tests/hostile_dealer.py, written from docs/protocol.md)
cannot make a lent machine hold more than its owner's options allow, and an honest
dealer's batch on the same jobber still completes (issue 20, items 1 and 6).

The jobber runs as the issue's lender ran it: one slot, --memory 64, --cache-mb 20,
--spool-mb 10. Its processes' memory (the jobber and its slot's worker, from /proc), the
cache's and the spool's bytes on disk are sampled while the hostile dealer floods it, and
each peak is held to the formula of docs/jobber.md ("What a dealer can make this machine
hold"), evaluated for these options.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest

import protocol as p
from jobber._sockets import RECV_HWM
from tests.helpers import PY, ROOT, free_port

MIB = 1024 * 1024
SLOTS, MEMORY_MB, CACHE_MB, SPOOL_MB = 1, 64, 20, 10
# the honest batch: about 50 jobs of a few milliseconds
SMALL = "1000036000099"
SMALL_LINE = "1000036000099 = 1000003 * 1000033"
ATTACK_S = 12.0  # the flood lasts at least this long, the honest batch or not
# docs/jobber.md: the jobber's own process, and one slot's worker before its job's
# memory (Python, pyzmq, wasmtime and a small module's code): measured about 45 and 50 MB
OWN_BYTES = 64 * MIB
WORKER_BYTES = 64 * MIB


def most_memory(slots: int, memory_mb: int, dealers: int) -> int:
    """docs/jobber.md's bound on the jobber's processes' memory for these options."""
    inputs = slots * memory_mb * MIB  # Settings.input_budget(): held, and copied to workers
    frame = p.MAX_MESSAGE_BYTES
    return (
        OWN_BYTES
        + slots * (WORKER_BYTES + memory_mb * MIB)
        + 2 * inputs
        + dealers * (RECV_HWM + 1) * frame
        + 2 * frame
    )


def _tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            for kid in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                out += _tree(int(kid))
    except OSError:  # gone meanwhile
        pass
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (the slots' workers)."""
    total = 0
    for q in _tree(pid):
        try:
            for line in Path(f"/proc/{q}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def disk_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            # removed meanwhile: an eviction, a temporary file renamed into place
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


@pytest.mark.parametrize(
    "mode",
    [
        ("stdin",),  # 4 jobs of 15 MiB stdin every 0.5 s; asked: `want` of them
        ("payloads",),  # 60 distinct 1 MiB payloads a message; asked: `want` of them
        ("output", "--output-mb", "4"),  # 4 MiB outputs, never acknowledged
        ("output", "--output-mb", "32"),  # outputs over the spool share: never taken
    ],
    ids=lambda m: "-".join(m),
)
def test_a_hostile_dealer_cannot_make_the_jobber_hold_more_than_its_options_allow(
    procs, tmp_path, factor_wasm, mode
):
    # -P: tests/ (whose tests/protocol folder would hide the package) is not on its path
    hostile = procs.start("hostile", [PY, "-P", ROOT / "tests" / "hostile_dealer.py", *mode])
    address = hostile.wait_for(r"tcp://\S+#[0-9a-f]{64}", 30, stream="stdout").group(0)
    port = free_port()
    honest = procs.dealer("honest", "factoring.py", SMALL, "--chunk", "20000", port=port)
    options = ("--memory", str(MEMORY_MB), "--cache-mb", str(CACHE_MB))
    options += ("--spool-mb", str(SPOOL_MB))
    # an answer and the flood behind it are tens of MiB: on a busy machine they take longer
    # than the 2 s the tests' jobbers wait by default, and a link given up drops them unread
    options += ("--request-timeout", "10")
    j = procs.jobber("j", address, f"127.0.0.1:{port}", slots=SLOTS, extra=options)
    data = tmp_path / "data-j"
    peak = peak_cache = peak_spool = 0
    started = time.monotonic()
    batch_s = None
    while time.monotonic() - started < max(ATTACK_S, 60.0 if batch_s is None else 0.0):
        assert j.popen.poll() is None, j.stderr[-3000:]
        peak = max(peak, rss_bytes(j.pid))
        peak_cache = max(peak_cache, disk_bytes(data / "cache"))
        peak_spool = max(peak_spool, disk_bytes(data / "spool"))
        if batch_s is None and honest.popen.poll() is not None:
            batch_s = time.monotonic() - started
        if batch_s is not None and time.monotonic() - started >= ATTACK_S:
            break
        time.sleep(0.1)
    print(
        f"{' '.join(mode)}: jobber peak {peak / 1e6:.0f} MB, cache {peak_cache / 1e6:.1f} MB, "
        f"spool {peak_spool / 1e6:.1f} MB; honest batch {batch_s} s"
    )
    assert batch_s is not None, "the honest batch did not end beside the flood"
    assert honest.wait(60) == 0, honest.stderr[-3000:]
    assert honest.stdout.strip() == SMALL_LINE  # the honest batch is right
    assert peak <= most_memory(SLOTS, MEMORY_MB, dealers=2), peak
    # the cache: --cache-mb, the jobs in hand's payloads included (their compiled forms
    # are a few KiB here)
    assert peak_cache <= CACHE_MB * MIB + MIB, peak_cache
    # the spool: the hostile dealer's share at most; the honest one acknowledges its own
    assert peak_spool <= SPOOL_MB * MIB + MIB, peak_spool
    if mode[0] != "output" or mode[-1] == "4":
        assert "we did not ask for" in j.stderr  # the unasked floods were refused
    if mode[0] == "output":
        assert "asking it for no more work" in j.stderr or "given back unrun" in j.stderr
    assert "Traceback" not in j.stderr
