"""Payloads and their compiled form on disk, keyed by the sha256 of the wasm bytes.

Layout under the root::

    wasm/<sha256>.wasm                   the payload as received
    compiled/<engine key>/<sha256>.cwasm the module compiled for this machine, one
                                         directory per mode (canonical NaNs or
                                         native) and fence (slot workers' watched
                                         engines, or in-process runs' with epoch
                                         checks): see _flavors.engine_keys
    failed/<engine key>/<sha256>.json    why compiling it failed, and under which
                                         fences (see "Failed compiles" below)

A compiled file is a header then wasmtime's serialized module::

    b"BNCWASM1" | engine key (32 ASCII hex) | sha256 of the body (32 bytes) | body

The engine key in the header is the key of the engine that compiled it: for the
canonical mode, the guarded engine's (a module with NaN guards) or the canonical
engine's (one that could not be guarded; see _flavors). Deserializing a module is
loading machine code, so nothing is loaded that fails these checks: the magic, the
engine key (one of the mode's: the configuration and wasmtime version that compiled
it) and the body's checksum; wasmtime then checks its
own version and CPU features. A corrupt or foreign entry is deleted and the
module compiled again. Every file is written to a temporary name and renamed
into place, so readers see whole files only and concurrent writers of the same
entry are harmless.

A compiled form bigger than MAX_COMPILED_BYTES is not stored: the module is
refused as MEMORY (see _precheck.Refused), as a module whose compiling went
past the compile fences is. Compiling itself (`build`) checks the module's
header counts first (_precheck) and is fenced by the worker that calls it
(see _worker); `load` only reads what an earlier `build` stored.

The cache is bounded: `evict` removes the payloads used least recently (each
with its compiled form, which counts too) until the whole fits in its bytes
and files, never the ones in use. A use touches a file's modification time.

Failed compiles
---------------
A module whose compile failed is remembered by its hash (per engine), so that
the next job of it is given the same end at once instead of paying for the
compile again, in this process or after a restart. A record is a JSON map
keyed by field name with a schema version (``v``): the status, the detail,
and the fence the failure depends on, if any:

=================================== =========================== =====================
failure                             fence kept                  applies to a job whose
=================================== =========================== =====================
wasmtime finds the bytes invalid,   none                        (every job)
or the compiled form is over
MAX_COMPILED_BYTES
the compile memory fence            ``memory_mb``               fence is no larger
the compile time or CPU fence       ``compile_s``, ``at``       time limit is no larger,
                                                                within TIME_FAILURE_TTL_S
=================================== =========================== =====================

So an owner who raises a limit, or a job allowed more time, gets a fresh
compile; a failure caused only by a busy machine is not kept (see _slots: a
compile stopped by the wall clock is remembered only if it used the CPU), and
a time failure is tried again after TIME_FAILURE_TTL_S anyway. A record
outlives its payload's eviction (a module that comes back is refused at once)
and is dropped by a successful compile. At most MAX_FAILED records are kept
(the oldest go first), each at most about MAX_FAILED_DETAIL bytes: under a MiB
of disk in all, outside `--cache-mb`'s count. A damaged or foreign record is
deleted and the module compiled again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

import wasmtime

from net._files import write_atomic
from protocol import Status, _runtimes
from sandbox import _engine, _flavors
from sandbox._precheck import Refused

log = logging.getLogger(__name__)

# the largest compiled form stored: 6 times the largest payload (protocol's 32 MiB);
# real code compiles to about 5 times its wasm size (factor.c: 23.7 KB -> 111 KB), a
# million empty functions to 288 MB
MAX_COMPILED_BYTES = 192 * 1024 * 1024
# failed compiles remembered per cache (each record a few hundred bytes): far more distinct
# failing modules than any honest dealer sends, and under a MiB of disk
MAX_FAILED = 1024
MAX_FAILED_DETAIL = 500  # characters of a failure's detail kept
# a compile stopped for time is tried again after this long: machines get less busy, and a
# module that really is too slow costs one compile fence an hour, not one per job
TIME_FAILURE_TTL_S = 3600.0
_FAILED_VERSION = 1  # the schema of a failure record; another version is not read
_MAGIC = b"BNCWASM1"
_HEADER = len(_MAGIC) + 32 + 32


def compiled_cap(sha256: str) -> int:
    """The cap of a module's compiled form: MAX_COMPILED_BYTES, or a runtime's own."""
    runtime = _runtimes.of(sha256)
    return runtime.compiled_bytes if runtime is not None else MAX_COMPILED_BYTES


_SHA256_HEX = re.compile(r"\A[0-9a-f]{64}\Z")


def _check_name(sha256: str) -> str:
    if not isinstance(sha256, str) or not _SHA256_HEX.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


class ModuleCache:
    """Payload bytes and compiled modules, shared by the processes of one jobber."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._wasm_dir = self.root / "wasm"
        # by (`canonical`, watched): the canonical mode's compiled forms and the native
        # one's, for slot workers (watched) and for in-process runs
        compiled = self.root / "compiled"
        self._compiled_dirs = {
            (canonical, w): compiled / key
            for w in (True, False)
            for canonical, key in _flavors.engine_keys(w).items()
        }
        self._failed_root = self.root / "failed"
        self._failed_dirs = {
            canonical: self._failed_root / key for canonical, key in _engine.ENGINE_KEYS.items()
        }
        self._wasm_dir.mkdir(parents=True, exist_ok=True)
        for d in (*self._compiled_dirs.values(), *self._failed_dirs.values()):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ModuleCache({str(self.root)!r})"

    # --- payloads ------------------------------------------------------------

    def _wasm_path(self, sha256: str) -> Path:
        return self._wasm_dir / f"{_check_name(sha256)}.wasm"

    def put(self, wasm: bytes) -> str:
        """Store `wasm` (atomically) and return its sha256 hex digest.

        A stored copy that does not match its name is replaced.
        """
        wasm = bytes(wasm)
        sha256 = hashlib.sha256(wasm).hexdigest()
        path = self._wasm_path(sha256)
        try:
            held = path.read_bytes()
        except FileNotFoundError:
            held = None
        if held != wasm:
            _write_atomic(path, wasm)
        else:
            os.utime(path)
        return sha256

    def has(self, sha256: str) -> bool:
        try:
            return self._wasm_path(sha256).exists()
        except ValueError:
            return False

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Each payload held: (its bytes, its compiled forms' bytes), as on disk now."""
        out: dict[str, tuple[int, int]] = {}
        for path in self._wasm_dir.glob("*.wasm"):
            if not _SHA256_HEX.match(path.stem):
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            compiled = 0
            for d in self._compiled_dirs.values():
                with contextlib.suppress(FileNotFoundError):
                    compiled += (d / f"{path.stem}.cwasm").stat().st_size
            out[path.stem] = (size, compiled)
        return out

    def evict(self, max_bytes: int, max_files: int, keep: set[str] = frozenset()) -> int:
        """Remove least recently used payloads (and their compiled modules) until the cache
        holds at most `max_bytes` and `max_files` payloads; never those in `keep`.
        Returns how many payloads were removed."""
        entries = []
        total = 0
        for path in self._wasm_dir.glob("*.wasm"):
            sha = path.stem
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            size = st.st_size
            for d in self._compiled_dirs.values():
                with contextlib.suppress(FileNotFoundError):
                    size += (d / f"{sha}.cwasm").stat().st_size
            entries.append((st.st_mtime, sha, size))
            total += size
        entries.sort()
        removed = 0
        count = len(entries)
        for _, sha, size in entries:
            if total <= max_bytes and count <= max_files:
                break
            if sha in keep:
                continue
            self._wasm_path(sha).unlink(missing_ok=True)
            for d in self._compiled_dirs.values():
                (d / f"{sha}.cwasm").unlink(missing_ok=True)
            total -= size
            count -= 1
            removed += 1
        return removed

    def touch(self, sha256: str) -> None:
        """Mark a payload as just used (eviction removes the least recently used)."""
        with contextlib.suppress(FileNotFoundError, ValueError):  # not held: nothing to mark
            os.utime(self._wasm_path(sha256))

    def hashes(self) -> list[str]:
        """The payloads held, sorted."""
        return sorted(p.stem for p in self._wasm_dir.glob("*.wasm") if _SHA256_HEX.match(p.stem))

    def wasm(self, sha256: str) -> bytes:
        """The payload's bytes; KeyError if absent or corrupt (a corrupt file is removed)."""
        path = self._wasm_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise KeyError(f"payload {sha256[:12]} is not in the cache") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            log.warning("payload %s: stored bytes do not match their hash; removed", sha256[:12])
            path.unlink(missing_ok=True)
            raise KeyError(f"payload {sha256[:12]} was corrupt in the cache")
        return data

    # --- compiled modules ----------------------------------------------------------

    def compiled_path(self, sha256: str, canonical: bool = True, watched: bool = True) -> Path:
        """Where the compiled form for a mode is kept: for slot workers' (watched)
        engines, or (`watched=False`) for in-process runs' (_flavors)."""
        return self._compiled_dirs[canonical, watched] / f"{_check_name(sha256)}.cwasm"

    def module(self, sha256: str, canonical: bool = True, watched: bool = True) -> wasmtime.Module:
        """The payload compiled for the sandbox's canonical (or native) engine, watched or
        in-process (see `compiled_path`): loaded if cached, else built.

        KeyError if the payload is not held; Refused if it is beyond a cap (or its
        compiled form would be); wasmtime.WasmtimeError if its bytes are not a valid
        module.
        """
        loaded = self.load(sha256, canonical, watched)
        return loaded if loaded is not None else self.build(sha256, canonical, watched)

    def build(self, sha256: str, canonical: bool = True, watched: bool = True) -> wasmtime.Module:
        """Compile the payload and store its compiled form (raises as `module` does)."""
        module = _engine.compile(self.wasm(sha256), canonical, watched)
        body = bytes(module.serialize())
        cap = compiled_cap(sha256)
        if len(body) > cap:
            log.warning("payload %s: compiled form of %d bytes not stored", sha256[:12], len(body))
            raise Refused(
                Status.MEMORY,
                f"compiling the module made {len(body):,} bytes of compiled code, over the cap "
                f"of {cap:,} (MAX_COMPILED_BYTES); not stored",
            )
        key = _flavors.FLAVOR_KEYS[_flavors.flavor_of(module, canonical)]
        header = _MAGIC + key.encode() + hashlib.sha256(body).digest()
        _write_atomic(self.compiled_path(sha256, canonical, watched), header + body)
        if watched:  # (failures are remembered for slot workers' compiles)
            self.forget_failure(sha256, canonical)  # compiled now, under larger fences
        return module

    def load(
        self, sha256: str, canonical: bool = True, watched: bool = True
    ) -> wasmtime.Module | None:
        """The stored compiled form for the canonical (or native) engine, watched or
        in-process, or None (none stored, or one failing a check: removed)."""
        path = self.compiled_path(sha256, canonical, watched)
        try:
            if path.stat().st_size > _HEADER + compiled_cap(sha256):  # stored before the cap
                log.warning("compiled module %s: over the size cap; removed", path.name)
                path.unlink(missing_ok=True)
                return None
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        body = data[_HEADER:]
        problem = None
        key = data[len(_MAGIC) : len(_MAGIC) + 32]
        flavors = {
            _flavors.FLAVOR_KEYS[f].encode(): f for f in _flavors.mode_flavors(canonical, watched)
        }
        if len(data) < _HEADER or data[: len(_MAGIC)] != _MAGIC:
            problem = "not a borednet compiled module"
        elif key not in flavors:
            problem = "compiled by another engine configuration"
        elif hashlib.sha256(body).digest() != data[len(_MAGIC) + 32 : _HEADER]:
            problem = "checksum mismatch"
        if problem is None:
            try:
                return _flavors.deserialize(body, flavors[key])
            except wasmtime.WasmtimeError as e:
                problem = f"wasmtime refused it: {e}"
        log.warning("compiled module %s: %s; rebuilding", path.name, problem)
        path.unlink(missing_ok=True)
        return None

    # --- failed compiles -------------------------------------------------------------

    def _failed_path(self, sha256: str, canonical: bool) -> Path:
        return self._failed_dirs[canonical] / f"{_check_name(sha256)}.json"

    def remember_failure(
        self,
        sha256: str,
        canonical: bool,
        status: Status,
        detail: str,
        *,
        memory_mb: int | None = None,
        compile_s: float | None = None,
    ) -> None:
        """Keep why compiling `sha256` for the canonical (or native) engine failed.

        `memory_mb`: the compile memory fence it went past (MEMORY), `compile_s` the
        compile time limit (TIME); neither: the failure is the same under any fence.
        A record already kept for a larger fence of the same kind is kept instead.
        Never raises for the disk: a record not written is a compile paid again.
        """
        path = self._failed_path(sha256, canonical)
        held = self._read_failure(path)
        if held is not None and held["status"] == status.value:
            if held["memory_mb"] is None and held["compile_s"] is None:
                return  # the same under any fence already
            if memory_mb is not None and (held["memory_mb"] or 0) >= memory_mb:
                return
            if (
                compile_s is not None
                and (held["compile_s"] or 0) >= compile_s
                and time.time() - held["at"] < TIME_FAILURE_TTL_S
            ):
                return
        record = {
            "v": _FAILED_VERSION,
            "status": status.value,
            "detail": detail[:MAX_FAILED_DETAIL],
            "memory_mb": memory_mb,
            "compile_s": compile_s,
            "at": time.time(),
        }
        try:
            _write_atomic(path, json.dumps(record).encode())
            self._bound_failures()
        except OSError as e:
            log.warning("payload %s: failed compile not remembered: %s", sha256[:12], e)
            return
        log.info("payload %s: compile failure remembered (%s)", sha256[:12], status.value)

    def failure(
        self, sha256: str, canonical: bool, memory_mb: int, compile_s: float
    ) -> tuple[Status, str] | None:
        """The remembered end (status, detail) of compiling `sha256` under a compile memory
        fence of `memory_mb` and a time limit of `compile_s`, or None (compile it)."""
        try:
            path = self._failed_path(sha256, canonical)
        except ValueError:
            return None
        held = self._read_failure(path)
        if held is None:
            return None
        fenced_mb, fenced_s = held["memory_mb"], held["compile_s"]
        if fenced_mb is not None and memory_mb > fenced_mb:
            return None  # a larger memory fence now: it may compile
        if fenced_s is not None and (
            compile_s > fenced_s or time.time() - held["at"] >= TIME_FAILURE_TTL_S
        ):
            return None  # more time now, or long ago: it may compile
        return Status(held["status"]), held["detail"]

    def forget_failure(self, sha256: str, canonical: bool) -> None:
        with contextlib.suppress(OSError):
            self._failed_path(sha256, canonical).unlink(missing_ok=True)

    def failures(self) -> int:
        """How many failed compiles are remembered (both engines)."""
        return sum(1 for d in self._failed_dirs.values() for _ in d.glob("*.json"))

    @staticmethod
    def _read_failure(path: Path) -> dict | None:
        """The record at `path` if it is whole and of this schema; a damaged one is removed."""
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            rec = json.loads(data)
            if rec["v"] != _FAILED_VERSION:
                raise ValueError(f"schema version {rec['v']!r}")
            Status(rec["status"])
            ok = (
                isinstance(rec["detail"], str)
                and isinstance(rec["at"], int | float)
                and (rec["memory_mb"] is None or type(rec["memory_mb"]) is int)
                and (rec["compile_s"] is None or isinstance(rec["compile_s"], int | float))
            )
            if not ok:
                raise ValueError("a field of the wrong type")
        except (ValueError, KeyError, TypeError) as e:
            log.warning("failed-compile record %s: %s; removed", path.name, e)
            path.unlink(missing_ok=True)
            return None
        return rec

    def _bound_failures(self) -> None:
        """At most MAX_FAILED records: the oldest are removed."""
        entries = []
        for d in self._failed_dirs.values():
            for path in d.glob("*.json"):
                with contextlib.suppress(FileNotFoundError):
                    entries.append((path.stat().st_mtime, str(path)))
        if len(entries) <= MAX_FAILED:
            return
        entries.sort()
        for _, path in entries[: len(entries) - MAX_FAILED]:
            Path(path).unlink(missing_ok=True)
