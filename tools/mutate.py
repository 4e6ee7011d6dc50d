"""Mutation testing of the pure cores and the wire: do their fast unit tests bite?

    nice -n 10 .venv/bin/python tools/mutate.py [MODULE ...] [--list] [--show ID ...]
                                                [--only ID ...] [--json PATH]
                                                [--changed-since REV]

Each *mutant* is the module with one small change: an operator swapped
(`+`/`-`, `*`/`/`, `<`/`<=`, `==`/`!=`, `is`/`is not`, `in`/`not in`,
`and`/`or`, ...), a `not` or unary minus dropped, a number made one larger,
`True`/`False` swapped, or one statement inside a function deleted (a
`return x` becomes `return None`). For every mutant the module's fast unit
tests run (`-x`: up to the first failure); a mutant is *killed* when they
fail (or run past a timeout, an endless loop), and *survives* when they pass.
The score is killed / mutants. `--changed-since REV` runs only the mutants
on lines changed since REV (a statement counts if any of its lines did): the
mutants a module's last full run did not judge.

Not mutated, by choice: texts for people (strings, f-strings, docstrings,
calls on the module's `log`), type annotations, imports, and statements
outside functions (deleting a module or class constant only makes an import
fail). Numbers and operators outside functions are mutated: caps and
schemas are module and class constants.

The modules and their tests are configured in pyproject.toml
(`[tool.borednet.mutation]`). The run never touches the working tree: it
copies the project (tracked and untracked files git does not ignore) to a
temporary directory, and each mutant is compiled in memory and imported in a
forked child in place of the module, so nothing is written anywhere but the
temporary directory, which is removed at the end. Hypothesis is derandomized
and its database off, so a run repeats. One mutant runs at a time: run it
niced, by hand, like the benchmarks (not in CI). docs/testing.md has the
scores and the survivors judged equivalent.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.abc
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# --- mutations -----------------------------------------------------------------

BINOP_SWAP = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
    ast.LShift: ast.RShift,
    ast.RShift: ast.LShift,
    ast.BitOr: ast.BitAnd,
    ast.BitAnd: ast.BitOr,
    ast.BitXor: ast.BitOr,
}
CMPOP_SWAP = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
SYMBOL = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
    ast.Pow: "**",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.BitOr: "|",
    ast.BitAnd: "&",
    ast.BitXor: "^",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.And: "and",
    ast.Or: "or",
}
DELETABLE = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Raise, ast.Delete)


@dataclass
class Mutant:
    id: int
    line: int
    col: int
    what: str
    end_line: int = 0  # the last line of the statement or expression mutated
    outcome: str = ""  # killed, survived, timeout
    seconds: float = 0.0
    source_line: str = ""


def _short(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_log_call(node: ast.AST) -> bool:
    """`log.info(...)` and friends: texts for people."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "log"
    )


