"""classify: a trained run -> classified GeoTIFF on the input grid, nodata carried, colours embedded."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from xml.etree import ElementTree

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.shutil

from conftest import assert_same_map, write_raster
from sparsecover import SparsecoverError
from sparsecover.classify import classify_pixels
from sparsecover.predict import load_model
from sparsecover.train import TrainConfig, train


@pytest.fixture(scope="module")
def trained(train_chips, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    # the full-depth encoder: classify's padding and seam checks need a network with wide context
    return train(train_chips, run, TrainConfig(backbone="resnet18", encoder_depth=5, epochs=3, lr=3e-3, quiet=True,
                                               seed=1, refit=False))


def test_classified_raster_matches_grid_and_carries_nodata(trained, train_chips, tmp_path):
    scene = train_chips.parent / "classes_scene.tif"
    with rasterio.open(scene) as src:
        data, profile = src.read(), src.profile
    data[:, :10, :] = 0  # a nodata strip
    data[0, 10:20, :] = 0  # band 1 alone missing: imputed, the pixels are still classified
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
    # the class names as GDAL gives them to QGIS (category names) and ArcGIS (attribute table),
    # read back by GDAL itself: a VRT copy of the map lists what GDAL read with it
    rasterio.shutil.copy(out, tmp_path / "as_read.vrt", driver="VRT")
    band = ElementTree.parse(tmp_path / "as_read.vrt").find("VRTRasterBand")
    assert [c.text or "" for c in band.find("CategoryNames")] == ["", "class1", "class2", "class3"]
    table = band.find("GDALRasterAttributeTable")
    assert [f.findtext("Name") for f in table.findall("FieldDefn")] == ["Value", "ClassName", "Count", "Red", "Green",
                                                                       "Blue"]
    rows = [[f.text for f in row] for row in table.findall("Row")]
    assert rows[0] == ["1", "class1", str((classes == 1).sum()), "78", "121", "167"]
    assert [int(r[2]) for r in rows] == [(classes == v).sum() for v in (1, 2, 3)]
    # QGIS's default style beside the map: a paletted renderer with the class colours and names
    palette = ElementTree.parse(tmp_path / "map.qml").findall("pipe/rasterrenderer/colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("label"), e.get("color")) for e in palette][0] == ("1", "class1", "#4e79a7")
    # `sparsecover info MAP`: each class's pixels, share and area (the scene's CRS is in metres)
    from click.testing import CliRunner

    from sparsecover.cli import cli
    from sparsecover.evaluate import map_classes

    summary, unit = map_classes(out)
    assert [(r["value"], r["name"], r["pixels"]) for r in summary] == [
        (v, f"class{v}", (classes == v).sum()) for v in (1, 2, 3) if (classes == v).any()]
    assert unit == "ha" and summary[0]["area"] == pytest.approx(
        summary[0]["pixels"] * abs(profile["transform"].a * profile["transform"].e) / 1e4)
    shown = CliRunner().invoke(cli, ["info", str(out)])
    # the classes the small network happens to predict vary with library versions: check those it did
    assert shown.exit_code == 0 and summary[0]["name"] in shown.output and f"{summary[0]['pixels']:,}" in shown.output
    band = CliRunner().invoke(cli, ["info", str(holed)])
    assert band.exit_code == 2 and "not a class map" in band.output


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


def test_settings_or_inputs_that_would_give_a_meaningless_map_are_refused(trained, tmp_path):
    from click.testing import CliRunner

    from sparsecover.cli import cli

    four = write_raster(tmp_path / "four.tif", np.full((4, 64, 64), 1000, "uint16"), nodata=0)
    for settings, message in [({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
                              ({"batch_size": -1}, "--batch-size must be at least 1, got -1"),
                              ({"padding": -32}, "--padding must be 0 or more, got -32")]:
        with pytest.raises(SparsecoverError, match=message):
            classify_pixels(four, trained, tmp_path / "o.tif", progress=False, **settings)
    result = CliRunner().invoke(cli, ["classify", str(four), str(trained), "--out", str(tmp_path / "o.tif"),
                                      "--batch-size", "-1", "-q"])
    assert result.exit_code == 2 and "--batch-size must be at least 1" in result.output
    assert len(result.output.strip().splitlines()) == 1
    # every pixel nodata: an error, not an all-nodata map
    empty = write_raster(tmp_path / "empty.tif", np.zeros((4, 64, 64), "uint16"), nodata=0)
    with pytest.raises(SparsecoverError, match=r"empty.tif: no pixel to classify"):
        classify_pixels(empty, trained, tmp_path / "o.tif", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif", "four.tif"]


def test_a_second_run_writing_the_same_output_is_refused(trained, tmp_path):
    from sparsecover.staging import exclusive

    four = write_raster(tmp_path / "four.tif", np.full((4, 64, 64), 1000, "uint16"), nodata=0)
    with exclusive(tmp_path / "o.tif"):  # as a first run holds it while it writes
        with pytest.raises(SparsecoverError, match=r"o.tif: another sparsecover run is writing it"):
            classify_pixels(four, trained, tmp_path / "o.tif", progress=False)
    assert classify_pixels(four, trained, tmp_path / "o.tif", progress=False).exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_confidence_probabilities_and_tta(trained, train_chips, tmp_path):
    scene = train_chips.parent / "classes_scene.tif"
    out = classify_pixels(scene, trained, tmp_path / "map.tif", tile_size=64, padding=16, tta=True,
                          confidence=tmp_path / "conf.tif", probabilities=tmp_path / "probs.tif", progress=False)
    classes = rasterio.open(out).read(1)
    with rasterio.open(tmp_path / "probs.tif") as src:
        probs = src.read()
        assert src.descriptions == ("class1", "class2", "class3") and src.count == 3
    confidence = rasterio.open(tmp_path / "conf.tif").read(1)
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-4)
    np.testing.assert_allclose(confidence, probs.max(0), atol=1e-6)
    assert np.array_equal(classes, np.array([1, 2, 3], dtype=np.uint8)[probs.argmax(0)])


def test_flip_tta_averages_the_tile_and_its_mirror_image(trained, train_chips):
    """classify's default test-time augmentation: each pixel's probabilities are the mean of the
    network's on the tile and on its mirror image, mirrored back; with --tta all, of all eight
    rotations and mirror images."""
    import torch
    from rasterio.windows import Window

    from sparsecover.classify.engine import Inference, Predictor, RawTile, read_tile

    loaded = load_model(trained)
    with rasterio.open(train_chips.parent / "classes_scene.tif") as src:
        tile = read_tile(src, Window(0, 0, 64, 64), [1, 2, 3, 4])
    mirrored = RawTile(np.ascontiguousarray(tile.data[..., ::-1]), None, np.ascontiguousarray(tile.valid[:, ::-1]))
    plain = Predictor(loaded, torch.device("cpu"), Inference(tta="none"))
    flip = Predictor(loaded, torch.device("cpu"), Inference(tta="flip"))
    expected = (plain([tile]) + plain([mirrored])[..., ::-1]) / 2
    probs = flip([tile])
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    assert not np.allclose(plain([tile]), expected, atol=1e-3)  # the two views differ: their mean is neither
    # for the class map alone a GPU takes the views' mean and its argmax on the device (a CPU leaves
    # the argmax to the writer's threads): the classes of the mean
    assert not flip.classes_only
    flip.classes_only = True
    np.testing.assert_array_equal(flip([tile]), np.array(loaded.class_values)[probs.argmax(1)])
    # all eight views: the mean of the network's on the rotated and mirrored tile, turned back
    views = []
    for k in range(4):
        for mirrored in (False, True):
            data = np.rot90(tile.data, k, (1, 2))
            data = data[..., ::-1] if mirrored else data
            view = plain([RawTile(np.ascontiguousarray(data), None, np.ones(data.shape[1:], bool))])[0]
            view = view[..., ::-1] if mirrored else view
            views.append(np.rot90(view, -k, (1, 2)))
    every = Predictor(loaded, torch.device("cpu"), Inference(tta="all"))([tile])[0]
    np.testing.assert_allclose(every, np.mean(views, axis=0), atol=1e-5)
    with pytest.raises(SparsecoverError, match="--tta must be one of none, flip, all, got 'both'"):
        classify_pixels(train_chips.parent / "classes_scene.tif", loaded, "never.tif", tta="both", progress=False)


def test_a_cpu_batch_holds_the_tiles_values_as_float32_with_invalid_bands_filled(trained):
    """On a CPU the copy into the batch converts (uint16 -> float32 in one pass); the values are the
    tiles' exactly, strided views included, and an invalid band value becomes the band's mean."""
    import torch

    from sparsecover.classify.engine import Inference, Predictor, RawTile

    loaded = load_model(trained)
    predictor = Predictor(loaded, torch.device("cpu"), Inference(tta="none"))
    run = np.random.default_rng(0).integers(0, 65535, (4, 8, 20), dtype=np.uint16)
    band_valid = np.ones((4, 8, 10), bool)
    band_valid[2, 3, 4] = False
    tiles = [RawTile(run[..., :10], None, np.ones((8, 10), bool)), RawTile(run[..., 10:], band_valid, band_valid.any(0))]
    x = predictor.batch(tiles)
    assert x.dtype == torch.float32 and x.shape == (2, 4, 8, 10)
    expected = np.stack([run[..., :10], run[..., 10:]]).astype(np.float32)
    expected[1, 2, 3, 4] = loaded.normalisation.mean[2]
    np.testing.assert_array_equal(x.numpy(), expected)


def test_class_prior_labels_applies_the_decision_offsets_and_balanced_leaves_them_out(trained, train_chips, tmp_path):
    scene = train_chips.parent / "classes_scene.tif"
    loaded = load_model(trained)
    loaded.meta["decision_offsets"] = [0.5, -1.0, 0.2]
    kw = dict(tile_size=64, padding=16, progress=False, tta="none")  # one view: its probabilities are tilted exactly
    labels = classify_pixels(scene, loaded, tmp_path / "l.tif", probabilities=tmp_path / "pl.tif", **kw)
    balanced = classify_pixels(scene, loaded, tmp_path / "b.tif", probabilities=tmp_path / "pb.tif",
                               class_prior="balanced", **kw)
    p_labels, p_balanced = (rasterio.open(tmp_path / name).read() for name in ("pl.tif", "pb.tif"))
    tilted = p_balanced * np.exp(np.array([0.5, -1.0, 0.2]))[:, None, None]
    np.testing.assert_allclose(p_labels, tilted / tilted.sum(0), atol=1e-4)
    assert (rasterio.open(labels).read(1) != rasterio.open(balanced).read(1)).any()
    with pytest.raises(SparsecoverError, match="--class-prior must be labels or balanced"):
        classify_pixels(scene, loaded, tmp_path / "x.tif", class_prior="uniform", **kw)


def test_onnx_engine_matches_torch(trained, train_chips, tmp_path):
    scene = train_chips.parent / "classes_scene.tif"
    a = classify_pixels(scene, trained, tmp_path / "t.tif", tile_size=64, padding=16, probabilities=tmp_path / "tp.tif",
                        progress=False, precision="fp32")  # the ONNX graph is fp32
    b = classify_pixels(scene, trained, tmp_path / "o.tif", tile_size=64, padding=16, engine="onnx",
                        probabilities=tmp_path / "op.tif", progress=False)
    pa, pb = rasterio.open(tmp_path / "tp.tif").read(), rasterio.open(tmp_path / "op.tif").read()
    assert np.abs(pa - pb).max() < 1e-4
    torch_map, onnx_map = rasterio.open(a).read(1), rasterio.open(b).read(1)
    assert (torch_map == onnx_map).mean() > 0.999 and torch_map.all()  # every pixel classified by both


def test_aoi(trained, train_chips, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    from conftest import ORIGIN, RES, UTM

    scene = train_chips.parent / "classes_scene.tif"
    x0, y0 = ORIGIN
    gpd.GeoDataFrame(geometry=[box(x0, y0 - 64 * RES, x0 + 64 * RES, y0)], crs=UTM).to_file(tmp_path / "aoi.gpkg")
    classes = rasterio.open(classify_pixels(scene, trained, tmp_path / "m.tif", aoi=tmp_path / "aoi.gpkg",
                                            tile_size=64, padding=16, progress=False)).read(1)
    assert classes[:64, :64].all() and not classes[64:].any() and not classes[:, 64:].any()
    gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs=UTM).to_file(tmp_path / "far.gpkg")
    with pytest.raises(SparsecoverError, match="far.gpkg: the AOI lies outside"):
        classify_pixels(scene, trained, tmp_path / "n.tif", aoi=tmp_path / "far.gpkg", progress=False)


@pytest.mark.slow
def test_dask_two_workers_equal_single_process(trained, train_chips, tmp_path):
    pytest.importorskip("distributed")
    scene = train_chips.parent / "classes_scene.tif"
    package = trained / "model.sparsecover"
    one = classify_pixels(scene, package, tmp_path / "one.tif", tile_size=64, padding=16, progress=False)
    two = classify_pixels(scene, package, tmp_path / "two.tif", tile_size=64, padding=16, workers=2, progress=False)
    assert_same_map(one, two)


@pytest.mark.slow
@pytest.mark.parametrize("readers", [0, 3])
def test_resume_after_sigkill_gives_the_uninterrupted_result(trained, train_chips, tmp_path, readers):
    """Killed mid-run and resumed: the uninterrupted map. With reading threads (a GPU host's path,
    forced here) blocks are written in the readers' turn, not the raster's order."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with rasterio.open(train_chips.parent / "classes_scene.tif") as src:
        data = src.read()
    big = write_raster(tmp_path / "big.tif", np.tile(data, (1, 5, 5)), nodata=0)  # 640 x 640: overview level 2
    package = str(trained / "model.sparsecover")
    # batches of 3 are written as strips of 3 cores, resumed core by core; the reference tile by tile
    reference = classify_pixels(big, package, tmp_path / "ref.tif", tile_size=64, padding=16, batch_size=1,
                                progress=False)
    out = tmp_path / "map.tif"
    args = ["classify", str(big), package, "--out", str(out), "--tile-size", "64", "--padding", "16",
            "--batch-size", "3", "-q", "--device", "cpu"]
    cmd = [sys.executable, "-c", "from sparsecover.classify import schedule; from sparsecover.cli import main; "
           f"schedule.reading_threads = lambda device: {readers}; main()", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    state = tmp_path / ".map.tif.state.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if state.exists():
            try:
                if len(json.loads(state.read_text())["done"]) >= 20:
                    break
            except ValueError:
                pass
        if proc.poll() is not None:
            pytest.fail(f"classify ended before it could be killed: {proc.stderr.read().decode()}")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists() and state.exists()
    # as if the kill had come between the final renames: an output already in place is the run's own
    out.write_bytes(b"renamed into place before the kill")
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_same_map(out, reference)
    with rasterio.open(out, overview_level=0) as resumed, rasterio.open(reference, overview_level=0) as uninterrupted:
        assert resumed.shape == (320, 320) and np.array_equal(resumed.read(1), uninterrupted.read(1))
    with rasterio.open(out) as result:
        assert result.colormap(1)[1] == (0x4E, 0x79, 0xA7, 255)
        assert result.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG" and result.profile["compress"] == "deflate"
    # the class counts of the attribute table survive the kill: those of the blocks done before it
    # were saved with them, those written after the last checkpoint are counted again
    assert Path(f"{out}.aux.xml").read_text() == Path(f"{reference}.aux.xml").read_text()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".map.tif")]
    # a resume with other settings, another model or a rewritten raster at the same paths is refused,
    # naming the difference
    stamp = f"{big.stat().st_size} bytes, modified {big.stat().st_mtime_ns} ns"
    settings = {"raster": str(big.resolve()), "raster_stamp": stamp, "model": str(Path(package).resolve()),
                "model_sha256": load_model(package).weights_sha256, "tile_size": 64, "padding": 16, "tta": "flip",
                "engine": "torch", "aoi": None}

    def interrupted(**changes):
        state = {"settings": {**settings, **changes}, "done": [], "counts": [0] * 256}
        (tmp_path / ".y.tif.state.json").write_text(json.dumps(state))
        for partial in (".y.tif.partial.tif", ".y.tif.partial.ovr2.tif"):  # the output and its overview level
            (tmp_path / partial).write_bytes(reference.read_bytes())

    interrupted()
    with pytest.raises(SparsecoverError, match="--resume with another input, model or settings: padding was 16, now 8"):
        classify_pixels(big, package, tmp_path / "y.tif", tile_size=64, padding=8, progress=False, resume=True)
    interrupted(model_sha256="0" * 64)
    with pytest.raises(SparsecoverError, match="model_sha256 was '0000"):
        classify_pixels(big, package, tmp_path / "y.tif", tile_size=64, padding=16, progress=False, resume=True)
    interrupted(raster_stamp="1 bytes, modified 0 ns")
    with pytest.raises(SparsecoverError, match="raster_stamp was '1 bytes, modified 0 ns'"):
        classify_pixels(big, package, tmp_path / "y.tif", tile_size=64, padding=16, progress=False, resume=True)
    # and so is the record of an older sparsecover, which had no class counts
    (tmp_path / ".y.tif.state.json").write_text(json.dumps({"settings": settings, "done": []}))
    with pytest.raises(SparsecoverError, match="older sparsecover .no class counts.; rerun without --resume"):
        classify_pixels(big, package, tmp_path / "y.tif", tile_size=64, padding=16, progress=False, resume=True)


