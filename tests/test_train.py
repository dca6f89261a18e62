"""train: runs, leak-free split, reproducibility, resume after SIGKILL, DDP with two CPU processes."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio import features

from conftest import assert_same_map, class_polygons, make_class_scene
from sparsecover import SparsecoverError, export_training_data, open_chip_dataset
from sparsecover.data import IGNORE_INDEX, UNLABELLED
from sparsecover.model import adapt_first_conv
from sparsecover.train import TrainConfig, prepare, train

# The per-pixel model (tests/test_spectral.py) costs ~2.5 s a training: most tests here leave it out;
# those of determinism, resume, ensembles, fine-tuning and DDP train the default pooled network (POOLED),
# in process with its fit shortened (conftest.short_spectral_fit).
# The refit on every polygon doubles a training: the tests of the refit (and of resume and ensembles) ask for it.
FAST = dict(backbone="resnet18", epochs=2, lr=1e-3, batch_size=8, quiet=True, seed=7, spectral=False, refit=False)
POOLED = {**FAST, "spectral": True}


def _history(run):
    with open(run / "history.csv") as fh:
        return list(csv.DictReader(fh))


def _burn_on_chip(polygons, chip) -> np.ndarray:
    with rasterio.open(chip.label) as src:
        return features.rasterize(polygons.geometry, out_shape=(src.height, src.width), transform=src.transform,
                                  all_touched=True)


def test_no_validation_pixel_lies_in_a_training_polygon(train_chips):
    prepared = prepare(train_chips, TrainConfig(val_fraction=0.34, seed=1))
    split = prepared.split
    assert split.train_groups and split.valid_groups and not split.train_groups & split.valid_groups
    polygons = gpd.read_file(train_chips.parent / "polygons.gpkg")
    train_polys = polygons.iloc[[g - 1 for g in sorted(split.train_groups)]]
    scored = 0
    for position, index in enumerate(prepared.valid.indices):
        _, target = prepared.valid[position]
        chip = prepared.dataset.chips[index]
        inside_train = _burn_on_chip(train_polys, chip)
        scored_pixels = target.numpy() != IGNORE_INDEX
        assert not np.any(scored_pixels & (inside_train > 0)), chip.id
        scored += scored_pixels.sum()
    # each validation pixel is scored once, however many validation chips overlap it
    valid_pixels = sum(prepared.dataset.groups[g]["pixels"] for g in split.valid_groups)
    assert scored == valid_pixels
    # training chips: no label of a validation polygon; the rest of each valid pixel is UNLABELLED
    valid_polys = polygons.iloc[[g - 1 for g in sorted(split.valid_groups)]]
    labelled_chips = 0
    for position, index in enumerate(prepared.train.indices):
        _, target = prepared.train._load(position)  # before augmentation, aligned with the chip
        chip = prepared.dataset.chips[index]
        inside_valid = _burn_on_chip(valid_polys, chip)
        assert not np.any((target < UNLABELLED) & (inside_valid > 0)), chip.id
        assert set(np.unique(target)) <= set(range(len(prepared.mapping.values))) | {UNLABELLED, IGNORE_INDEX}
        labelled_chips += bool((target < UNLABELLED).any())
    assert labelled_chips > 0


def test_strong_view_is_aligned_and_cuts_out_a_square():
    from sparsecover.task import strong_view

    torch.manual_seed(0)
    image = torch.randn(4, 3, 32, 32)
    strong = strong_view(image)
    assert strong.shape == image.shape
    cut = (strong == 0).all(1)  # the cut-out square, all bands at the mean
    for sample in range(4):
        rows, cols = torch.nonzero(cut[sample], as_tuple=True)
        side = int(rows.max() - rows.min() + 1)
        assert 8 <= side <= 16 and int(cols.max() - cols.min() + 1) == side and len(rows) == side * side
    kept = ~cut[:, None].expand_as(image)
    # outside the square, a per-band affine change plus small noise: still strongly correlated
    assert np.corrcoef(image[kept].numpy(), strong[kept].numpy())[0, 1] > 0.8


def test_semi_supervised_training_uses_unlabelled_pixels_and_can_be_turned_off(train_chips, tmp_path):
    supervised = prepare(train_chips, TrainConfig(unlabelled_weight=0, seed=1))
    semi = prepare(train_chips, TrainConfig(seed=1))
    assert len(semi.train) >= len(supervised.train)  # every chip, also those with only validation groups
    run = train(train_chips, tmp_path / "semi", TrainConfig(**{**FAST, "epochs": 1}))
    assert json.loads((run / "config.json").read_text())["settings"]["unlabelled_weight"] == 1.0
    assert float(_history(run)[0]["train_loss"]) > 0


@pytest.mark.parametrize("spectral", [False, True])
def test_pseudo_labels_come_from_the_model_that_makes_the_map(spectral):
    from sparsecover.task import SegmentationTask

    task = SegmentationTask(num_bands=3, num_classes=3, class_weights=[1.0, 1.0, 1.0], backbone="resnet18",
                            architecture="unet", lr=1e-3, weight_decay=0.0, encoder_depth=3, spectral=spectral)
    image = torch.randn(2, 3, 32, 32)
    context = torch.zeros(2, 3, 32, 32)
    context[:, 0] = 3.0  # the context network alone: class 0, confident (p = 0.91)
    if spectral:  # the per-pixel model: class 2, sure of it everywhere
        last = task.model.spectral.layers[-1]
        torch.nn.init.zeros_(last.weight)
        last.bias.data = torch.tensor([0.0, 0.0, 12.0])
    confidence, pseudo = task.pseudo_labels(image, context)
    assert pseudo.shape == (2, 32, 32)
    if spectral:  # the pool: 0.5 x (log p_context + log p_spectral), renormalised
        expected = torch.softmax(0.5 * (torch.log_softmax(context, 1) + torch.log_softmax(
            torch.tensor([0.0, 0.0, 12.0]).view(1, 3, 1, 1).expand(2, 3, 32, 32), 1)), 1)
        assert (pseudo == 2).all()
        assert torch.allclose(confidence, expected[:, 2], atol=1e-5)
    else:
        assert (pseudo == 0).all()
        assert torch.allclose(confidence, torch.softmax(context, 1)[:, 0])


def test_labelled_pixels_are_learned_from_both_views():
    from sparsecover.task import SegmentationTask, strong_view

    torch.manual_seed(1)  # the network's start and the image: the same test every run
    task = SegmentationTask(num_bands=3, num_classes=2, class_weights=[1.0, 3.0], backbone="resnet18",
                            architecture="unet", lr=1e-3, weight_decay=0.0, encoder_depth=3, unlabelled_weight=1.0,
                            pseudo_threshold=0.6)  # low enough that an untrained network passes it somewhere
    task.log = lambda *args, **kwargs: None  # no trainer attached
    image = torch.randn(2, 3, 32, 32)
    target = torch.full((2, 32, 32), UNLABELLED)
    target[:, :8, :8] = 1
    target[:, 20:, 20:] = 0
    torch.manual_seed(0)
    loss = task.training_step((image, target), 0)

    torch.manual_seed(0)  # the same strong view again
    logits = task.model(torch.cat([image, strong_view(image)]))
    labelled = target.masked_fill(target == UNLABELLED, IGNORE_INDEX)
    weak, strong = task._supervised(logits[:2], labelled)[0], task._supervised(logits[2:], labelled)[0]
    confidence, pseudo = logits[:2].softmax(1).max(1)
    confident = (target == UNLABELLED) & (confidence >= 0.6)
    assert confident.any() and not confident.all()  # the pseudo-label term counts, thresholded
    unlabelled = torch.nn.functional.cross_entropy(logits[2:], pseudo, reduction="none")
    expected = 0.5 * (weak + strong) + (unlabelled * confident).sum() / (target == UNLABELLED).sum()
    assert torch.allclose(loss, expected, rtol=1e-4)
    assert not torch.isclose(weak, strong)  # the views' losses differ: both counted, not one twice


def test_several_chip_datasets_train_as_one(train_chips, tmp_path):
    from sparsecover.combine import open_chip_datasets

    single = open_chip_dataset(train_chips)
    both = open_chip_datasets([train_chips, train_chips])
    assert len(both) == 2 * len(single) and len(both.groups) == 2 * len(single.groups)
    assert set(both.groups) == set(single.groups) | {g + max(single.groups) for g in single.groups}
    for a, b in zip(single.statistics, both.statistics):
        assert a["mean"] == pytest.approx(b["mean"]) and a["std"] == pytest.approx(b["std"])
        assert a["p1"] == pytest.approx(b["p1"]) and b["count"] == 2 * a["count"]
    _, _, groups = both.read(len(single))  # the second copy's first chip: offset group ids
    _, _, own = single.read(0)
    assert np.array_equal(groups, np.where(own > 0, own + max(single.groups), 0))
    prepared = prepare([train_chips, train_chips], TrainConfig(val_fraction=0.34, seed=1))
    assert not prepared.split.train_groups & prepared.split.valid_groups
    run = train([train_chips, train_chips], tmp_path / "run", TrainConfig(**{**FAST, "epochs": 1}))
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["dataset"]["paths"] == [str(train_chips.resolve())] * 2


def test_chip_datasets_that_cannot_train_together_are_refused(train_chips, tmp_path):
    from sparsecover.combine import open_chip_datasets

    polygons = class_polygons()
    raster = make_class_scene(tmp_path, polygons)
    labels = tmp_path / "polygons.gpkg"
    polygons.to_file(labels)
    other_size = export_training_data(raster, labels, tmp_path / "big", class_field="classvalue",
                                      tile_size=64, stride=32, progress=False)
    with pytest.raises(SparsecoverError, match="export every dataset with the same --tile-size"):
        open_chip_datasets([train_chips, other_size])
    with rasterio.open(raster) as src:
        profile, data = src.profile, src.read()
    profile.update(count=3)
    three = tmp_path / "three.tif"
    with rasterio.open(three, "w", **profile) as dst:
        dst.write(data[:3])
    fewer = export_training_data(three, labels, tmp_path / "three", class_field="classvalue",
                                 tile_size=32, stride=16, progress=False)
    with pytest.raises(SparsecoverError, match="chips have 3 bands but .* has 4"):
        open_chip_datasets([train_chips, fewer])


def test_split_is_stratified_and_deterministic(train_chips):
    a = prepare(train_chips, TrainConfig(seed=3)).split
    b = prepare(train_chips, TrainConfig(seed=3)).split
    assert a.valid_groups == b.valid_groups
    ds = open_chip_dataset(train_chips)
    assert {ds.groups[g]["class"] for g in a.valid_groups} == {1, 2, 3}


def test_train_writes_run_folder_model_and_history(train_chips, tmp_path):
    run = train(train_chips, tmp_path / "run", TrainConfig(**FAST))
    rows = _history(run)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert set(rows[0]) == {"epoch", "train_loss", "valid_loss", "accuracy", "macro_f1", "lr", "time_s"}
    assert all(float(r["valid_loss"]) > 0 for r in rows)
    for name in ("config.json", "metrics.json", "model/model.json", "model/weights.safetensors", "logs/metrics.csv",
                 "model.sparsecover"):
        assert (run / name).exists(), name
    # the package holds the model: a finished run drops its checkpoints (2 x the model) unless asked
    assert not (run / "checkpoints").exists()
    with pytest.raises(SparsecoverError, match=r"this run has finished \(model.sparsecover is there\); nothing to resume"):
        train(train_chips, run, TrainConfig(**{**FAST, "resume": True}))
    model = json.loads((run / "model" / "model.json").read_text())
    assert model["input_channels"] == 4 and model["encoder"] == "resnet18"
    assert [c["value"] for c in model["classes"]] == [1, 2, 3]
    assert [b["name"] for b in model["bands"]] == ["blue", "green", "red", "nir"]
    stats = open_chip_dataset(train_chips).statistics
    assert model["normalisation"]["low"] == [s["p1"] for s in stats]
    assert model["training"]["epochs"] == 2 and len(model["training"]["history"]) == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert {c["class"] for c in metrics["per_class"]} == {"class1", "class2", "class3"}


def test_the_model_decides_under_the_labels_class_frequencies(tmp_path):
    """Inverse-frequency class weights tilt the network towards rare classes; the package's decision
    offsets (-log weight, inside the graph classify and ONNX run) undo the tilt."""
    from sparsecover.model import RawInputModel
    from sparsecover.predict import load_model

    polygons = class_polygons(values=(1, 2, 3), per_class=3)
    polygons = polygons.iloc[:7]  # class 3 keeps one polygon: the rarest, the heaviest weight
    raster = make_class_scene(tmp_path, polygons)
    labels = tmp_path / "p.gpkg"
    polygons.to_file(labels)
    chips = export_training_data(raster, labels, tmp_path / "chips", class_field="classvalue", tile_size=32,
                                 stride=16, progress=False)
    config = TrainConfig(**{**FAST, "val_fraction": 0.0})
    weights = prepare(chips, config).weights
    assert weights[2] > weights[0] and weights[2] > weights[1]
    run = train(chips, tmp_path / "run", config)
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["decision_offsets"] == pytest.approx([-np.log(w) for w in weights])
    assert meta["class_field"] == "classvalue"
    loaded = load_model(run)
    x = torch.from_numpy(rasterio.open(raster).read()[None, :, :64, :64].astype(np.float32))
    module = RawInputModel(loaded.network, meta).eval()
    plain = RawInputModel(loaded.network, {**meta, "decision_offsets": None}).eval()
    with torch.no_grad():
        offsets = torch.tensor(meta["decision_offsets"]).view(1, -1, 1, 1)
        torch.testing.assert_close(module(x), torch.softmax(plain.logits(x) + offsets, dim=1))
    unweighted = train(chips, tmp_path / "run2", TrainConfig(**{**FAST, "val_fraction": 0.0, "class_weights": "none"}))
    assert json.loads((unweighted / "model" / "model.json").read_text())["decision_offsets"] == [0.0, 0.0, 0.0]


def test_the_refit_learns_every_polygon_after_the_validated_fit(train_chips, tmp_path, capfd):
    from sparsecover.package import describe_package
    from sparsecover.predict import load_model
    from sparsecover.report import build_report

    run = train(train_chips, tmp_path / "run", TrainConfig(**{**FAST, "epochs": 3, "refit": True, "quiet": False,
                                                                "keep_checkpoints": True}))
    assert "refit on every polygon" in capfd.readouterr().out
    validated, refit = _history(run), _history(run / "refit")
    # the same epochs and one-cycle schedule, on more labelled pixels and with nothing held out
    assert [r["lr"] for r in refit] == [r["lr"] for r in validated] and len(refit) == 3
    assert all(r["valid_loss"] == "" for r in refit)
    assert refit[0]["train_loss"] != validated[0]["train_loss"]
    meta = json.loads((run / "model" / "model.json").read_text())
    groups = [g for g, info in open_chip_dataset(train_chips).groups.items() if info["pixels"] > 0]
    assert meta["training"]["train_groups"] == len(groups) and meta["training"]["valid_groups"] > 0
    assert meta["training"]["refit"]["epochs"] == 3 and meta["training"]["epochs"] == 3
    assert meta["training"]["validation_metrics"] == json.loads((run / "metrics.json").read_text())
    described = dict(describe_package(meta))
    assert described["trained"].endswith("then refit on every polygon") and "before the refit" in described["validation"]
    page = build_report(run, tmp_path / "report.html").read_text()
    assert "Then refit on every polygon, the held-out ones included: 3 epochs" in page
    assert "Validation (held-out polygons, before the refit on every polygon)" in page
    # the package holds the refit's last weights
    last = torch.load(run / "refit" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    for key, value in load_model(run / "model.sparsecover").network.state_dict().items():
        torch.testing.assert_close(value, last[f"model.{key}"])
    plain = train(train_chips, tmp_path / "plain", TrainConfig(**FAST))
    assert not (plain / "refit").exists()
    assert json.loads((plain / "model" / "model.json").read_text())["training"]["refit"] is None


def test_progress_counts_epochs_from_one(train_chips, tmp_path, capfd):
    """The bar and the epoch table say "Epoch 1/2" .. "2/2"; history.csv keeps Lightning's index."""
    run = train(train_chips, tmp_path / "run", TrainConfig(**{**FAST, "quiet": False}))
    text = "".join(capfd.readouterr())
    assert "Epoch 1/2: 100%" in text and "Epoch 2/2: 100%" in text and "Epoch 3" not in text
    rows = re.findall(r"(\d+/\d+)(?:\s+[-+.e\d]+){6}\n", text)  # the table: epoch, then six numbers
    assert rows == ["1/2", "2/2"]
    assert [int(r["epoch"]) for r in _history(run)] == [0, 1]


