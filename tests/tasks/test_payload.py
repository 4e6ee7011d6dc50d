"""Payloads are checked where the task is built: errors name the author's file and say why."""

from __future__ import annotations

import logging
import os
import re
import runpy
import sys
from pathlib import Path

import pytest

import sandbox
from protocol import Status
from tasks import Payload, PayloadError, compile_c
from tasks import _payload as payload_module
from tasks._payload import DEFAULT_CFLAGS

HERE = Path(__file__).name
OK_WAT = '(module (memory (export "memory") 1) (func (export "_start")))'


# --- WAT ------------------------------------------------------------------------------


def test_a_wat_type_error_fails_from_wat_naming_the_calling_line():
    bad = '(module (memory (export "memory") 1) (func $main (export "_start") (drop (i32.add (i32.const 1)))))'  # noqa: E501
    try:
        line = sys._getframe().f_lineno + 1
        Payload.from_wat(bad, "adder")
    except PayloadError as e:
        message = str(e)
    else:
        pytest.fail("from_wat took a module that does not validate")
    assert message == (
        f"tests/tasks/{HERE}:{line}: Payload.from_wat('adder'): the sandbox would not run this "
        "payload: not a valid module: function #0 (main): type mismatch: expected i32 but "
        "nothing on stack (at byte 51 of the module)"
    )


def test_bad_wat_syntax_points_into_the_text():
    with pytest.raises(PayloadError) as e:
        Payload.from_wat('(module\n  (func (export "_start") (i32.ad)))', "typo")
    message = str(e.value)
    assert f"{HERE}:" in message and "bad WAT: unknown operator" in message
    assert "--> typo:2:28" in message  # line and column in the WAT text


@pytest.mark.parametrize(
    ("wat", "reason"),
    [
        (
            '(module (memory (export "memory") 1) (func (export "main")))',
            "not a WASI command: no _start export",
        ),
        (
            '(module (memory (export "memory") 1) (func (export "_initialize")))',
            "not a WASI command: no _start export (a reactor, exporting _initialize)",
        ),
        (
            '(module (func (export "_start") (param i32)))',
            "_start is not a function of type [] -> []",
        ),
        (
            '(module (import "env" "now" (func (result i64))) (func (export "_start")))',
            "imports not provided by the sandbox (WASI preview 1 only): env.now (func)",
        ),
        (
            '(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32)))'
            ' (func (export "_start")))',
            "incompatible import type for `wasi_snapshot_preview1::fd_write`",
        ),
    ],
)
def test_modules_the_sandbox_would_refuse_fail_from_wat(wat, reason):
    with pytest.raises(PayloadError) as e:
        Payload.from_wat(wat)
    assert str(e.value).endswith(f"the sandbox would not run this payload: {reason}")
    # which is what every jobber would have said, job after job
    assert sandbox.run(wat_bytes(wat)).detail == reason


def wat_bytes(wat: str) -> bytes:
    import wasmtime

    return wasmtime.wat2wasm(wat)


def test_a_good_payload_passes_and_runs():
    p = Payload.from_wat(OK_WAT, "nop")
    assert p.name == "nop" and p.run().status is Status.OK


def test_a_module_beyond_a_compile_cap_is_refused_before_compiling():
    funcs = " ".join("(func)" for _ in range(50_001))
    with pytest.raises(
        PayloadError, match=r"too costly to compile: 50,002 functions, over the cap"
    ):
        Payload.from_wat(f'(module {funcs} (func (export "_start")))')


def test_check_compiles_a_payload_once(monkeypatch):
    from sandbox import _engine

    calls = []
    real = _engine.compile
    monkeypatch.setattr(_engine, "compile", lambda wasm: calls.append(1) or real(wasm))
    wat = '(module (memory (export "memory") 1) (func (export "_start") (nop) (nop)))'
    for _ in range(3):
        Payload.from_wat(wat)
    assert sandbox.check(wat_bytes(wat)) is None
    assert len(calls) == 1
    bad = '(module (func (export "_start") (i32.const 12345)))'
    for _ in range(2):  # a refusal is remembered too
        with pytest.raises(PayloadError, match="values remaining on stack"):
            Payload.from_wat(bad)
    assert len(calls) == 2


# --- files ----------------------------------------------------------------------------


def write_task(where: Path, body: str) -> Path:
    """A task file `where/task.py` whose body builds payloads; run with runpy."""
    where.mkdir(parents=True, exist_ok=True)
    path = where / "task.py"
    path.write_text(f"from tasks import Payload\n{body}\n")
    return path