def test_cli_classifies_several_rasters_into_a_folder(trained, train_chips, tmp_path):
    from click.testing import CliRunner

    from sparsecover.cli import cli

    scene = train_chips.parent / "classes_scene.tif"
    with rasterio.open(scene) as src:
        data = src.read()
    first = write_raster(tmp_path / "first.tif", data, nodata=0)
    second = write_raster(tmp_path / "second.tif", data[:, :64, :64], nodata=0)
    maps, confidence = tmp_path / "maps", tmp_path / "conf"
    maps.mkdir()
    confidence.mkdir()
    vectors = tmp_path / "vectors"
    vectors.mkdir()
    args = ["classify", str(first), str(second), str(trained), "--out", str(maps), "--confidence", str(confidence),
            "--vector", str(vectors), "--min-area", "3px", "--tile-size", "64", "--padding", "16", "-q"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with rasterio.open(maps / "first.tif") as a, rasterio.open(maps / "second.tif") as b:
        assert a.shape == data.shape[1:] and b.shape == (64, 64)
        single = classify_pixels(first, trained, tmp_path / "single.tif", tile_size=64, padding=16, progress=False)
        assert np.array_equal(a.read(1), rasterio.open(single).read(1))
    assert (confidence / "first.tif").exists() and (confidence / "second.tif").exists()
    polygons = gpd.read_file(vectors / "second.gpkg", layer="second")
    assert polygons.pixels.min() >= 3 and polygons.pixels.sum() == (rasterio.open(maps / "second.tif").read(1) > 0).sum()
    result = CliRunner().invoke(cli, ["classify", str(first), str(second), str(trained), "--out", str(tmp_path / "x.tif")])
    assert result.exit_code == 2 and "must be existing folders" in result.output
    # the Python API fans out the same way
    from sparsecover import classify_rasters

    (tmp_path / "api").mkdir()
    written = classify_rasters([first, second], trained, tmp_path / "api", tile_size=64, padding=16, progress=False)
    assert [w["classes"] for w in written] == [tmp_path / "api" / "first.tif", tmp_path / "api" / "second.tif"]
    assert_same_map(written[0]["classes"], maps / "first.tif")


def test_full_disk_gives_one_line_and_leaves_nothing(trained, tmp_path):
    """A write that fails for lack of space (here: a file-size limit, which fails writes the same way)."""
    import subprocess
    import sys

    noisy = np.random.default_rng(0).integers(800, 1300, (4, 1024, 1024)).astype("uint16")  # barely compressible
    big = write_raster(tmp_path / "big.tif", noisy, nodata=0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4_000, 4_000));"
        "from sparsecover.cli import main; sys.argv = ['sparsecover'] + sys.argv[1:]; main()"
    )
    cmd = [sys.executable, "-c", code, "classify", str(big), str(trained / "model.sparsecover"), "--out",
           str(out_dir / "map.tif"), "--confidence", str(out_dir / "conf.tif"), "--tile-size", "256",
           "--padding", "16", "-q", "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    # libtiff prints its own "_tiffWriteProc: File too large." lines to stderr first (outside Python's
    # reach); sparsecover's part is one error line and no traceback
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("_tiff")]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error:") and "is the disk full?" in lines[0] and "map.tif" in lines[0]
    assert list(out_dir.iterdir()) == []


