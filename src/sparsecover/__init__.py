"""sparsecover: land-cover maps from multispectral imagery and a handful of labelled polygons.

The public API mirrors arcgis.learn's names so that its users feel at home::

    from sparsecover import export_training_data, prepare_data, UnetClassifier
    export_training_data("naip.tif", "labels.gpkg", "chips/", class_field="classvalue",
                         tile_size=256, stride=64)
    data = prepare_data("chips/", batch_size=8, imagery_type="naip")
    model = UnetClassifier(data, backbone="resnet34", ignore_classes=[0])
    model.fit(10)                      # lr=None: runs the LR finder first
    model.per_class_metrics(); model.save("landcover")
"""

from __future__ import annotations

__version__ = "0.1.0"

from .api import TrainingData, UnetClassifier, prepare_data  # noqa: E402
from .chips import ChipDataset, open_chip_dataset  # noqa: E402
from .classify import classify_pixels  # noqa: E402
from .errors import SparsecoverError, SparsecoverWarning  # noqa: E402
from .export import export_training_data  # noqa: E402
from .predict import load_model  # noqa: E402
from .stack import stack_bands  # noqa: E402

__all__ = [
    "ChipDataset",
    "TrainingData",
    "UnetClassifier",
    "prepare_data",
    "SparsecoverError",
    "SparsecoverWarning",
    "__version__",
    "classify_pixels",
    "load_model",
    "export_training_data",
    "open_chip_dataset",
    "stack_bands",
]
