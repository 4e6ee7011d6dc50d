"""`check(wasm)`: would the sandbox run this module? Asked where a payload is made.

A jobber finds out that a payload cannot run only when it tries it, and then
every jobber finds out, once per job. A task author can ask first: `check`
does what a slot does before the first job (the pre-check of _precheck,
compiling for the sandbox's own engine, the ``_start: [] -> []`` export, the
imports the sandbox provides, linking them) and says in a sentence what is
wrong, or None. It runs nothing, and it is not fenced: it is for the author's
own payloads, in the author's own process.

The answer is kept per sha256 in this process, so a payload is compiled once
however often a task builds it.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict

import wasmtime

from sandbox import _engine, _precheck

KEPT = 256  # answers remembered per process

_answers: OrderedDict[str, str | None] = OrderedDict()
_lock = threading.Lock()

_FUNCTION = re.compile(r"wasm\[\d+\]::function\[(\d+)\](?:::(\S+))?")
_CAUSE_NUMBER = re.compile(r"^\d+:\s*")
_AT_OFFSET = re.compile(r"^Invalid input WebAssembly code at offset (\d+): (.*)$")


def check(wasm: bytes) -> str | None:
    """None if the sandbox would run `wasm`; else why not, for the payload's author.

    Why not is what a jobber would report (``not a valid module: ...``,
    ``too costly to compile: ...``, ``not a WASI command: no _start export``,
    ``imports not provided by the sandbox ...``), with wasmtime's reason spelt
    out where a jobber only reports its first line.
    """
    wasm = bytes(wasm)
    sha256 = hashlib.sha256(wasm).hexdigest()
    with _lock:
        if sha256 in _answers:
            _answers.move_to_end(sha256)
            return _answers[sha256]
    answer = _answer(sha256, wasm)
    with _lock:
        _answers[sha256] = answer
        while len(_answers) > KEPT:
            _answers.popitem(last=False)
    return answer


def _answer(sha256: str, wasm: bytes) -> str | None:
    try:
        module = _engine.compile(wasm)
    except _precheck.Refused as e:
        return e.detail
    except wasmtime.WasmtimeError as e:
        return f"not a valid module: {_compile_error(str(e))}"
    prepared = _engine._check(sha256, module)
    return None if prepared.problem is None else prepared.problem[1]


def _compile_error(text: str) -> str:
    """wasmtime's "failed to compile: wasm[0]::function[3]::main / Caused by: ...
    at offset 51: type mismatch: ..." as "function #3 (main): type mismatch: ...
    (at byte 51 of the module)"."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "wasmtime refused it"
    head, causes = lines[0], []
    if "Caused by:" in lines:
        causes = [_CAUSE_NUMBER.sub("", line) for line in lines[lines.index("Caused by:") + 1 :]]
    reason = causes[-1] if causes else ""
    at = _AT_OFFSET.match(reason)
    if at:
        reason = f"{at.group(2)} (at byte {at.group(1)} of the module)"
    fn = _FUNCTION.search(head)
    if fn:
        where = f"function #{fn.group(1)}" + (f" ({fn.group(2)})" if fn.group(2) else "")
        return f"{where}: {reason}" if reason else where
    return f"{head}: {reason}" if reason else head
