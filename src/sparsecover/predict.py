"""`sparsecover classify`: a raster -> classified GeoTIFF, tile by tile, with bounded memory.

Each output block ("core") is predicted from an input tile that extends ``padding`` pixels past it
on every side (reading past the raster's edge gives nodata), and only the core is kept: every output
pixel comes from exactly one tile with at least ``padding`` pixels of context, so tile edges leave no
seams. Cores are written as soon as they are predicted; nothing of scene size is ever allocated.

The output is a tiled, deflate-compressed GeoTIFF on the input's grid: uint8 class values as the user
defined them, 0 = nodata (input nodata), an embedded colour table, class names in the metadata, and
overviews. It is written to a hidden temporary file and renamed when complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window

from .data import Normalisation
from .errors import SparsecoverError, warn
from .model import build_model
from .progress import track
from .raster import RasterSource, describe, gdal_env, open_raster, read_window

MULTIPLE = 32  # U-Net encoders downsample 5 times: tile sides must be multiples of 32


@dataclass
class LoadedModel:
    """A trained network with everything inference needs from model.json."""

    meta: dict
    network: torch.nn.Module
    normalisation: Normalisation

    @property
    def class_values(self) -> list[int]:
        return [c["value"] for c in self.meta["classes"]]

    @property
    def band_indexes(self) -> list[int]:
        return [b["source_index"] for b in self.meta["bands"]]


def network_from(meta: dict, weights: bytes) -> torch.nn.Module:
    """Rebuild the network that model.json describes and load its safetensors weights."""
    from safetensors.torch import load as load_safetensors

    network = build_model(meta["input_channels"], len(meta["classes"]), meta["encoder"], meta["architecture"])
    try:
        network.load_state_dict(load_safetensors(weights))
    except Exception as exc:
        raise SparsecoverError(f"weights do not match model.json ({str(exc).splitlines()[0]})") from None
    return network.eval()


def load_model(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Rebuild a trained network, without the training data, from a ``.sparsecover`` package, a
    training run folder or its ``model/`` folder."""
    from .package import MODEL_JSON, WEIGHTS, _model_folder, read_package

    path = Path(path)
    if path.is_file():
        meta, members = read_package(path)
        weights = members[WEIGHTS]
    else:
        if not path.exists():
            raise SparsecoverError(f"{path}: model not found")
        folder = _model_folder(path)
        meta, weights = json.loads((folder / MODEL_JSON).read_text()), (folder / WEIGHTS).read_bytes()
    if int(str(meta.get("schema_version", 0)).split(".")[0]) > 1:
        raise SparsecoverError(f"{path}: model schema {meta['schema_version']} is newer than this sparsecover; upgrade it")
    norm = meta["normalisation"]
    normalisation = Normalisation(norm["low"], norm["high"], norm["mean"], norm["std"])
    return LoadedModel(meta, network_from(meta, weights).to(device), normalisation)


def check_contract(source: RasterSource, model: LoadedModel, sample: np.ndarray | None = None) -> list[str]:
    """Refuse what breaks the model's data contract (band count); warn where the input drifts.

    Drift checks: dtype, the median of each band against the training 1st-99th percentile range
    (outside it usually means another band order or scaling), resolution beyond a factor 2, and a
    CRS other than the training CRS. Returns the warnings it gave.
    """
    meta = model.meta
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


