"""README.md's command blocks, run as a person runs them (tests/e2e/docs_blocks.py says
how); and the check that every block of the docs it names is run by a test."""

from __future__ import annotations

import json
import os
import re
import shlex
import time
import tomllib
import urllib.request
from importlib import metadata
from pathlib import Path

from dealer._batch import DEFAULT_BIND
from dealer._server import WATCHED_S
from tests.e2e.docs_blocks import (
    BLOCKS,
    HERE,
    VENV,
    all_blocks,
    blocks_of,
    commands,
    environment,
    sh,
    start,
    stop,
    sub,
    workdir,
)
from tests.helpers import LINE, ROOT, free_port, summary_rows


def test_every_block_is_run():
    found = all_blocks()
    unknown = [(doc, fp, text) for doc, fp, text in found if BLOCKS.get(fp, ("",))[0] != doc]
    assert not unknown, "\n".join(
        f"{doc}: a block no test runs (new, or changed since it was entered), "
        f"fingerprint {fp}:\n{text}Add it to BLOCKS in tests/e2e/docs_blocks.py with the "
        "test that runs it (or, if it cannot run in a test, checks it)."
        for doc, fp, text in unknown
    )
    gone = set(BLOCKS) - {fp for _, fp, _ in found}
    assert not gone, f"BLOCKS names blocks no doc has any more: {sorted(gone)}"
    for _, test in BLOCKS.values():
        file, name = test.split("::")
        assert f"\ndef {name}(" in (HERE / file).read_text(), f"BLOCKS names {test}: not there"


# --- README.md: the first two commands --------------------------------------------------


def check_venv(part: str, env: dict[str, str], cwd: Path) -> None:
    """`python3 -m venv .venv`: made by CI's fresh clone; here, the command is checked."""
    words = shlex.split(part)
    assert words[:3] == ["python3", "-m", "venv"] and words[3:] == [".venv"], part
    assert "ENV_DIR" in sh("python3 -m venv --help", cwd, env).stdout


def check_pip_install(part: str, env: dict[str, str], cwd: Path) -> None:
    """`.venv/bin/pip install -q -e TARGET`: not run (it fetches from the network); pip
    knows each option, TARGET is this project with extras it declares, and what they
    require is installed in the environment the tests run in."""
    words = shlex.split(part)
    assert words[:2] == [".venv/bin/pip", "install"], part
    options = [w for w in words[2:] if w.startswith("-")]
    (target,) = [w for w in words[2:] if not w.startswith("-")]
    helptext = sh(".venv/bin/pip install --help", cwd, env).stdout
    for option in options:
        assert re.search(rf"(^|[ ,]){re.escape(option)}[ ,=]", helptext, re.M), option
    m = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
    assert m, f"{target}: not this checkout"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in m.group(1).split(",") if m.group(1) else []:
        assert extra in project["optional-dependencies"], f"no extra {extra!r}"
        requirements += project["optional-dependencies"][extra]
    for req in requirements:
        name = re.match(r"[A-Za-z0-9_.-]+", req).group(0)
        metadata.version(name)  # PackageNotFoundError if it is not installed


def test_the_install_and_the_demo(factor_wasm, short_tmp):
    (block,) = blocks_of("test_docs.py::test_the_install_and_the_demo")
    (line,) = commands(block)
    venv, pip, demo = line.split(" && ")
    cwd = workdir(short_tmp)
    env = environment(short_tmp)
    check_venv(venv, env, cwd)
    check_pip_install(pip, env, cwd)
    # the demo, as written: a dealer on a free port and two jobbers of its own
    got = sh(demo, cwd, env, timeout=300)
    readme = (ROOT / "README.md").read_text()
    assert f"it prints `{LINE}`" in readme
    assert got.stdout.splitlines() == [LINE], got.stdout
    rows = summary_rows(got.stderr)
    assert len(rows) == 2 and sum(r[2] for r in rows) == 64, got.stderr[-2000:]


