"""`python -m sandbox run PAYLOAD.wasm [ARGS...]`: try a payload as a jobber would run it.

``--file GUEST=HOST`` (repeatable) gives it an input file, read-only at the
absolute path GUEST (see _tree, _files).

Reads the payload's stdin from ours (none when ours is a terminal), writes its
stdout to ours, then its stderr and one report line to our stderr::

    sandbox: ok, 1234567 fuel, 0.012 s

Exit code: 0 for a clean exit (OK); the payload's own code for EXIT; 125 for
every other outcome (a limit, a trap, an invalid module, ...); 2 for a bad
command line.

The job runs as a jobber runs it: in one slot worker process (see _slots), with
native NaNs as for a task that is not cross-platform (``--canonical-nans`` as
for one that is), so
compiling is fenced too (a module beyond the pre-check's caps is INVALID; one
that compiles for longer than ``--time`` or COMPILE_TIME_S is TIME, or takes
more memory than COMPILE_MEMORY_MB, MEMORY). The worker runs at our own
priority. Without ``--cache`` the module cache is a temporary directory.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from multiprocessing.connection import wait
from pathlib import Path

from protocol import Limits, ProtocolError, Status
from sandbox._cache import ModuleCache
from sandbox._outcome import Outcome
from sandbox._prepare import PrepareError, prepare_runtime
from sandbox._slots import Slots
from sandbox._tree import NO_FILES, Tree
from sandbox._worker import lower_priority

OTHER_STATUS_EXIT = 125
POLL_S = 0.05  # how often the slot's watchdogs (the compile time limit) are looked at

_DEFAULTS = Limits()


def _parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog="python -m sandbox",
        description="borednet's WebAssembly sandbox.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_p = commands.add_parser(
        "run",
        help="run one payload under limits",
        description="Run a WASI payload as a jobber would: stdin in, stdout out, "
        "status, fuel and wall time on stderr. Options may come anywhere; put -- "
        "before payload arguments that start with a dash.",
    )
    run_p.prog = "python -m sandbox run"
    run_p.add_argument("payload", type=Path, help="a .wasm file (WASI command module)")
    run_p.add_argument("args", nargs="*", help="the payload's arguments (argv[1:])")
    run_p.add_argument(
        "--fuel", type=int, default=_DEFAULTS.fuel, help=f"instructions (default {_DEFAULTS.fuel})"
    )
    run_p.add_argument(
        "--memory",
        type=int,
        default=_DEFAULTS.memory_mb,
        metavar="MB",
        help=f"linear memory in MiB (default {_DEFAULTS.memory_mb})",
    )
    run_p.add_argument(
        "--time",
        type=float,
        default=_DEFAULTS.time_s,
        metavar="S",
        help=f"wall-clock seconds (default {_DEFAULTS.time_s:g})",
    )
    run_p.add_argument(
        "--output",
        type=int,
        default=_DEFAULTS.output_kb,
        metavar="KB",
        help=f"stdout in KiB (default {_DEFAULTS.output_kb})",
    )
    run_p.add_argument(
        "--canonical-nans",
        action="store_true",
        help="canonicalize every NaN, as jobbers do for a cross-platform task (default: "
        "NaN bits as this CPU makes them, as for any other task; faster on float code)",
    )
    run_p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="GUEST=HOST",
        help="an input file: the host file HOST, read-only at the absolute path GUEST in "
        "the payload's tree (repeatable)",
    )
    run_p.add_argument(
        "--cache",
        type=Path,
        default=None,
        metavar="DIR",
        help="a module cache directory, to compile each payload once (default: none)",
    )
    prep = commands.add_parser(
        "prepare",
        help="make a pinned language runtime ready in a module cache",
        description="Store a pinned runtime's module (Python) in a module cache and compile "
        "it there once for each engine (native and canonical NaNs), under the runtime's "
        "compile fences. Exit 0 when it is ready, 1 if it "
        "cannot be (the reason on stderr).",
    )
    prep.prog = "python -m sandbox prepare"
    prep.add_argument("module", type=Path, help="the runtime's .wasm file")
    prep.add_argument("--cache", type=Path, required=True, metavar="DIR", help="the module cache")
    prep.add_argument(
        "--shared",
        type=Path,
        metavar="DIR",
        help="a module cache shared by this machine's jobbers: a compiled form there is "
        "copied, not compiled again, and one compiled here is left there",
    )
    prep.add_argument(
        "--compile-memory", type=int, metavar="MB", help="the owner's ceiling for compiling"
    )
    prep.add_argument(
        "--nice", type=int, default=0, metavar="N", help="lower this process's priority first"
    )
    return parser, run_p


def prepare_main(ns: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="sandbox: %(message)s")
    lower_priority(ns.nice)
    try:
        rt = prepare_runtime(
            ns.cache,
            ns.module,
            shared=ns.shared,
            memory_mb=ns.compile_memory,
        )
    except PrepareError as e:
        sys.stderr.write(f"sandbox: {e}\n")
        return 1
    sys.stderr.write(f"sandbox: runtime {rt.name} is ready in {ns.cache}\n")
    return 0


def exit_code(status: Status, payload_code: int | None) -> int:
    if status is Status.OK:
        return 0
    if status is Status.EXIT and payload_code:
        return payload_code % 256 or 1
    return OTHER_STATUS_EXIT


def run_in_slot(
    wasm: bytes,
    args: Sequence[str],
    stdin: bytes,
    limits: Limits,
    cache_root: Path,
    files: Mapping[str, str | bytes] = NO_FILES,
) -> Outcome:
    """One job in one slot worker (at this process's priority), as a jobber runs it."""
    sha256 = ModuleCache(cache_root).put(wasm)
    with Slots(1, cache_root, nice=os.getpriority(os.PRIO_PROCESS, 0)) as slots:
        slots.start("run", sha256, args, stdin, limits, files=files)
        while True:
            done = slots.collect()
            if done:
                return done[0][1]
            wait(slots.fds(), timeout=POLL_S)


def main(argv: Sequence[str] | None = None) -> int:
    parser, run_parser = _parsers()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["prepare"]:
        return prepare_main(parser.parse_args(argv))
    if argv[:1] != ["run"]:
        parser.parse_args(argv)  # help, or the usage error
        return 2
    parser = run_parser
    ns = parser.parse_intermixed_args(argv[1:])  # options may follow the payload's arguments
    logging.basicConfig(level=logging.WARNING, format="sandbox: %(message)s")
    logging.getLogger("sandbox._slots").setLevel(logging.ERROR)  # the report line says it
    try:
        limits = Limits(ns.fuel, ns.memory, ns.time, ns.output, None if ns.canonical_nans else True)
    except ProtocolError as e:
        parser.error(str(e))
    try:
        wasm = ns.payload.read_bytes()
    except OSError as e:
        parser.error(f"cannot read {ns.payload}: {e.strerror or e}")
    files = {}
    for spec in ns.file:
        guest, sep, host = spec.partition("=")
        if not sep or not host:
            parser.error(f"--file {spec!r}: give GUEST=HOST")
        files[guest] = os.path.abspath(host)
    try:
        Tree(files)
    except ValueError as e:
        parser.error(str(e))
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    with tempfile.TemporaryDirectory(prefix="borednet-sandbox-") as scratch:
        outcome = run_in_slot(wasm, ns.args, stdin, limits, ns.cache or Path(scratch), files)

    sys.stdout.buffer.write(outcome.stdout)
    sys.stdout.flush()
    if outcome.stderr:
        sys.stderr.buffer.write(outcome.stderr)
        if not outcome.stderr.endswith(b"\n"):
            sys.stderr.buffer.write(b"\n")
    report = f"sandbox: {outcome.status.value}, {outcome.fuel} fuel, {outcome.wall_s:.3f} s"
    if outcome.detail:
        detail = outcome.detail.split("; stderr: ")[0]  # the stderr was just shown
        report += f": {detail}"
    sys.stderr.write(report + "\n")
    sys.stderr.flush()
    return exit_code(outcome.status, outcome.exit_code)
