"""The sandbox's wasmtime engines, and compiling a payload for the one its job needs.

Three engine configurations, the same everywhere (compiled modules are only valid
for the configuration that made them), each in two *flavors*: in-process, with epoch
interruption (`sandbox.run`), and watched (WATCHED), without (slot workers; see
BASES below). All have fuel, deterministic relaxed SIMD, a fixed wasm stack and the
sandbox's own memory creator (see _memory); then:

========== ====================================================== ==================
flavor     more                                                   runs
========== ====================================================== ==================
native     nothing: NaN bits are the CPU's                        jobs with
                                                                  ``native_nans``
guarded    wasm branch hints (read from the module)               the other jobs,
                                                                  modules rewritten
                                                                  by _nanguard
canonical  ``cranelift_nan_canonicalization``: a canonical NaN    the other jobs, of
           after every float operation                            modules _nanguard
                                                                  cannot guard
========== ====================================================== ==================

So a job runs in one of two *modes*, as `canonical` says everywhere in this
package: native NaNs (the native engine), or canonical NaNs (the bytes the
canonical engine gives, on every CPU). A module compiled for the canonical mode
is the module with NaN guards on the guarded engine, or, when _nanguard cannot
guard it, the module itself on the canonical engine (`flavor_of` says which).
The guards give the canonical engine's bytes at a fraction of its cost on float
code; their operators count as fuel (docs/sandbox.md, "NaN guards").
"""

from __future__ import annotations

import hashlib
import logging
import platform
import threading
from importlib import metadata

import wasmtime
from wasmtime import _bindings

from protocol import _runtimes
from sandbox import _memory, _nanguard, _precheck, _wasi

log = logging.getLogger(__name__)

MAX_WASM_STACK = 512 * 1024  # wasmtime's default, pinned: it decides where STACK happens
BASES = ("native", "canonical", "guarded")
# Each base comes in two fences for the time limit: *in-process* engines (the names above)
# check an epoch at every loop header and function entry, so a job's own process can stop
# it (`sandbox.run`); *watched* engines (WATCHED added to the name) have no epoch checks,
# and a job on them is stopped from outside: a slot worker's ticker sends its outcome and
# the parent kills the worker (_worker, _slots). The epoch checks cost a tight loop a
# register or two, which on some machines slowed it by 1.2 to 1.6 x (docs/sandbox.md,
# "What each fence guarantees, and what it costs").
WATCHED = "-watched"
FLAVORS = (*BASES, *(base + WATCHED for base in BASES))

_SHARED_FLAGS = (
    "consume_fuel",
    "epoch_interruption",
    "wasm_relaxed_simd_deterministic",
    f"max_wasm_stack={MAX_WASM_STACK}",
    "host_memory_creator",
    "wasm_exceptions",
)
_NAN_FLAG = "cranelift_nan_canonicalization"
_GUARD_FLAGS = ("wasm_branch_hinting", f"nan_guards={_nanguard.VERSION}")


def watched(flavor: str) -> bool:
    """Whether `flavor`'s engine has no epoch checks (its jobs are stopped from outside)."""
    return flavor.endswith(WATCHED)


def _flags(flavor: str) -> tuple[str, ...]:
    if watched(flavor):
        return tuple(f for f in _flags(flavor[: -len(WATCHED)]) if f != "epoch_interruption")
    # the canonical engine's list is the one every engine had before the native one
    # existed, in the same order: its key, and so the compiled modules cached under it,
    # stay valid
    if flavor == "canonical":
        return (*_SHARED_FLAGS[:2], _NAN_FLAG, *_SHARED_FLAGS[2:])
    return (*_SHARED_FLAGS, *_GUARD_FLAGS) if flavor == "guarded" else _SHARED_FLAGS


def _make_config(flavor: str) -> wasmtime.Config:
    base = flavor.removesuffix(WATCHED)
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = not watched(flavor)
    config.cranelift_nan_canonicalization = base == "canonical"
    config.wasm_relaxed_simd_deterministic = True
    config.max_wasm_stack = MAX_WASM_STACK
    config.wasm_exceptions = True  # wasmtime 50's default, pinned: CPython's build needs it
    if base == "guarded":  # the guards' hints: their NaN path is laid out of the way
        _bindings.wasmtime_config_wasm_branch_hinting_set(config.ptr(), True)
    _memory.install(config)
    return config


def _wasmtime_version() -> str:
    try:
        return metadata.version("wasmtime")
    except metadata.PackageNotFoundError:
        return "unknown"


def _engine_key(flavor: str) -> str:
    """Names an engine configuration: compiled modules are only valid under it."""
    names = ["wasmtime " + _wasmtime_version(), platform.machine(), platform.system()]
    text = "\n".join([*names, *_flags(flavor)])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


FLAVOR_KEYS = {flavor: _engine_key(flavor) for flavor in FLAVORS}


def mode_flavors(canonical: bool, is_watched: bool = True) -> tuple[str, ...]:
    """The flavors a module compiled for a mode (`canonical`) may have, watched or not."""
    bases = ("guarded", "canonical") if canonical else ("native",)
    return tuple(base + WATCHED for base in bases) if is_watched else bases


