"""Make docs/demo.png (image | training labels | map) from a finished `sparsecover demo` folder.

    python docs/make_figure.py sparsecover-demo docs/demo.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import matplotlib
import numpy as np
import rasterio
from rasterio import features

from sparsecover.demo import demo_data
from sparsecover.plots import display_bands, label_overlay, stretch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(demo: Path, out: Path) -> None:
    with rasterio.open(demo / "scene.vrt") as src:
        image = src.read()
        names = list(src.descriptions)
        # where the shown bands are valid: swir2's smaller footprint is imputed by classify, not dropped
        valid = np.all(src.read_masks()[display_bands(names)] > 0, axis=0)
        polygons = gpd.read_file(demo_data() / "landsat96_polygons.gpkg").to_crs(src.crs)
        labels = features.rasterize(zip(polygons.geometry, polygons["id"]), out_shape=valid.shape,
                                    transform=src.transform, all_touched=True, dtype="uint8")
    with rasterio.open(demo / "landcover.tif") as src:
        classes = src.read(1)
        colormap = src.colormap(1)
    colors = {v: "#%02x%02x%02x" % colormap[v][:3] for v in range(1, 8)}
    rgb = stretch(image[display_bands(names)], valid)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
    axes[0].imshow(rgb)
    axes[0].set_title("Landsat 7 (red, green, blue)")
    axes[1].imshow(rgb * 0.6)
    axes[1].imshow(label_overlay(labels, colors, alpha=1.0))
    axes[1].set_title("34 training polygons (1.3 % of pixels)")
    axes[2].imshow(label_overlay(classes, colors, alpha=1.0))
    axes[2].set_title("sparsecover map")
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
