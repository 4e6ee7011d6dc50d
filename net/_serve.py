"""Serving until stopped: what every program's command line does with its server."""

from __future__ import annotations

import logging
import signal
import sys

log = logging.getLogger(__name__)


def serve_until_stopped(server, what: str) -> int:
    """Run a server (a Referrer, a Relay) until it stops, SIGTERM or Ctrl-C, then close it;
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
