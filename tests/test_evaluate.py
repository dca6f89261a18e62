"""evaluate and report: metrics equal scikit-learn's, every reference kind, pictures, a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from shapely.geometry import Point, box
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, jaccard_score, precision_score, recall_score

from conftest import ORIGIN, UTM, write_raster
from sparsecover import SparsecoverError
from sparsecover.evaluate import area_estimates, evaluate_map
from sparsecover.metrics import summarize


def _classified(tmp_path, data):
    path = write_raster(tmp_path / "map.tif", data.astype("uint8"), nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.update_tags(CLASS_NAMES=json.dumps({"1": "water", "2": "forest", "3": "urban"}))
        dst.write_colormap(1, {1: (0, 0, 255, 255), 2: (0, 128, 0, 255), 3: (255, 0, 0, 255)})
    return path


@pytest.fixture
def maps(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(1, 4, (80, 120)).astype("uint8")
    predicted = np.where(rng.random((80, 120)) < 0.7, truth, rng.integers(1, 4, (80, 120))).astype("uint8")
    predicted[:, :5] = 0  # map nodata
    sparse = truth.copy()
    sparse[rng.random((80, 120)) < 0.5] = 0  # no reference
    return _classified(tmp_path, predicted), write_raster(tmp_path / "ref.tif", sparse, nodata=0), predicted, sparse


def test_metrics_equal_scikit_learn(maps, tmp_path):
    classified, reference, predicted, truth = maps
    result = evaluate_map(classified, reference, tmp_path / "eval", progress=False)
    keep = (truth > 0) & (predicted > 0)
    t, p = truth[keep], predicted[keep]
    labels = [1, 2, 3]
    assert result["pixels"] == keep.sum()
    assert result["overall_accuracy"] == pytest.approx(accuracy_score(t, p))
    assert result["kappa"] == pytest.approx(cohen_kappa_score(t, p))
    assert result["macro_f1"] == pytest.approx(f1_score(t, p, average="macro"))
    assert result["weighted_f1"] == pytest.approx(f1_score(t, p, average="weighted"))
    assert result["mean_iou"] == pytest.approx(jaccard_score(t, p, average="macro"))
    for i, c in enumerate(result["per_class"]):
        assert c["precision"] == pytest.approx(precision_score(t, p, labels=labels, average=None)[i])
        assert c["recall"] == pytest.approx(recall_score(t, p, labels=labels, average=None)[i])
        assert c["iou"] == pytest.approx(jaccard_score(t, p, labels=labels, average=None)[i])
    assert result["confusion_matrix"] == confusion_matrix(t, p, labels=labels).tolist()
    assert [c["class"] for c in result["per_class"]] == ["water", "forest", "urban"]
    for name in ("metrics.json", "confusion_matrix.csv", "confusion_matrix.png"):
        assert (tmp_path / "eval" / name).exists()
    header = (tmp_path / "eval" / "confusion_matrix.csv").read_text().splitlines()[0]
    assert header == "reference \\ predicted,water,forest,urban,total"


def test_points_polygons_and_exclusion(maps, tmp_path):
    classified, _, predicted, _ = maps
    x0, y0 = ORIGIN
    points = gpd.GeoDataFrame(
        {"klass": [1, 2, 3, 1]},
        geometry=[Point(x0 + 55, y0 - 55), Point(x0 + 305, y0 - 205), Point(x0 + 15, y0 - 15), Point(0, 0)],
        crs=UTM,
    ).to_crs("EPSG:4326")  # reprojected back by evaluate
    points.to_file(tmp_path / "points.gpkg")
    result = evaluate_map(classified, tmp_path / "points.gpkg", tmp_path / "ep", class_field="klass", progress=False)
    assert result["reference_kind"] == "points"
    assert result["points"] == {"total": 4, "used": 2, "outside_or_nodata": 2}  # one on map nodata, one far away
    assert result["pixels"] == 2
    assert len(result["area_estimates"]) == 3
    polygon = gpd.GeoDataFrame({"klass": [2]}, geometry=[box(x0 + 200, y0 - 400, x0 + 600, y0 - 100)], crs=UTM)
    polygon.to_file(tmp_path / "poly.gpkg")
    result = evaluate_map(classified, tmp_path / "poly.gpkg", tmp_path / "epoly", class_field="klass", progress=False)
    assert result["reference_kind"] == "polygons" and result["pixels"] == 30 * 40
    polygon.to_file(tmp_path / "exclude.gpkg")
    with pytest.raises(SparsecoverError, match="no reference pixel overlaps a classified pixel"):
        evaluate_map(classified, tmp_path / "poly.gpkg", tmp_path / "ex", class_field="klass",
                     exclude=tmp_path / "exclude.gpkg", progress=False)


def test_what_is_not_a_class_map_or_a_missing_exclusion_is_refused(maps, tmp_path):
    _, reference, _, _ = maps
    image = write_raster(tmp_path / "image.tif", np.random.default_rng(0).random((6, 80, 120)).astype("float32"))
    with pytest.raises(SparsecoverError, match=r"image.tif: not a class map \(6 band\(s\) of float32\)"):
        evaluate_map(image, reference, tmp_path / "e1")
    with pytest.raises(SparsecoverError, match=r"nowhere.gpkg: exclusion polygons not found"):
        evaluate_map(maps[0], reference, tmp_path / "e2", exclude=tmp_path / "nowhere.gpkg")
    (tmp_path / "broken.gpkg").write_text("not a geopackage")
    with pytest.raises(SparsecoverError, match=r"broken.gpkg: cannot read the exclusion polygons"):
        evaluate_map(maps[0], reference, tmp_path / "e3", exclude=tmp_path / "broken.gpkg")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("e")]


def test_a_reference_raster_is_checked_as_label_rasters_are(maps, tmp_path):
    # the reference is read by the same label source as export's training labels: values that are
    # no class are refused rather than scored as classes
    classified, _, _, sparse = maps
    fractional = write_raster(tmp_path / "fractional.tif", np.where(sparse == 2, 2.5, sparse).astype("float32"))
    with pytest.raises(SparsecoverError, match=r"fractional.tif: label value 2.5 is not an integer class value"):
        evaluate_map(classified, fractional, tmp_path / "e1", progress=False)
    image = write_raster(tmp_path / "bands.tif", np.stack([sparse, sparse]))
    with pytest.raises(SparsecoverError, match=r"bands.tif: a label raster must have one band"):
        evaluate_map(classified, image, tmp_path / "e2", progress=False)
    as_float = write_raster(tmp_path / "float.tif", sparse.astype("float32"), nodata=-9999)
    assert evaluate_map(classified, as_float, tmp_path / "e3", progress=False)["pixels"] == \
        evaluate_map(classified, maps[1], tmp_path / "e4", progress=False)["pixels"]


def test_area_estimates_follow_olofsson_example():
    # Olofsson et al. (2014), section 5 example: map strata areas (pixels) and the sample error matrix
    mapped = [200000, 150000, 3200000, 6450000]
    # our confusion matrix is reference x map: transpose of the paper's map x reference table
    paper = np.array([[66, 0, 5, 4], [0, 55, 8, 12], [1, 0, 153, 11], [2, 1, 9, 313]])
    result = area_estimates(paper.T, mapped, pixel_area=0.09, names=["a", "b", "c", "d"])  # 30 m pixels, ha
    estimated_ha = [r["estimated_area"] for r in result]
    assert estimated_ha[0] == pytest.approx(21158, rel=0.01)
    assert estimated_ha[1] == pytest.approx(11686, rel=0.01)
    assert result[0]["ci95"] == pytest.approx(6158, rel=0.02)
    assert sum(estimated_ha) == pytest.approx(sum(mapped) * 0.09)


def test_summarize_handles_absent_classes():
    matrix = np.array([[5, 1, 0], [2, 7, 0], [0, 0, 0]])
    s = summarize(matrix, ["a", "b", "c"])
    assert s["per_class"][2]["recall"] is None and s["per_class"][2]["support"] == 0
    assert s["macro_f1"] == pytest.approx(np.mean([10 / 13, 14 / 17]))


@pytest.mark.slow
def test_report_renders_in_a_real_browser(tmp_path, train_chips):
    from sparsecover.classify import classify_pixels
    from sparsecover.report import build_report
    from sparsecover.train import TrainConfig, train

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    run = train(train_chips, tmp_path / "run", TrainConfig(backbone="resnet18", epochs=2, lr=1e-3, quiet=True, refit=False))
    classified = classify_pixels(train_chips.parent / "classes_scene.tif", run, tmp_path / "map.tif",
                                 tile_size=64, padding=16, progress=False)
    evaluation = tmp_path / "evaluation"
    evaluate_map(classified, train_chips.parent / "polygons.gpkg", evaluation, class_field="classvalue", progress=False)
    from sparsecover.suggest import suggest_labels

    squares = suggest_labels(train_chips.parent / "classes_scene.tif", run, tmp_path / "to_label.gpkg", n=5, size=4,
                             uncertainty=tmp_path / "unc.tif", tile_size=64, padding=16, progress=False)
    from sparsecover.polygonize import vectorize

    vector = vectorize(classified, tmp_path / "map.gpkg", progress=False)
    report = build_report(run, tmp_path / "report.html", classified=classified, evaluation=evaluation,
                          uncertainty=tmp_path / "unc.tif", suggestions=squares, vector=vector)
    text = report.read_text()
    for heading in ("Data", "Settings", "Training", "Validation (held-out polygons)", "image | ground truth | prediction",
                    "Map", "Map accuracy against polygons.gpkg", "Where to label next", "Vector map", "area (ha)"):
        assert heading in text, heading
    polygons = gpd.read_file(vector, layer="map")
    assert f"{len(polygons):,} polygons" in text
    # settings: what differs from train's defaults (epochs 2, not 10), not every field
    assert "<td>epochs</td><td>2</td><td>10</td>" in text and "<td>architecture</td>" not in text
    from sparsecover.combine import open_chip_datasets
    from sparsecover.report import _imagery

    # the map is drawn beside the imagery the chips were cut from (same grid)
    assert _imagery(open_chip_datasets(train_chips), classified) == (train_chips.parent / "classes_scene.tif").resolve()
    assert text.count("data:image/png;base64,") >= 6 and "http://" not in text and "https://" not in text
    if chromium is None:
        pytest.skip("Chromium not installed (Debian package chromium; .ci/run installs it): browser check skipped")
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[0] == 3000 and image.std() > 20  # rendered content, not a blank page


def test_report_on_a_killed_run_says_it_is_incomplete(tmp_path, train_chips):
    from sparsecover import SparsecoverWarning
    from sparsecover.report import build_report
    from sparsecover.train import TrainConfig, train

    run = train(train_chips, tmp_path / "run", TrainConfig(backbone="resnet18", epochs=2, lr=1e-3, quiet=True, refit=False,
                                                    spectral=False))
    text = build_report(run, tmp_path / "done.html").read_text()
    assert "Incomplete run" not in text
    # what a run killed in its second epoch leaves: one epoch in history.csv, no model, no package
    lines = (run / "history.csv").read_text().splitlines()
    (run / "history.csv").write_text("\n".join(lines[:2]) + "\n")
    shutil.rmtree(run / "model")
    for name in ("model.sparsecover", "metrics.json"):
        (run / name).unlink()
    with pytest.warns(SparsecoverWarning, match=r"training did not finish \(1 of 2 epochs in history.csv"):
        text = build_report(run, tmp_path / "killed.html").read_text()
    assert "Incomplete run" in text and "--resume" in text


def test_report_does_not_repeat_what_train_warned_about(tmp_path):
    """A class with a single polygon cannot be validated: `train` says so once; the report, which
    prepares the same data again to draw the validation chips, does not say it again."""
    import warnings

    from conftest import class_polygons, make_class_scene
    from sparsecover import SparsecoverWarning, export_training_data
    from sparsecover.report import build_report
    from sparsecover.train import TrainConfig, train

    polygons = class_polygons(values=(1, 2, 3), per_class=3).iloc[:7]  # class 3: one polygon
    raster = make_class_scene(tmp_path, polygons)
    polygons.to_file(tmp_path / "p.gpkg")
    chips = export_training_data(raster, tmp_path / "p.gpkg", tmp_path / "chips", class_field="classvalue",
                                 tile_size=32, stride=16, progress=False)
    with pytest.warns(SparsecoverWarning, match="single polygon"):
        run = train(chips, tmp_path / "run", TrainConfig(backbone="resnet18", epochs=1, lr=1e-3, quiet=True, refit=False,
                                                     spectral=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        text = build_report(run, tmp_path / "report.html").read_text()
    assert "image | ground truth | prediction" in text  # the validation chips were drawn
    assert not [w for w in caught if "single polygon" in str(w.message)]
