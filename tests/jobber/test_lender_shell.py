"""The lender's preferences carried out by a real jobber shell (jobber._lender): built
in this process on a real data directory, no dealer reachable, its turns driven by
hand. What the core is told: the memory and cache it may give, and what holds jobs."""

from __future__ import annotations

import time

import pytest

import protocol as p
from jobber import _prefs
from jobber._client import Config, Jobber
from jobber._settings import MIB, JobberError
from jobber._state import Held

DEALER = "tcp://127.0.0.1:1"


@pytest.fixture
def make(tmp_path):
    made = []

    def build(**kw) -> Jobber:
        explicit = frozenset(k for k in kw if k in _prefs.Prefs.__dataclass_fields__)
        cfg = Config(["127.0.0.1:1"], tmp_path, slots=1, control=False, explicit=explicit, **kw)
        j = Jobber(cfg)
        made.append(j)
        return j

    yield build
    for j in made:
        j.close()


def test_memory_per_job_while_the_machine_is_in_use_and_a_bigger_job_held(make):
    # any load counts as use: the machine is in use from the first reading
    j = make(memory_mb=512, memory_in_use_mb=64, memory_idle_mb=256, load_threshold=-1.0)
    j._tell_owner(time.monotonic())
    assert j.core.s.memory_mb == 64 and j.status()["memory_mb_now"] == 64
    assert not j.core.suspended  # nothing running is bigger
    spec = p.JobSpec("t.0", "ab" * 32, (), b"", p.Limits(memory_mb=128), 60.0)
    j.core.running["k"] = Held(DEALER, spec, 1e12, key="k", started=time.monotonic())
    j._tell_owner(time.monotonic())
    assert j.core.why_suspended == (
        "machine in use: 1 running job may use more than the 64 MiB allowed while it is in use"
    )
    del j.core.running["k"]


def test_memory_per_job_while_idle(make):
    j = make(memory_mb=512, memory_in_use_mb=64, memory_idle_mb=256, load_threshold=1e9)
    j._tell_owner(time.monotonic())
    assert j.core.s.memory_mb == 256


def test_the_cache_is_held_to_the_disk_preferences(make):
    j = make(cache_mb=1024, max_disk_mb=5)
    j._tell_owner(time.monotonic())
    assert j.core.s.cache_bytes == 5 * MIB
    assert j._owner_command({"cmd": "prefs", "set": {"max_disk_mb": None}}) == ""
    j._tell_owner(time.monotonic())
    assert j.core.s.cache_bytes == 1024 * MIB


def test_hours_and_the_day_s_traffic_hold_work(make):
    hour = time.localtime().tm_hour
    closed = f"{(hour + 2) % 24}-{(hour + 3) % 24}"
    j = make(compute_hours=closed)
    j._tell_owner(time.monotonic())
    assert j.core.why_suspended == f"outside the owner's compute hours ({closed})"
    assert j.core.fetch_paused
    assert j._owner_command({"cmd": "prefs", "set": {"compute_hours": None, "net_mb_day": 0}}) == ""
    j._tell_owner(time.monotonic())
    assert not j.core.suspended and not j.core.fetch_paused  # nothing counted yet today
    j._count_traffic(100)
    j._tell_owner(time.monotonic())
    assert not j.core.suspended and j.core.fetch_paused  # over: no work asked; jobs run


def test_what_the_owner_sets_survives_a_restart_and_the_command_line_wins(make, tmp_path):
    j = make()
    assert j._owner_command({"cmd": "pause", "dealer": "127.0.0.1:1"}) == ""
    assert j._owner_command({"cmd": "pause", "dealer": "127.0.0.1:9"}) == (
        "no dealer tcp://127.0.0.1:9 is known to this jobber"
    )
    assert j._owner_command({"cmd": "suspend"}) == ""
    assert j._owner_command({"cmd": "prefs", "set": {"memory_idle_mb": 64}}) == ""
    assert "unknown preference" in j._owner_command({"cmd": "prefs", "set": {"x": 1}})
    j.close()
    k = make()
    assert k.core.links[DEALER].paused and k.user_suspended
    assert k.owner.prefs.memory_idle_mb == 64
    k.close()
    m = make(memory_idle_mb=128)  # given at start: the newest word, kept from now on
    assert m.owner.prefs.memory_idle_mb == 128
    assert _prefs.load(tmp_path).prefs.memory_idle_mb == 128
    assert m._owner_command({"cmd": "unpause", "dealer": DEALER}) == ""
    assert not m.core.links[DEALER].paused and _prefs.load(tmp_path).paused == []


def test_a_bad_preference_on_the_command_line_stops_the_start(tmp_path):
    cfg = Config(
        ["127.0.0.1:1"], tmp_path, control=False, compute_hours="late", explicit={"compute_hours"}
    )
    with pytest.raises(JobberError, match="22-7"):
        Jobber(cfg)


def test_preferences_from_a_config_file_and_the_command_words(tmp_path):
    from jobber import cli

    f = tmp_path / "j.toml"
    f.write_text(
        'dealers = "127.0.0.1:1"\nno-battery = true\ncompute-hours = "22-7"\n'
        "max-disk-pct = 10\nnet_mb_day = 500\nmemory-in-use = 256\n"
    )
    _, settings, dealers, _ = cli._options(cli.parser(), ["--config", str(f)])
    assert dealers == ["127.0.0.1:1"]
    assert settings["no_battery"] is True and settings["compute_hours"] == "22-7"
    assert (settings["max_disk_pct"], settings["net_mb_day"]) == (10.0, 500)
    assert settings["memory_in_use_mb"] == 256
    words = ["prefs", "no-battery=on", "max_disk_mb=none", "max_disk_pct=2.5", "compute_hours=9-17"]
    assert cli.request(words) == {
        "cmd": "prefs",
        "set": {
            "no_battery": True,
            "max_disk_mb": None,
            "max_disk_pct": 2.5,
            "compute_hours": "9-17",
        },
    }
    assert cli.request(["accept-key", "h:1#" + "ab" * 32]) == {
        "cmd": "accept_key",
        "dealer": "h:1#" + "ab" * 32,
    }
    for bad in (["pause"], ["prefs", "memory"], ["status", "x"]):
        with pytest.raises(ValueError):
            cli.request(bad)
