"""The per-pixel spectral model pooled with the network: its pixels, its fit, the pool, its package."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from sparsecover import open_chip_dataset
from sparsecover.data import IGNORE_INDEX, UNLABELLED
from sparsecover.model import PooledNetwork, SpectralModel, build_model, load_weights
from sparsecover.spectral import fit_spectral
from sparsecover.train import TrainConfig, prepare, train

FAST = dict(backbone="resnet18", epochs=1, lr=1e-3, batch_size=8, quiet=True, seed=7, refit=False)


def test_labelled_pixels_are_the_training_polygons_pixels_once(train_chips):
    """Overlapping chips (stride 16 of 32) hold most labelled pixels several times; the spectral
    model learns from each once, and only from the training split's polygons."""
    prepared = prepare(train_chips, TrainConfig(seed=3))
    pixels, classes = prepared.train.labelled_pixels(limit=10**6, seed=0)
    dataset = open_chip_dataset(train_chips)
    expected: dict[tuple[int, int], int] = {}
    for position, index in enumerate(prepared.train.indices):
        _, target = prepared.train._load(position)
        col, row = dataset.chips[index].window[:2]
        for r, c in zip(*np.nonzero(target < UNLABELLED)):
            expected[(row + r, col + c)] = int(target[r, c])
    assert len(classes) == len(expected) > 0
    assert sorted(np.bincount(classes).tolist()) == sorted(np.bincount(list(expected.values())).tolist())
    assert pixels.shape == (len(classes), 4) and pixels.dtype == np.float32
    # the validation polygons' pixels are not among them
    valid_sites = set()
    for position, index in enumerate(prepared.valid.indices):
        _, target = prepared.valid._load(position)
        col, row = dataset.chips[index].window[:2]
        valid_sites |= {(row + r, col + c) for r, c in zip(*np.nonzero(target < IGNORE_INDEX))}
    assert valid_sites and not valid_sites & set(expected)
    few, _ = prepared.train.labelled_pixels(limit=50, seed=0)
    assert 0 < len(few) <= 50 + len(prepared.train.indices)


def test_fit_spectral_learns_band_values_deterministically_without_the_global_stream():
    rng = np.random.default_rng(0)
    pixels = rng.normal(0, 1, (3000, 4)).astype(np.float32)
    classes = np.where(pixels[:, 1] > 1, 2, pixels[:, 0] > 0).astype(np.int64)
    fitted, streams = [], []
    for _ in range(2):
        model = SpectralModel(4, 3)
        state = torch.get_rng_state()
        fit_spectral(model, pixels, classes, [1.0, 1.0, 1.0], seed=5)
        streams.append(torch.equal(state, torch.get_rng_state()))
        fitted.append(model)
    torch.testing.assert_close(fitted[0].state_dict(), fitted[1].state_dict())
    with torch.no_grad():
        predicted = fitted[0](torch.from_numpy(pixels)[:, :, None, None])[:, :, 0, 0].argmax(1).numpy()
    assert (predicted == classes).mean() > 0.95
    with torch.no_grad():  # the fit's pixel-vector form is the model that runs on tiles
        torch.testing.assert_close(fitted[0].of_pixels(torch.from_numpy(pixels)),
                                   fitted[0](torch.from_numpy(pixels)[:, :, None, None])[:, :, 0, 0])
    assert not any(p.requires_grad for p in fitted[0].parameters())
    # a fit draws from its own generator, not from torch's stream (which orders the chips)
    assert streams == [True, True]


def test_the_pool_is_the_normalised_geometric_mean_of_both_halves():
    network = build_model(4, 3, "resnet18", encoder_depth=3, spectral=True).eval()
    assert isinstance(network, PooledNetwork)
    x = torch.randn(2, 4, 64, 64)
    with torch.no_grad():
        pooled = torch.softmax(network(x), dim=1)
        a = torch.softmax(network.context(x), dim=1)
        b = torch.softmax(network.spectral(x), dim=1)
    geometric = (a * b).sqrt()
    torch.testing.assert_close(pooled, geometric / geometric.sum(1, keepdim=True))


@pytest.mark.usefixtures("short_spectral_fit")
def test_a_trained_run_carries_its_spectral_model_into_the_package(train_chips, tmp_path):
    from sparsecover.classify import classify_pixels
    from sparsecover.predict import load_model

    run = train(train_chips, tmp_path / "run", TrainConfig(**FAST))
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["spectral"] is True
    from sparsecover.package import describe_package

    assert "pooled with a per-pixel spectral model" in dict(describe_package(meta))["model"]
    loaded = load_model(run / "model.sparsecover")
    assert isinstance(loaded.network, PooledNetwork)
    raster = open_chip_dataset(train_chips).sources[0]
    out = classify_pixels(raster, run / "model.sparsecover", tmp_path / "map.tif", progress=False)
    with rasterio.open(out) as src:
        assert set(np.unique(src.read(1))) <= {0, 1, 2, 3}
    # without it: the network alone, as before
    plain = train(train_chips, tmp_path / "plain", TrainConfig(**FAST, spectral=False))
    assert json.loads((plain / "model" / "model.json").read_text())["spectral"] is False
    assert not isinstance(load_model(plain / "model.sparsecover").network, PooledNetwork)
    # fine-tuning from a pooled run starts the context network from its weights
    fresh = build_model(4, 3, "resnet18", encoder_depth=3)
    load_weights(fresh, run)
    torch.testing.assert_close(fresh.state_dict(), loaded.network.context.state_dict())
