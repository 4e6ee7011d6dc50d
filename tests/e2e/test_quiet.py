"""What a researcher sees: the demo prints its progress and its answer and nothing
alarming after it; a dealer stopped by a signal closes its journal; a port in use, or a
journal holding more jobs than its task, is a clear error (exit 2), never a traceback."""

from __future__ import annotations

import signal

import pytest

from tests.helpers import LINE, PY, ROOT, N, free_port

FACTORING = ROOT / "examples" / "factoring.py"
FIRST_K = ROOT / "tests" / "task_files" / "first_k.py"


def test_the_demo_prints_its_answer_and_nothing_alarming_after_it(procs, factor_wasm):
    # the README's first command, progress bar and all (no --quiet)
    demo = procs.start("demo", [PY, FACTORING, N, "--bind", "tcp://127.0.0.1:*", "--jobbers", 2])
    assert demo.wait(300) == 0, demo.stderr
    assert demo.stdout == LINE + "\n"
    err = demo.stderr
    assert "Traceback" not in err and "refused" not in err, err
    assert " INFO " not in err.partition("listening on")[2], err  # no log lines once serving
    # the bar is closed once, before the jobbers' table: never drawn again after it
    table = err.index("\njobber ")
    assert "Factoring:" not in err[table:], err[table:]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_dealer_and_closes_its_journal(procs, factor_wasm, sig):
    port = free_port()
    argv = [PY, FACTORING, N, "--bind", f"tcp://127.0.0.1:{port}", "--db", "d.sqlite"]
    first = procs.start("first", argv)
    first.wait_for("listening on", 120)
    first.signal(sig)
    assert first.wait(30) == 128 + sig, first.stderr
    assert "interrupted; rerun the same command to resume" in first.stderr
    assert "Traceback" not in first.stderr, first.stderr
    again = procs.start("again", [*argv, "--jobbers", "1"])  # resumes, finishes
    assert again.wait(300) == 0, again.stderr
    assert again.stdout == LINE + "\n"
    assert "was not closed" not in again.stderr, again.stderr


@pytest.mark.parametrize("offset", [0, 1, -1])  # its work port, its plaintext one, and that
def test_a_port_in_use_is_a_clear_error(procs, factor_wasm, offset):
    port = free_port()
    procs.dealer("first", "factoring.py", N, port=port)
    second = procs.dealer("second", "factoring.py", N, port=port + offset, listening=False)
    assert second.wait(60) == 2, second.stderr
    err = second.stderr
    assert "Traceback" not in err, err
    taken = port + 1 if offset == 1 else port  # the first dealer's port the second wants
    assert f"127.0.0.1:{taken}" in err and "Address already in use" in err, err
    assert "--bind" in err, err


def test_a_journal_with_more_jobs_than_its_task_is_a_clear_error(procs, factor_wasm):
    argv = [PY, FIRST_K, N, "--bind", "tcp://127.0.0.1:*", "--db", "k.sqlite"]
    first = procs.start("first", [*argv, "--k", 3, "--jobbers", 1, "--quiet"])
    assert first.wait(300) == 0, first.stderr
    fewer = procs.start("fewer", [*argv, "--k", 2, "--quiet"])
    assert fewer.wait(60) == 2, fewer.stderr
    err = fewer.stderr
    assert "error: the journal holds job 2 but the task yields only 2 jobs" in err, err
    assert "--fresh" in err, err
    assert "Traceback" not in err and "could not mark" not in err, err
