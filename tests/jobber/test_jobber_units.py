"""The jobber's pure parts: backoff schedule, idle detection, throttle, spool, config."""

from __future__ import annotations

import random

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

import protocol as p
from jobber._idle import HostReading, IdleDetector, Throttle, _input_interrupts
from jobber._sockets import _monitor
from jobber._spool import Spool
from net._backoff import Backoff, backoff_s

mins = st.floats(0.01, 120.0)
caps = st.floats(0.01, 86400.0)
units = st.floats(0.0, 0.999999)


@given(st.integers(0, 10_000), mins, caps, units)
def test_backoff_is_bounded(n, lo, hi, u):
    hi = max(lo, hi)
    wait = backoff_s(n, lo, hi, u)
    if n == 0:
        assert wait == 0.0
    else:
        assert 0.5 * min(lo, hi) <= wait + 1e-9 and wait <= hi + 1e-9


@given(st.integers(1, 200), mins, caps, units)
def test_backoff_does_not_decrease_until_the_cap(n, lo, hi, u):
    hi = max(lo, hi)
    # with the same jitter draw, each failure waits at least as long as the one before
    assert backoff_s(n + 1, lo, hi, u) >= backoff_s(n, lo, hi, u)


@given(st.integers(1, 60), mins, caps)
def test_backoff_doubles_then_caps(n, lo, hi):
    hi = max(lo, hi)
    assert backoff_s(n, lo, hi, 0.0) == min(hi, lo * 2 ** (n - 1))


@given(st.lists(st.booleans(), max_size=50), st.integers(0, 2**32))
def test_backoff_state_resets_on_success(outcomes, seed):
    b = Backoff(1.0, 100.0, rng=random.Random(seed))
    now = 0.0
    for ok in outcomes:
        if ok:
            b.succeeded()
            assert b.failures == 0 and b.ready(now)
        else:
            wait = b.failed(now)
            assert 0.5 <= wait <= 100.0
            assert not b.ready(now) and b.ready(now + wait)
        now += 1.0


def test_idle_detector_waits_for_quiet_and_reacts_at_once():
    d = IdleDetector(2, load_threshold=0.5, idle_after_s=10.0)
    assert d.update(HostReading(0.0, 100), own_running=0, now=0.0)  # never seen busy
    assert not d.update(HostReading(3.0, 100), own_running=1, now=1.0)  # others load 2 > 1
    assert not d.update(HostReading(0.2, 100), own_running=0, now=5.0)
    assert d.update(HostReading(0.2, 100), own_running=0, now=11.0)
    assert not d.update(HostReading(0.2, 101), own_running=0, now=12.0)  # a key was pressed
    assert not d.update(HostReading(0.2, 101), own_running=0, now=21.0)
    assert d.update(HostReading(0.2, 101), own_running=0, now=22.0)
    # our own jobs do not count as the owner's load
    assert d.update(HostReading(2.0, 101), own_running=2, now=23.0)


def test_input_interrupts_are_read_from_proc_interrupts(tmp_path):
    f = tmp_path / "interrupts"
    f.write_text(
        "           CPU0       CPU1\n"
        "  1:         10          5   IO-APIC   1-edge      i8042\n"
        " 12:        100          0   IO-APIC  12-edge      i8042\n"
        " 24:       9999       9999   PCI-MSI  eth0\n"
    )
    assert _input_interrupts(f) == 115
    f.write_text("           CPU0\n 24:  5  PCI-MSI eth0\n")
    assert _input_interrupts(f) is None
    assert _input_interrupts(tmp_path / "missing") is None


def test_throttle_runs_the_given_share_of_each_period():
    t = Throttle(25, period_s=2.0)
    samples = [t.running(i / 1000) for i in range(0, 20_000)]
    assert abs(sum(samples) / len(samples) - 0.25) < 0.01
    assert t.next_change(0.0) == pytest.approx(0.5)
    assert t.next_change(1.0) == pytest.approx(1.0)
    assert Throttle(100).running(123.4)
    with pytest.raises(ValueError):
        Throttle(0)