def test_a_failed_flush_of_cached_blocks_raises(tmp_path):
    """Windows wait in GDAL's block cache until the file is closed; rasterio's close() does not report
    a failure to write them, close_checked must (else a full disk leaves a truncated partial file, and
    a --resume checkpoint records blocks that are not on disk)."""
    import subprocess
    import sys

    code = (
        "import resource, signal, numpy as np, rasterio; from rasterio.windows import Window;"
        "from sparsecover.raster import close_checked, gdal_env;"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); resource.setrlimit(resource.RLIMIT_FSIZE, (4_000, 4_000));"
        "rows = np.random.default_rng(0).integers(0, 255, (100, 1024)).astype('uint8');"
        "env = gdal_env(); env.__enter__();"
        f"f = rasterio.open({str(tmp_path / 'p.tif')!r}, 'w', driver='GTiff', width=1024, height=1024, count=1,"
        " dtype='uint8', tiled=True, compress='deflate');"
        "[f.write(rows, 1, window=Window(0, r, 1024, 100)) for r in range(0, 1000, 100)];"
        "print('written', flush=True); close_checked(f)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "written" in done.stdout  # the writes themselves went to the cache without an error
    assert done.returncode == 1 and "OSError" in done.stderr and "p.tif" in done.stderr, done.stderr


