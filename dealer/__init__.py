"""The dealer: scheduling core (pure), SQLite journal, service, ZeroMQ server, serving a
task (`serve_task`), and `python -m dealer`."""

from dealer._batch import serve_task
from dealer._core import Core, CoreError, JournalMismatch, Policy
from dealer._journal import Journal, JournalError
from dealer._server import Dealer

__all__ = [
    "Core",
    "CoreError",
    "Dealer",
    "Journal",
    "JournalError",
    "JournalMismatch",
    "Policy",
    "serve_task",
]
