"""net/_backoff.py: the schedule, the state, and its defaults."""

from __future__ import annotations

import random

import pytest

from net._backoff import JITTER, MAX_BACKOFF_S, MIN_BACKOFF_S, Backoff, backoff_s


class Fixed(random.Random):
    """A random source that always draws `u`."""

    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


def test_the_defaults_are_60_s_to_4_h_with_half_jitter():
    assert (MIN_BACKOFF_S, MAX_BACKOFF_S, JITTER) == (60.0, 14400.0, 0.5)
    b = Backoff(rng=Fixed(0.0))
    assert (b.min_s, b.max_s, b.failures, b.until) == (60.0, 14400.0, 0, 0.0)
    assert [b.failed(0.0) for _ in range(10)] == [
        60.0,
        120.0,
        240.0,
        480.0,
        960.0,
        1920.0,
        3840.0,
        7680.0,
        14400.0,
        14400.0,
    ]
    assert backoff_s(1, 60.0, 14400.0, 0.5) == 45.0  # the default jitter: up to half off


def test_a_fresh_backoff_is_ready_at_once():
    b = Backoff()
    assert b.ready(0.0)
    assert "rng" not in repr(b)  # the random source stays out of logs


@pytest.mark.parametrize("u", [0.0, 0.25, 0.999])
def test_the_nth_failure_waits_backoff_s_of_n(u):
    b = Backoff(2.0, 1000.0, rng=Fixed(u))
    now = 10.0
    for n in range(1, 12):
        wait = b.failed(now)
        assert b.failures == n
        assert wait == backoff_s(n, 2.0, 1000.0, u)
        assert b.until == now + wait
        assert not b.ready(now + wait - 1e-6) and b.ready(now + wait)
        now += 1.0
    b.succeeded()
    assert (b.failures, b.until) == (0, 0.0) and b.ready(0.0)
    assert b.failed(now) == backoff_s(1, 2.0, 1000.0, u)


def test_the_jitter_takes_off_a_share_of_the_wait():
    assert backoff_s(3, 10.0, 1000.0, 0.0) == 40.0
    assert backoff_s(3, 10.0, 1000.0, 0.5) == 30.0
    assert backoff_s(3, 10.0, 1000.0, 0.5, jitter=0.2) == 36.0
    assert backoff_s(0, 10.0, 1000.0, 0.0) == 0.0 and backoff_s(-5, 10.0, 1000.0, 0.0) == 0.0


def test_huge_failure_counts_do_not_overflow():
    # 2 ** (n - 1) is capped at 2 ** 64: beyond any cap that makes sense
    assert backoff_s(10**9, 1.0, 1e300, 0.0) == 2.0**64
    assert backoff_s(65, 1.0, 1e300, 0.0) == 2.0**64
    assert backoff_s(64, 1.0, 1e300, 0.0) == 2.0**63
