"""suggest: squares to label next, where the model is unsure, spread out, every class covered, and
the loop back into export."""

from __future__ import annotations

import math

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio import features

from conftest import UTM, class_polygons, write_raster
from sparsecover import SparsecoverError, SparsecoverWarning, export_training_data, open_chip_dataset
from sparsecover.classify import classify_pixels
from sparsecover.cli import cli
from sparsecover.suggest import Cells, choose_cells, min_spacing, suggest_labels
from sparsecover.train import TrainConfig, train


@pytest.fixture(scope="module")
def model(train_chips, tmp_path_factory):
    run = tmp_path_factory.mktemp("suggest") / "run"
    # the network alone: on this small scene it maps every class beyond the labels' buffer, so that the
    # squares can cover all of them (pooled with the per-pixel model, classes 1 and 3 stay near the labels)
    return train(train_chips, run, TrainConfig(backbone="resnet18", epochs=2, lr=3e-3, quiet=True, seed=0,
                                               unlabelled_weight=0, spectral=False, refit=False))


@pytest.fixture
def scene(train_chips, tmp_path):
    """The training scene with a nodata stripe on its left (10 columns)."""
    with rasterio.open(train_chips.parent / "classes_scene.tif") as src:
        data = src.read()
    data[:, :, :10] = 0
    return write_raster(tmp_path / "scene.tif", data, nodata=0, names=["blue", "green", "red", "nir"])


def test_uncertainty_output_is_one_minus_the_top_two_margin(model, scene, tmp_path):
    classify_pixels(scene, model, tmp_path / "map.tif", tile_size=64, padding=16, probabilities=tmp_path / "p.tif",
                    uncertainty=tmp_path / "u.tif", progress=False)
    with rasterio.open(tmp_path / "p.tif") as p, rasterio.open(tmp_path / "u.tif") as u:
        probs, unc = p.read(), u.read(1)
        assert u.nodata == -1 and u.descriptions[0].startswith("uncertainty")
    top = np.sort(probs, axis=0)
    valid = unc >= 0
    assert not valid[:, :10].any() and valid[:, 10:].all()
    np.testing.assert_allclose(unc[valid], (1 - (top[-1] - top[-2]))[valid], atol=1e-5)


