"""Command lines: `serve_task` for task files, and
`python -m dealer status|results|jobs|refer|keygen|rotate|deny|allocator|relay`."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import zmq

import protocol as p
from dealer import _history, _peerlink
from dealer._core import CoreError, JournalMismatch
from dealer._http import parse_http
from dealer._journal import AFRESH, Journal, JournalError, ReadOnly, move_aside
from dealer._server import LINGER_S, PER_SOURCE_CONNECTIONS, Dealer, Referrer
from dealer._service import DISTINCT, policy_for
from protocol._keys import (
    KeyPair,
    create_key_pair,
    load_key_pair,
    load_or_create_key_pair,
    load_public_keys,
    z85_of_hex,
)
from protocol._signing import (
    create_author_key,
    load_author_key,
    public_path,
    rotations_path,
    write_rotation,
)
from tasks import PayloadError, Task

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
        "--fresh",
        action="store_true",
        help="start the batch over: move the journal (with its -wal and -shm) aside, "
        "renamed with the time (it is kept, never deleted), and begin a new one",
    )
    g.add_argument(
        "--http",
        default=None,
        metavar="[HOST:]PORT",
        help="serve a live dashboard (a web page, /status.json and Prometheus /metrics) "
        "on this port, on 127.0.0.1 unless a host is given; it only reads",
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
        "sent to others (default 20; jobbers say they are alive every 5 s)",
    )
    g.add_argument(
        "--backups",
        type=int,
        default=None,
        metavar="N",
        help="at the tail of a batch, extra replicas of the jobs out longest for idle "
        "jobbers (default 1; 0: none)",
    )
    g.add_argument(
        "--key",
        type=Path,
        default=None,
        metavar="PATH",
        help="the dealer's key pair, PATH.key_secret (default: dealer.key_secret beside the "
        "journal, made on first use; see python -m dealer keygen)",
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
        help="replicas a new jobber (and a new host) may hold at once; good results raise it",
    )
    g.add_argument(
        "--deny-after",
        type=int,
        default=None,
        metavar="N",
        help="deny a jobber once N of its outputs lost a vote, more than won one (0: never)",
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


def _default_db(cls: type[Task], args: argparse.Namespace) -> Path:
    """The task's own arguments pick the journal, so another N starts afresh and the
    same command resumes. They are the ones `cls.add_arguments` defines."""
    dealer_own = set(vars(_task_parser(Task).parse_args([])))
    values = {k: v for k, v in vars(args).items() if k not in dealer_own}
    text = json.dumps(values, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Path(".borednet") / f"{cls.__name__.lower()}-{digest}.sqlite"


def _key_pair(path: Path | None, default: Path, what: str) -> KeyPair:
    pair, made = load_or_create_key_pair(path or default)
    if made:
        log.info("made %s key pair %s.key_secret", what, path or default)
    return pair


def serve_task(cls: type[Task], argv: Sequence[str] | None = None) -> int:
    """Run a dealer for `cls` built from the command line. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _task_parser(cls)
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        task = cls.from_args(args)
    except PayloadError as e:  # the author's payload does not build or would not run
        print(f"error: {e}", file=sys.stderr)
        return 2
    db = args.db or _default_db(cls, args)
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
        keys = _key_pair(args.key, home / "dealer", "the dealer's")
        admin = _key_pair(args.admin_key, home / "admin", "the admin's")
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
        )
    except (JournalError, CoreError, ValueError, OSError) as e:
        if journal is not None:
            journal.close()
        hint = f"; {db}: {AFRESH}" if isinstance(e, JournalMismatch) else ""
        print(f"error: {e}{hint}", file=sys.stderr)
        return 2
    except zmq.ZMQError as e:
        if journal is not None:
            journal.close()
        print(f"error: cannot bind {args.bind}: {e}", file=sys.stderr)
        return 2
    # the address is what a lender needs: say it even when --quiet
    print(f"listening on {dealer.address}", file=sys.stderr, flush=True)
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
        if dealer.done:  # the answer first; then the courtesies of a finished dealer
            progress.close()
            _print_jobbers(dealer.status()["jobbers"], file=sys.stderr)
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
    return 1 if failed or task.failures or dealer.failures else 0


