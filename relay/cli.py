"""`python -m relay UPSTREAM [--bind ADDR] [--db PATH]`: parse, wire, run.

What a relay is told is one typed record, `RelaySettings`, whose field defaults
are the relay's defaults (each constant defined once, where it is used: the
core's, its upstream side's, the ones here); the command line is read into it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import zmq

import protocol as p
from dealer._journal import JournalError
from net._keys import load_or_create_key_pair, load_public_keys
from net._link import Backoff
from net._serve import serve_until_stopped
from relay._core import HORIZON_S, LEASE_S, MAX_BUFFER, RelayCore
from relay._files import FILE_CACHE_MB
from relay._journal import RelayJournal
from relay._server import Relay
from relay._upstream import REQUEST_TIMEOUT_S

log = logging.getLogger(__name__)

DEFAULT_BIND = p.DEFAULT_BIND
DEFAULT_DB = Path(".borednet") / "relay.sqlite"
# A relay is one client standing for a whole site, and its jobbers idle while it
# cannot reach upstream only once its buffer is empty: it retries sooner than a
# volunteer's jobber (60 s to 4 h), and never waits more than 10 minutes.
MIN_BACKOFF_S = 5.0
MAX_BACKOFF_S = 600.0


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """Everything a relay is told, each with its default."""

    upstream: str  # the upstream dealer (host:port[#KEY])
    bind: str = DEFAULT_BIND
    db: Path = DEFAULT_DB  # its journal; its key pair and known_dealers beside it
    horizon_s: float = HORIZON_S
    max_buffer: int = MAX_BUFFER
    lease_s: float = LEASE_S
    min_backoff_s: float = MIN_BACKOFF_S
    max_backoff_s: float = MAX_BACKOFF_S
    request_timeout_s: float = REQUEST_TIMEOUT_S
    attribute: bool = True
    allow: Path | None = None  # a closed relay: the directory of its jobbers' keys
    file_cache_mb: int = FILE_CACHE_MB  # input files' chunks kept in memory
    name: str = "relay"
    verbose: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RelaySettings:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


_DEFAULT = {f.name: f.default for f in fields(RelaySettings)}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m relay",
        description="A dealer whose jobs come from an upstream dealer: it buffers them for "
        "its own jobbers, keeps their results in its journal and forwards them in batches, "
        "so its jobbers keep working while the upstream is unreachable.",
    )
    ap.add_argument("upstream", metavar="UPSTREAM", help="the upstream dealer (host:port[#KEY])")
    ap.add_argument(
        "--bind", default=_DEFAULT["bind"], help=f"address to serve on ({_DEFAULT['bind']})"
    )
    ap.add_argument(
        "--db",
        type=Path,
        default=_DEFAULT["db"],
        metavar="PATH",
        help=f"the relay's journal (default {_DEFAULT['db']}); its key pair (relay.key_secret) "
        "and the upstream's pinned key (known_dealers) are kept beside it",
    )
    ap.add_argument(
        "--horizon",
        dest="horizon_s",
        type=float,
        default=_DEFAULT["horizon_s"],
        metavar="S",
        help="buffer this many seconds of work at the rate its jobbers finish jobs "
        f"(default {_DEFAULT['horizon_s']:g})",
    )
    ap.add_argument(
        "--buffer",
        dest="max_buffer",
        type=int,
        default=_DEFAULT["max_buffer"],
        metavar="N",
        help=f"hold at most N upstream jobs (default {_DEFAULT['max_buffer']})",
    )
    ap.add_argument(
        "--lease",
        dest="lease_s",
        type=float,
        default=_DEFAULT["lease_s"],
        metavar="S",
        help="a jobber of ours silent this long is gone and its jobs go to others (%(default)g)",
    )
    ap.add_argument(
        "--min-backoff",
        dest="min_backoff_s",
        type=float,
        default=_DEFAULT["min_backoff_s"],
        metavar="S",
    )
    ap.add_argument(
        "--max-backoff",
        dest="max_backoff_s",
        type=float,
        default=_DEFAULT["max_backoff_s"],
        metavar="S",
    )
    ap.add_argument(
        "--request-timeout",
        dest="request_timeout_s",
        type=float,
        default=_DEFAULT["request_timeout_s"],
        metavar="S",
        help="a request upstream unanswered this long is a failed contact (%(default)g)",
    )
    ap.add_argument(
        "--attribute",
        action=argparse.BooleanOptionalAction,
        default=_DEFAULT["attribute"],
        help="ask upstream for each jobber's jobs on its behalf and run each job only on the "
        "jobber it was fetched for (the default): the upstream keeps each jobber's standing, "
        "so a vote one of them loses costs that jobber, not the relay, and one that trusts "
        "this relay (--trust-relay KEY) counts each as a machine of its own. "
        "--no-attribute: the relay is one jobber upstream and any of its jobbers runs any job",
    )
    ap.add_argument(
        "--allow",
        type=Path,
        default=_DEFAULT["allow"],
        metavar="DIR",
        help="a closed relay: only jobbers whose public keys are in DIR (*.key, zmq.auth format)",
    )
    ap.add_argument(
        "--file-cache-mb",
        type=int,
        default=_DEFAULT["file_cache_mb"],
        metavar="MB",
        help="input files' chunks kept in memory for the jobbers, least recently used first "
        "out: each is fetched upstream once while it is kept (%(default)s)",
    )
    ap.add_argument(
        "--name", default=_DEFAULT["name"], help="the name upstream status shows (relay)"
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="log every decision")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    s = RelaySettings.from_args(parser().parse_args(argv))
    logging.basicConfig(
        level=logging.DEBUG if s.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if s.min_backoff_s <= 0 or s.max_backoff_s < s.min_backoff_s:
        print("error: need 0 < --min-backoff <= --max-backoff", file=sys.stderr)
        return 2
    journal = None
    try:
        upstream = p.dealer_address(s.upstream)
        home = s.db.parent
        keys, made = load_or_create_key_pair(home / "relay")
        if made:
            log.info("made the relay's key pair %s", home / "relay.key_secret")
        journal = RelayJournal(s.db)
        core = RelayCore(
            journal.tag_prefix,
            horizon_s=s.horizon_s,
            max_buffer=s.max_buffer,
            lease_s=s.lease_s,
            backoff=Backoff(min_s=s.min_backoff_s, max_s=s.max_backoff_s),
            name=s.name,
            attribute=s.attribute,
            request_timeout_s=s.request_timeout_s,
            file_cache_bytes=s.file_cache_mb << 20,
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
                s.db,
                c["queued"],
                c["out"],
                c["done"],
            )
        server = Relay(
            upstream,
            s.bind,
            journal,
            core,
            keys=keys,
            pins=home / "known_dealers",
            allow=None if s.allow is None else load_public_keys(s.allow),
        )
    except (ValueError, OSError, zmq.ZMQError, JournalError) as e:
        if journal is not None:
            journal.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    return serve_until_stopped(server, f"relaying {server.upstream} to jobbers on {server.address}")