def test_blocks_cover_the_raster_once_with_padding_context_inside_it():
    from sparsecover.classify.plan import MULTIPLE, plan_blocks
    from sparsecover.overviews import ALIGNED

    rng = np.random.default_rng(0)
    cases = [(5799, 3894, 1024, 32), (489, 443, 1024, 64), (10, 2000, 512, 96), (4096, 4096, 1024, 64),
             (1025, 1100, 1024, 32), (3000, 700, 256, 0)]
    cases += [(int(rng.integers(1, 5000)), int(rng.integers(1, 5000)), 32 * int(rng.integers(4, 40)),
               int(rng.integers(0, 64))) for _ in range(40)]
    for width, height, tile_size, padding in cases:
        if tile_size < 2 * padding + MULTIPLE:
            continue
        blocks = plan_blocks(width, height, tile_size, padding)
        covered = np.zeros((height, width), np.uint8)
        for block in blocks:
            core, tile = block.core, block.tile
            covered[int(core.row_off) : int(core.row_off + core.height),
                    int(core.col_off) : int(core.col_off + core.width)] += 1
            assert (tile.width, tile.height) == (blocks[0].tile.width, blocks[0].tile.height)  # one batch shape
            for start, size, core_start, core_size, length in ((tile.col_off, tile.width, core.col_off, core.width, width),
                                                              (tile.row_off, tile.height, core.row_off, core.height, height)):
                assert size % MULTIPLE == 0 and size <= tile_size and start % MULTIPLE == 0  # aligned: see axis_layout
                assert 0 <= start and start + size < length + MULTIPLE  # no fill computed for nothing
                assert core_start - start >= padding or core_start == 0  # context before the core ...
                assert start + size - (core_start + core_size) >= padding or core_start + core_size == length  # after
            # overview levels up to ALIGNED are computed core by core: bounds must be multiples of it
            assert core_start % ALIGNED == 0 and ((core_start + core_size) % ALIGNED == 0 or core_start + core_size == length)
        assert (covered == 1).all(), (width, height, tile_size, padding)
        banded = plan_blocks(width, height, tile_size, padding, pixel_bytes=8)  # the same blocks, another order
        assert sorted(map(repr, banded)) == sorted(map(repr, blocks))
    # the 5799 x 3894 px benchmark scene: 6 x 4 tiles of 1024 px (fixed 960 px cores would need 7 x 5)
    blocks = plan_blocks(5799, 3894, 1024, 32)
    assert len(blocks) == 24 and blocks[0].tile.width == blocks[0].tile.height == 1024
    only = plan_blocks(489, 443, 1024, 64)  # one tile just big enough, not 1024 x 1024
    # a wide raster is read in bands of tile columns, each down the whole raster, so that the input
    # blocks under the overlap of two tile rows are still in GDAL's cache (64 MB: 4 x 1024 px of 8 bytes)
    wide = plan_blocks(30000, 3000, 1024, 32, pixel_bytes=8)
    assert [int(b.tile.row_off) for b in wide[:5]] == [0, 0, 0, 0, int(wide[4].tile.row_off)] and wide[4].tile.row_off > 0
    assert wide[4].tile.col_off == 0 and len({b.tile.col_off for b in wide[:12]}) == 4
    assert len(only) == 1 and (only[0].tile.width, only[0].tile.height) == (512, 448)


