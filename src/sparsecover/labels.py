"""Training labels: polygons (any OGR vector) or a classified raster, validated and put on the raster grid.

Every labelled pixel also gets a *spatial group*: the polygon it came from, or, for a classified raster,
the connected region of one class inside a block. Training splits by group so that a validation
pixel never shares a polygon (or region) with a training pixel, however much the chips overlap.

Class value 0 is reserved for "unlabelled / NoData" (DESIGN invariant); classes are 1..255 so that
label chips fit in uint8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio import features
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from scipy import ndimage
from shapely import make_valid
from shapely.geometry import box

from .classes import read_raster_classes
from .errors import SparsecoverError, warn
from .raster import CREATE_LOCK, RasterSource, _bounds, _first_line, describe, open_raster, read_padded

VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".parquet", ".geoparquet", ".gml", ".kml", ".sqlite"}

MAX_CLASS = 255


@dataclass
class PolygonLabels:
    """Validated label polygons (in their own CRS) with a class value per feature."""

    path: Path
    frame: gpd.GeoDataFrame  # columns: geometry, class_value, group
    class_field: str
    names: dict[int, str]

    def on_raster(self, raster: RasterSource) -> gpd.GeoDataFrame:
        """The polygons reprojected to the raster's CRS, those outside it dropped (with a warning).

        Each kept feature gets ``group``: its 1-based position in the file, stable across rasters.
        """
        frame = self.frame.to_crs(raster.crs) if self.frame.crs != raster.crs else self.frame
        inside = frame.intersects(box(*raster.bounds))
        if not inside.any():
            raise SparsecoverError(
                f"{self.path}: no polygon overlaps {raster.path.name} "
                f"(raster bounds {_fmt_bounds(raster.bounds)} in {raster.crs.to_string()}, "
                f"polygons {_fmt_bounds(tuple(frame.total_bounds))}); check both files cover the same area"
            )
        outside = int((~inside).sum())
        if outside:
            warn(f"{self.path}: {outside} of {len(frame)} polygons lie outside {raster.path.name}; ignored")
        return frame[inside]


def _fmt_bounds(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in bounds) + ")"


def is_vector(path: Path) -> bool:
    return path.suffix.lower() in VECTOR_SUFFIXES or path.is_dir()


def read_label_file(path: Path) -> gpd.GeoDataFrame:
    """Any vector file of labels, read, with a CRS (one line naming the file otherwise)."""
    if not path.exists():
        raise SparsecoverError(f"{path}: label file not found")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise SparsecoverError(f"{path}: cannot read labels ({_first_line(exc)})") from None
    if frame.crs is None:
        raise SparsecoverError(
            f"{path}: labels have no CRS; assign one (e.g. `ogr2ogr -a_srs EPSG:XXXX out.gpkg {path.name}`)"
        )
    return frame


def read_polygons(path: str | Path, class_field: str, name_field: str | None = None) -> PolygonLabels:
    """Read and validate labelled polygons: CRS present, class field integer in 1..255, geometry valid."""
    path = Path(path)
    frame = read_label_file(path)
    if len(frame) == 0:
        raise SparsecoverError(f"{path}: label file holds no features; draw some polygons first")
    for wanted, option in ((class_field, "--class-field"), (name_field, "--class-name-field")):
        if wanted is not None and wanted not in frame.columns:
            fields = ", ".join(c for c in frame.columns if c != "geometry")
            raise SparsecoverError(
                f"{path}: no field {wanted!r} (pass {option} with one of: {fields})"
            )
    blank = frame[class_field].isna()
    if blank.all():
        raise SparsecoverError(f"{path}: no feature has a value in {class_field!r}; fill in the classes first")
    if blank.any():  # e.g. squares from `suggest` the user could not tell
        warn(f"{path}: {int(blank.sum())} features have no value in {class_field!r}; left out")
    values = _integer_classes(frame[class_field][~blank], path, class_field)
    groups = np.flatnonzero(~blank.to_numpy()).astype(np.uint32) + 1  # a polygon's id, stable across rasters
    frame = frame[~blank].reset_index(drop=True)
    frame = gpd.GeoDataFrame(
        {"class_value": values, "group": groups}, geometry=frame.geometry, crs=frame.crs
    )
    frame = _repair(frame, path)
    names: dict[int, str] = {}
    if name_field is not None:
        source = gpd.read_file(path, engine="pyogrio", columns=[name_field], ignore_geometry=True)
        for value, name in zip(values, source[name_field][~blank]):
            if pd.isna(name):
                continue
            previous = names.setdefault(int(value), str(name))
            if previous != str(name):
                warn(f"{path}: class {value} is named both {previous!r} and {name!r}; using {previous!r}")
    return PolygonLabels(path=path, frame=frame, class_field=class_field, names=names)


def read_polygon_files(paths: list[Path], class_field: str, name_field: str | None = None) -> PolygonLabels:
    """Several label files read as one (e.g. the first polygons and the squares of `suggest`, once
    labelled): each validated by :func:`read_polygons`, their features numbered on as groups."""
    parts = [read_polygons(p, class_field, name_field) for p in paths]
    if len(parts) == 1:
        return parts[0]
    crs = parts[0].frame.crs
    frames, names, offset = [], {}, 0
    for part in parts:
        frame = part.frame.to_crs(crs).copy()
        frame["group"] = frame["group"] + offset
        offset = int(frame["group"].max())
        frames.append(frame)
        for value, name in part.names.items():
            names.setdefault(value, name)
    frame = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry", crs=crs)
    return PolygonLabels(path=parts[0].path, frame=frame, class_field=class_field, names=names)


def _integer_classes(column: pd.Series, path: Path, field: str) -> np.ndarray:
    """Class values as ints, refusing text, fractions, 0, negatives and values over 255."""
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.isna().any():
        bad = column[numeric.isna()].iloc[0]
        raise SparsecoverError(
            f"{path}: field {field!r} must hold integer class values, found {bad!r}; "
            f"use a numeric class field (and --class-name-field for names)"
        )
    if not np.all(np.equal(np.mod(numeric, 1), 0)):
        bad = numeric[np.mod(numeric, 1) != 0].iloc[0]
        raise SparsecoverError(f"{path}: field {field!r} must hold integer class values, found {bad}")
    values = numeric.to_numpy().astype(np.int64)
    if (values == 0).any():
        raise SparsecoverError(
            f"{path}: class value 0 in {field!r} is reserved for unlabelled pixels; renumber classes from 1"
        )
    if (values < 0).any() or (values > MAX_CLASS).any():
        bad = values[(values < 0) | (values > MAX_CLASS)][0]
        raise SparsecoverError(f"{path}: class value {bad} in {field!r} is outside 1..{MAX_CLASS}")
    return values


def _repair(frame: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    """Drop empty geometries and repair invalid ones (make_valid), warning with counts."""
    empty = frame.geometry.isna() | frame.geometry.is_empty
    if empty.all():
        raise SparsecoverError(f"{path}: every feature has an empty geometry")
    if empty.any():
        warn(f"{path}: {int(empty.sum())} features have no geometry; ignored")
        frame = frame[~empty]
    invalid = ~frame.geometry.is_valid
    if invalid.any():
        warn(f"{path}: repaired {int(invalid.sum())} invalid geometries (make_valid)")
        frame = frame.copy()
        frame.loc[invalid, "geometry"] = make_valid(frame.geometry[invalid].values)
    return frame


def rasterize_groups(
    polygons: gpd.GeoDataFrame, window: Window, transform, candidates: np.ndarray | None = None
) -> np.ndarray:
    """Burn each polygon's group id (uint32) into ``window``; pixels touched by a polygon count.

    ``all_touched`` reproduces how the reference labelled-pixel rasters were made and keeps thin
    polygons from vanishing at coarse resolution. Where polygons overlap, the later one wins.
    """
    height, width = int(window.height), int(window.width)
    out = np.zeros((height, width), dtype=np.uint32)
    win_transform = rasterio.windows.transform(window, transform)
    if candidates is None:
        win_bounds = _bounds(win_transform, width, height)
        candidates = polygons.sindex.query(box(*win_bounds), predicate="intersects")
    if len(candidates) == 0:
        return out
    subset = polygons.iloc[np.sort(candidates)]
    shapes = zip(subset.geometry.values, subset["group"].to_numpy())
    with CREATE_LOCK:  # rasterize creates an in-memory dataset: see raster.CREATE_LOCK
        return features.rasterize(
            shapes, out=out, transform=win_transform, all_touched=True, dtype=np.uint32
        )


@dataclass
class RasterLabels:
    """A classified raster used as labels: 0 (and its nodata) is unlabelled, values 1..255 are classes."""

    path: Path
    source: RasterSource
    names: dict[int, str] = field(default_factory=dict)  # what the raster carries (classes.read_raster_classes)
    colors: dict[int, str] = field(default_factory=dict)

    def reader(self, raster: RasterSource) -> rasterio.io.DatasetReader | WarpedVRT:
        """Open the labels on ``raster``'s grid: directly when grids agree, else nearest-neighbour warped."""
        src = rasterio.open(self.path)
        same = (
            src.crs == raster.crs
            and src.transform.almost_equals(raster.transform)
            and (src.width, src.height) == (raster.width, raster.height)
        )
        if same:
            return src
        return WarpedVRT(
            src,
            crs=raster.crs,
            transform=raster.transform,
            width=raster.width,
            height=raster.height,
            resampling=Resampling.nearest,
            nodata=0,
        )


