"""`python -m jobber DEALER [DEALER ...]`: lend this machine to dealers.

`python -m jobber status|suspend|resume|quit` talks to the jobber running on
the same data directory through its local control socket.
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
from pathlib import Path

from jobber import _control
from jobber._backoff import MAX_BACKOFF_S, MIN_BACKOFF_S
from jobber._client import Config, Jobber, JobberError


def default_data_dir() -> Path:
    env = os.environ.get("BOREDNET_JOBBER_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "borednet" / "jobber"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m jobber",
        description="Run borednet jobs from dealers on this machine, at low priority, sandboxed. "
        "`python -m jobber status|suspend|resume|quit` controls a running jobber.",
    )
    ap.add_argument(
        "dealers",
        nargs="*",
        metavar="DEALER",
        help="host, host:port or tcp://host:port (default port 7117)",
    )
    ap.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file with the same keys as these options (dashes or underscores); "
        "the command line wins",
    )
    ap.add_argument(
        "--slots",
        type=int,
        default=os.cpu_count() or 1,
        help="jobs run at once (default: the CPU count)",
    )
    ap.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="spool, payload cache, identity, control socket (default: "
        "$BOREDNET_JOBBER_DIR or ~/.local/share/borednet/jobber)",
    )
    ap.add_argument("--name", default=None, help="this jobber's name (default: host name + random)")
    ap.add_argument(
        "--max-idle",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exit after this long with no work from any dealer",
    )
    ap.add_argument(
        "--memory",
        type=int,
        default=None,
        metavar="MB",
        help="memory one job may use (default: physical memory / slots)",
    )
    ap.add_argument(
        "--idle-only",
        action="store_true",
        help="run jobs only while the machine is otherwise idle; suspend them when "
        "its owner needs it",
    )
    ap.add_argument(
        "--idle-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --idle-only: quiet this long before jobs run (default 60)",
    )
    ap.add_argument(
        "--cpu-limit",
        type=float,
        default=100.0,
        metavar="PCT",
        help="let jobs run only this percent of the time (default 100)",
    )
    ap.add_argument(
        "--min-backoff",
        type=float,
        default=MIN_BACKOFF_S,
        metavar="SECONDS",
        help=f"first wait after a failed contact (default {MIN_BACKOFF_S:g})",
    )
    ap.add_argument(
        "--max-backoff",
        type=float,
        default=MAX_BACKOFF_S,
        metavar="SECONDS",
        help=f"longest wait after failed contacts (default {MAX_BACKOFF_S:g})",
    )
    ap.add_argument(
        "--request-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="a dealer that does not answer in this long has failed (default 10)",
    )
    ap.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on shutdown, how long running jobs may finish (default 30)",
    )
    ap.add_argument("--json", action="store_true", help="with status: print JSON")
    ap.add_argument("--quiet", action="store_true", help="warnings only")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every job")
    return ap


def _load_config(ap: argparse.ArgumentParser, path: Path) -> None:
    """Make the TOML file's keys the parser's defaults; unknown keys are an error."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        ap.error(f"--config {path}: {e}")
    known = {a.dest for a in ap._actions} - {"help", "config", "json"}
    defaults = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in known:
            ap.error(f"--config {path}: unknown key {key!r}")
        if dest in ("data_dir",):
            value = Path(value)
        defaults[dest] = value
    ap.set_defaults(**defaults)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    args = ap.parse_args(argv)
    if args.config is not None:
        _load_config(ap, args.config)
        args = ap.parse_args(argv)
    data_dir = args.data_dir or default_data_dir()
    if args.dealers and args.dealers[0] in _control.COMMANDS:
        if len(args.dealers) > 1:
            ap.error(f"{args.dealers[0]} takes no dealer addresses")
        return control(data_dir, args.dealers[0], as_json=args.json)
    if not args.dealers:
        ap.error("name at least one dealer (or a command: status, suspend, resume, quit)")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s jobber %(levelname)s %(message)s")
    cfg = Config(
        dealers=list(args.dealers),
        data_dir=data_dir,
        slots=args.slots,
        name=args.name,
        max_idle_s=args.max_idle,
        min_backoff_s=args.min_backoff,
        max_backoff_s=args.max_backoff,
        request_timeout_s=args.request_timeout,
        memory_mb=args.memory,
        grace_s=args.grace,
        idle_only=args.idle_only,
        idle_after_s=args.idle_after,
        cpu_limit=args.cpu_limit,
    )
    try:
        jobber = Jobber(cfg)
    except (JobberError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: object) -> None:
        jobber.stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return jobber.run()


def control(data_dir: Path, cmd: str, *, as_json: bool = False) -> int:
    try:
        reply = _control.ask(data_dir, cmd)
    except (ConnectionError, TimeoutError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"error: {reply.get('error')}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    print(
        f"jobber {reply['name']}: {reply['slots']} slots, {reply['done']} jobs done, "
        f"{len(reply['running'])} running, {reply['buffered']} buffered, "
        f"{reply['spooled']} results spooled"
        + (f", suspended ({reply['suspended']})" if reply.get("suspended") else "")
        + (", stopping" if reply.get("stopping") else "")
    )
    for d in reply["dealers"]:
        state = f"backed off {d['backoff_s']:.0f} s more" if d["backoff_s"] > 0 else "ready"
        origin = "" if d["pinned"] else " (referred)"
        print(f"  {d['address']}{origin}: {state}, {d['failures']} failed contacts in a row")
    for tag in reply["running"]:
        print(f"  running {tag}")
    return 0
