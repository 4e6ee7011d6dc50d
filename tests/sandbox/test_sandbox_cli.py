"""`python -m sandbox run`: a task author's way to try a payload."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import wasmtime

from sandbox import cli

WASI = "wasi_snapshot_preview1"
# echoes stdin to stdout, then exits with the code given as its stdin's first byte - "0"
ECHO = wasmtime.wat2wasm(
    f"""
(module
  (import "{WASI}" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $proc_exit (i32.sub (i32.load8_u (i32.const 64)) (i32.const 48)))))
"""
)
SPIN = wasmtime.wat2wasm('(module (func (export "_start") (loop $l (br $l))))')
# writes to stdout the first 4 KiB of the input file /in/a.txt
CAT = wasmtime.wat2wasm(
    f"""
(module
  (import "{WASI}" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "{WASI}" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "{WASI}" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "in/a.txt")
  (func (export "_start")
    (drop (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 8)
      (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 200)))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 4096))
    (drop (call $fd_read (i32.load (i32.const 200)) (i32.const 0) (i32.const 1) (i32.const 8)))
    (i32.store (i32.const 4) (i32.load (i32.const 8)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""
)


@pytest.fixture
def payloads(tmp_path, factor_wasm):
    for name, wasm in [("echo", ECHO), ("spin", SPIN), ("factor", factor_wasm), ("cat", CAT)]:
        (tmp_path / f"{name}.wasm").write_bytes(wasm)
    return tmp_path


def main(monkeypatch, capsysbinary, argv, stdin=b""):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = cli.main(argv)
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def test_clean_exit(monkeypatch, capsysbinary, payloads):
    code, out, err = main(
        monkeypatch, capsysbinary, ["run", str(payloads / "factor.wasm"), "91", "2", "100"]
    )
    assert (code, out) == (0, b"7\n13\n91\n")
    assert err.startswith("sandbox: ok, ") and " fuel, " in err


def test_stdin_and_exit_code(monkeypatch, capsysbinary, payloads):
    code, out, err = main(monkeypatch, capsysbinary, ["run", str(payloads / "echo.wasm")], b"3 go")
    assert (code, out) == (3, b"3 go")
    assert err.startswith("sandbox: exit, ") and err.rstrip().endswith("exit code 3")


def test_options_anywhere_and_limit_outcome(monkeypatch, capsysbinary, payloads):
    argv = ["run", str(payloads / "factor.wasm"), "91", "--fuel", "1000", "2", "100"]
    code, out, err = main(monkeypatch, capsysbinary, argv)
    assert code == cli.OTHER_STATUS_EXIT
    assert err.startswith("sandbox: fuel, 1000 fuel, ")
    code, _, err = main(
        monkeypatch, capsysbinary, ["run", "--time", "0.1", str(payloads / "spin.wasm")]
    )
    assert code == cli.OTHER_STATUS_EXIT and err.startswith("sandbox: time, ")


def test_payload_stderr_is_shown(monkeypatch, capsysbinary, payloads):
    code, out, err = main(monkeypatch, capsysbinary, ["run", str(payloads / "factor.wasm")])
    assert code == 2 and out == b""
    assert err.startswith("usage: factor N LO HI\nsandbox: exit, ")


def test_bad_command_lines(monkeypatch, capsysbinary, payloads):
    for argv in (["run", str(payloads / "nope.wasm")], ["run", "--memory", "0", "x.wasm"], []):
        with pytest.raises(SystemExit) as e:
            main(monkeypatch, capsysbinary, argv)
        assert e.value.code == 2


def test_python_dash_m(payloads):
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox", "run", payloads / "echo.wasm", "--output", "1"],
        input=b"0 from the shell",
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"0 from the shell"
    assert proc.stderr.decode().startswith("sandbox: ok, ")


def test_input_files(monkeypatch, capsysbinary, payloads):
    (payloads / "table.txt").write_bytes(b"a table\n")
    cat = str(payloads / "cat.wasm")
    code, out, err = main(
        monkeypatch, capsysbinary, ["run", cat, "--file", f"/in/a.txt={payloads}/table.txt"]
    )
    assert (code, out) == (0, b"a table\n"), err
    with pytest.raises(SystemExit) as e:
        main(monkeypatch, capsysbinary, ["run", cat, "--file", f"in/a.txt={payloads}/table.txt"])
    assert e.value.code == 2
    assert "not absolute" in capsysbinary.readouterr().err.decode()
