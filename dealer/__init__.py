"""The dealer: scheduling core (pure), SQLite journal, ZeroMQ server, CLI."""

from dealer._core import Core, CoreError, JournalMismatch, Policy
from dealer._journal import Journal, JournalError
from dealer._server import Dealer

__all__ = ["Core", "CoreError", "Dealer", "Journal", "JournalError", "JournalMismatch", "Policy"]
