"""Training data: class mapping, normalisation, the leak-free spatial split, augmentation, torch datasets.

The split is by spatial group (a polygon, or a connected label region): every group is wholly in
training or wholly in validation. Chips overlap, so one chip can hold pixels of both splits; the
training copy of such a chip sees the validation pixels as "ignore" and vice versa. Validation
pixels are scored once each even where validation chips overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from .chips import ChipDataset
from .errors import SparsecoverError, warn

IGNORE_INDEX = 255  # label index the loss and every metric skip
UNLABELLED = 254  # training targets only: a valid pixel with no usable label (pseudo-labelled, see train)

#: imagery_type presets (arcgis.learn names): the band names they imply, in order.
IMAGERY_TYPES: dict[str, list[str] | None] = {
    "naip": ["red", "green", "blue", "nir"],
    "landsat8": ["coastal", "blue", "green", "red", "nir", "swir1", "swir2", "pan", "cirrus", "tirs1", "tirs2"],
    "sentinel2": ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"],
    "ms": None,
    "multispectral": None,
}


@dataclass
class ClassMapping:
    """User class values <-> contiguous model indices (non-contiguous values allowed)."""

    values: list[int]  # model index -> user class value
    names: list[str]
    colors: list[str]

    def lut(self) -> np.ndarray:
        """uint8 lookup: user value -> model index, IGNORE_INDEX for 0, ignored and unknown values."""
        table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for index, value in enumerate(self.values):
            table[value] = index
        return table


def class_mapping(dataset: ChipDataset, ignore_classes: list[int]) -> ClassMapping:
    kept = [c for c in dataset.classes if c.value not in ignore_classes and c.value != 0]
    unknown = set(ignore_classes) - {c.value for c in dataset.classes} - {0}
    if unknown:
        raise SparsecoverError(
            f"--ignore-classes names {sorted(unknown)}, which the dataset does not have "
            f"(classes: {', '.join(str(c.value) for c in dataset.classes)})"
        )
    with_pixels = [c for c in kept if dataset.class_pixel_counts.get(c.value, 0) > 0]
    if len(with_pixels) < 2:
        raise SparsecoverError(
            f"{dataset.root}: fewer than 2 classes with labelled pixels are left after ignoring "
            f"{ignore_classes or 'none'}; a classifier needs at least 2"
        )
    for c in kept:
        if dataset.class_pixel_counts.get(c.value, 0) == 0:
            warn(f"class {c.value} ({c.name}) has no labelled pixel: the model keeps it but cannot learn it")
    return ClassMapping([c.value for c in kept], [c.name for c in kept], [c.color for c in kept])


@dataclass
class Normalisation:
    """Per-band percentile clip, then standardisation; travels with the model for inference."""

    low: list[float]
    high: list[float]
    mean: list[float]
    std: list[float]

    @classmethod
    def from_statistics(cls, statistics: list[dict]) -> Normalisation:
        low = [s["p1"] for s in statistics]
        high = [s["p99"] for s in statistics]
        mean, std = [], []
        for s, lo, hi in zip(statistics, low, high):
            # standardise with the clipped range's spread, so a few extreme pixels do not flatten it
            mean.append(float(min(max(s["mean"], lo), hi)))
            std.append(float(max(s["std"], 1e-6)))
        return cls(low, high, mean, std)

    def apply(self, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(bands, h, w) raw values -> float32 normalised values; invalid values become 0 (the mean).

        ``valid`` is per band, (bands, h, w), or per pixel, (h, w). Imputing a missing band with its
        mean is what inference does too (``classify.Predictor``), so both see the same inputs.
        """
        low = np.asarray(self.low, dtype=np.float32)[:, None, None]
        high = np.asarray(self.high, dtype=np.float32)[:, None, None]
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        out = (np.clip(image.astype(np.float32), low, high) - mean) / std
        if valid.ndim == 2:
            out[:, ~valid] = 0.0
        else:
            out[~valid] = 0.0
        return out

    def as_json(self) -> dict:
        return {"method": "percentile-clip-standardise", "low": self.low, "high": self.high,
                "mean": self.mean, "std": self.std}


def band_validity(image: np.ndarray, nodata: float | None) -> np.ndarray:
    """(bands, h, w): where each band holds data (not the chip's nodata value, finite).

    A pixel is usable where any band is valid (``.any(0)``); its missing bands are imputed.
    """
    valid = np.ones(image.shape, dtype=bool)
    if np.issubdtype(image.dtype, np.floating):
        valid &= np.isfinite(image)
    if nodata is not None and not np.isnan(nodata):
        valid &= image != nodata
    return valid


@dataclass
class Split:
    """Which spatial groups train and which validate, decided once per seed."""

    train_groups: set[int]
    valid_groups: set[int]
    unvalidated_classes: list[int] = field(default_factory=list)


