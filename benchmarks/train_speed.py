"""Training throughput of `sparsecover train` next to a bare PyTorch loop, same model/data/device.

    python benchmarks/train_speed.py [CHIPS] [--backbone resnet34] [--epochs 3] [--device cpu]

Without CHIPS it exports the built-in demo scene (64 px chips, stride 16). Both sides run the same
training step (network, loss, semi-supervised pseudo-labels) from the same initial weights on the
same DataLoader (validation off) with AdamW + one-cycle;
the first epoch of each is a warm-up and is not timed. Prints one table; the figure of merit is the
ratio (engine overhead = 1 - ratio; the target is under 10 %).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sparsecover import export_training_data
from sparsecover.demo import BAND_FILES, BAND_NAMES, demo_data
from sparsecover.stack import stack_bands
from sparsecover.train import TrainConfig, _loaders, _task, prepare, train


def demo_chips(folder: Path) -> Path:
    data = demo_data()
    scene = stack_bands([data / f"{b}.tif" for b in BAND_FILES], folder / "scene.vrt", band_names=BAND_NAMES)
    return export_training_data(scene, data / "landsat96_polygons.gpkg", folder / "chips", class_field="id",
                                tile_size=64, stride=16, progress=False)


def bare_loop(prepared, config: TrainConfig, epochs: int) -> list[float]:
    """Plain PyTorch around the task's own training step (same network, loss and semi-supervised
    pseudo-labelling), with no Lightning Trainer."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chips", nargs="?")
    parser.add_argument("--backbone", default="resnet34")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        chips = Path(args.chips) if args.chips else demo_chips(Path(tmp))
        config = TrainConfig(backbone=args.backbone, epochs=args.epochs, lr=1e-3, batch_size=args.batch_size,
                             val_fraction=0.0, device=args.device, quiet=True, seed=1)
        prepared = prepare(chips, config)
        n = len(prepared.train)
        bare = bare_loop(prepared, config, args.epochs)
        run = train(chips, Path(tmp) / "run", config)
        import csv

        with open(run / "history.csv") as fh:
            engine = [float(r["time_s"]) for r in csv.DictReader(fh)]
    bare_rate = n * (len(bare) - 1) / sum(bare[1:])
    engine_rate = n * (len(engine) - 1) / sum(engine[1:])
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"train_speed: {n} chips of {prepared.dataset.tile_size} px, {len(prepared.band_indices)} bands, "
          f"{args.backbone} U-Net, batch {args.batch_size}, {device}; first epoch not timed")
    print(f"{'loop':<28}{'chips/s':>10}")
    print(f"{'bare PyTorch':<28}{bare_rate:>10.2f}")
    print(f"{'sparsecover train':<28}{engine_rate:>10.2f}")
    print(f"{'ratio (train / bare)':<28}{engine_rate / bare_rate:>10.3f}")


if __name__ == "__main__":
    main()
