"""A class map read in square blocks, for `vectorize` and its sieve: the windows, the reader that
checks the map is one, its 4-connected patches, and the frontier where read pixels meet unread ones.

Blocks rather than strips of whole rows: working memory stays one block's whatever the map's width
(benchmarks/results/vectorize_memory_2026-12-04.txt).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from rasterio.windows import Window
from scipy import ndimage

from .classes import MAX_UNNAMED_CLASSES
from .errors import SparsecoverError

#: Pixels a side of the blocks read at a time: a few tens of MB of working arrays whatever the map's size.
BLOCK = 512

Pixels = tuple[np.ndarray, np.ndarray]  # class values and where they are classes, in a block's window


def map_blocks(height: int, width: int, size: int, stored: tuple[int, int]) -> list[Window]:
    """Windows of ``size`` x ``size`` pixels, a row of them after another; a size above the map's
    stored blocks is cut to whole stored blocks (each decoded once)."""
    def side(stored_side: int) -> int:
        return size - size % stored_side if size > stored_side else size

    rows, cols = side(stored[0]), side(stored[1])
    return [Window(c, r, min(cols, width - c), min(rows, height - r))
            for r in range(0, height, rows) for c in range(0, width, cols)]

class MapReader:
    """Blocks of a class map as (values, where they are classes), checking on the way that it is
    one: whole numbers, none negative, and few distinct values unless the map names its classes."""

    def __init__(self, src, path: Path, named: bool) -> None:
        self.src, self.path, self.named = src, path, named
        self.seen: set[int] = set()

    def __call__(self, window: Window) -> Pixels:
        data = self.src.read(1, window=window)
        valid = self.src.read_masks(1, window=window) > 0
        if data.dtype.kind == "f":
            valid &= np.isfinite(data)
            if np.any(np.mod(data[valid], 1) != 0):
                raise SparsecoverError(f"{self.path}: not a class map (values that are not whole numbers); vectorize "
                                       "reads a single band of class values, as classify writes")
            data = np.where(valid, data, 0)
        valid &= data != 0
        values = np.unique(data[valid])
        if values.size and values[0] < 0:
            raise SparsecoverError(f"{self.path}: value {values[0]:g} is not a class (classes are 1 and up); if it "
                                   "marks nodata, set it as the map's nodata (gdal_edit.py -a_nodata VALUE)")
        self.seen.update(int(v) for v in values)
        if not self.named and len(self.seen) > MAX_UNNAMED_CLASSES:
            raise SparsecoverError(f"{self.path}: not a class map (over {MAX_UNNAMED_CLASSES} distinct values and no "
                                   "class names or colours: an image band?); vectorize reads a map that classify writes")
        return data.astype(np.int64, copy=False), valid

def label_patches(data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected patches of one class: (labels 1..n, 0 elsewhere; class of each label)."""
    labels = np.zeros(data.shape, np.int64)
    values: list[np.ndarray] = []
    n = 0
    for value in np.unique(data[valid]):
        patch, k = ndimage.label(valid & (data == value))
        inside = patch > 0
        labels[inside] = patch[inside] + n
        values.append(np.full(k, value, dtype=np.int64))
        n += k
    return labels, (np.concatenate(values) if values else np.zeros(0, np.int64))

def shared_edges(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distinct pairs of different patches that share pixel edges, as (3, k): low id, high id, length."""
    keep = (a > 0) & (b > 0) & (a != b)
    if not keep.any():
        return np.zeros((3, 0), np.int64)
    low, high = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    pairs, length = np.unique(np.stack([low, high]), axis=1, return_counts=True)
    return np.vstack([pairs, length])


class Frontier:
    """The read pixels that unread ones touch, as (ids, class values): the last row read in every
    column (the row above the blocks still to come in the current row of blocks, the current row's
    last row under those read) and the last block's right column."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.bottom, self.bottom_values = np.zeros(width, np.int64), np.zeros(width, np.int64)
        self.right = self.right_values = np.zeros(0, np.int64)

    def beside(self, window: Window, ids: np.ndarray, data: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """Along the block's top and left edges (where it has neighbours read before it): the
        frontier's ids and class values, and the block's own ids and values beside them."""
        c0, c1 = int(window.col_off), int(window.col_off + window.width)
        pairs = []
        if window.row_off > 0:
            pairs.append((self.bottom[c0:c1].copy(), self.bottom_values[c0:c1].copy(), ids[0], data[0]))
        if window.col_off > 0:
            pairs.append((self.right, self.right_values, ids[:, 0], data[:, 0]))
        return pairs

    def advance(self, window: Window, ids: np.ndarray, data: np.ndarray) -> None:
        """The block has been read: its last row and column become the frontier (none at the map's edge)."""
        c0, c1 = int(window.col_off), int(window.col_off + window.width)
        self.bottom[c0:c1] = 0 if window.row_off + window.height >= self.height else ids[-1]
        self.bottom_values[c0:c1] = data[-1]
        if c1 < self.width:
            self.right, self.right_values = ids[:, -1].copy(), data[:, -1].copy()
        else:
            self.right = self.right_values = np.zeros(0, np.int64)

    def ids(self) -> np.ndarray:
        return np.concatenate([self.bottom, self.right])

    def rename(self, new: Callable[[np.ndarray], np.ndarray]) -> None:
        self.bottom, self.right = new(self.bottom), new(self.right)
