"""End to end, the lender's view: what the machine does, for whom and why (status, in
text and JSON), a changed dealer key shown at once and accepted by one command, the
owner's suspension and preferences kept across restarts, and quit never resuming
what the owner suspended. Real dealers and jobbers on loopback, real wasm."""

from __future__ import annotations

import json
import signal
import subprocess
import time

from tests.helpers import PY, ROOT, free_port, jobber_status, wait_for

SPIN = str(ROOT / "tests" / "task_files" / "spin.py")
CONTACT = "ann@lab.example"


def ctl(procs, data, *words: str) -> subprocess.CompletedProcess:
    """`python -m jobber WORDS... --data-dir DATA`, run to its end."""
    return subprocess.run(
        [PY, "-m", "jobber", *words, "--data-dir", str(data)],
        cwd=procs.cwd,
        env=procs.env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def dealer_of(status: dict, port: int) -> dict:
    (d,) = [d for d in status["dealers"] if d["address"] == f"tcp://127.0.0.1:{port}"]
    return d


def test_status_says_what_for_whom_and_why_and_the_owner_s_word_is_kept(procs, tmp_path):
    port = free_port()
    dealer = procs.dealer(
        "dealer", SPIN, "--jobs", "100000", "--iters", "3000000", "--contact", CONTACT, port=port
    )
    data = tmp_path / "data-lend"
    j = procs.jobber("lend", f"127.0.0.1:{port}")
    # for whom: the task's name and its researcher, as the dealer announced them; what the
    # machine earned there, in the dealer's own account (credit: fuel of accepted work)
    d = wait_for(
        lambda: (s := _status_or_none(data)) and (d := dealer_of(s, port))["credit"] and d,
        120,
        "credit reported by the dealer",
    )
    assert (d["task"], d["contact"]) == ("Spin", CONTACT)
    assert d["account"]["valid"] >= 1 and d["done"] >= 1 and d["key_mismatch"] is None
    text = ctl(procs, data, "status")
    assert text.returncode == 0, text.stderr
    assert f": Spin, {CONTACT}" in text.stdout and "credit " in text.stdout
    assert "results taken in this run" in text.stdout
    # what: each running job's task, time run and time left of its limit (30 s)
    run = wait_for(lambda: jobber_status(data)["running"], 60, "a job running")[0]
    assert run["task"] == "Spin" and 0 <= run["left_s"] <= 30
    # the owner's suspension survives a restart; quit resumes nothing it suspended
    out = ctl(procs, data, "suspend")
    assert out.returncode == 0 and "suspended: suspended by the owner" in out.stdout
    assert ctl(procs, data, "quit").returncode == 0
    assert j.wait(60) == 0, j.stderr
    after = j.stderr[j.stderr.index("jobs suspended") :]
    assert "jobs resumed" not in after  # given back at once, never run again for its grace
    assert json.loads((data / "owner.json").read_text())["suspended"] is True
    j2 = procs.jobber("lend", f"127.0.0.1:{port}", log="lend-2")
    s = wait_for(lambda: _status_or_none(data), 60, "the jobber answering again")
    assert s["suspended"] == "suspended by the owner" and s["owner"]["suspended"]
    assert ctl(procs, data, "resume").returncode == 0
    wait_for(lambda: jobber_status(data)["done"] >= 1, 120, "work again after resume")
    j2.signal(signal.SIGTERM)
    assert j2.wait(60) == 0
    dealer.kill()


def _status_or_none(data):
    try:
        return jobber_status(data)
    except (ConnectionError, TimeoutError):
        return None


def test_a_changed_dealer_key_is_shown_at_once_and_accepted_by_one_command(procs, tmp_path):
    port = free_port()
    first = procs.dealer("first", SPIN, "--jobs", "3", "--iters", "1000", port=port)
    data = tmp_path / "data-tofu"
    # a long backoff: a key mismatch found only after it would take a minute or more
    j = procs.jobber(
        "tofu",
        f"127.0.0.1:{port}",
        extra=("--min-backoff", "120", "--max-backoff", "600", "--request-timeout", "2"),
    )
    assert first.wait(120) == 0, first.stderr  # its batch done, the dealer gone
    old = dealer_of(jobber_status(data), port)["key"]
    # the batch started again elsewhere: same port, another journal, another key
    second = procs.dealer("second", SPIN, "--jobs", "5", "--iters", "1000", port=port)
    mismatch = wait_for(
        lambda: dealer_of(jobber_status(data), port)["key_mismatch"],
        45,  # the backoff is at least 60 s (120 s, jittered by 0.5 to 1)
        "the key mismatch shown",
    )
    assert mismatch["pinned"] == old and mismatch["presented"] != old
    new = mismatch["presented"]
    assert mismatch["accept"] == f"python -m jobber accept-key tcp://127.0.0.1:{port}#{new}"
    text = ctl(procs, data, "status").stdout
    assert "KEY MISMATCH" in text and old in text and new in text and mismatch["accept"] in text
    out = ctl(procs, data, *mismatch["accept"].split()[3:])
    assert out.returncode == 0, out.stderr
    assert second.wait(120) == 0, second.stderr  # asked at once: the backoff was lifted
    assert second.stdout.strip().endswith("5 jobs done")
    d = dealer_of(jobber_status(data), port)
    assert (d["key"], d["key_mismatch"], d["refused"]) == (new, None, None)
    assert f"tcp://127.0.0.1:{port} {new}" in (data / "known_dealers").read_text()
    j.signal(signal.SIGTERM)
    assert j.wait(60) == 0


def test_preferences_from_the_command_line_and_the_control_socket(procs, tmp_path):
    port = free_port()
    dealer = procs.dealer("dealer", SPIN, "--jobs", "4", "--iters", "1000", port=port)
    data = tmp_path / "data-prefs"
    hour = time.localtime().tm_hour
    closed = f"{(hour + 2) % 24}-{(hour + 3) % 24}"  # a window that does not hold now
    j = procs.jobber("prefs", f"127.0.0.1:{port}", extra=("--compute-hours", closed))
    s = wait_for(lambda: _status_or_none(data), 60, "the jobber answering")
    assert s["suspended"] == f"outside the owner's compute hours ({closed})"
    assert s["prefs"]["compute_hours"] == closed
    # kept in the data directory, and changed there by the owner's command
    assert json.loads((data / "owner.json").read_text())["prefs"]["compute_hours"] == closed
    bad = ctl(procs, data, "prefs", "max_disk_pct=300")
    assert bad.returncode == 1 and "0 to 100" in bad.stderr
    out = ctl(procs, data, "prefs", "compute_hours=none", "memory_idle_mb=64", "no_battery=true")
    assert out.returncode == 0, out.stderr
    assert "preferences: no_battery, memory_idle_mb=64" in out.stdout
    assert dealer.wait(120) == 0, dealer.stderr  # no longer held: the batch runs
    assert dealer.stdout.strip().endswith("4 jobs done")
    kept = json.loads((data / "owner.json").read_text())["prefs"]
    assert (kept["compute_hours"], kept["memory_idle_mb"], kept["no_battery"]) == (None, 64, True)
    j.signal(signal.SIGTERM)
    assert j.wait(60) == 0
