"""Payloads: the WebAssembly modules jobs run, built from .wasm, WAT or C.

Every way of making a Payload from an author's work (`from_file`, `from_wat`,
`from_c`) checks the module there and then, with the sandbox's own engine
(`sandbox.check`): it compiles, passes the compile caps, exports
``_start: [] -> []`` and imports only WASI preview 1. A payload that every
jobber would refuse fails when the task is built, with a PayloadError naming
the author's file and the reason. (`Payload(wasm)` itself checks nothing.)

A relative path given to `from_file` or `from_c` is taken relative to the
directory of the Python file that calls it (the task file), so a task runs the
same from any working directory; from an interactive session, relative to the
working directory.

C is compiled to wasm32-wasi with ziglang (a PyPI package: no system
toolchain needed). Builds are cached by the sha256 of the source, flags and
compiler version under the borednet cache directory, so a task file compiles
its payload once per machine; ziglang's output is byte-identical from build to
build (the source is compiled as ``payload.c`` in an empty directory, so not
even ``__FILE__`` depends on where it was), so every dealer serving the same
source serves the same hash. Zig's own cache, where it builds its WASI libc
once (about half a minute), is one per user (`zig_cache_dir`), whatever the
borednet cache directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from net._files import write_atomic
from protocol import Limits
from tasks._files import InputFile
from tasks._paths import _caller, _resolve, _shown

log = logging.getLogger(__name__)

# Small initial memory and stack: zig's default initial memory is 16 MiB, and
# a payload that needs more grows it (within the job's memory limit).
DEFAULT_CFLAGS = ("-O2", "-s", "-Wl,--initial-memory=1048576", "-Wl,-z,stack-size=262144")
COMPILE_TIMEOUT_S = 600  # the first build on a machine compiles zig's WASI libc
_BUILD = "2"  # part of every build's cache key: bump when the way of compiling changes
_SOURCE = "payload.c"  # the name the source is compiled under (its __FILE__)


class PayloadError(Exception):
    """A payload could not be built (compiler error, bad WAT, missing file) or would not
    run in the sandbox (invalid module, no _start, imports the sandbox does not give)."""


def cache_dir() -> Path:
    """Where borednet keeps builds: $BOREDNET_CACHE, else $XDG_CACHE_HOME/borednet."""
    env = os.environ.get("BOREDNET_CACHE")
    if env:
        return Path(env)
    return _user_cache() / "borednet"


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def zig_cache_dir() -> Path:
    """Zig's global cache (its WASI libc, built once): $ZIG_GLOBAL_CACHE_DIR, else
    $XDG_CACHE_HOME/borednet/zig. One per user, not per $BOREDNET_CACHE, so a test or
    a second checkout with a cache of its own does not build the libc again."""
    env = os.environ.get("ZIG_GLOBAL_CACHE_DIR")
    return Path(env) if env else _user_cache() / "borednet" / "zig"


@dataclass(frozen=True)
class Payload:
    """A WebAssembly (WASI command) module, identified by the sha256 of its bytes."""

    wasm: bytes = field(repr=False)
    name: str = "payload"
    # input files the payload itself reads, by absolute guest path outside /input (a
    # language runtime's library, say): every job of a task running it sees them.
    # None for a C payload. Pinned with the jobs (dealer._policy.job_digest), not here.
    files: Mapping[str, InputFile] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.wasm, bytes):  # wat2wasm gives a bytearray
            object.__setattr__(self, "wasm", bytes(self.wasm))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.wasm).hexdigest()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Payload:
        """A .wasm file (a WASI command), checked. A relative path is relative to the
        calling file's directory."""
        path = _resolve(path, _caller())
        shown = _shown(path)
        try:
            wasm = path.read_bytes()
        except OSError as e:
            raise PayloadError(f"cannot read payload {shown}: {e.strerror or e}") from None
        return cls(wasm, path.stem)._checked(shown)

    @classmethod
    def from_wat(cls, text: str, name: str = "wat") -> Payload:
        """WebAssembly text, checked. Errors name the line that called from_wat."""
        import wasmtime

        caller = _caller()
        where = f"Payload.from_wat({name!r})"
        if caller is not None:
            where = f"{_shown(caller[0])}:{caller[1]}: {where}"
        try:
            wasm = wasmtime.wat2wasm(text)
        except wasmtime.WasmtimeError as e:
            raise PayloadError(f"{where}: bad WAT: {str(e).replace('<anon>', name)}") from None
        return cls(wasm, name)._checked(where)

    @classmethod
    def from_c(
        cls,
        source: str | os.PathLike[str],
        *,
        cflags: Sequence[str] = DEFAULT_CFLAGS,
        name: str | None = None,
    ) -> Payload:
        """Compile C to wasm32-wasi, checked. `source` is a path to a .c file, relative to
        the calling file's directory. One file: it may include the C library's headers,
        not headers of its own (they would not be part of the build's cache key)."""
        path = _resolve(source, _caller())
        shown = _shown(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise PayloadError(f"cannot read C source {shown}: {e.strerror or e}") from None
        wasm = compile_c(text, cflags=cflags, filename=shown)
        return cls(wasm, name or path.stem)._checked(shown)

    def _checked(self, where: str) -> Payload:
        import sandbox

        problem = sandbox.check(self.wasm)
        if problem is not None:
            raise PayloadError(f"{where}: the sandbox would not run this payload: {problem}")
        return self

    def run(self, args: Sequence[str] = (), stdin: bytes = b"", limits=None):
        """Run one job here, in this process, as a jobber would: a sandbox.Outcome."""
        # imported here, not above: a dealer imports tasks and never needs wasmtime
        import sandbox

        return sandbox.run(self.wasm, args, stdin, limits or Limits())


def _zig_version() -> str:
    try:
        return metadata.version("ziglang")
    except metadata.PackageNotFoundError as e:
        raise PayloadError("ziglang is not installed: pip install ziglang") from e


def _zig_env(version: str) -> dict[str, str]:
    """The compiler's environment, with its cache at zig_cache_dir(); says so, once,
    when the WASI libc has not been built there yet."""
    env = dict(os.environ)
    zig = zig_cache_dir()
    try:
        zig.mkdir(parents=True, exist_ok=True)
    except OSError:  # no writable home: a cache of our own
        zig = cache_dir() / "zig"
        zig.mkdir(parents=True, exist_ok=True)
    env["ZIG_GLOBAL_CACHE_DIR"] = str(zig)
    if not _libc_marker(zig, version).exists():
        log.warning(
            "the first C build with ziglang %s here: zig builds its WASI libc once per machine "
            "(about half a minute) in %s",
            version,
            zig,
        )
    return env


def _libc_marker(zig: Path, version: str) -> Path:
    return zig / f"borednet-wasi-libc-{version}"


def _run_zig(cmd: list[str], cwd: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S
    )


def _author_names(stderr: str, filename: str) -> str:
    """The compiler's messages with the temporary source and object named as the
    author's file (`payload.c:3:5: error` -> `square.c:3:5: error`)."""
    text = re.sub(r"\S*/payload\.o\b", lambda _: filename, stderr)
    return re.sub(r"(?<![\w./-])payload\.c\b", lambda _: filename, text)


def compile_c(
    source: str, *, cflags: Sequence[str] = DEFAULT_CFLAGS, filename: str | None = None
) -> bytes:
    """wasm32-wasi bytes for C source text, from the cache when built before.

    filename: what to call the source in compiler messages (it is not part of the
    build, nor of its cache key). The module is not checked: Payload.from_c does that.
    """
    version = _zig_version()
    key = hashlib.sha256("\0".join([_BUILD, version, *cflags, source]).encode()).hexdigest()
    out = cache_dir() / "c" / f"{key}.wasm"
    if out.exists():
        return out.read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    env = _zig_env(version)
    with tempfile.TemporaryDirectory(prefix="borednet-cc-") as tmp:
        (Path(tmp) / _SOURCE).write_text(source)
        cmd = [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", *cflags]
        cmd += [_SOURCE, "-o", "payload.wasm"]
        log.info("compiling C payload %s with ziglang", filename or key[:12])
        try:
            proc = _run_zig(cmd, tmp, env)
        except subprocess.TimeoutExpired as e:
            raise PayloadError(f"ziglang took more than {COMPILE_TIMEOUT_S} s") from e
        if proc.returncode != 0:
            messages = proc.stderr.strip()
            if filename is not None:
                messages = _author_names(messages, filename)
            raise PayloadError(f"{filename or 'C source'}: C compilation failed:\n{messages}")
        _libc_marker(Path(env["ZIG_GLOBAL_CACHE_DIR"]), version).touch()
        wasm = (Path(tmp) / "payload.wasm").read_bytes()
        # publish atomically: concurrent builds of the same source are harmless
        write_atomic(out, wasm)
    return wasm


def builtin(name: str) -> Path:
    """Path of a C source shipped with borednet (tasks/payloads/NAME.c)."""
    path = Path(__file__).parent / "payloads" / f"{name}.c"
    if not path.exists():
        raise PayloadError(f"no built-in payload {name!r}")
    return path
