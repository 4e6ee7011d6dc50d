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
