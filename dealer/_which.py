"""Which journal `python -m dealer results|jobs` reads: a path (several, as a shell glob
gives them: the newest), a task file and its arguments (the journal that command keeps,
as the batch names it), or nothing (the newest journal in `.borednet/` here).
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

from dealer._batch import HOME, _task_parser, journal_of
from tasks import Task


class NoJournal(ValueError):
    """No journal answers the words given; the text says what to give instead."""


def journal_for(words: list[str], home: Path = HOME) -> tuple[Path, str]:
    """The journal `words` name, and a line to tell the person ("" if none is needed)."""
    if not words:
        found = sorted(home.glob("*.sqlite"), key=_mtime)
        if not found:
            raise NoJournal(
                f"no journal in {home}/ here: give its path (a batch prints it when it "
                "starts), or the task file and its arguments"
            )
        note = f"reading the newest of {len(found)} journals in {home}/: " if len(found) > 1 else ""
        return found[-1], (note + str(found[-1])) if note else ""
    if words[0].endswith(".py"):
        cls = task_class(Path(words[0]))
        args = _task_parser(cls).parse_args(words[1:])
        path = journal_of(cls, args)
        if not path.exists():
            raise NoJournal(f"{words[0]} with these arguments has no journal here ({path})")
        return path, ""
    paths = [Path(w) for w in words]
    if len(paths) == 1:  # read as it is: the history says if it is no journal
        return paths[0], ""
    missing = [str(x) for x in paths if not x.is_file()]
    if missing:
        raise NoJournal(f"no such journal: {', '.join(missing)}")
    newest = max(paths, key=_mtime)
    return newest, f"{len(paths)} journals given: reading the newest, {newest}"


def task_class(path: Path) -> type[Task]:
    """The Task subclass a task file defines (the one it serves)."""
    if not path.is_file():
        raise NoJournal(f"no such task file: {path}")
    spec = importlib.util.spec_from_file_location(f"_borednet_task_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise NoJournal(f"{path} cannot be loaded: {type(e).__name__}: {e}") from None
    own = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if issubclass(c, Task) and c is not Task and c.__module__ == module.__name__
    ]
    own = [c for c in own if not any(o is not c and issubclass(o, c) for o in own)]  # leaves
    if len(own) != 1:
        names = ", ".join(c.__name__ for c in own) or "none"
        raise NoJournal(f"{path} defines {len(own)} tasks ({names}): give the journal's path")
    return own[0]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