def test_spool_keeps_results_until_removed_and_survives_torn_files(tmp_path):
    spool = Spool(tmp_path / "spool")
    r1 = p.Result("ab.1", p.Status.OK, b"\x00out", 5, "")
    r2 = p.Result("ab.2", p.Status.TRAP, b"", 7, "unreachable")
    r3 = p.Result("../../etc/x", p.Status.OK)  # a hostile tag names no file
    spool.put_many([("tcp://a:1", r1), ("tcp://b:2", r2)])  # one batch, one file
    spool.put("tcp://a:1", r3)
    assert len(list((tmp_path / "spool").glob("*.spool"))) == 2
    again = Spool(tmp_path / "spool")
    loaded = {(s.dealer, s.result.tag): s.result for s in again.load()}
    assert loaded == {
        ("tcp://a:1", "ab.1"): r1,
        ("tcp://b:2", "ab.2"): r2,
        ("tcp://a:1", r3.tag): r3,
    }
    assert not (tmp_path / "etc").exists()
    again.remove("tcp://a:1", "ab.1")
    assert again.count() == 2
    assert len(list((tmp_path / "spool").glob("*.spool"))) == 2  # ab.2 keeps its batch
    again.remove("tcp://b:2", "ab.2")
    assert len(list((tmp_path / "spool").glob("*.spool"))) == 1  # the batch is done: gone
    # a torn write (crash mid-file) is set aside, not fatal
    (torn,) = (tmp_path / "spool").glob("*.spool")
    torn.write_bytes(torn.read_bytes()[:5])
    assert Spool(tmp_path / "spool").load() == []
    assert len(list((tmp_path / "spool").glob("*.bad"))) == 1


def test_a_new_batch_never_overwrites_an_old_one_and_a_result_lives_in_one_batch(tmp_path):
    spool = Spool(tmp_path / "spool")
    r = p.Result("ab.1", p.Status.OK, b"x", 1)
    spool.put("tcp://a:1", r)
    later = Spool(tmp_path / "spool")  # a restart: numbering goes on after the files there
    assert len(later.load()) == 1
    later.put("tcp://a:1", r)  # spooled again (a retry after a full disk)
    assert len(list((tmp_path / "spool").glob("*.spool"))) == 1  # the old batch went
    later.remove("tcp://a:1", "ab.1")
    assert not list((tmp_path / "spool").glob("*.spool"))


def test_a_batch_of_another_schema_is_set_aside_and_an_old_spool_is_read(tmp_path):
    import msgpack

    from jobber._spool import legacy_path

    root = tmp_path / "spool"
    root.mkdir()
    (root / "000000000001.spool").write_bytes(msgpack.packb({"schema": 99, "results": []}))
    old = legacy_path(root, "tcp://a:1", "ab.7")
    old.parent.mkdir()
    r = p.Result("ab.7", p.Status.OK, b"y", 3)
    old.write_bytes(msgpack.packb({"dealer": "tcp://a:1", "result": r._to_wire()}))
    spool = Spool(root)
    assert [(s.dealer, s.result) for s in spool.load()] == [("tcp://a:1", r)]
    assert (root / "000000000001.bad").exists()
    spool.remove("tcp://a:1", "ab.7")
    assert not old.exists()


def test_a_warning_that_keeps_coming_is_logged_once_then_counted(caplog):
    import logging

    from jobber._quiet import Repeats

    log = logging.getLogger("test.repeats")
    r = Repeats(log, every_s=60.0)
    text = "dealer x sent payload 1234 whose bytes hash to 5678; ignored"
    with caplog.at_level(logging.WARNING, logger="test.repeats"):
        for i in range(20_000):  # thousands of times a minute
            r.warn(i * 0.0025, "bad", lambda: text)
        r.warn(61.0, "bad", lambda: text)  # a minute on: one line with the count
        r.warn(61.5, "other", lambda: "something else")  # another warning: its own line
    assert [rec.getMessage() for rec in caplog.records] == [
        text,
        f"{text} (and 19999 times more in the last 61 s)",
        "something else",
    ]


def test_a_dealer_socket_s_monitor_never_collides_with_a_closed_one_s():
    """ZeroMQ closes sockets on its own thread, later; a monitor named after the socket's
    file descriptor (pyzmq's default) collided with a closed socket's still-bound one when
    the descriptor was reused at once ("Address already in use": a jobber died so under
    load). Each monitor's address is its own."""
    ctx = zmq.Context()
    ctx.set(zmq.MAX_SOCKETS, 8192)  # closed sockets count until ZeroMQ's thread reaps them
    try:
        for _ in range(2000):  # pyzmq's default failed 13 times in 2,000 here
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            mon = _monitor(s)
            s.connect("tcp://127.0.0.1:9")
            mon.close(linger=0)
            s.close(linger=0)
    finally:
        ctx.term()
