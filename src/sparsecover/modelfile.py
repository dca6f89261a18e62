"""The model format: model.json beside weights.safetensors, in a folder or in a ``.sparsecover`` package.

This module is the one reader and writer of that format. A trained model lives in three places that
hold the same two files: a training run's ``model/`` folder, the run folder (which holds it), and the
package, a zip file that adds the sha256 of every other member to model.json. :func:`open_model`
takes any of the three, checks the schema once and returns model.json and, when asked, the weights;
:func:`write_model_folder` and :func:`write_package` are the only writers. What model.json holds is
described by :class:`ModelJson` (and, key by key, in docs/model-package.md).

Kept free of PyTorch: `sparsecover check` and `info` read model.json without loading a network.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import Any, TypedDict

from .errors import SparsecoverError
from .runfolder import RunFolder
from .staging import staging_file

SUFFIX = ".sparsecover"
#: model.json's schema major version this sparsecover reads and writes; a newer one is refused
SCHEMA_MAJOR = 1
MODEL_JSON, WEIGHTS, ONNX, EMD = "model.json", "weights.safetensors", "model.onnx", "model.emd"


class BandSpec(TypedDict):
    name: str
    source_index: int  # 1-based band of the rasters the model reads
    dtype: str
    nodata: float | None


class ClassSpec(TypedDict):
    index: int  # the network's output channel
    value: int  # the value written in class maps
    name: str
    color: str  # "#rrggbb"


class ModelJson(TypedDict, total=False):
    """The keys of model.json (schema 1). Readers use ``get`` for those added after the first packages:
    ``encoder_depth`` (5 before it existed), ``spectral`` (False), ``ensemble`` (1), ``decision_offsets``
    (none) and ``members`` (packages only)."""

    schema_version: int
    architecture: str  # "unet" | "unetplusplus" | "fpn" | "deeplabv3plus"
    encoder: str  # the backbone, e.g. "resnet34"
    encoder_depth: int
    spectral: bool  # pooled with a per-pixel spectral model (model.PooledNetwork)
    ensemble: int  # networks whose probabilities are averaged (1: a single network)
    input_channels: int
    classes: list[ClassSpec]
    ignore_classes: list[int]
    class_field: str | None  # of the training polygons (None: raster labels or Esri chips)
    bands: list[BandSpec]
    source_band_count: int  # bands of the rasters the chips came from
    nodata: float | None
    normalisation: dict[str, list[float]]  # low, high (percentile clip), mean, std per band
    decision_offsets: list[float]  # added to the logits (model.decision_offsets)
    training_statistics: list[dict[str, Any]]
    tile_size: int
    padding: int
    resolution: list[float] | None
    crs: str | None  # WKT
    training: dict[str, Any]  # epochs, lr, seed, history, validation_metrics, refit, ...
    dataset: dict[str, Any]  # the chip dataset's paths, kind and sha256
    versions: dict[str, str]
    created: str  # ISO 8601, UTC
    members: dict[str, str]  # package member -> sha256 (packages only)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_schema(meta: dict, path: Path) -> dict:
    major = int(str(meta.get("schema_version", 0)).split(".")[0])
    if major > SCHEMA_MAJOR:
        raise SparsecoverError(
            f"{path}: model schema {meta['schema_version']} is newer than this sparsecover reads "
            f"({SCHEMA_MAJOR}); upgrade sparsecover"
        )
    return meta


def model_folder(path: Path) -> Path:
    """The folder holding model.json and the weights: ``path`` itself or a run's ``model/``."""
    run = RunFolder(path)
    folder = run.model if (run.model / MODEL_JSON).exists() else path
    if not (folder / MODEL_JSON).exists() or not (folder / WEIGHTS).exists():
        raise SparsecoverError(f"{path}: not a training run or model folder (no {MODEL_JSON} + {WEIGHTS})")
    return folder


