"""sparsecover: land-cover maps from multispectral imagery and a handful of labelled polygons.

The public API mirrors arcgis.learn's names so that its users feel at home::

    from sparsecover import export_training_data, prepare_data, UnetClassifier
    export_training_data("naip.tif", "labels.gpkg", "chips/", class_field="classvalue",
                         tile_size=256, stride=64)
    data = prepare_data("chips/", batch_size=8, imagery_type="naip")
    model = UnetClassifier(data, backbone="resnet34", ignore_classes=[0])
    model.fit(10)                      # lr=1e-3; lr=None runs the LR finder first
    model.per_class_metrics(); model.save("landcover")
    model.suggest("naip.tif", "to_label.gpkg", labels="labels.gpkg")  # where to label next
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import SparsecoverError, SparsecoverWarning

__version__ = "0.1.0"

#: Public name -> the module defining it, imported on first use (PEP 562): most of them pull in
#: PyTorch, and `sparsecover --help` or `sparsecover stack` waited ~5 s for that before printing.
_LAZY = {
    "TrainingData": "api",
    "UnetClassifier": "api",
    "prepare_data": "api",
    "ChipDataset": "chips",
    "open_chip_dataset": "chips",
    "classify_pixels": "classify",
    "classify_rasters": "classify",
    "export_training_data": "export",
    "load_model": "predict",
    "stack_bands": "stack",
    "suggest_labels": "suggest",
    "vectorize": "polygonize",
}

if TYPE_CHECKING:
    from .api import TrainingData, UnetClassifier, prepare_data
    from .chips import ChipDataset, open_chip_dataset
    from .classify import classify_pixels, classify_rasters
    from .export import export_training_data
    from .predict import load_model
    from .stack import stack_bands
    from .suggest import suggest_labels
    from .polygonize import vectorize


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = ["SparsecoverError", "SparsecoverWarning", "__version__", *_LAZY]
