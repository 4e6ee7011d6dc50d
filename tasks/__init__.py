"""What a task author imports: Task, Job, Payload, InputFile, Limits."""

from protocol import Limits
from tasks._files import InputFile, InputFileError
from tasks._payload import Payload, PayloadError, builtin, cache_dir, compile_c
from tasks._task import Failure, Job, Task

__all__ = [
    "Failure",
    "InputFile",
    "InputFileError",
    "Job",
    "Limits",
    "Payload",
    "PayloadError",
    "Task",
    "builtin",
    "cache_dir",
    "compile_c",
]
