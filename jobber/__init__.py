"""The jobber: asks dealers for work and runs it sandboxed, at low priority."""

from jobber._client import Jobber
from jobber._settings import Config, JobberError
from net._backoff import Backoff, backoff_s

__all__ = ["Backoff", "Config", "Jobber", "JobberError", "backoff_s"]
