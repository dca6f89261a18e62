"""Training throughput of `sparsecover train` next to a bare PyTorch loop, same model/data/device.

    python benchmarks/train_speed.py [CHIPS] [--backbone resnet34] [--epochs 3] [--device cpu] [--workers 0]

Without CHIPS it exports the built-in demo scene (64 px chips, stride 16). Both sides run the same
training step (network, loss, semi-supervised pseudo-labels) from the same initial weights on the
same DataLoader (validation off) with AdamW + one-cycle;
the first epoch of each is a warm-up and is not timed. Prints one table; the figure of merit is the
ratio (engine overhead = 1 - ratio; the target is under 10 %). A third loop, the bare one with
the deterministic kernels `train` uses, separates the engine's own cost from theirs.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sparsecover.train import TrainConfig, _loaders, _task, prepare, train


def demo_chips(folder: Path) -> Path:
    from sparsecover import export_training_data
    from sparsecover.demo import BAND_FILES, BAND_NAMES, demo_data
    from sparsecover.stack import stack_bands

    data = demo_data()
    scene = stack_bands([data / f"{b}.tif" for b in BAND_FILES], folder / "scene.vrt", band_names=BAND_NAMES)
    return export_training_data(scene, data / "landsat96_polygons.gpkg", folder / "chips", class_field="id",
                                tile_size=64, stride=16, progress=False)


def bare_loop(prepared, config: TrainConfig, epochs: int, deterministic: bool = False) -> list[float]:
    """Plain PyTorch around the task's own training step (same network, loss and semi-supervised
    pseudo-labelling), with no Lightning Trainer; ``deterministic``: with the deterministic kernels
    that `train` runs with (for its reproducible runs), so that the ratio to it is the engine's own cost."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what Lightning sets for deterministic cuBLAS
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = deterministic, False
    torch.manual_seed(config.seed)
    task = _task(prepared, config, config.lr)
    device = torch.device("cuda" if config.device == "cuda" else "cpu")
    task = task.to(device)
    loader, _ = _loaders(prepared, config)
    optimizer = torch.optim.AdamW(task.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=epochs * len(loader),
                                                    pct_start=0.25)
    times = []
    task.train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the step's self.log() has no Trainer to log to here
        for _ in range(epochs):
            start = time.perf_counter()
            for i, (image, target) in enumerate(loader):
                loss = task.training_step((image.to(device), target.to(device)), i)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return times


def measure(chips: Path, work: Path, backbone: str = "resnet34", epochs: int = 3, batch_size: int = 8,
            device: str = "cpu", workers: int = 0) -> dict:
    """Samples/s of the bare loops and of `train` (first epoch of each not timed), their ratios, and the
    side of `train`'s samples (whole chips or random patches), for megapixels a second."""
    config = TrainConfig(backbone=backbone, epochs=epochs, lr=1e-3, batch_size=batch_size, val_fraction=0.0,
                         device=device, quiet=True, seed=1, workers=workers, refit=False)
    prepared = prepare(chips, config)
    n = len(prepared.train)
    side = prepared.train.patch or prepared.dataset.tile_size
    bare = bare_loop(prepared, config, epochs)
    deterministic = bare_loop(prepared, config, epochs, deterministic=True)
    run = train(chips, work / "run", config)
    with open(run / "history.csv") as fh:
        engine = [float(r["time_s"]) for r in csv.DictReader(fh)]
    rates = {name: n * (len(times) - 1) / sum(times[1:])
             for name, times in (("bare", bare), ("deterministic", deterministic), ("train", engine))}
    return {"samples": n, "side": side, "tile_size": prepared.dataset.tile_size,
            "bands": len(prepared.band_indices), **rates, "ratio": rates["train"] / rates["bare"],
            "engine_ratio": rates["train"] / rates["deterministic"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chips", nargs="?")
    parser.add_argument("--backbone", default="resnet34")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (train's --workers)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        chips = Path(args.chips) if args.chips else demo_chips(Path(tmp))
        result = measure(chips, Path(tmp), args.backbone, args.epochs, args.batch_size, args.device, args.workers)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"train_speed: {result['samples']} samples of {result['side']} px a side (chips of {result['tile_size']} px), "
          f"{result['bands']} bands, {args.backbone} U-Net, batch {args.batch_size}, {args.workers} loader workers, "
          f"{device}; first epoch not timed")
    print(f"{'loop':<28}{'samples/s':>10}{'MP/s':>8}")
    for name, key in (("bare PyTorch", "bare"), ("bare, deterministic kernels", "deterministic"),
                      ("sparsecover train", "train")):
        print(f"{name:<28}{result[key]:>10.2f}{result[key] * result['side'] ** 2 / 1e6:>8.2f}")
    print(f"{'ratio (train / bare)':<28}{result['ratio']:>10.3f}")
    print(f"{'ratio (train / deterministic)':<28}{result['engine_ratio']:>10.3f}")


if __name__ == "__main__":
    main()
