"""borednet's sandbox: runs one WASI payload under limits. No sockets, no tasks.

Public face:

- :func:`run` runs one job in this process and returns an :class:`Outcome`.
- :class:`ModuleCache` holds payloads and their compiled form on disk.
- :class:`Slots` runs jobs in long-lived, low-priority worker processes;
  :data:`COMPILE_TIME_S` and :data:`COMPILE_MEMORY_MB` are their fixed compile
  fences (an owner's may only be lower).
- :func:`check` says whether the sandbox would run a module, and why not (for
  task authors, before any jobber sees it).
- :data:`PLATFORM` names what a job's bytes depend on beyond the job when its
  NaNs are native (CPU architecture, OS, wasmtime version, engine flags), and
  :data:`NAN_FUEL` how it counts fuel when they are canonical (the NaN guards' version).

Only this package knows wasmtime. docs/sandbox.md describes the limits, the
determinism rules and the worker fences. In short: a payload is a WASI
preview 1 command with argv, stdin, a capped stdout and the job's input files
if it has any (a read-only tree under one preopened ``/``, its metadata fixed:
see _tree, _files), and nothing else (no environment, no sockets, nothing
to write to but stdout and stderr); clocks and randomness are not refused but
virtual (clocks read the fuel used so far, random_get is a fixed stream; see
_wasi), so a job gives the same bytes and fuel on every machine of one
PLATFORM, and on every machine at all when its NaNs are canonical (the
default: NaN guards, see _nanguard and _flavors; ``Limits.native_nans`` runs it
without, faster on float code that stores its results). Compiling is fenced
too: a module's header counts are checked against caps before wasmtime sees it
(_precheck), and Slots compile under time and memory fences of their own
(_worker, _slots); a module that failed to compile is remembered in the cache
and given the same end at once (_cache).
"""

from sandbox._cache import ModuleCache
from sandbox._check import check
from sandbox._engine import NAN_FUEL, PLATFORM, run
from sandbox._outcome import Outcome
from sandbox._slots import COMPILE_MEMORY_MB, COMPILE_TIME_S, Slots

__all__ = [
    "COMPILE_MEMORY_MB",
    "COMPILE_TIME_S",
    "NAN_FUEL",
    "PLATFORM",
    "ModuleCache",
    "Outcome",
    "Slots",
    "check",
    "run",
]
