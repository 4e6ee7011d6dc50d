"""End to end, the jobber's side: dealers down, referrals, spool across restarts,
clean shutdown, local control and configuration files."""

from __future__ import annotations

import contextlib
import hashlib
import re
import signal
import stat
import subprocess
import time

import pytest

from tests.helpers import (
    CHUNK,
    JOBS,
    LINE,
    PY,
    N,
    by_hand,
    by_name,
    fake_dealer,
    free_port,
    jobber_status,
    routine,
    summary,
    wait_for,
    wait_status,
)

SMALL = "1000036000099"
SMALL_LINE = "1000036000099 = 1000003 * 1000033"


def test_down_dealer_is_backed_off_while_the_other_is_served(procs, factor_wasm):
    up, down = free_port(), free_port()
    dealer = procs.dealer("dealer", "factoring.py", SMALL, "--chunk", "20000", port=up)
    j = procs.jobber(
        "j",
        f"127.0.0.1:{down}",
        f"127.0.0.1:{up}",
        extra=("--max-idle", "4", "--request-timeout", "0.3", "--max-backoff", "1.6"),
    )
    assert dealer.wait(90) == 0, dealer.stderr
    assert dealer.stdout.strip() == SMALL_LINE
    assert j.wait(60) == 0, j.stderr
    fails = [
        (int(m.group(1)), float(m.group(2)))
        for m in re.finditer(
            rf"dealer tcp://127.0.0.1:{down}: (?:no answer within 0.3 s|no contact); "
            r"failure (\d+), "
            r"backed off for ([\d.]+) s",
            j.stderr,
        )
    ]
    assert len(fails) >= 3, j.stderr
    assert [n for n, _ in fails] == list(range(1, len(fails) + 1))  # never reset: never reached
    waits = [w for _, w in fails]
    assert all(0.1 - 1e-9 <= w <= 1.6 for w in waits)
    # doubling: the jittered wait is within [base/2, base] of min(1.6, 0.2 * 2**(n-1))
    for n, w in fails:
        base = min(1.6, 0.2 * 2 ** (n - 1))
        assert base / 2 - 0.01 <= w <= base + 0.01


def test_referral_leads_the_jobber_to_the_dealer_with_work(procs, factor_wasm):
    work, entry = free_port(), free_port()
    dealer = procs.dealer("dealer", "factoring.py", SMALL, "--chunk", "20000", port=work)
    referrer = procs.start(
        "referrer",
        [
            PY,
            "-m",
            "dealer",
            "refer",
            "--bind",
            f"tcp://127.0.0.1:{entry}",
            "--peer",
            f"127.0.0.1:{work}",
        ],
    )
    referrer.wait_for("referring jobbers", 30)
    j = procs.jobber("j", f"127.0.0.1:{entry}", extra=("--max-idle", "4"))
    assert dealer.wait(90) == 0, dealer.stderr
    assert dealer.stdout.strip() == SMALL_LINE
    assert j.wait(60) == 0
    assert f"dealer tcp://127.0.0.1:{work} added by referral (depth 1)" in j.stderr
    referrer.signal(signal.SIGTERM)
    assert referrer.wait(30) == 0


def test_jobber_killed_with_spooled_results_delivers_them_after_restart(
    procs, factor_wasm, tmp_path
):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    db = tmp_path / "journal.sqlite"
    first = procs.dealer("first", "factoring.py", str(N), "--chunk", CHUNK, port=port, db=db)
    j1 = procs.jobber("j1", addr)
    wait_status(port, lambda s: s["accepted"] >= 1)
    first.kill()  # the dealer goes away: what j1 finishes now waits in its spool
    spooled = wait_for(
        lambda: jobber_status(tmp_path / "data-j1")["spooled"], 30, "a result spooled", 0.1
    )
    j1.kill()  # and the jobber dies too, with results undelivered
    second = procs.dealer("second", "factoring.py", str(N), "--chunk", CHUNK, port=port, db=db)
    again = procs.jobber("j1", addr, extra=("--max-idle", "5"), log="j1-again")
    assert second.wait(120) == 0, second.stderr
    assert second.stdout.strip() == LINE
    assert re.search(r"spool holds (\d+) results from an earlier run", again.stderr)
    assert int(re.search(r"spool holds (\d+)", again.stderr).group(1)) >= spooled
    assert summary(second.stderr)["j1"][0] == JOBS  # every job once, all by j1
    assert again.wait(60) == 0
    assert jobber_status_after_exit(tmp_path / "data-j1") == 0


