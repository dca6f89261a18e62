"""Class map -> polygons (``sparsecover vectorize``; ArcGIS's Raster to Polygon after Classify Pixels).

A polygon is a 4-connected patch of one class: pixels that share an edge (pixels that touch at a
corner only are separate polygons, GDAL's and ArcGIS's default). Class 0 and nodata never become
polygons. The map is read in square blocks (:data:`BLOCK` pixels a side), a row of blocks after
another; each block's patches are polygonised by GDAL in pixel coordinates, where the pieces a patch
has in neighbouring blocks share their corners exactly, joined to the open patches across the
block's top and left edges, and a patch is merged and written as soon as no unread pixel touches
it. The output has no seams; memory holds one block's arrays and the patches open along one row of
pixels (and the largest polygons, each held whole until it is written), so it hardly grows with the
map (benchmarks/results/vectorize_memory_2026-12-04.txt). Strips of whole rows would grow thinner
as maps grow wider and cut more patches into pieces (1.36x the memory at 17x the pixels, measured in
benchmarks/results/vectorize_memory_2026-11-28.txt).

A minimum mapping unit needs the whole map's patches first: a first pass over the same blocks
labels every patch, counts it and keeps the edges it shares with its neighbours, and the patches
under the unit join their largest neighbour (GDAL's sieve rule) on that graph, so the result does
not depend on where blocks end; the polygons are then made from the sieved blocks. That graph
grows with the map's patches.

``simplify`` is GEOS's coverage simplification: neighbours keep one shared edge, no gaps or
overlaps. It needs every polygon at once, so with it memory grows with the polygon count.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio import features
from rasterio.transform import Affine
from rasterio.windows import Window
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .classes import MAX_UNNAMED_CLASSES, build_class_table, read_raster_classes
from .errors import SparsecoverError
from .progress import track
from .raster import gdal_env, open_raster
from .staging import check_output, exclusive, staging_file
from .styles import add_layer_style

#: Pixels a side of the blocks read at a time: a few tens of MB of working arrays whatever the map's size.
BLOCK = 512
#: Polygons written per GeoPackage transaction.
BATCH = 20_000
CLASS_FIELD = "class_value"

Pixels = tuple[np.ndarray, np.ndarray]  # class values and where they are classes, in a block's window


def parse_min_area(text: str | None) -> tuple[float, str] | None:
    """``"0.5ha"`` -> (0.5, "ha"), ``"12px"`` / ``"12 px"`` -> (12, "px"); None stays None."""
    if text is None or str(text).strip() == "":
        return None
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ha|px)\s*", str(text).lower())
    if not match:
        raise SparsecoverError(f"--min-area {text!r}: give an area with its unit, e.g. 0.5ha or 12px")
    return float(match.group(1)), match.group(2)


def min_area_pixels(min_area: tuple[float, str] | None, pixel_area: float, metres: bool, map_path: Path) -> int:
    """The smallest patch kept, in pixels (1 keeps every patch)."""
    if min_area is None:
        return 1
    amount, unit = min_area
    if unit == "px":
        return max(1, math.ceil(amount))
    if not metres:
        raise SparsecoverError(f"{map_path}: --min-area in hectares needs a CRS in metres; give pixels instead, "
                               "e.g. --min-area 50px")
    return max(1, math.ceil(amount * 1e4 / pixel_area - 1e-9))


def _blocks(height: int, width: int, size: int, stored: tuple[int, int]) -> list[Window]:
    """Windows of ``size`` x ``size`` pixels, a row of them after another; a size above the map's
    stored blocks is cut to whole stored blocks (each decoded once)."""
    def side(stored_side: int) -> int:
        return size - size % stored_side if size > stored_side else size

    rows, cols = side(stored[0]), side(stored[1])
    return [Window(c, r, min(cols, width - c), min(rows, height - r))
            for r in range(0, height, rows) for c in range(0, width, cols)]


class _MapReader:
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


def _label(data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _edges(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distinct pairs of different patches that share pixel edges, as (3, k): low id, high id, length."""
    keep = (a > 0) & (b > 0) & (a != b)
    if not keep.any():
        return np.zeros((3, 0), np.int64)
    low, high = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
    pairs, length = np.unique(np.stack([low, high]), axis=1, return_counts=True)
    return np.vstack([pairs, length])


