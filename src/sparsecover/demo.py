"""`sparsecover demo`: the pipeline on the built-in North Carolina Landsat scene (see demo_data/README.md).

Today it runs the stages that exist (stack, export, LR finder + train, classify) and scores the map
against the scene's dense reference outside the training polygons; each new stage joins the demo as
it lands, so the demo is always the furthest the pipeline goes.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np

from .chips import open_chip_dataset
from .errors import SparsecoverError
from .export import export_training_data
from .metrics import confusion_matrix, summarize
from .predict import classify_pixels
from .stack import stack_bands
from .train import TrainConfig, train

BAND_FILES = ["lsat7_2000_10", "lsat7_2000_20", "lsat7_2000_30", "lsat7_2000_40", "lsat7_2000_50", "lsat7_2000_70"]
BAND_NAMES = ["blue", "green", "red", "nir", "swir1", "swir2"]


def demo_data() -> Path:
    """Folder of the shipped demo scene."""
    return Path(str(resources.files("sparsecover") / "demo_data"))


def run_demo(out: str | Path = "sparsecover-demo", overwrite: bool = False, progress: bool = True,
             epochs: int = 8, backbone: str = "resnet18") -> tuple[dict[str, Path], dict]:
    """Run every available stage on the demo scene into ``out``.

    Returns the artifacts by name and the whole-scene scores of the map against the reference.
    The defaults (ResNet18 encoder, 8 epochs) keep the demo within a few minutes on 2 CPU cores.
    """
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
    run = train(chips, out / "run", TrainConfig(backbone=backbone, epochs=epochs, lr=None, quiet=not progress))
    classified = classify_pixels(scene, run, out / "landcover.tif", progress=progress)
    scores = score_against_reference(classified, data / "strata.tif", data / "landsat96_polygons.gpkg")
    (out / "scene_scores.json").write_text(json.dumps(scores, indent=1))
    artifacts = {
        "stacked scene (VRT)": scene, "chip dataset": chips, "training run": run,
        "LR finder plot": run / "lr_find.png", "epoch history": run / "history.csv",
        "model package": run / "model.sparsecover",
        "land-cover map": classified, "scene scores": out / "scene_scores.json",
    }
    return artifacts, scores


def score_against_reference(classified: Path, reference: Path, training_polygons: Path) -> dict:
    """Overall accuracy, kappa and per-class F1 of the map on every reference pixel outside the training
    polygons (the demo scene is small enough to read whole; the evaluate stage will stream)."""
    import geopandas as gpd
    import rasterio
    from rasterio import features

    with rasterio.open(classified) as src:
        predicted = src.read(1)
        polygons = gpd.read_file(training_polygons).to_crs(src.crs)
        inside = features.rasterize(polygons.geometry, out_shape=predicted.shape, transform=src.transform,
                                    all_touched=True)
    with rasterio.open(reference) as ref:
        truth = ref.read(1)
    keep = (truth > 0) & (predicted > 0) & (inside == 0)
    values = sorted(set(np.unique(truth[keep])) | set(np.unique(predicted[keep])))
    index = {v: i for i, v in enumerate(values)}
    lut = np.zeros(256, dtype=np.int64)
    for v, i in index.items():
        lut[v] = i
    matrix = confusion_matrix(lut[truth[keep]], lut[predicted[keep]], len(values))
    return summarize(matrix, [str(v) for v in values])
