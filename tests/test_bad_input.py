"""Each bad input gives one clear line that names the file and the fix, and leaves nothing behind."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from shapely.geometry import Polygon, box

from conftest import ORIGIN, make_scene, scene_polygons, write_raster
from sparsecover import SparsecoverError, SparsecoverWarning, export_training_data


def _run(raster, labels, tmp_path, **kw):
    kw.setdefault("class_field", "classvalue")
    return export_training_data(raster, labels, tmp_path / "out", tile_size=32, stride=32,
                                progress=False, **kw)


def _assert_nothing_left(tmp_path):
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def _labels(tmp_path, frame, name="l.gpkg"):
    path = tmp_path / name
    frame.to_file(path)
    return path


@pytest.fixture
def raster(tmp_path):
    return make_scene(tmp_path)


def test_raster_without_crs(tmp_path):
    raster = write_raster(tmp_path / "nocrs.tif", np.ones((1, 40, 40), "uint8"), crs=None)
    labels = _labels(tmp_path, scene_polygons())
    with pytest.raises(SparsecoverError, match=r"nocrs.tif: raster has no CRS; assign one"):
        _run(raster, labels, tmp_path)
    _assert_nothing_left(tmp_path)


@pytest.mark.filterwarnings("ignore:.crs. was not provided")
def test_labels_without_crs(raster, tmp_path):
    frame = scene_polygons().set_crs(None, allow_override=True)
    path = tmp_path / "nocrs.shp"  # a Shapefile without .prj (GeoJSON would imply WGS84)
    frame.to_file(path)
    path.with_suffix(".prj").unlink(missing_ok=True)
    with pytest.raises(SparsecoverError, match=r"nocrs.shp: the label file has no CRS"):
        _run(raster, path, tmp_path)
    _assert_nothing_left(tmp_path)


def test_labels_that_miss_the_raster(raster, tmp_path):
    far = gpd.GeoDataFrame({"classvalue": [1]}, geometry=[box(0, 0, 10, 10)], crs="EPSG:32618")
    with pytest.raises(SparsecoverError, match=r"l.gpkg: no polygon overlaps scene.tif"):
        _run(raster, _labels(tmp_path, far), tmp_path)
    _assert_nothing_left(tmp_path)


def test_some_polygons_outside_warns_with_a_count(raster, tmp_path):
    with pytest.warns(SparsecoverWarning, match=r"1 of 5 polygons lie outside scene.tif"):
        _run(raster, _labels(tmp_path, scene_polygons()), tmp_path)


def test_missing_class_field_lists_the_fields(raster, tmp_path):
    with pytest.raises(SparsecoverError, match=r"no field 'klass' \(pass --class-field with one of: classvalue, classname\)"):
        _run(raster, _labels(tmp_path, scene_polygons()), tmp_path, class_field="klass")
    _assert_nothing_left(tmp_path)


@pytest.mark.parametrize(
    "values, message",
    [
        (["a", "b", "c", "d", "e"], r"must hold integer class values, found 'a'"),
        ([1.5, 2, 3, 3, 3], r"must hold integer class values, found 1.5"),
        ([-1, 2, 3, 3, 3], r"class value -1 .* is outside 1..255"),
        ([300, 2, 3, 3, 3], r"class value 300 .* is outside 1..255"),
        ([0, 2, 3, 3, 3], r"class value 0 in 'classvalue' is reserved for unlabelled pixels"),
    ],
)
def test_bad_class_values(raster, tmp_path, values, message):
    frame = scene_polygons()
    frame["classvalue"] = values
    with pytest.raises(SparsecoverError, match=message):
        _run(raster, _labels(tmp_path, frame), tmp_path)
    _assert_nothing_left(tmp_path)


def test_empty_label_file(raster, tmp_path):
    empty = scene_polygons().iloc[:0]
    with pytest.raises(SparsecoverError, match=r"l.gpkg: label file holds no features"):
        _run(raster, _labels(tmp_path, empty), tmp_path)


def test_invalid_geometries_are_repaired_with_a_warning(raster, tmp_path):
    x0, y0 = ORIGIN
    bowtie = Polygon([(x0 + 300, y0 - 300), (x0 + 700, y0 - 700), (x0 + 700, y0 - 300), (x0 + 300, y0 - 700)])
    frame = gpd.GeoDataFrame({"classvalue": [1]}, geometry=[bowtie], crs="EPSG:32618")
    assert not frame.is_valid.all()
    with pytest.warns(SparsecoverWarning, match=r"repaired 1 invalid geometries"):
        out = _run(raster, _labels(tmp_path, frame), tmp_path)
    assert (out / "dataset.json").exists()


def test_truncated_raster(raster, tmp_path):
    data = raster.read_bytes()
    broken = tmp_path / "broken.tif"
    broken.write_bytes(data[: len(data) // 3])
    with pytest.raises(SparsecoverError, match=r"broken.tif: (not a raster GDAL can read|cannot read pixels)"):
        _run(broken, _labels(tmp_path, scene_polygons()), tmp_path)
    _assert_nothing_left(tmp_path)


def test_unreadable_raster(tmp_path):
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(SparsecoverError, match=r"junk.tif: not a raster GDAL can read"):
        _run(junk, _labels(tmp_path, scene_polygons()), tmp_path)


def test_missing_files(raster, tmp_path):
    with pytest.raises(SparsecoverError, match=r"nope.gpkg: label file not found"):
        _run(raster, tmp_path / "nope.gpkg", tmp_path)
    with pytest.raises(SparsecoverError, match=r"nope.tif: file not found"):
        _run(tmp_path / "nope.tif", tmp_path / "nope.gpkg", tmp_path)


def test_a_tile_size_that_would_not_fit_in_memory(raster, tmp_path):
    with pytest.raises(SparsecoverError, match=r"--tile-size 100000 makes chips of .* GiB each"):
        export_training_data(raster, _labels(tmp_path, scene_polygons()), tmp_path / "out", class_field="classvalue",
                             tile_size=100000, progress=False)
    _assert_nothing_left(tmp_path)


def test_output_exists(raster, tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(SparsecoverError, match=r"out: already exists; pass --overwrite"):
        _run(raster, _labels(tmp_path, scene_polygons()), tmp_path)


def test_labels_only_on_nodata(raster, tmp_path):
    x0, y0 = ORIGIN
    stripe = gpd.GeoDataFrame({"classvalue": [1]}, geometry=[box(x0 + 5, y0 - 500, x0 + 60, y0 - 100)],
                              crs="EPSG:32618")
    with pytest.raises(SparsecoverError, match=r"no label falls on valid imagery"):
        _run(raster, _labels(tmp_path, stripe), tmp_path)
    _assert_nothing_left(tmp_path)


def test_label_raster_with_fractional_or_negative_values(raster, tmp_path):
    values = np.zeros((150, 200), "float32")
    values[50:60, 50:60] = 1.5
    bad = write_raster(tmp_path / "bad.tif", values)
    with pytest.raises(SparsecoverError, match=r"bad.tif: label value 1.5 is not an integer class value"):
        _run(raster, bad, tmp_path)
    values[50:60, 50:60] = -3
    neg = write_raster(tmp_path / "neg.tif", values)
    with pytest.raises(SparsecoverError, match=r"neg.tif: label value -3 is outside 0..255"):
        _run(raster, neg, tmp_path)
    _assert_nothing_left(tmp_path)


def test_rasters_with_different_band_counts(raster, tmp_path):
    other = write_raster(tmp_path / "two.tif", np.ones((2, 50, 50), "uint16"))
    with pytest.raises(SparsecoverError, match=r"two.tif: has 2 bands but scene.tif has 4"):
        _run([raster, other], _labels(tmp_path, scene_polygons()), tmp_path)
