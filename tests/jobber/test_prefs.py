"""The lender's preferences and kept state (jobber._prefs): their checks, what they
allow the machine to give, the power supply as Linux's sysfs shows it, and the file
that keeps them across restarts."""

from __future__ import annotations

import json
import os

import pytest

from jobber import _prefs
from jobber._prefs import MIB, OwnerState, Prefs, parse_hours


@pytest.mark.parametrize(
    ("text", "hours"),
    [("9-17", (9.0, 17.0)), ("22-7", (22.0, 7.0)), (" 22:30 - 7 ", (22.5, 7.0)), ("0-24", (0, 24))],
)
def test_compute_hours_read_as_local_hours(text, hours):
    assert parse_hours(text) == hours


@pytest.mark.parametrize("text", ["evenings", "25-7", "9", "9-17-20", "9:60-10", "-1-3"])
def test_bad_compute_hours_are_refused_with_an_example(text):
    with pytest.raises(ValueError, match="22-7"):
        parse_hours(text)


def test_preferences_change_by_name_and_refuse_what_they_cannot_be():
    prefs = Prefs().changed({"memory_in_use_mb": 512, "max_disk_pct": 25, "no_battery": True})
    assert (prefs.memory_in_use_mb, prefs.max_disk_pct, prefs.no_battery) == (512, 25.0, True)
    assert isinstance(prefs.max_disk_pct, float)
    back = prefs.changed({"memory_in_use_mb": None, "no_battery": None})  # None: no limit
    assert (back.memory_in_use_mb, back.no_battery, back.max_disk_pct) == (None, False, 25.0)
    for bad, match in [
        ({"memory_idle": 5}, "unknown preference 'memory_idle'"),
        ({"memory_idle_mb": -1}, "whole number"),
        ({"memory_idle_mb": True}, "whole number"),
        ({"net_mb_day": 1.5}, "whole number"),
        ({"max_disk_pct": 0}, "0 to 100"),
        ({"max_disk_pct": 101}, "0 to 100"),
        ({"max_disk_pct": float("nan")}, "0 to 100"),
        ({"no_battery": "yes"}, "true or false"),
        ({"compute_hours": 9}, "22-7"),
    ]:
        with pytest.raises(ValueError, match=match):
            prefs.changed(bad)
    assert prefs.memory_in_use_mb == 512  # a refused change changes nothing


def test_memory_per_job_follows_the_machine_s_state_within_the_owner_s_memory():
    prefs = Prefs(memory_in_use_mb=256, memory_idle_mb=2048)
    assert prefs.memory_mb(1024, in_use=True) == 256
    assert prefs.memory_mb(1024, in_use=False) == 1024  # never past --memory
    assert Prefs(memory_idle_mb=512).memory_mb(1024, in_use=True) == 1024  # none set in use
    assert Prefs(memory_in_use_mb=0).memory_mb(1024, in_use=True) == 1


def test_the_cache_is_the_least_of_its_limits_and_a_share_of_what_the_disk_could_give():
    free, held = 10_000 * MIB, 1_000 * MIB
    assert Prefs().cache_mb(1024, free, held) == 1024
    assert Prefs(max_disk_mb=300).cache_mb(1024, free, held) == 300
    # 5 % of (free + what the cache holds now): 550 MiB
    assert Prefs(max_disk_pct=5.0).cache_mb(1024, free, held) == 550
    assert Prefs(max_disk_pct=5.0, max_disk_mb=100).cache_mb(1024, free, held) == 100
    assert Prefs(max_disk_pct=5.0).cache_mb(1024, None, held) == 1024  # the disk not read


def supply(root, name, **files):
    d = root / name
    d.mkdir(parents=True)
    for k, v in files.items():
        (d / k).write_text(v + "\n")


def test_batteries_as_linux_s_power_supply_class_says(tmp_path):
    assert _prefs.on_battery(tmp_path / "none") is None  # no such class: unknown
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _prefs.on_battery(empty) is None
    laptop = tmp_path / "laptop"
    supply(laptop, "AC", type="Mains", online="0")
    supply(laptop, "BAT0", type="Battery", status="Discharging")
    assert _prefs.on_battery(laptop) is True
    (laptop / "AC" / "online").write_text("1\n")
    assert _prefs.on_battery(laptop) is False  # plugged in, whatever the battery says
    (laptop / "AC" / "online").write_text("0\n")
    (laptop / "BAT0" / "status").write_text("Full\n")
    assert _prefs.on_battery(laptop) is False
    desktop = tmp_path / "desktop"
    supply(desktop, "ACAD", type="Mains", online="1")
    assert _prefs.on_battery(desktop) is False
    usbc = tmp_path / "usbc"
    supply(usbc, "ucsi", type="USB", online="1")
    supply(usbc, "BAT1", type="Battery", status="Discharging")
    assert _prefs.on_battery(usbc) is False