def test_threaded_reading_gives_the_same_map(trained, train_chips, tmp_path, monkeypatch):
    """On a GPU tiles are read by a thread pool ahead of the model (on a CPU inline), and on many
    cores several threads prepare the batches the writer writes: same map, nodata holes and a
    batch that does not divide the tile count included; and the same map whether cores are
    written one by one or joined into strips (batch size 1 vs 3)."""
    from rasterio._env import get_gdal_config

    from sparsecover.classify import schedule
    from sparsecover.classify.engine import read_run as engine_read_run
    from sparsecover.raster import GDAL_CACHE_BYTES

    with rasterio.open(train_chips.parent / "classes_scene.tif") as src:
        data = src.read()
    data[:, :10, :] = 0
    scene = write_raster(tmp_path / "holed.tif", data, nodata=0)
    inline = classify_pixels(scene, trained, tmp_path / "inline.tif", tile_size=64, padding=16, batch_size=1,
                             progress=False)
    monkeypatch.setattr(schedule, "reading_threads", lambda device: 2)
    monkeypatch.setattr(schedule, "preparing_threads", lambda: 3)  # as on a 12-15 core host
    settings = []

    def read_run(*args):  # what GDAL is told while each run is read
        time.sleep(0.02)  # the readers' shares differ in length: one finishes first
        settings.append((threading.current_thread().name, get_gdal_config("GDAL_NUM_THREADS"),
                         get_gdal_config("GDAL_CACHEMAX")))
        return engine_read_run(*args)

    monkeypatch.setattr(schedule, "read_run", read_run)
    threaded = classify_pixels(scene, trained, tmp_path / "threaded.tif", tile_size=64, padding=16, batch_size=3,
                               progress=False)
    assert_same_map(inline, threaded)
    # each reader decodes alone, and the cache holds both readers' shares to the last read
    assert len({thread for thread, *_ in settings}) == 2
    assert {(threads, cache) for _, threads, cache in settings} == {(1, 2 * GDAL_CACHE_BYTES)}


