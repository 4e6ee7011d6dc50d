"""The jobber: asks dealers for work and runs it sandboxed, at low priority."""

from jobber._backoff import Backoff, backoff_s
from jobber._client import Config, Jobber, JobberError

__all__ = ["Backoff", "Config", "Jobber", "JobberError", "backoff_s"]
