"""Making a pinned language runtime ready to run: `python -m sandbox prepare`.

A runtime (protocol._runtimes) is compiled before any job of it, once per machine
and engine, outside every job's limits: a jobber runs this in a process of its own
at idle priority (jobber._prepare) and lists the runtime to dealers only once it is
done. Steps, each skipped when its result is there already:

1. the module file is read and must hash to a pinned runtime (else PrepareError:
   nothing else is ever compiled past the payload caps);
2. it is stored in the module cache (`ModuleCache.put`);
3. its compiled form for the engine is loaded from the cache if valid; else copied
   from a shared cache (`shared`, one per machine, the jobbers' --runtime-cache) if a
   valid one is there; else compiled under the runtime's fences, this process's own
   rlimits: RLIMIT_CPU of `Runtime.compile_s` and RLIMIT_DATA of `memory_mb` more than
   it holds now (the owner's ceiling, at most the runtime's), and then left in the
   shared cache too.

A compile stopped by a fence ends the process (SIGXCPU, or an allocation failure):
the parent reads that as the failure. Files are written whole or not at all (the
cache writes to a temporary name and renames).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import resource
import shutil
from pathlib import Path

from protocol._runtimes import RUNTIMES, Runtime
from sandbox._cache import ModuleCache
from sandbox._precheck import Refused
from sandbox._worker import COMPILE_CPU_SLACK_S, _status_kb

log = logging.getLogger(__name__)


class PrepareError(Exception):
    """The runtime could not be made ready, and why."""


ENGINES = (False, True)  # native NaNs (what most tasks' jobs use), then canonical


def prepare_runtime(
    root: Path, module: Path, *, shared: Path | None = None, memory_mb: int | None = None
) -> Runtime:
    """Make the runtime in file `module` ready in the module cache at `root`, for both
    engines (a job's limits pick one: docs/sandbox.md), so that no job of it ever waits
    for a compile (see this module's docstring). Returns its Runtime; PrepareError if it
    cannot be made ready."""
    try:
        wasm = module.read_bytes()
    except OSError as e:
        raise PrepareError(f"cannot read {module}: {e.strerror or e}") from None
    sha = hashlib.sha256(wasm).hexdigest()
    rt = RUNTIMES.get(sha)
    if rt is None:
        raise PrepareError(f"{module} is not a pinned runtime (sha256 {sha})")
    cache = ModuleCache(root)
    try:
        if not cache.has(sha):
            cache.put(wasm)
        del wasm
        for canonical in ENGINES:
            _prepare_for(cache, rt, canonical, shared, memory_mb)
    except (OSError, MemoryError) as e:
        raise PrepareError(f"runtime {rt.name}: {e}") from None
    except Refused as e:
        raise PrepareError(f"runtime {rt.name}: {e.detail}") from None
    return rt


def ready(root: Path, sha: str) -> bool:
    """Whether runtime `sha` has a compiled form for every engine in the cache at `root`
    (present: a job checks it when it loads it)."""
    cache = ModuleCache(root)
    return cache.has(sha) and all(cache.compiled_path(sha, c).exists() for c in ENGINES)


def _prepare_for(
    cache: ModuleCache, rt: Runtime, canonical: bool, shared: Path | None, memory_mb: int | None
) -> None:
    sha = rt.sha256
    if cache.load(sha, canonical) is not None:
        return
    with contextlib.ExitStack() as stack:
        if shared is not None:
            # one compile per machine: the others wait for it here, then copy it
            shared.mkdir(parents=True, exist_ok=True)
            lock = stack.enter_context(open(shared / f".prepare-{sha[:16]}.lock", "w"))
            fcntl.flock(lock, fcntl.LOCK_EX)
            if _copy_compiled(ModuleCache(shared), cache, sha, canonical):
                log.info("runtime %s: compiled form taken from %s", rt.name, shared)
                return
        _fence(rt, memory_mb)
        kind = "canonical NaNs" if canonical else "native NaNs"
        log.info("runtime %s: compiling (%s; minutes)", rt.name, kind)
        cache.build(sha, canonical)
        if shared is not None:
            _copy_compiled(cache, ModuleCache(shared), sha, canonical, check=False)


def _fence(rt: Runtime, memory_mb: int | None) -> None:
    """This process's compile fences: CPU seconds, and memory beyond what it holds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(usage.ru_utime + usage.ru_stime + rt.compile_s + COMPILE_CPU_SLACK_S) + 1
    memory = rt.compile_memory_mb if memory_mb is None else min(memory_mb, rt.compile_memory_mb)
    for which, soft in (
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_DATA, _status_kb("VmData") + memory * 1024 * 1024),
    ):
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(which, (soft, hard))


def _copy_compiled(
    src: ModuleCache, dst: ModuleCache, sha: str, canonical: bool, check: bool = True
) -> bool:
    """Put `src`'s compiled form of `sha` in `dst` (a hard link where one can be made);
    with `check`, only a form `src` finds valid. False if there is none to copy."""
    path = src.compiled_path(sha, canonical)
    if not path.exists() or (check and src.load(sha, canonical) is None):
        return False
    dest = dst.compiled_path(sha, canonical)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        try:
            os.link(path, part)
        except OSError:
            shutil.copyfile(path, part)
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return True