def test_tiles_read_as_runs_equal_tiles_read_one_by_one(train_chips, tmp_path):
    """The reading threads read the tiles side by side in a tile row as one window and cut it
    apart: the same values and validity as reading each tile, at the raster's edges and nodata too."""
    from sparsecover.classify.engine import read_run, read_tile
    from sparsecover.classify.plan import plan_blocks, tile_runs

    with rasterio.open(train_chips.parent / "classes_scene.tif") as src:
        data = src.read()
    data[:, :10, :] = 0
    data[1, 30:40, 20:50] = 0  # one band missing
    scene = write_raster(tmp_path / "holed.tif", data, nodata=0)
    blocks = plan_blocks(data.shape[2], data.shape[1], 64, 16, pixel_bytes=8)
    runs = tile_runs(blocks)
    assert [b for run in runs for b in run] == blocks and len(runs) < len(blocks) and max(map(len, runs)) > 2
    with rasterio.open(scene) as src:
        for run in runs:
            for block, cut in zip(run, read_run(src, run, [1, 2, 3, 4])):
                alone = read_tile(src, block.tile, [1, 2, 3, 4])
                assert np.array_equal(cut.data, alone.data) and np.array_equal(cut.valid, alone.valid)
                full = [np.ones(alone.data.shape, bool) if t.band_valid is None else t.band_valid for t in (cut, alone)]
                assert np.array_equal(*full)


