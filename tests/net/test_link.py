"""net/_link.py: the one Lazy Pirate rule, tested once (every link of the project uses it)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from net._link import HELLO, Backoff, KeyVerdict, Link, Request

KEY_A, KEY_B = "a" * 64, "b" * 64


class Fixed(random.Random):
    def __init__(self, u: float = 0.0) -> None:
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


def link(**kw) -> Link:
    kw.setdefault("backoff", Backoff(2.0, 60.0, rng=Fixed()))
    return Link(kw.pop("timeout_s", 10.0), **kw)


# --- the rule, example by example ---------------------------------------------------


def test_a_request_out_is_recorded_with_its_id_kind_and_deadline():
    ln = link()
    r = ln.sent("bored", 5.0)
    assert r == Request(1, "bored", 5.0, 15.0)
    assert ln.busy("bored") and ln.busy() and not ln.busy("results")
    assert not ln.may_send("bored", 5.0) and ln.may_send("results", 5.0)
    assert ln.sent("results", 5.0, rid=42).id == 42
    assert ln.sent("alive", 6.0).id == 2  # the counter goes on where it was
    with pytest.raises(ValueError, match="already out"):
        ln.sent("bored", 7.0)
    assert ln.out["bored"] == r  # the refused second request changed nothing


def test_only_a_reply_to_the_request_out_is_taken():
    ln = link()
    r = ln.sent("bored", 0.0)
    assert ln.answered(r.id + 1, 1.0) is None and ln.busy("bored")
    assert ln.answered(None, 1.0) is None and ln.busy("bored")
    assert ln.answered(r.id, 1.0, kinds=("results",)) is None and ln.busy("bored")
    assert ln.match(r.id) == r and ln.busy("bored")  # match changes nothing
    assert ln.answered(r.id, 1.0, kinds=("bored", "alive")) == r
    assert not ln.busy() and ln.answered(r.id, 1.0) is None  # a duplicate: nothing


def test_a_timeout_is_one_failed_contact_and_asks_for_a_reset():
    ln = link()
    ln.sent("bored", 0.0)
    ln.sent("results", 1.0)
    assert ln.timed_out(10.0) is None and ln.busy("bored")  # not past its deadline yet
    assert ln.next_at(10.0) == 10.0
    assert ln.timed_out(10.5) == 2.0  # both late would be one failure, as one is
    assert ln.backoff.failures == 1 and not ln.busy()
    assert ln.take_reset() and not ln.take_reset()  # asked once
    assert not ln.may_send("bored", 11.0) and ln.may_send("bored", 12.5)
    assert ln.next_at(11.0) == 12.5 and ln.next_at(20.0) == 20.0


def test_the_deadline_itself_is_late_only_where_asked():
    strict, inclusive = link(), link(late_at_deadline=True)
    for ln in (strict, inclusive):
        ln.sent("q", 0.0)
    assert strict.late(10.0) == [] and strict.late(10.000001) != []
    assert [r.kind for r in inclusive.late(10.0)] == ["q"]


def test_an_answer_resets_the_backoff():
    ln = link()
    ln.failed(0.0)
    ln.failed(0.0)
    assert ln.backoff.failures == 2 and ln.backoff.until == 4.0
    r = ln.sent("q", 4.0)
    ln.answered(r.id, 4.1)
    assert ln.backoff.failures == 0 and ln.backoff.ready(4.1)


def test_forgetting_a_request_is_neither_success_nor_failure():
    ln = link()
    ln.failed(0.0)
    ln.sent("alive", 3.0)
    assert ln.forget("alive").kind == "alive" and ln.forget("alive") is None
    assert ln.backoff.failures == 1 and ln.reset_due  # the reset still pending


def test_an_error_answered_counts_a_failure_and_leaves_the_socket_and_the_rest():
    ln = link()
    q, r = ln.sent("q", 0.0), ln.sent("r", 0.0)
    assert ln.error_answer(q.id + 7, 1.0) is None and ln.backoff.failures == 0  # not ours
    assert ln.error_answer(q.id, 1.0, kinds=("r",)) is None and ln.busy("q")
    assert ln.error_answer(q.id, 1.0) == 2.0
    assert ln.backoff.failures == 1 and ln.out == {"r": r} and not ln.take_reset()
    ln.failed(5.0)
    ln.error_answer(None, 6.0)
    assert ln.take_reset()  # an asked reset is never lost


def test_a_key_learnt_may_be_kept_without_rechecks():
    ln = link(recheck_learnt=False)
    ln.heard_key(KEY_A)
    ln.failed(0.0)
    assert not ln.check_key and ln.usable()


def test_the_timeout_must_be_positive():
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="positive"):
            Link(bad)


# --- keys -----------------------------------------------------------------------------


def test_a_key_unknown_is_learnt_on_first_use_then_rechecked_after_failures():
    ln = link()
    assert ln.needs_hello() and not ln.usable()
    assert ln.heard_key(KEY_A) is KeyVerdict.LEARNT
    assert ln.key == KEY_A and ln.key_from_hello and ln.usable()
    ln.sent("bored", 0.0)
    ln.failed(11.0)
    assert ln.check_key and ln.needs_hello() and not ln.usable()
    assert ln.heard_key(KEY_A) is KeyVerdict.KNOWN and ln.usable()


def test_a_key_given_is_not_rechecked_unless_the_caller_doubts_it():
    ln = link(key=KEY_A)
    assert ln.usable() and not ln.needs_hello()
    ln.failed(0.0)
    assert not ln.check_key and ln.usable()
    ln.failed(0.0, recheck=True)
    assert ln.check_key


def test_a_failed_hello_asks_for_no_recheck_of_its_own():
    ln = link(key=KEY_A, key_from_hello=True)
    ln.sent(HELLO, 0.0)
    ln.failed(11.0)
    assert not ln.check_key  # the hello itself failed: asking it again is the backoff's


def test_a_changed_key_is_refused_never_taken():
    ln = link(key=KEY_A)
    ln.sent("bored", 0.0)
    assert ln.heard_key(KEY_B) is KeyVerdict.CHANGED
    assert ln.key == KEY_A and "key mismatch" in ln.refused and KEY_B in ln.refused
    assert not ln.busy() and ln.take_reset()
    assert not ln.usable() and not ln.needs_hello() and not ln.may_send("bored", 1e9)


# --- the rule, whatever happens ---------------------------------------------------------

KINDS = ("bored", "results", "alive", HELLO)
KEYS = st.sampled_from((KEY_A, KEY_B, "c" * 64))


class LinkMachine(RuleBasedStateMachine):
    """Any sequence of sends, replies (right, wrong, late), errors, timeouts and hellos,
    held against the few things the rule promises."""

    def __init__(self) -> None:
        super().__init__()
        self.rng = Fixed(0.5)
        self.ln = Link(5.0, Backoff(1.0, 30.0, rng=self.rng))
        self.now = 0.0
        self.ids_used: set[int] = set()
        self.first_key: str | None = None  # the first key the link held

    @rule(dt=st.floats(0.0, 20.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(kind=st.sampled_from(KINDS))
    def send(self, kind: str) -> None:
        if not self.ln.may_send(kind, self.now):
            return
        r = self.ln.sent(kind, self.now)
        assert r.id not in self.ids_used  # never an id twice
        self.ids_used.add(r.id)
        assert r.deadline == self.now + 5.0

    @rule(kind=st.sampled_from(KINDS))
    def answer(self, kind: str) -> None:
        r = self.ln.out.get(kind)
        if r is None:
            return
        assert self.ln.answered(r.id, self.now) == r
        assert self.ln.backoff.failures == 0 and self.ln.backoff.ready(self.now)
        assert kind not in self.ln.out

    @rule(re=st.one_of(st.none(), st.integers(-5, 200)))
    def stray_reply(self, re: int | None) -> None:
        if self.ln.match(re) is not None:
            return
        before = self._state()
        assert self.ln.answered(re, self.now) is None
        assert self._state() == before  # a reply to no request out changes nothing

    @rule()
    def check_timeouts(self) -> None:
        late = self.ln.late(self.now)
        failures = self.ln.backoff.failures
        wait = self.ln.timed_out(self.now)
        if late:
            assert wait is not None and self.ln.backoff.failures == failures + 1
            assert self.ln.reset_due and not self.ln.busy()
        else:
            assert wait is None and self.ln.backoff.failures == failures

    @rule(recheck=st.booleans())
    def unreachable(self, recheck: bool) -> None:
        failures = self.ln.backoff.failures
        self.ln.failed(self.now, recheck)
        assert self.ln.backoff.failures == failures + 1 and not self.ln.busy()
        assert self.ln.take_reset()

    @rule(kind=st.sampled_from(KINDS))
    def error_answered(self, kind: str) -> None:
        r = self.ln.out.get(kind)
        failures, others, due = self.ln.backoff.failures, dict(self.ln.out), self.ln.reset_due
        wait = self.ln.error_answer(None if r is None else r.id, self.now)
        if r is None:
            assert wait is None and self.ln.backoff.failures == failures
        else:
            others.pop(kind)
            assert wait is not None and self.ln.backoff.failures == failures + 1
            assert self.ln.out == others  # the rest stay out on the socket
        assert self.ln.reset_due == due

    @rule(key=KEYS)
    def hello_heard(self, key: str) -> None:
        held = self.ln.key
        verdict = self.ln.heard_key(key)
        if held is None:
            assert verdict is KeyVerdict.LEARNT and self.ln.key == key
        elif key == held:
            assert verdict is KeyVerdict.KNOWN
        else:
            assert verdict is KeyVerdict.CHANGED and self.ln.refused
        if self.first_key is None:
            self.first_key = self.ln.key

    @precondition(lambda self: self.ln.reset_due)
    @rule()
    def reset(self) -> None:
        assert self.ln.take_reset() and not self.ln.reset_due

    @invariant()
    def at_most_one_request_of_each_kind_out(self) -> None:
        assert all(r.kind == k for k, r in self.ln.out.items())
        ids = [r.id for r in self.ln.out.values()]
        assert len(ids) == len(set(ids))

    @invariant()
    def a_key_once_held_never_changes(self) -> None:
        assert self.first_key is None or self.ln.key == self.first_key

    @invariant()
    def refused_asks_nothing(self) -> None:
        if self.ln.refused:
            assert not self.ln.busy() and not any(self.ln.may_send(k, self.now) for k in KINDS)

    @invariant()
    def the_backoff_is_bounded(self) -> None:
        b = self.ln.backoff
        assert b.until <= self.now + b.max_s
        assert b.failures > 0 or b.until == 0.0

    def _state(self) -> tuple:
        ln = self.ln
        return (dict(ln.out), ln.backoff.failures, ln.backoff.until, ln.key, ln.refused)


TestLinkMachine = LinkMachine.TestCase
TestLinkMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


@given(
    failures=st.integers(1, 200),
    u=st.floats(0.0, 0.999),
    min_s=st.floats(0.01, 100.0),
    cap=st.floats(1.0, 1000.0),
)
def test_the_wait_after_any_failures_is_between_half_the_base_and_the_cap(failures, u, min_s, cap):
    max_s = min_s * cap
    ln = Link(1.0, Backoff(min_s, max_s, rng=Fixed(u)))
    for _ in range(failures):
        wait = ln.failed(0.0)
    base = min(max_s, min_s * 2.0 ** min(failures - 1, 64))
    assert base / 2 <= wait <= base <= max_s


def test_a_request_out_is_a_fact_carrying_its_fields_and_nothing_else():
    r = link().sent("bored", 0.0)
    with pytest.raises(AttributeError):  # frozen (FrozenInstanceError is one)
        r.deadline = 99.0  # type: ignore[misc]
    assert not hasattr(r, "__dict__")  # slotted: one per request out, on every link
