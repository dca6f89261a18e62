"""Every speed figure that needs a GPU, measured in one run and printed as one table.

    python benchmarks/gpu_check.py --data DIR [--big-mp 455] [--device cuda]

DIR holds ``s2_10m/`` (the four Sentinel-2 bands: classify's speed on the scene repeated by VRT,
with a random-weight ResNet34 U-Net, as in classify_speed.py), ``naip_1m/naip.tif`` and either
``naip_1m/polygons.gpkg`` or ``naip_chips/``, that scene exported with 256 px chips and stride 64
(ArcGIS's sample export; made here from the polygons when absent, or carried to a GPU host that lacks
geopandas): training speed on realistic chips, and the default recipe trained on the GPU for the
bf16 / fp32 map comparison and the seam check. ``../shared/data`` beside a checkout is such a folder. Steps, each in its own process, printed as measured (a step
that fails prints its error and the others go on):

- bare forward pass, bf16 (classify's precision on CUDA) and fp32, 8 x 1024 px;
- classify at ``--big-mp`` MP, one pass per tile (``--tta none``, to compare with the bare pass) and
  at the defaults (two views), a COG out, end to end, each with the network's speed measured beside it;
- the pipeline alone (network replaced by a near-free stand-in) at the same size;
- the process CPU per MP of the pipeline alone reading one DEFLATE GeoTIFF with 8 reading threads
  (on the GPU host's path), beside what decoding that input alone takes per MP;
- train_speed.py on the 256 px chips (train's 128 px patches) with 4 DataLoader workers at batch 8
  (train's default) and 32: samples/s, MP/s, ratio to the bare loop (with and without the
  deterministic kernels that `train` uses);
- the default recipe trained on the chips: minutes; the map in bf16 against fp32 (share of pixels
  of the same class); tiled bf16 classify at the defaults against one tile of the whole scene;
- classify_breakdown.py at ``--big-mp``: where the wall time goes, by stage.

It takes about 5 minutes on an H200 with 16 cores.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from rasterio import __gdal_version__

from sparsecover.errors import SparsecoverWarning

HERE = Path(__file__).resolve().parent
ROWS: list[tuple[str, str, str]] = []


def row(name: str, value: str, note: str = "") -> None:
    ROWS.append((name, value, note))
    print(f"  -> {name}: {value} {note}", flush=True)


def script(args: list[str], timeout: float) -> str:
    """Run a benchmark script of this folder; echo and return its output."""
    result = subprocess.run([sys.executable, *args], cwd=HERE, capture_output=True, text=True, timeout=timeout)
    print(result.stdout + result.stderr[-3000:], flush=True)
    if result.returncode:
        raise RuntimeError(f"{args[0]} exited with {result.returncode}")
    return result.stdout


def step(name: str, function, *args) -> None:
    start = time.perf_counter()
    print(f"\n== {name}", flush=True)
    try:
        function(*args)
    except Exception as exc:  # noqa: BLE001 - one failed step must not lose the others' figures
        detail = getattr(exc, "stderr", "") or ""
        print(f"FAILED: {type(exc).__name__}: {exc}\n{detail[-3000:]}", flush=True)
        row(name, "failed", type(exc).__name__)
    print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)


def classify_rows(tmp: Path, data: Path, big_mp: float, device: str) -> None:
    import classify_speed

    from sparsecover.stack import stack_bands

    stack = stack_bands([data / "s2_10m" / f"s2_B0{b}.tif" for b in (2, 3, 4, 8)], tmp / "s2.vrt")
    package = classify_speed.make_package(tmp, stack)
    side = max(1, math.ceil((big_mp / 3.76) ** 0.5))
    big = classify_speed.repeat_vrt(stack, tmp / "big.vrt", side, side)
    bf16 = classify_speed.bare_forward(package, device, 8, 1024, tiles=32, precision="auto")
    fp32 = classify_speed.bare_forward(package, device, 8, 1024, tiles=32, precision="fp32")
    row("bare forward, bf16, 8 x 1024 px", f"{bf16:.1f} MP/s")
    row("bare forward, fp32, 8 x 1024 px", f"{fp32:.1f} MP/s", f"(bf16 {bf16 / fp32:.2f}x)")
    for label, settings in (("one pass (--tta none)", {"tta": "none"}), ("defaults (--tta flip)", {})):
        seconds, mp, rss = classify_speed.run_classify(big, package, tmp / "out.tif", [{"device": device, **settings}])
        bare = classify_speed.bare_forward(package, device, 8, 1024, tiles=32)
        views = 1 if settings else 2
        row(f"classify {mp:.0f} MP, {label}", f"{mp / seconds:.1f} MP/s",
            f"{mp / seconds * views / bare:.3f} of bare / views ({seconds:.1f} s, peak RSS {rss:.0f} MB)")
    seconds, mp, _ = classify_speed.run_classify(big, package, tmp / "out.tif", [{"device": device, "tta": "none"}],
                                                 no_network=True)
    row(f"pipeline alone {mp:.0f} MP", f"{mp / seconds:.1f} MP/s", f"({seconds:.1f} s)")


def cpu_per_mp(data: Path, device: str) -> None:
    out = script(["classify_breakdown.py", "--pipeline-only", "--geotiff", "--readers", "8", "--mp", "100",
                  "--device", device, "--data", str(data / "s2_10m")], 300)
    found = re.search(r"= ([\d.]+) MP/s = .*process CPU [\d.]+ s = ([\d.]+) ms per MP", out)
    row("pipeline alone, GeoTIFF, 8 readers: process CPU", f"{found.group(2)} ms per MP", f"({found.group(1)} MP/s)")
    floor = re.search(r"reading the input alone .*process CPU ([\d.]+) ms per MP", out)
    row("  of which the input's decoding at least (one thread)", f"{floor.group(1)} ms per MP", "")


def naip_chips(data: Path, tmp: Path) -> Path:
    if (data / "naip_chips").is_dir():
        return data / "naip_chips"
    from sparsecover import export_training_data

    return export_training_data(data / "naip_1m" / "naip.tif", data / "naip_1m" / "polygons.gpkg", tmp / "naip_chips",
                                class_field="classvalue", tile_size=256, stride=64, progress=False)


def train_rows(chips: Path, device: str) -> None:
    for workers, batch in ((4, 8), (4, 32)):
        out = script(["train_speed.py", str(chips), "--device", device, "--workers", str(workers),
                      "--batch-size", str(batch), "--epochs", "8"], 300)
        train = re.search(r"sparsecover train\s+([\d.]+)\s+([\d.]+)", out)
        ratio = re.search(r"ratio \(train / bare\)\s+([\d.]+)", out)
        engine = re.search(r"ratio \(train / deterministic\)\s+([\d.]+)", out)
        row(f"train, 256 px chips, batch {batch}, {workers} loader workers", f"{train.group(2)} MP/s",
            f"({train.group(1)} samples/s; {ratio.group(1)} of the bare loop, {engine.group(1)} of it "
            "with deterministic kernels)")


def recipe_rows(tmp: Path, data: Path, chips: Path, device: str, epochs: int | None) -> None:
    import rasterio

    from sparsecover.classify import classify_pixels
    from sparsecover.train import TrainConfig, train

    start = time.perf_counter()
    run = train(chips, tmp / "run", TrainConfig(device=device, quiet=True,
                                                                   **({"epochs": epochs} if epochs else {})))
    row("default recipe, naip_1m chips", f"{(time.perf_counter() - start) / 60:.2f} min", "(validated fit + refit)")
    scene = data / "naip_1m" / "naip.tif"
    maps = {}
    for precision in ("fp32", "bf16"):
        out = classify_pixels(scene, run, tmp / f"{precision}.tif", device=device, precision=precision,
                              progress=False, overwrite=True)
        with rasterio.open(out) as src:
            maps[precision] = src.read(1)
    valid = maps["fp32"] > 0
    row("bf16 vs fp32 map, naip_1m", f"{(maps['fp32'] == maps['bf16'])[valid].mean():.4%}", "same class")
    out = script(["classify_seams.py", str(run), str(scene), "--mirror", "3", "--settings", "1024:32"], 300)
    found = re.search(r"1024:32 .*?([\d.]+%)", out)
    row("seams at the defaults (1024:32, bf16)", found.group(1), "of pixels as one tile")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--big-mp", type=float, default=455)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=None, help="the recipe's epochs (default: train's)")
    parser.add_argument("--steps", nargs="+", default=["classify", "cpu", "breakdown", "train", "recipe"],
                        choices=["classify", "cpu", "train", "recipe", "breakdown"], help="which steps (default: all)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", SparsecoverWarning)  # naip.tif's NIR band carries an alpha tag
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"gpu_check: {name}, {os.cpu_count()} CPU cores; torch {torch.__version__}, GDAL {__gdal_version__}")
    data = args.data.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        chips = naip_chips(data, tmp) if {"train", "recipe"} & set(args.steps) else None
        steps = {
            "classify": (classify_rows, tmp, data, args.big_mp, args.device),
            "cpu": (cpu_per_mp, data, args.device),
            "train": (train_rows, chips, args.device),
            "recipe": (recipe_rows, tmp, data, chips, args.device, args.epochs),
            "breakdown": (script, ["classify_breakdown.py", "--device", args.device, "--mp", str(args.big_mp),
                                   "--data", str(data / "s2_10m")], 300),
        }
        for chosen in args.steps:
            step(chosen, *steps[chosen])
    print(f"\ngpu_check: {name}, {os.cpu_count()} CPU cores; torch {torch.__version__}, GDAL {__gdal_version__}")
    width = max(len(n) for n, _, _ in ROWS)
    for name_, value, note in ROWS:
        print(f"{name_:<{width}}  {value:>16}  {note}")


if __name__ == "__main__":
    main()
