"""Resource shares (jobber._shares), the jobber core asking by them, and an allocator's
instructions merged with the owner's limits (jobber._instructions): pure, driven directly."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import protocol as p
from jobber import _core as c
from jobber import _instructions as ins
from jobber._shares import MAX_DEBT_S, Shares

A, B, C = "tcp://127.0.0.1:7201", "tcp://127.0.0.1:7202", "tcp://127.0.0.1:7203"
KEY_A, KEY_B, KEY_C = "aa" * 32, "bb" * 32, "cc" * 32
SHA = "ab" * 32
LIMITS = p.Limits(fuel=10**9, memory_mb=64, time_s=10.0, output_kb=64)


def serve(shares: Shares, steps: int, eligible=(A, B), work_s=1.0) -> dict[str, int]:
    """Always run one job of the most owed project; how many each got."""
    got = dict.fromkeys(shares.share, 0)
    for _ in range(steps):
        top = shares.rank(eligible, {})[0]
        shares.charge(top, work_s, eligible)
        got[top] += 1
    return got


def test_work_follows_the_shares_at_every_moment_not_just_on_average():
    s = Shares({A: 3.0, B: 1.0})
    got = {A: 0, B: 0}
    for step in range(1, 401):
        top = s.rank([A, B], {})[0]
        s.charge(top, 1.0, [A, B])
        got[top] += 1
        assert abs(got[A] - 3 * got[B]) <= 4, (step, got)  # never more than a job or so off
    assert (got[A], got[B]) == (300, 100)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.1, 10.0), min_size=2, max_size=4),
    st.lists(st.floats(0.01, 2.0), min_size=50, max_size=50),
)
def test_time_split_converges_on_any_shares_with_jobs_of_any_length(shares, lengths):
    names = [f"tcp://h:{7000 + i}" for i in range(len(shares))]
    s = Shares(dict(zip(names, shares, strict=True)))
    rng = random.Random(0)
    for _ in range(40):
        for w in lengths:  # 2000 jobs of varied length
            top = s.rank(names, {})[0]
            s.charge(top, w * rng.uniform(0.5, 1.5), names)
    total = sum(s.done_s.values())
    for name, share in zip(names, shares, strict=True):
        # within the longest job or two of its due
        assert abs(s.done_s[name] - total * share / sum(shares)) <= 6.0
    assert abs(sum(s.debt.values())) < 1e-6  # debts are kept at mean zero


def test_a_project_without_work_accrues_nothing_and_does_not_take_over_when_back():
    s = Shares({A: 3.0, B: 1.0})
    assert serve(s, 200, eligible=(A,)) == {A: 200, B: 0}  # B had no work meanwhile
    assert s.debt == {A: 0.0, B: 0.0}
    got = serve(s, 40)
    assert got == {A: 30, B: 10}  # back to 3:1 at once, not B alone for a while


def test_debt_is_carried_but_clamped():
    s = Shares({A: 1.0, B: 1.0})
    for _ in range(10_000):  # B always eligible, never served: owed more and more
        s.charge(A, 1.0, [A, B])
    assert s.debt[B] == MAX_DEBT_S and s.debt[A] == -MAX_DEBT_S
    assert s.rank([A, B], {}) == [B, A]


def test_new_shares_keep_the_debts_of_projects_still_listed():
    s = Shares({A: 1.0, B: 1.0})
    s.charge(A, 10.0, [A, B])
    assert s.debt == {A: -5.0, B: 5.0}
    s.set({B: 2.0, C: 1.0}, debts={C: 7.0, A: 99.0})
    assert s.share == {B: 2.0, C: 1.0}
    assert s.debt == {B: 5.0, C: 7.0}  # B kept; C from the saved debts; A forgotten
    with pytest.raises(ValueError):
        s.set({A: -1.0})


def test_work_in_hand_counts_as_done_when_ranking():
    s = Shares({A: 3.0, B: 1.0})
    s.charge(B, 2.0, [A, B])  # A is owed
    assert s.rank([A, B], {}) == [A, B]
    # but a buffer of A's jobs already in hand will pay that back
    assert s.rank([A, B], {A: 10.0}) == [B, A]
    # dealers that are not projects (referred ones), and shares of 0, come last
    s.set({A: 3.0, B: 0.0})
    assert s.rank([C, B, A], {}) == [A, C, B]


# --- the core asks by debt ----------------------------------------------------------


def _core() -> c.JobberCore:
    st_ = c.Settings(name="j", slots=1, cpus=1, memory_mb=256, buffer=0, min_backoff_s=1.0)
    core = c.JobberCore(st_, [], 0.0, rng=random.Random(1))
    core.set_projects({f"{A}#{KEY_A}": 3.0, f"{B}#{KEY_B}": 1.0})
    for link in core.links.values():
        link.answered = True  # as if both had answered before: one ask out at a time
    core.cache_updated({SHA: (1000, 0)})  # the payload the jobs name is held
    core.take_actions()
    return core


def drive(core: c.JobberCore, jobs: int) -> list[str]:
    """Answer each ask with one job, run it for 1 s and deliver it: whom each job was for."""
    done: list[str] = []
    asks: list[c.Send] = []
    now = 0.0

    def carry_out(t: float) -> list[c.Action]:
        core.tick(t)
        actions = core.take_actions()
        asks.extend(a for a in actions if isinstance(a, c.Send) and isinstance(a.msg, p.Bored))
        for a in actions:
            if isinstance(a, c.Send) and isinstance(a.msg, p.Results):
                tags = tuple(r.tag for r in a.msg.results)
                core.received(a.dealer, p.Ack(a.msg.id, tags), t)
            elif isinstance(a, c.Send) and isinstance(a.msg, p.Alive):
                core.received(a.dealer, p.AliveAck(a.msg.id, 20.0), t)
        return actions

    for i in range(jobs):
        carry_out(now)
        assert len(asks) == 1, asks  # one ask out at a time, to the most owed
        ask = asks.pop()
        spec = p.JobSpec(f"t{i}", SHA, (), b"", LIMITS, 60.0)
        core.received(ask.dealer, p.Jobs(ask.msg.id, (spec,)), now)
        start = [a for a in carry_out(now) if isinstance(a, c.Start)][0]
        core.job_done(start.key, p.Result(spec.tag, p.Status.OK, b"", 1, ""), 1.0, now + 1.0)
        core.spooled([(ask.dealer, spec.tag)])
        carry_out(now + 1.0)
        done.append(ask.dealer)
        now += 1.5  # the next ask goes out at the next turn, well within FETCH_PATIENCE_S
    return done


def test_the_core_asks_the_most_owed_dealer_and_the_split_follows_the_shares():
    core = _core()
    done = drive(core, 40)
    assert (done.count(A), done.count(B)) == (30, 10)
    assert done[:4].count(A) == 3  # interleaved, not 30 then 10
    assert core.shares is not None and core.shares.done_s[A] == pytest.approx(30.0, rel=0.1)


def test_a_dealer_the_allocator_drops_gets_no_more_asks():
    core = _core()
    core.set_projects({f"{B}#{KEY_B}": 1.0})
    assert set(drive(core, 6)) == {B}
    assert A in core.links  # still known: what it is owed is still delivered


# --- instructions and the owner's limits ------------------------------------------------

OWNER = ins.Owner(
    slots=4,
    cpus=4,
    memory_mb=1000,
    cpu_limit=100.0,
    cache_mb=1024,
    idle_only=False,
    idle_after_s=60.0,
)


def test_a_pool_replaces_the_defaults():
    got = ins.effective(
        OWNER,
        p.Prefs(
            slots=2,
            cpu_limit=50,
            memory_mb=3000,
            cache_mb=4096,
            idle_only=True,
            idle_after_s=5.0,
            start_hour=18,
            end_hour=8,
            net_start_hour=1,
            net_end_hour=2,
        ),
    )
    assert (got.slots, got.cpu_limit, got.memory_mb, got.cache_mb) == (2, 50.0, 3000, 4096)
    assert (got.idle_only, got.idle_after_s) == (True, 5.0)
    assert (got.hours, got.net_hours) == ((18, 8), (1, 2))
    assert ins.effective(OWNER, None) == ins.effective(OWNER, p.Prefs())
    assert ins.effective(OWNER, None).slots == 4


def test_a_pool_never_loosens_what_the_owner_set():
    owner = ins.Owner(
        slots=2,
        cpus=4,
        memory_mb=500,
        cpu_limit=30.0,
        cache_mb=100,
        idle_only=True,
        idle_after_s=120.0,
        explicit=frozenset(
            {"slots", "memory_mb", "cpu_limit", "cache_mb", "idle_only", "idle_after_s"}
        ),
    )
    loose = p.Prefs(
        slots=8,
        cpu_limit=90,
        memory_mb=3000,
        cache_mb=4096,
        idle_only=False,
        idle_after_s=1.0,
    )
    got = ins.effective(owner, loose)
    assert (got.slots, got.cpu_limit, got.memory_mb, got.cache_mb) == (2, 30.0, 500, 100)
    assert (got.idle_only, got.idle_after_s) == (True, 120.0)
    strict = p.Prefs(slots=1, cpu_limit=10, memory_mb=200, cache_mb=50, idle_after_s=300)
    got = ins.effective(owner, strict)  # stricter than the owner: the pool's holds
    assert (got.slots, got.cpu_limit, got.memory_mb, got.cache_mb) == (1, 10.0, 200, 50)
    assert got.idle_after_s == 300.0


def test_percent_of_cpus_rounds_down_but_leaves_one():
    assert ins.effective(OWNER, p.Prefs(max_cpus_pct=50)).slots == 2
    assert ins.effective(OWNER, p.Prefs(max_cpus_pct=60)).slots == 2
    assert ins.effective(OWNER, p.Prefs(max_cpus_pct=1)).slots == 1
    assert ins.effective(OWNER, p.Prefs(slots=3, max_cpus_pct=100)).slots == 3


@pytest.mark.parametrize(
    ("hour", "start", "end", "inside"),
    [
        (9.0, 8, 18, True),
        (8.0, 8, 18, True),
        (18.0, 8, 18, False),
        (7.99, 8, 18, False),
        (23.0, 18, 8, True),
        (3.0, 18, 8, True),
        (12.0, 18, 8, False),
        (8.0, 18, 8, False),
        (12.0, 5, 5, True),
        (0.0, 0, 24, True),
    ],
)
def test_hour_windows(hour, start, end, inside):
    assert ins.in_window(hour, start, end) is inside
    eff = ins.effective(OWNER, p.Prefs(start_hour=start, end_hour=end))
    assert eff.computes_at(hour) is inside and eff.asks_at(hour)


def test_instructions_are_kept_on_disk_and_a_foreign_file_is_refused(tmp_path):
    assert ins.load(tmp_path) is None
    msg = p.Instructions(
        1, "lab", 9, (p.Project("a", f"{A}#{KEY_A}", 3.0),), p.Prefs(slots=2), 30.0
    )
    kept = ins.from_message("alloc:7127", msg, 1000.0, {A: 1.5})
    ins.save(tmp_path, kept)
    assert ins.load(tmp_path) == kept
    body = json.loads((tmp_path / ins.FILE).read_text())
    assert body["schema"] == ins.SCHEMA and body["prefs"] == {"max_cpus": 2}
    bad_share = {**body, "projects": [{**body["projects"][0], "share": -1}]}
    bad_debt = {**body, "debts": {A: "nan"}}
    for bad in (
        "not json",
        json.dumps({"schema": 99}),
        json.dumps({**body, "prefs": {"x": 1}}),
        json.dumps(bad_share),
        json.dumps(bad_debt),
    ):
        (tmp_path / ins.FILE).write_text(bad)
        with pytest.raises(ValueError, match=ins.FILE):
            ins.load(tmp_path)


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--pool", "lab"], "--pool goes with --allocator"),
        (["--allocator", "127.0.0.1:7127"], "--allocator needs --pool"),
        (["--allocator", "127.0.0.1:7127", "--pool", "lab", "d:7117"], "not both"),
    ],
)
def test_the_command_line_refuses_half_an_allocator(tmp_path, capsys, argv, why):
    from jobber import cli

    try:
        code = cli.main([*argv, "--data-dir", str(tmp_path)])
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    assert code == 2
    assert why in capsys.readouterr().err


def test_under_an_allocator_no_dealer_is_asked_before_it_is_listed():
    """A dealer an earlier run's spool names gets its results, but no ask for work, until
    the allocator's instructions list it (the shell sets no projects at start)."""
    st_ = c.Settings(name="j", slots=1, cpus=1, memory_mb=256, buffer=0, min_backoff_s=1.0)
    spooled = [(A, p.Result("t.1", p.Status.OK, b"x", 1))]
    core = c.JobberCore(st_, [], 0.0, pins={A: KEY_A}, spooled=spooled, rng=random.Random(1))
    core.set_projects({})
    core.tick(0.0)
    kinds = [type(a.msg) for a in core.take_actions() if isinstance(a, c.Send)]
    assert p.Results in kinds and p.Bored not in kinds
    core.set_projects({f"{A}#{KEY_A}": 1.0})
    core.tick(1.0)
    assert p.Bored in [type(a.msg) for a in core.take_actions() if isinstance(a, c.Send)]
