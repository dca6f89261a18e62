"""The ArcGIS sample "Land cover classification using sparse training data", step by step, with sparsecover.

Runs on the built-in North Carolina Landsat scene (6 bands, 34 polygons) instead of NAIP over Alabama;
every step names the ArcGIS tool or arcgis.learn call it replaces. Run it from any folder:

    python examples/arcgis_sparse_landcover.py [--out arcgis-workflow] [--epochs 8]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sparsecover import UnetClassifier, classify_pixels, export_training_data, prepare_data, stack_bands
from sparsecover.demo import BAND_FILES, BAND_NAMES, demo_data
from sparsecover.evaluate import evaluate_map


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="arcgis-workflow")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(exist_ok=True)
    data_dir = demo_data()

    # Composite Bands (ArcGIS) -> stack_bands: one multiband raster, here a VRT that copies no pixels.
    scene = stack_bands([data_dir / f"{b}.tif" for b in BAND_FILES], out / "scene.vrt", band_names=BAND_NAMES,
                        overwrite=True)

    # Export Training Data For Deep Learning (Classified Tiles, class value field, tile 256, stride 64)
    # -> export_training_data. Unlabelled pixels are 0 ("NoData") and never trained on.
    chips = export_training_data(scene, data_dir / "landsat96_polygons.gpkg", out / "chips", class_field="id",
                                 class_name_field="label", tile_size=64, stride=16, overwrite=True)

    # prepare_data(path, batch_size=8, imagery_type=...) and show_batch(): the same names.
    data = prepare_data(chips, batch_size=8, imagery_type="ms")
    data.show_batch(rows=2, path=out / "show_batch.png")

    # UnetClassifier(data, backbone='resnet34', ignore_classes=[0]): the same call (ResNet18 here, for speed).
    model = UnetClassifier(data, backbone="resnet18", ignore_classes=[0])

    # lr_find() and fit(epochs, lr): the same; validation is by polygon, so its scores are honest.
    lr = model.lr_find(plot=out / "lr_find.png")
    model.fit(args.epochs, lr, out=out / "run")

    # per_class_metrics(), mIOU() and show_results(): the same names.
    print(model.per_class_metrics())
    print(model.mIOU())
    model.show_results(rows=4, path=out / "show_results.png")

    # save() to a .dlpk -> save() to one .sparsecover package (ONNX + Esri .emd inside with onnx=True).
    package = model.save(out / "landcover", onnx=True)

    # Classify Pixels Using Deep Learning (padding, batch size, processor type) -> classify_pixels.
    landcover = classify_pixels(scene, package, out / "landcover.tif", padding=64, batch_size=4, overwrite=True)

    # Not in the ArcGIS sample: the map's accuracy on every reference pixel outside the training polygons.
    scores = evaluate_map(landcover, data_dir / "strata.tif", out / "evaluation",
                          exclude=data_dir / "landsat96_polygons.gpkg")
    print(f"map vs reference: overall accuracy {scores['overall_accuracy']:.3f}, macro-F1 {scores['macro_f1']:.3f}, "
          f"kappa {scores['kappa']:.3f}")

    # Not in ArcGIS either: where the next polygons would help most, as squares to fill in in QGIS, then
    # export again with both files (export_training_data(scene, [polygons, squares], ...)) and fit again.
    squares = model.suggest(scene, out / "to_label.gpkg", n=30, labels=data_dir / "landsat96_polygons.gpkg",
                            overwrite=True)
    print(f"label next: {squares}")


if __name__ == "__main__":
    main()