def test_the_install_for_the_tests(short_tmp):
    (block,) = blocks_of("test_docs.py::test_the_install_for_the_tests")
    (line,) = commands(block)
    venv, pip, tests = line.split(" && ")
    cwd = workdir(short_tmp)
    env = environment(short_tmp)
    check_venv(venv, env, cwd)
    check_pip_install(pip, env, cwd)
    # the whole suite is what CI runs (.ci/run, this very line); here, pytest is there
    assert tests == ".venv/bin/python -m pytest"
    got = sh(f"{tests} --version", cwd, env)
    assert re.match(r"pytest \d", got.stdout + got.stderr), got
    assert line in (ROOT / ".ci" / "run").read_text()


def test_activating_the_environment(short_tmp):
    """The block runs in a shell where `python` is not the environment's: activating it is
    what makes `python -m jobber` run."""
    (block,) = blocks_of("test_docs.py::test_activating_the_environment")
    cwd = workdir(short_tmp)
    env = environment(short_tmp)
    env["PATH"] = os.pathsep.join(
        x for x in env["PATH"].split(os.pathsep) if Path(x) != VENV / "bin"
    )
    lines = commands(block)
    assert lines[0].split("#")[0].strip() == ". .venv/bin/activate"
    got = sh(block, cwd, env)
    assert got.stdout.startswith("usage: python -m jobber"), got.stdout[:500]
    # and the entry point the comment names says the same
    other = re.search(r"the same as: (\S+ --help)", block).group(1)
    assert sh(other, cwd, environment(short_tmp)).stdout == got.stdout


