"""End to end, the lender's fence: a careless or hostile dealer cannot starve the others a
jobber serves, nor fill its disk with results it never acknowledges."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import time

import protocol as p
from net._author_keys import load_trusted_key
from tasks import Payload
from tests.helpers import (
    CHUNK,
    JOBS,
    LINE,
    PY,
    ROOT,
    N,
    by_hand,
    fake_dealer,
    free_port,
    jobber_status,
    routine,
    wait_status,
)
from tests.wat import module

OUTPUT_BYTES = 200_000
# writes OUTPUT_BYTES zero bytes to stdout
LOUD = f"""
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 4)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {OUTPUT_BYTES}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


def test_a_dealer_that_never_acknowledges_cannot_fill_the_spool(procs, tmp_path):
    """It gives a job for every ask and never acknowledges a result: past --spool-mb the
    jobber asks it for nothing more; once it acknowledges, work flows again."""
    wasm = Payload.from_wat(LOUD).wasm
    sha = hashlib.sha256(wasm).hexdigest()
    router, address = fake_dealer()
    j = procs.jobber("j", address, extra=("--spool-mb", "1", "--request-timeout", "1"))
    given = fenced_asks = 0
    flooded = fenced_at = None
    results: dict[str, p.Result] = {}
    spool = tmp_path / "data-j" / "spool"
    peak = 0
    try:
        for ident, msg in by_hand(router, j, timeout_s=40):
            peak = max(peak, sum(f.stat().st_size for f in spool.rglob("*.res")))
            if fenced_at is None and "has not acknowledged" in j.stderr:
                fenced_at, flooded = time.monotonic(), given
            acking = fenced_at is not None and time.monotonic() > fenced_at + 4.0
            if isinstance(msg, p.Bored):
                fenced_asks += fenced_at is not None and not acking
                given += 1
                # an output limit the share can hold (the default 1 MiB would be given back)
                limits = p.Limits(memory_mb=16, output_kb=OUTPUT_BYTES // 1024 + 1)
                spec = p.JobSpec(f"x.{given}", sha, (), b"", limits, 60.0)
                router.send_multipart([ident, p.encode(p.Jobs(msg.id, (spec,), {sha: wasm}))])
                if acking and given >= flooded + 3:
                    break  # acknowledged, it is asked again
            elif isinstance(msg, p.Results) and not acking:
                continue  # never answered while flooding
            else:
                routine(router, ident, msg, results)
    finally:
        router.close()
        j.kill()
    assert flooded is not None, j.stderr
    assert fenced_asks == 0  # for 4 s past the share: not one ask
    # a share of 1 MiB holds 5 results of 200 KB; what was asked before it filled adds 2
    assert flooded <= 1024 * 1024 // OUTPUT_BYTES + 3, (flooded, j.stderr)
    assert peak <= 1024 * 1024 + 3 * (OUTPUT_BYTES + 4096), peak
    assert given >= flooded + 3, j.stderr
    assert len(results) >= flooded - 2  # the flood's results, delivered once acknowledged
    assert "Traceback" not in j.stderr


def test_dead_and_silent_referred_dealers_do_not_slow_the_live_one(procs, factor_wasm):
    """The jobber's first dealer refers it to 30 dealers that refuse connections or never
    speak; the real dealer beside them still gets asked whenever the jobber has room, so
    its batch ends in about the time it takes alone, and --max-idle does not cut it short."""
    live = free_port()
    silent = []
    for _ in range(8):  # TCP accepts, ZeroMQ never greets: asks time out
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        silent.append(s)
    dead = [f"tcp://127.0.0.1:{free_port()}" for _ in range(22)]  # refused at once
    referred = tuple(dead + [f"tcp://127.0.0.1:{s.getsockname()[1]}" for s in silent])
    router, address = fake_dealer()
    dealer = procs.dealer("dealer", "factoring.py", str(N), "--chunk", CHUNK, port=live)
    j = procs.jobber(
        "j", address, f"127.0.0.1:{live}", extra=("--max-idle", "10", "--request-timeout", "5")
    )
    started = time.monotonic()
    try:
        for ident, msg in by_hand(router, j, timeout_s=90):
            if isinstance(msg, p.Bored):
                router.send_multipart([ident, p.encode(p.Referral(msg.id, referred))])
            if dealer.popen.poll() is not None:
                break
        assert dealer.wait(90) == 0, dealer.stderr
        took = time.monotonic() - started
    finally:
        router.close()
        for s in silent:
            s.close()
    assert dealer.stdout.strip() == LINE
    assert j.wait(60) == 0, j.stderr
    # 11 jobs of about 0.3 s: alone a few seconds; starved (one ask per 33 s) minutes
    assert took < 30, (took, j.stderr)
    assert j.stderr.count("added by referral") == len(referred)
    assert j.stderr.count("dropped after") >= len(dead), j.stderr
    print(f"batch of {JOBS} jobs beside {len(referred)} dead referred dealers: {took:.1f} s")


def test_trust_refuses_unsigned_payloads_and_follows_a_rotation(procs, factor_wasm, tmp_path):
    """A jobber told --trust A runs what A signed; a dealer serving an unsigned payload gets
    its jobs back unrun, with a log line and status saying why; a payload signed by B, with
    B's rotation signed by A, runs, and B is trusted from then on."""
    small, line = "1000036000099", "1000036000099 = 1000003 * 1000033"
    for name in ("a", "b"):
        made = subprocess.run(
            [PY, "-m", "dealer", "keygen", "--sign", tmp_path / name], capture_output=True
        )
        assert made.returncode == 0, made.stderr
    rotated = subprocess.run(
        [PY, "-m", "dealer", "rotate", tmp_path / "a", tmp_path / "b"], capture_output=True
    )
    assert rotated.returncode == 0, rotated.stderr
    trust = ("--trust", str(tmp_path / "a.sign"), "--max-idle", "3")

    signed_port = free_port()
    signed = procs.start(
        "signed",
        [PY, ROOT / "examples" / "factoring.py", small, "--chunk", "20000", "--quiet"]
        + ["--bind", f"tcp://127.0.0.1:{signed_port}", "--db", tmp_path / "signed.sqlite"]
        + ["--sign", tmp_path / "a"],
    )
    signed.wait_for("listening on", 120)  # before the jobber's --max-idle runs out
    j1 = procs.jobber("j1", f"127.0.0.1:{signed_port}", extra=trust)
    assert signed.wait(60) == 0, signed.stderr
    assert signed.stdout.strip() == line
    assert j1.wait(30) == 0 and "refused: payload" not in j1.stderr

    plain_port = free_port()
    plain = procs.dealer("plain", "factoring.py", small, "--chunk", "20000", port=plain_port)
    j2 = procs.jobber("j2", f"127.0.0.1:{plain_port}", extra=trust[:2])
    j2.wait_for(r"refused: payload [0-9a-f]{12}: ", 30)
    status = wait_status(plain_port, lambda s: s["jobbers_total"] >= 1)
    assert status["accepted"] == 0  # nothing of it ran
    info = jobber_status(tmp_path / "data-j2")
    refused = info["refused_payloads"][f"tcp://127.0.0.1:{plain_port}"]
    assert "not signed" in refused or "no signature" in refused, refused
    assert info["trust"] == [load_trusted_key(tmp_path / "a.sign")]
    plain.kill()
    j2.kill()

    rotated_port = free_port()
    by_b = procs.start(
        "by-b",
        [PY, ROOT / "examples" / "factoring.py", small, "--chunk", "20000", "--quiet"]
        + ["--bind", f"tcp://127.0.0.1:{rotated_port}", "--db", tmp_path / "b.sqlite"]
        + ["--sign", tmp_path / "b"],
    )
    by_b.wait_for("listening on", 120)
    j3 = procs.jobber("j3", f"127.0.0.1:{rotated_port}", extra=trust)
    assert by_b.wait(60) == 0, by_b.stderr
    assert by_b.stdout.strip() == line
    assert j3.wait(30) == 0, j3.stderr
    b_key = load_trusted_key(tmp_path / "b.sign")
    assert f"author key {b_key} trusted from now on" in j3.stderr
    assert b_key in (tmp_path / "data-j3" / "trusted_keys").read_text()


def test_a_compile_bomb_from_a_dealer_ends_invalid_and_the_jobber_goes_on(procs):
    """A dealer sends a module of 200,000 functions (minutes and gigabytes to compile, were
    it compiled) and then an ordinary one: the first comes back `invalid` at once, the
    second runs, and the jobber never crashes."""
    bomb = module(200_000)
    fine = Payload.from_wat('(module (memory (export "memory") 1) (func (export "_start")))').wasm
    router, address = fake_dealer()
    j = procs.jobber("j", address, extra=("--max-idle", "3"))
    sent = 0
    results: dict[str, p.Result] = {}
    try:
        for ident, msg in by_hand(router, j, timeout_s=60):
            if isinstance(msg, p.Bored):
                jobs, payloads = (), {}
                if sent < 2:
                    wasm = (bomb, fine)[sent]
                    sha = hashlib.sha256(wasm).hexdigest()
                    jobs = (p.JobSpec(f"x.{sent}", sha, (), b"", p.Limits(memory_mb=16), 60.0),)
                    payloads, sent = {sha: wasm}, sent + 1
                router.send_multipart([ident, p.encode(p.Jobs(msg.id, jobs, payloads))])
            else:
                routine(router, ident, msg, results)
    finally:
        router.close()
    assert j.wait(30) == 0, j.stderr
    assert results["x.0"].status is p.Status.INVALID
    assert "200,000 functions, over the cap of 50,000 (MAX_FUNCTIONS)" in results["x.0"].detail
    assert results["x.1"].status is p.Status.OK
    assert "Traceback" not in j.stderr
