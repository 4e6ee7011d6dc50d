"""The command blocks of README.md and docs/allocator.md, run as a person runs them:
the table of blocks and the helpers of tests/e2e/test_docs.py (README.md) and
tests/e2e/test_docs_allocator.py (docs/allocator.md).

Every fenced block of those files is in BLOCKS below, by a fingerprint of its text,
with the test that runs it; a block added or changed fails `test_every_block_is_run`
until it is entered there. The tests run each command through bash, as written, in a
temporary working directory (with `examples` and `.venv` linked into it, so that the
README's relative paths hold) and with the project's environment first on PATH, as
after `. .venv/bin/activate`. What a doc leaves to its reader is filled in with real
values: N a small number, a dealer's or the allocator's address a free loopback port of
one the test started (`dealer.example.org`, `alloc.uni.example`, `tcp://*:7127`), a KEY
the one it printed, DB the journal the batch named, /srv/alloc a temporary folder.
Programs that serve (a dealer, jobbers, the allocator) start in the background and are
stopped with SIGTERM once they have answered. What cannot run in a test (creating an
environment and installing into it from the network) is checked against the programs'
own parsers and pyproject.toml.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from allocator.cli import ALLOCATOR_ENV
from tests.conftest import Proc
from tests.helpers import ROOT

HERE = Path(__file__).resolve().parent
DOCS = ("README.md", "docs/allocator.md")
VENV = Path(sys.prefix)  # the environment these tests run in: the README's .venv

# Every fenced block of DOCS (its text between the fences, sha256, 12 hex digits) ->
# (the file, the test that runs it, in tests/e2e). A new or changed block fails
# test_docs.py::test_every_block_is_run until it is entered here with a test that runs
# it, or checks what cannot run in a test.
ORG = "test_docs_allocator.py::test_an_organisations_setup_end_to_end"
BLOCKS = {
    # python3 -m venv .venv && .venv/bin/pip install -q -e . && ... factoring.py ... --jobbers 2
    "62ca117f3430": ("README.md", "test_docs.py::test_the_install_and_the_demo"),
    # python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest
    "3a49dd605f5c": ("README.md", "test_docs.py::test_the_install_for_the_tests"),
    # . .venv/bin/activate; python -m jobber --help
    "1639eb819f7d": ("README.md", "test_docs.py::test_activating_the_environment"),
    # python examples/factoring.py N; python -m jobber ...#KEY; dealer status|results|jobs|dashboard
    "9e7a9878da93": ("README.md", "test_docs.py::test_a_batch_and_the_machines_lent_to_it"),
    # python -m jobber DEALER [DEALER ...] [--slots N] [--max-idle SECONDS]
    "6b1698e9f379": ("README.md", "test_docs.py::test_a_batch_and_the_machines_lent_to_it"),
    # python -m allocator serve --db /srv/alloc/org.sqlite --bind 'tcp://*:7127'
    "38b7e004fbde": ("docs/allocator.md", ORG),
    # python -m dealer keygen .borednet/admin
    "bf51145a1048": ("docs/allocator.md", ORG),
    # export BOREDNET_ALLOCATOR=...; python -m allocator grant ... (three)
    "7392c4d86e30": ("docs/allocator.md", ORG),
    # python -m allocator project-add climate|genome ...; share genome 2
    "b7a858235fdc": ("docs/allocator.md", ORG),
    # python -m allocator pool-add physics-lab ...; prefs ...; prefs ... start_hour= end_hour=
    "3e55266afa89": ("docs/allocator.md", ORG),
    # python -m allocator join-token; python -m jobber --allocator ... --join TOKEN; admit
    "775c37c37099": ("docs/allocator.md", ORG),
    # python -m allocator list; machines physics-lab; stats (and its output)
    "9e66a5f82e03": ("docs/allocator.md", ORG),
}


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced block of a Markdown text, whatever its language: (language, text)."""
    out, lang, lines = [], None, []
    for line in text.splitlines():
        if lang is None and line.startswith("```"):
            lang, lines = line[3:].strip(), []
        elif lang is not None and line.strip() == "```":
            out.append((lang, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line)
    assert lang is None, "a fence left open"
    return out


def fingerprint(block: str) -> str:
    return hashlib.sha256(block.encode()).hexdigest()[:12]


def all_blocks() -> list[tuple[str, str, str]]:
    """(file, fingerprint, text) of every fenced block of DOCS, in order."""
    return [
        (doc, fingerprint(text), text)
        for doc in DOCS
        for _, text in fenced_blocks((ROOT / doc).read_text())
    ]


def blocks_of(test: str) -> list[str]:
    """The blocks BLOCKS gives to `test` (FILE::NAME), in the order of their files."""
    got = [text for doc, fp, text in all_blocks() if BLOCKS.get(fp) == (doc, test)]
    want = sum(1 for x in BLOCKS.values() if x[1] == test)
    assert len(got) == want, f"{test}: {want} blocks in BLOCKS, {len(got)} found in the docs"
    return got


def commands(block: str) -> list[str]:
    """The command lines of a block (comment lines are what it says they print)."""
    return [x for x in block.splitlines() if x.strip() and not x.lstrip().startswith("#")]


def comments(block: str) -> list[str]:
    return [x.lstrip()[1:].strip() for x in block.splitlines() if x.lstrip().startswith("#")]


def sub(text: str, pairs: dict[str, str]) -> str:
    """`text` with each placeholder replaced by its real value; a placeholder the doc no
    longer has fails, naming it (the block changed: update the test with it)."""
    for old, new in pairs.items():
        assert old in text, f"the doc no longer says {old!r}:\n{text}"
        text = text.replace(old, new)
    return text


def environment(tmp: Path) -> dict[str, str]:
    """The test's environment, the project's one first on PATH (as activated), and no
    data directory of the user's: jobbers keep theirs in BOREDNET_JOBBER_DIR."""
    env = dict(os.environ)
    path = [x for x in env.get("PATH", "").split(os.pathsep) if x and Path(x) != VENV / "bin"]
    env["PATH"] = os.pathsep.join([str(VENV / "bin"), *path])
    env["PYTHONUNBUFFERED"] = "1"
    env["XDG_DATA_HOME"] = str(tmp / "share")
    env["BOREDNET_JOBBER_DIR"] = str(tmp / "jobber")
    env.pop(ALLOCATOR_ENV, None)
    return env


def workdir(tmp: Path, name: str = "work") -> Path:
    """A working directory as a checkout looks to the README: examples/ and .venv/.
    (In `short_tmp`: the demo's jobbers keep their data, and their control sockets, in
    it.)"""
    assert (VENV / "bin" / "activate").is_file(), f"{VENV}: run the tests in the README's .venv"
    cwd = tmp / name
    cwd.mkdir(parents=True, exist_ok=True)
    (cwd / "examples").symlink_to(ROOT / "examples")
    (cwd / ".venv").symlink_to(VENV)
    return cwd


def sh(line: str, cwd: Path, env: dict[str, str], *, code: int = 0, timeout: float = 120):
    """Run `line` with bash, as typed; its exit code must be `code`."""
    try:
        got = subprocess.run(
            ["bash", "-c", line],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise AssertionError(
            f"{line}\nstill running after {timeout} s\n--- stderr ---\n{(err or '')[:3000]}"
        ) from None
    assert got.returncode == code, (
        f"{line}\nexited {got.returncode}, not {code}\n--- stdout ---\n{got.stdout[-3000:]}"
        f"\n--- stderr ---\n{got.stderr[-3000:]}"
    )
    return got


def start(procs, name: str, line: str, cwd: Path, env: dict[str, str]) -> Proc:
    """`line` in the background (bash execs it: a signal reaches the program itself)."""
    proc = Proc(name, ["bash", "-c", f"exec {line}"], cwd, env)
    procs.all.append(proc)  # killed at the end if a test fails before it stops it
    return proc


def stop(proc: Proc) -> None:
    proc.signal(signal.SIGTERM)
    assert proc.wait(60) == 0, proc.stderr[-3000:]
