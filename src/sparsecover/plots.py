"""Pictures (matplotlib, headless): chips with their labels drawn over them.

Images are shown as RGB (bands named red/green/blue, else the first three) or any band triple,
with a robust 2-98 % contrast stretch per chip; labels are drawn in their class colours and
unlabelled pixels stay transparent, so the sparse polygons read as they were drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .chips import ChipDataset
from .data import valid_pixels


def display_bands(names: list[str]) -> list[int]:
    """Indices of the bands to show as R, G, B."""
    lowered = [n.lower() for n in names]
    if all(c in lowered for c in ("red", "green", "blue")):
        return [lowered.index(c) for c in ("red", "green", "blue")]
    return [0, 0, 0] if len(names) < 3 else [0, 1, 2]


def stretch(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(3, h, w) raw values -> (h, w, 3) floats in 0..1, 2-98 % percentile stretch per band."""
    out = np.zeros(image.shape[1:] + (3,), dtype=np.float32)
    for b in range(3):
        values = image[b][valid].astype(np.float64)
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, (2, 98))
        out[..., b] = np.clip((image[b] - lo) / (hi - lo if hi > lo else 1), 0, 1)
    out[~valid] = 0
    return out


def label_overlay(label: np.ndarray, colors: dict[int, str], alpha: float = 0.65) -> np.ndarray:
    """(h, w) class values -> (h, w, 4) RGBA, unlabelled (0) transparent."""
    rgba = np.zeros(label.shape + (4,), dtype=np.float32)
    for value, color in colors.items():
        hit = label == value
        rgba[hit, :3] = [int(color[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        rgba[hit, 3] = alpha
    return rgba


def show_batch(dataset: ChipDataset, rows: int = 2, columns: int = 4, bands: list[int] | None = None,
               seed: int = 0, path: str | Path | None = None):
    """A grid of random labelled chips with labels overlaid and a class legend; saved if ``path``."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rng = np.random.default_rng(seed)
    count = min(rows * columns, len(dataset))
    picks = rng.choice(len(dataset), size=count, replace=False)
    show = bands or display_bands([b.name for b in dataset.bands])
    colors = {c.value: c.color for c in dataset.classes}
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), picks):
        image, label, _ = dataset.read(int(index))
        valid = valid_pixels(image, dataset.nodata)
        ax.imshow(stretch(image[show], valid))
        ax.imshow(label_overlay(label, colors))
        ax.set_title(dataset.chips[int(index)].id, fontsize=8)
    handles = [Patch(color=c.color, label=f"{c.value} {c.name}") for c in dataset.classes]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    if path is not None:
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return fig
