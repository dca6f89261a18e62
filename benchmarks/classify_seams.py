"""Seams of tiled `sparsecover classify`: agreement with one forward pass, per tile size and padding.

    python benchmarks/classify_seams.py MODEL SCENE [--mirror 3] [--settings 1024:32 1024:64 2048:64]

The scene is mirrored ``--mirror`` x ``--mirror`` times (flipped copies side by side, so the content
runs on across the joins) to make it large enough for several tiles, then classified once in a single
tile (the reference) and once per TILE:PADDING setting. Prints, per setting: the tile grid, the pixels
the network computes per output pixel (tiles / raster; the padding's share of the work) and the share
of valid pixels whose class equals the single pass's. A trained model is needed: a random network's
sensitivity to context is not a trained one's.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import rasterio

from sparsecover.classify import classify_pixels
from sparsecover.classify.plan import MULTIPLE, plan_blocks


def mirrored(scene: Path, times: int, out: Path) -> Path:
    """``scene`` mirrored ``times`` x ``times`` (every other copy flipped), written as float32."""
    with rasterio.open(scene) as src:
        data, profile = src.read(masked=True).astype("float32"), src.profile
    row = np.ma.concatenate([data if i % 2 == 0 else data[:, :, ::-1] for i in range(times)], axis=2)
    full = np.ma.concatenate([row if j % 2 == 0 else row[:, ::-1, :] for j in range(times)], axis=1)
    profile.update(driver="GTiff", width=full.shape[2], height=full.shape[1], dtype="float32", nodata=-99999.0,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(full.filled(-99999.0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("scene", type=Path)
    parser.add_argument("--mirror", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=["512:32", "512:64", "1024:32", "1024:48", "1024:64",
                                                           "2048:64"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        big = mirrored(args.scene, args.mirror, tmp / "mirrored.tif")
        with rasterio.open(big) as src:
            width, height = src.width, src.height
        single = math.ceil(max(width, height) / MULTIPLE) * MULTIPLE
        one = rasterio.open(classify_pixels(big, args.model, tmp / "one.tif", tile_size=single, padding=0,
                                            progress=False)).read(1)
        valid = one > 0
        print(f"classify_seams: {args.scene.name} mirrored {args.mirror} x {args.mirror} = {width} x {height} px "
              f"({valid.sum()} valid); reference: one {single} px tile; model {args.model.name}")
        print(f"{'tile:padding':<14}{'tiles':>8}{'computed/output px':>20}{'agreement':>11}")
        for setting in args.settings:
            tile, padding = map(int, setting.split(":"))
            blocks = plan_blocks(width, height, tile, padding)
            grid = (len({b.tile.col_off for b in blocks}), len({b.tile.row_off for b in blocks}))
            computed = sum(b.tile.width * b.tile.height for b in blocks) / (width * height)
            tiled = rasterio.open(classify_pixels(big, args.model, tmp / f"{tile}_{padding}.tif", tile_size=tile,
                                                  padding=padding, progress=False)).read(1)
            agreement = float((tiled[valid] == one[valid]).mean())
            print(f"{setting:<14}{grid[0]:>4} x{grid[1]:>2}{computed:>20.3f}{agreement:>11.4%}", flush=True)


if __name__ == "__main__":
    main()