def test_a_batch_out_of_gpu_memory_is_split_in_halves(trained, train_chips, tmp_path, monkeypatch):
    """The CUDA batch size is a guess: a batch that runs out of memory is split and the map is the
    same; a single tile that does not fit is one clear error. (No GPU here: the forward pass raises
    torch's own OutOfMemoryError for batches over 1 tile.)"""
    import torch

    from sparsecover.classify.engine import Predictor

    scene = train_chips.parent / "classes_scene.tif"
    whole = classify_pixels(scene, trained, tmp_path / "whole.tif", tile_size=64, padding=16, batch_size=4,
                            progress=False)
    forward, sizes = Predictor._torch_forward, []

    def small_memory(self, batch, fits: int = 1):
        sizes.append(len(batch))
        if len(batch) > fits:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, batch)

    monkeypatch.setattr(Predictor, "_torch_forward", small_memory)
    split = classify_pixels(scene, trained, tmp_path / "split.tif", tile_size=64, padding=16, batch_size=4,
                            progress=False)
    assert 4 in sizes and 2 in sizes and 1 in sizes
    assert_same_map(whole, split)

    monkeypatch.setattr(Predictor, "_torch_forward", lambda self, batch: small_memory(self, batch, fits=0))
    with pytest.raises(SparsecoverError, match="ran out of memory on a single tile; pass a smaller --tile-size"):
        classify_pixels(scene, trained, tmp_path / "none.tif", tile_size=64, padding=16, batch_size=1, progress=False)
    assert not (tmp_path / "none.tif").exists()


