"""Serving a task file: `serve_task(TaskClass)`, the command line every task file gets
(`python my_task.py --jobbers 2 ...`), with its progress bar and local jobbers."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import zmq

import protocol as p
from dealer._core import CoreError, JournalMismatch
from dealer._fileserver import ALL_SOURCES, SERVE_MIB_S
from dealer._journal import AFRESH, Journal, JournalError, move_aside
from dealer._policy import BACKUPS, DENY_AFTER, LEASE_S, QUOTA, policy_for
from dealer._print import print_jobbers
from dealer._server import LINGER_S, Dealer
from dealer._service import DISTINCT
from net._author_keys import load_author_key
from net._http import parse_http
from net._keys import (
    KeyInUse,
    KeyLock,
    KeyPair,
    load_or_create_key_pair,
    load_public_keys,
    secret_path,
)
from net._router import PER_SOURCE_CONNECTIONS
from tasks import InputFileError, PayloadError, Task, cache_dir

log = logging.getLogger("dealer")

DEFAULT_BIND = p.DEFAULT_BIND
SHARED_KEY = "dealer"  # the key every batch of a directory shared before each had its own


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
        "--fresh",
        action="store_true",
        help="start the batch over: move the journal (with its -wal and -shm) aside, "
        "renamed with the time (it is kept, never deleted), and begin a new one",
    )
    g.add_argument(
        "--retry-failed",
        action="store_true",
        help="resume the batch with its failed jobs put back, keeping every accepted "
        "result; the payload and the limits may have changed (then the jobs not settled "
        "start over too); see docs/writing-tasks.md",
    )
    g.add_argument(
        "--retry",
        action="append",
        type=_job_number,
        default=[],
        metavar="JOB",
        help="retry only this failed job (its number, as `python -m dealer results` "
        "shows it; repeatable); implies --retry-failed",
    )
    g.add_argument(
        "--http",
        default=None,
        metavar="[HOST:]PORT",
        help="serve a live dashboard (a web page, /status.json and Prometheus /metrics) "
        "on this port, on 127.0.0.1 unless a host is given; it only reads (afterwards: "
        "python -m dealer dashboard DB)",
    )
    g.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="DEALER",
        help="a peer dealer, asked every 2 s what work it has: a jobber this one has "
        "nothing for is referred to the peers with work it can run (repeatable)",
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
    g.add_argument(
        "--lease",
        type=float,
        default=None,
        metavar="SECONDS",
        help="silence after which a jobber holding work is taken as gone and its jobs "
        f"sent to others (default: the task's, else {LEASE_S:g}; jobbers say they are "
        "alive every 5 s)",
    )
    g.add_argument(
        "--backups",
        type=int,
        default=None,
        metavar="N",
        help="at the tail of a batch, extra replicas of the jobs out longest for idle "
        f"jobbers (default {BACKUPS}; 0: none)",
    )
    g.add_argument(
        "--key",
        type=Path,
        default=None,
        metavar="PATH",
        help="the dealer's key pair, PATH.key_secret, locked while the dealer runs (default: "
        "the batch's own beside its journal, STEM.dealer.key_secret for STEM.sqlite, made on "
        "first use and kept when the batch resumes; see python -m dealer keygen)",
    )
    g.add_argument(
        "--admin-key",
        type=Path,
        default=None,
        metavar="PATH",
        help="the key pair whose holder may deny jobbers over the network (default: "
        "admin.key_secret beside the journal, made on first use)",
    )
    g.add_argument(
        "--sign",
        type=Path,
        default=None,
        metavar="KEYPATH",
        help="sign the payload with the author key KEYPATH.sign_secret (and send the "
        "rotations in KEYPATH.rotations): jobbers started with --trust KEYPATH.sign run "
        "only what it signed (see python -m dealer keygen --sign; default: the task's "
        f"signing_key, {cls.signing_key or 'none'})",
    )
    g.add_argument(
        "--max-per-address",
        type=int,
        default=PER_SOURCE_CONNECTIONS,
        metavar="N",
        help="connections kept open from one source address (an IPv6 /64 as one; default "
        f"{PER_SOURCE_CONNECTIONS}): raise it for more jobbers behind one NAT address",
    )
    g.add_argument(
        "--serve-mib-s",
        type=float,
        default=SERVE_MIB_S,
        metavar="MIB",
        help="input files one source address may fetch, MiB a second after a burst; all "
        f"sources together {ALL_SOURCES} times that (default {SERVE_MIB_S:g}: about a "
        "gigabit link)",
    )
    g.add_argument(
        "--distinct",
        choices=DISTINCT,
        default=None,
        help="replicas of a job go to distinct hosts (source addresses, an IPv6 /64 as one; "
        "the default), subnets (/24, /48), or only keys (for a closed pool whose machines "
        "you trust)",
    )
    g.add_argument(
        "--allow",
        type=Path,
        default=None,
        metavar="DIR",
        help="closed pool: only jobbers whose public keys are in DIR (*.key, zmq.auth format)",
    )
    g.add_argument(
        "--quota",
        type=int,
        default=None,
        metavar="N",
        help="replicas a new jobber (and a new host) may hold at once; good results raise it "
        f"(default {QUOTA})",
    )
    g.add_argument(
        "--deny-after",
        type=int,
        default=None,
        metavar="N",
        help="deny a jobber once N of its outputs lost a vote, more than won one (default "
        f"{DENY_AFTER}; 0: never)",
    )
    g.add_argument(
        "--trust-relay",
        action="append",
        default=[],
        metavar="KEY",
        help="believe the relay with this public key (64 hex digits) about which of its "
        "jobbers ran what: each counts as a machine of its own (repeatable; default: "
        "everything behind a relay is the relay's one machine; see docs/security.md)",
    )
    g.add_argument(
        "--contact",
        metavar="TEXT",
        help="how lenders reach you (an e-mail address or a URL, at most 256 characters), "
        "shown on their machines beside the task's name (default: the task's `contact`)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    g.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    return parser


def _relay_keys(keys: Sequence[str]) -> tuple[str, ...]:
    """--trust-relay keys, checked: 64 hex digits each (as status and the relay print them)."""
    out = []
    for key in keys:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", key):
            raise ValueError(f"--trust-relay {key!r}: a relay's key is 64 hexadecimal digits")
        out.append(key.lower())
    return tuple(out)


HOME = Path(".borednet")  # where a batch keeps its journal and keys, by default


def _job_number(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job number (0, 1, 2, ...)")
    return n


def journal_of(cls: type[Task], args: argparse.Namespace) -> Path:
    """The journal a batch of `cls` run with `args` keeps: --db, else its default."""
    return args.db or _default_db(cls, args)


def _default_db(cls: type[Task], args: argparse.Namespace) -> Path:
    """The task's own arguments pick the journal, so another N starts afresh and the
    same command resumes. They are the ones `cls.add_arguments` defines, but for those
    it names in `output_options` (where the results go: they decide no job)."""
    dealer_own = set(vars(_task_parser(Task).parse_args([])))
    output = set(getattr(cls, "output_options", ()))
    values = {k: v for k, v in vars(args).items() if k not in dealer_own | output}
    text = json.dumps(values, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return HOME / f"{cls.__name__.lower()}-{digest}.sqlite"


def key_pair(path: Path | None, default: Path, what: str) -> KeyPair:
    pair, made = load_or_create_key_pair(path or default)
    if made:
        log.info("made %s key pair %s.key_secret", what, path or default)
    return pair


def held_key(path: Path, holder: str, what: str, held: contextlib.ExitStack) -> KeyPair:
    """The key pair at PATH (made on first use), locked for as long as `held` is open:
    a second dealer on it is refused (KeyInUse) with its holder named."""
    try:
        held.enter_context(KeyLock(path, holder))
    except KeyInUse as e:
        raise KeyInUse(
            f"{e}. Two dealers on one key pair are one dealer to jobbers and allocators: "
            "stop that one first, or give this one a key of its own with --key PATH "
            "(made on first use)"
        ) from None
    return key_pair(path, path, what)


def batch_key(db: Path, resuming: bool) -> tuple[Path, bool]:
    """The key pair of the batch whose journal is DB, and whether it is the shared one.

    A batch's key is named after its journal, beside it (`primes-1a2b.dealer.key_secret`
    for `primes-1a2b.sqlite`): the same journal keeps its key (its lenders pinned it),
    another batch in the directory gets another. A journal resumed with no key of its
    own, beside the `dealer.key_secret` every batch of its directory shared before keys
    were per batch, was made then: it keeps the key its lenders pinned."""
    own = db.with_name(f"{db.stem}.dealer")
    shared = db.parent / SHARED_KEY
    if resuming and not secret_path(own).exists() and secret_path(shared).exists():
        return shared, True
    return own, False


def serve_task(cls: type[Task], argv: Sequence[str] | None = None) -> int:
    """Run a dealer for `cls` built from the command line. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _task_parser(cls)
    args = parser.parse_args(argv)
    if args.fresh and (args.retry_failed or args.retry):
        parser.error("--fresh starts the batch over: it has no failed jobs to retry")
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.ExitStack() as held:  # the dealer's key is locked while it serves
        return _serve(cls, args, held)