class _Progress:
    """The progress bar (tqdm) of a task's command line: jobs settled, and why work
    waits; fed by the dealer after every turn."""

    def __init__(self, task: Task) -> None:
        self._task = task
        self._bar = None
        self._shown = 0
        self._said_at = 0.0

    def __call__(self, service, now: float) -> None:
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
        if self._bar is not None:
            self._bar.close()
            self._bar = None


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


def refer(bind: str, peers: list[str], key: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        keys = _key_pair(key, key, "the referrer's")
        server = Referrer(bind, [p.dealer_address(x) for x in peers], keys)
    except (ValueError, OSError, zmq.ZMQError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    what = f"referring jobbers on {server.address} to {', '.join(server.peers.addresses)}"
    return serve_until_stopped(server, what)


def serve_until_stopped(server, what: str) -> int:
    """Run a server (Referrer, Relay) until it stops, SIGTERM or Ctrl-C, then close it;
    it says where it listens on stderr first (what tests and scripts wait for)."""
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    print(f"listening on {server.address}", file=sys.stderr, flush=True)
    log.info("%s", what)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


# --- python -m dealer -----------------------------------------------------------


def public_endpoint(address: str) -> str:
    """The plaintext port of the dealer at `address`, in any form (the work port + 1)."""
    return _peerlink.public_endpoint(p.dealer_address(address))


def _ask(sock: zmq.Socket, msg: p.Message, address: str, timeout_s: float) -> p.Message:
    sock.send(p.encode(msg))
    if not sock.poll(int(timeout_s * 1000)):
        raise TimeoutError(f"no answer from {address} within {timeout_s:g} s")
    reply = p.decode(sock.recv())
    if isinstance(reply, p.Error):
        raise RuntimeError(f"{address} refused: {reply.code.value}: {reply.text}")
    return reply


def _public_ask(address: str, msg: p.Message, timeout_s: float) -> p.Message:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IPV6, 1)  # the dealer may be IPv6
    try:
        sock.connect(public_endpoint(address))
        return _ask(sock, msg, address, timeout_s)
    finally:
        sock.close()


def query_status(address: str, timeout_s: float = 5.0, page: int = 0) -> dict:
    """A dealer's status, asked on its plaintext port (no key needed). A dealer that says
    it is busy (status is rationed per address) is asked again when it says, within
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = max(0.05, deadline - time.monotonic())
        try:
            reply = _public_ask(address, p.StatusQuery(1, page), left)
        except RuntimeError as e:
            busy = _BUSY.search(str(e))
            if busy is None or time.monotonic() + float(busy.group(1)) >= deadline:
                raise
            time.sleep(float(busy.group(1)))
            continue
        if not isinstance(reply, p.StatusReply):
            raise RuntimeError(f"{address} answered with {reply.TYPE}")
        return reply.info


_BUSY = re.compile(r"busy: .*ask again in ([0-9.]+) s")  # the dealer's ration (docs/protocol.md)


def admin_ask(
    endpoint: str,
    server_key: str | None,
    msg: p.Message,
    admin: KeyPair,
    address: str,
    timeout_s: float,
) -> p.Message:
    """One request to a server's encrypted port, speaking as `admin` (its key pair is the
    proof of who asks); the server's key is learnt on its plaintext port when not given."""
    if server_key is None:  # learn it now; the admin's own key still authenticates us
        hello = _public_ask(endpoint, p.Hello(1), timeout_s)
        if not isinstance(hello, p.HelloReply):
            raise RuntimeError(f"{address} answered hello with {hello.TYPE}")
        server_key = hello.key
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.IPV6, 1)  # the dealer may be IPv6
    sock.curve_secretkey, sock.curve_publickey = admin.secret, admin.public
    sock.curve_serverkey = z85_of_hex(server_key)
    try:
        sock.connect(endpoint)
        return _ask(sock, msg, address, timeout_s)
    finally:
        sock.close()


