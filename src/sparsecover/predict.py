"""A trained model at inference time: loading it (package, run or model folder) and checking an input
raster against its data contract before anything is classified (:mod:`sparsecover.classify`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from .errors import SparsecoverError, warn
from .modelfile import ModelJson, open_model, weights_sha256
from .raster import RasterSource, ThreadHandles, describe, gdal_env, open_raster, read_window, thread_pool

if TYPE_CHECKING:  # PyTorch is imported where a network is built: `sparsecover check` needs none
    import torch

    from .data import Normalisation


@dataclass
class LoadedModel:
    """A trained network with everything inference needs from model.json."""

    meta: ModelJson
    network: torch.nn.Module
    normalisation: Normalisation
    weights_sha256: str = ""  # what the network is: classify --resume refuses another model at the same path

    @property
    def class_values(self) -> list[int]:
        return [c["value"] for c in self.meta["classes"]]

    @property
    def band_indexes(self) -> list[int]:
        return band_indexes(self.meta)


def band_indexes(meta: ModelJson) -> list[int]:
    """The raster bands (1-based) a model reads, in its input order."""
    return [b["source_index"] for b in meta["bands"]]


def load_meta(path: str | Path) -> ModelJson:
    """model.json of a ``.sparsecover`` package, a training run or its ``model/`` folder, without the
    weights: the data contract needs no network (`sparsecover check`, and classify checks the raster
    while the network loads)."""
    return open_model(path, with_weights=False)[0]


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Rebuild a trained network, without the training data, from a ``.sparsecover`` package, a
    training run folder or its ``model/`` folder."""
    from .data import Normalisation
    from .model import network_from

    meta, weights = open_model(path)
    norm = meta["normalisation"]
    normalisation = Normalisation(norm["low"], norm["high"], norm["mean"], norm["std"])
    return LoadedModel(meta, network_from(meta, weights).to(device), normalisation, weights_sha256(meta, weights))


def check_contract(source: RasterSource, meta: ModelJson, sample: list[np.ndarray] | None = None) -> list[str]:
    """Refuse what breaks the model's data contract (band count); warn where the input drifts.

    Drift checks: dtype, the median of each band against the training 1st-99th percentile range
    (outside it usually means another band order or scaling), resolution beyond a factor 2, and a
    CRS other than the training CRS. Returns the warnings it gave.
    """
    expected = meta.get("source_band_count", len(meta["bands"]))
    if len(source.bands) != expected:
        raise SparsecoverError(
            f"{source.path}: has {len(source.bands)} bands but the model was trained on {expected}-band "
            f"imagery (using {', '.join(b['name'] for b in meta['bands'])}); "
            "pass a raster with the training bands in the training order"
        )
    notes = []
    trained = {b["dtype"] for b in meta["bands"]}
    if source.dtype not in trained:
        notes.append(f"dtype {source.dtype} differs from the training data's {', '.join(sorted(trained))}")
    if sample is not None:
        for band, values, low, high in zip(meta["bands"], sample, meta["normalisation"]["low"],
                                           meta["normalisation"]["high"]):
            if values.size and not low <= float(np.median(values)) <= high:
                notes.append(
                    f"band {band['source_index']} ({band['name']}) has median {float(np.median(values)):g}, "
                    f"outside the training 1-99 % range {low:g}..{high:g}: check band order and scaling"
                )
    resolution = meta.get("resolution")
    if resolution:
        ratio = source.resolution[0] / resolution[0]
        if ratio > 2 or ratio < 0.5:
            notes.append(f"resolution {source.resolution[0]:g} is {ratio:.2g}x the training resolution "
                         f"{resolution[0]:g}; expect poorer results")
    if meta.get("crs"):
        from rasterio.crs import CRS

        if CRS.from_wkt(meta["crs"]) != source.crs:
            notes.append(f"CRS {source.crs.to_string()} differs from the training CRS (fine if the "
                         "resolution matches)")
    for note in notes:
        warn(f"{source.path}: {note}")
    return notes


def band_sample(src, band_indexes: list[int], grid: int = 8, size: int = 64) -> list[np.ndarray]:
    """Valid values of each band from a ``grid`` x ``grid`` lattice of small windows over the raster.

    Reads at most grid² x size² pixels whatever the raster's size: a decimated read
    (``out_shape``) of a raster without overviews, such as a VRT mosaic, decodes every pixel, which
    at hundreds of megapixels takes minutes. Each window still decodes whole source blocks, so rows
    are read in parallel, each thread with its own dataset (GDAL handles are not shared between
    threads).
    """
    rows = np.unique(np.linspace(0, max(src.height - size, 0), grid).astype(int))
    cols = np.unique(np.linspace(0, max(src.width - size, 0), grid).astype(int))

    handles = ThreadHandles()

    def read_row(row: int) -> list[tuple[np.ndarray, np.ndarray]]:
        own = handles.get(src.name)
        return [read_window(own, Window(int(col), int(row), min(size, src.width), min(size, src.height)), band_indexes)
                for col in cols]

    try:
        with thread_pool(min(len(rows), os.cpu_count() or 1), "sparsecover-sample") as pool:
            windows = [w for row in pool.map(read_row, rows) for w in row]
    finally:
        handles.close()
    return [np.concatenate([data[band][valid[band]] for data, valid in windows]) for band in range(len(band_indexes))]


def check_raster(raster: str | Path, model: str | Path | LoadedModel | dict) -> list[str]:
    """`sparsecover check`: the data contract of ``raster`` against ``model`` (a path, a loaded
    model or its model.json), without classifying."""
    meta = model.meta if isinstance(model, LoadedModel) else model if isinstance(model, dict) else load_meta(model)
    with gdal_env(), open_raster(raster) as src:
        source = describe(src)
        sample = None
        if len(source.bands) == meta.get("source_band_count", len(meta["bands"])):
            sample = band_sample(src, band_indexes(meta))
        return check_contract(source, meta, sample)


def refuse_unreadable(rasters: list[Path], model: Path) -> None:
    """Unreadable rasters and models refused in a fraction of a second, before PyTorch loads (seconds
    on 2 cores); the full checks (bands, dtype, values) follow where the model is used."""
    open_model(model, with_weights=False)
    for raster in rasters:
        with open_raster(raster) as src:
            describe(src)
