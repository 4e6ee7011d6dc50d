"""The spool: finished results on disk until their dealer acknowledges them.

One file per result, `<dir>/<dealer key>/<tag>.res`, holding the msgpack of
the dealer address and the protocol Result. A file is written to a temporary
name, fsynced and renamed, so a crash leaves either the whole result or none;
it is removed only when the dealer's ack (or refusal) names its tag. A jobber
restarted on the same data directory finds every unacknowledged result here
and sends it again; the dealer counts a tag once.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import msgpack

import protocol as p
from protocol._files import write_atomic

log = logging.getLogger(__name__)

_SAFE_TAG = str.maketrans({c: "_" for c in "/\\\0"})


@dataclass(frozen=True, slots=True)
class Spooled:
    dealer: str
    result: p.Result


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, dealer: str, tag: str) -> Path:
        key = hashlib.sha256(dealer.encode()).hexdigest()[:16]
        name = tag.translate(_SAFE_TAG)
        if name.startswith("."):
            name = "_" + name
        return self.root / key / f"{name}.res"

    def put(self, dealer: str, result: p.Result) -> None:
        path = self._path(dealer, result.tag)
        path.parent.mkdir(exist_ok=True)
        data = msgpack.packb({"dealer": dealer, "result": result._to_wire()}, use_bin_type=True)
        write_atomic(path, data, durable=True)

    def remove(self, dealer: str, tag: str) -> None:
        try:
            self._path(dealer, tag).unlink(missing_ok=True)
        except OSError as e:  # a read-only spool: the file is sent again next time, harmlessly
            log.warning("spool: cannot remove %s: %s", tag, e.strerror or e)

    def load(self) -> list[Spooled]:
        """Every result still waiting for an ack; unreadable files are set aside."""
        out = []
        for path in sorted(self.root.glob("*/*.res")):
            try:
                body = msgpack.unpackb(path.read_bytes(), raw=False)
                out.append(Spooled(body["dealer"], p.Result._from_wire(body["result"], "spool")))
            except Exception as e:  # a torn or foreign file: keep it for a human, skip it
                log.warning("spool file %s unreadable (%s); moved aside", path, e)
                path.rename(path.with_suffix(".bad"))
        for tmp in self.root.glob("*/.*.part"):  # a write cut short by a crash
            tmp.unlink()
        return out

    def count(self) -> int:
        return sum(1 for _ in self.root.glob("*/*.res"))
