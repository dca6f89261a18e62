"""sparsecover: land-cover maps from multispectral imagery and a handful of labelled polygons.

The public API mirrors arcgis.learn's names so that its users feel at home::

    from sparsecover import export_training_data, open_chip_dataset
    export_training_data("naip.tif", "labels.gpkg", "chips/", class_field="classvalue",
                         tile_size=256, stride=64)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .chips import ChipDataset, open_chip_dataset  # noqa: E402
from .errors import SparsecoverError, SparsecoverWarning  # noqa: E402
from .export import export_training_data  # noqa: E402
from .stack import stack_bands  # noqa: E402

__all__ = [
    "ChipDataset",
    "SparsecoverError",
    "SparsecoverWarning",
    "__version__",
    "export_training_data",
    "open_chip_dataset",
    "stack_bands",
]
