"""borednet's sandbox: runs one WASI payload under limits. No sockets, no tasks.

Public face:

- :func:`run` runs one job in this process and returns an :class:`Outcome`.
- :class:`ModuleCache` holds payloads and their compiled form on disk.
- :class:`Slots` runs jobs in long-lived, low-priority worker processes.

Only this package knows wasmtime. docs/sandbox.md describes the limits, the
determinism rules (clocks and randomness are virtual) and the worker fences.
"""

from sandbox._cache import ModuleCache
from sandbox._engine import run
from sandbox._outcome import Outcome
from sandbox._slots import Slots

__all__ = ["ModuleCache", "Outcome", "Slots", "run"]