class Mutator(ast.NodeTransformer):
    """Walks a module in a fixed order, numbering every possible mutation; applies the
    one numbered `target` (-1: none, only list them)."""

    def __init__(self, target: int = -1) -> None:
        self.target = target
        self.sites: list[Mutant] = []
        self.applied: Mutant | None = None
        self._in_function = 0

    def _site(self, node: ast.AST, what: str) -> bool:
        """Number one mutation at `node`; True if it is the one to apply."""
        line = getattr(node, "lineno", 0)
        m = Mutant(
            len(self.sites),
            line,
            getattr(node, "col_offset", 0),
            what,
            getattr(node, "end_lineno", None) or line,
        )
        self.sites.append(m)
        if m.id == self.target:
            self.applied = m
            return True
        return False

    # --- what is never mutated ---------------------------------------------------

    def visit_JoinedStr(self, node: ast.JoinedStr) -> ast.AST:
        return node

    def visit_Import(self, node: ast.AST) -> ast.AST:
        return node

    visit_ImportFrom = visit_Import

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.AST:
        # annotations (args and return) are skipped; defaults and the body are not
        args = node.args
        args.defaults = [self.visit(d) for d in args.defaults]
        args.kw_defaults = [None if d is None else self.visit(d) for d in args.kw_defaults]
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        self._in_function += 1
        node.body = self._visit_body(node.body)
        self._in_function -= 1
        return node

    visit_FunctionDef = _visit_function
    visit_AsyncFunctionDef = _visit_function

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        self._in_function += 1
        node.body = self.visit(node.body)
        self._in_function -= 1
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        node.body = self._visit_body(node.body)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        if node.value is not None:
            node.value = self.visit(node.value)
        return node

    def visit_Module(self, node: ast.Module) -> ast.AST:
        node.body = self._visit_body(node.body)
        return node

    # --- statements ------------------------------------------------------------------

    def _visit_body(self, body: list[ast.stmt]) -> list[ast.stmt]:
        out: list[ast.stmt] = []
        for i, stmt in enumerate(body):
            docstring = (
                i == 0
                and isinstance(stmt, ast.Expr)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            )
            if docstring or (isinstance(stmt, ast.Expr) and _is_log_call(stmt.value)):
                out.append(stmt)
                continue
            if (
                self._in_function
                and isinstance(stmt, DELETABLE)
                and self._site(stmt, f"delete `{_short(stmt)}`")
            ):
                out.append(ast.copy_location(ast.Pass(), stmt))
                continue
            if self._in_function and isinstance(stmt, ast.Return) and stmt.value is not None:
                is_none = isinstance(stmt.value, ast.Constant) and stmt.value.value is None
                if not is_none and self._site(stmt, f"`{_short(stmt)}` -> `return None`"):
                    out.append(ast.copy_location(ast.Return(ast.Constant(None)), stmt))
                    continue
            if (
                self._in_function
                and isinstance(stmt, ast.Continue | ast.Break)
                and self._site(stmt, f"delete `{_short(stmt)}`")
            ):
                out.append(ast.copy_location(ast.Pass(), stmt))
                continue
            out.append(self.visit(stmt))
        return out

    def generic_visit(self, node: ast.AST) -> ast.AST:
        # bodies of compound statements go through _visit_body (statement deletion)
        for name in ("body", "orelse", "finalbody"):
            value = getattr(node, name, None)
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, name, self._visit_body(value))
        if isinstance(node, ast.Try):
            for h in node.handlers:
                h.body = self._visit_body(h.body)
        for name, value in ast.iter_fields(node):
            if (
                name in ("body", "orelse", "finalbody", "handlers")
                and isinstance(value, list)
                and value
                and isinstance(value[0], ast.stmt | ast.ExceptHandler)
            ):
                continue
            if isinstance(value, list):
                setattr(
                    node,
                    name,
                    [self.visit(x) if isinstance(x, ast.AST) else x for x in value],
                )
            elif isinstance(value, ast.AST):
                setattr(node, name, self.visit(value))
        return node

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        if _is_log_call(node.value):
            return node
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if _is_log_call(node):
            return node
        return self.generic_visit(node)

    # --- expressions -------------------------------------------------------------------

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        new = BINOP_SWAP.get(type(node.op))
        if new is not None:
            old = SYMBOL[type(node.op)]
            if self._site(node, f"`{old}` -> `{SYMBOL[new]}` in `{_short(node)}`"):
                node.op = new()
                return node
        return self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST:
        new = BINOP_SWAP.get(type(node.op))
        if new is not None:
            old = SYMBOL[type(node.op)]
            if self._site(node, f"`{old}=` -> `{SYMBOL[new]}=` in `{_short(node)}`"):
                node.op = new()
                return node
        return self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> ast.AST:
        for i, op in enumerate(node.ops):
            new = CMPOP_SWAP.get(type(op))
            if new is not None and self._site(
                node, f"`{SYMBOL[type(op)]}` -> `{SYMBOL[new]}` in `{_short(node)}`"
            ):
                node.ops[i] = new()
                return node
        return self.generic_visit(node)

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.AST:
        old, new = (ast.And, ast.Or) if isinstance(node.op, ast.And) else (ast.Or, ast.And)
        if self._site(node, f"`{SYMBOL[old]}` -> `{SYMBOL[new]}` in `{_short(node)}`"):
            node.op = new()
            return node
        return self.generic_visit(node)

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        if isinstance(node.op, ast.Not | ast.USub) and self._site(
            node, f"drop `{'not' if isinstance(node.op, ast.Not) else '-'}` in `{_short(node)}`"
        ):
            return node.operand
        return self.generic_visit(node)

    def visit_IfExp(self, node: ast.IfExp) -> ast.AST:
        return self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        v = node.value
        if isinstance(v, bool):
            if self._site(node, f"`{v}` -> `{not v}`"):
                return ast.copy_location(ast.Constant(not v), node)
        elif isinstance(v, int | float):
            new = v + 1
            if self._site(node, f"`{v!r}` -> `{new!r}`"):
                return ast.copy_location(ast.Constant(new), node)
        return node


def sites(source: str) -> list[Mutant]:
    m = Mutator()
    m.visit(ast.parse(source))
    lines = source.splitlines()
    for s in m.sites:
        s.source_line = lines[s.line - 1].strip() if s.line else ""
    return m.sites


