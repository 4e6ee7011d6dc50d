"""Dealer keys this jobber has pinned: `known_dealers` in its data directory.

One line per dealer, `ENDPOINT KEY` (the key as 64 hex digits), as SSH keeps
known_hosts. A key is pinned the first time a dealer is reached without a key
in its address (trust on first use) or when an address with a key is given on
the command line; after that a dealer presenting another key is refused.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from net._files import write_atomic

log = logging.getLogger(__name__)

_LINE = re.compile(r"\A(\S+) ([0-9a-f]{64})\Z")


class Pins:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._keys: dict[str, str] = {}
        try:
            text = path.read_text()
        except FileNotFoundError:
            return
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = _LINE.match(line)
            if m is None:
                log.warning("%s line %d is not 'ENDPOINT KEY'; ignored", path, n)
                continue
            self._keys[m.group(1)] = m.group(2)

    def all(self) -> dict[str, str]:
        return dict(self._keys)

    def get(self, endpoint: str) -> str | None:
        return self._keys.get(endpoint)

    def put(self, endpoint: str, key: str) -> None:
        if self._keys.get(endpoint) == key:
            return
        self._keys[endpoint] = key
        body = "".join(f"{e} {k}\n" for e, k in sorted(self._keys.items()))
        write_atomic(self.path, ("# dealers and their keys, pinned by borednet\n" + body).encode())