def read_package(path: str | Path, wanted: Collection[str] | None = None) -> tuple[ModelJson, dict[str, bytes]]:
    """model.json and the verified members of a package (those in ``wanted``; all by default); every
    kind of damage is a one-line error. Classify wants only the weights: reading and hashing the
    ONNX member too doubled the time to load a ResNet34 package."""
    path = Path(path)
    if not path.exists():
        raise SparsecoverError(f"{path}: model package not found")
    _check_zip_signature(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if MODEL_JSON not in names:
                raise SparsecoverError(f"{path}: not a sparsecover model package (no {MODEL_JSON} inside)")
            meta = _check_schema(json.loads(archive.read(MODEL_JSON)), path)
            members = {}
            for name, digest in meta.get("members", {}).items():
                if wanted is not None and name not in wanted:
                    continue
                if name not in names:
                    raise SparsecoverError(f"{path}: member {name} is missing; the package is incomplete")
                data = archive.read(name)
                if _sha256(data) != digest:
                    raise SparsecoverError(f"{path}: {name} does not match its checksum; the package is damaged")
                members[name] = data
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile, ValueError, KeyError) as exc:
        raise SparsecoverError(
            f"{path}: not a readable model package ({exc}); the file may be truncated: copy it again"
        ) from None
    if WEIGHTS not in meta.get("members", {}):
        raise SparsecoverError(f"{path}: member {WEIGHTS} is missing; the package is incomplete")
    return meta, members


#: The first bytes of files a model is mistaken for: rasters given where the model goes.
RASTER_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+", b"<VRTDataset")


def _check_zip_signature(path: Path) -> None:
    """Refuse a file that is no zip archive at all, saying what it looks like: a raster where the
    model goes (arguments swapped) is a different mistake from a package cut short."""
    with path.open("rb") as fh:
        head = fh.read(16)
    if head.startswith(b"PK"):
        return
    if head.lstrip().startswith(RASTER_SIGNATURES):
        raise SparsecoverError(f"{path}: is a raster, not a model package; the model comes after the raster(s), "
                               "e.g. `sparsecover classify scene.tif model.sparsecover`")
    raise SparsecoverError(f"{path}: not a model package (not a zip archive); pass a .sparsecover package or a "
                           "run folder")


def open_model(path: str | Path, with_weights: bool = True) -> tuple[ModelJson, bytes | None]:
    """model.json (schema checked) and, if asked, the weights of a package, a run or a model folder."""
    path = Path(path)
    if path.is_file():
        meta, members = read_package(path, wanted={WEIGHTS} if with_weights else ())
        return meta, members.get(WEIGHTS)
    if not path.exists():
        raise SparsecoverError(f"{path}: model not found")
    folder = model_folder(path)
    meta = _check_schema(json.loads((folder / MODEL_JSON).read_text()), path)
    return meta, (folder / WEIGHTS).read_bytes() if with_weights else None


def weights_sha256(meta: ModelJson, weights: bytes) -> str:
    """What the network is (classify --resume refuses another model at the same path): a package
    records it, a folder's weights are hashed."""
    return meta.get("members", {}).get(WEIGHTS) or _sha256(weights)


def write_model_folder(folder: Path, meta: ModelJson, weights: bytes) -> None:
    """The weights (safetensors bytes) and model.json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / WEIGHTS).write_bytes(weights)
    (folder / MODEL_JSON).write_text(json.dumps(meta, indent=1))


def write_package(out: Path, meta: ModelJson, members: dict[str, bytes]) -> Path:
    """The package zip: model.json with every member's sha256, then the members; written beside
    ``out`` and renamed into place, so that a reader never sees half a package."""
    meta = {**meta, "members": {name: _sha256(data) for name, data in members.items()}}
    tmp = staging_file(out)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MODEL_JSON, json.dumps(meta, indent=1))
            for name, data in members.items():
                # weights barely compress (7 %) and deflate costs ~0.3 s at every load: store them
                archive.writestr(name, data, compress_type=zipfile.ZIP_STORED if name in (WEIGHTS, ONNX) else None)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
