"""`python -m dealer relay UPSTREAM [--bind ADDR] [--db PATH]`: parse, wire, run."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import zmq

import protocol as p
from dealer._journal import JournalError
from net._backoff import Backoff
from net._keys import load_or_create_key_pair, load_public_keys
from net._serve import serve_until_stopped
from relay._core import HORIZON_S, LEASE_S, MAX_BUFFER, RelayCore
from relay._journal import RelayJournal
from relay._server import Relay
from relay._upstream import REQUEST_TIMEOUT_S

log = logging.getLogger(__name__)

DEFAULT_BIND = f"tcp://*:{p.DEFAULT_PORT}"
DEFAULT_DB = Path(".borednet") / "relay.sqlite"
# A relay is one client standing for a whole site, and its jobbers idle while it
# cannot reach upstream only once its buffer is empty: it retries sooner than a
# volunteer's jobber (60 s to 4 h), and never waits more than 10 minutes.
MIN_BACKOFF_S = 5.0
MAX_BACKOFF_S = 600.0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m dealer relay",
        description="A dealer whose jobs come from an upstream dealer: it buffers them for "
        "its own jobbers, keeps their results in its journal and forwards them in batches, "
        "so its jobbers keep working while the upstream is unreachable.",
    )
    ap.add_argument("upstream", metavar="UPSTREAM", help="the upstream dealer (host:port[#KEY])")
    ap.add_argument("--bind", default=DEFAULT_BIND, help=f"address to serve on ({DEFAULT_BIND})")
    ap.add_argument(
        "--db",
        type=Path,
        default=DEFAULT_DB,
        metavar="PATH",
        help=f"the relay's journal (default {DEFAULT_DB}); its key pair (relay.key_secret) "
        "and the upstream's pinned key (known_dealers) are kept beside it",
    )
    ap.add_argument(
        "--horizon",
        type=float,
        default=HORIZON_S,
        metavar="S",
        help="buffer this many seconds of work at the rate its jobbers finish jobs "
        f"(default {HORIZON_S:g})",
    )
    ap.add_argument(
        "--buffer",
        type=int,
        default=MAX_BUFFER,
        metavar="N",
        help=f"hold at most N upstream jobs (default {MAX_BUFFER})",
    )
    ap.add_argument(
        "--lease",
        type=float,
        default=LEASE_S,
        metavar="S",
        help=f"a jobber of ours silent this long is gone and its jobs go to others ({LEASE_S:g})",
    )
    ap.add_argument("--min-backoff", type=float, default=MIN_BACKOFF_S, metavar="S")
    ap.add_argument("--max-backoff", type=float, default=MAX_BACKOFF_S, metavar="S")
    ap.add_argument(
        "--request-timeout",
        type=float,
        default=REQUEST_TIMEOUT_S,
        metavar="S",
        help=f"a request upstream unanswered this long is a failed contact ({REQUEST_TIMEOUT_S:g})",
    )
    ap.add_argument(
        "--attribute",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ask upstream for each jobber's jobs on its behalf and run each job only on the "
        "jobber it was fetched for (the default): the upstream keeps each jobber's standing, "
        "so a vote one of them loses costs that jobber, not the relay, and one that trusts "
        "this relay (--trust-relay KEY) counts each as a machine of its own. "
        "--no-attribute: the relay is one jobber upstream and any of its jobbers runs any job",
    )
    ap.add_argument(
        "--allow",
        type=Path,
        default=None,
        metavar="DIR",
        help="a closed relay: only jobbers whose public keys are in DIR (*.key, zmq.auth format)",
    )
    ap.add_argument("--name", default="relay", help="the name upstream status shows (relay)")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.min_backoff <= 0 or args.max_backoff < args.min_backoff:
        print("error: need 0 < --min-backoff <= --max-backoff", file=sys.stderr)
        return 2
    journal = None
    try:
        upstream = p.dealer_address(args.upstream)
        home = args.db.parent
        keys, made = load_or_create_key_pair(home / "relay")
        if made:
            log.info("made the relay's key pair %s", home / "relay.key_secret")
        journal = RelayJournal(args.db)
        core = RelayCore(
            journal.tag_prefix,
            horizon_s=args.horizon,
            max_buffer=args.buffer,
            lease_s=args.lease,
            backoff=Backoff(min_s=args.min_backoff, max_s=args.max_backoff),
            name=args.name,
            attribute=args.attribute,
            request_timeout_s=args.request_timeout,
        )
        core.load(
            journal.held(), journal.payloads(), journal.local(), journal.next_tag(), time.time()
        )
        forgotten = journal.forget_unused_payloads()
        if forgotten:
            log.info("forgot %d payloads no held job needs", forgotten)
        if core.held:
            c = core.counts()
            log.info(
                "resumed from %s: %d jobs queued, %d out, %d results to deliver",
                args.db,
                c["queued"],
                c["out"],
                c["done"],
            )
        server = Relay(
            upstream,
            args.bind,
            journal,
            core,
            keys=keys,
            pins=home / "known_dealers",
            allow=None if args.allow is None else load_public_keys(args.allow),
        )
    except (ValueError, OSError, zmq.ZMQError, JournalError) as e:
        if journal is not None:
            journal.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    return serve_until_stopped(server, f"relaying {server.upstream} to jobbers on {server.address}")
