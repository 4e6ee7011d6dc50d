"""`python -m jobber service install|remove|show` (jobber._service_unit) and the --config
file's types. No test here reaches the user's service manager: systemctl is either
absent from a trimmed PATH or a stand-in script that logs what it is asked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobber import _service_unit as su
from jobber import cli

UNIT = "borednet-jobber.service"


def systemd_words(value: str, *, specifiers: bool = True) -> list[str]:
    """The words systemd makes of an ExecStart= value (systemd.syntax(7),
    systemd.service(5)), as far as the writer may use it: words split on whitespace,
    double quotes with `\\\\` and `\\"` in them, `%%` for `%`, `$$` for `$` past the program's
    path. Anything else the writer should never have written fails the test."""
    words, word, i, quoted, started = [], [], 0, False, False
    while i < len(value):
        c = value[i]
        if c == "\\":
            assert value[i + 1] in '\\"', f"an escape systemd reads otherwise: {value[i:]!r}"
            word.append(value[i + 1])
            i += 2
            continue
        if c == '"':
            quoted, started = not quoted, True
        elif c == "'" and not quoted:
            pytest.fail(f"a single quote systemd reads as quoting: {value!r}")
        elif c in " \t" and not quoted:
            if started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(c)
            started = True
        i += 1
    assert not quoted, f"unbalanced quotes: {value!r}"
    if started:
        words.append("".join(word))
    out = []
    for n, w in enumerate(words):
        assert w != ";" or '";"' in value, "a lone ; separates commands"
        parts = w.split("%%")
        assert not any("%" in part for part in parts), f"a specifier: {w!r}"
        w = "%".join(parts)
        if n > 0:  # the program's path is not expanded; its arguments are
            parts = w.split("$$")
            assert not any("$" in part for part in parts), f"a variable: {w!r}"
            w = "$".join(parts)
        out.append(w)
    return out


def exec_line(text: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    return line.removeprefix("ExecStart=")


words = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=12)


@given(st.lists(words, max_size=6))
def test_exec_start_parses_back_to_the_argv(args):
    argv = ["/opt/py 3.11/50%/$HOME;/bin/python", *args]
    assert systemd_words(su.exec_start(argv)) == argv


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["bin/python"], "absolute"),
        (["/it's/python"], "quotes"),
        (["/usr/bin/python", "a\nb"], "control character"),
        (["/usr/bin/python", "a\udcffb"], "UTF-8"),
    ],
)
def test_what_systemd_cannot_run_is_refused(argv, why):
    with pytest.raises(su.ServiceError, match=why):
        su.exec_start(argv)


ODD = ["50% of $HOME", 'say "hi"', "back\\slash", ";", "", "two  spaces ", "ünïcode", "#k$%@"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit_with_an_odd_interpreter_path(tmp_path, monkeypatch):
    """systemd itself reads the unit: no error or warning, and the interpreter found at a
    path with a space, %, $ and ; in it (a quoting wrong there leaves it not found)."""
    odd = tmp_path / "py 50%h $HOME ;dir"
    odd.mkdir()
    (odd / "python").symlink_to(sys.executable)
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}/a b%c")
    argv = [str(odd / "python"), "-m", "jobber", "--name", *ODD, "--data-dir", str(odd)]
    unit = tmp_path / UNIT
    unit.write_text(su.unit_text(argv, workdir=str(odd)))
    assert systemd_words(exec_line(unit.read_text())) == argv
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(run_dir), "SYSTEMD_LOG_COLOR": "0"}
    done = subprocess.run(
        ["systemd-analyze", "verify", "--user", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    # and the check is one: the same unit with the path's % left as a specifier fails
    unit.write_text(unit.read_text().replace("50%%h", "50%h"))
    bad = subprocess.run(
        ["systemd-analyze", "verify", "--user", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode != 0 and "not executable" in bad.stderr


@pytest.fixture
def home(tmp_path, monkeypatch):
    """XDG_CONFIG_HOME in tmp_path, PATH holding only tmp_path/bin (no systemctl), the
    current directory tmp_path/work; the unit's path."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("BOREDNET_JOBBER_DIR", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path / "cfg" / "systemd" / "user" / UNIT


def fake_systemctl(tmp_path: Path, status: int = 0) -> Path:
    """A systemctl on PATH that logs its arguments and exits with `status`."""
    log = tmp_path / "systemctl.log"
    exe = tmp_path / "bin" / "systemctl"
    exe.write_text(
        f'#!/bin/sh\necho "$@" >> "{log}"\n'
        + (f'echo "Failed to connect to bus" >&2\nexit {status}\n' if status else "")
    )
    exe.chmod(0o755)
    return log


