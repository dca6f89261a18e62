"""classify: a trained run -> classified GeoTIFF on the input grid, nodata carried, colours embedded."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio

from conftest import write_raster
from sparsecover import SparsecoverError
from sparsecover.predict import classify_pixels, load_model
from sparsecover.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(train_chips, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    return train(train_chips, run, TrainConfig(backbone="resnet18", epochs=3, lr=3e-3, quiet=True, seed=1))


def test_classified_raster_matches_grid_and_carries_nodata(trained, train_chips, tmp_path):
    scene = train_chips.parent / "classes_scene.tif"
    with rasterio.open(scene) as src:
        data, profile = src.read(), src.profile
    data[:, :10, :] = 0  # a nodata strip
    holed = write_raster(tmp_path / "holed.tif", data, nodata=0)
    out = classify_pixels(holed, trained, tmp_path / "map.tif", tile_size=64, padding=16, progress=False)
    with rasterio.open(out) as dst:
        classes = dst.read(1)
        assert dst.crs == profile["crs"] and dst.transform == profile["transform"]
        assert dst.shape == (profile["height"], profile["width"]) and dst.nodata == 0
        assert dst.colormap(1)[1] == (0x4E, 0x79, 0xA7, 255)  # class1's default colour
        assert json.loads(dst.tags()["CLASS_NAMES"]) == {"1": "class1", "2": "class2", "3": "class3"}
        assert dst.profile["tiled"]
    assert not classes[:10].any()
    assert set(np.unique(classes[10:])) <= {1, 2, 3}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_contract_and_output_errors(trained, tmp_path):
    two = write_raster(tmp_path / "two.tif", np.ones((2, 64, 64), "uint16"), nodata=0)
    with pytest.raises(SparsecoverError, match=r"two.tif: has 2 bands but the model was trained on 4-band"):
        classify_pixels(two, trained, tmp_path / "o.tif", progress=False)
    four = write_raster(tmp_path / "four.tif", np.ones((4, 64, 64), "uint16"), nodata=0)
    (tmp_path / "exists.tif").write_text("x")
    with pytest.raises(SparsecoverError, match="exists.tif: already exists; pass --overwrite"):
        classify_pixels(four, trained, tmp_path / "exists.tif", progress=False)
    with pytest.raises(SparsecoverError, match="multiple of 32"):
        classify_pixels(four, trained, tmp_path / "o.tif", tile_size=100, progress=False)
    with pytest.raises(SparsecoverError, match="not a training run or model folder"):
        load_model(tmp_path)
    assert not (tmp_path / "o.tif").exists()
