"""Throughput and memory of `sparsecover classify`, printed as one table from one run.

    python benchmarks/classify_speed.py [--big-mp 400] [--device cpu] [--skip-big]

Input: the four Sentinel-2 10 m bands of ../shared/data/s2_10m stacked into a VRT and *tiled by
repetition* (a VRT that repeats the scene; no mirror flips) to about 25 MP and to at least ``--big-mp`` MP, built
at benchmark time. The model is a ResNet34 U-Net with random weights (speed does not depend on the
weights), 4 bands -> 7 classes, packaged like a trained one.

Rows: bare forward pass of the network (MP/s) for a few tile shapes, at the precision classify's
``--precision auto`` picks here (bf16 on CUDA and on CPUs with native bf16; then also a fp32 row for
the speed-up), the best of which is the ceiling classify is compared with (measured before the first and after each of ``--rounds``
classify runs; the ratio is of the medians: this machine's speed drifts by 10-50 %); classify (torch and onnxruntime
engines) at default settings but one pass per tile (``--tta none``, so that it compares with one bare pass;
``--tta`` here to change that); classify with ``--tta flip`` (classify's default) and ``all``; the pipeline alone at both sizes (the network replaced by a near-free
stand-in: reading, writing and the COG conversion, the ceiling for a fast GPU); peak RSS of classify at ~25 MP and at the big size, each in its own
process. Ratios: classify / bare forward, onnx / torch, tta flip and all / one pass, RSS big / small. Options:
``--tile-size``, ``--padding``, ``--batch-size`` to compare settings, ``--device cuda``, ``--data``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "s2_10m"


def repeat_vrt(source: Path, out: Path, nx: int, ny: int) -> Path:
    """A VRT that repeats ``source`` nx x ny times (every band); no pixels are copied."""
    import rasterio

    with rasterio.open(source) as src:
        width, height, count = src.width, src.height, src.count
        transform, crs, dtype = src.transform, src.crs, src.dtypes[0]
    root = ET.Element("VRTDataset", rasterXSize=str(width * nx), rasterYSize=str(height * ny))
    ET.SubElement(root, "SRS").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in transform.to_gdal())
    gdal_type = {"uint16": "UInt16", "uint8": "Byte", "float32": "Float32", "int16": "Int16"}[dtype]
    for band in range(1, count + 1):
        element = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(band))
        for j in range(ny):
            for i in range(nx):
                simple = ET.SubElement(element, "SimpleSource")
                ET.SubElement(simple, "SourceFilename", relativeToVRT="0").text = str(source.resolve())
                ET.SubElement(simple, "SourceBand").text = str(band)
                ET.SubElement(simple, "SrcRect", xOff="0", yOff="0", xSize=str(width), ySize=str(height))
                ET.SubElement(simple, "DstRect", xOff=str(i * width), yOff=str(j * height), xSize=str(width),
                              ySize=str(height))
    ET.ElementTree(root).write(out)
    return out


def make_package(folder: Path, stack: Path) -> Path:
    """A random-weight ResNet34 U-Net packaged with real normalisation statistics of the scene."""
    import rasterio
    from safetensors.torch import save_file

    from sparsecover.model import build_model
    from sparsecover.package import save_package

    with rasterio.open(stack) as src:
        sample = src.read(out_shape=(src.count, 256, 256)).reshape(src.count, -1).astype(np.float64)
        res = src.res
    model_dir = folder / "model"
    model_dir.mkdir()
    network = build_model(4, 7, "resnet34")
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, str(model_dir / "weights.safetensors"))
    meta = {
        "schema_version": 1, "architecture": "unet", "encoder": "resnet34", "input_channels": 4,
        "classes": [{"index": i, "value": i + 1, "name": f"class_{i + 1}", "color": "#808080"} for i in range(7)],
        "ignore_classes": [], "source_band_count": 4,
        "bands": [{"name": n, "source_index": i + 1, "dtype": "uint16", "nodata": None}
                  for i, n in enumerate(["blue", "green", "red", "nir"])],
        "normalisation": {"method": "percentile-clip-standardise",
                          "low": np.percentile(sample, 1, axis=1).tolist(), "high": np.percentile(sample, 99, axis=1).tolist(),
                          "mean": sample.mean(1).tolist(), "std": sample.std(1).tolist()},
        "tile_size": 256, "padding": 32, "resolution": list(res), "crs": None, "training": {},
    }
    (model_dir / "model.json").write_text(json.dumps(meta))
    return save_package(model_dir, folder / "bench.sparsecover")


def bare_forward(package: Path, device: str, batch: int, size: int, tiles: int = 12, precision: str = "auto") -> float:
    """MP/s of the network alone on random ``size`` px tiles in batches of ``batch``, at ``precision``
    as classify resolves it (auto: bf16 on CUDA and on CPUs with native bf16)."""
    from sparsecover.classify.engine import use_bf16
    from sparsecover.predict import load_model

    bf16 = use_bf16(precision, torch.device(device), "torch")
    model = load_model(package, device)
    network = model.network
    if device == "cpu":
        network.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 4, size, size, device=device)
    if device == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    steps = max(1, tiles // batch)
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        network(x)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            network(x)
        if device == "cuda":
            torch.cuda.synchronize()
    return steps * batch * size * size / 1e6 / (time.perf_counter() - start)


def no_network(predictor, x: torch.Tensor) -> np.ndarray:
    """A stand-in for ``Predictor._forward`` that costs almost nothing: class = the brightest band
    (so the map has a real scene's texture for the compression). With it, classify measures what
    reading, writing and the COG conversion sustain by themselves, i.e. the most it could reach
    with an infinitely fast model."""
    if x.is_cuda:
        return predictor.values[x.argmax(1)].cpu().numpy()
    return predictor.values.numpy()[x.numpy().argmax(1)]  # numpy's argmax over channels is faster here


NO_NETWORK = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import classify_speed;"
              "from sparsecover.classify.engine import Predictor; Predictor._forward = classify_speed.no_network;")


def run_classify(raster: Path, package: Path, out: Path, extra: list[str],
                 no_network: bool = False) -> tuple[float, float, float]:
    """(seconds, megapixels, peak RSS in MB) of one classify in its own process.

    The libraries (PyTorch, segmentation-models-pytorch, ...) are imported before the clock starts:
    importing them is the process's start, paid once whatever it classifies (since sparsecover
    imports them on first use, they would otherwise land inside classify: ~1.6 s here)."""
    import rasterio

    with rasterio.open(raster) as src:
        mp = src.width * src.height / 1e6
    code = (
        (NO_NETWORK if no_network else "")
        + "import resource, sys, time; from sparsecover.classify import classify_pixels;"
        "import sparsecover.data, sparsecover.model, sparsecover.package; t = time.perf_counter();"
        f"classify_pixels({str(raster)!r}, {str(package)!r}, {str(out)!r}, overwrite=True, progress=False, **{extra!r}[0]);"
        "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, rss = map(float, result.stdout.split()[-2:])
    return seconds, mp, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mp", type=float, default=400)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-big", action="store_true", help="Skip the big raster (its RSS row).")
    parser.add_argument("--rounds", type=int, default=3, help="classify runs on the ~25 MP raster, each followed "
                        "by the bare pass (ratio of the medians: this machine's speed drifts)")
    parser.add_argument("--data", type=Path, default=SHARED, help="folder with s2_B02/03/04/08.tif")
    parser.add_argument("--tile-size", type=int, default=None, help="classify setting (default: classify's)")
    parser.add_argument("--padding", type=int, default=None, help="classify setting (default: classify's)")
    parser.add_argument("--batch-size", type=int, default=None, help="classify setting (default: classify's)")
    parser.add_argument("--tta", default="none", choices=["none", "flip", "all"],
                        help="classify setting of the runs compared with the bare pass (default: none, one pass)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"benchmark data not found: {args.data}")
    from sparsecover.stack import stack_bands

    settings = {k: v for k, v in (("tile_size", args.tile_size), ("padding", args.padding),
                                  ("batch_size", args.batch_size)) if v is not None}
    plain = {"device": args.device, "tta": args.tta, **settings}
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    shown = ", ".join(f"{k} {v}" for k, v in settings.items()) or "classify defaults"
    from sparsecover.classify.engine import use_bf16

    precision = "bf16" if use_bf16("auto", torch.device(args.device), "torch") else "fp32"
    print(f"classify_speed: Sentinel-2 4-band uint16 scene (s2_10m) repeated by VRT tiling; ResNet34 U-Net, "
          f"random weights; {shown}; {device}; classify and the bare pass in {precision} (classify's auto)")
    print(f"{'run':<36}{'MP/s':>8}  {'ratio':<40}{'peak RSS MB':>12}", flush=True)
    rows = []

    def row(name: str, rate: float, ratio: str = "", rss: str = "") -> None:
        """Printed as soon as measured: a run cut short still leaves its numbers."""
        rows.append((name, rate))
        print(f"{name:<36}{rate:>8.2f}  {ratio:<40}{rss:>12}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stack = stack_bands([args.data / f"s2_B0{b}.tif" for b in (2, 3, 4, 8)], tmp / "s2.vrt")
        package = make_package(tmp, stack)
        small = repeat_vrt(stack, tmp / "small.vrt", 3, 2)
        side = max(1, math.ceil((args.big_mp / 3.76) ** 0.5))  # at least --big-mp
        big = repeat_vrt(stack, tmp / "big.vrt", side, side)
        shapes = [(4, 512), (1, 1024)] + ([(8, 1024)] if args.device == "cuda" else [])

        def bare_now() -> float:
            """The network's best shape here, measured now (this machine's speed drifts by 10-50 %)."""
            return max(bare_forward(package, args.device, batch, size, tiles=16 if args.device == "cuda" else 4)
                       for batch, size in shapes)

        for batch, size in shapes:
            rate = bare_forward(package, args.device, batch, size, tiles=16 if args.device == "cuda" else 4)
            row(f"bare forward, {batch} x {size} px", rate)
        bares = [max(rate for _, rate in rows)]
        if precision == "bf16":  # what the network does without bf16, for the speed-up
            fp32 = bare_forward(package, args.device, 1, 1024, tiles=4, precision="fp32")
            row("bare forward fp32, 1 x 1024 px", fp32, f"bf16 best shape {bares[0] / fp32:.2f}x of it")
        rates, rss_small = [], 0.0
        for _ in range(args.rounds):  # classify, then the bare pass again: the ratio of the medians
            t, mp, rss = run_classify(small, package, tmp / "a.tif", [plain])
            rates.append(mp / t)
            rss_small = max(rss_small, rss)
            row(f"classify torch ({mp:.1f} MP)", mp / t, rss=f"{rss:.0f}")
            bares.append(bare_now())
            row("bare forward again, best shape", bares[-1], f"{bares[-1] / bares[0]:.3f} of the first")
        bare, torch_rate = statistics.median(bares), statistics.median(rates)
        row("classify torch / bare (medians)", torch_rate, f"{torch_rate / bare:.3f} of bare")
        t, mp, _ = run_classify(small, package, tmp / "b.tif", [{**plain, "engine": "onnx"}])
        row(f"classify onnxruntime ({mp:.1f} MP)", mp / t, f"{mp / t / torch_rate:.3f} of torch")
        t0, mp0, _ = run_classify(stack, package, tmp / "d.tif", [{**plain, "tta": "none"}])
        for views in ("flip", "all"):
            t, mp, _ = run_classify(stack, package, tmp / "c.tif", [{**plain, "tta": views}])
            row(f"classify --tta {views} ({mp:.1f} MP)", mp / t, f"{(mp / t) / (mp0 / t0):.3f} of one pass")
        t, mp, _ = run_classify(small, package, tmp / "f.tif", [plain], no_network=True)
        row(f"pipeline alone, no network ({mp:.1f} MP)", mp / t, f"{mp / t / bare:.3f} of bare")
        if not args.skip_big:
            before = bare_now()
            t, mp, rss_big = run_classify(big, package, tmp / "e.tif", [plain])
            bare = (before + bare_now()) / 2
            row(f"classify torch ({mp:.0f} MP)", mp / t, f"{mp / t / bare:.3f} of bare; RSS {rss_big / rss_small:.3f} of small",
                f"{rss_big:.0f}")
            t, mp, _ = run_classify(big, package, tmp / "g.tif", [plain], no_network=True)
            row(f"pipeline alone, no network ({mp:.0f} MP)", mp / t, f"{mp / t / bare:.3f} of bare")


if __name__ == "__main__":
    main()
