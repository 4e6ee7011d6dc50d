"""`python -m dealer status|results|jobs|dashboard|refer|keygen|rotate|deny` (and, for the old
spellings, `relay` and `allocator`, which run `python -m relay|allocator`)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import zmq

import protocol as p
from dealer import _history
from dealer._batch import DEFAULT_BIND, held_key
from dealer._history import jobs, results
from dealer._print import print_status
from dealer._server import Referrer
from dealer._viewer import serve as serve_dashboard
from dealer._which import NoJournal, journal_for
from net._ask import admin_ask, query_status
from net._author_keys import create_author_key, public_path, rotations_path, write_rotation
from net._keys import KeyInUse, KeyPair, create_key_pair, load_key_pair
from net._serve import serve_until_stopped

log = logging.getLogger("dealer")

# `results`, `jobs` and `dashboard` read one journal, named so (dealer._which)
JOURNAL_WORDS = (
    ("db",),
    {
        "nargs": "*",
        "metavar": "DB | TASK.py ARGS",
        "help": "the journal: its path (several, as a glob gives them: the newest), or the "
        "task file and its arguments (the journal that command keeps), or nothing (the "
        "newest in .borednet/ here)",
    },
)
ASK_TIMEOUT_S = 5.0  # what `status` and `deny` wait for an answer, unless --timeout


def deny(
    address: str, key: str, reason: str, admin: KeyPair, timeout_s: float = ASK_TIMEOUT_S
) -> str:
    """Ban the identity `key` at the dealer, speaking as its admin over the encrypted port."""
    endpoint, server_key = p.split_key(p.dealer_address(address))
    reply = admin_ask(endpoint, server_key, p.Deny(1, key, reason), admin, address, timeout_s)
    if not isinstance(reply, p.AdminReply):
        raise RuntimeError(f"{address} answered with {reply.TYPE}")
    return reply.text


def refer(bind: str, peers: list[str], key: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with contextlib.ExitStack() as held:  # its key is locked while it serves
        try:
            keys = held_key(key, "python -m dealer refer", "the referrer's", held)
            server = Referrer(bind, [p.dealer_address(x) for x in peers], keys)
        except (ValueError, OSError, zmq.ZMQError, KeyInUse) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        what = f"referring jobbers on {server.address} to {', '.join(server.peers.addresses)}"
        return serve_until_stopped(server, what)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["allocator"], ["relay"]):
        # programs of their own now (python -m relay, python -m allocator): the old
        # spelling runs them in this process's place, with the same pid and arguments
        os.execv(sys.executable, [sys.executable, "-m", *argv])
    parser = argparse.ArgumentParser(
        prog="python -m dealer",
        description="Talk to a running dealer, read a batch's journal, or make keys.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="show tasks and jobbers of a running dealer")
    st.add_argument("address", help="host, host:port or tcp://host:port (a #KEY is ignored)")
    st.add_argument("--json", action="store_true", help="print the raw status as JSON")
    st.add_argument("--page", type=int, default=0, help="which page of jobbers (from 0)")
    st.add_argument(
        "--timeout", type=float, default=ASK_TIMEOUT_S, help="seconds to wait for an answer"
    )
    rs = sub.add_parser(
        "results",
        help="every settled job of a journal: the accepted output, or why it failed "
        "(reads only; works while its dealer runs, or after it finished or was killed)",
    )
    rs.add_argument(*JOURNAL_WORDS[0], **JOURNAL_WORDS[1])
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
    jb.add_argument(*JOURNAL_WORDS[0], **JOURNAL_WORDS[1])
    jb.add_argument(
        "--state",
        action="append",
        choices=_history.STATES,
        help="only jobs in this state (repeatable; default: all)",
    )
    jb.add_argument("--json", action="store_true", help="print it as one JSON object")
    jb.add_argument("--full", action="store_true", help="show whole outputs and jobber keys")
    db = sub.add_parser(
        "dashboard",
        help="serve a batch's dashboard from its journal alone (reads only; follows a "
        "running dealer's journal, or shows a finished or stopped batch)",
    )
    db.add_argument(*JOURNAL_WORDS[0], **JOURNAL_WORDS[1])
    db.add_argument(
        "--http",
        metavar="[HOST:]PORT",
        help="where to serve the page (default 127.0.0.1 and a free port; the URL is printed)",
    )
    sub.add_parser(  # for --help only: main() runs python -m allocator in its place
        "allocator",
        help="the older spelling of python -m allocator: divide pools of lent machines "
        "among projects by share (python -m allocator --help)",
        add_help=False,
    )
    sub.add_parser(  # for --help only: main() runs python -m relay in its place
        "relay",
        help="the older spelling of python -m relay: serve jobs from an upstream dealer to "
        "jobbers behind it, buffered and journaled (python -m relay --help)",
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
    dn.add_argument(
        "--timeout", type=float, default=ASK_TIMEOUT_S, help="seconds to wait for an answer"
    )
    args, rest = parser.parse_known_args(argv)
    if args.command in ("results", "jobs", "dashboard"):
        # a task file's own options follow it: those this parser does not know are its
        try:
            db, note = journal_for([*args.db, *rest])
        except NoJournal as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if note:
            print(note, file=sys.stderr)
        if args.command == "results":
            return results(db, args.form or "text", args.full)
        if args.command == "dashboard":
            return serve_dashboard(db, args.http)
        return jobs(db, args.state or _history.STATES, args.json, args.full)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "refer":
        return refer(args.bind, args.peer, args.key)
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
        print_status(info)
    return 0