def spatial_split(dataset: ChipDataset, mapping: ClassMapping, fraction: float, seed: int) -> Split:
    """Stratified split of spatial groups: each class with >= 2 groups gets >= 1 validation group.

    Deterministic for a seed. A group is validation as a whole, so no validation pixel shares a
    polygon (or label region) with a training pixel.
    """
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for gid, info in sorted(dataset.groups.items()):
        if info["class"] in mapping.values and info["pixels"] > 0:
            by_class.setdefault(info["class"], []).append(gid)
    train, valid, unvalidated = set(), set(), []
    for value in mapping.values:
        groups = by_class.get(value, [])
        order = [groups[i] for i in rng.permutation(len(groups))]
        n_valid = 0
        if fraction > 0 and len(groups) >= 2:
            n_valid = min(len(groups) - 1, max(1, int(round(fraction * len(groups)))))
        elif fraction > 0 and groups:
            unvalidated.append(value)
        valid.update(order[:n_valid])
        train.update(order[n_valid:])
    for value in unvalidated:
        name = mapping.names[mapping.values.index(value)]
        warn(f"class {value} ({name}) has a single polygon/region: it is trained on but cannot be validated")
    return Split(train, valid, unvalidated)


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, jitter: float = 0.1):
    """One of the 8 flips/rotations, and mild per-band brightness/contrast jitter (normalised space)."""
    k = int(rng.integers(4))
    image, label = np.rot90(image, k, axes=(1, 2)), np.rot90(label, k)
    if rng.random() < 0.5:
        image, label = image[:, :, ::-1], label[:, ::-1]
    if jitter > 0:
        bands = image.shape[0]
        gain = 1.0 + rng.uniform(-jitter, jitter, (bands, 1, 1)).astype(np.float32)
        bias = rng.uniform(-jitter, jitter, (bands, 1, 1)).astype(np.float32)
        image = image * gain + bias
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class ChipTorchDataset(Dataset):
    """Chips of one split as (normalised image tensor, label index tensor) pairs.

    Labels hold model indices; IGNORE_INDEX marks unlabelled, ignored-class, nodata and
    other-split pixels. Training targets mark the valid ones among those UNLABELLED instead, so
    semi-supervised training knows where it may pseudo-label. Small datasets are read once and kept in memory.

    With ``patch`` smaller than the chips, training draws random patches of that size from them:
    an epoch is as many patches as cover the chips' area once, up to ``EPOCH_PIXELS``. The number
    of optimizer steps then follows the labelled area, not the chip size: 45 chips of 256 px
    (1 m NAIP, ArcGIS's sample export) give 6 steps an epoch as whole chips but 22 as 128 px
    patches, at the same cost per epoch. The cap bounds an epoch's cost on large exports.
    """

    CACHE_BYTES = 2 * 1024**3
    EPOCH_PIXELS = 4 * 2**20

    def __init__(
        self,
        dataset: ChipDataset,
        indices: list[int],
        own_groups: set[int],
        mapping: ClassMapping,
        normalisation: Normalisation,
        bands: list[int],
        train: bool,
        score_once: bool = False,
        patch: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.indices = indices
        self.own_groups = np.array(sorted(own_groups), dtype=np.int64)
        self.lut = mapping.lut()
        self.normalisation = normalisation
        self.bands = bands
        self.train = train
        tile = dataset.tile_size
        self.patch = patch if train and patch and patch < tile else None
        self.samples = len(indices)
        if self.patch:
            area = min(len(indices) * tile * tile, self.EPOCH_PIXELS)
            self.samples = max(1, math.ceil(area / self.patch**2))
        estimate = len(indices) * (len(bands) * 4 + 1) * tile * tile
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if estimate < self.CACHE_BYTES else None
        self._seen_mask = self._score_once_masks() if score_once else None

    def __len__(self) -> int:
        return self.samples

    def _score_once_masks(self) -> dict[int, np.ndarray]:
        """For overlapping validation chips: score each validation pixel in the first chip holding it."""
        masks, seen = {}, set()
        for position, index in enumerate(self.indices):
            chip = self.dataset.chips[index]
            _, label, groups = self.dataset.read(index)
            mine = np.isin(groups, self.own_groups) & (label > 0)
            if chip.window is None:
                masks[position] = mine
                continue
            col, row = chip.window[0], chip.window[1]
            rows, cols = np.nonzero(mine)
            keys = [(chip.source, int(r) + row, int(c) + col) for r, c in zip(rows, cols)]
            keep = np.array([k not in seen for k in keys], dtype=bool)
            seen.update(keys)
            mask = np.zeros_like(mine)
            mask[rows[keep], cols[keep]] = True
            masks[position] = mask
        return masks

    def _load(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and position in self._cache:
            return self._cache[position]
        image, label, groups = self.dataset.read(self.indices[position])
        image = image[self.bands]
        valid = band_validity(image, self.dataset.nodata)
        usable = valid.any(0)
        target = self.lut[label]
        keep = usable & np.isin(groups, self.own_groups)
        if self._seen_mask is not None:
            keep &= self._seen_mask[position]
        target[~keep] = IGNORE_INDEX
        if self.train:
            target[~keep & usable] = UNLABELLED
        item = (self.normalisation.apply(image, valid), target)
        if self._cache is not None:
            self._cache[position] = item
        return item

    def labelled_pixels(self, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """This split's labelled pixels, each once (overlapping chips share pixels): normalised values
        (N, bands) and class indices (N,). At most ``limit``, drawn evenly from the chips."""
        per_chip = math.ceil(limit / max(1, len(self.indices)))
        rng = np.random.default_rng(seed)
        values, classes, keys = [], [], []
        for position, index in enumerate(self.indices):
            image, target = self._load(position)
            rows, cols = np.nonzero(target < UNLABELLED)
            if len(rows) > per_chip:
                pick = np.sort(rng.choice(len(rows), per_chip, replace=False))
                rows, cols = rows[pick], cols[pick]
            chip = self.dataset.chips[index]
            col0, row0 = chip.window[:2] if chip.window else (0, 0)
            values.append(image[:, rows, cols].T)
            classes.append(target[rows, cols])
            # where the pixel lies in its source raster (chips without a window: unique per chip)
            source = chip.source if chip.window else len(self.dataset.sources) + index
            keys.append(np.stack([np.full(len(rows), source), rows + row0, cols + col0], axis=1))
        if not values:
            return np.zeros((0, len(self.bands)), np.float32), np.zeros(0, np.int64)
        _, first = np.unique(np.concatenate(keys), axis=0, return_index=True)
        first = np.sort(first)
        return np.concatenate(values)[first], np.concatenate(classes)[first].astype(np.int64)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train:
            # drawn from torch's RNG: a new view every epoch, reproducible for a seed (Lightning seeds
            # the main process and every DataLoader worker)
            rng = np.random.default_rng(int(torch.randint(2**62, ())))
            # patches cycle through the chips; an epoch capped below one patch per chip draws them
            chip = position % len(self.indices) if self.samples >= len(self.indices) else int(rng.integers(len(self.indices)))
            image, target = self._load(chip)
            if self.patch:
                row = int(rng.integers(target.shape[0] - self.patch + 1))
                col = int(rng.integers(target.shape[1] - self.patch + 1))
                image = image[:, row : row + self.patch, col : col + self.patch]
                target = target[row : row + self.patch, col : col + self.patch]
            image, target = augment(image, target, rng)
        else:
            image, target = self._load(position)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(target.astype(np.int64))


def class_weights(dataset: ChipDataset, mapping: ClassMapping, train_groups: set[int]) -> list[float]:
    """Inverse-frequency weights from the training groups' pixel counts, mean 1, capped at 10x.

    Classes without training pixels get weight 0 (nothing to learn from; keeps the loss finite).
    """
    counts = np.zeros(len(mapping.values))
    for gid in train_groups:
        info = dataset.groups[gid]
        counts[mapping.values.index(info["class"])] += info["pixels"]
    present = counts > 0
    weights = np.zeros_like(counts)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    weights[present] = np.minimum(weights[present] / weights[present].mean(), 10.0)
    return weights.tolist()


def select_bands(dataset: ChipDataset, bands: list[str] | list[int] | None, imagery_type: str | None) -> tuple[list[int], list[str]]:
    """Band indices (0-based) and names to train on: ``bands`` by name or 1-based number, else all."""
    names = [b.name for b in dataset.bands]
    if imagery_type is not None:
        if imagery_type not in IMAGERY_TYPES:
            raise SparsecoverError(
                f"unknown imagery_type {imagery_type!r}; choose one of {', '.join(IMAGERY_TYPES)}"
            )
        preset = IMAGERY_TYPES[imagery_type]
        if preset is not None and bands is None:
            if len(preset) != len(names):
                raise SparsecoverError(
                    f"{dataset.root}: imagery_type {imagery_type!r} means {len(preset)} bands "
                    f"({', '.join(preset)}) but the chips have {len(names)}; pass bands= or imagery_type='ms'"
                )
            names = preset
    if bands is None:
        return list(range(len(names))), names
    chosen = []
    for band in bands:
        if isinstance(band, int) or str(band).isdigit():
            index = int(band) - 1
            if not 0 <= index < len(names):
                raise SparsecoverError(f"band {band} does not exist; the chips have bands 1..{len(names)}")
        else:
            if band not in names:
                raise SparsecoverError(f"no band named {band!r}; the chips have: {', '.join(names)}")
            index = names.index(band)
        chosen.append(index)
    return chosen, [names[i] for i in chosen]