def test_the_owner_s_state_is_kept_and_read_back(tmp_path):
    state = OwnerState(suspended=True, paused=["tcp://b:1", "tcp://a:1"])
    state.prefs = Prefs(compute_hours="22-7", net_mb_day=100)
    state.count(5 * MIB, "2026-12-07")
    _prefs.save(tmp_path, state)
    body = json.loads((tmp_path / "owner.json").read_text())
    assert body["schema"] == 1 and body["paused"] == ["tcp://a:1", "tcp://b:1"]
    back = _prefs.load(tmp_path)
    assert (back.suspended, back.prefs, back.net_bytes) == (True, state.prefs, 5 * MIB)
    assert sorted(back.paused) == ["tcp://a:1", "tcp://b:1"]
    assert _prefs.load(tmp_path / "nothing") == OwnerState()


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        '{"schema": 2, "suspended": true}',
        '{"schema": 1, "prefs": {"max_disk_pct": 500}}',
        '{"schema": 1, "paused": "tcp://a:1"}',
        '{"schema": 1, "prefs": {"who": 1}}',
        "[1, 2]",
    ],
)
def test_a_state_file_that_does_not_read_is_set_aside_never_misread(tmp_path, body, caplog):
    (tmp_path / "owner.json").write_text(body)
    assert _prefs.load(tmp_path) == OwnerState()
    assert (tmp_path / "owner.json.bad").read_text() == body
    assert not (tmp_path / "owner.json").exists()
    assert "cannot be read" in caplog.text


def test_the_day_s_traffic_counts_against_its_budget_and_a_new_day_starts_afresh():
    state = OwnerState(prefs=Prefs(net_mb_day=2))
    state.count(MIB, "2026-12-07")
    assert not state.over_budget("2026-12-07")
    state.count(MIB, "2026-12-07")
    assert state.over_budget("2026-12-07")
    assert not state.over_budget("2026-12-08")  # a new day: nothing counted yet
    state.count(10, "2026-12-08")
    assert state.net_bytes == 10 and not state.over_budget("2026-12-08")
    assert not OwnerState().over_budget("2026-12-07")  # no budget: never over


def test_the_disk_s_free_space_is_read_where_the_data_lives(tmp_path):
    free = _prefs.disk_free(tmp_path)
    st = os.statvfs(tmp_path)
    assert free is not None and abs(free - st.f_bavail * st.f_frsize) < 64 * MIB
    assert _prefs.disk_free(tmp_path / "missing") is None


def test_the_edges_of_hours_minutes_and_allowances():
    assert parse_hours("9-7:30") == (9.0, 7.5) and parse_hours("24-0") == (24.0, 0.0)
    assert parse_hours("0:59-1") == (59 / 60, 1.0)
    for bad in ("0:60-1", "1-25", "25-1"):
        with pytest.raises(ValueError, match="22-7"):
            parse_hours(bad)
    assert Prefs(max_disk_pct=100).max_disk_pct == 100
    assert Prefs(max_disk_mb=1).cache_mb(1024, None, 0) == 1
    assert Prefs(max_disk_mb=0).cache_mb(1024, None, 0) == 1  # never nothing at all
    assert MIB == 2**20


def test_the_defaults_limit_nothing_and_cannot_be_changed_in_place():
    prefs = Prefs()
    assert prefs.named() == dict.fromkeys(prefs.named(), None) | {"no_battery": False}
    with pytest.raises(AttributeError):
        prefs.no_battery = True  # type: ignore[misc]
    state = OwnerState()
    assert (state.suspended, state.paused, state.net_day, state.net_bytes) == (False, [], "", 0)


def test_a_machine_with_a_battery_alone_runs_on_it_while_it_discharges(tmp_path):
    supply(tmp_path, "BAT0", type="Battery", status="Discharging")
    assert _prefs.on_battery(tmp_path) is True


def test_a_kept_state_without_traffic_counts_none(tmp_path):
    (tmp_path / "owner.json").write_text('{"schema": 1, "suspended": true}')
    state = _prefs.load(tmp_path)
    assert state.suspended and (state.net_day, state.net_bytes, state.paused) == ("", 0, [])
