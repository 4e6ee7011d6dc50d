"""Scripted WASI calls: a command that makes a list of calls and reports what each gave.

``Script`` builds a WAT command from calls to ``wasi_snapshot_preview1`` functions
with literal arguments. Before each call a scratch area (SCRATCH, SCRATCH_SIZE
bytes) is filled with 0xEE; after it, the errno (u32, or 0 for functions
without a result) and the scratch area are appended to a results area, which
``_start`` finally writes to fd 1. So the same script can run in the sandbox
and as the sandbox ran jobs before it had files (``reference``), and the two
compared call by call.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import wasmtime
from wasmtime import _ffi as ffi

from protocol import Limits
from sandbox import _engine, _files, _guest, _job, _wasi

WASI = "wasi_snapshot_preview1"
SCRATCH = 1024
SCRATCH_SIZE = 128
DATA = 2048  # strings and iovecs the script places
RESULTS = 16384
PAGES = 4
FUEL = 10**10
# name -> (params: "i" i32, "I" i64; has a result), for every function the sandbox defines
SIGNATURES = {
    name: (params, result)
    for name, (params, result, _) in {**_wasi._OWN, **_files.FUNCTIONS}.items()
}


@dataclass
class Script:
    calls: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)

    def place(self, raw: bytes) -> int:
        """`raw` in the data area; its address."""
        while len(self.data) % 8:
            self.data.append(0)
        addr = DATA + len(self.data)
        self.data += raw
        assert DATA + len(self.data) <= RESULTS
        return addr

    def string(self, text: str | bytes) -> tuple[int, int]:
        raw = text.encode() if isinstance(text, str) else text
        return self.place(raw), len(raw)

    def iovecs(self, *vecs: tuple[int, int]) -> tuple[int, int]:
        """iovecs (address, length) placed; their address and count."""
        raw = b"".join(a.to_bytes(4, "little") + n.to_bytes(4, "little") for a, n in vecs)
        return self.place(raw), len(vecs)

    def call(self, name: str, *args: int) -> None:
        params, _ = SIGNATURES[name]
        assert len(args) == len(params), (name, args)
        self.calls.append((name, args))

    def results_size(self) -> int:
        return len(self.calls) * (4 + SCRATCH_SIZE)

    def wasm(self) -> bytes:
        names = sorted({name for name, _ in self.calls} | {"fd_write"})
        imports = []
        for name in names:
            params, results = SIGNATURES[name]
            p = " ".join("i64" if k == "I" else "i32" for k in params)
            r = " (result i32)" if results else ""
            imports.append(f'(import "{WASI}" "{name}" (func ${name} (param {p}){r}))')
        body = []
        at = RESULTS
        for name, args in self.calls:
            params, results = SIGNATURES[name]
            operands = " ".join(
                f"({'i64' if k == 'I' else 'i32'}.const {a})"
                for k, a in zip(params, args, strict=True)
            )
            call = f"(call ${name} {operands})"
            body.append(
                f"(memory.fill (i32.const {SCRATCH}) (i32.const 0xEE) (i32.const {SCRATCH_SIZE}))"
            )
            body.append(f"(i32.store (i32.const {at}) {call})" if results else call)
            copy = f"(i32.const {at + 4}) (i32.const {SCRATCH}) (i32.const {SCRATCH_SIZE})"
            body.append(f"(memory.copy {copy})")
            at += 4 + SCRATCH_SIZE
        assert at <= PAGES * 65536
        body.append(f"(i32.store (i32.const 0) (i32.const {RESULTS}))")
        body.append(f"(i32.store (i32.const 4) (i32.const {at - RESULTS}))")
        body.append(
            "(drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))"
        )
        escaped = "".join(f"\\{b:02x}" for b in self.data)
        text = (
            f"(module {' '.join(imports)} "
            f'(memory (export "memory") {PAGES}) (data (i32.const {DATA}) "{escaped}") '
            f'(func (export "_start") {" ".join(body)}))'
        )
        return bytes(wasmtime.wat2wasm(text))

    def decode(self, out: bytes) -> list[tuple[str, tuple[int, ...], int, bytes]]:
        """(name, args, errno, scratch after the call) for each call."""
        step = 4 + SCRATCH_SIZE
        assert len(out) == self.results_size(), len(out)
        return [
            (
                name,
                args,
                int.from_bytes(out[i * step : i * step + 4], "little"),
                out[i * step + 4 : (i + 1) * step],
            )
            for i, (name, args) in enumerate(self.calls)
        ]


def reference(wasm: bytes, stdin: bytes = b"", args: Sequence[str] = ()) -> tuple[bytes, int]:
    """Stdout and fuel of `wasm` run as the sandbox ran jobs before it had files:
    wasmtime's own WASI with argv and stdin bytes, under the sandbox's own fd_write,
    clocks, random_get, poll_oneoff and proc_exit (_wasi._OWN)."""
    eng = _engine.engine(True)
    linker = wasmtime.Linker(eng)
    linker.define_wasi()
    _guest.shadow(linker, _wasi._OWN)
    store = wasmtime.Store(eng)
    store.set_fuel(FUEL)
    store.set_epoch_deadline(1 << 40)
    wasi = wasmtime.WasiConfig()
    wasi.argv = ["payload", *args]
    vec = ffi.wasm_byte_vec_t()
    if stdin:
        buf = (ctypes.c_ubyte * len(stdin)).from_buffer_copy(stdin)
        ffi.wasm_byte_vec_new(ctypes.byref(vec), len(stdin), buf)
    else:
        ffi.wasm_byte_vec_new_empty(ctypes.byref(vec))
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))
    store.set_wasi(wasi)
    job = _job.Job(Limits(fuel=FUEL), time.monotonic)
    _job.enter(job)
    try:
        instance = linker.instantiate(store, wasmtime.Module(eng, wasm))
        instance.exports(store)["_start"](store)
    except wasmtime.Trap:
        assert job.exit_code is not None  # proc_exit, nothing else
    finally:
        _job.enter(None)
    fuel = FUEL - store.get_fuel()
    store.close()
    return bytes(job.out), fuel