def test_relative_paths_are_relative_to_the_calling_file(tmp_path, monkeypatch, factor_wasm):
    project = tmp_path / "project"
    (project / "kernels").mkdir(parents=True)
    (project / "kernels" / "factor.wasm").write_bytes(factor_wasm)
    (project / "kernels" / "factor.c").write_text(
        (Path(__file__).resolve().parents[2] / "tasks" / "payloads" / "factor.c").read_text()
    )
    task = write_task(
        project,
        'A = Payload.from_file("kernels/factor.wasm")\nB = Payload.from_c("kernels/factor.c")',
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    got = runpy.run_path(str(task))
    assert got["A"].wasm == factor_wasm and got["A"].name == "factor"
    assert got["B"].wasm == factor_wasm  # the same source gives the same bytes
    assert got["B"].run(["91", "2", "100"]).stdout == b"7\n13\n91\n"


def test_a_missing_or_foreign_file_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "task").mkdir()
    (tmp_path / "task" / "notes.wasm").write_bytes(b"hello")
    task = write_task(tmp_path / "task", "import sys\nPayload.from_file(sys.argv[1])")
    for name, message in [
        ("missing.wasm", "cannot read payload task/missing.wasm: No such file or directory"),
        (
            "notes.wasm",
            "task/notes.wasm: the sandbox would not run this payload: not a valid module: "
            "bad magic number (not a WebAssembly module)",
        ),
    ]:
        monkeypatch.setattr(sys, "argv", ["task.py", name])
        with pytest.raises(PayloadError) as e:
            runpy.run_path(str(task))
        assert str(e.value) == message


# --- C --------------------------------------------------------------------------------


