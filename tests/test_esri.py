"""Esri "Classified Tiles" export folders read as chip datasets."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio

from conftest import make_scene, scene_polygons
from sparsecover import SparsecoverError, export_training_data, open_chip_dataset


@pytest.fixture
def esri_folder(tmp_path):
    """An Esri-layout folder (images/, labels/, map.txt with backslashes, .emd, stats) from real chips."""
    raster = make_scene(tmp_path)
    labels = tmp_path / "l.gpkg"
    scene_polygons().iloc[:4].to_file(labels)
    ours = open_chip_dataset(export_training_data(raster, labels, tmp_path / "ours", class_field="classvalue",
                                                  tile_size=32, stride=16, progress=False))
    root = tmp_path / "esri"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lines = []
    for i, chip in enumerate(ours.chips):
        name = f"{i:09d}.tif"
        shutil.copy(chip.image, root / "images" / name)
        shutil.copy(chip.label, root / "labels" / name)
        lines.append(f"images\\{name} labels\\{name}")
    (root / "map.txt").write_text("\n".join(lines) + "\n")
    emd = {
        "Framework": "Esri", "ModelConfiguration": "_DeepLabv3", "ModelType": "ImageClassification",
        "ImageHeight": 32, "ImageWidth": 32, "ExtractBands": [0, 1, 2, 3],
        "Classes": [
            {"Value": 1, "Name": "Water", "Color": [0, 0, 255]},
            {"Value": 2, "Name": "Forest", "Color": [0, 128, 0]},
            {"Value": 3, "Name": "Buildings", "Color": [255, 0, 0]},
        ],
    }
    (root / "esri_model_definition.emd").write_text(json.dumps(emd))
    (root / "esri_accumulated_stats.json").write_text(json.dumps(
        {"MetaDataMode": "Classified_Tiles", "NumTiles": len(lines), "TileSizeX": 32, "TileSizeY": 32}))
    return root, ours


def test_esri_folder_reads_like_a_chip_dataset(esri_folder):
    root, ours = esri_folder
    ds = open_chip_dataset(root)
    assert ds.kind == "esri-classified-tiles" and len(ds) == len(ours)
    assert [(c.value, c.name, c.color) for c in ds.classes] == [
        (1, "Water", "#0000ff"), (2, "Forest", "#008000"), (3, "Buildings", "#ff0000")]
    assert ds.tile_size == 32 and len(ds.bands) == 4 and ds.dtype == "uint16"
    image, label, groups = ds.read(0)
    ref_image, ref_label, _ = ours.read(0)
    np.testing.assert_array_equal(image, ref_image)
    np.testing.assert_array_equal(label, ref_label)
    assert np.all((groups > 0) == (label > 0))
    assert ds.statistics[0]["min"] > 0 and ds.statistics[0]["count"] > 0


def test_esri_groups_agree_on_overlapping_chips(esri_folder):
    root, _ = esri_folder
    ds = open_chip_dataset(root)
    seen: dict[tuple[float, float], int] = {}
    for i in range(len(ds)):
        _, label, groups = ds.read(i)
        with rasterio.open(ds.chips[i].image) as src:
            transform = src.transform
        for r, c in zip(*np.nonzero(label)):
            key = transform * (c + 0.5, r + 0.5)
            assert seen.setdefault(key, int(groups[r, c])) == groups[r, c]
    assert len(ds.groups) >= 3
    assert {g["class"] for g in ds.groups.values()} == {1, 2, 3}


def test_esri_other_metadata_format_is_refused(esri_folder):
    root, _ = esri_folder
    (root / "esri_accumulated_stats.json").write_text(json.dumps({"MetaDataMode": "PASCAL_VOC_rectangles"}))
    with pytest.raises(SparsecoverError, match="'PASCAL_VOC_rectangles' format; pixel classification needs 'Classified Tiles'"):
        open_chip_dataset(root)


def test_not_a_dataset(tmp_path):
    with pytest.raises(SparsecoverError, match="not a chip dataset"):
        open_chip_dataset(tmp_path)
