"""What a task author imports: Task, Job, Payload, Limits."""

from protocol import Limits
from tasks._payload import Payload, PayloadError, builtin, cache_dir, compile_c
from tasks._task import Failure, Job, Task

__all__ = [
    "Failure",
    "Job",
    "Limits",
    "Payload",
    "PayloadError",
    "Task",
    "builtin",
    "cache_dir",
    "compile_c",
]
