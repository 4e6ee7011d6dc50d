"""Where an author's files are: a relative path given to Payload or InputFile is taken
relative to the directory of the Python file that called (the task file), so a task runs
the same from any working directory; from an interactive session, relative to the
working directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# the modules that take an author's paths: frames in them are not the author's
_OURS = frozenset(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), name)
    for name in ("_paths.py", "_payload.py", "_files.py")
)


def _caller() -> tuple[Path, int] | None:
    """The file and line of the first frame outside this package's modules (the task's code), or
    None when that is no file (an interactive session, exec of a string)."""
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename) in _OURS:
        frame = frame.f_back
    if frame is None:
        return None
    name = frame.f_code.co_filename
    if name.startswith("<") or not os.path.isfile(name):
        return None
    return Path(os.path.abspath(name)), frame.f_lineno


def _resolve(path: str | os.PathLike[str], caller: tuple[Path, int] | None) -> Path:
    path = Path(path).expanduser()
    if path.is_absolute() or caller is None:
        return path
    return caller[0].parent / path


def _shown(path: Path) -> str:
    """A path as the author would type it: relative to the working directory if under
    it, else absolute."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return str(path)
    return str(path) if rel.startswith("..") else rel