def _serve(cls: type[Task], args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    try:
        task = cls.from_args(args)
    # the author's payload does not build or would not run, or an input file cannot be read
    except (PayloadError, InputFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.contact:
        task.contact = args.contact  # told to every jobber (protocol.About)
    db = journal_of(cls, args)
    journal = None
    try:
        policy = policy_for(
            task,
            redundancy=args.redundancy,
            quorum=args.quorum,
            max_errors=args.max_errors,
            deadline_s=args.deadline,
            quota=args.quota,
            deny_after=args.deny_after,
            lease_s=args.lease,
            backups=args.backups,
        )
        home = db.parent
        home.mkdir(parents=True, exist_ok=True)
        key, shared = batch_key(db, db.exists() and not args.fresh)
        keys = held_key(args.key or key, f"the dealer of journal {db}", "the dealer's", held)
        if shared and args.key is None:
            log.info(
                "%s was made before batches had keys of their own: it keeps the shared "
                "%s.key_secret its lenders pinned",
                db,
                key,
            )
        admin = key_pair(args.admin_key, home / "admin", "the admin's")
        allow = None if args.allow is None else load_public_keys(args.allow)
        sign = args.sign or cls.signing_key
        signer = None if sign is None else load_author_key(sign)
        if args.fresh and (aside := move_aside(db)) is not None:
            print(f"moved the old journal {db} aside to {aside}", file=sys.stderr, flush=True)
        journal = Journal(db, f"{cls.__module__}.{cls.__qualname__}")
        progress = _Progress(task)
        dealer = Dealer(
            task,
            args.bind,
            journal,
            keys=keys,
            peers=[p.dealer_address(x) for x in args.peer],
            policy=policy,
            distinct=args.distinct or ("host" if allow is None else "key"),
            allow=allow,
            admins=(admin.public_hex,),
            relays=_relay_keys(args.trust_relay),
            on_turn=None if args.quiet else progress,
            signer=signer,
            http=None if args.http is None else parse_http(args.http),
            per_source=args.max_per_address,
            serve_mib_s=args.serve_mib_s,
            retry=args.retry if args.retry_failed or args.retry else None,
        )
    except (JournalError, CoreError, ValueError, OSError, KeyInUse) as e:
        if journal is not None:
            journal.close()
        hint = f"; {db}: {AFRESH}" if isinstance(e, JournalMismatch) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    except zmq.ZMQError as e:
        if journal is not None:
            journal.close()
        print(f"error: cannot bind {args.bind}: {e}{_bind_hint(e)}", file=sys.stderr)
        return 2
    signals = _Signals(dealer)  # before saying it listens: a signal from then on stops it
    # the address is what a lender needs: say it even when --quiet
    print(f"listening on {dealer.address}", file=sys.stderr, flush=True)
    # where the batch is kept: the same command resumes it, and the results are read there
    print(f"journal {db} (python -m dealer results {db})", file=sys.stderr, flush=True)
    if dealer.dashboard is not None:
        print(f"dashboard on {dealer.dashboard.url}", file=sys.stderr, flush=True)
    jobbers = _start_jobbers(args.jobbers, dealer.address)
    failed = False
    try:
        if args.quiet:
            dealer.run(linger=False)
        else:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm():  # log lines above the progress bar, not through it
                dealer.run(linger=False)
        if signals.got and not dealer.done:  # stopped: closed below as when done
            progress.close()
            print("interrupted; rerun the same command to resume", file=sys.stderr)
            return 128 + signals.got[0]
        if dealer.done:  # the answer first; then the courtesies of a finished dealer
            progress.close()
            print_jobbers(dealer.status()["jobbers"], file=sys.stderr)
            try:
                print(task.report(), flush=True)
            except Exception:  # the task's own bug: say so, with its traceback
                log.error("the task's report() raised", exc_info=True)
                failed = True
            if dealer.core.source_error:
                print(
                    f"error: the task's jobs() raised: {dealer.core.source_error}", file=sys.stderr
                )
                failed = True
            for f in task.failures:
                print(f"failed job {' '.join(f.job.args)}: {'; '.join(f.reasons)}", file=sys.stderr)
            if jobbers:  # they give back what they hold while we still listen
                _signal_jobbers(jobbers)
                dealer.linger(lambda: all(j.poll() is not None for j in jobbers), 10.0)
            else:
                dealer.linger(lambda: not dealer.core.late, LINGER_S)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        progress.close()
        dealer.close()
        _stop_jobbers(jobbers)
        signals.restore()
    return 1 if failed or task.failures or dealer.failures else 0


class _Progress:
    """The progress bar (tqdm) of a task's command line: jobs settled, and why work
    waits; fed by the dealer after every turn."""

    def __init__(self, task: Task) -> None:
        self._task = task
        self._bar = None
        self._shown = 0
        self._said_at = 0.0
        self._closed = False

    def __call__(self, service, now: float) -> None:
        if self._closed:  # closed once, with the answer: never drawn again after it
            return
        if self._bar is None:
            from tqdm import tqdm

            self._shown = service.settled_count
            self._bar = tqdm(
                total=self._task.total(),
                initial=service.core.accepted + service.core.failed,
                unit="job",
                file=sys.stderr,
                desc=type(self._task).__name__,
                dynamic_ncols=True,
            )
        self._bar.update(service.settled_count - self._shown)
        self._shown = service.settled_count
        if now - self._said_at >= 1.0:  # the progress line says why work waits
            self._said_at = now
            why = service.waiting(now)
            self._bar.set_postfix_str(why[0] if why else "", refresh=False)

    def close(self) -> None:
        self._closed = True
        if self._bar is not None:
            self._bar.set_postfix_str("", refresh=False)  # why work waited: past now
            self._bar.close()
            self._bar = None


def _bind_hint(e: zmq.ZMQError) -> str:
    if e.errno != zmq.EADDRINUSE:
        return ""
    return (
        "; another program (another dealer?) has that port. A dealer takes the port it "
        "binds and the next one up (its plaintext port): choose a free pair with "
        "--bind tcp://HOST:PORT, or --bind 'tcp://HOST:*' for any"
    )


class _Signals:
    """SIGTERM and SIGINT stop the dealer's loop after its turn, so that it closes as
    it does when done (its journal too: the next start resumes without a warning). A
    second one interrupts at once. A SIGINT ignored (a background job) stays ignored."""

    def __init__(self, dealer) -> None:
        self.got: list[int] = []
        self._dealer = dealer
        self._before: dict[int, object] = {}
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers
        for sig in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                self._before[sig] = signal.signal(sig, self._on)

    def _on(self, signum: int, frame) -> None:
        if self.got:
            raise KeyboardInterrupt
        self.got.append(signum)
        self._dealer.stop()

    def restore(self) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)


def _start_jobbers(n: int, address: str) -> list[subprocess.Popen]:
    """N local jobbers, each connecting from its own loopback address (127.0.0.2, ...),
    so that a dealer counting distinct hosts sees N machines."""
    procs = []
    local = address.startswith(("tcp://127.", "tcp://localhost:"))
    for i in range(n):
        cmd = [
            sys.executable,
            "-m",
            "jobber",
            address,
            "--slots",
            "1",
            "--data-dir",
            str(Path(".borednet") / f"jobber-{i}"),
            "--min-backoff",
            "0.2",
            "--max-backoff",
            "2",
        ]
        if local:
            cmd += ["--source", f"127.0.0.{2 + i % 250}"]
        # a runtime (Python) is compiled once for all of them, in the user's module cache,
        # and its files taken from the user's cache (where this dealer found them), not
        # sent to each over the wire
        cmd += ["--runtime-cache", str(cache_dir() / "modules"), "--runtimes-from-index"]
        cmd += ["--exit-with", str(os.getpid())]  # even if this dealer is killed with kill -9
        cmd.append("--quiet")  # the dealer's progress bar speaks for them
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL))
    return procs


def _signal_jobbers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)


def _stop_jobbers(procs: list[subprocess.Popen]) -> None:
    _signal_jobbers(procs)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
