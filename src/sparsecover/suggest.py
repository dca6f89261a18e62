"""`sparsecover suggest`: where the next labels would help the model most.

From a handful of polygons the map is wrong in places no polygon resembles; one more square there
teaches the model more than ten inside what it already knows. ``suggest`` classifies the scene with
:func:`sparsecover.classify.classify_pixels` (same tiling, memory bound and checks), asking it for
each pixel's uncertainty too, then looks at the scene as a grid of ``size`` x ``size`` pixel cells
and picks ``n`` of them to label:

- a cell is a candidate when all its pixels are valid and predicted as one class (a square the user
  can label with one class), and it lies at least ``size`` pixels away from every existing label;
- the most uncertain cells, each at least a minimum spacing from those chosen before it, so that
  the squares spread over the scene instead of piling up in one confusing patch. The spacing is
  half the side of the area each square would own were ``n`` squares spread evenly over the valid
  part of the scene: it adapts to the scene's size and to ``n``;
- then every predicted class the squares miss gets one (rarest class first: rare classes are where
  sparse-label maps fail): its most uncertain cell away from the others (or its most uncertain
  cell if none is), in place of the least uncertain square of a class that has several, while
  there is one. The squares are ranked by uncertainty.

Uncertainty first, measured against labelling at random, against squares in equal numbers per
predicted class (random, or each class's most uncertain) and against uncertainty alone:
benchmarks/results/label_loop_2026-12-04.txt. Equal numbers per class did no better than random
squares there; every class once costs little and keeps a rare class from going unchecked.

The result is a GeoPackage of squares in the raster's CRS with an empty integer class field named
like the training polygons' one, for the user to fill in QGIS; ``export --labels first.gpkg
--labels squares.gpkg`` then trains on both (squares left blank are skipped).
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio import features
from rasterio.windows import Window

from .classify import classify_pixels
from .errors import SparsecoverError, warn
from .labels import read_label_file
from .predict import LoadedModel, load_meta
from .staging import check_output, exclusive, staging_file, staging_folder

DEFAULT_CLASS_FIELD = "classvalue"  # arcgis.learn's and the ArcGIS sample's field name
STRIP_PIXELS = 1 << 24  # pixels of the class and uncertainty maps read at a time


@dataclass
class Cells:
    """The classified scene on a grid of ``size`` x ``size`` pixel cells."""

    uncertainty: np.ndarray  # (rows, cols) float32: mean pixel uncertainty of the cell
    predicted: np.ndarray  # (rows, cols) uint8: the class value all its pixels got; 0: mixed or not all valid
    valid: np.ndarray  # (rows, cols) bool: every pixel valid
    transform: Affine  # of the cell grid
    crs: object = None  # the raster's

    @property
    def candidates(self) -> np.ndarray:
        return self.valid & (self.predicted > 0)

    def square(self, row: int, col: int):
        """Cell (row, col) as a shapely polygon in the raster's CRS."""
        from shapely.geometry import box

        left, top = self.transform * (col, row)
        right, bottom = self.transform * (col + 1, row + 1)
        return box(min(left, right), min(top, bottom), max(left, right), max(top, bottom))


