"""The spool: finished results on disk until their dealer acknowledges them.

Results are written in *batches*, one file per batch: the results a turn of
the jobber's loop finished, written to a temporary name, fsynced once and
renamed (group commit: one fsync per batch, not per result). A crash leaves a
whole batch or none. Only once its batch is on disk is a result sent, so a
result a dealer has seen is always on disk here.

A batch file is `<dir>/<number>.spool`, a msgpack map with the schema version
and the results, each keyed by field name (the dealer's address and the
protocol Result). The file is removed once every result in it is acknowledged
(or refused, or cancelled); a restart finds every file not yet removed and
sends again what is in it, and the dealer counts a tag once (an acknowledged
result sent again is answered "settled" or "duplicate", harmlessly).

The spool of older jobbers, one `<dealer key>/<tag>.res` file per result, is
read too and removed as its results are acknowledged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgpack

import protocol as p
from net._files import write_atomic

log = logging.getLogger(__name__)

SCHEMA = 1  # of a batch file; a file of another schema is set aside, never misread
_SAFE_TAG = str.maketrans({c: "_" for c in "/\\\0"})


@dataclass(frozen=True, slots=True)
class Spooled:
    dealer: str
    result: p.Result


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._next = 1 + max((_number(f) for f in self.root.glob("*.spool")), default=0)
        self._file_of: dict[tuple[str, str], Path] = {}  # (dealer, tag) -> its batch file
        self._live: dict[Path, set[tuple[str, str]]] = {}  # batch file -> results not done

    def put(self, dealer: str, result: p.Result) -> None:
        self.put_many([(dealer, result)])

    def put_many(self, results: Iterable[tuple[str, p.Result]]) -> None:
        """Write `results` as one batch, durably (one fsync). OSError if the disk refuses;
        then none of them is spooled."""
        batch = list(results)
        if not batch:
            return
        path = self.root / f"{self._next:012d}.spool"
        body = {
            "schema": SCHEMA,
            "results": [{"dealer": d, "result": r._to_wire()} for d, r in batch],
        }
        write_atomic(path, msgpack.packb(body, use_bin_type=True), durable=True)
        self._next += 1
        keys = {(d, r.tag) for d, r in batch}
        for key in keys:
            self._forget(key)  # a result spooled again (after a full disk) lives here now
            self._file_of[key] = path
        self._live[path] = keys

    def remove(self, dealer: str, tag: str) -> None:
        """The result is acknowledged, refused or cancelled: its batch may go."""
        self._forget((dealer, tag))

    def _forget(self, key: tuple[str, str]) -> None:
        path = self._file_of.pop(key, None)
        if path is None:
            return
        live = self._live.get(path)
        if live is not None:
            live.discard(key)
            if live:
                return
            del self._live[path]
        try:
            path.unlink(missing_ok=True)
        except OSError as e:  # a read-only spool: the file is sent again next time, harmlessly
            log.warning("spool: cannot remove %s: %s", path.name, e.strerror or e)

    def load(self) -> list[Spooled]:
        """Every result still waiting for an ack; unreadable files are set aside."""
        out: list[Spooled] = []
        for path in sorted(self.root.glob("*.spool")):
            try:
                body = msgpack.unpackb(path.read_bytes(), raw=False)
                if type(body) is not dict or body.get("schema") != SCHEMA:
                    raise ValueError(f"schema {body.get('schema') if type(body) is dict else '?'}")
                batch = [
                    Spooled(x["dealer"], p.Result._from_wire(x["result"], "spool"))
                    for x in body["results"]
                ]
            except Exception as e:  # a torn or foreign file: keep it for a human, skip it
                log.warning("spool file %s unreadable (%s); moved aside", path, e)
                path.rename(path.with_suffix(".bad"))
                continue
            self._adopt(path, batch, out)
        for path in sorted(self.root.glob("*/*.res")):  # an older jobber's spool
            try:
                body = msgpack.unpackb(path.read_bytes(), raw=False)
                one = Spooled(body["dealer"], p.Result._from_wire(body["result"], "spool"))
            except Exception as e:
                log.warning("spool file %s unreadable (%s); moved aside", path, e)
                path.rename(path.with_suffix(".bad"))
                continue
            self._adopt(path, [one], out)
        for tmp in [*self.root.glob(".*.part"), *self.root.glob("*/.*.part")]:
            tmp.unlink()  # a write cut short by a crash
        return out

    def _adopt(self, path: Path, batch: list[Spooled], out: list[Spooled]) -> None:
        keys = set()
        for s in batch:
            key = (s.dealer, s.result.tag)
            if key in self._file_of:  # spooled twice (a retry after a full disk): once
                continue
            self._file_of[key] = path
            keys.add(key)
            out.append(s)
        if keys:
            self._live[path] = keys
        else:
            path.unlink(missing_ok=True)

    def count(self) -> int:
        """Results on disk and not yet acknowledged."""
        return len(self._file_of)


def _number(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        return 0


def legacy_path(root: Path, dealer: str, tag: str) -> Path:
    """Where an older jobber kept one result (read by `load`; tests make such spools)."""
    key = hashlib.sha256(dealer.encode()).hexdigest()[:16]
    name = tag.translate(_SAFE_TAG)
    if name.startswith("."):
        name = "_" + name
    return root / key / f"{name}.res"


class SpoolWriter(threading.Thread):
    """Writes the spool off the loop, so that the loop runs jobs while the disk syncs.

    Everything queued while a batch is being written goes into the next batch: one
    fsync serves every result finished meanwhile (group commit). Each batch done (or
    refused by the disk) is queued back in `done` and signalled on a pipe the loop
    polls; the loop then tells the core, which sends only results already on disk.
    """

    def __init__(self, spool: Spool) -> None:
        super().__init__(name="spool-writer", daemon=True)
        self.spool = spool
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()  # (batch, OSError | None)
        self.fd, self._signal = os.pipe()
        os.set_blocking(self.fd, False)

    def put(self, batch: list[tuple[str, p.Result]]) -> None:
        self._todo.put(("put", batch))

    def remove(self, dealer: str, tag: str) -> None:
        self._todo.put(("remove", (dealer, tag)))

    def stop(self) -> None:
        """Write what is queued, then end (joined)."""
        self._todo.put(("stop", None))
        self.join()
        os.close(self.fd)
        os.close(self._signal)

    def run(self) -> None:
        while True:
            items = [self._todo.get()]
            while True:
                try:
                    items.append(self._todo.get_nowait())
                except queue.Empty:
                    break
            batch = [r for kind, x in items if kind == "put" for r in x]
            if batch:
                try:
                    self.spool.put_many(batch)
                    self.done.put((batch, None))
                except OSError as e:
                    self.done.put((batch, e))
            for kind, x in items:
                if kind == "remove":
                    self.spool.remove(*x)
            if batch:
                os.write(self._signal, b"x")
            if any(kind == "stop" for kind, _ in items):
                return
