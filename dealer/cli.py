"""Command lines: `serve_task` for task files, and `python -m dealer status ADDR`."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import zmq

import protocol as p
from dealer._core import CoreError
from dealer._journal import Journal, JournalError
from dealer._server import Dealer, Referrer, policy_for
from tasks import Task

log = logging.getLogger("dealer")

DEFAULT_BIND = f"tcp://*:{p.DEFAULT_PORT}"


def _task_parser(cls: type[Task]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(cls.__doc__ or cls.__name__).strip().splitlines()[0],
        epilog="Jobbers: python -m jobber HOST[:PORT] on any machine that can reach this one.",
    )
    cls.add_arguments(parser)
    g = parser.add_argument_group("dealer")
    g.add_argument(
        "--bind",
        default=DEFAULT_BIND,
        help=f"ZeroMQ address to serve on (default {DEFAULT_BIND}; "
        "tcp://127.0.0.1:* picks a free port)",
    )
    g.add_argument(
        "--db",
        type=Path,
        default=None,
        help="SQLite journal; rerunning with the same one resumes the batch "
        "(default: .borednet/<task>-<arguments hash>.sqlite)",
    )
    g.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="DEALER",
        help="a dealer to refer jobbers to when this one has no work (repeatable)",
    )
    g.add_argument(
        "--jobbers",
        type=int,
        default=0,
        metavar="N",
        help="also start N jobber processes on this machine",
    )
    g.add_argument(
        "--redundancy",
        type=int,
        default=None,
        metavar="N",
        help=f"replicas per job, on distinct jobbers (task default {cls.redundancy})",
    )
    g.add_argument(
        "--quorum",
        type=int,
        default=None,
        metavar="N",
        help="matching outputs needed to accept a job (default: the redundancy)",
    )
    g.add_argument(
        "--max-errors",
        type=int,
        default=None,
        metavar="N",
        help=f"failed or overdue replicas before a job fails (task default {cls.max_errors})",
    )
    g.add_argument(
        "--deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="time a jobber has to return a job (default: from the task's limits)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    g.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    return parser


def _default_db(cls: type[Task], argv: Sequence[str]) -> Path:
    # the task's own arguments pick the journal, so another N starts afresh and
    # the same command resumes
    digest = hashlib.sha256("\0".join(argv).encode()).hexdigest()[:12]
    return Path(".borednet") / f"{cls.__name__.lower()}-{digest}.sqlite"


def _task_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """The arguments that define the task (without the dealer's own options)."""
    dealer_opts = {
        "--bind",
        "--db",
        "--peer",
        "--jobbers",
        "--redundancy",
        "--quorum",
        "--max-errors",
        "--deadline",
    }
    flags = {"--quiet", "-v", "--verbose"}
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in dealer_opts:
            skip = "=" not in a
            continue
        if name in flags:
            continue
        out.append(a)
    return out


def serve_task(cls: type[Task], argv: Sequence[str] | None = None) -> int:
    """Run a dealer for `cls` built from the command line. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _task_parser(cls)
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    task = cls.from_args(args)
    db = args.db or _default_db(cls, _task_argv(parser, argv))
    try:
        policy = policy_for(
            task,
            redundancy=args.redundancy,
            quorum=args.quorum,
            max_errors=args.max_errors,
            deadline_s=args.deadline,
        )
        journal = Journal(db, f"{cls.__module__}.{cls.__qualname__}")
        dealer = Dealer(
            task,
            args.bind,
            journal,
            peers=args.peer,
            policy=policy,
            progress=None if args.quiet else sys.stderr,
        )
    except (JournalError, CoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except zmq.ZMQError as e:
        print(f"error: cannot bind {args.bind}: {e}", file=sys.stderr)
        return 2
    jobbers = _start_jobbers(args.jobbers, dealer.endpoint)
    try:
        if args.quiet:
            dealer.run()
        else:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():  # log lines above the progress bar, not through it
                dealer.run()
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        dealer.close()
        _stop_jobbers(jobbers)
    _print_jobbers(dealer.status()["jobbers"], file=sys.stderr)
    print(task.report(), flush=True)
    for f in task.failures:
        print(f"failed job {' '.join(f.job.args)}: {'; '.join(f.reasons)}", file=sys.stderr)
    return 1 if task.failures else 0


def _connectable(endpoint: str) -> str:
    # a dealer bound to every interface is reached on loopback by local jobbers
    return endpoint.replace("tcp://0.0.0.0:", "tcp://127.0.0.1:").replace(
        "tcp://[::]:", "tcp://[::1]:"
    )


def _start_jobbers(n: int, endpoint: str) -> list[subprocess.Popen]:
    procs = []
    for i in range(n):
        cmd = [
            sys.executable,
            "-m",
            "jobber",
            _connectable(endpoint),
            "--slots",
            "1",
            "--data-dir",
            str(Path(".borednet") / f"jobber-{i}"),
            "--min-backoff",
            "0.2",
            "--max-backoff",
            "2",
        ]
        cmd.append("--quiet")  # the dealer's progress bar speaks for them
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
    return procs


def _stop_jobbers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def refer(bind: str, peers: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        server = Referrer(bind, [p.dealer_address(x) for x in peers])
    except (ValueError, zmq.ZMQError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    log.info("referring jobbers on %s to %s", server.endpoint, ", ".join(server.peers))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


# --- python -m dealer -----------------------------------------------------------


def query_status(address: str, timeout_s: float = 5.0) -> dict:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(p.dealer_address(address))
        sock.send(p.encode(p.StatusQuery(1)))
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no answer from {address} within {timeout_s:g} s")
        reply = p.decode(sock.recv())
    finally:
        sock.close()
    if isinstance(reply, p.Error):
        raise RuntimeError(f"{address} refused: {reply.code.value}: {reply.text}")
    if not isinstance(reply, p.StatusReply):
        raise RuntimeError(f"{address} answered with {reply.TYPE}")
    return reply.info


def _print_jobbers(jobbers: dict, file=sys.stdout) -> None:
    if not jobbers:
        return
    print(f"{'jobber':30} {'valid':>7} {'invalid':>7} {'errors':>7} {'credit':>16}", file=file)
    for name, r in sorted(jobbers.items()):
        print(
            f"{name:30} {r['valid']:7} {r['invalid']:7} {r['errors']:7} {r['credit']:16}",
            file=file,
        )


def _print_status(info: dict) -> None:
    total = info.get("total")
    print(
        f"task {info.get('task')}: {info.get('accepted')} accepted, {info.get('failed')} failed, "
        f"{info.get('in_flight')} in flight, {info.get('drawn')} drawn"
        + (f" of {total}" if total is not None else "")
    )
    if info.get("peers"):
        print(f"refers jobbers to {', '.join(info['peers'])}")
    _print_jobbers(info.get("jobbers", {}))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dealer", description="Talk to a running dealer."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="show tasks and jobbers of a running dealer")
    st.add_argument("address", help="host, host:port or tcp://host:port")
    st.add_argument("--json", action="store_true", help="print the raw status as JSON")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    rf = sub.add_parser("refer", help="serve no task: refer every jobber to the given dealers")
    rf.add_argument("--bind", default=DEFAULT_BIND, help=f"address to serve on ({DEFAULT_BIND})")
    rf.add_argument(
        "--peer",
        action="append",
        required=True,
        metavar="DEALER",
        help="a dealer with work (repeatable)",
    )
    args = parser.parse_args(argv)
    if args.command == "refer":
        return refer(args.bind, args.peer)
    try:
        info = query_status(args.address, args.timeout)
    except (TimeoutError, RuntimeError, ValueError, p.ProtocolError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print_status(info)
    return 0