def jobber_status_after_exit(data_dir) -> int:
    """Results left in a stopped jobber's spool."""
    from jobber._spool import Spool

    return len(Spool(data_dir / "spool").load())


def test_sigterm_gives_back_unstarted_jobs_for_immediate_reissue(procs, factor_wasm):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    # a deadline far away: only the give-back can get the jobs reissued in time
    dealer = procs.dealer(
        "dealer", "factoring.py", str(N), "--chunk", CHUNK, "--deadline", "600", port=port
    )
    quitter = procs.jobber("quitter", addr, extra=("-v", "--grace", "0"))
    quitter.wait_for(r"\d+ jobs from", 30)
    quitter.signal(signal.SIGTERM)
    assert quitter.wait(30) == 0, quitter.stderr
    assert "stopping:" in quitter.stderr
    other = procs.jobber("other", addr, extra=("--max-idle", "5"))
    assert dealer.wait(90) == 0, dealer.stderr
    assert dealer.stdout.strip() == LINE
    rows = summary(dealer.stderr)
    # every job once; the quitter may have finished the one it was running before the signal
    assert rows["other"][0] + rows.get("quitter", (0,))[0] == JOBS
    assert rows.get("quitter", (0,))[0] <= 1
    assert other.wait(60) == 0


def test_local_control_status_suspend_resume_quit(procs, tmp_path):
    port = free_port()
    addr = f"127.0.0.1:{port}"
    # a minute of work or more (1000 loops of 50 million turns): it cannot all be done
    # before the suspension, however fast the machine, so there is work to resume
    spin = "../tests/task_files/spin.py"
    dealer = procs.dealer("dealer", spin, "--jobs", "1000", "--iters", "50000000", port=port)
    config = tmp_path / "jobber.toml"
    data = tmp_path / "data-cfg"
    config.write_text(
        f'dealers = ["{addr}"]\nname = "from-config"\nslots = 1\ndata-dir = "{data}"\n'
        "min_backoff = 0.2\nmax_backoff = 1.0\n"
    )
    j = procs.start("cfg", [PY, "-m", "jobber", "--config", config])

    def ctl(cmd: str, *extra: str):
        proc = procs.start(
            f"ctl-{cmd}-{time.monotonic_ns()}",
            [PY, "-m", "jobber", cmd, "--data-dir", data, *extra],
        )
        assert proc.wait(30) == 0, proc.stderr
        return proc.stdout

    wait_status(port, lambda s: "from-config" in by_name(s))
    assert stat.S_IMODE((data / "control").stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert "jobber from-config: 1 slots" in ctl("status")
    assert "suspended: suspended by the owner" in ctl("suspend")
    before = jobber_status(data)["done"]
    assert before < 1000
    time.sleep(1.5)  # a span of time in which nothing may happen: suspended, nothing finishes
    assert jobber_status(data)["done"] == before
    ctl("resume")
    wait_status(port, lambda s: s["accepted"] > before)
    assert "stopping" in ctl("quit")
    assert j.wait(60) == 0
    missing = procs.start("nobody", [PY, "-m", "jobber", "status", "--data-dir", data])
    assert missing.wait(30) == 1 and "no jobber is running" in missing.stderr
    dealer.kill()


def test_second_jobber_on_the_same_data_dir_is_refused(procs, tmp_path):
    port = free_port()
    first = procs.jobber("same", f"127.0.0.1:{port}")
    first.wait_for("jobber same", 30)
    second = procs.jobber("same", f"127.0.0.1:{port}")
    assert second.wait(30) == 2
    assert "in use by another jobber" in second.stderr
    first.signal(signal.SIGINT)
    assert first.wait(30) == 0


def test_results_are_delivered_while_the_dealer_says_retry_later(procs, factor_wasm, tmp_path):
    """A dealer with no more work says "retry later"; that holds back asking for
    work, not the delivery of finished results (nor the jobber's exit)."""

    import protocol as p
    from tasks import Payload

    wasm = Payload.from_wat('(module (memory (export "memory") 1) (func (export "_start")))').wasm
    sha = hashlib.sha256(wasm).hexdigest()
    router, address = fake_dealer()
    j = procs.jobber("j", address, extra=("--max-idle", "2"))
    sent = False
    acked_at = None
    try:
        for ident, msg in by_hand(router, j):
            if isinstance(msg, p.Bored) and not sent:
                spec = p.JobSpec("x.0", sha, (), b"", p.Limits(), 60.0)
                router.send_multipart([ident, p.encode(p.Jobs(msg.id, (spec,), {sha: wasm}))])
                sent = True
            elif isinstance(msg, p.Bored):
                router.send_multipart([ident, p.encode(p.RetryLater(msg.id, 600.0))])
            elif isinstance(msg, p.Results):
                assert [r.tag for r in msg.results] == ["x.0"]
                router.send_multipart([ident, p.encode(p.Ack(msg.id, ("x.0",)))])
                acked_at = time.monotonic()
        assert acked_at is not None, "the result was held back by retry_later"
        assert j.wait(30) == 0
        assert not list((tmp_path / "data-j" / "spool").glob("*.spool"))
    finally:
        router.close()


def test_cpu_limit_throttles_but_finishes(procs, factor_wasm):
    port = free_port()
    dealer = procs.dealer("dealer", "factoring.py", SMALL, "--chunk", "20000", port=port)
    j = procs.jobber("j", f"127.0.0.1:{port}", extra=("--max-idle", "4", "--cpu-limit", "50"))
    assert dealer.wait(90) == 0, dealer.stderr
    assert dealer.stdout.strip() == SMALL_LINE
    assert j.wait(60) == 0, j.stderr


def test_alive_is_said_while_busy_and_a_cancel_stops_the_job(procs, factor_wasm, tmp_path):
    """A jobber holding work says `alive` even while its only slot runs an endless job;
    an `alive_ack` that cancels the job stops it, frees the slot, and no result is sent."""
    import protocol as p
    from tasks import Payload

    wasm = Payload.from_wat(
        '(module (memory (export "memory") 1) (func (export "_start") (loop br 0)))'
    ).wasm
    sha = hashlib.sha256(wasm).hexdigest()
    router, address = fake_dealer()
    j = procs.jobber("j", address, extra=("--max-idle", "3"))
    spec = p.JobSpec("x.0", sha, (), b"", p.Limits(time_s=600.0), 900.0)
    alive: list[p.Alive] = []
    cancelled_at = None
    asked_after_cancel = False
    try:
        for ident, msg in by_hand(router, j):
            if isinstance(msg, p.Bored) and not alive:
                router.send_multipart([ident, p.encode(p.Jobs(msg.id, (spec,), {sha: wasm}))])
            elif isinstance(msg, p.Bored):
                asked_after_cancel = cancelled_at is not None
                router.send_multipart([ident, p.encode(p.RetryLater(msg.id, 0.5))])
            elif isinstance(msg, p.Alive):
                alive.append(msg)
                cancel = ("x.0",) if len(alive) == 2 else ()
                if cancel:
                    cancelled_at = time.monotonic()
                router.send_multipart([ident, p.encode(p.AliveAck(msg.id, 20.0, cancel))])
            elif isinstance(msg, p.Results):
                raise AssertionError(f"a result was sent for a cancelled job: {msg}")
        assert len(alive) >= 2 and alive[0].holding == ("x.0",)
        assert alive[1].holding == ("x.0",)  # still running the endless job, still alive
        assert alive[1] is not alive[0]
        assert cancelled_at is not None and asked_after_cancel  # the slot was freed
        assert j.wait(30) == 0
        assert "1 jobs cancelled" in j.stderr
        assert not list((tmp_path / "data-j" / "spool").glob("*.spool"))
    finally:
        router.close()


def test_the_lender_s_view(procs, factor_wasm, tmp_path):
    """Exit 1 when no dealer was ever reached; a name given once is kept; status shows
    each job's dealer and time, the settings in force, and survives a closed pipe."""
    nowhere = procs.jobber(
        "lonely", f"127.0.0.1:{free_port()}", extra=("--max-idle", "1", "--request-timeout", "0.5")
    )
    assert nowhere.wait(30) == 1
    assert "never reached any dealer" in nowhere.stderr
    assert "cannot connect: refused, or the host is unreachable" in nowhere.stderr
    unknown = procs.jobber(
        "unknown", "no-such-host.invalid", extra=("--max-idle", "1", "--request-timeout", "0.5")
    )
    assert unknown.wait(30) == 1
    assert "host no-such-host.invalid does not resolve" in unknown.stderr
    assert (tmp_path / "data-lonely" / "name").read_text().strip() == "lonely"
    # started again without --name: the name given before is kept
    again = procs.start(
        "again",
        [PY, "-m", "jobber", f"127.0.0.1:{free_port()}", "--data-dir", tmp_path / "data-lonely"]
        + ["--max-idle", "1", "--request-timeout", "0.5", "--min-backoff", "0.2"],
    )
    assert again.wait(30) == 1
    assert "jobber lonely:" in again.stderr

    port = free_port()
    dealer = procs.dealer("dealer", "factoring.py", str(N), "--chunk", CHUNK, port=port)
    j = procs.jobber("j", f"127.0.0.1:{port}")
    data = tmp_path / "data-j"

    def running():
        try:
            info = jobber_status(data)
        except (ConnectionError, TimeoutError):  # not listening yet
            return None
        return info if info["running"] else None

    info = wait_for(running, 30, "a running job")
    [job] = info["running"]
    assert job["dealer"] == f"tcp://127.0.0.1:{port}" and job["elapsed_s"] >= 0
    assert info["settings"]["slots"] == 1 and info["settings"]["data_dir"] == str(data)
    piped = subprocess.run(
        f"{PY} -m jobber status --data-dir {data} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert piped.stdout.startswith("jobber j:") and "Traceback" not in piped.stderr
    assert dealer.wait(120) == 0
    j.wait_for(r"first job done: \S+ from tcp://127.0.0.1:\d+, ok", 10)
    j.signal(signal.SIGTERM)
    assert j.wait(30) == 0


def test_a_data_directory_or_control_socket_of_another_user_is_refused(procs, tmp_path):
    import os

    theirs = tmp_path / "data-theirs"  # the data directory procs.jobber gives "theirs"
    theirs.mkdir()
    os.chown(theirs, 65534, 65534)
    j = procs.jobber("theirs", f"127.0.0.1:{free_port()}", extra=("--max-idle", "1"))
    assert j.wait(30) == 2
    assert "belongs to another user (uid 65534)" in j.stderr
    assert not (theirs / "identity.key_secret").exists()  # nothing written there
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "control").write_text("")
    os.chown(planted / "control", 65534, 65534)
    ask = procs.start("ask", [PY, "-m", "jobber", "status", "--data-dir", planted])
    assert ask.wait(30) == 1
    assert "belongs to another user (uid 65534); not talking to it" in ask.stderr


def test_the_owner_s_limits_win_over_what_a_dealer_asks(procs, factor_wasm):
    """A job asking for more time or memory than the jobber allows is given back unrun
    (abandoned: no fault of the machine), and the jobber tells dealers its limits."""
    import protocol as p
    from tasks import Payload

    wasm = Payload.from_wat('(module (memory (export "memory") 1) (func (export "_start")))').wasm
    sha = hashlib.sha256(wasm).hexdigest()
    router, address = fake_dealer()
    j = procs.jobber(
        "j", address, extra=("--max-idle", "2", "--memory", "64", "--max-job-time", "5")
    )
    greedy = (
        p.JobSpec("x.0", sha, (), b"", p.Limits(time_s=1e7, memory_mb=16), 900.0),
        p.JobSpec("x.1", sha, (), b"", p.Limits(time_s=1, memory_mb=65536), 900.0),
        p.JobSpec("x.2", sha, (), b"", p.Limits(time_s=1, memory_mb=16), 900.0),
    )
    hosts, results = [], {}
    try:
        for ident, msg in by_hand(router, j):
            if isinstance(msg, p.Bored):
                hosts.append(msg.host)
                jobs = greedy[:2] if len(hosts) == 1 else greedy[2:] if len(hosts) == 2 else ()
                assert len(jobs) <= msg.want
                router.send_multipart([ident, p.encode(p.Jobs(msg.id, jobs, {sha: wasm}))])
            else:
                routine(router, ident, msg, results)
    finally:
        router.close()
    assert hosts[0].max_time_s == 5 and hosts[0].memory_mb == 64
    assert results["x.0"].status is p.Status.ABANDONED
    assert results["x.0"].detail == "refused: it asks for 1e+07 s of time (this machine allows 5)"
    assert results["x.1"].status is p.Status.ABANDONED
    assert "65536 MiB of memory (this machine allows 64)" in results["x.1"].detail
    assert results["x.2"].status is p.Status.OK  # within the owner's limits: run
    assert j.wait(30) == 0


def test_a_dealer_cannot_make_the_jobber_store_more_than_its_cache_allows(procs, tmp_path):
    import protocol as p
    from tasks import Payload

    def big(i: int) -> bytes:  # a payload of about 300 KiB, each one different
        data = (f"{i:08d}" * 40000)[: 300 * 1024]
        return Payload.from_wat(
            f'(module (memory (export "memory") 5) (data (i32.const 0) "{data}")'
            ' (func (export "_start")))'
        ).wasm

    wasms = [big(i) for i in range(8)]
    router, address = fake_dealer()
    j = procs.jobber("j", address, extra=("--max-idle", "2", "--cache-mb", "1"))
    sent = 0
    results: dict[str, p.Result] = {}
    try:
        for ident, msg in by_hand(router, j, timeout_s=60):
            if isinstance(msg, p.Bored):
                jobs, payloads = (), {}
                if sent < len(wasms):
                    sha = hashlib.sha256(wasms[sent]).hexdigest()
                    jobs = (p.JobSpec(f"x.{sent}", sha, (), b"", p.Limits(), 60.0),)
                    payloads, sent = {sha: wasms[sent]}, sent + 1
                router.send_multipart([ident, p.encode(p.Jobs(msg.id, jobs, payloads))])
            else:
                routine(router, ident, msg, results)
    finally:
        router.close()
    assert j.wait(30) == 0
    assert sorted(t for t, r in results.items() if r.status is p.Status.OK) == [
        f"x.{i}" for i in range(8)
    ]  # every job ran
    files = [f for f in (tmp_path / "data-j" / "cache").rglob("*") if f.is_file()]
    held = sum(f.stat().st_size for f in files)
    assert held <= 1024 * 1024 + 2 * 400 * 1024, held  # the cap, plus what was in use
    assert "least used removed" in j.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root, as CI and this project's machines run)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_asking_keeps_results_and_recovers(procs, small_disk):
    import protocol as p
    from tasks import Payload

    wasm = Payload.from_wat('(module (memory (export "memory") 1) (func (export "_start")))').wasm
    sha = hashlib.sha256(wasm).hexdigest()
    router, address = fake_dealer()
    data = small_disk / "data"
    j = procs.jobber("j", address, extra=("--data-dir", data, "--max-idle", "3"))
    filler = small_disk / "filler"
    state = "start"
    results: dict[str, p.Result] = {}
    bored_while_full = 0
    try:
        for ident, msg in by_hand(router, j, timeout_s=60):
            if isinstance(msg, p.Bored) and state == "start":  # fill the disk, then a job
                with open(filler, "wb") as f, contextlib.suppress(OSError):
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                spec = p.JobSpec("x.0", sha, (), b"", p.Limits(), 60.0)
                router.send_multipart([ident, p.encode(p.Jobs(msg.id, (spec,), {sha: wasm}))])
                state = "full"
            elif isinstance(msg, p.Bored) and state == "full":
                bored_while_full += 1
                router.send_multipart([ident, p.encode(p.RetryLater(msg.id, 0.2))])
            elif isinstance(msg, p.Bored) and state == "freed":
                spec = p.JobSpec("x.1", sha, (), b"", p.Limits(), 60.0)
                router.send_multipart([ident, p.encode(p.Jobs(msg.id, (spec,), {sha: wasm}))])
                state = "again"
            elif isinstance(msg, p.Bored):
                router.send_multipart([ident, p.encode(p.Jobs(msg.id, ()))])
            elif routine(router, ident, msg, results) and state == "full" and "x.0" in results:
                info = jobber_status(data)
                assert info["disk_trouble"] and "No space left" in info["disk_trouble"]
                filler.unlink()  # room again
                state = "freed"
    finally:
        router.close()
    assert j.wait(30) == 0, j.stderr
    assert "Traceback" not in j.stderr
    assert results["x.0"].status is p.Status.ABANDONED  # its payload could not be stored
    assert bored_while_full == 0  # no work asked for while the disk was full
    assert results["x.1"].status is p.Status.OK  # and work again once it had room
    assert "the disk takes writes again" in j.stderr


def test_max_idle_does_not_count_waiting_for_work_a_dealer_still_has(procs):
    """`retry_later` with `more` (work out with others may still come) is not idleness;
    `finished` ends the wait."""
    import protocol as p

    router, address = fake_dealer()
    j = procs.jobber("j", address, extra=("--max-idle", "1"))
    asked = 0
    started = None  # its first ask: a loaded machine may take seconds to start a jobber
    try:
        for ident, msg in by_hand(router, j):
            if isinstance(msg, p.Bored):
                asked += 1
                started = started or time.monotonic()
                if time.monotonic() - started < 3.0:  # three times its --max-idle
                    reply = p.RetryLater(msg.id, 0.2, "all are out", more=True)
                else:
                    reply = p.Finished(msg.id)
                router.send_multipart([ident, p.encode(reply)])
    finally:
        router.close()
    assert j.wait(30) == 0
    assert asked >= 8  # it kept asking past its --max-idle while work remained
    assert "its task is finished" in j.stderr
