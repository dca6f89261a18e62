"""Label sources: polygons or points (any OGR vector) or a classified raster, validated and put on a
raster's grid. Export reads its training labels and evaluate its reference through the same sources:
:func:`read_labels` opens any of them, ``on_raster`` binds one to a raster's grid, and the bound
grid's ``window`` gives the class values (and spatial groups) of any window.

Every labelled pixel also gets a *spatial group*: the polygon it came from, or, for a classified raster,
the connected region of one class inside a block. Training splits by group so that a validation
pixel never shares a polygon (or region) with a training pixel, however much the chips overlap.

Class value 0 is reserved for "unlabelled / NoData" (DESIGN invariant); classes are 1..255 so that
label chips fit in uint8.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
from rasterio import features
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from scipy import ndimage
from shapely import make_valid
from shapely.geometry import box

from .classes import read_raster_classes
from .errors import SparsecoverError, warn
from .raster import CREATE_LOCK, RasterSource, ThreadHandles, _bounds, _first_line, describe, open_raster, read_padded

VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".parquet", ".geoparquet", ".gml", ".kml", ".sqlite"}

MAX_CLASS = 255


class LabelGrid(Protocol):
    """A label source bound to one raster's grid (see ``on_raster``)."""

    gives_groups: bool  # True: ``window`` returns each pixel's group; False: the caller numbers regions

    def window(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """Class values (uint8, 0 = unlabelled) of ``window``, and each pixel's spatial group (uint32,
        0 = none) where the source knows it (a feature's id), else None."""

    def close(self) -> None:
        """Release what reading opened."""


class LabelSource(Protocol):
    """Labels of any kind, as export and evaluate use them."""

    path: Path
    names: dict[int, str]  # class names the source carries
    colors: dict[int, str]  # class colours the source carries

    @property
    def kind(self) -> str:
        """"polygons", "points" or "raster": what dataset.json and metrics.json record."""

    def class_values(self) -> list[int] | None:
        """The classes the source declares, or None where only reading the pixels tells (a raster)."""

    def on_raster(self, raster: RasterSource) -> LabelGrid:
        """The source on ``raster``'s grid; one clear error when it does not overlap the raster."""


@dataclass
class VectorLabels:
    """Validated label polygons or points (in their own CRS) with a class value per feature.

    A point labels the pixel under it; a polygon every pixel it touches. Each feature is a spatial
    group of its own.
    """

    path: Path
    frame: gpd.GeoDataFrame  # columns: geometry, class_value, group
    class_field: str
    names: dict[int, str]
    colors: dict[int, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "points" if self.frame.geom_type.isin(["Point", "MultiPoint"]).all() else "polygons"

    def class_values(self) -> list[int]:
        return sorted(set(self.frame["class_value"].tolist()))

    def on_raster(self, raster: RasterSource) -> VectorGrid:
        """The features reprojected to the raster's CRS, those outside it dropped (with a warning).

        Each kept feature keeps ``group``: its 1-based position in the file, stable across rasters.
        """
        frame = self.frame.to_crs(raster.crs) if self.frame.crs != raster.crs else self.frame
        inside = frame.intersects(box(*raster.bounds))
        if not inside.any():
            raise SparsecoverError(
                f"{self.path}: no {self.kind[:-1]} overlaps {raster.path.name} "
                f"(raster bounds {_fmt_bounds(raster.bounds)} in {raster.crs.to_string()}, "
                f"{self.kind} {_fmt_bounds(tuple(frame.total_bounds))}); check both files cover the same area"
            )
        outside = int((~inside).sum())
        if outside:
            warn(f"{self.path}: {outside} of {len(frame)} {self.kind} lie outside {raster.path.name}; ignored")
        return VectorGrid(frame[inside], raster.transform)


class VectorGrid:
    """Features burnt window by window: what export's chips and evaluate's windows both read."""

    gives_groups = True

    def __init__(self, frame: gpd.GeoDataFrame, transform) -> None:
        self.frame = frame
        self.transform = transform
        self._class_of = np.zeros(int(frame["group"].max()) + 1, dtype=np.uint8)  # group -> class
        self._class_of[frame["group"].to_numpy()] = frame["class_value"].to_numpy()

    def window(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        groups = rasterize_groups(self.frame, window, self.transform)
        return self._class_of[groups], groups

    def close(self) -> None:
        pass


def _fmt_bounds(bounds: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in bounds) + ")"


def is_vector(path: Path) -> bool:
    return path.suffix.lower() in VECTOR_SUFFIXES or path.is_dir()


def read_labels(paths: str | Path | list[Path], class_field: str | None = None, name_field: str | None = None,
                what: str = "label file") -> LabelSource:
    """Open labels of any kind: vector files (polygons or points, several read as one) or one class raster.

    ``what`` names the file in errors ("label file", "reference"). Vectors need ``class_field``.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise SparsecoverError(f"no {what} given")
    rasters = [p for p in paths if not is_vector(p)]
    if rasters and len(paths) > 1:
        raise SparsecoverError(f"{rasters[0]}: only vector files can be combined; pass one label raster alone")
    if rasters:
        return read_label_raster(paths[0])
    if class_field is None:
        raise SparsecoverError(f"{paths[0]}: pass --class-field naming the integer class field")
    return read_vector_files(paths, class_field, name_field, what)


def read_label_file(path: Path, what: str = "label file") -> gpd.GeoDataFrame:
    """Any vector file, read, with a CRS (one line naming the file and ``what`` it is otherwise)."""
    if not path.exists():
        raise SparsecoverError(f"{path}: {what} not found; check the path")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise SparsecoverError(f"{path}: cannot read the {what} ({_first_line(exc)})") from None
    if frame.crs is None:
        raise SparsecoverError(
            f"{path}: the {what} has no CRS; assign one (e.g. `ogr2ogr -a_srs EPSG:XXXX out.gpkg {path.name}`)"
        )
    return frame


def read_vectors(path: str | Path, class_field: str, name_field: str | None = None,
                 what: str = "label file") -> VectorLabels:
    """Read and validate labelled features: CRS present, class field integer in 1..255, geometry valid."""
    path = Path(path)
    frame = read_label_file(path, what)
    if path.suffix.lower() == ".shp" and not any(path.with_suffix(s).exists() for s in (".dbf", ".DBF")):
        raise SparsecoverError(f"{path}: its attribute table {path.with_suffix('.dbf').name} is missing (a Shapefile "
                               "keeps its fields there); copy it beside the .shp")
    if len(frame) == 0:
        raise SparsecoverError(f"{path}: {what} holds no features; draw some polygons first")
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
    return VectorLabels(path=path, frame=frame, class_field=class_field, names=names)


def read_vector_files(paths: list[Path], class_field: str, name_field: str | None = None,
                      what: str = "label file") -> VectorLabels:
    """Several label files read as one (e.g. the first polygons and the squares of `suggest`, once
    labelled): each validated by :func:`read_vectors`, their features numbered on as groups."""
    parts = [read_vectors(p, class_field, name_field, what) for p in paths]
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
    return VectorLabels(path=parts[0].path, frame=frame, class_field=class_field, names=names)


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
    kind = "raster"

    def class_values(self) -> None:
        return None

    def on_raster(self, raster: RasterSource) -> RasterGrid:
        """The class raster read on ``raster``'s grid (warped by nearest neighbour where grids differ)."""
        bounds = transform_bounds(self.source.crs, raster.crs, *self.source.bounds)
        r = raster.bounds
        if bounds[0] >= r[2] or bounds[2] <= r[0] or bounds[1] >= r[3] or bounds[3] <= r[1]:
            raise SparsecoverError(
                f"{self.path}: does not overlap {raster.path.name}; check both cover the same area"
            )
        return RasterGrid(self, raster)

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


class RasterGrid:
    """A class raster on another raster's grid, one open dataset per reading thread."""

    gives_groups = False

    def __init__(self, labels: RasterLabels, raster: RasterSource) -> None:
        self.labels = labels
        self.raster = raster
        self._handles = ThreadHandles()

    def window(self, window: Window) -> tuple[np.ndarray, None]:
        reader = self._handles.get(self.labels.path, lambda _: self.labels.reader(self.raster))
        return label_window(reader, window, self.labels.path), None

    def close(self) -> None:
        self._handles.close()


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
