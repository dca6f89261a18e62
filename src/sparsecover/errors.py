"""Errors and warnings that reach the user as one readable line.

Every stage validates its inputs up front and raises :class:`SparsecoverError` with a message that
names the file and the fix; the CLI prints that message alone (no traceback). Recoverable oddities
(polygons outside the raster, repaired geometries) are :class:`SparsecoverWarning`s so Python users
can filter or escalate them with the standard ``warnings`` machinery.
"""

from __future__ import annotations

import warnings


class SparsecoverError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class SparsecoverWarning(UserWarning):
    """Something the user should know about, that does not stop the stage."""


def warn(message: str) -> None:
    """Emit a :class:`SparsecoverWarning` attributed to the caller of the public function."""
    warnings.warn(message, SparsecoverWarning, stacklevel=3)