def deny(address: str, key: str, reason: str, admin: KeyPair, timeout_s: float = 5.0) -> str:
    """Ban the identity `key` at the dealer, speaking as its admin over the encrypted port."""
    endpoint, server_key = p.split_key(p.dealer_address(address))
    reply = admin_ask(endpoint, server_key, p.Deny(1, key, reason), admin, address, timeout_s)
    if not isinstance(reply, p.AdminReply):
        raise RuntimeError(f"{address} answered with {reply.TYPE}")
    return reply.text


def _print_jobbers(rows: list[dict], file=sys.stdout) -> None:
    if not rows:
        return
    head = f"{'jobber':24} {'key':12} {'machine':18} {'valid':>6} {'invalid':>7} {'errors':>6}"
    print(f"{head} {'credit':>16}", file=file)
    for r in rows:
        name = r["name"] + (" (denied)" if r.get("denied") else "")
        print(
            f"{name[:24]:24} {r['key'][:12]:12} {r['machine'][:18]:18} {r['valid']:6} "
            f"{r['invalid']:7} {r['errors']:6} {r['credit']:16}",
            file=file,
        )


def _print_peers(rows: list, now: float | None = None) -> None:
    """What each peer last said of its work, when, and how its link fares."""
    now = time.time() if now is None else now
    for r in rows:
        if isinstance(r, str):  # a referrer that predates work offers names peers only
            print(f"peer {r}")
            continue
        if r.get("said_at") is None:
            said = "never answered"
        elif r.get("finished"):
            said = "finished"
        else:
            lim = r.get("limits")
            needs = f", {lim['memory_mb']} MiB per job" if lim else ", hands out no jobs itself"
            left = "" if r.get("left") is None else f" ({r['left']} left)"
            said = f"{r.get('jobs')} jobs{left}{needs}"
        if r.get("said_at") is not None:
            said += f", said {max(0.0, now - r['said_at']):.0f} s ago"
            said += " (stale: not referred)" if r.get("stale") else ""
        link = ""
        if r.get("failures"):
            link = f"; {r['failures']} failed contacts ({r.get('error')})"
            link += f", next try in {max(0.0, r['next_try'] - now):.0f} s"
        print(f"peer {r.get('address')}: {said}{link}")


def _print_status(info: dict) -> None:
    if info.get("relay"):  # a relay's status: dealer._relay_cli
        from dealer._relay_cli import print_status

        print_status(info)
        return
    if info.get("task") is None:
        print("refers jobbers to the peers with work they can run:")
        _print_peers(info.get("peers", []))
        return
    total = info.get("total")
    print(
        f"task {info.get('task')}: {info.get('accepted')} accepted, {info.get('failed')} failed, "
        f"{info.get('in_flight')} in flight, {info.get('drawn')} drawn"
        + (f" of {total}" if total is not None else "")
    )
    print(
        f"key {info.get('key')}; replicas on distinct {info.get('distinct')}s"
        + ("; closed pool" if info.get("closed") else "")
    )
    if info.get("signer"):
        print(f"payload signed by author key {info['signer']}")
    for why in info.get("waiting", []):
        print(f"waiting: {why}")
    if info.get("disputed"):
        print(f"{info['disputed']} disagreements; latest:")
        for d in info.get("disputes", []):
            groups = "; ".join(
                f"{'won' if g['won'] else 'lost'} {g['output']} by "
                f"{', '.join(k[:12] for k in g.get('jobbers', [])) or '?'}"
                for g in d["groups"]
            )
            print(f"  job {d['job']}{' (late)' if d.get('late') else ''}: {groups}")
    _print_peers(info.get("peers", []))
    _print_jobbers(info.get("jobbers", []))
    if info.get("pages", 1) > 1:
        print(
            f"page {info['page'] + 1} of {info['pages']} ({info['jobbers_total']} jobbers); "
            "--page N for more"
        )


READS = 3  # tries at reading a closed journal that a dealer keeps opening meanwhile