@dataclass
class _Patches:
    """The sieve's first pass: every patch of the map (global id 1..N, in block order)."""

    value: list[np.ndarray] = field(default_factory=list)   # per block: class of each local patch
    count: list[np.ndarray] = field(default_factory=list)   # per block: pixels of each local patch
    seams: list[np.ndarray] = field(default_factory=list)   # (2, k) global ids joined across a block edge
    touching: list[np.ndarray] = field(default_factory=list)  # (3, k) neighbouring ids and edge length
    offsets: list[int] = field(default_factory=lambda: [0])  # global id of each block's first patch - 1


class _Frontier:
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


def _scan(read: _MapReader, blocks: list[Window], threshold: int, progress: bool, width: int,
          height: int) -> _Patches:
    """Pass 1: every patch, its joins across block edges and its neighbours, less the pairs of two
    patches already known to be kept (inside the block, at least ``threshold`` pixels)."""
    patches = _Patches()
    frontier = _Frontier(width, height)
    weights = [w.width * w.height / 1e6 for w in blocks]
    for window in track(blocks, len(blocks), "Patches for --min-area", progress, weights, "MP"):
        data, valid = read(window)
        labels, values = _label(data, valid)
        offset = patches.offsets[-1]
        ids = np.where(labels > 0, labels + offset, 0)
        patches.value.append(values.astype(np.int32))  # 4 bytes a patch: maps hold millions
        patches.count.append(np.bincount(labels.ravel(), minlength=len(values) + 1)[1:].astype(np.int32))
        patches.offsets.append(offset + len(values))
        for outer, outer_values, inner, inner_values in frontier.beside(window, ids, data):
            joined = (outer > 0) & (inner > 0) & (outer_values == inner_values)
            patches.seams.append(np.stack([outer[joined], inner[joined]]).astype(np.int32))
            patches.touching.append(_edges(outer, inner).astype(np.int32))
        settled = patches.count[-1] >= threshold
        on_edge = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])  # may continue beyond
        settled[on_edge[on_edge > 0] - 1] = False
        for pairs in (_edges(ids[:, :-1], ids[:, 1:]), _edges(ids[:-1], ids[1:])):
            both = settled[pairs[0] - offset - 1] & settled[pairs[1] - offset - 1]
            patches.touching.append(pairs[:, ~both].astype(np.int32))
        frontier.advance(window, ids, data)
    return patches


def _sieve(size: np.ndarray, value: np.ndarray, touching: np.ndarray, threshold: int) -> np.ndarray:
    """Each patch's group after sieving: a group under ``threshold`` pixels joins its largest
    neighbour (then the one sharing the longest edge, then the lower class), in rounds until every
    group left under it has no neighbour (an island in nodata). A group only joins one larger than
    itself (ties: by id), so chains end and nothing cycles. ``touching``: (3, k) patch pairs and
    their shared edge lengths. Numpy throughout: maps hold millions of patches."""
    n = len(size)
    group = np.arange(n)
    a, b, length = touching
    while True:
        group_size = np.bincount(group, weights=size, minlength=n)
        ga, gb = group[a], group[b]
        apart = ga != gb
        from_a = apart & (group_size[ga] < threshold)  # directed: from a small group to its neighbour
        from_b = apart & (group_size[gb] < threshold)
        src = np.concatenate([ga[from_a], gb[from_b]])
        dst = np.concatenate([gb[from_a], ga[from_b]])
        edge = np.concatenate([length[from_a], length[from_b]])
        pairs, index = np.unique(np.stack([src, dst]), axis=1, return_inverse=True)
        if not pairs.size:
            return group
        src, dst = pairs
        edge = np.bincount(index.ravel(), weights=edge, minlength=pairs.shape[1])
        order = np.lexsort((dst, -value[dst], edge, group_size[dst], src))
        last = np.flatnonzero(np.r_[src[order][1:] != src[order][:-1], True])
        src, best = src[order][last], dst[order][last]
        up = (group_size[best] > group_size[src]) | ((group_size[best] == group_size[src]) & (best > src))
        if not up.any():
            return group
        target = np.arange(n)
        target[src[up]] = best[up]
        while True:  # follow chains to a group that stays
            following = target[target]
            if np.array_equal(following, target):
                break
            target = following
        group = target[group]


