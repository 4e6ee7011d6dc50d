"""The shell's runtime preparer: carries out the core's PrepareRuntime and DownloadRuntime
off the loop.

Each runtime is prepared in a process of its own, `python -m sandbox prepare --nice 19`,
at the jobs' idle priority (it lowers its own, as slot workers do: it yields to the
owner's work as jobs do) and under the runtime's compile fences, never the jobs' limits
(sandbox._prepare). Its files are taken from the package index (--runtimes-from-index)
in a process of its own too, `python -m tasks._runtime_files SHA DIR --nice 19`, which
leaves each file in the file store's folder under a temporary name once it hashed to
its pin; the loop then puts them in the store (FileStore.adopt). Minutes of CPU or of
download, so a thread waits for each and signals the loop on a pipe, as the file checker
does (jobber._files.FileChecker); `done` holds (kind, hash, "" or why it failed). One at
a time. Stopping the jobber kills a process under way (it is started again when a
dealer next asks).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from jobber._actions import DownloadRuntime, PrepareRuntime, RuntimeDownloaded, RuntimePrepared
from protocol._runtimes import RUNTIMES
from sandbox._prepare import ready as runtime_ready
from tasks import cache_dir
from tasks._runtime_files import download_name

NICE = 19
_TAIL = 400  # characters of the preparer's last line kept as the reason it failed
PREPARE, DOWNLOAD = "prepare", "download"


class Preparing:
    """The shell's side of runtimes (jobber._client.Jobber, a mixin: the state is its)."""

    def _runtime_action(self, a: PrepareRuntime | DownloadRuntime) -> None:
        """The core's PrepareRuntime (the module, held whole in the file store) or
        DownloadRuntime (into the file store's folder), to the preparer."""
        if self._preparer is None:
            self._preparer = RuntimePreparer(
                self.cfg.data_dir / "cache",
                self.cfg.runtime_cache,
                self.cfg.compile_memory_mb,
                self.cfg.data_dir / "runtimes.log",
            )
            self._preparer.start()
        if isinstance(a, PrepareRuntime):
            self._preparer.put(PREPARE, a.sha, self.files.path(a.sha))
        else:
            self._preparer.put(DOWNLOAD, a.sha, self.files.root)

    def _runtimes_prepared(self) -> None:
        """Runtimes the preparer is done with: a prepared module, now in the payload cache,
        leaves the file store; downloaded files enter it. The core hears the outcome, then
        what the cache holds."""
        assert self._preparer is not None
        with contextlib.suppress(BlockingIOError):
            os.read(self._preparer.fd, 4096)
        while True:
            try:
                kind, sha, why = self._preparer.done.get_nowait()
            except queue.Empty:
                break
            now = time.monotonic()
            if kind == DOWNLOAD:
                rt = RUNTIMES[sha]
                if not why:
                    try:
                        for fsha, _ in ((sha, rt.size), *rt.files.values()):
                            self.files.adopt(fsha, self.files.root / download_name(fsha))
                    except OSError as e:
                        why = f"cannot keep its files: {e.strerror or e}"
                for fsha, _ in ((sha, rt.size), *rt.files.values()):
                    (self.files.root / download_name(fsha)).unlink(missing_ok=True)
                self.core.handle(RuntimeDownloaded(sha, why), now)
                self._evict(f"runtime {sha[:12]}")
                continue
            if not why:
                self.files.remove(sha)
            self.core.handle(RuntimePrepared(sha, why), now)
            self._evict(f"runtime {sha[:12]}")
        self._carry_out()

    def _cache_updated(self) -> None:
        """Tell the core what the payload cache holds, and which runtimes in it are ready
        (compiled for every engine)."""
        sizes = self.cache.sizes()
        root = self.cfg.data_dir / "cache"
        ready = [sha for sha in sizes if sha in RUNTIMES and runtime_ready(root, sha)]
        self.core.cache_updated(sizes, ready)


class RuntimePreparer(threading.Thread):
    def __init__(
        self,
        cache_root: Path,
        shared: Path | None,
        compile_memory_mb: int | None,
        log_path: Path,
    ) -> None:
        super().__init__(name="runtime-preparer", daemon=True)
        self.cache_root = cache_root
        self.shared = shared
        self.compile_memory_mb = compile_memory_mb
        self.log_path = log_path
        self._todo: queue.SimpleQueue = queue.SimpleQueue()
        self.done: queue.SimpleQueue = queue.SimpleQueue()
        self.fd, self._signal = os.pipe()
        os.set_blocking(self.fd, False)
        self._proc: subprocess.Popen | None = None
        self._stopping = False

    def put(self, kind: str, sha: str, path: Path) -> None:
        """PREPARE runtime `sha` from its module at `path`, or DOWNLOAD its files into
        folder `path`."""
        self._todo.put((kind, sha, path))

    def stop(self) -> None:
        """Kill a preparation under way, then end (joined)."""
        self._stopping = True
        self._todo.put(None)
        proc = self._proc
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.kill()
        self.join()
        os.close(self.fd)
        os.close(self._signal)

    def run(self) -> None:
        while (item := self._todo.get()) is not None:
            kind, sha, path = item
            if kind == PREPARE:
                cmd = [sys.executable, "-m", "sandbox", "prepare", "--nice", str(NICE)]
                cmd += ["--cache", str(self.cache_root)]
                if self.shared is not None:
                    cmd += ["--shared", str(self.shared)]
                if self.compile_memory_mb is not None:
                    cmd += ["--compile-memory", str(self.compile_memory_mb)]
                cmd.append(str(path))
            else:
                cmd = [sys.executable, "-m", "tasks._runtime_files", sha, str(path)]
                cmd += ["--cache", str(cache_dir()), "--nice", str(NICE)]
            self.done.put((kind, sha, self._run(cmd)))
            os.write(self._signal, b"x")

    def _run(self, cmd: list[str]) -> str:
        """Run one preparer or download process: "" if it succeeded, else why not."""
        try:
            with open(self.log_path, "ab") as log:
                self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
                if self._stopping:  # stop() came before the process: it may not have seen it
                    self._proc.kill()
                rc = self._proc.wait()
        except OSError as e:
            return f"cannot start {cmd[2]}: {e.strerror or e}"
        finally:
            self._proc = None
        if rc == 0:
            return ""
        if self._stopping:
            return "the jobber stopped"
        if rc < 0:
            name = signal.Signals(-rc).name
            fence = " (the compile CPU fence)" if name == "SIGXCPU" else ""
            return f"compiling it was stopped by {name}{fence}"
        return _last_line(self.log_path) or f"the preparer exited with code {rc}"


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].removeprefix("sandbox: ").removeprefix("error: ")[:_TAIL] if lines else ""