def c_error(tmp_path: Path, monkeypatch, source: str) -> str:
    """The PayloadError a task in tmp_path/proj gets for from_c("kernel.c"), run from
    tmp_path."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "kernel.c").write_text(source)
    task = write_task(proj, 'Payload.from_c("kernel.c")')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PayloadError) as e:
        runpy.run_path(str(task))
    return str(e.value)


def test_compiler_errors_name_the_authors_file(tmp_path, monkeypatch):
    message = c_error(tmp_path, monkeypatch, "int main(void) {\n    return x;\n}\n")
    assert message.startswith("proj/kernel.c: C compilation failed:\n")
    assert "proj/kernel.c:2:12: error: use of undeclared identifier 'x'" in message
    assert "payload.c" not in message and "borednet-cc" not in message


def test_link_errors_name_the_authors_file(tmp_path, monkeypatch):
    source = "int helper(void);\nint main(void) { return helper(); }\n"
    message = c_error(tmp_path, monkeypatch, source)
    assert "wasm-ld: error: proj/kernel.c: undefined symbol: helper" in message
    assert "payload.o" not in message and os.sep + "o" + os.sep not in message


BIG_TABLE = """#include <stdio.h>
static const unsigned char table[3000000] = {7, 1, 2};
int main(int argc, char **argv) {
    long sum = 0;  /* read at run time (argc), so the table stays in the module */
    for (long i = 0; i < 3000000; i += argc) sum += table[i];
    printf("%ld\\n", sum);
    return 0;
}
"""


def test_a_large_table_compiled_in_says_how_much_initial_memory_it_needs(tmp_path, monkeypatch):
    message = c_error(tmp_path, monkeypatch, BIG_TABLE)
    assert "initial memory too small" in message
    assert "pass Payload.from_c(..., initial_memory_mb=5)" in message
    path = tmp_path / "proj" / "kernel.c"
    payload = Payload.from_c(path, initial_memory_mb=5)
    assert payload.run().stdout == b"10\n"
    with pytest.raises(PayloadError, match="initial_memory_mb must be 1 to 4096"):
        Payload.from_c(path, initial_memory_mb=0)


def test_a_c_payload_importing_what_the_sandbox_lacks_fails_at_build(tmp_path, monkeypatch):
    source = (
        '__attribute__((import_module("env"), import_name("now"))) long long now(void);\n'
        "int main(void) { return (int)now(); }\n"
    )
    message = c_error(tmp_path, monkeypatch, source)
    assert message == (
        "proj/kernel.c: the sandbox would not run this payload: imports not provided by the "
        "sandbox (WASI preview 1 only): env.now (func)"
    )


def test_a_missing_c_file_is_named(tmp_path, monkeypatch):
    task = write_task(tmp_path / "proj", 'Payload.from_c("nowhere.c")')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PayloadError, match=r"^cannot read C source proj/nowhere.c: No such file"):
        runpy.run_path(str(task))


def test_builds_do_not_depend_on_where_the_source_was(tmp_path, monkeypatch):
    """__FILE__ is the same for every build: two dealers serving the same source serve
    the same hash."""
    source = "#include <stdio.h>\nint main(void) { puts(__FILE__); return 0; }\n"
    monkeypatch.setenv("BOREDNET_CACHE", str(tmp_path / "one"))
    first = compile_c(source)
    monkeypatch.setenv("BOREDNET_CACHE", str(tmp_path / "two"))
    assert compile_c(source) == first
    assert Payload(first).run().stdout == b"payload.c\n"


# --- zig's cache ----------------------------------------------------------------------


def test_zig_builds_its_libc_once_per_user_whatever_the_borednet_cache(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.delenv("ZIG_GLOBAL_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    zig = tmp_path / "xdg" / "borednet" / "zig"
    seen = []

    def fake_zig(cmd, cwd, env):  # what the compiler is given; a module, as zig would
        seen.append(env["ZIG_GLOBAL_CACHE_DIR"])
        Path(cwd, "payload.wasm").write_bytes(wat_bytes(OK_WAT))
        return payload_module.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(payload_module, "_run_zig", fake_zig)
    caplog.set_level(logging.INFO, logger="tasks._payload")
    for i, cache in enumerate(["a", "b", "c"]):
        monkeypatch.setenv("BOREDNET_CACHE", str(tmp_path / cache))
        compile_c(f"int main(void) {{ return {i}; }}")
    assert seen == [str(zig)] * 3
    first = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(first) == 1, first  # said once, before the first build
    assert "builds its WASI libc once per machine (about half a minute)" in first[0]
    assert str(zig) in first[0]


def test_zig_global_cache_dir_is_honoured(tmp_path, monkeypatch):
    monkeypatch.setenv("ZIG_GLOBAL_CACHE_DIR", str(tmp_path / "mine"))
    assert payload_module.zig_cache_dir() == tmp_path / "mine"


def test_a_task_file_whose_payload_does_not_validate_says_so_without_a_traceback(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    task = tmp_path / "broken.py"
    task.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(root)!r})\n"
        "from tasks import Job, Payload, Task\n"
        "class Broken(Task):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.payload = Payload.from_wat('(module (func (export \"_start\") i32.add))')\n"
        "    def jobs(self):\n"
        "        return [Job()]\n"
        "if __name__ == '__main__':\n"
        "    from dealer import serve_task\n"
        "    sys.exit(serve_task(Broken))\n"
    )
    run = subprocess.run(
        [sys.executable, task, "--bind", "tcp://127.0.0.1:*", "--db", tmp_path / "j.sqlite"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert run.returncode == 2, run.stderr
    assert "error: broken.py:7: Payload.from_wat" in run.stderr
    assert "the sandbox would not run this payload" in run.stderr
    assert "Traceback" not in run.stderr


# --- names: a trap says which function it was in -----------------------------------------

TRAPS_C = """
#include <stdio.h>
__attribute__((noinline)) int share_the_loot(int loot, int pirates) { return loot / pirates; }
int main(int argc, char **argv) { printf("%d\\n", share_the_loot(100, argc - 1)); return 0; }
"""


def test_a_trap_names_the_c_function_unless_the_author_strips_the_names(tmp_path):
    """C payloads keep their name section by default (not their debug information), so
    the trap a jobber reports names the author's function; `strip=True` drops it."""
    source = tmp_path / "loot.c"
    source.write_text(TRAPS_C)
    named = Payload.from_c(source)
    assert b"share_the_loot" in named.wasm and b".debug_info" not in named.wasm
    assert named.run(["x", "y"]).stdout == b"50\n"  # 100 / (argc - 1)
    out = named.run()  # no argument: 100 / 0
    assert out.status is Status.TRAP
    assert "integer divide by zero (in share_the_loot at offset" in out.detail
    stripped = Payload.from_c(source, strip=True)
    assert b"share_the_loot" not in stripped.wasm
    assert len(stripped.wasm) < len(named.wasm) < len(stripped.wasm) + 4096
    out = stripped.run()
    assert out.status is Status.TRAP and re.search(r"\(in function #\d+ at offset", out.detail)
    assert "share_the_loot" not in out.detail
    # an author's own "-s" strips too; the two ways build the same module
    assert compile_c(TRAPS_C, cflags=(*DEFAULT_CFLAGS, "-s")) == stripped.wasm