def _sieved_classes(patches: _Patches, threshold: int) -> np.ndarray:
    """The class each patch (by global id; 0: none) has once the sieve has run."""
    n = patches.offsets[-1]
    none = np.zeros(1, np.int32)  # id 0: no patch
    value = np.concatenate([none, *patches.value])
    count = np.concatenate([none, *patches.count])
    seams = np.hstack([np.zeros((2, 0), np.int32), *patches.seams])
    graph = coo_matrix((np.ones(seams.shape[1], np.int8), (seams[0], seams[1])), shape=(n + 1, n + 1))
    _, root = connected_components(graph, directed=False)
    root_value = np.zeros(root.max() + 1, np.int32)
    root_value[root] = value
    root_size = np.bincount(root, weights=count)
    touching = np.hstack([np.zeros((3, 0), np.int32), *patches.touching])
    touching = np.vstack([root[touching[0]], root[touching[1]], touching[2]])
    touching = touching[:, touching[0] != touching[1]]
    return root_value[_sieve(root_size, root_value, touching, threshold)[root]]


class _SievedReader:
    """Blocks of the map after the sieve: each block labelled as in the first pass, each patch given
    the class it ends with."""

    def __init__(self, read: _MapReader, blocks: list[Window], patches: _Patches, threshold: int) -> None:
        self.read = read
        self.offsets = {(w.row_off, w.col_off): patches.offsets[i] for i, w in enumerate(blocks)}
        self.classes = _sieved_classes(patches, threshold)

    def __call__(self, window: Window) -> Pixels:
        data, valid = self.read(window)
        labels, _ = _label(data, valid)
        return self.classes[np.where(labels > 0, labels + self.offsets[window.row_off, window.col_off], 0)], labels > 0


@dataclass
class _Open:
    """A patch some block has reached: its class, its pixels so far and its polygon pieces."""

    value: int
    pixels: int
    pieces: list = field(default_factory=list)


def _patches_as_polygons(read: Callable[[Window], Pixels], blocks: list[Window],
                         selected: Callable[[np.ndarray], np.ndarray], progress: bool, width: int,
                         height: int) -> Iterator[tuple[int, int, shapely.Geometry]]:
    """(class, pixels, polygon in pixel coordinates) of each patch of the selected classes, as soon
    as no unread pixel touches it: pieces joined across a block's top or left edge are one patch."""
    open_: dict[int, _Open] = {}
    alias: dict[int, int] = {}  # patch id -> the id it was merged into, until the frontier is renamed

    def find(i: int) -> int:
        while i in alias:
            i = alias[i]
        return i

    frontier = _Frontier(width, height)
    next_id = 1
    weights = [w.width * w.height / 1e6 for w in blocks]
    for window in track(blocks, len(blocks), "Polygons", progress, weights, "MP"):
        data, valid = read(window)
        valid &= selected(data)
        labels, values = _label(data, valid)
        counts = np.bincount(labels.ravel(), minlength=len(values) + 1)[1:]
        ids = np.r_[0, np.arange(next_id, next_id + len(values))]
        next_id += len(values)
        for i, value, count in zip(ids[1:].tolist(), values.tolist(), counts.tolist()):
            open_[i] = _Open(value, count)
        found = list(features.shapes(labels.astype(np.int32), mask=labels > 0, connectivity=4,
                                     transform=Affine(1, 0, window.col_off, 0, 1, window.row_off)))
        for (_, label), piece in zip(found, _from_geojson([g for g, _ in found])):
            open_[int(ids[int(label)])].pieces.append(piece)
        block_ids = ids[labels]
        leaving = [ids[1:]]  # what may close now: this block's patches and the frontier it replaces
        for outer, outer_values, inner, inner_values in frontier.beside(window, block_ids, data):
            leaving.append(outer)
            joined = (outer > 0) & (inner > 0) & (outer_values == inner_values)
            for a, b in np.unique(np.stack([outer[joined], inner[joined]]), axis=1).T.tolist():
                a, b = find(a), find(b)
                if a != b:
                    keep, gone = (a, b) if len(open_[a].pieces) >= len(open_[b].pieces) else (b, a)
                    open_[keep].pixels += open_[gone].pixels
                    open_[keep].pieces += open_.pop(gone).pieces
                    alias[gone] = keep
        frontier.advance(window, block_ids, data)
        known = np.unique(np.concatenate([*leaving, frontier.ids()]))
        known = known[known > 0]
        final = np.array([find(i) for i in known.tolist()], np.int64)
        still_open = set(final[np.isin(known, frontier.ids())].tolist())
        for i in set(final.tolist()) - still_open:
            patch = open_.pop(i)
            yield patch.value, patch.pixels, (patch.pieces[0] if len(patch.pieces) == 1
                                              else shapely.union_all(patch.pieces))
        # every id the frontier holds becomes the one it was merged into, so the aliases can go
        if known.size:
            frontier.rename(lambda a: np.where(a > 0, final[np.searchsorted(known, a).clip(0, len(known) - 1)], 0))
        alias.clear()


