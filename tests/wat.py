"""Small WebAssembly modules the tests share."""

from __future__ import annotations

import wasmtime


def printing(text: str) -> bytes:
    """A WASI command that writes `text` (ASCII) to stdout and returns."""
    data = text.encode()
    escaped = "".join(f"\\{b:02x}" for b in data)
    return bytes(
        wasmtime.wat2wasm(
            f"""
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{escaped}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const {len(data)}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""
        )
    )


# NaNs made at run time from argc (f64 0 / 0 and sqrt(-1), f32 0 * inf), so nothing folds them:
# their bits, f64 then f32, go to stdout (24 bytes).
NAN_BITS = bytes(
    wasmtime.wat2wasm(
        """
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get"
    (func $args_sizes_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $one f64) (local $zero f64)
    (drop (call $args_sizes_get (i32.const 32) (i32.const 36)))
    (local.set $one (f64.convert_i32_u (i32.load (i32.const 32))))  ;; argc = 1
    (local.set $zero (f64.sub (local.get $one) (local.get $one)))
    (i64.store (i32.const 16) (i64.reinterpret_f64
      (f64.div (local.get $zero) (local.get $zero))))
    (i64.store (i32.const 24) (i64.reinterpret_f64
      (f64.sqrt (f64.neg (local.get $one)))))
    (i32.store (i32.const 40) (i32.reinterpret_f32
      (f32.mul (f32.demote_f64 (local.get $zero))
               (f32.div (f32.demote_f64 (local.get $one)) (f32.demote_f64 (local.get $zero))))))
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (i32.store (i32.const 8) (i32.const 40))
    (i32.store (i32.const 12) (i32.const 4))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 2) (i32.const 44)))))
"""
    )
)


# --- a small emitter of the wasm binary format (compile bombs and slow compiles) ---


def leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + leb(len(payload)) + payload


def name(text: str) -> bytes:
    return leb(len(text)) + text.encode()


EMPTY = b"\x00\x0b"  # no locals; end
# one i32 local, then 8 x (local.get 0, i32.const 1, i32.add, local.set 0)
BUSY = b"\x01\x01\x7f" + b"\x20\x00\x41\x01\x6a\x21\x00" * 8 + b"\x0b"


def module(functions: int, body: bytes = EMPTY, *, imports: int = 0) -> bytes:
    """A WASI-command-shaped module: `functions` functions of type [] -> [], each with
    `body`, the first exported as _start; `imports` imported functions before them."""
    types = section(1, leb(1) + b"\x60\x00\x00")
    imported = section(
        2,
        leb(imports)
        + b"".join(
            name("wasi_snapshot_preview1") + name(f"f{i}") + b"\x00\x00" for i in range(imports)
        ),
    )
    funcs = section(3, leb(functions) + b"\x00" * functions)
    exports = section(7, leb(1) + name("_start") + b"\x00" + leb(imports))
    code = section(10, leb(functions) + (leb(len(body)) + body) * functions)
    return b"\0asm\x01\0\0\0" + types + (imported if imports else b"") + funcs + exports + code


def nested_blocks(functions: int, depth: int) -> bytes:
    """A module within every pre-check cap that is costly to compile: `functions` bodies
    of `depth` nested empty blocks each (3 bytes a block; 500,000 stay under
    MAX_FUNCTION_BYTES)."""
    body = b"\x00" + b"\x02\x40" * depth + b"\x0b" * depth + b"\x0b"
    return module(functions, body)


def data_segments(n: int) -> bytes:
    """A command with one page of memory and `n` active data segments of one byte each
    (within the pre-check's MAX_DATA_SEGMENTS for n <= 100,000)."""
    types = section(1, leb(1) + b"\x60\x00\x00")
    funcs = section(3, leb(1) + b"\x00")
    memory = section(5, leb(1) + b"\x00" + leb(1))
    exports = section(7, leb(1) + name("_start") + b"\x00" + leb(0))
    code = section(10, leb(1) + leb(len(EMPTY)) + EMPTY)
    segment = b"\x00\x41\x00\x0b" + leb(1) + b"\x2a"  # memory 0, at i32.const 0: one byte
    data = section(11, leb(n) + segment * n)
    return b"\0asm\x01\0\0\0" + types + funcs + memory + exports + code + data
