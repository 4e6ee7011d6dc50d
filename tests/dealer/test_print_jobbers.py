"""The jobbers' table a batch prints as it ends (and `python -m dealer status`)."""

from __future__ import annotations

import io

from dealer._print import print_jobbers
from tests.helpers import summary_rows


def row(name: str, key: str, machine: str, valid: int) -> dict:
    return {"name": name, "key": key, "machine": machine, "valid": valid}


def test_a_jobber_known_from_the_journal_alone_keeps_every_column():
    """A dealer restarted on a journal knows a jobber that did not come back by its key
    alone: its name and machine print as "-", so the row has every column."""
    out = io.StringIO()
    rows = [row("j1", "b5f648671c8b" * 5, "127.0.0.2", 9), row("-", "0cba053ceb08" * 5, "", 2)]
    for r in rows:
        r.update(invalid=0, errors=0, credit=1300013752)
    print_jobbers(rows, file=out)
    got = summary_rows(out.getvalue())
    assert [(name, valid) for name, _, valid, *_ in got] == [("j1", 9), ("-", 2)]
    assert out.getvalue().splitlines()[2].split()[:3] == ["-", "0cba053ceb08", "-"]