def engine_keys(is_watched: bool = True) -> dict[bool, str]:
    """By mode (`canonical`): the key naming the mode's compiled forms in the cache (the
    guarded engine's: it changes with the NaN guards' version)."""
    return {c: FLAVOR_KEYS[mode_flavors(c, is_watched)[0]] for c in (True, False)}


# the keys of the engines slot workers run (a ModuleCache's by default)
ENGINE_KEYS = engine_keys(True)
ENGINE_KEY = ENGINE_KEYS[True]  # the canonical mode's (the default)
# What a job's bytes and fuel depend on beyond the job itself, on the native engine a
# slot worker runs: the CPU architecture (NaN bits, where the stack runs out), the OS
# (calling conventions, frame sizes), the wasmtime version and the engine's flags (its
# key hashes all of them: the epoch checks, which only in-process engines have, change
# frame sizes, so where a deep recursion stops and its fuel). Jobbers say it in
# HostFacts.platform; a dealer lets only replicas of one platform vote together,
# unless the task is cross-platform (canonical NaNs).
# how this sandbox counts fuel with canonical NaNs (protocol HostFacts.nan_fuel): the
# guards' operators count, so jobbers of another pass version count other fuel; and
# on a watched engine (a `stack` outcome's fuel is not an in-process engine's)
NAN_FUEL = f"nan-guards-{_nanguard.VERSION}{WATCHED}"

PLATFORM = (
    f"{platform.machine().lower() or 'unknown'}-{platform.system().lower() or 'unknown'}"
    f"-wasmtime-{_wasmtime_version()}-{FLAVOR_KEYS['native' + WATCHED][:8]}"
)

_lock = threading.Lock()
_engines: dict[str, wasmtime.Engine] = {}  # by flavor, each made on first use
_linkers: dict[str, wasmtime.Linker] = {}


def named(flavor: str) -> wasmtime.Engine:
    """The process's engine of `flavor`, created on first use."""
    eng = _engines.get(flavor)
    if eng is None:
        if flavor not in FLAVORS:
            raise ValueError(f"no engine flavor {flavor!r}")
        with _lock:
            eng = _engines.get(flavor)
            if eng is None:
                eng = wasmtime.Engine(_make_config(flavor))
                linker = wasmtime.Linker(eng)
                _wasi.define(linker)
                _linkers[flavor] = linker
                _engines[flavor] = eng
    return eng


def engine(canonical: bool = True) -> wasmtime.Engine:
    """The process's in-process canonical (cranelift-canonicalizing) or native engine."""
    return named("canonical" if canonical else "native")


def linker(flavor: str) -> wasmtime.Linker:
    """The linker of `flavor`'s engine (WASI defined in it)."""
    named(flavor)
    return _linkers[flavor]


def made() -> list[wasmtime.Engine]:
    """The in-process engines made so far (the ticker advances their epochs)."""
    return [eng for flavor, eng in list(_engines.items()) if not watched(flavor)]


def tag(module: wasmtime.Module, flavor: str) -> wasmtime.Module:
    """`module`, marked as compiled for `flavor`'s engine."""
    module.borednet_flavor = flavor
    return module


def flavor_of(module: wasmtime.Module, canonical: bool = True) -> str:
    """The flavor `module` was compiled for (by `compile` or the cache); an unmarked
    module is taken to be the mode's plain in-process engine's."""
    return getattr(module, "borednet_flavor", "canonical" if canonical else "native")


def deserialize(body: bytes, flavor: str) -> wasmtime.Module:
    return tag(wasmtime.Module.deserialize(named(flavor), body), flavor)


def compile(  # noqa: A001 - the wasm sense
    wasm: bytes, canonical: bool = True, is_watched: bool = False
) -> wasmtime.Module:
    """Compile `wasm` for the canonical or the native mode, once its header counts pass
    the caps: for the canonical mode, with NaN guards for the guarded engine, or as it
    is for the canonical engine when it cannot be guarded (see the module docstring).
    `is_watched`: for the watched engines (slot workers), else the in-process ones.

    Raises _precheck.Refused (INVALID) for a module beyond a cap or bytes that are
    not framed as a module, before wasmtime sees them; wasmtime.WasmtimeError if
    wasmtime finds them invalid. Not fenced here: see _worker for the fences.
    """
    wasm = bytes(wasm)

    def on(base: str, code: bytes) -> wasmtime.Module:  # compiled for base's engine
        flavor = base + WATCHED if is_watched else base
        return tag(wasmtime.Module(named(flavor), code), flavor)

    try:
        _precheck.check(wasm)
    except _precheck.Refused:
        if _runtimes.pinned(wasm) is None:
            raise
    if not canonical:
        return on("native", wasm)
    try:
        guarded = _nanguard.guard(wasm)
    except _nanguard.Unsupported as e:
        log.info("no NaN guards (%s): canonical engine", e)
    else:
        try:
            return on("guarded", guarded)
        except wasmtime.WasmtimeError as e:
            # an invalid module (wasmtime says why below, for the module as sent), or
            # one that the guards took past a limit of wasmtime's: either way, as it is
            guarded, refused = b"", str(e).strip().splitlines()
            module = on("canonical", wasm)
            log.warning("NaN guards refused (%s): canonical engine", refused[-1:])
            return module
    return on("canonical", wasm)
