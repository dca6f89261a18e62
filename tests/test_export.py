"""export on generated scenes: chips match the polygons, nodata is never labelled, statistics are right."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio import features
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window
from shapely.geometry import Point

from conftest import ORIGIN, RES, UTM, make_scene, scene_polygons, write_raster
from sparsecover.raster import describe, gdal_env, read_window
from sparsecover import SparsecoverError, SparsecoverWarning, export_training_data, open_chip_dataset


def _export(scene, out, **kw):
    raster, labels = scene
    kw.setdefault("class_field", "classvalue")
    kw.setdefault("class_name_field", "classname")
    kw.setdefault("tile_size", 32)
    kw.setdefault("stride", 16)
    with pytest.warns(SparsecoverWarning, match="1 of 5 polygons lie outside"):
        return export_training_data(raster, labels, out, progress=False, **kw)


def test_label_chips_equal_polygons_rasterised_on_each_window(scene, tmp_path):
    out = _export(scene, tmp_path / "chips")
    ds = open_chip_dataset(out)
    with rasterio.open(scene[0]) as src:
        polygons = gpd.read_file(scene[1]).to_crs(src.crs)
    assert len(ds) > 0
    for i, chip in enumerate(ds.chips):
        image, label, groups = ds.read(i)
        with rasterio.open(chip.label) as src, gdal_env():
            expected = features.rasterize(
                zip(polygons.geometry, polygons["classvalue"]), out_shape=label.shape,
                transform=src.transform, all_touched=True, dtype="uint8",
            )
        with rasterio.open(chip.image) as src:
            valid = np.any(src.read_masks() > 0, axis=0)
        expected[~valid] = 0
        np.testing.assert_array_equal(label, expected, err_msg=chip.id)
        assert np.all((groups > 0) == (label > 0))
        assert label.any()


def test_point_labels_label_the_pixel_under_each_point(tmp_path):
    raster = make_scene(tmp_path)
    x0, y0 = ORIGIN
    cells = [(20, 30, 1), (20, 31, 2), (100, 60, 3), (140, 120, 1)]  # (col, row, class): two side by side
    points = gpd.GeoDataFrame({"klass": [c for _, _, c in cells]},
                              geometry=[Point(x0 + (col + 0.5) * RES, y0 - (row + 0.5) * RES) for col, row, _ in cells],
                              crs=UTM)
    points.to_file(tmp_path / "points.gpkg")
    out = export_training_data(raster, tmp_path / "points.gpkg", tmp_path / "chips", class_field="klass",
                               tile_size=32, stride=32, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"]["kind"] == "points"
    assert [(g["id"], g["class"], g["pixels"]) for g in meta["groups"]] == [(1, 1, 1), (2, 2, 1), (3, 3, 1), (4, 1, 1)]
    ds = open_chip_dataset(out)
    found = set()
    for i, chip in enumerate(ds.chips):
        _, label, groups = ds.read(i)
        col0, row0 = chip.window[:2]
        found |= {(col0 + c, row0 + r, int(label[r, c])) for r, c in zip(*np.nonzero(label))}
        assert np.array_equal(groups > 0, label > 0)
    assert found == set(cells)


def test_no_label_on_nodata_and_nodata_stripe_kept(scene, tmp_path):
    ds = open_chip_dataset(_export(scene, tmp_path / "chips"))
    for i in range(len(ds)):
        image, label, _ = ds.read(i)
        nodata = np.all(image == 0, axis=0)
        assert not np.any(label[nodata])


def test_dataset_json_holds_what_training_needs(scene, tmp_path):
    out = _export(scene, tmp_path / "chips")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["format"] == "sparsecover-chips" and meta["format_version"] == 1
    assert [b["name"] for b in meta["bands"]] == ["blue", "green", "red", "nir"]
    assert all(b["dtype"] == "uint16" and b["nodata"] == 0 for b in meta["bands"])
    assert [(c["value"], c["name"]) for c in meta["classes"]] == [(1, "water"), (2, "forest"), (3, "developed")]
    assert meta["classes"][0]["color"] == "#476ba1"  # water is blue by default
    assert meta["tile_size"] == 32 and meta["stride"] == 16 and meta["epsg"] == 32618
    # groups: one per polygon inside the scene, each with its class
    assert {g["id"]: g["class"] for g in meta["groups"]} == {1: 1, 2: 2, 3: 2, 4: 3}
    assert sum(meta["class_pixel_counts"].values()) == sum(g["pixels"] for g in meta["groups"])
    for chip in meta["chips"]:
        assert set(chip["group_ids"]) <= {1, 2, 3, 4}
        assert (out / chip["image"]).exists() and (out / chip["label"]).exists()


def test_statistics_cover_the_whole_raster_not_just_chips(scene, tmp_path):
    ds = open_chip_dataset(_export(scene, tmp_path / "chips"))
    with rasterio.open(scene[0]) as src:
        data = src.read()
    valid = np.all(data != 0, axis=0)
    for b, st in enumerate(ds.statistics):
        values = data[b][valid].astype(np.float64)
        assert st["count"] == values.size
        assert st["min"] == values.min() and st["max"] == values.max()
        assert st["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert st["std"] == pytest.approx(values.std(), rel=1e-9)
        assert st["p1"] == np.percentile(values, 1, method="inverted_cdf")
        assert st["p99"] == np.percentile(values, 99, method="inverted_cdf")


def test_float_statistics_use_a_second_histogram_pass(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.normal(1000, 50, (2, 120, 90)).astype("float32")
    data[:, :5] = np.nan
    raster = write_raster(tmp_path / "f.tif", data, nodata=float("nan"))
    labels = tmp_path / "l.gpkg"
    scene_polygons().iloc[[1]].to_file(labels)
    ds = open_chip_dataset(export_training_data(raster, labels, tmp_path / "c", class_field="classvalue",
                                                tile_size=32, stride=32, progress=False))
    values = data[0][np.isfinite(data[0])]
    st = ds.statistics[0]
    width = (values.max() - values.min()) / 4096
    assert abs(st["p1"] - np.percentile(values, 1)) <= 2 * width
    assert abs(st["p99"] - np.percentile(values, 99)) <= 2 * width
    assert st["mean"] == pytest.approx(values.mean(), rel=1e-6)


def test_all_tiles_writes_unlabelled_chips_but_never_all_nodata_ones(scene, tmp_path):
    sparse = open_chip_dataset(_export(scene, tmp_path / "a", tile_size=32, stride=32))
    full = open_chip_dataset(_export(scene, tmp_path / "b", tile_size=32, stride=32, all_tiles=True))
    assert len(full) > len(sparse)
    for i in range(len(full)):
        image, label, _ = full.read(i)
        assert np.any(np.all(image != 0, axis=0))


def test_edge_chips_cover_the_far_edges(scene, tmp_path):
    ds = open_chip_dataset(_export(scene, tmp_path / "c", tile_size=64, stride=64, all_tiles=True))
    cols = {tuple(json.loads((ds.root / "dataset.json").read_text())["chips"][i]["window"][:2])
            for i in range(len(ds))}
    assert (200 - 64, 150 - 64) in cols  # the last chip sits flush with the right and bottom edges


def test_classified_raster_labels_make_region_groups(tmp_path):
    raster = make_scene(tmp_path)
    classes = np.zeros((150, 200), dtype="uint8")
    classes[20:40, 30:60] = 1
    classes[20:40, 100:120] = 1  # a second region of class 1
    classes[80:120, 50:90] = 2
    # the label raster is on another grid (20 m): export resamples it onto the scene's grid
    coarse = classes[::2, ::2]
    labels = write_raster(tmp_path / "classes.tif", coarse, nodata=None, res=20.0)
    ds = open_chip_dataset(export_training_data(raster, labels, tmp_path / "c", tile_size=32,
                                                stride=16, progress=False))
    assert [c.value for c in ds.classes] == [1, 2]
    assert len(ds.groups) == 3
    assert ds.class_pixel_counts == {1: 20 * 30 + 20 * 20, 2: 40 * 40}


def test_a_label_rasters_class_names_and_colours_are_kept(tmp_path):
    """Names from the attribute table in the label raster's .aux.xml (as ArcGIS and sparsecover write
    it), colours from its colour table; --class-names / --class-colors override them."""
    from sparsecover.classes import ClassInfo, write_class_sidecar

    raster = make_scene(tmp_path)
    classes = np.zeros((150, 200), dtype="uint8")
    classes[20:40, 30:60] = 1
    classes[80:120, 50:90] = 2
    labels = write_raster(tmp_path / "classes.tif", classes, nodata=0)
    with rasterio.open(labels, "r+") as dst:
        dst.write_colormap(1, {1: (10, 20, 30, 255), 2: (40, 50, 60, 255)})
    write_class_sidecar(labels, [ClassInfo(1, "water", "#0a141e"), ClassInfo(2, "forest", "#28323c")], [0, 600, 1600])
    ds = open_chip_dataset(export_training_data(raster, labels, tmp_path / "c", tile_size=32, stride=16,
                                                progress=False))
    assert [(c.value, c.name, c.color) for c in ds.classes] == [(1, "water", "#0a141e"), (2, "forest", "#28323c")]
    from click.testing import CliRunner

    from sparsecover.cli import cli

    result = CliRunner().invoke(cli, ["export", str(raster), "--labels", str(labels), "--out", str(tmp_path / "d"),
                                      "--tile-size", "32", "--class-names", "2=woodland", "--class-colors", "1=#ff0000",
                                      "-q"])
    assert result.exit_code == 0, result.output
    ds = open_chip_dataset(tmp_path / "d")
    assert [(c.name, c.color) for c in ds.classes] == [("water", "#ff0000"), ("woodland", "#28323c")]
    bad = CliRunner().invoke(cli, ["export", str(raster), "--labels", str(labels), "--out", str(tmp_path / "e"),
                                   "--class-names", "woodland"])
    assert bad.exit_code == 2 and "is not VALUE=NAME" in bad.output


def test_several_rasters_make_one_dataset(tmp_path):
    first = make_scene(tmp_path)
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = make_scene(second_dir)
    labels = tmp_path / "l.gpkg"
    scene_polygons().iloc[:4].to_file(labels)
    ds = open_chip_dataset(export_training_data([first, second], labels, tmp_path / "c",
                                                class_field="classvalue", tile_size=32, stride=32,
                                                progress=False))
    sources = {json.loads((ds.root / "dataset.json").read_text())["chips"][i]["source"] for i in range(len(ds))}
    assert sources == {0, 1}
    # the same polygon seen in two rasters stays one group: no leakage between the two images
    assert len(ds.groups) == 4


def test_overwrite_and_no_half_written_output(scene, tmp_path):
    out = _export(scene, tmp_path / "chips")
    with pytest.raises(SparsecoverError, match="already exists; pass --overwrite"):
        export_training_data(scene[0], scene[1], out, class_field="classvalue", progress=False)
    _export(scene, out, overwrite=True)
    with pytest.raises(SparsecoverError, match="no field 'nope'"):
        export_training_data(scene[0], scene[1], tmp_path / "x", class_field="nope", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chips", "labels.gpkg", "scene.tif"]


def test_full_disk_gives_one_line_and_leaves_nothing(scene, tmp_path):
    """A chip that cannot be written (here: a file-size limit, which fails writes as a full disk does)."""
    import subprocess
    import sys

    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4_000, 4_000));"
        "from sparsecover.cli import main; sys.argv = ['sparsecover'] + sys.argv[1:]; main()"
    )
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, "-c", code, "export", str(scene[0]), "--labels", str(scene[1]), "--out", str(out / "chips"),
           "--class-field", "classvalue", "--tile-size", "128", "--stride", "64", "-q"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("_tiff")
             and "polygons lie outside" not in line and "warn" not in line.lower()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error:") and "is the disk full?" in lines[0] and "chips" in lines[0]
    assert list(out.iterdir()) == []


def test_gdal_messages_from_pool_threads_go_to_logging(tmp_path, caplog, capfd):
    """Stages read and write in thread pools; GDAL's messages there must reach Python logging like
    the main thread's, not stderr (rasterio's environment is per thread)."""
    import logging

    from sparsecover.raster import thread_pool

    def provoke(i: int) -> None:  # a colour table after the pixels: GDAL complains, harmlessly
        with rasterio.open(tmp_path / f"{i}.tif", "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                           crs="EPSG:32617", transform=rasterio.transform.from_origin(500_000, 4_000_000, 10, 10)) as dst:
            dst.write(np.ones((8, 8), "uint8"), 1)
            dst.write_colormap(1, {1: (255, 0, 0, 255)})

    with caplog.at_level(logging.INFO), thread_pool(2, "test") as pool:
        list(pool.map(provoke, range(2)))
    assert "PhotometricInterpretation" not in capfd.readouterr().err
    assert sum("PhotometricInterpretation" in r.getMessage() for r in caplog.records) == 2


def _rgba_scene(path: Path, fourth: np.ndarray) -> Path:
    """A 4-band uint8 GeoTIFF written as PHOTOMETRIC=RGB, which tags the fourth band alpha."""
    rng = np.random.default_rng(1)
    data = np.concatenate([rng.integers(30, 200, (3, 64, 64)), fourth[None]]).astype("uint8")
    with rasterio.open(path, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8", crs=UTM,
                       transform=from_origin(*ORIGIN, RES, RES), photometric="RGB", alpha="YES") as dst:
        dst.write(data)
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    return path


def test_an_alpha_tag_on_image_values_is_read_as_a_band(tmp_path):
    """4-band NAIP often carries its NIR band tagged alpha: it is imagery, not a mask."""
    nir = np.random.default_rng(2).integers(0, 200, (64, 64))
    nir[:8] = 0  # dark water in NIR: a value of 0 must not mask the pixel
    raster = _rgba_scene(tmp_path / "naip.tif", nir)
    with pytest.warns(SparsecoverWarning, match="band 4 is tagged alpha but holds image values"):
        with rasterio.open(raster) as src:
            source = describe(src)
    assert source.band_indexes == [1, 2, 3, 4]
    with rasterio.open(raster) as src:
        data, valid = read_window(src, Window(-4, -4, 72, 72), source.band_indexes)
    assert (data[3, 4:-4, 4:-4] == nir).all()
    assert valid[:, 4:-4, 4:-4].all() and not valid[:, :4].any()  # inside valid, the padding not


def test_a_real_alpha_band_stays_a_mask(tmp_path):
    alpha = np.full((64, 64), 255)
    alpha[:, :10] = 0
    raster = _rgba_scene(tmp_path / "rgba.tif", alpha)
    with rasterio.open(raster) as src:
        source = describe(src)
        assert source.band_indexes == [1, 2, 3]
        _, valid = read_window(src, Window(0, 0, 64, 64), source.band_indexes)
    assert not valid[:, :, :10].any() and valid[:, :, 10:].all()
