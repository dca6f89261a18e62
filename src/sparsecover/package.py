"""The model package (``.sparsecover``) made from a run, and the model's ONNX and Esri exports.

The package is one self-describing zip file: ``model.json`` (everything inference and a reader need:
architecture, bands, normalisation, classes with names and colours, tile size, padding, training
summary and metrics, versions, and the sha256 of every other member), ``weights.safetensors``, and
optionally ``model.onnx`` with its Esri model definition ``model.emd``. :mod:`sparsecover.modelfile`
reads and writes it; loading validates it: a truncated zip, a missing member, a checksum that does
not match or a newer schema each stop with one line.

The ONNX graph takes *raw* band values (float32, N x bands x H x W, any H and W that are multiples of
32) and returns class probabilities (N x classes x H x W): the percentile clip and standardisation
are inside the graph, so any runtime gets the same numbers as sparsecover. For QGIS's Deepness
plugin, which scales 8-bit input to 0..1 and then standardises with the ``standardization_mean`` /
``standardization_std`` metadata, those are set to 0 and 1/255 so the graph receives the raw values.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import SparsecoverError
from .modelfile import EMD, ONNX, SUFFIX, WEIGHTS, ModelJson, open_model, write_package
from .staging import write_into_place

if TYPE_CHECKING:
    import torch


def save_package(source: str | Path, out: str | Path, onnx: bool = False, overwrite: bool = False) -> Path:
    """Write the package file ``out`` from a run folder, its ``model/`` folder or another package."""
    source, out = Path(source), Path(out)
    if out.suffix != SUFFIX:
        out = out.with_name(out.name + SUFFIX)
    if out.exists() and not overwrite:
        raise SparsecoverError(f"{out}: already exists; pass --overwrite to replace it")
    meta, weights = open_model(source)
    members = {WEIGHTS: weights}
    if onnx:
        from .model import network_from

        members[ONNX] = onnx_bytes(meta, network_from(meta, weights))
        members[EMD] = json.dumps(esri_definition(meta, ONNX), indent=1).encode()
    return write_package(out, meta, members)


def deepness_metadata(meta: ModelJson) -> dict[str, str]:
    """The metadata keys QGIS Deepness reads for a segmentation model (values JSON-encoded)."""
    bands = meta["input_channels"]
    tile = int(meta["tile_size"])
    resolution = meta.get("resolution") or [None]
    values = {
        "model_type": "Segmentor",
        "class_names": {str(c["index"]): c["name"] for c in meta["classes"]},
        "tile_size": tile,
        "tiles_overlap": int(round(100 * 2 * int(meta["padding"]) / tile)),
        "standardization_mean": [0.0] * bands,
        "standardization_std": [1.0 / 255.0] * bands,
    }
    if resolution[0]:
        values["resolution"] = float(resolution[0]) * 100.0  # centimetres per pixel
    return {key: json.dumps(value) for key, value in values.items()}


def onnx_bytes(meta: ModelJson, network: torch.nn.Module) -> bytes:
    """Export to ONNX with dynamic batch and spatial size, raw-value input, and Deepness metadata."""
    import onnx
    import torch

    from .model import RawInputModel

    wrapped = RawInputModel(network.eval().cpu(), meta).eval()
    size = max(64, int(meta["tile_size"]) // 32 * 32)
    example = torch.zeros(1, meta["input_channels"], size, size)
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            wrapped, (example,), buffer, input_names=["image"], output_names=["probabilities"],
            dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                          "probabilities": {0: "batch", 2: "height", 3: "width"}},
            opset_version=17, dynamo=False,
        )
    model = onnx.load_from_string(buffer.getvalue())
    for key, value in {**deepness_metadata(meta), "sparsecover_model_json": json.dumps(meta)}.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(model)
    return model.SerializeToString()


def esri_definition(meta: ModelJson, model_file: str) -> dict:
    """An Esri model definition (.emd) for the ONNX model, with the fields ArcGIS users know."""
    return {
        "Framework": "ONNX",
        "ModelConfiguration": f"sparsecover_{meta['architecture']}",
        "ModelType": "ImageClassification",
        "ModelFile": model_file,
        "Description": f"sparsecover {meta['architecture']} ({meta['encoder']}), raw band values in, "
                       "class probabilities out",
        "ImageHeight": int(meta["tile_size"]),
        "ImageWidth": int(meta["tile_size"]),
        "ExtractBands": [b["source_index"] - 1 for b in meta["bands"]],
        "ModelPadding": int(meta["padding"]),
        "BatchSize": 4,
        "DataRange": [min(meta["normalisation"]["low"]), max(meta["normalisation"]["high"])],
        "Classes": [
            {"Value": c["value"], "Name": c["name"], "Color": [int(c["color"][i : i + 2], 16) for i in (1, 3, 5)]}
            for c in meta["classes"]
        ],
    }


def export_onnx(model: str | Path, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write ``model.onnx`` (and ``model.emd`` beside it) from a package, run or model folder."""
    from .model import network_from

    model = Path(model)
    meta, weights = open_model(model)
    out = Path(out) if out else model.with_suffix(".onnx") if model.is_file() else model / "model.onnx"
    if out.exists() and not overwrite:
        raise SparsecoverError(f"{out}: already exists; pass --overwrite to replace it")
    write_into_place(out, onnx_bytes(meta, network_from(meta, weights)))
    try:  # the pair or neither: an .onnx without its .emd looks finished to ArcGIS users
        write_into_place(out.with_suffix(".emd"), json.dumps(esri_definition(meta, out.name), indent=1))
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def onnx_session(data: bytes):
    """An onnxruntime session on all cores, for `--engine onnx` and the parity tests."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def describe_package(meta: ModelJson) -> list[tuple[str, str]]:
    """(label, text) lines for `sparsecover info MODEL`."""
    training = meta.get("training", {})
    metrics = training.get("validation_metrics") or {}
    lines = [
        ("model", f"{meta['architecture']} / {meta['encoder']}, {meta['input_channels']} bands -> "
                  f"{len(meta['classes'])} classes"
                  + (", pooled with a per-pixel spectral model" if meta.get("spectral") else "")
                  + (f", an ensemble of {meta['ensemble']}" if meta.get("ensemble", 1) > 1 else "")),
        ("bands", ", ".join(f"{b['name']} ({b['dtype']})" for b in meta["bands"])),
        # classify tiles by its own --tile-size / --padding; these are what ONNX and Esri runtimes get
        ("chips", f"{meta['tile_size']} px (ONNX / Esri tiles of that size, {meta['padding']} px padding)"),
        ("resolution", f"{meta['resolution'][0]:g}" if meta.get("resolution") else "unknown"),
    ]
    if training.get("epochs") is not None:  # absent from packages written by hand (no training record)
        lines.append(("trained", f"{training['epochs']} epochs, lr {training.get('lr', float('nan')):.3g}, "
                                 f"seed {training.get('seed')}"
                                 + (", then refit on every polygon" if training.get("refit") else "")))
    if meta.get("created"):
        lines.append(("created", f"{meta['created']} with sparsecover {meta.get('versions', {}).get('sparsecover')}"))
    if metrics:
        lines.append(("validation", f"accuracy {metrics['overall_accuracy']:.3f}, macro-F1 "
                                    f"{metrics['macro_f1']:.3f}, kappa {metrics['kappa']:.3f}"
                                    + (" (held-out polygons, before the refit)" if training.get("refit") else "")))
    if meta.get("members"):  # the package's files (not an ensemble's members: see "model")
        lines.append(("files", ", ".join(sorted(meta["members"]))))
    return lines


def probabilities_onnx(session, images: np.ndarray) -> np.ndarray:
    """Run an ONNX session on raw-value images (N, bands, H, W) -> probabilities."""
    return session.run(None, {"image": images.astype(np.float32)})[0]