@pytest.mark.usefixtures("short_spectral_fit")
def test_same_seed_same_history(train_chips, tmp_path):
    a = _history(train(train_chips, tmp_path / "a", TrainConfig(**POOLED)))
    b = _history(train(train_chips, tmp_path / "b", TrainConfig(**POOLED)))
    for ra, rb in zip(a, b):
        for key in ("train_loss", "valid_loss", "accuracy"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-4, abs=1e-6)


def test_lr_finder_suggests_and_plots(train_chips, tmp_path):
    from sparsecover.train import find_lr

    config = TrainConfig(backbone="resnet18", quiet=True)
    lr = find_lr(prepare(train_chips, config), config, tmp_path / "lr.png")
    assert 1e-7 < lr < 1 and (tmp_path / "lr.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".lr_find*"))


def test_the_lr_suggestion_is_capped_where_the_loss_falls_to_the_end():
    from sparsecover.train import MAX_SUGGESTED_LR, _suggest

    lrs = np.logspace(-6, 0, 100).tolist()
    # few chips: the loss still falls at LR 1 (a tenth of it, 0.1, diverged on 1 m NAIP)
    assert _suggest(lrs, np.linspace(2.0, 0.1, 100).tolist()) == MAX_SUGGESTED_LR
    bowl = ((np.log10(lrs) + 3) ** 2).tolist()  # lowest at 1e-3
    assert _suggest(lrs, bowl) == pytest.approx(1e-4, rel=0.2)


def test_training_patches_cover_the_chips_once_an_epoch(train_chips):
    from sparsecover.data import ChipTorchDataset

    whole = prepare(train_chips, TrainConfig(patch_size=None)).train
    assert len(whole) == len(whole.indices) and whole[0][0].shape[-1] == 32
    parts = dict(dataset=whole.dataset, indices=whole.indices, own_groups=set(whole.own_groups.tolist()),
                 mapping=prepare(train_chips, TrainConfig()).mapping, normalisation=whole.normalisation,
                 bands=whole.bands, train=True)
    patches = ChipTorchDataset(patch=16, **parts)
    assert len(patches) == 4 * len(whole.indices)  # 32 px chips, 16 px patches
    torch.manual_seed(0)
    image, target = patches[5]
    assert image.shape == (len(whole.bands), 16, 16) and target.shape == (16, 16)
    # its labels are a window of its chip's, flipped or rotated (the image also gets jitter)
    _, chip_target = whole._load(5 % len(whole.indices))
    windows = np.lib.stride_tricks.sliding_window_view(chip_target, (16, 16)).reshape(-1, 16, 16)
    views = [np.rot90(t, k) for t in (target.numpy(), target.numpy()[:, ::-1]) for k in range(4)]
    assert any(np.array_equal(v, w) for v in views for w in windows)
    ChipTorchDataset.EPOCH_PIXELS, cap = 16 * 16 * 3, ChipTorchDataset.EPOCH_PIXELS
    try:
        assert len(ChipTorchDataset(patch=16, **parts)) == 3  # a capped epoch draws chips at random
    finally:
        ChipTorchDataset.EPOCH_PIXELS = cap
    # validation always scores whole chips
    assert len(ChipTorchDataset(patch=16, **{**parts, "train": False})) == len(whole.indices)


def test_a_patch_size_off_the_network_grid_is_refused(train_chips):
    with pytest.raises(SparsecoverError, match="--patch-size must be a multiple of 32"):
        prepare(train_chips, TrainConfig(patch_size=100))


KILL_POINTS = {  # when to kill: (what must be there, seconds to wait after)
    "in-an-epoch": (lambda run: len(_history(run)) >= 2, 0.3),
    "between-epochs": (lambda run: len(_history(run)) >= 2, 0.0),
    "in-the-refit": (lambda run: (run / "refit" / "history.csv").exists() and len(_history(run / "refit")) >= 2, 0.3),
    "while-packaging": (lambda run: (run / "model").exists(), 0.0),  # written just before the package
}


#: The run kills itself as epoch 2's validation starts, a point the polling above cannot catch from
#: outside: a Lightning callback added to the trainer, then the CLI as usual.
KILL_IN_VALIDATION = """
import os, signal
import lightning as L
from sparsecover import cli, train

class KillInValidation(L.Callback):
    def on_validation_batch_start(self, trainer, *args):
        if trainer.current_epoch == 2 and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)

make = train._trainer
train._trainer = lambda config, run, callbacks, *a, **k: make(config, run, [*callbacks, KillInValidation()], *a, **k)
cli.main()
"""


def _train_command(chips, run) -> list[str]:
    return [sys.executable, "-m", "sparsecover.cli", "train", str(chips), "--out", str(run), "--epochs", "5",
            "--lr", "0.001", "--backbone", "resnet18", "-q", "--seed", "7"]


@pytest.fixture(scope="module")
def uninterrupted(train_chips, tmp_path_factory) -> list[dict]:
    """The history of the run the killed ones are resumed to match."""
    run = tmp_path_factory.mktemp("whole") / "run"
    done = subprocess.run(_train_command(train_chips, run), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return _history(run) + _history(run / "refit")


@pytest.mark.slow
@pytest.mark.parametrize("point", [*KILL_POINTS, "in-validation"])
def test_resume_after_sigkill_repeats_the_uninterrupted_run(train_chips, tmp_path, point, uninterrupted):
    run = tmp_path / "run"
    cmd = _train_command(train_chips, run)
    if point == "in-validation":
        done = subprocess.run([sys.executable, "-c", KILL_IN_VALIDATION, *cmd[3:]], capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == -signal.SIGKILL, done.stderr
        assert len(_history(run)) == 2  # epochs 0 and 1 done, killed in epoch 2's validation
        killed = done.stderr
    else:
        killed = _kill_when(cmd, run, point)

    finished = (run / "model.sparsecover").exists() and not (run / "checkpoints" / "last.ckpt").exists()
    assert not finished or point == "while-packaging"  # killed as it exited: nothing left to resume
    if not finished:
        done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{done.stderr}\nthe killed run: {killed}\nleft: {sorted(run.rglob('*'))}"
    assert [int(r["epoch"]) for r in _history(run)] == [0, 1, 2, 3, 4]
    assert json.loads((run / "model" / "model.json").read_text())["training"]["epochs"] == 5
    assert not list(run.glob(".*")), "partial files left"
    # the epochs after the kill are those of a run never killed: same weights, order and augmentation
    for resumed, whole in zip(_history(run) + _history(run / "refit"), uninterrupted, strict=True):
        for key in ("train_loss", "valid_loss", "accuracy"):
            if whole[key] == "":  # the refit has no validation
                assert resumed[key] == "", resumed
            else:
                assert float(resumed[key]) == pytest.approx(float(whole[key]), rel=1e-4, abs=1e-6), resumed


def _kill_when(cmd: list[str], run, point: str) -> str:
    """Start the run, SIGKILL it at ``point`` of :data:`KILL_POINTS`; what it printed."""
    ready, wait = KILL_POINTS[point]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 900  # a shared 2-core machine can take minutes to reach the point
    while not ((run / "history.csv").exists() and ready(run)):
        if proc.poll() is not None:
            if point == "while-packaging":  # packaging can end between two looks (10 ms apart)
                pytest.skip("the run finished packaging before it could be killed")
            pytest.fail(f"training ended before it could be killed: {proc.stderr.read().decode()}")
        if time.time() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"training did not reach the kill point {point!r} within 900 s")
        time.sleep(0.01)
    time.sleep(wait)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.stderr.read().decode()


def test_resume_with_other_settings_is_refused(train_chips, tmp_path):
    run = train(train_chips, tmp_path / "run", TrainConfig(**{**FAST, "epochs": 1, "keep_checkpoints": True}))
    assert (run / "checkpoints" / "best.ckpt").exists()
    with pytest.raises(SparsecoverError, match=r"--resume with other settings: batch_size was 8, now 4"):
        train(train_chips, run, TrainConfig(**{**FAST, "epochs": 1, "batch_size": 4, "resume": True}))
    with pytest.raises(SparsecoverError, match="run folder exists and is not empty"):
        train(train_chips, run, TrainConfig(**FAST))
    (tmp_path / "file").write_text("x")
    with pytest.raises(SparsecoverError, match="file: is a file; --out names the run folder"):
        train(train_chips, tmp_path / "file", TrainConfig(**FAST))
    with pytest.raises(SparsecoverError, match=r"new: nothing to resume \(no config.json and checkpoints/last.ckpt\)"):
        train(train_chips, tmp_path / "new", TrainConfig(**{**FAST, "resume": True}))
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # cut short, as by a full disk
    with pytest.raises(SparsecoverError, match=r"last.ckpt: damaged checkpoint \(.*\); this run cannot be resumed"):
        train(train_chips, run, TrainConfig(**{**FAST, "epochs": 1, "resume": True}))
    # the CLI checks --out itself, before it imports the training stack: the same line, exit 2
    done = subprocess.run([sys.executable, "-m", "sparsecover.cli", "train", str(train_chips), "--out", str(run)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "run folder exists and is not empty" in done.stderr


def test_a_shallow_encoder_keeps_only_the_stages_it_uses():
    from safetensors.torch import save

    from sparsecover.model import build_model
    from sparsecover.model import network_from

    network = build_model(4, 3, "resnet34", encoder_depth=3).eval()
    assert not [k for k in network.state_dict() if k.startswith(("encoder.layer3.", "encoder.layer4."))]
    assert sum(p.numel() for p in network.parameters()) < 2_000_000  # of 21.5 M with the unused stages
    # a package written while the unused stages were still saved loads as the same network
    meta = {"input_channels": 4, "classes": [1, 2, 3], "encoder": "resnet34", "architecture": "unet",
            "encoder_depth": 3}
    older = {**network.state_dict(), "encoder.layer4.0.conv1.weight": torch.zeros(512, 256, 3, 3)}
    x = torch.randn(1, 4, 64, 64)
    torch.testing.assert_close(network_from(meta, save(older))(x), network(x))


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(train_chips, tmp_path):
    config = TrainConfig(**{**POOLED, "epochs": 1, "devices": 2, "strategy": "ddp_spawn", "device": "cpu"})
    run = train(train_chips, tmp_path / "ddp", config)
    assert [int(r["epoch"]) for r in _history(run)] == [0]
    assert (run / "model" / "weights.safetensors").exists()


@pytest.mark.usefixtures("short_spectral_fit")
def test_fine_tune_from_a_run_and_shape_mismatch(train_chips, tmp_path):
    first = train(train_chips, tmp_path / "first", TrainConfig(**{**POOLED, "epochs": 1}))
    second = train(train_chips, tmp_path / "second", TrainConfig(**{**POOLED, "epochs": 1, "weights": str(first)}))
    assert (second / "model" / "weights.safetensors").exists()
    with pytest.raises(SparsecoverError, match=r"weights do not fit this model .*encoder.conv1.weight"):
        train(train_chips, tmp_path / "third", TrainConfig(**{**FAST, "epochs": 1, "weights": str(first),
                                                              "bands": ["red", "nir"]}))


def test_non_contiguous_classes_and_ignore(tmp_path):
    polygons = class_polygons(values=(2, 5, 9), per_class=2)
    raster = make_class_scene(tmp_path, polygons)
    labels = tmp_path / "p.gpkg"
    polygons.to_file(labels)
    chips = export_training_data(raster, labels, tmp_path / "chips", class_field="classvalue",
                                 tile_size=32, stride=32, progress=False)
    prepared = prepare(chips, TrainConfig(ignore_classes=[9]))
    assert prepared.mapping.values == [2, 5]
    lut = prepared.mapping.lut()
    assert lut[2] == 0 and lut[5] == 1 and lut[9] == IGNORE_INDEX and lut[0] == IGNORE_INDEX
    with pytest.raises(SparsecoverError, match="fewer than 2 classes with labelled pixels are left"):
        prepare(chips, TrainConfig(ignore_classes=[5, 9]))
    with pytest.raises(SparsecoverError, match=r"--ignore-classes names \[4\]"):
        prepare(chips, TrainConfig(ignore_classes=[4]))


def test_bad_training_input(train_chips, tmp_path):
    if not torch.cuda.is_available():
        with pytest.raises(SparsecoverError, match="--device cuda asked for, but no CUDA GPU is available"):
            train(train_chips, tmp_path / "r", TrainConfig(**{**FAST, "device": "cuda"}))
    with pytest.raises(SparsecoverError, match="no band named 'swir'"):
        prepare(train_chips, TrainConfig(bands=["swir"]))
    with pytest.raises(SparsecoverError, match="imagery_type 'landsat8' means 11 bands"):
        prepare(train_chips, TrainConfig(imagery_type="landsat8"))
    empty = tmp_path / "empty"
    empty.mkdir()
    meta = json.loads((train_chips / "dataset.json").read_text())
    meta["chips"] = []
    (empty / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(SparsecoverError, match="the chip dataset holds no chips"):
        prepare(empty, TrainConfig())


@pytest.mark.parametrize("setting, message", [
    ({"epochs": 0}, "--epochs must be at least 1, got 0"),
    ({"members": 0}, "--members must be at least 1, got 0"),
    ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    ({"batch_size": -4}, "--batch-size must be at least 1, got -4"),
    ({"val_fraction": 1.0}, r"--val-fraction must be in \[0, 1\), got 1.0"),
    ({"lr": 0.0}, "--lr must be a positive number or auto, got 0.0"),
    ({"unlabelled_weight": -1.0}, "--unlabelled-weight must be 0 or more"),
    ({"pseudo_threshold": 1.5}, r"--pseudo-threshold must be in \[0, 1\]"),
    ({"workers": -1}, "--workers must be 0 or more"),
    ({"early_stopping": 0}, "--early-stopping must be at least 1"),
    ({"patch_size": -32}, "--patch-size must be a multiple of 32"),
    ({"class_weights": "sqrt"}, "--class-weights must be auto or none"),
    ({"backbone": "resnet9000"}, "unknown backbone 'resnet9000'"),
    ({"architecture": "segformer"}, "unknown architecture 'segformer'"),
    ({"encoder_depth": 6}, "--encoder-depth must be 3, 4 or 5, got 6"),
])
def test_settings_out_of_range_are_refused_before_any_work(train_chips, tmp_path, setting, message):
    with pytest.raises(SparsecoverError, match=message):
        train(train_chips, tmp_path / "run", TrainConfig(**{**FAST, **setting}))
    assert not (tmp_path / "run").exists()
    with pytest.raises(SparsecoverError, match=message):
        prepare(train_chips, TrainConfig(**{**FAST, **setting}))  # lr-find and the Python API


def test_a_run_that_fails_before_its_first_epoch_leaves_nothing(train_chips, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(SparsecoverError, match="weights not found"):
        train(train_chips, run, TrainConfig(**{**FAST, "weights": str(tmp_path / "missing.pt")}))
    assert not run.exists()  # so the retry is a plain `train`, not a refused --resume
    run.mkdir()  # an empty folder given as --out stays, empty
    with pytest.raises(SparsecoverError, match="weights not found"):
        train(train_chips, run, TrainConfig(**{**FAST, "weights": str(tmp_path / "missing.pt")}))
    assert run.is_dir() and not any(run.iterdir())
    assert (train(train_chips, run, TrainConfig(**{**FAST, "epochs": 1})) / "model.sparsecover").exists()


def test_imagenet_stem_adaptation_maps_rgb_filters_by_band_name():
    conv_parent = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    rgb = conv_parent[0].weight.detach().clone()
    adapt_first_conv(conv_parent, 5, ["nir", "blue", "green", "red", "swir"])
    new = conv_parent[0].weight.detach()
    assert new.shape == (8, 5, 3, 3)
    scale = 3 / 5
    torch.testing.assert_close(new[:, 3], rgb[:, 0] * scale)  # red
    torch.testing.assert_close(new[:, 1], rgb[:, 2] * scale)  # blue
    torch.testing.assert_close(new[:, 0], rgb.mean(1) * scale)  # nir: mean RGB filter


def test_early_stopping_stops_when_validation_loss_stalls(train_chips, tmp_path):
    run = train(train_chips, tmp_path / "run", TrainConfig(**{**FAST, "epochs": 8, "lr": 1e-12, "early_stopping": 1}))
    assert len(_history(run)) < 8


@pytest.mark.usefixtures("short_spectral_fit")
def test_an_ensemble_averages_members_trained_from_other_starts(train_chips, tmp_path):
    from sparsecover.classify import classify_pixels
    from sparsecover.classify.outputs import DISAGREEMENT
    from sparsecover.model import Ensemble, RawInputModel, disagreement
    from sparsecover.package import describe_package, export_onnx, onnx_session
    from sparsecover.predict import load_model

    run = train(train_chips, tmp_path / "run",
                TrainConfig(**{**POOLED, "epochs": 1, "members": 2, "keep_checkpoints": True, "refit": True}))
    assert [int(r["epoch"]) for r in _history(run / "member2")] == [0]
    assert (run / "member2" / "refit" / "history.csv").exists()
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["ensemble"] == 2 and len(meta["training"]["member_histories"]) == 1
    assert "an ensemble of 2" in dict(describe_package(meta))["model"]
    model = load_model(run / "model.sparsecover")
    assert isinstance(model.network, Ensemble) and len(model.network.members) == 2
    for member, folder in zip(model.network.members, (run / "refit", run / "member2" / "refit")):
        best = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        for key, value in member.state_dict().items():
            torch.testing.assert_close(value, best[f"model.{key}"])
    first, second = (dict(m.named_parameters()) for m in model.network.members)
    assert not torch.equal(first["context.encoder.conv1.weight"], second["context.encoder.conv1.weight"])  # other random starts
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x), 1) for m in model.network.members]).mean(0)
        torch.testing.assert_close(torch.softmax(model.network(x), 1), mean)
    # it is one network to the rest of the pipeline: classify and ONNX
    scene = train_chips.parent / "classes_scene.tif"
    mapped = classify_pixels(scene, run, tmp_path / "map.tif", tile_size=64, padding=16, progress=False)
    assert set(np.unique(rasterio.open(mapped).read(1))) <= {0, 1, 2, 3}
    # its uncertainty is the members' disagreement, from the same pass; the class map is the same with it
    # (128 px: the whole scene is one tile; one view, to compare with the members' own pass below)
    with_unc = classify_pixels(scene, run, tmp_path / "map_u.tif", tile_size=128, padding=16, precision="fp32",
                               uncertainty=tmp_path / "u.tif", progress=False, tta="none")
    one_pass = classify_pixels(scene, run, tmp_path / "map_1.tif", tile_size=128, padding=16, precision="fp32",
                               progress=False, tta="none")
    assert_same_map(with_unc, one_pass)
    with rasterio.open(tmp_path / "u.tif") as src:
        unc, description = src.read(1), src.descriptions[0]
    assert description == DISAGREEMENT
    raw = rasterio.open(scene).read().astype(np.float32)
    graph = RawInputModel(model.network, meta).eval()
    with torch.no_grad():
        x = graph.normalise(torch.from_numpy(raw[None]))
        members = torch.stack([torch.softmax(m(x) + graph.offsets, 1) for m in model.network.members])
    np.testing.assert_allclose(unc, disagreement(members)[0].numpy(), atol=1e-5)
    assert 0 <= unc.min() and unc.max() <= 1 and unc.std() > 0
    session = onnx_session(export_onnx(run / "model.sparsecover", tmp_path / "m.onnx").read_bytes())
    raw = np.random.default_rng(0).uniform(0, 255, (1, 4, 32, 32)).astype(np.float32)
    valid = np.ones((32, 32), dtype=bool)
    with torch.no_grad():
        expected = torch.softmax(model.network(torch.from_numpy(model.normalisation.apply(raw[0], valid)[None])), 1)
    assert np.abs(session.run(None, {"image": raw})[0] - expected.numpy()).max() < 1e-4
    # --resume after member 2 was lost: member 1 is complete and kept, member 2 is trained again alike
    shutil.rmtree(run / "member2")
    train(train_chips, run, TrainConfig(**{**POOLED, "epochs": 1, "members": 2, "refit": True, "resume": True}))
    resumed = load_model(run / "model.sparsecover").network.members
    for before, after in zip(model.network.members, resumed):
        for (key, x), (_, y) in zip(before.state_dict().items(), after.state_dict().items()):
            torch.testing.assert_close(x, y, msg=key)
    # without the refit, the package averages the validated members themselves
    plain = train(train_chips, tmp_path / "plain", TrainConfig(**{**FAST, "epochs": 1, "members": 2}))
    members = load_model(plain / "model.sparsecover").network.members
    assert len(members) == 2 and not any(isinstance(m, Ensemble) for m in members)
    with pytest.raises(SparsecoverError, match="--members must be at least 1"):
        train(train_chips, tmp_path / "none", TrainConfig(**{**FAST, "members": 0}))
