"""`sparsecover demo`: the pipeline on the built-in North Carolina Landsat scene (see demo_data/README.md).

Steps: stack the six band files, export chips from the 34 polygons, LR finder + train, evaluate on
the validation split, classify the scene, evaluate the map against the dense reference map (outside
the training polygons) and the reference points (752 of the 1,000 fall on valid pixels of the
scene), and write the HTML report. The demo keeps the LR finder to show its plot, as ArcGIS's
sample does; `train` itself defaults to a fixed LR.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from .chips import open_chip_dataset
from .errors import SparsecoverError
from .export import export_training_data
from .evaluate import evaluate_map, evaluate_run
from .classify import classify_pixels
from .report import build_report
from .runfolder import RunFolder
from .stack import stack_bands
from .train import TrainConfig, train

BAND_FILES = ["lsat7_2000_10", "lsat7_2000_20", "lsat7_2000_30", "lsat7_2000_40", "lsat7_2000_50", "lsat7_2000_70"]
#: The demo vector map's minimum mapping unit (about 6 Landsat pixels).
DEMO_MIN_AREA = "0.5ha"
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
    folder = RunFolder(run)
    evaluate_run(run, out / "validation")
    classified = classify_pixels(scene, folder.package, out / "landcover.tif", progress=progress,
                                 vector=out / "landcover.gpkg", min_area=DEMO_MIN_AREA)
    scores = evaluate_map(classified, data / "strata.tif", out / "evaluation", exclude=data / "landsat96_polygons.gpkg",
                          progress=progress)
    evaluate_map(classified, data / "landsat96_points.gpkg", out / "evaluation_points", class_field="id",
                 progress=progress)
    report = build_report(run, out / "report.html", classified=classified,
                          evaluation=[out / "evaluation", out / "evaluation_points"], vector=out / "landcover.gpkg")
    artifacts = {
        "stacked scene (VRT)": scene, "chip dataset": chips, "training run": run,
        "LR finder plot": folder.lr_plot, "epoch history": folder.history_file,
        "model package": folder.package, "validation metrics": out / "validation",
        "land-cover map": classified, "vector map (GeoPackage)": out / "landcover.gpkg",
        "map vs reference map": out / "evaluation",
        "map vs reference points": out / "evaluation_points", "report": report,
    }
    return artifacts, scores