def _from_geojson(polygons: list[dict]) -> np.ndarray:
    """GeoJSON polygons as shapely ones, built in one call (one object at a time took 4x longer)."""
    rings = [ring for p in polygons for ring in p["coordinates"]]
    ring_ends = np.cumsum([len(r) for r in rings])
    polygon_ends = np.cumsum([len(p["coordinates"]) for p in polygons])
    coords = np.array([xy for ring in rings for xy in ring], dtype=np.float64).reshape(-1, 2)
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords,
                                     (np.r_[0, ring_ends], np.r_[0, polygon_ends]))


@dataclass(frozen=True)
class _Units:
    area_field: str
    perimeter_field: str
    area_scale: float  # map units squared -> the area field's unit


def _units(crs) -> _Units:
    if crs.is_projected and crs.linear_units in ("metre", "meter"):
        return _Units("area_ha", "perimeter_m", 1e-4)
    unit = re.sub(r"\W+", "_", (crs.linear_units if crs.is_projected else "degree").lower()).strip("_") or "unit"
    return _Units(f"area_{unit}2", f"perimeter_{unit}", 1.0)


def _write(staging: Path, layer: str, rows: list[tuple[int, int, shapely.Geometry]], names: dict[int, str],
           units: _Units, crs, to_map: Callable | None, first: bool) -> None:
    """Append (class, pixels, polygon) rows to the layer, polygons in pixel coordinates unless
    ``to_map`` is None."""
    import geopandas as gpd
    import pandas as pd

    values = np.array([v for v, _, _ in rows], np.int64)
    geoms = np.array([g for _, _, g in rows], dtype=object)
    geoms = shapely.orient_polygons(to_map(geoms) if to_map is not None else geoms)
    frame = gpd.GeoDataFrame({
        CLASS_FIELD: pd.array(values, dtype="Int32"),
        "class_name": [names.get(v, f"class_{v}") for v in values.tolist()],
        "pixels": pd.array([p for _, p, _ in rows], dtype="Int64"),
        units.area_field: shapely.area(geoms) * units.area_scale,
        units.perimeter_field: shapely.length(geoms),
    }, geometry=geoms, crs=crs)
    frame.to_file(staging, driver="GPKG", layer=layer, engine="pyogrio", append=not first)