def mutated(source: str, target: int) -> tuple[str, Mutant]:
    m = Mutator(target)
    tree = m.visit(ast.parse(source))
    assert m.applied is not None, target
    ast.fix_missing_locations(tree)
    return ast.unparse(tree), m.applied


# --- running one mutant ---------------------------------------------------------------


class _Replace(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `name` from `source` (in memory) instead of its file."""

    def __init__(self, name: str, path: Path, source: str) -> None:
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=str(self.path))

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        module.__file__ = str(self.path)
        code = compile(self.source, str(self.path), "exec")
        exec(code, module.__dict__)


class _Derandomize:
    """A pytest plugin: hypothesis derandomized, without its database, so runs repeat."""

    def pytest_configure(self, config) -> None:
        from hypothesis import settings

        settings.register_profile("mutation", derandomize=True, database=None, print_blob=False)
        settings.load_profile("mutation")


class _Order:
    """A pytest plugin: the tests that killed earlier mutants run first (a mutant is
    usually killed by the test that killed its neighbour), and the first failing
    test is written to `fd` for the parent."""

    def __init__(self, first: list[str], fd: int) -> None:
        self.rank = {nodeid: i for i, nodeid in enumerate(first)}
        self.fd = fd
        self.told = False

    def pytest_collection_modifyitems(self, session, config, items) -> None:
        items.sort(key=lambda item: self.rank.get(item.nodeid, len(self.rank)))

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed and not self.told:
            self.told = True
            os.write(self.fd, report.nodeid.encode()[:4000])


def preload() -> None:
    """Import what every child needs but no mutant changes, once, before forking."""
    import hypothesis  # noqa: F401
    import msgpack  # noqa: F401
    import pytest  # noqa: F401
    import zmq  # noqa: F401


def run_tests(
    copy_root: Path,
    module: str,
    source: str | None,
    tests: list[str],
    timeout: float,
    first: list[str] | None = None,
) -> tuple[str, float, str]:
    """Fork; in the child import `module` from `source` and run `tests` (those in
    `first` first). Returns (outcome, seconds, the first failing test): outcome
    "passed", "failed" or "timeout"."""
    start = time.monotonic()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read_fd)
            os.setpgid(0, 0)  # tests that start processes: killed with us on a timeout
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            os.chdir(copy_root)
            sys.path.insert(0, str(copy_root))
            if source is not None:
                name = module.removesuffix(".py").replace("/", ".")
                sys.meta_path.insert(0, _Replace(name, copy_root / module, source))
            import pytest

            rc = pytest.main(
                [
                    *tests,
                    "-x",
                    "-q",
                    "-n",  # in this process, where the mutant is (pyproject.toml says -n auto)
                    "0",
                    "-p",
                    "no:cacheprovider",
                    # hypothesis is imported before pytest starts (below, to save time)
                    "-W",
                    "ignore::pytest.PytestAssertRewriteWarning",
                    "--rootdir",
                    str(copy_root),
                    "-c",
                    str(copy_root / "pyproject.toml"),
                ],
                plugins=[_Derandomize(), _Order(first or [], write_fd)],
            )
            os._exit(int(rc))
        except BaseException:
            os._exit(99)
    os.close(write_fd)
    deadline = start + timeout
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                _kill(pid)
                os.close(read_fd)
                return "timeout", time.monotonic() - start, ""
            time.sleep(0.02)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): take the child along
        _kill(pid)
        raise
    with os.fdopen(read_fd, "rb") as f:
        failing = f.read().decode(errors="replace")
    rc = os.waitstatus_to_exitcode(status)
    return ("passed" if rc == 0 else "failed"), time.monotonic() - start, failing


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def snapshot(rev: str | None, overlay: list[str]) -> Path:
    """A copy of the project: the commit `rev` (git archive), or without one the working
    tree as it is (tracked and untracked files git does not ignore); then the working
    tree's `overlay` files laid over it."""
    dest = Path(tempfile.mkdtemp(prefix="borednet-mutate-"))
    if rev is not None:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", rev], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        names = [os.fsencode(n) for n in overlay]
    else:
        names = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout.split(b"\0")
    for raw in names:
        if not raw:
            continue
        rel = Path(os.fsdecode(raw))
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def changed_lines(module: str, since: str, rev: str | None) -> set[int]:
    """The lines of `module` (at `rev`, default the working tree) added or changed since
    the commit `since`, from git's unified diff with no context."""
    diff = subprocess.run(
        ["git", "diff", "-U0", since, *([rev] if rev else []), "--", module],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines: set[int] = set()
    for row in diff.splitlines():
        if row.startswith("@@"):
            new = row.split()[2]  # +START[,COUNT]
            start, _, count = new[1:].partition(",")
            lines.update(range(int(start), int(start) + int(count or 1)))
    return lines


def config() -> dict[str, list[str]]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        table = tomllib.load(f)["tool"]["borednet"]["mutation"]
    return dict(table["targets"])


def main() -> int:
    targets = config()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help=f"default: all of {', '.join(targets)}")
    ap.add_argument("--list", action="store_true", help="list the mutants; run nothing")
    ap.add_argument("--show", type=int, nargs="+", metavar="ID", help="print these mutants")
    ap.add_argument("--only", type=int, nargs="+", metavar="ID", help="run only these mutants")
    ap.add_argument("--json", type=Path, help="write every mutant and its outcome here")
    ap.add_argument("--rev", help="mutate this commit (default: the working tree as it is)")
    ap.add_argument(
        "--changed-since",
        metavar="REV",
        help="only the mutants on lines changed since this commit",
    )
    ap.add_argument(
        "--overlay",
        nargs="+",
        default=[],
        metavar="PATH",
        help="with --rev: these files from the working tree laid over the commit",
    )
    args = ap.parse_args()
    modules = args.modules or list(targets)
    for m in modules:
        if m not in targets:
            ap.error(f"{m} is not configured in [tool.borednet.mutation.targets]")

    if args.list or args.show:
        for module in modules:
            source = (ROOT / module).read_text()
            listed = sites(source)
            if args.changed_since:
                changed = changed_lines(module, args.changed_since, None)
                listed = [s for s in listed if changed & set(range(s.line, s.end_line + 1))]
            for s in listed:
                if args.show is None or s.id in args.show:
                    print(f"{module}#{s.id} line {s.line}: {s.what}")
                if args.show and s.id in args.show:
                    new, _ = mutated(source, s.id)
                    old_lines = ast.unparse(ast.parse(source)).splitlines()
                    new_lines = new.splitlines()
                    diff = [(a, b) for a, b in zip(old_lines, new_lines, strict=False) if a != b]
                    for a, b in diff[:3]:
                        print(f"    - {a.strip()}\n    + {b.strip()}")
        return 0

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    copy_root = snapshot(args.rev, args.overlay)
    preload()
    report: dict[str, dict] = {}
    try:
        for module in modules:
            tests = [t for t in targets[module] if (copy_root / t).exists()]
            source = (copy_root / module).read_text()
            # the module as the mutants are written (unparsed, comments gone) must pass
            plain = ast.unparse(ast.parse(source))
            outcome, base_s, _ = run_tests(copy_root, module, plain, tests, timeout=600.0)
            if outcome != "passed":
                print(f"{module}: its tests fail without any mutation ({outcome}); stopping")
                return 2
            timeout = 3 * base_s + 10.0
            all_sites = sites(source)
            chosen = [s for s in all_sites if args.only is None or s.id in args.only]
            if args.changed_since:
                changed = changed_lines(module, args.changed_since, args.rev)
                chosen = [s for s in chosen if changed & set(range(s.line, s.end_line + 1))]
            print(
                f"{module}: {len(chosen)} mutants, tests {' '.join(tests)} "
                f"({base_s:.1f} s unmutated; timeout {timeout:.0f} s)",
                flush=True,
            )
            killers: list[str] = []  # most recent first
            for s in chosen:
                new, _ = mutated(source, s.id)
                outcome, seconds, failing = run_tests(
                    copy_root, module, new, tests, timeout, killers
                )
                if failing:
                    killers = [failing, *[k for k in killers if k != failing]][:50]
                s.outcome = {"passed": "survived", "failed": "killed"}.get(outcome, outcome)
                s.seconds = round(seconds, 2)
                if s.outcome == "survived":
                    print(f"  survived {module}#{s.id} line {s.line}: {s.what}", flush=True)
            killed = sum(s.outcome != "survived" for s in chosen)
            report[module] = {
                "mutants": len(chosen),
                "killed": killed,
                "survived": [asdict(s) for s in chosen if s.outcome == "survived"],
                "all": [asdict(s) for s in chosen],
            }
            pct = 100.0 * killed / len(chosen) if chosen else 100.0
            print(f"{module}: {killed} of {len(chosen)} killed ({pct:.1f} %)", flush=True)
    finally:
        shutil.rmtree(copy_root, ignore_errors=True)
    print()
    for module, r in report.items():
        pct = 100.0 * r["killed"] / r["mutants"] if r["mutants"] else 100.0
        print(f"{module:22} {r['killed']:4} of {r['mutants']:4} killed  {pct:5.1f} %")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
