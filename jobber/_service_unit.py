"""`python -m jobber service install|remove|show`: start the jobber with the machine, as
a systemd user unit (docs/jobber.md, "Start with the machine").

The unit runs this interpreter with the jobber options given, checked first by the
jobber's own parser (`jobber.cli.checked`), so that a bad option fails here and not at
boot; its data directory is written out in full. The user's service manager is told
through `systemctl --user` when there is one; else the commands are printed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

UNIT = "borednet-jobber.service"
NAME = UNIT.removesuffix(".service")
STOP_TIMEOUT_S = 90  # systemd's default; more when --grace asks more
# words ExecStart= takes as they are: no quote, backslash, specifier (%), variable ($),
# whitespace or lone semicolon among them (systemd.syntax(7), systemd.service(5))
_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./#\[\]-]+")


class ServiceError(Exception):
    """The unit cannot be written as asked."""


def unit_dir() -> Path:
    """Where the user's service manager looks for the user's own units."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG spec: a relative value is to be ignored
        base = str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def _plain_text(text: str, what: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise ServiceError(f"{what} has a control character, which a unit cannot carry: {text!r}")
    try:
        text.encode()
    except UnicodeEncodeError as e:  # undecodable bytes of a file name: not UTF-8
        raise ServiceError(f"{what} is not UTF-8, as a unit file must be: {text!r}") from e
    return text


def quote(word: str, *, variables: bool = True) -> str:
    """`word` as one word of ExecStart= (or Environment=, `variables=False`: no `$`
    expansion there): as it is when plain, else in double quotes with `\\` and `"`
    escaped, `%` written `%%` (specifiers) and `$` written `$$` (variables)."""
    _plain_text(word, "an argument")
    if _PLAIN.fullmatch(word):
        return word
    word = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"' + (word.replace("$", "$$") if variables else word) + '"'


def exec_start(argv: Sequence[str]) -> str:
    """ExecStart='s value running `argv`, argv[0] an absolute path."""
    exe = _plain_text(argv[0], "the interpreter's path")
    if not os.path.isabs(exe) or any(c in exe for c in "\"'\\"):
        raise ServiceError(
            f"systemd runs no program at {exe!r} (it needs an absolute path without quotes "
            "or backslashes): install borednet under a Python whose path has none"
        )
    # the program's path is not subject to $ expansion; its other words are
    return " ".join([quote(exe, variables=False), *map(quote, argv[1:])])


def jobber_argv(options: Sequence[str], data_dir: Path) -> list[str]:
    """This interpreter running the jobber with `options`, its data directory written
    out in full (replacing one given; an abbreviated one is overridden: the last wins)."""
    opts = list(options)
    end = opts.index("--") if "--" in opts else len(opts)
    kept, i = [], 0
    while i < end:
        if opts[i] == "--data-dir":
            i += 2
            continue
        if not opts[i].startswith("--data-dir="):
            kept.append(opts[i])
        i += 1
    whole = os.path.abspath(data_dir)
    return [sys.executable, "-m", "jobber", *kept, "--data-dir", whole, *opts[end:]]


def unit_text(argv: Sequence[str], *, workdir: str, settings: dict | None = None) -> str:
    """The unit running `argv` in `workdir` (where the options' relative paths, and the
    --config file's, were meant), with this process's PYTHONPATH."""
    grace = (settings or {}).get("grace_s")
    stop_s = max(STOP_TIMEOUT_S, int(grace or 0) + 30)
    env = os.environ.get("PYTHONPATH")
    lines = [
        "# Written by `python -m jobber service install`; `python -m jobber service remove`",
        "# stops and removes it.",
        "[Unit]",
        "Description=borednet jobber: lends this machine to dealers",
        "",
        "[Service]",
        f"ExecStart={exec_start(argv)}",
        "WorkingDirectory=" + _plain_text(workdir, "the directory").replace("%", "%%"),
        *([f"Environment={quote('PYTHONPATH=' + env, variables=False)}"] if env else []),
        "Restart=on-failure",
        "RestartSec=30",
        "# exit status 2: a bad option or a data directory in use; starting again won't help",
        "RestartPreventExitStatus=2",
        "# SIGTERM to the jobber alone: it gives its running jobs --grace seconds to finish",
        "KillMode=mixed",
        f"TimeoutStopSec={stop_s}",
        "Nice=19",
        "CPUSchedulingPolicy=idle",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    return "\n".join(lines) + "\n"


def _systemctl(*args: str) -> str | None:
    """Runs `systemctl --user ARGS`: None when done, else why not."""
    exe = shutil.which("systemctl")
    if exe is None:
        return "systemctl not found"
    try:
        run = subprocess.run(
            [exe, "--user", *args], capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if run.returncode != 0:
        return (run.stderr or run.stdout).strip() or f"exit status {run.returncode}"
    return None


def _tell(steps: list[list[str]], *, out) -> bool:
    """Runs each `systemctl --user` step in turn; on the first failure prints why and the
    commands left to run by hand. True when all ran."""
    for i, step in enumerate(steps):
        why = _systemctl(*step)
        if why is not None:
            print(f"could not tell the user's service manager ({why}); run:", file=out)
            for rest in steps[i:]:
                print(f"  systemctl --user {' '.join(rest)}", file=out)
            return False
    return True


def _linger_hint(out) -> None:
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "$USER"
    if not Path("/var/lib/systemd/linger", user).exists():
        print(
            "to run it while you are not logged in (and from boot): loginctl enable-linger $USER",
            file=out,
        )


def install(options: Sequence[str], checked, *, force: bool, start: bool, out) -> int:
    data_dir, settings = checked(options)
    text = unit_text(jobber_argv(options, data_dir), workdir=os.getcwd(), settings=settings)
    path = unit_dir() / UNIT
    old = path.read_text() if path.exists() else None
    if old is not None and old != text and not force:
        print(
            f"error: {path} holds a different unit (python -m jobber service show prints it); "
            "--force replaces it",
            file=sys.stderr,
        )
        return 1
    if old != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(path.name + ".part")
        part.write_text(text)
        os.replace(part, path)
        print(f"wrote {path}", file=out)
    else:
        print(f"{path} is already this unit", file=out)
    steps = [["daemon-reload"], ["enable", "--now", NAME]]
    if old is not None and old != text:  # a running jobber takes the new options
        steps = [["daemon-reload"], ["enable", NAME], ["restart", NAME]]
    if not start:
        print("not started (--no-start); to start it now and at each login, run:", file=out)
        for step in steps:
            print(f"  systemctl --user {' '.join(step)}", file=out)
    elif _tell(steps, out=out):
        print(f"started; systemctl --user status {NAME} and journalctl --user -u {NAME}", file=out)
    _linger_hint(out)
    return 0


def remove(*, out) -> int:
    path = unit_dir() / UNIT
    if not path.exists():
        print(f"no unit at {path}: nothing to remove", file=out)
        return 0
    why = _systemctl("disable", "--now", NAME)
    # what `disable` does, when it could not: the unit's link from default.target
    wants = path.parent / "default.target.wants" / UNIT
    if wants.is_symlink():
        wants.unlink()
    path.unlink()
    print(f"removed {path}", file=out)
    if why is None:
        _tell([["daemon-reload"]], out=out)
    else:
        print(
            f"could not tell the user's service manager ({why}); if the jobber runs under "
            f"it, run:\n  systemctl --user stop {NAME}\n  systemctl --user daemon-reload",
            file=out,
        )
    return 0


def show(options: Sequence[str], checked, *, out) -> int:
    if options:  # what install would write
        data_dir, settings = checked(options)
        argv = jobber_argv(options, data_dir)
        print(unit_text(argv, workdir=os.getcwd(), settings=settings), end="", file=out)
        return 0
    path = unit_dir() / UNIT
    if not path.exists():
        print(f"error: no unit at {path} (python -m jobber service install)", file=sys.stderr)
        return 1
    print(f"# {path}\n{path.read_text()}", end="", file=out)
    return 0


def main(argv: Sequence[str], checked: Callable[[Sequence[str]], tuple[Path, dict]]) -> int:
    """`python -m jobber service ACTION [--force] [--no-start] [JOBBER OPTIONS] DEALER...`;
    `checked` checks the jobber's options and gives its data directory and settings."""
    ap = argparse.ArgumentParser(
        prog="python -m jobber service",
        allow_abbrev=False,  # --no would else be --no-start, not the jobber's --no-runtimes
        description="Start the jobber with the machine (a systemd user unit, "
        f"{UNIT}); the options and dealers after ACTION are the jobber's.",
    )
    ap.add_argument("action", choices=("install", "remove", "show"))
    ap.add_argument("--force", action="store_true", help="install: replace a different unit")
    ap.add_argument("--no-start", action="store_true", help="install: write the unit only")
    args, options = ap.parse_known_args(argv)
    out = sys.stdout
    if not sys.platform.startswith("linux"):
        print(
            "error: `python -m jobber service` writes systemd units (Linux) only; elsewhere "
            "start `python -m jobber DEALER...` with the machine yourself (launchd on macOS, "
            "Task Scheduler on Windows)",
            file=sys.stderr,
        )
        return 1
    if args.action != "install" and (args.force or args.no_start):
        ap.error("--force and --no-start go with install")
    if args.action == "remove" and options:
        ap.error(f"remove takes no jobber options: {' '.join(options)}")
    try:
        if args.action == "install":
            return install(options, checked, force=args.force, start=not args.no_start, out=out)
        if args.action == "show":
            return show(options, checked, out=out)
        return remove(out=out)
    except (ServiceError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