def read_history(path: Path) -> tuple[dict[str, str], _history.History]:
    """A journal's meta and its records replayed (dealer._history), read without writing
    anything (dealer._journal.ReadOnly): safe on a live dealer's journal, a killed
    one's (with its -wal), or a finished one. JournalError if it cannot be read."""
    for _ in range(READS):
        with ReadOnly(path) as j:
            try:
                voting = j.meta.get("voting")
                if voting is None:
                    raise JournalError(
                        f"{path}: the journal does not record its voting rules (no 'voting' "
                        "row in its meta table): no dealer has served a task on it"
                    )
                try:
                    policy = _history.policy_of(voting)
                except ValueError as e:
                    raise JournalError(f"{path}: {e}: its meta table was damaged") from e
                try:
                    h = _history.History.of(policy, j.tag_prefix, j.records())
                except CoreError as e:
                    raise JournalError(
                        f"{path}: its records do not replay: {e}: the journal was damaged"
                    ) from e
            except JournalError:
                if j.intact():
                    raise
                continue  # a dealer opened it while it was read as closed: read again
            if j.intact():
                return j.meta, h
    raise JournalError(f"{path}: a dealer kept opening it while it was read; try again")


def _heading(path: Path, meta: dict[str, str]) -> str:
    open_ = meta.get("state", "").startswith("open")
    return f"journal {path}: task {meta.get('task')}; {meta.get('voting')}" + (
        "; open (a dealer runs on it, or was killed)" if open_ else ""
    )


def _about(path: Path, meta: dict[str, str]) -> dict:
    return {
        "journal": str(path),
        "task": meta.get("task"),
        "voting": meta.get("voting"),
        "open": meta.get("state", "").startswith("open"),
    }


def _emit(text: str) -> int:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader took what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def results(path: Path, form: str, full: bool = False) -> int:
    try:
        meta, h = read_history(path)
    except JournalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if form == "json":
        return _emit(
            json.dumps({**_about(path, meta), **_history.results_json(h)}, indent=2) + "\n"
        )
    if form == "csv":
        return _emit(_history.results_csv(h))
    return _emit(f"{_heading(path, meta)}\n{_history.results_text(h, full)}\n")


