"""What `python -m dealer status` and a finished batch print of their jobbers."""

from __future__ import annotations

import io

from dealer._print import print_jobbers


def test_credit_is_printed_in_readable_units():
    row = {"name": "lab-pc", "key": "ab" * 32, "machine": "10.0.0.2", "valid": 32}
    row |= {"invalid": 0, "errors": 1, "credit": 3250233955}
    out = io.StringIO()
    print_jobbers([row, {**row, "name": "idle", "credit": 0, "denied": True}], file=out)
    head, first, second = out.getvalue().splitlines()
    assert head.split()[-2:] == ["credit", "(fuel)"]
    assert first.split() == ["lab-pc", "abababababab", "10.0.0.2", "32", "0", "1", "3.3", "G"]
    assert second.split()[:2] == ["idle", "(denied)"] and second.split()[-1] == "0"