def test_overview_reductions_match_a_brute_force_mode_and_mean():
    from sparsecover.overviews import mean_2x2, mode_2x2

    rng = np.random.default_rng(0)
    classes = rng.choice(np.array([0, 1, 2, 3, 7], dtype=np.uint8), size=(41, 37), p=[0.3, 0.3, 0.2, 0.1, 0.1])
    values = rng.random((2, 41, 37)).astype(np.float32)
    values[:, classes == 0] = -1
    mode, mean = mode_2x2(classes), mean_2x2(values, -1)
    assert mode.shape == mean.shape[1:] == (21, 19)
    for r in range(21):
        for c in range(19):
            cell = classes[2 * r : 2 * r + 2, 2 * c : 2 * c + 2].ravel()
            valid = cell[cell > 0]
            if not len(valid):
                assert mode[r, c] == 0 and (mean[:, r, c] == -1).all()
                continue
            counts = {v: (valid == v).sum() for v in valid}
            assert counts[mode[r, c]] == max(counts.values())  # a most frequent valid class (ties: any)
            cells = values[:, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].reshape(2, -1)
            np.testing.assert_allclose(mean[:, r, c], cells[:, cell > 0].mean(1), rtol=1e-6)


@pytest.mark.parametrize("aligned", [16, 2])
def test_overviews_written_block_by_block_equal_the_whole_map_reduced(trained, tmp_path, monkeypatch, aligned):
    """Levels up to ALIGNED come from each block as it is written, the ones above from the level
    below at the end (ALIGNED = 2 makes this small raster, levels 2 and 4, use both paths); either way they must equal
    the finished map reduced as a whole, and be the COG's overviews."""
    from sparsecover import overviews

    monkeypatch.setattr(overviews, "ALIGNED", aligned)
    noisy = np.random.default_rng(1).integers(500, 1500, (4, 1100, 1300)).astype("uint16")
    noisy[:, :100, :150] = 0  # nodata in the corner
    raster = write_raster(tmp_path / "r.tif", noisy, nodata=0)
    out = classify_pixels(raster, trained, tmp_path / "map.tif", tile_size=256, padding=16, batch_size=2,
                          confidence=tmp_path / "conf.tif", progress=False)
    for path, nodata in ((out, 0), (tmp_path / "conf.tif", 0)):
        with rasterio.open(path) as src:
            assert src.overviews(1) == [2, 4] == overviews.levels(src.width, src.height)
            level = src.read(1)
            for factor in src.overviews(1):
                level = overviews.reduce_2x2(level, nodata)
                with rasterio.open(path, overview_level=src.overviews(1).index(factor)) as ovr:
                    assert ovr.shape == level.shape
                    assert np.array_equal(ovr.read(1), level), factor
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bf16_maps_agree_with_fp32_and_auto_follows_the_cpu(trained, train_chips, tmp_path):
    """bf16 autocast on the CPU changes few pixels; auto picks it only where the CPU has native bf16."""
    import torch

    from sparsecover.classify.engine import cpu_has_bf16, use_bf16

    scene = train_chips.parent / "classes_scene.tif"
    maps = {p: rasterio.open(classify_pixels(scene, trained, tmp_path / f"{p}.tif", tile_size=64, padding=16,
                                             progress=False, precision=p)).read(1) for p in ("fp32", "bf16")}
    valid = maps["fp32"] > 0
    assert valid.mean() > 0.5 and (maps["fp32"] == maps["bf16"])[valid].mean() >= 0.995
    amd = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
    old = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"
    assert cpu_has_bf16(amd) and not cpu_has_bf16(old) and cpu_has_bf16("flags : amx_bf16 amx_tile")
    cpu = torch.device("cpu")
    assert use_bf16("auto", cpu, "torch") == cpu_has_bf16() and not use_bf16("auto", cpu, "onnx")
    assert use_bf16("bf16", cpu, "torch") and not use_bf16("fp32", torch.device("cuda"), "torch")
    with pytest.raises(SparsecoverError, match="--precision must be"):
        classify_pixels(scene, trained, tmp_path / "x.tif", precision="fp16", progress=False)
