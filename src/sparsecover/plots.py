"""Pictures (matplotlib, headless): chips with their labels drawn over them.

Images are shown as RGB (bands named red/green/blue, else the first three) or any band triple,
with a robust 2-98 % contrast stretch per chip; labels are drawn in their class colours and
unlabelled pixels stay transparent, so the sparse polygons read as they were drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .chips import ChipDataset
from .data import band_validity


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
        valid = band_validity(image, dataset.nodata).any(0)
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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(matrix: np.ndarray, names: list[str], path: str | Path) -> None:
    """Row-normalised confusion matrix (recall on the diagonal) with counts, class names readable."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.float64)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    size = max(4.0, 0.7 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for i in range(len(names)):
        for j in range(len(names)):
            if matrix[i, j]:
                ax.text(j, i, f"{share[i, j]:.2f}\n{int(matrix[i, j]):,}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of reference row")
    ax.set_title("confusion matrix (rows normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_history(rows: list[dict[str, str]], path: str | Path) -> None:
    """Training curves from history.csv's rows (:meth:`sparsecover.runfolder.RunFolder.history`): losses,
    and validation accuracy / macro-F1."""
    plt = _pyplot()

    def column(name):
        return [float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows]

    epochs = [int(r["epoch"]) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    left.plot(epochs, column("train_loss"), marker="o", label="train_loss")
    left.plot(epochs, column("valid_loss"), marker="o", label="valid_loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    right.plot(epochs, column("accuracy"), marker="o", label="accuracy")
    right.plot(epochs, column("macro_f1"), marker="o", label="macro-F1")
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.legend()
    fig.suptitle("training (validation on held-out polygons)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_map(classified: str | Path, path: str | Path, max_size: int = 1000, image: str | Path | None = None) -> None:
    """Preview of a classified raster in its class colours with a legend (decimated read); with
    ``image`` (on the map's grid) its natural-colour composite beside it, as a map reader compares."""
    import rasterio
    from matplotlib.patches import Patch

    from .classes import read_raster_classes

    plt = _pyplot()
    with rasterio.open(classified) as src:
        scale = max(1, max(src.width, src.height) // max_size)
        shape = (max(1, src.height // scale), max(1, src.width // scale))
        data = src.read(1, out_shape=shape)
        names, colours = read_raster_classes(src)
    rgb = None
    if image is not None:
        with rasterio.open(image) as img:
            bands = [i + 1 for i in display_bands([d or "" for d in img.descriptions])]
            valid = np.all(img.read_masks(bands, out_shape=(3, *shape)) > 0, axis=0)
            rgb = stretch(img.read(bands, out_shape=(3, *shape)), valid)
    colour = {v: np.array([int(c[i : i + 2], 16) for i in (1, 3, 5)] + [255]) / 255 for v, c in colours.items()}
    grey = np.array([0.5, 0.5, 0.5, 1.0])
    rgba = np.zeros(data.shape + (4,), dtype=np.float32)
    for value in np.unique(data):
        if value:
            rgba[data == value] = colour.get(int(value), grey)
    panels = 1 if rgb is None else 2
    fig, axes = plt.subplots(1, panels, figsize=(8 * panels, 8 * data.shape[0] / data.shape[1] + 0.8), squeeze=False)
    if rgb is not None:
        axes[0, 0].imshow(rgb)
        axes[0, 0].set_title(Path(image).name)
    ax = axes[0, -1]
    ax.imshow(rgba)
    for a in axes[0]:
        a.axis("off")
    handles = [Patch(color=colour.get(v, grey)[:3], label=f"{v} {n}") for v, n in sorted(names.items())]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.set_title(Path(classified).name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_uncertainty(uncertainty: str | Path | None, suggestions: str | Path | None, path: str | Path,
                     max_size: int = 1000) -> None:
    """The uncertainty map (from `classify --uncertainty` or `suggest --uncertainty`) with the
    squares of `suggest` drawn over it, numbered by rank; either may be missing."""
    import geopandas as gpd
    import rasterio
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 7))
    to_image = None
    if uncertainty is not None:
        with rasterio.open(uncertainty) as src:
            scale = max(1, max(src.width, src.height) // max_size)
            shape = (max(1, src.height // scale), max(1, src.width // scale))
            data = src.read(1, out_shape=shape, masked=True)
            to_image = ~(src.transform * rasterio.Affine.scale(src.width / shape[1], src.height / shape[0]))
            crs, label = src.crs, src.descriptions[0] or "uncertainty"  # which measure: classify names it
        shown = ax.imshow(data, cmap="magma", vmin=0, vmax=1)
        fig.colorbar(shown, ax=ax, shrink=0.7, label=label.replace(" (", "\n("))
    if suggestions is not None:
        frame = gpd.read_file(suggestions, engine="pyogrio")
        if to_image is not None:
            frame = frame.to_crs(crs)
        for square, rank in zip(frame.geometry, frame.get("rank", range(1, len(frame) + 1))):
            west, south, east, north = square.bounds
            if to_image is not None:
                (x0, y0), (x1, y1) = to_image * (west, north), to_image * (east, south)
            else:
                x0, y0, x1, y1 = west, -north, east, -south
            ax.add_patch(Rectangle((x0, y0), max(x1 - x0, 3), max(y1 - y0, 3), fill=False, color="cyan", lw=1.5))
            ax.annotate(str(rank), (x1, y0), color="cyan", fontsize=7)
        if to_image is None:
            ax.autoscale_view()
    ax.axis("off")
    ax.set_title("where to label next" if suggestions is not None else Path(uncertainty).name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def show_results(dataset: ChipDataset, model, indices: list[int], path: str | Path | None = None):
    """Rows of image | ground truth | prediction for chips (validation chips, typically); saved to
    ``path`` if given, else the figure is returned (for notebooks)."""
    import torch

    from .model import offsets_of

    plt = _pyplot()
    show = display_bands([b.name for b in dataset.bands])
    colors = {c.value: c.color for c in dataset.classes}
    lut = np.array(model.class_values, dtype=np.uint8)
    offsets = offsets_of(model.meta)  # decide as classify does
    fig, axes = plt.subplots(len(indices), 3, figsize=(9, 3 * len(indices)), squeeze=False)
    for row, index in zip(axes, indices):
        image, label, _ = dataset.read(index)
        chosen_bands = [b["source_index"] - 1 for b in model.meta["bands"]]
        band_valid = band_validity(image, dataset.nodata)
        valid = band_valid.any(0)
        x = torch.from_numpy(model.normalisation.apply(image[chosen_bands], band_valid[chosen_bands])[None])
        with torch.no_grad():
            predicted = lut[(model.network(x) + offsets).argmax(1)[0].numpy()]
        predicted[~valid] = 0
        background = stretch(image[show], valid)
        for ax, overlay, title in zip(row, (None, label, predicted), ("image", "ground truth", "prediction")):
            ax.imshow(background)
            if overlay is not None:
                ax.imshow(label_overlay(overlay, colors, alpha=0.9))
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    fig.tight_layout()
    if path is None:
        return fig
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return None
