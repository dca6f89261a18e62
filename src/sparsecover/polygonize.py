"""Class map -> polygons (``sparsecover vectorize``; ArcGIS's Raster to Polygon after Classify Pixels).

A polygon is a 4-connected patch of one class: pixels that share an edge (pixels that touch at a
corner only are separate polygons, GDAL's and ArcGIS's default). Class 0 and nodata never become
polygons. The map is read in square blocks (:data:`BLOCK` pixels a side), a row of blocks after
another; each block's patches are polygonised by GDAL in pixel coordinates, where the pieces a patch
has in neighbouring blocks share their corners exactly, joined to the open patches across the
block's top and left edges, and a patch is merged and written as soon as no unread pixel touches
it. The output has no seams; memory holds one block's arrays and the patches open along one row of
pixels, their pieces from earlier blocks as WKB (and the largest polygons, each held until it is
written), so it hardly grows with the map (benchmarks/results/vectorize_memory_wkb_2026-12-04.txt).
Strips of whole rows would grow thinner as maps grow wider and cut more patches into pieces (1.36x
the memory at 17x the pixels, measured in benchmarks/results/vectorize_memory_2026-11-28.txt).

The blocks, the reader and the frontier are :mod:`.mapblocks`. A minimum mapping unit needs a
first pass over the blocks (:mod:`.sieve`, which decides each small patch once the rows around it
are read); the polygons are then made from the sieved blocks.

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
from rasterio import features
from rasterio.transform import Affine
from rasterio.windows import Window

from .classes import build_class_table, read_raster_classes
from .errors import SparsecoverError
from .mapblocks import BLOCK, Frontier, MapReader, Pixels, label_patches, map_blocks
from .progress import track
from .raster import gdal_env, open_raster
from .sieve import Sieve
from .staging import check_output, exclusive, staging_file
from .styles import add_layer_style

#: Polygons written per GeoPackage transaction.
BATCH = 20_000
CLASS_FIELD = "class_value"

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


@dataclass
class _Open:
    """A patch some block has reached: its class, its pixels so far and its polygon pieces: those of
    the current block as geometries, those of earlier blocks as WKB (a third of a GEOS geometry's
    memory, and the pieces of every patch along the frontier wait there)."""

    value: int
    pixels: int
    pieces: list = field(default_factory=list)
    stored: list = field(default_factory=list)

    def absorb(self, other: _Open) -> None:
        self.pixels += other.pixels
        self.pieces += other.pieces
        self.stored += other.stored

    def polygon(self) -> shapely.Geometry:
        parts = self.pieces + (list(shapely.from_wkb(self.stored)) if self.stored else [])
        return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def _store(patches: list[_Open]) -> None:
    """Move the current block's pieces of patches left open into their WKB store (one call for all)."""
    fresh = [piece for patch in patches for piece in patch.pieces]
    if not fresh:
        return
    wkb = iter(shapely.to_wkb(fresh).tolist())
    for patch in patches:
        patch.stored.extend(next(wkb) for _ in patch.pieces)
        patch.pieces = []


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

    frontier = Frontier(width, height)
    next_id = 1
    weights = [w.width * w.height / 1e6 for w in blocks]
    for window in track(blocks, len(blocks), "Polygons", progress, weights, "MP"):
        data, valid = read(window)
        valid &= selected(data)
        labels, values = label_patches(data, valid)
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
                    keep, gone = (a, b) if open_[a].pixels >= open_[b].pixels else (b, a)
                    open_[keep].absorb(open_.pop(gone))
                    alias[gone] = keep
        frontier.advance(window, block_ids, data)
        touching_unread = frontier.ids()
        known = np.unique(np.concatenate([*leaving, touching_unread]))
        known = known[known > 0]
        final = np.array([find(i) for i in known.tolist()], np.int64)
        still_open = set(final[np.isin(known, touching_unread)].tolist())
        for i in set(final.tolist()) - still_open:
            patch = open_.pop(i)
            yield patch.value, patch.pixels, patch.polygon()
        _store([open_[i] for i in still_open])
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
    patches join the neighbour they share the longest border with before polygonising
    (:mod:`.sieve`). ``simplify``: a tolerance in map units for coverage simplification (shared
    edges stay shared). ``classes``: only these class values
    (the others still take part in the sieve). Fields: class value and name, the patch's pixels,
    area (hectares where the CRS is in metres, else the CRS's unit squared, named so) and perimeter.
    The layer (``layer``, default the file's name) opens in QGIS in the map's colours.
    ``block_size``: pixels a side of the blocks read at a time (default :data:`BLOCK`).
    """
    import pyogrio.errors  # here, not at import: pyogrio loads geopandas, which classify needs only with a vector map

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
        blocks = map_blocks(src.height, src.width, block_size, src.block_shapes[0])
        reader = MapReader(src, classified, bool(names or colours))
        read: Callable[[Window], Pixels] = reader
        if threshold > 1:
            read = Sieve(reader, blocks, threshold, src.width, src.height)
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
            seen = reader.seen
            if not seen:
                raise SparsecoverError(f"{classified}: no class pixels (every pixel is 0 or nodata); nothing to vectorise")
            _check_classes(classified, classes, seen)
            if not written:
                raise SparsecoverError(f"{classified}: no polygon is left of the classes asked for once patches under "
                                       f"{threshold} px join their neighbours; lower --min-area")
            table = build_class_table(sorted(seen), names, colours)
            add_layer_style(staging, layer, [c for c in table if c.value in kinds], CLASS_FIELD)
            os.replace(staging, out)
        except (OSError, pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError) as exc:  # a full disk, a read-only folder
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
