"""The allocator's settings, as `python -m allocator serve` takes them: one typed record
with every default in it, read from the command line (allocator.cli) and handed to
the core and the shell whole."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from allocator._rules import CHECK_S, MAX_PER_ADDRESS, REFRESH_S
from allocator._server import POLL_S
from protocol._alloc import DEFAULT_ALLOCATOR_PORT

DEFAULT_BIND = f"tcp://*:{DEFAULT_ALLOCATOR_PORT}"
DEFAULT_ADMIN_KEY = Path(".borednet") / "admin"
ASK_TIMEOUT_S = 5.0  # an admin request's wait for the allocator's reply


@dataclass(frozen=True)
class Settings:
    """What `serve` runs with. Each default is here, and the command line's help says it."""

    db: Path  # the allocator's SQLite file
    bind: str = DEFAULT_BIND
    refresh_s: float = REFRESH_S  # how often jobbers ask for their instructions again
    check_s: float = CHECK_S  # how soon jobbers ask again to hear of a change
    poll_s: float = POLL_S  # how often the projects' dealers are asked for credit
    http: str | None = None  # [HOST:]PORT of the read-only statistics page (None: none)
    max_per_address: int = MAX_PER_ADDRESS  # machines joining one pool by token per source
    quiet: bool = False  # warnings only

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        return cls(
            db=args.db,
            bind=args.bind,
            refresh_s=args.refresh,
            check_s=args.check,
            poll_s=args.poll,
            http=args.http,
            max_per_address=args.max_per_address,
            quiet=args.quiet,
        )