def band_sample(src, band_indexes: list[int], size: int = 512) -> list[np.ndarray]:
    """Valid values of each band from a decimated read (GDAL overviews or subsampling: bounded memory)."""
    scale = max(1, max(src.width, src.height) // size)
    shape = (len(band_indexes), max(1, src.height // scale), max(1, src.width // scale))
    data = src.read(band_indexes, out_shape=shape)
    masks = src.read_masks(band_indexes, out_shape=shape)
    valid = np.all(masks > 0, axis=0)
    return [band[valid] for band in data]


def check_raster(raster: str | Path, model: str | Path | LoadedModel) -> list[str]:
    """`sparsecover check`: the data contract of ``raster`` against ``model``, without classifying."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    with gdal_env(), open_raster(raster) as src:
        source = describe(src)
        sample = None
        if len(source.bands) == loaded.meta.get("source_band_count", len(loaded.meta["bands"])):
            sample = band_sample(src, loaded.band_indexes)
        return check_contract(source, loaded, sample)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SparsecoverError("--device cuda asked for, but no CUDA GPU is available; use --device auto or cpu")
    return torch.device(name)


def core_windows(width: int, height: int, core: int) -> list[Window]:
    return [Window(c, r, min(core, width - c), min(core, height - r))
            for r in range(0, height, core) for c in range(0, width, core)]


def classify_pixels(
    raster: str | Path,
    model: str | Path | LoadedModel,
    out: str | Path,
    tile_size: int = 512,
    padding: int = 32,
    batch_size: int = 4,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Classify ``raster`` with a trained model into a classified GeoTIFF at ``out``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise SparsecoverError(f"{out}: already exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise SparsecoverError(f"{out.parent}: output folder does not exist; create it first")
    if tile_size % MULTIPLE or tile_size <= 2 * padding or padding < 0:
        raise SparsecoverError(
            f"--tile-size must be a multiple of {MULTIPLE} and larger than 2 x --padding (got {tile_size}, {padding})"
        )
    torch_device = _device(device)
    loaded = model if isinstance(model, LoadedModel) else load_model(model, str(torch_device))
    loaded.network.to(torch_device)
    check_raster(raster, loaded)
    with open_raster(raster) as src:
        source = describe(src)
    classes = loaded.meta["classes"]
    lut = np.array([c["value"] for c in classes], dtype=np.uint8)
    core = tile_size - 2 * padding
    windows = core_windows(source.width, source.height, core)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial.tif", dir=out.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    profile = {
        "driver": "GTiff", "width": source.width, "height": source.height, "count": 1, "dtype": "uint8",
        "crs": source.crs, "transform": source.transform, "nodata": 0, "tiled": True, "blockxsize": 512,
        "blockysize": 512, "compress": "deflate", "predictor": 2, "bigtiff": "IF_SAFER",
    }
    try:
        with gdal_env(), rasterio.open(source.path) as src, rasterio.open(tmp, "w", **profile) as dst:
            batch: list[tuple[Window, np.ndarray, np.ndarray]] = []
            for window in track(windows, len(windows), f"classify {source.path.name}", progress):
                tile = Window(window.col_off - padding, window.row_off - padding, tile_size, tile_size)
                data, valid = read_window(src, tile, loaded.band_indexes)
                batch.append((window, loaded.normalisation.apply(data, valid), valid))
                if len(batch) == batch_size:
                    _predict_batch(batch, loaded, lut, padding, torch_device, dst)
                    batch = []
            if batch:
                _predict_batch(batch, loaded, lut, padding, torch_device, dst)
            dst.write_colormap(1, {c["value"]: tuple(int(c["color"][i : i + 2], 16) for i in (1, 3, 5)) + (255,)
                                   for c in classes})
            dst.update_tags(CLASS_NAMES=json.dumps({c["value"]: c["name"] for c in classes}),
                            MODEL=loaded.meta.get("encoder", ""))
            dst.set_band_description(1, "class")
        with rasterio.open(tmp, "r+") as dst:
            factors = [f for f in (2, 4, 8, 16, 32) if min(source.width, source.height) // f >= 64]
            if factors:
                dst.build_overviews(factors, Resampling.mode)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


@torch.inference_mode()
def _predict_batch(batch, loaded: LoadedModel, lut: np.ndarray, padding: int, device: torch.device, dst) -> None:
    images = torch.from_numpy(np.stack([b[1] for b in batch])).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = loaded.network(images)
    labels = logits.argmax(1).cpu().numpy()
    for (window, _, valid), label in zip(batch, labels):
        h, w = int(window.height), int(window.width)
        core = lut[label[padding : padding + h, padding : padding + w]]
        core[~valid[padding : padding + h, padding : padding + w]] = 0
        dst.write(core, 1, window=window)
