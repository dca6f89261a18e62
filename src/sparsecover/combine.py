"""Several chip datasets trained as one (`sparsecover train A B ...`): scenes, dates or sensors pooled.

The parts must agree on what a model needs to be one model: the same band count and chip size.
Everything else is reconciled: spatial group ids (and raster source numbers) are offset so that
groups of different datasets never merge and the split stays leak-free; classes are the union
(the first dataset's name and colour win); band statistics are pooled (count-weighted mean and
variance exactly; the 1st/99th percentiles as count-weighted means of the parts' percentiles, an
approximation that is exact when the parts share a distribution); and where the parts' nodata values
differ, every part's nodata becomes NaN in float32, so no valid value of one part can be taken for
another part's nodata.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chips import DATASET_FILE, ChipDataset, open_chip_dataset
from .errors import SparsecoverError, warn
from .raster import BandInfo, common_dtype


@dataclass
class CombinedChipDataset(ChipDataset):
    """Chip datasets read as one; ``read`` dispatches to the part and offsets its group ids."""

    parts: list[ChipDataset] = field(default_factory=list)
    chip_starts: list[int] = field(default_factory=list)
    group_offsets: list[int] = field(default_factory=list)

    @property
    def roots(self) -> list[Path]:
        return [p.root for p in self.parts]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        part_no = bisect.bisect_right(self.chip_starts, index) - 1
        part = self.parts[part_no]
        image, label, groups = part.read(index - self.chip_starts[part_no])
        groups = np.where(groups > 0, groups + self.group_offsets[part_no], 0)
        if part.nodata != self.nodata or np.dtype(part.dtype) != np.dtype(self.dtype):
            missing = _is_nodata(image, part.nodata)
            image = image.astype(self.dtype)
            image[missing] = self.nodata
        return image, label, groups


def _is_nodata(image: np.ndarray, nodata: float | None) -> np.ndarray:
    if nodata is None:
        return np.zeros(image.shape, dtype=bool)
    return np.isnan(image) if np.isnan(nodata) else image == nodata


def open_chip_datasets(paths: list[str | Path] | str | Path) -> ChipDataset:
    """One chip dataset, or several combined into one (see the module docstring)."""
    if isinstance(paths, (str, Path)):
        return open_chip_dataset(paths)
    if not paths:
        raise SparsecoverError("train needs at least one chip dataset folder")
    datasets = [open_chip_dataset(p) for p in paths]
    return datasets[0] if len(datasets) == 1 else combine(datasets)


def combine(parts: list[ChipDataset]) -> CombinedChipDataset:
    first = parts[0]
    for part in parts[1:]:
        if len(part.bands) != len(first.bands):
            raise SparsecoverError(
                f"{part.root}: chips have {len(part.bands)} bands but {first.root} has {len(first.bands)}; "
                "datasets trained together need the same bands (re-export, or use --bands on a stack)"
            )
        if part.tile_size != first.tile_size:
            raise SparsecoverError(
                f"{part.root}: chips are {part.tile_size} px but {first.root} has {first.tile_size} px; "
                "export every dataset with the same --tile-size"
            )
        names = [b.name for b in part.bands]
        if names != [b.name for b in first.bands]:
            warn(f"{part.root}: band names {names} differ from {first.root}'s; bands are matched by position")
    dtypes = {np.dtype(p.dtype) for p in parts}
    nodatas = {("nan" if p.nodata is not None and np.isnan(p.nodata) else p.nodata) for p in parts}
    if len(nodatas) == 1 and len(dtypes) == 1:
        dtype, nodata = first.dtype, first.nodata
    else:
        dtype, nodata = common_dtype(["float32"] + [p.dtype for p in parts]), float("nan")
    chips, starts, offsets, group_table = [], [], [], {}
    group_offset, source_offset = 0, 0
    for part in parts:
        table = part.groups  # Esri parts compute their groups (and chips' group ids) here
        starts.append(len(chips))
        offsets.append(group_offset)
        for chip in part.chips:
            chips.append(dataclasses.replace(
                chip, group_ids=[g + group_offset for g in chip.group_ids], source=chip.source + source_offset))
        for gid, info in table.items():
            group_table[gid + group_offset] = dict(info)
        group_offset += max(table, default=0)
        source_offset += max((c.source for c in part.chips), default=0) + 1
    classes, seen = [], set()
    for part in parts:
        for c in part.classes:
            if c.value not in seen:
                seen.add(c.value)
                classes.append(c)
    counts: dict[int, int] = {}
    for part in parts:
        for value, n in part.class_pixel_counts.items():
            counts[value] = counts.get(value, 0) + n
    bands = [BandInfo(b.name, dtype, nodata) for b in first.bands]
    return CombinedChipDataset(
        root=first.root, kind="+".join(dict.fromkeys(p.kind for p in parts)), bands=bands, dtype=dtype,
        nodata=nodata, classes=sorted(classes, key=lambda c: c.value), tile_size=first.tile_size,
        stride=first.stride, statistics=pooled_statistics(parts), class_pixel_counts=counts, chips=chips,
        crs_wkt=first.crs_wkt, resolution=first.resolution, group_table=group_table,
        class_field=next((p.class_field for p in parts if p.class_field), None),
        sources=[source for p in parts for source in p.sources], parts=parts, chip_starts=starts, group_offsets=offsets,
    )


def pooled_statistics(parts: list[ChipDataset]) -> list[dict]:
    """Per-band statistics of all parts together (see the module docstring for the percentiles)."""
    pooled = []
    for band in range(len(parts[0].bands)):
        stats = [p.statistics[band] for p in parts]
        n = np.array([s["count"] for s in stats], dtype=np.float64)
        w = n / n.sum()
        mean = float((w * [s["mean"] for s in stats]).sum())
        var = float((w * [s["std"] ** 2 + (s["mean"] - mean) ** 2 for s in stats]).sum())
        pooled.append({
            "band": stats[0]["band"], "count": int(n.sum()),
            "min": min(s["min"] for s in stats), "max": max(s["max"] for s in stats),
            "mean": mean, "std": var**0.5,
            "p1": float((w * [s["p1"] for s in stats]).sum()), "p99": float((w * [s["p99"] for s in stats]).sum()),
        })
    return pooled


def dataset_roots(dataset: ChipDataset) -> list[str]:
    """The resolved folder(s) a (combined) dataset was read from, for config.json and model.json."""
    roots = dataset.roots if isinstance(dataset, CombinedChipDataset) else [dataset.root]
    return [str(Path(r).resolve()) for r in roots]


def dataset_hash(dataset: ChipDataset) -> str | None:
    """sha256 of the dataset.json file(s): provenance of a model (None for Esri exports)."""
    files = [Path(r) / DATASET_FILE for r in dataset_roots(dataset)]
    if not all(f.exists() for f in files):
        return None
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
    return digest.hexdigest()
