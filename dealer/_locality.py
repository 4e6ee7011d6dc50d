"""Input files in the core: which wanting jobs a jobber may be sent (their files fit its
`input_mb`), which it is offered first (those whose files it already holds: locality),
and the files of the unsettled jobs, by hash, for `fetch`. A part of dealer._core.Core
(the `Locality` mixin), over the tables Core.__init__ makes.

Wanting jobs are grouped by their *file set* (`FilesKey`): the hashes of the job's own
files (those every job reads, the task's and the payload's, are left out: they tell no
job from another) and the total size of everything it reads, in bytes. One ask visits,
until it has what it wants:

1. the groups whose files the jobber holds all (`host.files`), found through an index
   from each file to the groups that read it, so an ask costs the files it holds (at
   most 4096) and their groups, not a pass over every wanting job;
2. the group of jobs that read no file of their own (only the task's, if any);
3. only for a jobber that takes files at all: the other wanting jobs, oldest first,
   past those of the groups already visited and those too big for it (the pass every
   ask made before files existed).

A jobber that takes no files (`input_mb` nil: every jobber older than them) is offered
group 2 alone, and none of it if every job reads the task's files. A job with files
fits a jobber whose `input_mb` MiB hold their total, and no other: not even a job whose
files are all empty goes to a jobber that takes none (the wire promises that).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping

from dealer._replicas import FilesKey, _Job
from tasks import InputFile

NO_FILES: FilesKey = (frozenset(), 0)


class Locality:
    """Core's wanting jobs grouped by file set, and the files it serves by hash."""

    _jobs: dict[int, _Job]
    _wanting: dict[int, None]
    # file set -> its wanting jobs, oldest first (a group is dropped when it empties)
    _groups: dict[FilesKey, dict[int, None]]
    _readers: dict[str, dict[FilesKey, None]]  # file hash -> the groups reading it
    _shared: Mapping[str, InputFile]  # every job's files, by guest path
    _shared_by_hash: dict[str, InputFile]
    _held_files: dict[str, list]  # hash -> [InputFile, unsettled jobs reading it]
    _plain: FilesKey  # the file set of a job with no files of its own

    # --- queries -----------------------------------------------------------

    def input_file(self, sha256: str) -> InputFile | None:
        """The input file of that hash that a job of this batch reads, if an unsettled
        job does (or every job does): what `fetch` may serve."""
        f = self._shared_by_hash.get(sha256)
        if f is not None:
            return f
        held = self._held_files.get(sha256)
        return None if held is None else held[0]

    def files_need(self, input_mb: int | None) -> int | None:
        """If jobs want replicas and none fits a jobber taking `input_mb` MiB of input
        files (None: none), the least input any of them needs, in bytes, else None: why
        such a jobber gets nothing. Visits every group: for a jobber sent nothing."""
        if not self._groups:
            return None
        allowance = None if input_mb is None else input_mb << 20
        if any(self._fits(key, allowance) for key in self._groups):
            return None
        return min(key[1] for key in self._groups)

    # --- internals ---------------------------------------------------------

    def _files_key(self, job_files: Mapping[str, InputFile], own: Collection[InputFile]):
        """A job's file set: the hashes of its own files but those every job reads, and
        the total of all it reads (by guest path, as JobSpec.input_bytes counts)."""
        if not job_files:
            return NO_FILES
        mine = frozenset(f.sha256 for f in own).difference(self._shared_by_hash)
        return (mine, sum(f.size for f in job_files.values()))

    def _fits(self, key: FilesKey, allowance: int | None) -> bool:
        """Whether jobs of file set `key` may go to a jobber taking `allowance` bytes of
        input (None: it takes no files). A job that reads no file fits every jobber."""
        if not key[0] and not self._shared:
            return True
        return allowance is not None and key[1] <= allowance

    def _want(self, j: _Job) -> None:
        if j.id in self._wanting:
            return
        self._wanting[j.id] = None
        group = self._groups.get(j.group)
        if group is None:
            group = self._groups[j.group] = {}
            for sha in j.group[0]:
                self._readers.setdefault(sha, {})[j.group] = None
        group[j.id] = None

    def _unwant(self, j: _Job) -> None:
        if self._wanting.pop(j.id, False) is False:
            return
        group = self._groups[j.group]
        del group[j.id]
        if not group:
            del self._groups[j.group]
            for sha in j.group[0]:
                readers = self._readers[sha]
                del readers[j.group]
                if not readers:
                    del self._readers[sha]

    def _candidates(self, allowance: int | None, held: Collection[str]) -> Iterator[int]:
        """Wanting jobs a jobber taking `allowance` bytes of input and holding the files
        `held` may be sent, those it holds the files of first (see the module's doc).
        Lazy, and each group read as it is reached: the caller sends as it goes."""
        visited: set[FilesKey] = set()
        if allowance is not None and held:
            have = held if isinstance(held, set | frozenset) else set(held)
            for sha in held:
                for key in list(self._readers.get(sha, ())):
                    if key in visited or key[1] > allowance or not key[0] <= have:
                        continue
                    visited.add(key)
                    yield from list(self._groups.get(key, ()))
        visited.add(self._plain)
        if self._fits(self._plain, allowance):
            yield from list(self._groups.get(self._plain, ()))
        if allowance is None or all(key in visited for key in self._groups):
            return  # (a task without files: one group, already read)
        for job_id in list(self._wanting):
            j = self._jobs.get(job_id)
            if j is not None and j.group not in visited and j.group[1] <= allowance:
                yield job_id

    def _hold_files(self, j: _Job) -> None:
        """An unsettled job reads its files: serve them until it settles."""
        for f in j.files.values():
            if f.sha256 not in self._shared_by_hash:
                held = self._held_files.get(f.sha256)
                if held is None:
                    self._held_files[f.sha256] = [f, 1]
                else:
                    held[1] += 1

    def _drop_files(self, j: _Job) -> None:
        for f in j.files.values():
            held = self._held_files.get(f.sha256)
            if held is not None:
                held[1] -= 1
                if held[1] <= 0:
                    del self._held_files[f.sha256]