def service(*argv: str) -> int:
    try:
        return cli.main(["service", *argv])
    except SystemExit as e:  # argparse's refusals
        return e.code


def test_install_then_remove_without_systemctl(home, tmp_path, capsys):
    assert service("install", "--slots", "2", "dealer.example.org#KEY") == 0
    out = capsys.readouterr().out
    argv = systemd_words(exec_line(home.read_text()))
    data = Path.home() / ".local" / "share" / "borednet" / "jobber"
    assert argv == [sys.executable, "-m", "jobber", "--slots", "2", "dealer.example.org#KEY"] + [
        "--data-dir",
        str(data),
    ]
    text = home.read_text()
    for line in ["Restart=on-failure", "Nice=19", "CPUSchedulingPolicy=idle"]:
        assert line in text.splitlines()
    assert text.endswith("[Install]\nWantedBy=default.target\n")
    assert f"WorkingDirectory={tmp_path / 'work'}" in text and "PYTHONPATH" not in text
    # no manager reached: the commands to run, and lingering
    assert "systemctl not found" in out
    assert (
        "  systemctl --user daemon-reload\n  systemctl --user enable --now borednet-jobber" in out
    )
    assert "loginctl enable-linger $USER" in out
    assert service("show") == 0
    assert capsys.readouterr().out == f"# {home}\n{text}"
    wants = home.parent / "default.target.wants" / UNIT
    wants.parent.mkdir()
    wants.symlink_to(home)
    assert service("remove") == 0
    out = capsys.readouterr().out
    assert not home.exists() and not wants.is_symlink()
    assert "systemctl --user stop borednet-jobber" in out
    assert service("remove") == 0 and "nothing to remove" in capsys.readouterr().out


def test_install_and_remove_tell_the_user_s_service_manager(home, tmp_path, capsys):
    log = fake_systemctl(tmp_path)
    assert service("install", "d") == 0
    assert log.read_text() == "--user daemon-reload\n--user enable --now borednet-jobber\n"
    assert "started" in capsys.readouterr().out
    # new options: written, and the running jobber restarted on them
    assert service("install", "--force", "--slots", "1", "d") == 0
    assert log.read_text().splitlines()[2:] == [
        "--user daemon-reload",
        "--user enable borednet-jobber",
        "--user restart borednet-jobber",
    ]
    assert service("remove") == 0
    assert log.read_text().splitlines()[5:] == [
        "--user disable --now borednet-jobber",
        "--user daemon-reload",
    ]
    assert not home.exists()


def test_a_manager_that_does_not_answer_leaves_the_commands_to_run(home, tmp_path, capsys):
    log = fake_systemctl(tmp_path, status=1)
    assert service("install", "d") == 0
    out = capsys.readouterr().out
    assert "Failed to connect to bus" in out
    assert (
        "  systemctl --user daemon-reload\n  systemctl --user enable --now borednet-jobber" in out
    )
    assert log.read_text() == "--user daemon-reload\n"  # stopped at the first failure
    assert home.exists()


def test_no_start_writes_only(home, tmp_path, capsys):
    log = fake_systemctl(tmp_path)
    assert service("install", "--no-start", "d") == 0
    assert home.exists() and not log.exists()
    assert "systemctl --user enable --now borednet-jobber" in capsys.readouterr().out


def test_a_different_unit_is_replaced_only_with_force(home, capsys):
    assert service("install", "--no-start", "one.example.org") == 0
    first = home.read_text()
    assert service("install", "--no-start", "one.example.org") == 0  # the same: fine
    assert "already" in capsys.readouterr().out
    assert service("install", "--no-start", "two.example.org") == 1
    err = capsys.readouterr().err
    assert "different unit" in err and "--force" in err
    assert home.read_text() == first
    assert service("install", "--no-start", "--force", "two.example.org") == 0
    assert "two.example.org" in home.read_text()


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--slots", "two", "d"], "invalid int value"),
        (["--bogus", "d"], "unrecognized arguments"),
        ([], "name at least one dealer"),
        (["status"], "status is a command"),
        (["--pool", "lab", "d"], "--pool goes with --allocator"),
    ],
)
def test_a_bad_option_fails_at_install(home, capsys, argv, why):
    assert service("install", *argv) == 2
    assert why in capsys.readouterr().err
    assert not home.exists()


