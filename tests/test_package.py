"""The model package: one file, bit-identical reload, ONNX parity, clear errors for damaged files."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import assert_same_map
from sparsecover import SparsecoverError, open_chip_dataset
from sparsecover.cli import cli
from sparsecover.classify import classify_pixels
from sparsecover.modelfile import EMD, ONNX, WEIGHTS, read_package
from sparsecover.package import export_onnx, onnx_session, save_package
from sparsecover.predict import load_model


@pytest.fixture(scope="module")
def run(trained_model):
    """The suite's shared trained run (ONNX included)."""
    return trained_model


def test_outputs_get_the_permissions_of_the_umask(run, train_chips, tmp_path):
    """A chip dataset or package on a shared disk is readable as the umask allows, not private."""
    import os
    import stat

    from sparsecover import export_training_data

    scene = train_chips.parent / "classes_scene.tif"
    old = os.umask(0o027)
    try:
        chips = export_training_data(scene, train_chips.parent / "polygons.gpkg", tmp_path / "chips",
                                     class_field="classvalue", tile_size=32, stride=32, progress=False)
        package = save_package(run, tmp_path / "shared.sparsecover")
    finally:
        os.umask(old)
    assert stat.S_IMODE(chips.stat().st_mode) == 0o750
    assert stat.S_IMODE(package.stat().st_mode) == 0o640


def torch_probabilities(model, raw: np.ndarray) -> np.ndarray:
    valid = np.ones(raw.shape[1:], dtype=bool)
    x = torch.from_numpy(model.normalisation.apply(raw, valid)[None])
    with torch.no_grad():
        return torch.softmax(model.network(x), 1).numpy()[0]


def test_training_writes_one_package_file_that_describes_itself(run):
    package = run / "model.sparsecover"
    meta, members = read_package(package)
    assert set(members) == {WEIGHTS, ONNX, EMD}
    assert set(meta["members"]) == {WEIGHTS, ONNX, EMD}
    for key in ("schema_version", "architecture", "encoder", "input_channels", "classes", "ignore_classes",
                "bands", "normalisation", "tile_size", "padding", "resolution", "crs", "training",
                "dataset", "versions", "created"):
        assert key in meta, key
    assert meta["dataset"]["sha256"] and len(meta["training"]["history"]) == 1
    emd = json.loads(members[EMD])
    assert emd["ModelType"] == "ImageClassification" and emd["Framework"] == "ONNX"
    assert [c["Value"] for c in emd["Classes"]] == [1, 2, 3] and emd["ImageHeight"] == 32


def test_one_reader_takes_the_package_the_run_and_its_model_folder(run):
    """open_model: the same model.json and weights from each of the three places a model lives;
    --weights (fine-tuning) reads a package too."""
    from sparsecover.model import build_model
    from sparsecover.modelfile import open_model

    metas, weights = zip(*(open_model(p) for p in (run / "model.sparsecover", run, run / "model")))
    assert weights[0] == weights[1] == weights[2]
    assert all(m["encoder"] == "resnet18" and m["classes"] == metas[0]["classes"] for m in metas)
    assert open_model(run, with_weights=False)[1] is None
    network = build_model(4, 3, "resnet18", encoder_depth=metas[0]["encoder_depth"],
                          weights=str(run / "model.sparsecover"))
    trained = load_model(run).network.context
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, trained.state_dict()[key], msg=key)


def test_save_load_gives_bit_identical_predictions(run, train_chips, tmp_path):
    scene = train_chips.parent / "classes_scene.tif"
    from_folder = classify_pixels(scene, run, tmp_path / "a.tif", tile_size=64, padding=16, progress=False)
    copy = save_package(run / "model.sparsecover", tmp_path / "copy.sparsecover")
    from_package = classify_pixels(scene, copy, tmp_path / "b.tif", tile_size=64, padding=16, progress=False)
    assert_same_map(from_folder, from_package)
    folder_model, package_model = load_model(run), load_model(copy)
    for (name, x), (_, y) in zip(folder_model.network.state_dict().items(), package_model.network.state_dict().items()):
        assert torch.equal(x, y), name