def vectorize(
    classified: str | Path,
    out: str | Path,
    min_area: str | tuple[float, str] | None = None,
    simplify: float | None = None,
    classes: list[int] | None = None,
    layer: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    block_size: int = BLOCK,
) -> Path:
    """Polygons of a class map in a styled GeoPackage: one per 4-connected patch of one class.

    ``min_area``: a minimum mapping unit, ``"0.5ha"`` or ``"12px"`` (or ``(0.5, "ha")``): smaller
    patches join their largest neighbour before polygonising. ``simplify``: a tolerance in map units
    for coverage simplification (shared edges stay shared). ``classes``: only these class values
    (the others still take part in the sieve). Fields: class value and name, the patch's pixels,
    area (hectares where the CRS is in metres, else the CRS's unit squared, named so) and perimeter.
    The layer (``layer``, default the file's name) opens in QGIS in the map's colours.
    ``block_size``: pixels a side of the blocks read at a time (default :data:`BLOCK`).
    """
    classified, out = Path(classified), Path(out)
    if out.suffix.lower() != ".gpkg":
        raise SparsecoverError(f"{out}: vectorize writes a GeoPackage; name the output *.gpkg")
    check_output(out, overwrite)
    if simplify is not None and simplify <= 0:
        raise SparsecoverError(f"--simplify must be a tolerance above 0 in map units, got {simplify}")
    if block_size < 1:
        raise SparsecoverError(f"block_size must be 1 or more, got {block_size}")
    area = parse_min_area(min_area) if not isinstance(min_area, tuple) else min_area
    layer = layer or out.stem
    with gdal_env(), open_raster(classified) as src, exclusive(out):
        if src.count != 1 or src.dtypes[0] not in ("uint8", "uint16", "int8", "int16", "uint32", "int32",
                                                   "float32", "float64"):
            raise SparsecoverError(f"{classified}: not a class map ({src.count} band(s) of {src.dtypes[0]}); "
                                   "vectorize reads a single band of class values, as classify writes")
        if src.crs is None:
            raise SparsecoverError(f"{classified}: has no CRS, so its polygons could not be placed; assign one "
                                   "first (gdal_edit.py -a_srs EPSG:XXXX)")
        transform = src.transform
        pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
        units = _units(src.crs)
        threshold = min_area_pixels(area, pixel_area, units.area_field == "area_ha", classified)
        names, colours = read_raster_classes(src)
        if names:  # before any work; a map without a class table is checked once read
            _check_classes(classified, classes, set(names))
        blocks = _blocks(src.height, src.width, block_size, src.block_shapes[0])
        read: Callable[[Window], Pixels] = _MapReader(src, classified, bool(names or colours))
        if threshold > 1:
            patches = _scan(read, blocks, threshold, progress, src.width, src.height)
            read = _SievedReader(read, blocks, patches, threshold)
        wanted = np.array(sorted(classes or []), np.int64)

        def selected(data: np.ndarray) -> np.ndarray:
            return np.isin(data, wanted) if wanted.size else np.ones(data.shape, bool)

        def to_map(geoms: np.ndarray) -> np.ndarray:
            return shapely.transform(geoms, lambda xy: np.column_stack(transform * (xy[:, 0], xy[:, 1])))

        staging: Path | None = None
        try:
            staging = staging_file(out, suffix=".gpkg")
            staging.unlink()  # the GPKG driver creates the file itself
            polygons = _patches_as_polygons(read, blocks, selected, progress, src.width, src.height)
            if simplify is not None:  # every pixel corner a vertex: edges matched for GEOS
                rows = [(v, p, shapely.segmentize(g, 1.0)) for v, p, g in polygons]
                simple = shapely.coverage_simplify(to_map(np.array([g for _, _, g in rows], dtype=object)), simplify)
                batches: Iterator = iter([[(v, p, g) for (v, p, _), g in zip(rows, simple)]] if rows else [])
                transform_rows = None
            else:
                batches, transform_rows = _batched(polygons), to_map
            written, kinds = 0, set()
            for rows in batches:
                _write(staging, layer, rows, names, units, src.crs, transform_rows, first=written == 0)
                written += len(rows)
                kinds.update(v for v, _, _ in rows)
            seen = (read.read if isinstance(read, _SievedReader) else read).seen
            if not seen:
                raise SparsecoverError(f"{classified}: no class pixels (every pixel is 0 or nodata); nothing to vectorise")
            _check_classes(classified, classes, seen)
            if not written:
                raise SparsecoverError(f"{classified}: no polygon is left of the classes asked for once patches under "
                                       f"{threshold} px join their neighbours; lower --min-area")
            table = build_class_table(sorted(seen), names, colours)
            add_layer_style(staging, layer, [c for c in table if c.value in kinds], CLASS_FIELD)
            os.replace(staging, out)
        except (OSError, DataSourceError, DataLayerError) as exc:  # a full disk, a read-only folder
            if staging is not None:
                staging.unlink(missing_ok=True)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SparsecoverError(f"{out}: cannot write the GeoPackage ({first}); is the disk full?") from None
        except BaseException:
            if staging is not None:
                staging.unlink(missing_ok=True)
            raise
    return out


def _check_classes(classified: Path, classes: list[int] | None, known: set[int]) -> None:
    unknown = sorted(set(classes or []) - known)
    if unknown:
        raise SparsecoverError(f"{classified}: --classes {','.join(map(str, unknown))} not in the map (its classes: "
                               f"{', '.join(map(str, sorted(known)))})")


def _batched(rows: Iterator) -> Iterator[list]:
    batch: list = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def summarize_polygons(path: str | Path) -> tuple[list[dict], str]:
    """Per class of a vector map written by :func:`vectorize`: value, name, polygons and area;
    with the area field's name (``area_ha``, or the CRS's unit squared)."""
    import pyogrio

    path = Path(path)
    try:
        info = pyogrio.read_info(path, layer=0)
        area_field = next((f for f in info["fields"] if f.startswith("area_")), None)
        if CLASS_FIELD not in info["fields"] or area_field is None:
            raise SparsecoverError(f"{path}: not a vector map written by sparsecover vectorize (no {CLASS_FIELD} or "
                                   "area field)")
        frame = pyogrio.read_dataframe(path, layer=0, columns=[CLASS_FIELD, "class_name", area_field],
                                       read_geometry=False)
    except pyogrio.errors.DataSourceError as exc:
        raise SparsecoverError(f"{path}: cannot read the vector map ({str(exc).splitlines()[0]})") from None
    rows = []
    for (value, name), group in frame.groupby([CLASS_FIELD, "class_name"], sort=True):
        rows.append({"value": int(value), "name": name, "polygons": len(group), "area": float(group[area_field].sum())})
    return rows, area_field
