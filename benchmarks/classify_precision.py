"""bf16 against fp32 in `classify` on this CPU: how many pixels change, and how much faster.

    python benchmarks/classify_precision.py SCENE MODEL [SCENE MODEL ...] [--rounds 2]

Each (scene, trained model package) is classified at the defaults with ``--precision fp32`` and
``--precision bf16``, alternating, ``--rounds`` times each; the table gives the share of valid
pixels with the same class and the best wall time of each (whole classify: reading, network,
writing). Whether this CPU computes bf16 natively (what ``--precision auto`` follows) is printed
first; without it bf16 is emulated and slower.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import rasterio

from sparsecover.classify import classify_pixels
from sparsecover.classify.engine import cpu_has_bf16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="SCENE MODEL pairs")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if len(args.pairs) % 2:
        parser.error("give SCENE MODEL pairs")
    print(f"native bf16 on this CPU: {cpu_has_bf16()}")
    print(f"{'scene':<28} {'MP':>6} {'same class':>11} {'fp32 s':>8} {'bf16 s':>8} {'bf16 speed-up':>14}")
    with tempfile.TemporaryDirectory() as tmp:
        for scene, model in zip(args.pairs[::2], args.pairs[1::2]):
            maps, times = {}, {"fp32": [], "bf16": []}
            for _ in range(args.rounds):
                for precision in times:
                    out = Path(tmp) / f"{precision}.tif"
                    start = time.perf_counter()
                    classify_pixels(scene, model, out, progress=False, overwrite=True, precision=precision)
                    times[precision].append(time.perf_counter() - start)
                    with rasterio.open(out) as src:
                        maps[precision] = src.read(1)
            valid = maps["fp32"] > 0
            same = (maps["fp32"] == maps["bf16"])[valid].mean()
            fp32, bf16 = min(times["fp32"]), min(times["bf16"])
            print(f"{Path(scene).name:<28} {valid.sum() / 1e6:6.2f} {same * 100:10.2f}% {fp32:8.2f} {bf16:8.2f} "
                  f"{fp32 / bf16:13.2f}x")


if __name__ == "__main__":
    main()