def test_onnx_matches_pytorch_on_chips(run, train_chips, tmp_path):
    model = load_model(run)
    onnx_path = export_onnx(run / "model.sparsecover", tmp_path / "m.onnx")
    assert onnx_path.with_suffix(".emd").exists()
    session = onnx_session(onnx_path.read_bytes())
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["model_type"]) == "Segmentor"
    assert json.loads(meta["class_names"]) == {"0": "class1", "1": "class2", "2": "class3"}
    assert json.loads(meta["tile_size"]) == 32 and json.loads(meta["resolution"]) == 1000.0
    assert json.loads(meta["standardization_std"]) == [1 / 255] * 4
    ds = open_chip_dataset(train_chips)
    raws = np.stack([ds.read(i)[0] for i in range(4)]).astype(np.float32)
    onnx_out = session.run(None, {"image": raws})[0]
    torch_out = np.stack([torch_probabilities(model, r) for r in raws])
    assert np.abs(onnx_out - torch_out).max() < 1e-4
    # dynamic spatial size
    big = np.tile(raws[:1], (1, 1, 2, 3))
    assert session.run(None, {"image": big})[0].shape == (1, 3, 64, 96)


def test_info_shows_the_package(run):
    result = CliRunner().invoke(cli, ["info", str(run / "model.sparsecover")])
    assert result.exit_code == 0, result.output
    for text in ("unet / resnet18", "blue (uint16)", "class1", "class3", "files", "trained", "validation"):
        assert text in result.output


def _rewrite(src, dst, drop=None, replace=None, meta_update=None):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == drop:
                continue
            if replace and name in replace:
                data = replace[name]
            if meta_update and name == "model.json":
                data = json.dumps({**json.loads(data), **meta_update}).encode()
            zout.writestr(name, data)
    return dst


def test_damaged_packages_give_one_clear_line(run, tmp_path):
    good = run / "model.sparsecover"
    data = good.read_bytes()
    truncated = tmp_path / "truncated.sparsecover"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SparsecoverError, match=r"truncated.sparsecover: not a readable model package .* copy it again"):
        load_model(truncated)
    missing = _rewrite(good, tmp_path / "missing.sparsecover", drop=WEIGHTS)
    with pytest.raises(SparsecoverError, match=r"member weights.safetensors is missing"):
        load_model(missing)
    tampered = _rewrite(good, tmp_path / "tampered.sparsecover", replace={WEIGHTS: b"x" * 100})
    with pytest.raises(SparsecoverError, match=r"weights.safetensors does not match its checksum"):
        load_model(tampered)
    newer = _rewrite(good, tmp_path / "newer.sparsecover", meta_update={"schema_version": 2})
    with pytest.raises(SparsecoverError, match=r"model schema 2 is newer than this sparsecover reads"):
        load_model(newer)
    text = tmp_path / "text.sparsecover"
    text.write_text("hello")
    with pytest.raises(SparsecoverError, match=r"text.sparsecover: not a model package \(not a zip archive\)"):
        load_model(text)
    result = CliRunner().invoke(cli, ["info", str(truncated)])
    assert result.exit_code == 2


def test_contract_warns_on_value_range_and_dtype(run, tmp_path):
    from conftest import write_raster
    from sparsecover import SparsecoverWarning
    from sparsecover.predict import check_raster

    scaled = write_raster(tmp_path / "reflectance.tif", np.full((4, 64, 64), 0.1, "float32"), nodata=0)
    with pytest.warns(SparsecoverWarning) as record:
        notes = check_raster(scaled, run / "model.sparsecover")
    text = " ".join(notes)
    assert "dtype float32 differs" in text and "band 1 (blue) has median 0.1" in text
    assert len(record) == len(notes)