def test_the_data_directory_is_written_out_in_full(home, tmp_path, monkeypatch):
    assert service("install", "--no-start", "--data-dir", "here", "d", "--grace", "100") == 0
    argv = systemd_words(exec_line(home.read_text()))
    assert argv[3:] == ["d", "--grace", "100", "--data-dir", str(tmp_path / "work" / "here")]
    assert "TimeoutStopSec=130" in home.read_text()  # the jobs' grace, and some
    monkeypatch.setenv("BOREDNET_JOBBER_DIR", "rel")
    assert service("install", "--no-start", "--force", "--data-dir=x", "d") == 0
    assert systemd_words(exec_line(home.read_text()))[3:] == [
        "d",
        "--data-dir",
        str(tmp_path / "work" / "x"),
    ]
    assert service("install", "--no-start", "--force", "d") == 0
    assert systemd_words(exec_line(home.read_text()))[-1] == str(tmp_path / "work" / "rel")


def test_the_unit_s_options_are_the_ones_given(home, tmp_path):
    """What the unit runs, read back by the jobber's parser, is what was installed."""
    config = tmp_path / "work" / "j.toml"
    config.write_text('dealers = "d.example.org"\nidle-only = true\n')
    given = ["--config", "j.toml", "--name", '50% of $HOME\'s "box"', "--no-runtimes"]
    assert service("install", "--no-start", *given) == 0
    argv = systemd_words(exec_line(home.read_text()))
    assert cli.checked(argv[3:]) == cli.checked([*given, "--data-dir", argv[-1]])
    assert cli.checked(argv[3:])[1]["name"] == '50% of $HOME\'s "box"'


def test_pythonpath_goes_with_the_unit(home, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/src/a b:/src/50%")
    assert service("install", "--no-start", "d") == 0
    (line,) = [ln for ln in home.read_text().splitlines() if ln.startswith("Environment=")]
    assert line == 'Environment="PYTHONPATH=/src/a b:/src/50%%"'


def test_only_systemd_is_supported(home, monkeypatch, capsys):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert service("install", "d") == 1
    err = capsys.readouterr().err
    assert "systemd" in err and "launchd" in err
    assert not home.exists()


def test_show_without_a_unit_and_show_what_install_would_write(home, capsys):
    assert service("show") == 1
    assert "no unit at" in capsys.readouterr().err
    assert service("show", "d.example.org") == 0
    assert "d.example.org --data-dir" in capsys.readouterr().out
    assert not home.exists()


# --config: a TOML file's values, each of its option's type


def options(tmp_path: Path, toml: str):
    config = tmp_path / "j.toml"
    config.write_text(toml)
    _, settings, dealers, data_dir = cli._options(cli.parser(), ["--config", str(config)])
    return settings | {"data_dir": data_dir}, dealers


@pytest.mark.parametrize(
    ("toml", "dealers"),
    [
        ('dealers = "host"', ["host"]),
        ('dealers = ["a", "b:7200"]', ["a", "b:7200"]),
        ("dealers = []", []),
    ],
)
def test_config_dealers_one_or_many(tmp_path, toml, dealers):
    assert options(tmp_path, toml)[1] == dealers


def test_config_values_take_their_option_s_type(tmp_path):
    settings, _ = options(
        tmp_path,
        'slots = 2\ncpu-limit = 75\nidle-only = true\ntrust = "k.sign"\n'
        'data-dir = "d"\nruntimes = false\nname = "n"\n',
    )
    assert settings == {
        "slots": 2,
        "cpu_limit": 75.0,
        "idle_only": True,
        "trust": [Path("k.sign")],
        "data_dir": Path("d"),
        "runtimes": False,
        "name": "n",
    }
    assert isinstance(settings["cpu_limit"], float)


@pytest.mark.parametrize(
    ("toml", "why"),
    [
        ("dealers = 3", "dealers must be a string or a list of them"),
        ('dealers = ["a", 3]', "dealers must be a string or a list of them"),
        ('slots = "2"', "slots must be an integer"),
        ("slots = true", "slots must be an integer"),
        ("slots = 1.5", "slots must be an integer"),
        ('cpu-limit = "75"', "cpu-limit must be a number"),
        ('idle-only = "yes"', "idle-only must be true or false"),
        ("name = 7", "name must be a string"),
        ("trust = [1]", "trust must be a string or a list of them"),
        ("data-dir = 1", "data-dir must be a string"),
        ("bogus = 1", "unknown key 'bogus'"),
    ],
)
def test_config_value_of_a_wrong_type_is_refused_by_name(tmp_path, capsys, toml, why):
    with pytest.raises(SystemExit) as e:
        options(tmp_path, toml)
    assert e.value.code == 2
    assert why in capsys.readouterr().err