def test_squares_are_valid_single_class_away_from_labels_and_spread(model, scene, train_chips, tmp_path):
    labels = train_chips.parent / "polygons.gpkg"
    out = suggest_labels(scene, model, tmp_path / "to_label.gpkg", n=12, size=4, labels=labels,
                         uncertainty=tmp_path / "unc.tif", tile_size=64, padding=16, progress=False)
    frame = gpd.read_file(out)
    info = pyogrio.read_info(out)
    assert dict(zip(info["fields"], info["dtypes"]))["classvalue"] == "int32"  # the training field, integer
    assert frame["classvalue"].isna().all() and list(frame["rank"]) == list(range(1, 13))
    assert frame.crs == UTM and set(frame["predicted"]) <= {1, 2, 3}
    assert set(frame["predicted_name"]) == {f"class{v}" for v in frame["predicted"]}
    assert frame["uncertainty"].between(0, 1).all()
    with rasterio.open(tmp_path / "unc.tif") as src:
        unc, transform = src.read(1), src.transform
    with rasterio.open(scene) as src:
        valid = src.read_masks(1) > 0
    polygons = gpd.read_file(labels).to_crs(UTM)
    near = features.rasterize(polygons.geometry.buffer(4 * 10.0), out_shape=valid.shape, transform=transform,
                              all_touched=True) > 0
    mapped = rasterio.open(classify_pixels(scene, model, tmp_path / "map.tif", tile_size=64, padding=16,
                                           progress=False)).read(1)
    corners = []
    for square, predicted, u in zip(frame.geometry, frame["predicted"], frame["uncertainty"]):
        west, south, east, north = square.bounds
        assert math.isclose(east - west, 40) and math.isclose(north - south, 40)  # 4 x 4 pixels of 10 m
        col, row = ~transform * (west, north)
        assert col == int(col) and row == int(row)  # on the pixel grid
        rows, cols = slice(int(row), int(row) + 4), slice(int(col), int(col) + 4)
        assert valid[rows, cols].all() and not near[rows, cols].any()
        assert (mapped[rows, cols] == predicted).all()
        assert math.isclose(u, unc[rows, cols].mean(), abs_tol=1e-3)
        corners.append((int(row) // 4, int(col) // 4))
    spacing = min_spacing(int(valid[: 128 // 4 * 4, : 128 // 4 * 4].reshape(32, 4, 32, 4).all(axis=(1, 3)).sum()), 12)
    for i, a in enumerate(corners):
        for b in corners[i + 1 :]:
            assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) >= spacing
    # every predicted class that has a labellable square (one class, valid, away from the labels) has one
    cells = lambda a: a[:128, :128].reshape(32, 4, 32, 4)  # noqa: E731 - the 4 px grid the squares lie on
    free = cells(valid).all(axis=(1, 3)) & ~cells(near).any(axis=(1, 3))
    single = cells(mapped).min(axis=(1, 3)) == cells(mapped).max(axis=(1, 3))
    labellable = set(np.unique(cells(mapped)[:, 0, :, 0][free & single])) - {0}
    assert len(labellable) > 1 and set(frame["predicted"]) == labellable


def test_choose_cells_takes_the_most_uncertain_spread_out_then_covers_every_class():
    rng = np.random.default_rng(0)
    uncertainty = rng.uniform(0, 0.5, (40, 40)).astype(np.float32)
    predicted = np.ones((40, 40), np.uint8)
    predicted[30:, 30:] = 2  # a rare class, all of it fairly sure
    uncertainty[30:, 30:] = 0.1
    predicted[0, 0] = 3  # rarer still
    uncertainty[20, 5] = uncertainty[20, 6] = 0.99  # the two most uncertain cells, side by side
    cells = Cells(uncertainty, predicted, np.ones((40, 40), bool), Affine.identity())
    chosen = choose_cells(cells, cells.candidates, n=5, seed=0)
    assert chosen[0] in {(20, 5), (20, 6)} and (20, 5) not in chosen[1:] and (20, 6) not in chosen[1:]
    assert len(chosen) == 5 and len(set(chosen)) == 5
    assert {predicted[c] for c in chosen} == {1, 2, 3}  # the rare classes take the least uncertain squares' places
    assert [uncertainty[c] for c in chosen] == sorted((uncertainty[c] for c in chosen), reverse=True)  # ranked
    spacing = min_spacing(1600, 5)
    ones = [c for c in chosen if predicted[c] == 1]
    for k, pick in enumerate(ones):  # class 1: the most uncertain cells that keep the spacing
        free = [(r, c) for r in range(40) for c in range(40) if predicted[r, c] == 1
                and all(max(abs(r - a), abs(c - b)) >= spacing for a, b in ones[:k])]
        assert uncertainty[pick] == max(uncertainty[cell] for cell in free)
    alone = Cells(uncertainty, np.where(predicted > 0, 1, 0).astype(np.uint8), cells.valid, Affine.identity())
    assert set(ones) < set(choose_cells(alone, alone.candidates, n=5, seed=0))  # what uncertainty alone picks
    assert len(choose_cells(cells, cells.candidates, n=2, seed=0)) == 2  # too few squares for every class
    assert choose_cells(cells, np.zeros((40, 40), bool), n=3) == []
    predicted[1, 1] = 4  # a class found only beside class 3's square: covered all the same
    chosen = choose_cells(cells, cells.candidates, n=5, seed=0)
    assert {predicted[c] for c in chosen} == {1, 2, 3, 4}


def test_labelled_squares_go_back_into_export(model, scene, train_chips, tmp_path):
    labels = train_chips.parent / "polygons.gpkg"
    squares = suggest_labels(scene, model, tmp_path / "to_label.gpkg", n=6, size=4, labels=labels, tile_size=64,
                             padding=16, progress=False)
    frame = gpd.read_file(squares)
    frame.loc[: len(frame) - 2, "classvalue"] = frame["predicted"][: len(frame) - 1]  # the last left blank
    frame.to_file(squares, driver="GPKG")
    first = open_chip_dataset(train_chips)
    with pytest.warns(SparsecoverWarning, match=r"1 features have no value in 'classvalue'; left out"):
        out = export_training_data(scene, [labels, squares], tmp_path / "chips", class_field="classvalue",
                                   tile_size=32, stride=16, progress=False)
    groups = open_chip_dataset(out).groups
    squares_groups = [groups[g] for g in sorted(groups) if g > len(first.groups)]  # numbered after the polygons
    assert len(groups) == len(first.groups) + len(frame) - 1
    assert [g["pixels"] for g in squares_groups] == [16] * (len(frame) - 1)
    assert [g["class"] for g in squares_groups] == list(frame["predicted"][: len(frame) - 1])


def test_bad_input_is_one_line(model, scene, tmp_path):
    kw = dict(tile_size=64, padding=16, progress=False)
    for args, message in [
        (dict(n=0), r"--n must be at least 1"),
        (dict(size=0), r"--size must be at least 1"),
    ]:
        with pytest.raises(SparsecoverError, match=message):
            suggest_labels(scene, model, tmp_path / "s.gpkg", **args, **kw)
    with pytest.raises(SparsecoverError, match=r"s.shp: suggestions are written as a GeoPackage"):
        suggest_labels(scene, model, tmp_path / "s.shp", **kw)
    (tmp_path / "taken.gpkg").write_text("")
    with pytest.raises(SparsecoverError, match=r"taken.gpkg: already exists"):
        suggest_labels(scene, model, tmp_path / "taken.gpkg", **kw)
    no_crs = tmp_path / "nocrs.shp"
    class_polygons().set_crs(None, allow_override=True).to_file(no_crs)
    with pytest.raises(SparsecoverError, match=r"nocrs.shp: the label file has no CRS"):
        suggest_labels(scene, model, tmp_path / "s.gpkg", labels=no_crs, **kw)
    two_bands = write_raster(tmp_path / "two.tif", np.ones((2, 64, 64), "uint16"))
    with pytest.raises(SparsecoverError, match=r"two.tif: has 2 bands but the model was trained on 4"):
        suggest_labels(two_bands, model, tmp_path / "s.gpkg", **kw)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("nocrs.")) == [
        "scene.tif", "taken.gpkg", "two.tif"]  # nothing left behind
    result = CliRunner().invoke(cli, ["suggest", str(scene), str(model), "--out", str(tmp_path / "s.gpkg"),
                                      "--n", "0"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "--n must be at least 1" in result.output


def test_disagreement_is_zero_where_members_agree_and_one_where_each_is_sure_of_another_class():
    import torch

    from sparsecover.model import disagreement

    sure = torch.eye(3).view(3, 1, 3, 1, 1)  # member k is sure of class k: (members, N, K, H, W)
    unsure = torch.full((3, 1, 3, 1, 1), 1 / 3)  # all agree that they cannot tell
    agree = torch.tensor([0.7, 0.2, 0.1]).view(1, 1, 3, 1, 1).expand(3, 1, 3, 1, 1)
    split = torch.stack([sure[0], sure[0], sure[1]])  # two of three sure of class 0, one of class 1
    values = [float(disagreement(m)) for m in (sure, unsure, agree, split)]
    assert values[0] == pytest.approx(1) and values[1] == pytest.approx(0) and values[2] == pytest.approx(0, abs=1e-6)
    assert 0.5 < values[3] < 1  # entropy of (2/3, 1/3) over log 3
    assert values[3] == pytest.approx(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)) / math.log(3))
