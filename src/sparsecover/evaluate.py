"""`sparsecover evaluate`: map accuracy of a classified raster against a reference, or of a model on
its validation split.

References: a raster (dense or sparse, 0 / nodata = no reference), polygons (burnt per window with a
class field) or points (each point scores the pixel under it), reprojected as needed; pixels inside
``exclude`` polygons (the training polygons, say) are left out. The classified raster is read window
by window, so memory does not grow with the scene. With a point sample, class areas are estimated
with 95 % confidence intervals by the stratified estimator of Olofsson et al. (2014), the map
classes being the strata.

Writes ``metrics.json``, ``confusion_matrix.csv`` and ``confusion_matrix.png`` into ``out``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio import features
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .classes import MAX_UNNAMED_CLASSES, read_raster_classes
from .errors import SparsecoverError
from .labels import VECTOR_SUFFIXES, _integer_classes
from .metrics import summarize
from .progress import track
from .raster import _bounds, block_windows, gdal_env, open_raster
from .runfolder import METRICS

Z95 = 1.959964


def _read_reference_vector(path: Path, class_field: str | None, crs) -> gpd.GeoDataFrame:
    if class_field is None:
        raise SparsecoverError(f"{path}: pass --class-field naming the reference class field")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as exc:
        raise SparsecoverError(f"{path}: cannot read reference ({str(exc).splitlines()[0]})") from None
    if frame.crs is None:
        raise SparsecoverError(f"{path}: reference has no CRS; assign one first")
    if class_field not in frame.columns:
        fields = ", ".join(c for c in frame.columns if c != "geometry")
        raise SparsecoverError(f"{path}: no field {class_field!r} (pass --class-field with one of: {fields})")
    values = _integer_classes(frame[class_field], path, class_field)
    return gpd.GeoDataFrame({"value": values}, geometry=frame.geometry, crs=frame.crs).to_crs(crs)


def _exclusion(path: Path | None, crs) -> gpd.GeoDataFrame | None:
    if path is None:
        return None
    if not path.exists():
        raise SparsecoverError(f"{path}: exclusion polygons not found; check the --exclude path")
    try:
        frame = gpd.read_file(path, engine="pyogrio")
    except Exception as exc:  # pyogrio's DataSourceError and kin: not a readable vector file
        raise SparsecoverError(f"{path}: cannot read the exclusion polygons ({str(exc).splitlines()[0]})") from None
    if frame.crs is None:
        raise SparsecoverError(f"{path}: exclusion polygons have no CRS; assign one first")
    return frame.to_crs(crs)


def _burn(frame: gpd.GeoDataFrame, column: str | None, window: Window, transform, shape) -> np.ndarray:
    win_transform = rasterio.windows.transform(window, transform)
    hits = frame.sindex.query(_box(win_transform, shape), predicate="intersects")
    if len(hits) == 0:
        return np.zeros(shape, dtype=np.uint8)
    subset = frame.iloc[np.sort(hits)]
    shapes = zip(subset.geometry, subset[column]) if column else ((g, 1) for g in subset.geometry)
    return features.rasterize(shapes, out_shape=shape, transform=win_transform, all_touched=True, dtype="uint8")


def _box(transform, shape):
    from shapely.geometry import box

    return box(*_bounds(transform, shape[1], shape[0]))


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
        if reference.suffix.lower() in VECTOR_SUFFIXES:
            frame = _read_reference_vector(reference, class_field, src.crs)
            if frame.geom_type.isin(["Point", "MultiPoint"]).all():
                counts, sample = _points(src, frame, excluded)
                kind = "points"
            else:
                counts, sample = _windows(src, lambda w, shape: _burn(frame, "value", w, src.transform, shape),
                                          excluded, progress), None
                kind = "polygons"
        else:
            with open_raster(reference) as ref:
                if ref.crs is None:
                    raise SparsecoverError(f"{reference}: reference raster has no CRS; assign one first")
                same = ref.crs == src.crs and ref.transform.almost_equals(src.transform) and ref.shape == src.shape
                reader = ref if same else WarpedVRT(ref, crs=src.crs, transform=src.transform, width=src.width,
                                                    height=src.height, resampling=Resampling.nearest)

                def read(window, shape):
                    data = reader.read(1, window=window, masked=True)
                    values = np.ma.filled(data.astype(np.float64), 0)
                    values[~np.isfinite(values) | (values < 0) | (values > 255)] = 0
                    return values.astype(np.uint8)

                counts, sample = _windows(src, read, excluded, progress), None
                kind = "raster"
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


def _windows(src, reference_reader, excluded, progress: bool) -> dict[tuple[int, int], int]:
    """(truth, predicted) -> pixel count over every window where both are labelled."""
    counts: dict[tuple[int, int], int] = {}
    windows = list(block_windows(src.width, src.height, 1024))
    for window in track(windows, len(windows), "evaluate", progress):
        shape = (int(window.height), int(window.width))
        predicted = src.read(1, window=window)
        truth = reference_reader(window, shape)
        keep = (truth > 0) & (predicted > 0)
        if excluded is not None:
            keep &= _burn(excluded, None, window, src.transform, shape) == 0
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
    for truth, pred in zip(frame["value"].to_numpy()[keep].tolist(), predicted[keep].tolist()):
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
    """metrics.json, confusion_matrix.csv and confusion_matrix.png."""
    from .plots import plot_confusion

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(summary, indent=1))
    names = [c["class"] for c in summary["per_class"]]
    with (out / "confusion_matrix.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["reference \\ predicted", *names, "total"])
        for name, row in zip(names, summary["confusion_matrix"]):
            writer.writerow([name, *row, sum(row)])
    plot_confusion(np.asarray(summary["confusion_matrix"]), names, out / "confusion_matrix.png")


def evaluate_run(run: str | Path, out: str | Path | None = None) -> dict:
    """A training run's (or package's) validation metrics, with the confusion matrix files."""
    run = Path(run)
    if run.is_file():
        from .modelfile import open_model

        summary = (open_model(run, with_weights=False)[0].get("training") or {}).get("validation_metrics")
    else:
        path = run / METRICS
        summary = json.loads(path.read_text()) if path.exists() else None
    if not summary:
        raise SparsecoverError(f"{run}: holds no validation metrics (trained with --val-fraction 0?)")
    write_outputs(summary, Path(out) if out else (run.parent if run.is_file() else run) / "evaluation")
    return summary
