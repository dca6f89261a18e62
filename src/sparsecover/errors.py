"""Errors and warnings that reach the user as one readable line.

Every stage validates its inputs up front and raises :class:`SparsecoverError` with a message that
names the file and the fix; the CLI prints that message alone (no traceback). Recoverable oddities
(polygons outside the raster, repaired geometries) are :class:`SparsecoverWarning`s so Python users
can filter or escalate them with the standard ``warnings`` machinery.
"""

from __future__ import annotations

import errno
import warnings
from pathlib import Path


class SparsecoverError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class SparsecoverWarning(UserWarning):
    """Something the user should know about, that does not stop the stage."""


def warn(message: str) -> None:
    """Emit a :class:`SparsecoverWarning` attributed to the caller of the public function."""
    warnings.warn(message, SparsecoverWarning, stacklevel=3)


#: What the machine, not sparsecover, refused (errno -> what to do): one line instead of a traceback.
WRITE_REFUSALS = {
    errno.EACCES: "choose an output location you may write to",
    errno.EPERM: "choose an output location you may write to",
    errno.EROFS: "the file system is read-only; choose another output location",
    errno.ENOSPC: "the disk is full; free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up; free some space or write elsewhere",
    errno.EFBIG: "a file-size limit (ulimit -f) stopped the write; raise it or write elsewhere",
}


def refused_write(exc: OSError) -> str | None:
    """One line for what the machine refused to write (None for any other OSError: a bug's traceback)."""
    if exc.errno not in WRITE_REFUSALS:
        return None
    reason = f"({exc.strerror.lower()}); {WRITE_REFUSALS[exc.errno]}"
    if exc.filename is None:  # a write to a file already open: the output the command was given
        return f"writing the output failed {reason}"
    # the folder, not the hidden partial or lock file that happened to be written first
    return f"{Path(exc.filename).parent}: cannot write there {reason}"