def test_the_entry_points_are_the_programs_the_readme_names():
    """The README names every `borednet-*` of pyproject.toml, each as the `python -m`
    program it is, and each is installed in the environment as that program."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    said = re.search(
        r"((?:`borednet-\w+`,? (?:and )?)+)are ((?:`python -m \w+`,? (?:and )?)+)", readme
    )
    assert said, "the README says which program each borednet-* is"
    names = re.findall(r"`borednet-(\w+)`", said.group(1))
    assert names == re.findall(r"`python -m (\w+)`", said.group(2))
    assert sorted(f"borednet-{x}" for x in names) == sorted(scripts)
    for name in names:
        assert scripts[f"borednet-{name}"] == f"{name}.cli:main"
        assert f"from {name}.cli import main" in (ROOT / name / "__main__.py").read_text()
        # installed (test_activating_the_environment runs one)
        script = (VENV / "bin" / f"borednet-{name}").read_text()
        assert f"from {name}.cli import main" in script, script


# --- README.md: a batch, and the machines lent to it --------------------------------------

SMALL = 1000003 * 1000033  # N: 11 jobs of some milliseconds


def test_a_batch_and_the_machines_lent_to_it(factor_wasm, short_tmp, procs):
    batch, lending = blocks_of("test_docs.py::test_a_batch_and_the_machines_lent_to_it")
    serve, lend, status, results, jobs, dashboard = commands(batch)
    (jobber,) = commands(lending)
    cwd = workdir(short_tmp)
    env = environment(short_tmp)
    port = free_port()

    # the dealer (on a free loopback port, not its default, which the comment names); it
    # says where it listens, with its key, and where its journal is
    assert re.search(r"# a dealer on (\S+); prints its address", serve).group(1) == DEFAULT_BIND
    line = sub(serve, {"factoring.py N ": f"factoring.py {SMALL} --bind tcp://127.0.0.1:{port} "})
    dealer = start(procs, "dealer", line, cwd, env)
    address = dealer.wait_for(r"listening on (\S+)", 120).group(1)
    host, key = re.fullmatch(rf"tcp://(127\.0\.0\.1:{port})#([0-9a-f]{{64}})", address).groups()
    db = dealer.wait_for(r"journal (\S+)", 30).group(1)

    # its status, asked before any machine comes: the task and its jobs
    status = sub(status, {"dealer.example.org": host})
    got = sh(status, cwd, env)
    assert re.search(r"^task Factoring: 0 accepted, .* of 11$", got.stdout, re.M), got.stdout
    assert f"key {key}" in got.stdout
    asked = time.monotonic()

    # two machines: one as the batch's section says, one as "Lending a machine" does
    one = start(
        procs,
        "jobber-1",
        sub(lend, {"dealer.example.org": host, "#KEY": f"#{key}"}),
        cwd,
        env | {"BOREDNET_JOBBER_DIR": str(short_tmp / "pc1")},
    )
    two = start(
        procs,
        "jobber-2",
        sub(
            jobber,
            {
                "DEALER [DEALER ...]": address,
                "[--slots N]": "--slots 1",
                "[--max-idle SECONDS]": "--max-idle 3",
            },
        ),
        cwd,
        env | {"BOREDNET_JOBBER_DIR": str(short_tmp / "pc2")},
    )
    dealer.wait_for(rf"^{SMALL} = 1000003 \* 1000033$", 120, stream="stdout")
    if time.monotonic() - asked < WATCHED_S - 2:
        # its status was asked while it ran: done, it stays until asked once more (for an
        # allocator's last count), and its status names the machines and their credit
        got = sh(status, cwd, env)
        assert re.search(r"^task Factoring: 11 accepted, 0 failed, 0 in flight", got.stdout, re.M)
        final = summary_rows(got.stdout)
        # (one machine may have done every job before the other asked: jobs are short)
        assert final and sum(r[2] for r in final) == 11, got.stdout
        assert all(r[5] > 0 for r in final if r[2]), got.stdout
    else:  # a machine slow enough that it was not watched: it has not stayed for the ask
        final = None
        print("the batch took too long after the status to ask it again")
    assert dealer.wait(120) == 0, dealer.stderr[-3000:]
    assert dealer.stdout.splitlines() == [f"{SMALL} = 1000003 * 1000033"]
    rows = summary_rows(dealer.stderr)
    assert final is None or final == rows
    assert sum(r[2] for r in rows) == 11 and 1 <= len(rows) <= 2, dealer.stderr[-2000:]
    names = {
        one.wait_for(r"jobber (\S+): \d+ slots", 30).group(1),
        two.wait_for(r"jobber (\S+): 1 slots", 30).group(1),
    }
    assert {r[0] for r in rows} <= {name[:24] for name in names}  # (the table's width)

    # the journal, read after the batch (while the second machine runs out its --max-idle)
    got = sh(sub(results, {"DB": db}), cwd, env)
    assert "11 jobs drawn: 11 accepted, 0 failed, 0 unsettled" in got.stdout
    assert re.search(rf"^10\s+accepted\s+{SMALL} 1000002 1000018\s+1000003$", got.stdout, re.M)
    for form in re.search(r"\((--\w+), (--\w+)\)", results).groups():  # the forms it names
        other = sh(sub(results, {"DB": f"{db} {form}"}), cwd, env).stdout
        if form == "--json":
            assert len(json.loads(other)["jobs"]) == 11
        else:
            assert other.splitlines()[0].startswith("job,args,state,output")
    got = sh(sub(jobs, {"DB": db}), cwd, env)
    assert len(re.findall(r"^job \d+\s+accepted\s", got.stdout, re.M)) == 11, got.stdout
    keys = set(re.findall(r"^  [0-9a-f]+\.[0-9a-f]+\s+([0-9a-f]{12})\s", got.stdout, re.M))
    assert keys and keys <= {r[1] for r in rows}, got.stdout
    # the dashboard from the journal: it serves the page (on 127.0.0.1, a free port) until
    # stopped; its data say what the journal does
    view = start(procs, "dashboard", sub(dashboard, {"DB": db}), cwd, env)
    url = view.wait_for(r"dashboard on (http://127\.0\.0\.1:\d+/)", 60, stream="stdout").group(1)
    with urllib.request.urlopen(url, timeout=30) as page:
        assert b"<html" in page.read().lower()
    with urllib.request.urlopen(url + "status.json", timeout=30) as page:
        shown = json.load(page)
    assert (shown["accepted"], shown["failed"], shown["total"]) == (11, 0, 11), shown
    stop(view)

    # --max-idle: the second machine ends itself once nothing is left to do; the first is
    # stopped
    assert two.wait(60) == 0, two.stderr[-3000:]
    two.wait_for(r"no work for [\d.]+ s: exiting", 1)
    stop(one)
