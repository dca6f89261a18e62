"""`sparsecover evaluate`: map accuracy of a classified raster against a reference, or of a model on
its validation split.

References are read by the label sources export reads training labels with (labels.read_labels): a
class raster (dense or sparse, 0 / nodata = no reference), polygons (burnt per window with a class
field) or points (each point scores the pixel under it), reprojected as needed; pixels inside
``exclude`` polygons (the training polygons, say) are left out. The classified raster is read window
by window, so memory does not grow with the scene. With a point sample, class areas are estimated
with 95 % confidence intervals by the stratified estimator of Olofsson et al. (2014), the map
classes being the strata.

Writes ``metrics.json``, ``confusion_matrix.csv`` and ``confusion_matrix.png`` into ``out``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio import features
from rasterio.windows import Window
from shapely.geometry import box

from .classes import MAX_UNNAMED_CLASSES, read_raster_classes
from .errors import SparsecoverError
from .labels import LabelGrid, read_label_file, read_labels
from .metrics import summarize
from .progress import track
from .raster import _bounds, block_windows, describe, gdal_env, open_raster
from .runfolder import RunFolder
from .staging import staging_folder

Z95 = 1.959964


def _exclusion(path: Path | None, crs) -> gpd.GeoDataFrame | None:
    return None if path is None else read_label_file(path, "exclusion polygons").to_crs(crs)


def _excluded(frame: gpd.GeoDataFrame, window: Window, transform, shape) -> np.ndarray:
    """Where ``window`` lies inside the exclusion polygons (touched pixels count, as for labels)."""
    win_transform = rasterio.windows.transform(window, transform)
    hits = frame.sindex.query(box(*_bounds(win_transform, shape[1], shape[0])), predicate="intersects")
    if len(hits) == 0:
        return np.zeros(shape, dtype=bool)
    shapes = ((g, 1) for g in frame.geometry.iloc[np.sort(hits)])
    return features.rasterize(shapes, out_shape=shape, transform=win_transform, all_touched=True, dtype="uint8") > 0


def evaluate_map(classified: str | Path, reference: str | Path, out: str | Path, class_field: str | None = None,
                 exclude: str | Path | None = None, overwrite: bool = True, progress: bool = True) -> dict:
    """Accuracy of ``classified`` against ``reference``; writes the evaluation files into ``out``."""
    classified, reference, out = Path(classified), Path(reference), Path(out)
    exclude = Path(exclude) if exclude else None
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SparsecoverError(f"{out}: already exists; pass --overwrite to replace it")
    with gdal_env(), open_raster(classified) as src:
        if src.crs is None:
            raise SparsecoverError(f"{classified}: classified raster has no CRS")
        if src.count != 1 or not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
            raise SparsecoverError(
                f"{classified}: not a class map ({src.count} band(s) of {src.dtypes[0]}); evaluate scores a "
                "single-band map of integer class values, as `classify` writes")
        names, _ = read_raster_classes(src)
        excluded = _exclusion(exclude, src.crs)
        truth = read_labels(reference, class_field, what="reference")
        kind = truth.kind
        if kind == "points":
            counts, sample = _points(src, truth.frame.to_crs(src.crs), excluded)
        else:
            grid = truth.on_raster(describe(src))
            try:
                counts, sample = _windows(src, grid, excluded, progress), None
            finally:
                grid.close()
        mapped = _mapped_pixels(src) if sample is not None else None
        pixel_area = abs(src.transform.a * src.transform.e)
    values = _values(counts, names)
    index = {v: i for i, v in enumerate(values)}
    matrix = np.zeros((len(values), len(values)), dtype=np.int64)
    for (truth, predicted), n in counts.items():
        matrix[index[truth], index[predicted]] += n
    if matrix.sum() == 0:
        raise SparsecoverError(
            f"{reference}: no reference pixel overlaps a classified pixel (check that both cover the same area)"
        )
    labels = [names.get(v, str(v)) for v in values]
    summary = summarize(matrix, labels)
    summary.update({
        "classified": str(classified.resolve()), "reference": str(reference.resolve()), "reference_kind": kind,
        "excluded": str(exclude.resolve()) if exclude else None, "class_values": values,
        "confusion_matrix": matrix.tolist(),
    })
    if sample is not None:
        summary["points"] = sample
        summary["area_estimates"] = area_estimates(matrix, [mapped.get(v, 0) for v in values], pixel_area, labels)
    write_outputs(summary, out)
    return summary


def _values(counts: dict, names: dict[int, str]) -> list[int]:
    seen = set(names)
    for truth, predicted in counts:
        seen.update((truth, predicted))
    seen.discard(0)
    return sorted(seen)


def _windows(src, reference: LabelGrid, excluded, progress: bool) -> dict[tuple[int, int], int]:
    """(truth, predicted) -> pixel count over every window where both are labelled."""
    counts: dict[tuple[int, int], int] = {}
    windows = list(block_windows(src.width, src.height, 1024))
    for window in track(windows, len(windows), "evaluate", progress):
        shape = (int(window.height), int(window.width))
        predicted = src.read(1, window=window)
        truth, _ = reference.window(window)
        keep = (truth > 0) & (predicted > 0)
        if excluded is not None:
            keep &= ~_excluded(excluded, window, src.transform, shape)
        if keep.any():
            pairs, n = np.unique(truth[keep].astype(np.int64) * 256 + predicted[keep], return_counts=True)
            for pair, c in zip(pairs.tolist(), n.tolist()):
                key = (pair // 256, pair % 256)
                counts[key] = counts.get(key, 0) + c
    return counts


def _points(src, frame: gpd.GeoDataFrame, excluded) -> tuple[dict, dict]:
    """Each point scores the classified pixel under it; points off the map or on nodata are counted."""
    coords = [(p.x, p.y) for p in frame.geometry]
    predicted = np.array([v[0] for v in src.sample(coords, indexes=1, masked=False)], dtype=np.int64)
    rows, cols = rasterio.transform.rowcol(src.transform, [c[0] for c in coords], [c[1] for c in coords])
    inside = (np.array(rows) >= 0) & (np.array(rows) < src.height) & (np.array(cols) >= 0) & (np.array(cols) < src.width)
    keep = inside & (predicted > 0)
    if excluded is not None:
        keep &= ~frame.geometry.within(excluded.union_all()).to_numpy()
    counts: dict[tuple[int, int], int] = {}
    for truth, pred in zip(frame["class_value"].to_numpy()[keep].tolist(), predicted[keep].tolist()):
        counts[(truth, pred)] = counts.get((truth, pred), 0) + 1
    sample = {"total": len(frame), "used": int(keep.sum()), "outside_or_nodata": int((~(inside & (predicted > 0))).sum())}
    return counts, sample


def map_classes(classified: str | Path) -> tuple[list[dict], str | None]:
    """Each class of a class map with its name, colour, pixels and share: what `sparsecover info
    MAP` shows, and the area in hectares where the CRS is in metres (else the unit is None).

    Pixels are counted window by window from the raster itself, so any single-band map of class
    values works (a reference map too, float or not); 0 and the nodata value are not classes.
    """
    refused = (f"{classified}: not a class map (one band of integer class values); info describes class "
               "maps, chip datasets and model packages")
    with gdal_env(), open_raster(classified) as src:
        if src.count != 1:
            raise SparsecoverError(refused)
        names, colours = read_raster_classes(src)
        counts = {v: n for v, n in _mapped_pixels(src).items() if v != src.nodata}
        # float maps holding class values are fine; without class names or colours, so many values
        # are more likely an image band than classes
        many = not names and not colours and len(counts) > MAX_UNNAMED_CLASSES
        if many or not all(float(v).is_integer() for v in counts):
            raise SparsecoverError(refused)
        counts = {int(v): n for v, n in counts.items()}
        metres = src.crs is not None and src.crs.is_projected and src.crs.linear_units in ("metre", "meter")
        hectares = abs(src.transform.a * src.transform.e) / 1e4 if metres else None
    total = sum(counts.values()) or 1
    rows = [{"value": v, "name": names.get(v, ""), "color": colours.get(v, ""),
             "pixels": n, "share": n / total, "area": n * hectares if hectares else None}
            for v, n in sorted(counts.items())]
    return rows, "ha" if hectares else None


def _mapped_pixels(src) -> dict[int, int]:
    counts: dict[int, int] = {}
    for window in block_windows(src.width, src.height, 1024):
        values, n = np.unique(src.read(1, window=window), return_counts=True)
        for v, c in zip(values.tolist(), n.tolist()):
            if v:
                counts[v] = counts.get(v, 0) + c
    return counts


def area_estimates(matrix: np.ndarray, mapped_pixels: list[int], pixel_area: float, names: list[str]) -> list[dict]:
    """Olofsson et al. (2014) stratified estimator: rows (map strata) of ``matrix`` are the map classes
    here transposed (our rows are reference), weights from mapped areas; areas with 95 % CI."""
    n = np.asarray(matrix, dtype=np.float64).T  # n[i, j]: map class i, reference class j
    mapped = np.asarray(mapped_pixels, dtype=np.float64)
    total = mapped.sum()
    weights = mapped / total if total else mapped
    row_totals = n.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(row_totals[:, None] > 0, n / row_totals[:, None], 0.0)
    proportions = (weights[:, None] * share).sum(axis=0)
    variance_terms = np.where(
        row_totals[:, None] > 1, weights[:, None] ** 2 * share * (1 - share) / np.maximum(row_totals[:, None] - 1, 1), 0.0
    )
    se = np.sqrt(variance_terms.sum(axis=0))
    area_total = total * pixel_area
    result = []
    for j, name in enumerate(names):
        result.append({
            "class": name,
            "mapped_area": float(mapped[j] * pixel_area),
            "estimated_area": float(proportions[j] * area_total),
            "ci95": float(Z95 * se[j] * area_total),
            "estimated_proportion": float(proportions[j]),
        })
    return result


def write_outputs(summary: dict, out: Path) -> None:
    """metrics.json, confusion_matrix.csv and confusion_matrix.png, written in a hidden folder beside
    ``out`` and then moved into it: a full disk leaves the three whole or none of them (``out`` may be
    a folder with other files: only these three are replaced)."""
    from .plots import plot_confusion

    out.parent.mkdir(parents=True, exist_ok=True)
    work = staging_folder(out)
    try:
        (work / "metrics.json").write_text(json.dumps(summary, indent=1))
        names = [c["class"] for c in summary["per_class"]]
        with (work / "confusion_matrix.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["reference \\ predicted", *names, "total"])
            for name, row in zip(names, summary["confusion_matrix"]):
                writer.writerow([name, *row, sum(row)])
        plot_confusion(np.asarray(summary["confusion_matrix"]), names, work / "confusion_matrix.png")
        if not out.exists():
            os.replace(work, out)
            return
        for name in ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png"):
            os.replace(work / name, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def evaluate_run(run: str | Path, out: str | Path | None = None) -> dict:
    """A training run's (or package's) validation metrics, with the confusion matrix files."""
    run = Path(run)
    if run.is_file():
        from .modelfile import open_model

        summary = (open_model(run, with_weights=False)[0].get("training") or {}).get("validation_metrics")
    else:
        summary = RunFolder(run).validation_metrics()
    if not summary:
        raise SparsecoverError(f"{run}: holds no validation metrics (trained with --val-fraction 0?)")
    write_outputs(summary, Path(out) if out else (run.parent if run.is_file() else run) / "evaluation")
    return summary