def read_label_raster(path: str | Path) -> RasterLabels:
    """Open a classified raster as labels after checking it has a CRS and a single integer band."""
    path = Path(path)
    with open_raster(path) as src:
        source = describe(src)
        if src.count != 1:
            raise SparsecoverError(
                f"{path}: a label raster must have one band (class values), it has {src.count}"
            )
        names, colors = read_raster_classes(src)
    return RasterLabels(path=path, source=source, names=names, colors=colors)


def label_window(reader, window: Window, path: Path) -> np.ndarray:
    """Class values of ``window`` as uint8 (0 = unlabelled), refusing non-integer or out-of-range values."""
    try:
        values = read_padded(reader, window, 1, dtype="float64")
        valid = read_padded(reader, window, 1, masks=True) > 0
    except RasterioError as exc:
        raise SparsecoverError(f"{path}: cannot read labels ({_first_line(exc)})") from None
    values[~valid | ~np.isfinite(values)] = 0
    if np.any(values < 0) or np.any(values > MAX_CLASS):
        bad = values[(values < 0) | (values > MAX_CLASS)][0]
        raise SparsecoverError(f"{path}: label value {bad:g} is outside 0..{MAX_CLASS} (0 = unlabelled)")
    if np.any(np.mod(values, 1) != 0):
        bad = values[np.mod(values, 1) != 0][0]
        raise SparsecoverError(f"{path}: label value {bad:g} is not an integer class value")
    return values.astype(np.uint8)


def region_groups(labels: np.ndarray, first_id: int) -> tuple[np.ndarray, int]:
    """Number the connected regions of each class in a block (8-connectivity) from ``first_id``.

    Returns the uint32 group image (0 where unlabelled) and the next free id.
    """
    groups = np.zeros(labels.shape, dtype=np.uint32)
    next_id = first_id
    structure = np.ones((3, 3), dtype=bool)
    for value in np.unique(labels):
        if value == 0:
            continue
        regions, count = ndimage.label(labels == value, structure=structure)
        inside = regions > 0
        groups[inside] = regions[inside].astype(np.uint32) + (next_id - 1)
        next_id += count
    return groups, next_id
