"""`sparsecover export`: raster(s) + labels -> a chip dataset (DESIGN artifact 1).

Three passes over each raster, all by windows:

1. *scan*: non-overlapping blocks; band statistics over valid pixels; labels burned (polygons) or
   read (classified raster) onto the raster grid, masked by imagery nodata, and written with their
   spatial-group ids to two scratch GeoTIFFs; class and group pixel counts.
2. *histogram* (float rasters only): percentiles need the global min/max first.
3. *chips*: every tile window at the stride; chips with a labelled pixel (or every chip holding a
   valid pixel, with ``all_tiles``) are written as image, label and group GeoTIFFs.

The dataset is assembled in a hidden sibling folder and renamed into place at the end, so a failure
never leaves a half-written dataset that looks finished.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from . import __version__
from .chips import DATASET_FILE, DATASET_FORMAT, DATASET_VERSION
from .classes import build_class_table
from .errors import SparsecoverError, warn
from .labels import LabelGrid, LabelSource, read_labels, region_groups
from .progress import track
from .raster import (
    GDAL_ERRORS,
    BandStatistics,
    RasterSource,
    ThreadHandles,
    _json_number,
    block_windows,
    create,
    describe,
    gdal_env,
    open_raster,
    read_padded,
    read_window,
    thread_pool,
    tile_offsets,
)
from .staging import check_output, staging_folder

MAX_CHIP_BYTES = 2**30  # one chip in memory; a mistyped --tile-size 100000 would allocate 37 GiB
BLOCK = 512  # scan-pass block size; also the block inside which raster-label regions are numbered


@dataclass
class _Scan:
    """Per-source results of the scan pass: the labels on the raster's grid and, where the source
    gives no groups (a class raster), the scratch files of labels and numbered regions."""

    grid: LabelGrid
    labels_path: Path | None = None
    groups_path: Path | None = None


def chip_fill_value(dtype: str, nodata: float | None) -> float:
    """The value written into image chips where the imagery is invalid: the source nodata if any."""
    if nodata is not None:
        return nodata
    kind = np.dtype(dtype).kind
    return float("nan") if kind == "f" else (0 if kind == "u" else int(np.iinfo(dtype).min))


def export_training_data(
    rasters: str | Path | list[str | Path],
    labels: str | Path | list[str | Path],
    out: str | Path,
    class_field: str | None = None,
    class_name_field: str | None = None,
    tile_size: int = 256,
    stride: int = 64,
    all_tiles: bool = False,
    class_colors: dict[int, str] | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
    class_names: dict[int, str] | None = None,
) -> Path:
    """Export image/label chips and ``dataset.json`` from rasters and labelled polygons or a classified raster.

    Like ArcGIS's "Export Training Data For Deep Learning" (Classified Tiles), but every pixel no label
    covers is 0, imagery nodata is never labelled, and each chip records the spatial groups (polygons
    or label regions) it holds, so training can split without leakage. ``labels`` may list several
    polygon files with the same class field (the first polygons and the squares labelled from
    `suggest`): they are read as one. Class names and colours come from the labels (a name field;
    a label raster's colour table and category names) unless ``class_names`` / ``class_colors``
    give them.
    """
    raster_paths = [Path(rasters)] if isinstance(rasters, (str, Path)) else [Path(r) for r in rasters]
    label_paths = [Path(labels)] if isinstance(labels, (str, Path)) else [Path(p) for p in labels]
    if not label_paths:
        raise SparsecoverError("export needs a label file (--labels)")
    out = Path(out)
    if not raster_paths:
        raise SparsecoverError("export needs at least one raster")
    if tile_size < 8 or stride < 1:
        raise SparsecoverError(f"tile size must be >= 8 and stride >= 1 (got {tile_size}, {stride})")
    check_output(out, overwrite)
    workers = workers or min(4, os.cpu_count() or 1)

    sources = []
    for path in raster_paths:
        with open_raster(path) as src:
            sources.append(describe(src))
    _check_same_bands(sources)
    chip_bytes = tile_size * tile_size * sources[0].pixel_bytes
    if chip_bytes > MAX_CHIP_BYTES:
        raise SparsecoverError(f"--tile-size {tile_size} makes chips of {chip_bytes / 2**30:.1f} GiB each (at most "
                               f"{MAX_CHIP_BYTES // 2**30} GiB); use the chip size the model trains on, e.g. 256")

    label_source = read_labels(label_paths, class_field, class_name_field)

    work = staging_folder(out)
    try:
        with gdal_env():
            dataset = _export(
                sources, label_source, work, tile_size, stride, all_tiles,
                class_names or {}, class_colors or {}, workers, progress,
            )
        dataset["labels"] = {
            "path": str(label_paths[0].resolve()),
            "paths": [str(p.resolve()) for p in label_paths],
            "kind": label_source.kind,
            "class_field": class_field,
            "class_name_field": class_name_field,
        }
        (work / DATASET_FILE).write_text(json.dumps(dataset, indent=1))
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(work, out)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if isinstance(exc, GDAL_ERRORS):
            raise SparsecoverError(f"{out}: writing the chips failed ({str(exc).splitlines()[0]}); is the disk full?") from None
        raise
    return out


def _check_same_bands(sources: list[RasterSource]) -> None:
    first = sources[0]
    for other in sources[1:]:
        if len(other.bands) != len(first.bands):
            raise SparsecoverError(
                f"{other.path}: has {len(other.bands)} bands but {first.path.name} has "
                f"{len(first.bands)}; rasters of one dataset need the same bands"
            )
        if other.dtype != first.dtype:
            raise SparsecoverError(
                f"{other.path}: dtype {other.dtype} differs from {first.path.name}'s {first.dtype}"
            )


def _export(
    sources: list[RasterSource],
    labels: LabelSource,
    work: Path,
    tile_size: int,
    stride: int,
    all_tiles: bool,
    class_names: dict[int, str],
    class_colors: dict[int, str],
    workers: int,
    progress: bool,
) -> dict:
    first = sources[0]
    names = [b.name for b in first.bands]
    stats = BandStatistics(len(names), first.dtype)
    scratch = work / ".scratch"
    scratch.mkdir()
    group_class: dict[int, int] = {}
    group_pixels: Counter = Counter()
    group_source: dict[int, int] = {}
    scans: list[_Scan | None] = []
    next_region = 1
    for index, source in enumerate(sources):
        try:
            grid = labels.on_raster(source)
        except SparsecoverError:
            if len(sources) == 1:
                raise
            warn(f"{labels.path}: no label overlaps {source.path.name}; it gives no chips")
            scans.append(None)
            continue
        scan, next_region = _scan(
            index, source, grid, scratch, stats, group_class, group_pixels,
            group_source, next_region, workers, progress,
        )
        scans.append(scan)
    if stats.count == 0:  # not the labels' fault: say so before blaming them
        where = sources[0].path if len(sources) == 1 else ", ".join(s.path.name for s in sources)
        raise SparsecoverError(f"{where}: no pixel has every band valid (all nodata or NaN); check the raster "
                               "and its nodata value")
    if not group_pixels:
        raise SparsecoverError(
            f"{labels.path}: no label falls on valid imagery (all labelled pixels are nodata or outside)"
        )
    if stats.needs_histogram_pass:
        for source in sources:
            _histogram_pass(source, stats, workers, progress)

    for sub in ("images", "labels", "groups"):
        (work / sub).mkdir()
    class_values = labels.class_values() or sorted(set(group_class.values()))
    class_table = build_class_table(class_values, {**labels.names, **class_names}, {**labels.colors, **class_colors})
    colormap = {c.value: (*c.rgb, 255) for c in class_table}
    fill = chip_fill_value(first.dtype, first.bands[0].nodata)
    chips = []
    for index, (source, scan) in enumerate(zip(sources, scans)):
        if scan is not None:
            chips += _chip_pass(
                index, source, scan, work, tile_size, stride, all_tiles, fill, colormap,
                workers, progress,
            )
            scan.grid.close()
    shutil.rmtree(scratch)
    if not chips:
        raise SparsecoverError("no chip holds a labelled, valid pixel; check labels and imagery overlap")

    class_pixels = Counter()
    for group, pixels in group_pixels.items():
        class_pixels[group_class[group]] += pixels
    for info in class_table:
        if class_pixels[info.value] == 0:
            warn(
                f"class {info.value} ({info.name}) has no labelled pixel on valid imagery; "
                "a model cannot learn it from this dataset"
            )
    return {
        "format": DATASET_FORMAT,
        "format_version": DATASET_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sparsecover_version": __version__,
        "sources": [
            {
                "path": str(s.path.resolve()),
                "crs": s.crs.to_wkt(),
                "transform": list(s.transform)[:6],
                "width": s.width,
                "height": s.height,
            }
            for s in sources
        ],
        "crs": first.crs.to_wkt(),
        "epsg": first.crs.to_epsg(),
        "resolution": list(first.resolution),
        "dtype": first.dtype,
        "nodata": _json_number(fill),
        "bands": [b.as_json() for b in first.bands],
        "classes": [c.as_json() for c in class_table],
        "tile_size": tile_size,
        "stride": stride,
        "all_tiles": all_tiles,
        "statistics": stats.result(names),
        "class_pixel_counts": {str(c.value): int(class_pixels[c.value]) for c in class_table},
        "groups": [
            {"id": int(g), "class": int(group_class[g]), "pixels": int(group_pixels[g]), "source": group_source[g]}
            for g in sorted(group_pixels)
        ],
        "chips": chips,
    }


def _scan(
    index: int,
    source: RasterSource,
    grid: LabelGrid,
    scratch: Path,
    stats: BandStatistics,
    group_class: dict[int, int],
    group_pixels: Counter,
    group_source: dict[int, int],
    next_region: int,
    workers: int,
    progress: bool,
) -> tuple[_Scan, int]:
    """Pass 1 over one raster: statistics, labels and groups on the grid, pixel counts.

    A source that gives no groups has its regions numbered here, block by block in order (so the
    numbering is the same however the threads run), and written to scratch files for the chip pass.
    """
    scan = _Scan(grid)
    profile = {
        "driver": "GTiff", "width": source.width, "height": source.height, "count": 1,
        "crs": source.crs, "transform": source.transform, "tiled": True, "blockxsize": 256,
        "blockysize": 256, "compress": "deflate", "nodata": 0,
    }
    handles = ThreadHandles()

    def work(window: Window):
        data, band_valid = read_window(handles.get(source.path), window, source.band_indexes)
        labels, groups = grid.window(window)
        labels[~band_valid.any(0)] = 0
        return window, data[:, band_valid.all(0)], labels, groups  # statistics from complete pixels

    windows = list(block_windows(source.width, source.height, BLOCK))
    with contextlib.ExitStack() as stack, thread_pool(workers, "sparsecover-export") as pool:
        if not grid.gives_groups:
            scan.labels_path, scan.groups_path = scratch / f"labels_{index}.tif", scratch / f"groups_{index}.tif"
            lab_dst = stack.enter_context(create(scan.labels_path, dtype="uint8", **profile))
            grp_dst = stack.enter_context(create(scan.groups_path, dtype="uint32", **profile))
        results = pool.map(work, windows)
        for window, pixels, labels, groups in track(
            results, len(windows), f"scan {source.path.name}", progress
        ):
            stats.add(pixels)
            if groups is None:
                groups, next_region = region_groups(labels, next_region)
            groups[labels == 0] = 0
            if scan.labels_path is not None:
                lab_dst.write(labels, 1, window=window)
                grp_dst.write(groups, 1, window=window)
            ids, first, counts = np.unique(groups[groups > 0], return_index=True, return_counts=True)
            classes = labels[groups > 0][first]
            for gid, cls, n in zip(ids.tolist(), classes.tolist(), counts.tolist()):
                group_class[gid] = cls
                group_pixels[gid] += n
                group_source.setdefault(gid, index)
    handles.close()
    return scan, next_region


def _histogram_pass(source: RasterSource, stats: BandStatistics, workers: int, progress: bool) -> None:
    handles = ThreadHandles()

    def work(window: Window) -> np.ndarray:
        data, band_valid = read_window(handles.get(source.path), window, source.band_indexes)
        return data[:, band_valid.all(0)]

    windows = list(block_windows(source.width, source.height, BLOCK))
    with thread_pool(workers, "sparsecover-export") as pool:
        for pixels in track(pool.map(work, windows), len(windows), f"histogram {source.path.name}", progress):
            stats.add_histogram(pixels)
    handles.close()


def _chip_pass(
    index: int,
    source: RasterSource,
    scan: _Scan,
    work_dir: Path,
    tile: int,
    stride: int,
    all_tiles: bool,
    fill: float,
    colormap: dict,
    workers: int,
    progress: bool,
) -> list[dict]:
    """Pass 3: write the chips of one raster; returns their dataset.json records."""
    handles = ThreadHandles()
    windows = [
        Window(col, row, tile, tile)
        for row in tile_offsets(source.height, tile, stride)
        for col in tile_offsets(source.width, tile, stride)
    ]
    base = {"driver": "GTiff", "width": tile, "height": tile, "crs": source.crs, "compress": "deflate"}

    def write(window: Window) -> dict | None:
        # Features are burnt on each chip's own window, so a chip equals its polygons rasterised there.
        if scan.labels_path is None:
            labels, groups = scan.grid.window(window)
        else:
            labels = read_padded(handles.get(scan.labels_path), window, 1)
            groups = read_padded(handles.get(scan.groups_path), window, 1)
        if not all_tiles and not labels.any():
            return None
        data, band_valid = read_window(handles.get(source.path), window, source.band_indexes)
        valid = band_valid.any(0)
        labels[~valid] = 0
        groups[~valid] = 0
        if not valid.any() or (not all_tiles and not labels.any()):
            return None
        data[~band_valid] = fill  # per band: a pixel missing one band keeps the others
        name = f"{index:02d}_{int(window.row_off):06d}_{int(window.col_off):06d}"
        transform = rasterio.windows.transform(window, source.transform)
        with create(
            work_dir / "images" / f"{name}.tif", count=data.shape[0], dtype=data.dtype,
            transform=transform, nodata=fill, photometric="MINISBLACK", **base,  # not RGB: a 4th band is no alpha
        ) as dst:
            dst.write(data)
            dst.descriptions = tuple(b.name for b in source.bands)
        with create(
            work_dir / "labels" / f"{name}.tif", count=1, dtype="uint8", transform=transform,
            nodata=0, **base,
        ) as dst:
            dst.write_colormap(1, colormap)  # before the pixels: GDAL cannot change the TIFF's photometric tag after
            dst.write(labels, 1)
        with create(
            work_dir / "groups" / f"{name}.tif", count=1, dtype="uint32", transform=transform,
            nodata=0, **base,
        ) as dst:
            dst.write(groups, 1)
        values, counts = np.unique(labels[labels > 0], return_counts=True)
        west, north = transform @ (0, 0)
        east, south = transform @ (tile, tile)
        return {
            "id": name,
            "image": f"images/{name}.tif",
            "label": f"labels/{name}.tif",
            "groups": f"groups/{name}.tif",
            "source": index,
            "window": [int(window.col_off), int(window.row_off), tile, tile],
            "bounds": [west, south, east, north],
            "group_ids": np.unique(groups[groups > 0]).tolist(),
            "class_pixels": {str(v): int(c) for v, c in zip(values.tolist(), counts.tolist())},
        }

    with thread_pool(workers, "sparsecover-export") as pool:
        records = [
            r
            for r in track(pool.map(write, windows), len(windows), f"chips {source.path.name}", progress)
            if r is not None
        ]
    handles.close()
    return records