def read_cells(classes: Path, uncertainty: Path, size: int) -> Cells:
    """Aggregate a class map and its uncertainty map (from ``classify``) into cells, a strip at a time.

    Pixels past the last whole cell (right and bottom edges) are not used.
    """
    with rasterio.open(classes) as cls_src, rasterio.open(uncertainty) as unc_src:
        rows, cols = cls_src.height // size, cls_src.width // size
        if rows == 0 or cols == 0:
            raise SparsecoverError(f"{classes}: the raster is smaller than one {size} px square; use a smaller --size")
        mean = np.zeros((rows, cols), np.float32)
        predicted = np.zeros((rows, cols), np.uint8)
        valid = np.zeros((rows, cols), bool)
        step = max(1, STRIP_PIXELS // (size * size * cols))  # cell rows per strip
        for top in range(0, rows, step):
            n = min(step, rows - top)
            window = Window(0, top * size, cols * size, n * size)
            values = cls_src.read(1, window=window).reshape(n, size, cols, size)
            unc = unc_src.read(1, window=window).reshape(n, size, cols, size)
            first = values[:, :1, :, :1]
            inside = (unc >= 0).all(axis=(1, 3)) & (values > 0).all(axis=(1, 3))
            one_class = (values == first).all(axis=(1, 3))
            predicted[top : top + n] = np.where(inside & one_class, first[:, 0, :, 0], 0)
            valid[top : top + n] = inside
            mean[top : top + n] = np.where(inside, unc.mean(axis=(1, 3), dtype=np.float64), 0)
        transform, crs = cls_src.transform * Affine.scale(size), cls_src.crs
    return Cells(mean, predicted, valid, transform, crs)


def min_spacing(valid_cells: int, n: int) -> int:
    """Least distance (cells, Chebyshev) between chosen cells: half the side of the square area each
    of ``n`` places would own if spread evenly over ``valid_cells`` cells; at least 1 (never the same
    cell)."""
    return max(1, int(0.5 * math.sqrt(valid_cells / max(n, 1))))


class _Spacing:
    """Chosen cells in buckets of ``spacing`` cells, to test a new cell's distance in O(1)."""

    def __init__(self, spacing: int) -> None:
        self.spacing = spacing
        self.buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def free(self, row: int, col: int) -> bool:
        br, bc = row // self.spacing, col // self.spacing
        for key in ((br + i, bc + j) for i in (-1, 0, 1) for j in (-1, 0, 1)):
            for r, c in self.buckets.get(key, ()):
                if max(abs(r - row), abs(c - col)) < self.spacing:
                    return False
        return True

    def add(self, row: int, col: int) -> None:
        self.buckets.setdefault((row // self.spacing, col // self.spacing), []).append((row, col))

    def remove(self, row: int, col: int) -> None:
        self.buckets[row // self.spacing, col // self.spacing].remove((row, col))


def choose_cells(cells: Cells, allowed: np.ndarray, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """Up to ``n`` cells (row, col), in the order to label them (see the module docstring).

    ``allowed``: candidate cells not excluded by existing labels. Ties in uncertainty are broken at
    random (``seed``).
    """
    rows, cols = np.nonzero(allowed)
    if len(rows) == 0:
        return []
    rng = np.random.default_rng(seed)
    score = cells.uncertainty[rows, cols].astype(np.float64) + rng.uniform(0, 1e-9, len(rows))
    order = np.argsort(-score, kind="stable")
    rows, cols = rows[order], cols[order]  # most uncertain first: a lower index is a higher rank
    classes = cells.predicted[rows, cols]
    spacing = _Spacing(min_spacing(int(cells.valid.sum()), n))
    picks: list[int] = []
    for i in range(len(rows)):
        if len(picks) == n:
            break
        if spacing.free(int(rows[i]), int(cols[i])):
            spacing.add(int(rows[i]), int(cols[i]))
            picks.append(i)
    picked = Counter(classes[picks].tolist())
    values, counts = np.unique(classes, return_counts=True)
    for value in values[np.argsort(counts, kind="stable")].tolist():  # rarest predicted class first
        if picked[value]:
            continue
        if len(picks) == n:
            spare = [p for p in picks if picked[int(classes[p])] > 1]
            if not spare:  # every square a class of its own: n is too small to cover more
                break
            drop = max(spare)  # the least uncertain square of a class that has several
            picks.remove(drop)
            picked[int(classes[drop])] -= 1
            spacing.remove(int(rows[drop]), int(cols[drop]))
        mine = np.flatnonzero(classes == value)
        # its most uncertain cell away from the others; if all of it lies near them, its most uncertain
        pick = next((int(i) for i in mine if spacing.free(int(rows[i]), int(cols[i]))), int(mine[0]))
        spacing.add(int(rows[pick]), int(cols[pick]))
        picks.append(pick)
        picked[value] += 1
    return [(int(rows[i]), int(cols[i])) for i in sorted(picks)]


def excluded_cells(frame, labels: Path, cells: Cells) -> np.ndarray:
    """Cells within one cell side of an existing label (``frame`` read from ``labels``)."""
    side = abs(cells.transform.a)
    geometries = [g for g in frame.to_crs(cells.crs).geometry.buffer(side) if g is not None and not g.is_empty]
    excluded = np.zeros(cells.valid.shape, bool)
    if geometries:
        excluded = features.rasterize(((g, 1) for g in geometries), out_shape=excluded.shape,
                                      transform=cells.transform, all_touched=True, dtype="uint8") > 0
    if not excluded.any():
        warn(f"{labels}: no label lies on the raster; suggesting places anywhere")
    return excluded


def write_squares(out: Path, cells: Cells, chosen: list[tuple[int, int]], meta: dict, class_field: str) -> None:
    """The chosen cells as square polygons in a GeoPackage, written beside ``out`` and renamed."""
    import geopandas as gpd
    import pandas as pd

    names = {c["value"]: c["name"] for c in meta["classes"]}
    squares = [cells.square(r, c) for r, c in chosen]
    predicted = [int(cells.predicted[r, c]) for r, c in chosen]
    uncertainty = [round(float(cells.uncertainty[r, c]), 4) for r, c in chosen]
    frame = gpd.GeoDataFrame({
        class_field: pd.array([None] * len(chosen), dtype="Int32"),  # for the user to fill in
        "predicted": pd.array(predicted, dtype="Int32"),
        "predicted_name": [names.get(v, str(v)) for v in predicted],
        "uncertainty": uncertainty,
        "rank": pd.array(range(1, len(chosen) + 1), dtype="Int32"),
    }, geometry=squares, crs=cells.crs)
    staging = staging_file(out, suffix=".gpkg")
    try:
        staging.unlink()
        frame.to_file(staging, driver="GPKG", layer=out.stem, engine="pyogrio")
        os.replace(staging, out)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def suggest_labels(
    raster: str | Path,
    model: str | Path | LoadedModel,
    out: str | Path,
    n: int = 30,
    size: int = 5,
    labels: str | Path | None = None,
    uncertainty: str | Path | None = None,
    class_field: str | None = None,
    seed: int = 0,
    tile_size: int = 1024,
    padding: int = 32,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``n`` squares of ``size`` pixels to label next, as a GeoPackage ``out`` (see the module
    docstring); ``uncertainty`` also keeps the uncertainty map (a COG). Returns ``out``.

    ``class_field`` names the empty class field; by default the one of the polygons the model was
    trained on (``classvalue`` when unknown). ``labels``: existing labels to keep away from.
    """
    out = Path(out)
    if n < 1:
        raise SparsecoverError(f"--n must be at least 1, got {n}")
    if size < 1:
        raise SparsecoverError(f"--size must be at least 1 pixel, got {size}")
    if out.suffix.lower() != ".gpkg":
        raise SparsecoverError(f"{out}: suggestions are written as a GeoPackage; name the output *.gpkg")
    for path in (p for p in (out, uncertainty) if p is not None):
        check_output(Path(path), overwrite)
    existing = read_label_file(Path(labels)) if labels is not None else None
    meta = model.meta if isinstance(model, LoadedModel) else load_meta(model)
    field = class_field or meta.get("class_field") or DEFAULT_CLASS_FIELD
    with exclusive(out):
        work = staging_folder(out)
        try:
            unc = Path(uncertainty) if uncertainty is not None else work / "uncertainty.tif"
            classes = classify_pixels(raster, model, work / "classes.tif", tile_size=tile_size, padding=padding,
                                      uncertainty=unc, device=device, overwrite=overwrite, progress=progress)
            cells = read_cells(classes, unc, size)
            allowed = cells.candidates
            if existing is not None:
                allowed = allowed & ~excluded_cells(existing, Path(labels), cells)
            if not allowed.any():
                raise SparsecoverError(f"{raster}: no place to suggest: every {size} px square is nodata, mixed or "
                                       "beside an existing label; try a smaller --size")
            chosen = choose_cells(cells, allowed, n, seed)
            if len(chosen) < n:
                warn(f"{raster}: only {len(chosen)} squares qualify (valid, one predicted class, away from the labels "
                     f"and from each other); wrote {len(chosen)} of {n}")
            write_squares(out, cells, chosen, meta, field)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return out
