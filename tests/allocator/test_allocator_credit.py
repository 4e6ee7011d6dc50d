"""Credit from the projects' dealers (allocator._stats.record_credit): a dealer's figures
are running totals for its run; the runs of one project (its batches) add up."""

from __future__ import annotations

import pytest

import protocol as p
from allocator._core import Allocator

ROOT_KEY = "0" * 64
MACHINE_1, MACHINE_2 = "1" * 64, "2" * 64
DEALER = "tcp://127.0.0.1:7117#" + "e" * 64
DEALER_KEY = "e" * 64


@pytest.fixture
def alloc(tmp_path):
    a = Allocator(tmp_path / "org.sqlite", refresh_s=10.0)
    a.make_root(ROOT_KEY, 0.0)
    a.admin(ROOT_KEY, "project_add", {"name": "a", "dealer": DEALER}, 1)
    a.admin(ROOT_KEY, "pool_add", {"name": "lab", "supplier": "physics"}, 1)
    for n, key in enumerate((MACHINE_1, MACHINE_2)):
        a.admin(ROOT_KEY, "admit", {"pool": "lab", "key": key}, 1)
        a.instruct(key, "10.0.0.1", p.Instruct(1, f"pc-{n}", "lab", p.HostFacts(4, 1024, 4)), 2)
    yield a
    a.close()


def row(key, credit, valid):
    return {"key": key, "credit": credit, "valid": valid}


def credit(alloc, now=100.0):
    return alloc.admin(ROOT_KEY, "stats", {}, now)[1]["projects"]["a"]


def test_a_dealers_running_totals_are_counted_once(alloc):
    alloc.record_credit({"a": [row(MACHINE_1, 100, 1)]}, 10.0, {"a": (DEALER_KEY, 1)})
    alloc.record_credit({"a": [row(MACHINE_1, 100, 1)]}, 11.0, {"a": (DEALER_KEY, 1)})
    alloc.record_credit({"a": [row(MACHINE_1, 300, 3)]}, 12.0, {"a": (DEALER_KEY, 3)})
    assert credit(alloc) == {"credit": 300, "jobs": 3}


def test_a_new_run_of_the_dealer_adds_to_the_last_one(alloc):
    # batch 1 ends (the dealer exits); batch 2, on a new journal, starts from zero
    alloc.record_credit(
        {"a": [row(MACHINE_1, 400, 4), row(MACHINE_2, 200, 2)]}, 10.0, {"a": (DEALER_KEY, 6)}
    )
    alloc.record_credit({"a": [row(MACHINE_1, 50, 1)]}, 20.0, {"a": (DEALER_KEY, 1)})
    assert credit(alloc) == {"credit": 650, "jobs": 7}
    # MACHINE_2's first figures of the new run, below its last run's: all new
    alloc.record_credit(
        {"a": [row(MACHINE_1, 60, 2), row(MACHINE_2, 300, 3)]}, 30.0, {"a": (DEALER_KEY, 5)}
    )
    assert credit(alloc) == {"credit": 400 + 200 + 60 + 300, "jobs": 4 + 2 + 2 + 3}


def test_a_new_run_is_told_by_the_dealers_key_even_when_its_figures_are_higher(alloc):
    alloc.record_credit({"a": [row(MACHINE_1, 100, 1)]}, 10.0, {"a": (DEALER_KEY, 1)})
    alloc.record_credit({"a": [row(MACHINE_1, 500, 5)]}, 20.0, {"a": ("f" * 64, 5)})
    assert credit(alloc) == {"credit": 600, "jobs": 6}


def test_without_the_run_a_key_whose_figures_went_down_is_a_new_run(alloc):
    alloc.record_credit({"a": [row(MACHINE_1, 100, 1)]}, 10.0)
    alloc.record_credit({"a": [row(MACHINE_1, 30, 1)]}, 20.0)
    assert credit(alloc) == {"credit": 130, "jobs": 2}


def test_a_file_from_before_the_runs_were_kept_does_not_count_its_credit_twice(tmp_path):
    a = Allocator(tmp_path / "org.sqlite", refresh_s=10.0)
    a.make_root(ROOT_KEY, 0.0)
    a.admin(ROOT_KEY, "project_add", {"name": "a", "dealer": DEALER}, 1)
    a.admin(ROOT_KEY, "pool_add", {"name": "lab", "supplier": "physics"}, 1)
    a.admin(ROOT_KEY, "admit", {"pool": "lab", "key": MACHINE_1}, 1)
    a.instruct(MACHINE_1, "10.0.0.1", p.Instruct(1, "pc", "lab", p.HostFacts(4, 1024, 4)), 2)
    a.record_credit({"a": [row(MACHINE_1, 100, 1)]}, 10.0)
    a.db.execute("drop table credit_seen")  # as the file was before
    a.db.execute("drop table dealer_runs")
    a.close()
    a = Allocator(tmp_path / "org.sqlite", refresh_s=10.0)
    try:
        a.record_credit({"a": [row(MACHINE_1, 150, 2)]}, 20.0)
        assert credit(a) == {"credit": 150, "jobs": 2}
    finally:
        a.close()


def test_instructions_say_how_soon_to_check_and_a_check_with_nothing_new_writes_nothing(
    tmp_path,
):
    a = Allocator(tmp_path / "org.sqlite", refresh_s=300.0, check_s=5.0)
    try:
        a.make_root(ROOT_KEY, 0.0)
        a.admin(ROOT_KEY, "pool_add", {"name": "lab", "supplier": "physics"}, 1)
        a.admin(ROOT_KEY, "admit", {"pool": "lab", "key": MACHINE_1}, 1)
        ask = p.Instruct(1, "pc", "lab", p.HostFacts(4, 1024, 4))
        got = a.instruct(MACHINE_1, "10.0.0.1", ask, 100.0)
        assert (got.refresh_s, got.check_s) == (300.0, 5.0)

        def last_seen():
            return a.db.execute(
                "select name, last_seen from machines where key = ?", (MACHINE_1,)
            ).fetchone()

        a.instruct(MACHINE_1, "10.0.0.1", ask, 105.0)
        assert last_seen() == ("pc", 100.0)  # the same, within a minute: no write
        a.instruct(MACHINE_1, "10.0.0.1", ask, 160.0)
        assert last_seen() == ("pc", 160.0)  # a minute on: seen again
        renamed = p.Instruct(1, "pc-2", "lab", p.HostFacts(4, 1024, 4))
        a.instruct(MACHINE_1, "10.0.0.1", renamed, 161.0)
        assert last_seen() == ("pc-2", 161.0)  # something new: written at once
    finally:
        a.close()
