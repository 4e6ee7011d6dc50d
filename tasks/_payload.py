"""Payloads: the WebAssembly modules jobs run, built from .wasm, WAT or C.

C is compiled to wasm32-wasi with ziglang (a PyPI package: no system
toolchain needed). Builds are cached by the sha256 of the source, flags and
compiler version under the borednet cache directory, so a task file compiles
its payload once per machine; ziglang's output is byte-identical from build to
build, so every dealer serving the same source serves the same hash.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from protocol._files import write_atomic

log = logging.getLogger(__name__)

# Small initial memory and stack: zig's default initial memory is 16 MiB, and
# a payload that needs more grows it (within the job's memory limit).
DEFAULT_CFLAGS = ("-O2", "-s", "-Wl,--initial-memory=1048576", "-Wl,-z,stack-size=262144")
COMPILE_TIMEOUT_S = 600  # the first build on a machine compiles zig's WASI libc


class PayloadError(Exception):
    """A payload could not be built (compiler error, bad WAT, missing file)."""


def cache_dir() -> Path:
    """Where borednet keeps builds: $BOREDNET_CACHE, else $XDG_CACHE_HOME/borednet."""
    env = os.environ.get("BOREDNET_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "borednet"


@dataclass(frozen=True)
class Payload:
    """A WebAssembly (WASI command) module, identified by the sha256 of its bytes."""

    wasm: bytes = field(repr=False)
    name: str = "payload"

    def __post_init__(self) -> None:
        if not isinstance(self.wasm, bytes):  # wat2wasm gives a bytearray
            object.__setattr__(self, "wasm", bytes(self.wasm))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.wasm).hexdigest()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Payload:
        path = Path(path)
        try:
            return cls(path.read_bytes(), path.stem)
        except OSError as e:
            raise PayloadError(f"cannot read payload {path}: {e}") from e

    @classmethod
    def from_wat(cls, text: str, name: str = "wat") -> Payload:
        import wasmtime

        try:
            return cls(wasmtime.wat2wasm(text), name)
        except wasmtime.WasmtimeError as e:
            raise PayloadError(f"bad WAT: {e}") from e

    @classmethod
    def from_c(
        cls,
        source: str | os.PathLike[str],
        *,
        cflags: Sequence[str] = DEFAULT_CFLAGS,
        name: str | None = None,
    ) -> Payload:
        """Compile C to wasm32-wasi. `source` is a path to a .c file."""
        path = Path(source)
        try:
            text = path.read_text()
        except OSError as e:
            raise PayloadError(f"cannot read C source {path}: {e}") from e
        return cls(compile_c(text, cflags=cflags), name or path.stem)

    def run(self, args: Sequence[str] = (), stdin: bytes = b"", limits=None):
        """Run one job here, in this process, as a jobber would: a sandbox.Outcome."""
        import sandbox
        from protocol import Limits

        return sandbox.run(self.wasm, args, stdin, limits or Limits())


def _zig_version() -> str:
    try:
        return metadata.version("ziglang")
    except metadata.PackageNotFoundError as e:
        raise PayloadError("ziglang is not installed: pip install ziglang") from e


def compile_c(source: str, *, cflags: Sequence[str] = DEFAULT_CFLAGS) -> bytes:
    """wasm32-wasi bytes for C source text, from the cache when built before."""
    key = hashlib.sha256("\0".join([_zig_version(), *cflags, source]).encode()).hexdigest()
    root = cache_dir()
    out = root / "c" / f"{key}.wasm"
    if out.exists():
        return out.read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("ZIG_GLOBAL_CACHE_DIR", str(root / "zig"))
    with tempfile.TemporaryDirectory(prefix="borednet-cc-") as tmp:
        src = Path(tmp) / "payload.c"
        src.write_text(source)
        target = Path(tmp) / "payload.wasm"
        cmd = [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", *cflags]
        cmd += [str(src), "-o", str(target)]
        log.info("compiling C payload %s with ziglang", key[:12])
        try:
            proc = subprocess.run(
                cmd, env=env, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as e:
            raise PayloadError(f"ziglang took more than {COMPILE_TIMEOUT_S} s") from e
        if proc.returncode != 0:
            raise PayloadError(f"C compilation failed:\n{proc.stderr.strip()}")
        wasm = target.read_bytes()
        # publish atomically: concurrent builds of the same source are harmless
        write_atomic(out, wasm)
    return wasm


def builtin(name: str) -> Path:
    """Path of a C source shipped with borednet (tasks/payloads/NAME.c)."""
    path = Path(__file__).parent / "payloads" / f"{name}.c"
    if not path.exists():
        raise PayloadError(f"no built-in payload {name!r}")
    return path
