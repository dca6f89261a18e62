"""`sparsecover demo`: the pipeline on the built-in North Carolina Landsat scene (see demo_data/README.md).

Today it runs the stages that exist (stack, export) and says where each artifact is; each new stage
joins the demo as it lands, so the demo is always the furthest the pipeline goes.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from .chips import open_chip_dataset
from .errors import SparsecoverError
from .export import export_training_data
from .stack import stack_bands

BAND_FILES = ["lsat7_2000_10", "lsat7_2000_20", "lsat7_2000_30", "lsat7_2000_40", "lsat7_2000_50", "lsat7_2000_70"]
BAND_NAMES = ["blue", "green", "red", "nir", "swir1", "swir2"]


def demo_data() -> Path:
    """Folder of the shipped demo scene."""
    return Path(str(resources.files("sparsecover") / "demo_data"))


def run_demo(out: str | Path = "sparsecover-demo", overwrite: bool = False, progress: bool = True) -> dict[str, Path]:
    """Run every available stage on the demo scene into ``out``; returns the artifacts by name."""
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise SparsecoverError(f"{out}: already exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = demo_data()
    scene = stack_bands([data / f"{name}.tif" for name in BAND_FILES], out / "scene.vrt", band_names=BAND_NAMES)
    chips = export_training_data(
        scene, data / "landsat96_polygons.gpkg", out / "chips", class_field="id",
        class_name_field="label", tile_size=64, stride=16, progress=progress,
    )
    open_chip_dataset(chips)  # the artifact must read back
    return {"stacked scene (VRT)": scene, "chip dataset": chips, "reference map": data / "strata.tif"}