def jobs(path: Path, states: Sequence[str], as_json: bool, full: bool = False) -> int:
    try:
        meta, h = read_history(path)
    except JournalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if as_json:
        return _emit(
            json.dumps({**_about(path, meta), **_history.jobs_json(h, states)}, indent=2) + "\n"
        )
    return _emit(f"{_heading(path, meta)}\n{_history.jobs_text(h, states, full)}\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["allocator"]:  # its own commands: dealer._allocator_cli
        from dealer._allocator_cli import main as allocator_main

        return allocator_main(argv[1:])
    if argv[:1] == ["relay"]:  # python -m dealer relay UPSTREAM: dealer._relay_cli
        from dealer._relay_cli import main as relay_main

        return relay_main(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m dealer",
        description="Talk to a running dealer, read a batch's journal, or make keys.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="show tasks and jobbers of a running dealer")
    st.add_argument("address", help="host, host:port or tcp://host:port (a #KEY is ignored)")
    st.add_argument("--json", action="store_true", help="print the raw status as JSON")
    st.add_argument("--page", type=int, default=0, help="which page of jobbers (from 0)")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    rs = sub.add_parser(
        "results",
        help="every settled job of a journal: the accepted output, or why it failed "
        "(reads only; works while its dealer runs, or after it finished or was killed)",
    )
    rs.add_argument("db", type=Path, metavar="DB", help="the journal (the task's --db)")
    form = rs.add_mutually_exclusive_group()
    form.add_argument(
        "--json",
        dest="form",
        action="store_const",
        const="json",
        help="one JSON object: counts, and jobs with output_base64 (exact) and "
        "output_text (when it is text) or reasons",
    )
    form.add_argument(
        "--csv",
        dest="form",
        action="store_const",
        const="csv",
        help="columns job, args, state, output (text, or base64:...), reasons",
    )
    rs.add_argument("--full", action="store_true", help="show whole outputs and args")
    jb = sub.add_parser(
        "jobs",
        help="per-job history of a journal: replicas, jobbers, machines, statuses, fuel, "
        "times and votes (reads only)",
    )
    jb.add_argument("db", type=Path, metavar="DB", help="the journal (the task's --db)")
    jb.add_argument(
        "--state",
        action="append",
        choices=_history.STATES,
        help="only jobs in this state (repeatable; default: all)",
    )
    jb.add_argument("--json", action="store_true", help="print it as one JSON object")
    jb.add_argument("--full", action="store_true", help="show whole outputs and jobber keys")
    sub.add_parser(  # for --help only: main() hands `allocator` to dealer._allocator_cli
        "allocator",
        help="divide pools of lent machines among projects by share: serve, and the admin "
        "commands (python -m dealer allocator --help)",
        add_help=False,
    )
    sub.add_parser(  # for --help only: main() hands `relay` to dealer._relay_cli first
        "relay",
        help="serve jobs from an upstream dealer to jobbers behind it, buffered and journaled "
        "(python -m dealer relay --help)",
        add_help=False,
    )
    rf = sub.add_parser("refer", help="serve no task: refer every jobber to the given dealers")
    rf.add_argument("--bind", default=DEFAULT_BIND, help=f"address to serve on ({DEFAULT_BIND})")
    rf.add_argument(
        "--peer",
        action="append",
        required=True,
        metavar="DEALER",
        help="a dealer with work, asked every 2 s what it has: each jobber is referred "
        "to those with work it can run, most first (repeatable)",
    )
    rf.add_argument(
        "--key",
        type=Path,
        default=Path(".borednet") / "dealer",
        metavar="PATH",
        help="the key pair PATH.key_secret, made on first use (default .borednet/dealer)",
    )
    kg = sub.add_parser(
        "keygen",
        help="make a key pair: PATH.key_secret and PATH.key (a dealer's CurveZMQ key), or "
        "with --sign PATH.sign_secret and PATH.sign (a task author's payload signing key)",
    )
    kg.add_argument("path", type=Path, metavar="PATH")
    kg.add_argument(
        "--sign",
        action="store_true",
        help="make an ed25519 payload signing key for a task author (serve with --sign PATH; "
        "lenders run jobbers with --trust PATH.sign)",
    )
    rt = sub.add_parser(
        "rotate",
        help="hand the author key OLD over to NEW: write NEW.rotations, signed by OLD, so "
        "that jobbers trusting OLD accept payloads signed by NEW",
    )
    rt.add_argument("old", type=Path, metavar="OLD", help="the current key, OLD.sign_secret")
    rt.add_argument(
        "new",
        type=Path,
        metavar="NEW",
        help="the next key, NEW.sign (python -m dealer keygen --sign)",
    )
    dn = sub.add_parser("deny", help="ban a jobber's key at a running dealer (needs its admin key)")
    dn.add_argument("key", help="the jobber's public key, 64 hex digits, as status shows it")
    dn.add_argument("address", help="the dealer")
    dn.add_argument("--reason", default="", help="why, for the dealer's log and status")
    dn.add_argument(
        "--admin-key",
        type=Path,
        default=Path(".borednet") / "admin",
        metavar="PATH",
        help="the dealer's admin key pair (default .borednet/admin, as the dealer makes it)",
    )
    dn.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    args = parser.parse_args(argv)
    if args.command == "refer":
        return refer(args.bind, args.peer, args.key)
    if args.command == "results":
        return results(args.db, args.form or "text", args.full)
    if args.command == "jobs":
        return jobs(args.db, args.state or _history.STATES, args.json, args.full)
    try:
        if args.command == "keygen":
            if args.sign:
                print(create_author_key(args.path).public)
            else:
                print(create_key_pair(args.path).public_hex)
            return 0
        if args.command == "rotate":
            chain = write_rotation(args.old, args.new)
            print(
                f"wrote {rotations_path(args.new)} ({len(chain)} rotation link(s), oldest "
                f"from {chain[0].old}): serve with --sign {args.new}; jobbers trusting "
                f"{public_path(args.old)} or an older key of the chain accept it and learn "
                f"{public_path(args.new)}"
            )
            return 0
        if args.command == "deny":
            admin = load_key_pair(args.admin_key)
            print(deny(args.address, args.key.lower(), args.reason, admin, args.timeout))
            return 0
        info = query_status(args.address, args.timeout, args.page)
    except (
        TimeoutError,
        RuntimeError,
        ValueError,
        OSError,
        p.ProtocolError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
    else:
        _print_status(info)
    return 0
