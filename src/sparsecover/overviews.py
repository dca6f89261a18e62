"""Overviews of classify's outputs, computed from each block while it is written.

GDAL's COG driver computes overviews after the fact, reading the whole output again: most of the
COG conversion's time (benchmarks/results/classify_breakdown_cpu_2026-11-26.txt). Here the writer
reduces each block it writes by 2 x 2 steps into one partial file per level, levels 2-16 at once
(block bounds are multiples of 16 px, so each level's window is exact), the levels above from
level 16 at the end; the COG driver then copies them, listed as the partial's overviews by a VRT
(:func:`with_overviews`). Class maps get the 2 x 2 mode, probabilities the mean, nodata ignored by
both, as GDAL's MODE and AVERAGE do (ties may go another way than GDAL's: 97-99 % of the overview
pixels of a real class map agree; each level is reduced from the one below, not from the full
resolution).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

#: Block bounds of classify are multiples of this (tiles start on 32 px, cores meet halfway between
#: them): the overview levels up to it are computed block by block.
ALIGNED = 16


def levels(width: int, height: int, blocksize: int = 512) -> list[int]:
    """The COG driver's overview factors: 2, 4, ... until the smallest level fits in one block."""
    factors, factor = [], 1
    while max(width, height) / factor > blocksize:
        factor *= 2
        factors.append(factor)
    return factors


def _quads(values: np.ndarray, nodata: float) -> tuple[np.ndarray, ...]:
    """The four pixels of every 2 x 2 cell, (..., h, w) padded with nodata to even sizes."""
    h, w = values.shape[-2:]
    if h % 2 or w % 2:
        values = np.pad(values, [(0, 0)] * (values.ndim - 2) + [(0, h % 2), (0, w % 2)], constant_values=nodata)
    return values[..., 0::2, 0::2], values[..., 0::2, 1::2], values[..., 1::2, 0::2], values[..., 1::2, 1::2]


def mode_2x2(classes: np.ndarray) -> np.ndarray:
    """Each 2 x 2 cell's most frequent class value, 0 (nodata) only where all four are 0.

    Comparisons instead of counting, on contiguous copies of the four quarters (an order of
    magnitude cheaper per pixel than GDAL's MODE overviews): a value seen twice is the mode or
    tied for it; ties go to the first of a, b, c, d; where 0 won, the largest value (any valid one:
    among the valid values it is then a tie).
    """
    a, b, c, d = (np.ascontiguousarray(q) for q in _quads(classes, 0))
    first = a == b
    first |= a == c
    first |= a == d
    second = b == c
    second |= b == d
    mode = np.where(c == d, c, a)
    np.copyto(mode, b, where=second)
    np.copyto(mode, a, where=first)
    nodata = mode == 0
    if nodata.any():
        largest = np.maximum(a, b)
        np.maximum(largest, np.maximum(c, d), out=largest)
        np.copyto(mode, largest, where=nodata)
    return mode


def mean_2x2(values: np.ndarray, nodata: float) -> np.ndarray:
    """Each 2 x 2 cell's mean over its valid pixels (validity from the first band); nodata where none."""
    quads = _quads(values, nodata)
    valid = [(q[0] if q.ndim == 3 else q) != nodata for q in quads]
    count = sum(v.astype(np.float32) for v in valid)
    total = sum(np.where(v, q, 0).astype(np.float32) for v, q in zip(valid, quads))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), nodata).astype(values.dtype)


def reduce_2x2(values: np.ndarray, nodata: float) -> np.ndarray:
    """The next level of a block: the mode for class values (uint8), the mean otherwise."""
    return mode_2x2(values) if values.dtype == np.uint8 else mean_2x2(values, nodata)


def block_levels(window: Window, values: np.ndarray, nodata: float,
                 factors: list[int]) -> Iterator[tuple[int, Window, np.ndarray]]:
    """(factor, window, values) of a block's levels up to :data:`ALIGNED`; its offsets must be multiples of it."""
    col, row = int(window.col_off), int(window.row_off)
    for factor in (f for f in factors if f <= ALIGNED):
        values = reduce_2x2(values, nodata)
        yield factor, Window(col // factor, row // factor, values.shape[-1], values.shape[-2]), values


def upper_levels(paths: dict[int, Path], nodata: float, rows: int = 1024) -> None:
    """Fill the levels above :data:`ALIGNED` from the one below each, ``rows`` rows at a time."""
    factors = sorted(paths)
    for below, factor in zip(factors, factors[1:]):
        if factor <= ALIGNED:
            continue
        with rasterio.open(paths[below]) as src, rasterio.open(paths[factor], "r+") as dst:
            for row in range(0, src.height, rows):
                values = src.read(window=Window(0, row, src.width, min(rows, src.height - row)))
                reduced = reduce_2x2(values, nodata)
                dst.write(reduced, window=Window(0, row // 2, reduced.shape[-1], reduced.shape[-2]))


def level_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """A level's size as GDAL sizes overviews (rounded up)."""
    return math.ceil(width / factor), math.ceil(height / factor)


def with_overviews(partial: Path, paths: dict[int, Path], vrt: Path) -> Path:
    """A VRT of ``partial`` (its metadata and colours copied by GDAL) listing ``paths`` as its overviews."""
    rasterio.shutil.copy(partial, vrt, driver="VRT")
    tree = ET.parse(vrt)
    for band in tree.getroot().iter("VRTRasterBand"):
        for factor in sorted(paths):
            overview = ET.SubElement(band, "Overview")
            ET.SubElement(overview, "SourceFilename", relativeToVRT="0").text = str(paths[factor].resolve())
            ET.SubElement(overview, "SourceBand").text = band.get("band")
    tree.write(vrt)
    return vrt
