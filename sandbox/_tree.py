"""The input files of one job: their tree, checked and laid out, and their bytes.

A job's files are a mapping guest absolute path -> source, a source being
``bytes`` or a host file's path. ``Tree`` checks the guest paths (where the
job is made, before anything runs) and lays out the tree, with no I/O;
``Volume`` holds the files' bytes while the job runs: host files opened
read-only and mapped (``mmap``, PROT_READ, MAP_SHARED), each once however many
guest paths name it, so that a 200 MB file is never copied into Python memory
and its pages are the page cache's, shared by every worker that reads it;
``bytes`` used as they are. The guest's view of
them is _files'.

Node i of a tree is the i-th of all its paths, directories included, in
sorted byte order: node 0 is the root ``/``, and the guest sees inode i + 1.
So the same files give the same tree, inodes and listings on every machine,
wherever the host copies live.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import stat
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from sandbox._guest import ENAMETOOLONG, ENOENT, ENOTDIR, Errno
from sandbox._memory import _MAP_FAILED, _libc
from sandbox._memory import view as _view

MAX_FILES = 4096  # files in one job's tree
MAX_DIRS = 4096  # directories their paths imply, the root included (deep paths imply many)
MAX_NAME_BYTES = 255  # one path component, in UTF-8 (NAME_MAX)
MAX_PATH_BYTES = 4096  # a whole path (PATH_MAX)

Source = bytes | str | os.PathLike
_EMPTY = memoryview(b"")
NO_FILES: Mapping[str, Source] = MappingProxyType({})


def guest_path(path: str) -> bytes:
    """`path` as UTF-8, once it is a valid guest file path; ValueError says why not."""
    if not isinstance(path, str):
        raise ValueError(f"input file path {path!r}: not a str")
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"input file path {path!r}: not valid UTF-8") from None
    if not raw.startswith(b"/"):
        raise ValueError(f"input file path {path!r}: not absolute")
    if raw == b"/":
        raise ValueError("input file path '/': the root is a directory")
    if len(raw) > MAX_PATH_BYTES:
        raise ValueError(f"input file path {path[:40]!r}...: over {MAX_PATH_BYTES} bytes")
    for part in raw[1:].split(b"/"):
        if not part:
            raise ValueError(f"input file path {path!r}: an empty component (// or a final /)")
        if part in (b".", b".."):
            raise ValueError(f"input file path {path!r}: a {part.decode()!r} component")
        if len(part) > MAX_NAME_BYTES:
            raise ValueError(f"input file path {path!r}: a component over {MAX_NAME_BYTES} bytes")
        if b"\0" in part:
            raise ValueError(f"input file path {path!r}: a NUL character")
    return raw


class Tree:
    """The directories and files of one job's input, from guest path -> source. No I/O:
    built where the job is made, so that a bad path fails before anything runs.

    Node i (inode i + 1) is the i-th of all paths, directories included, in sorted
    byte order; node 0 is the root.
    """

    __slots__ = ("paths", "is_dir", "parent", "entries", "children", "sources")

    def __init__(self, files: Mapping[str, Source]) -> None:
        if len(files) > MAX_FILES:
            raise ValueError(f"{len(files)} input files: more than {MAX_FILES}")
        sources: dict[bytes, Source] = {}
        for path, source in files.items():
            raw = guest_path(path)
            if not isinstance(source, bytes | str | os.PathLike):
                raise ValueError(f"input file {path!r}: a source is bytes or a host path")
            sources[raw] = source
        dirs = {b"/"}
        for raw in sources:
            parent = raw.rpartition(b"/")[0] or b"/"
            while parent not in dirs:
                dirs.add(parent)
                parent = parent.rpartition(b"/")[0] or b"/"
            if len(dirs) > MAX_DIRS:
                raise ValueError(f"input files in more than {MAX_DIRS} directories")
        clash = dirs & sources.keys()
        if clash:
            raise ValueError(
                f"input file path {min(clash).decode()!r}: also a directory of other files"
            )
        self.paths = sorted(dirs | sources.keys())
        index = {raw: i for i, raw in enumerate(self.paths)}
        self.is_dir = [raw in dirs for raw in self.paths]
        self.sources = [sources.get(raw) for raw in self.paths]
        self.parent = [index[raw.rpartition(b"/")[0] or b"/"] for raw in self.paths]
        self.children: list[dict[bytes, int]] = [{} for _ in self.paths]
        for i, raw in enumerate(self.paths[1:], 1):
            self.children[self.parent[i]][raw.rpartition(b"/")[2]] = i
        # a directory's listing, as fd_readdir gives it: ".", "..", then its entries
        self.entries: list[list[tuple[bytes, int]]] = [
            [(b".", i), (b"..", self.parent[i]), *sorted(self.children[i].items())]
            if self.is_dir[i]
            else []
            for i in range(len(self.paths))
        ]

    def __bool__(self) -> bool:
        return len(self.paths) > 1

    def files(self) -> Iterator[str]:
        """Every file's guest path, walking the directories from the root in the order
        they list."""
        stack = [iter(self.entries[0][2:])]
        while stack:
            for _name, node in stack[-1]:
                if self.is_dir[node]:
                    stack.append(iter(self.entries[node][2:]))
                    break
                yield self.paths[node].decode()
            else:
                stack.pop()

    def resolve(self, at: int, raw: bytes) -> int:
        """The node `raw` names from directory node `at` (from the root if absolute).
        ``..`` of the root is the root. Errno ENOENT, ENOTDIR or ENAMETOOLONG."""
        if not raw:
            raise Errno(ENOENT)
        node = 0 if raw.startswith(b"/") else at
        for part in raw.split(b"/"):
            if not self.is_dir[node]:
                raise Errno(ENOTDIR)
            if part in (b"", b"."):
                continue
            if len(part) > MAX_NAME_BYTES:
                raise Errno(ENAMETOOLONG)
            if part == b"..":
                node = self.parent[node]
                continue
            child = self.children[node].get(part)
            if child is None:
                raise Errno(ENOENT)
            node = child
        return node


class Volume:
    """A Tree with its files' bytes at hand, for the job that reads them: `view[node]`,
    a memoryview of each file's bytes (empty for a directory). Host files are mapped
    read-only (and the descriptor closed at once), each host file once however many
    guest paths it has (known by device and inode); `close` unmaps them.

    OSError if a host file cannot be opened or mapped, or is not a regular file.
    The host files must not shrink while the job runs (a read past the new end
    would fault the process).
    """

    __slots__ = ("tree", "view", "size", "mapped", "_maps", "_by_inode")

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self.view = [_EMPTY] * len(tree.paths)
        self.size = [0] * len(tree.paths)
        self.mapped = 0  # bytes of address space the mappings take (whole pages)
        self._maps: list[tuple[int, int]] = []
        self._by_inode: dict[tuple[int, int], memoryview] = {}
        try:
            for i, source in enumerate(tree.sources):
                if isinstance(source, bytes):
                    self.view[i] = memoryview(source)
                elif source is not None:
                    self.view[i] = self._map(os.fspath(source))
                self.size[i] = len(self.view[i])
        except BaseException:
            self.close()
            raise

    def _map(self, path: str) -> memoryview:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"{path}: not a regular file")
            known = self._by_inode.get((info.st_dev, info.st_ino))
            if known is not None:
                return known
            if not info.st_size:
                return _EMPTY
            address = _libc.mmap(None, info.st_size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if address is None or address == _MAP_FAILED:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), path)
        finally:
            os.close(fd)
        self._maps.append((address, info.st_size))
        self.mapped += -(-info.st_size // mmap.PAGESIZE) * mmap.PAGESIZE
        # read-only, as the mapping is: a write through it would fault the process
        view = _view(address, info.st_size).toreadonly()
        self._by_inode[info.st_dev, info.st_ino] = view
        return view

    def close(self) -> None:
        self.view = []
        self._by_inode = {}
        for address, size in self._maps:
            _libc.munmap(address, size)
        self._maps = []

    def __enter__(self) -> Volume:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
