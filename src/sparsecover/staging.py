"""Hidden staging paths beside an output, renamed into place once complete.

tempfile makes them private (folders 0700, files 0600) and a rename keeps that, so a chip dataset
or model package on a shared disk would be unreadable to colleagues; these get the permissions the
user's umask gives any new file, as GDAL's and every GIS tool's outputs do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it; restored at once
    os.umask(mask)
    return mask


def staging_folder(out: Path) -> Path:
    """An empty hidden folder beside ``out``, to be renamed to it."""
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    work.chmod(0o777 & ~_umask())
    return work


def staging_file(out: Path) -> Path:
    """An empty hidden file beside ``out``, to be renamed to it."""
    handle, path = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(handle)
    os.chmod(path, 0o666 & ~_umask())
    return Path(path)
