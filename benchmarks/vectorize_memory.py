"""Memory and speed of `sparsecover vectorize`, printed as one table from one run.

    python benchmarks/vectorize_memory.py [--big-mp 455] [--min-area 0.5ha] [--layouts apart joined] [--out results.txt]

Input: the dense NC land-class map (../shared/data/nc_landsat/strata.tif: 30 m, 7 classes, the
speckle of a per-pixel classification) as uint8 with nodata 0, *tiled by repetition* (a VRT that
repeats it; no pixels copied) to about 25 MP and to at least ``--big-mp`` MP, in two layouts:

- ``apart``: a 1-pixel nodata line between the copies, so no patch is larger than in one copy:
  memory then shows what vectorize itself keeps (blocks, open polygons, per-patch bookkeeping);
- ``joined``: copies edge to edge, so patches join across copies and the largest grow with the
  map (as a forest matrix or a road network can on a real scene); a patch is one polygon, held
  whole until its last row is read, so here memory grows with the largest polygons.

Each case runs in its own process: wall seconds, MP/s, polygons written, vertices of the largest
polygon and peak RSS (ru_maxrss), without and with a minimum mapping unit. Ratios: peak RSS of the
big map / the small map.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import xml.etree.ElementTree as ET

import numpy as np
import rasterio

SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "nc_landsat" / "strata.tif"

CHILD = """
import json, resource, sqlite3, sys, time
from sparsecover.polygonize import vectorize
start = time.perf_counter()
out = vectorize(sys.argv[1], sys.argv[2], min_area=sys.argv[3] or None, progress=False)
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with sqlite3.connect(out) as db:  # GeoPackage geometry blobs: header + WKB, 16 bytes a vertex
    polygons, largest = db.execute(f'SELECT count(*), max(length(geom)) FROM "{out.stem}"').fetchone()
print(json.dumps({"seconds": seconds, "rss_mb": rss, "polygons": polygons, "largest_vertices": largest // 16}))
"""


def repeat_vrt(source: Path, out: Path, n: int, gap: int) -> Path:
    """A VRT of ``source`` repeated n x n times, ``gap`` pixels of nodata (0) between copies."""
    with rasterio.open(source) as src:
        width, height, transform, crs = src.width, src.height, src.transform, src.crs
    size = (width * n + gap * (n - 1), height * n + gap * (n - 1))
    root = ET.Element("VRTDataset", rasterXSize=str(size[0]), rasterYSize=str(size[1]))
    ET.SubElement(root, "SRS").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in transform.to_gdal())
    band = ET.SubElement(root, "VRTRasterBand", dataType="Byte", band="1")
    ET.SubElement(band, "NoDataValue").text = "0"
    for j in range(n):
        for i in range(n):
            simple = ET.SubElement(band, "SimpleSource")
            ET.SubElement(simple, "SourceFilename", relativeToVRT="0").text = str(source.resolve())
            ET.SubElement(simple, "SourceBand").text = "1"
            ET.SubElement(simple, "SrcRect", xOff="0", yOff="0", xSize=str(width), ySize=str(height))
            ET.SubElement(simple, "DstRect", xOff=str(i * (width + gap)), yOff=str(j * (height + gap)),
                          xSize=str(width), ySize=str(height))
    ET.ElementTree(root).write(out)
    return out



def class_map(folder: Path) -> Path:
    """strata.tif as a tiled uint8 class map, nodata 0 (its -99999 and any value below 1)."""
    with rasterio.open(SOURCE) as src:
        data, profile = src.read(1), src.profile
    data = np.where(data >= 1, data, 0).astype(np.uint8)
    profile.update(driver="GTiff", dtype="uint8", nodata=0, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate")
    out = folder / "strata_uint8.tif"
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data, 1)
    return out


def run(map_path: Path, out: Path, min_area: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(map_path), str(out), min_area],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mp", type=float, default=455.0)
    parser.add_argument("--small-mp", type=float, default=25.0)
    parser.add_argument("--min-area", default="0.5ha")
    parser.add_argument("--layouts", nargs="+", choices=("apart", "joined"), default=["apart", "joined"],
                        help="Which layouts to measure (joined's big map takes the longest).")
    parser.add_argument("--out", type=Path, help="Also write the table here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = class_map(tmp)
        with rasterio.open(base) as src:
            tile_mp = src.width * src.height / 1e6
        rows = []
        layouts = (("apart", 1, ("", args.min_area)), ("joined", 0, ("",)))
        for layout, gap, min_areas in (case for case in layouts if case[0] in args.layouts):
            for label, target in (("small", args.small_mp), ("big", args.big_mp)):
                n = math.ceil(math.sqrt(target / tile_mp))
                vrt = repeat_vrt(base, tmp / f"{layout}_{label}.vrt", n, gap)
                with rasterio.open(vrt) as src:
                    mp = src.width * src.height / 1e6
                for min_area in min_areas:
                    out = tmp / f"{layout}_{label}.gpkg"
                    result = run(vrt, out, min_area)
                    rows.append({"layout": layout, "map": label, "mp": mp, "min_area": min_area or "-", **result})
                    out.unlink()
    lines = [f"# vectorize memory and speed, {dt.date.today()}, {platform.node()} ({os.cpu_count()} cores), "
             f"{SOURCE.name} repeated",
             f"{'layout':<7} {'map':<6} {'MP':>7} {'min-area':>9} {'seconds':>8} {'MP/s':>6} {'polygons':>10} "
             f"{'largest (vertices)':>19} {'peak RSS MB':>12}"]
    for r in rows:
        lines.append(f"{r['layout']:<7} {r['map']:<6} {r['mp']:7.1f} {r['min_area']:>9} {r['seconds']:8.1f} "
                     f"{r['mp'] / r['seconds']:6.2f} {r['polygons']:10,} {r['largest_vertices']:19,} {r['rss_mb']:12.0f}")
    for layout, min_area in {(r["layout"], r["min_area"]) for r in rows}:
        small, big = (next(r for r in rows if (r["layout"], r["map"], r["min_area"]) == (layout, m, min_area))
                      for m in ("small", "big"))
        lines.append(f"peak RSS big / small, {layout}, min-area {min_area}: {big['rss_mb'] / small['rss_mb']:.2f} "
                     f"({big['mp'] / small['mp']:.0f}x the pixels, {big['polygons'] / small['polygons']:.0f}x the "
                     f"polygons, {big['largest_vertices'] / small['largest_vertices']:.1f}x the largest polygon)")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
