"""Hidden staging paths beside an output, renamed into place once complete, and the lock that
keeps two runs from writing the same output.

tempfile makes them private (folders 0700, files 0600) and a rename keeps that, so a chip dataset
or model package on a shared disk would be unreadable to colleagues; these get the permissions the
user's umask gives any new file, as GDAL's and every GIS tool's outputs do.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import SparsecoverError


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; restored at once
    os.umask(mask)
    return mask


def staging_folder(out: Path) -> Path:
    """An empty hidden folder beside ``out``, to be renamed to it."""
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    work.chmod(0o777 & ~_umask())
    return work


def staging_file(out: Path, suffix: str = "") -> Path:
    """An empty hidden file beside ``out``, to be renamed to it; ``suffix`` after ``.partial`` for the
    drivers that check a file's extension (GeoPackage)."""
    handle, path = tempfile.mkstemp(prefix=f".{out.name}.", suffix=f".partial{suffix}", dir=out.parent)
    os.close(handle)
    os.chmod(path, 0o666 & ~_umask())
    return Path(path)


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse an output before any work: one that exists (unless ``overwrite``), one whose folder is
    missing, and one in a folder the machine will not let us write (a hidden file is created there
    and removed; the OSError says why, and the CLI turns it into one line)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise SparsecoverError(f"{path}: already exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise SparsecoverError(f"{path.parent}: output folder does not exist; create it first")
    staging_file(path).unlink()


def write_into_place(path: Path, data: str | bytes) -> Path:
    """``data`` as ``path`` (text as UTF-8), written to a hidden file beside it and renamed: whole or absent."""
    partial = staging_file(path)
    try:
        if isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            partial.write_text(data, encoding="utf-8")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def exclusive(out: Path) -> Iterator[None]:
    """Hold a lock on ``out`` while a run writes it (and its hidden partial files): a second run
    with the same output is refused at once instead of overwriting the first one's partials.

    The lock is an advisory ``flock`` on a hidden file beside ``out``, removed at the end; where
    ``fcntl`` is missing (Windows) runs are not locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = out.parent / f".{out.name}.lock"
    handle = open(path, "a")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SparsecoverError(f"{out}: another sparsecover run is writing it; wait for it to end "
                                   "or choose another output") from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
    finally:
        handle.close()
