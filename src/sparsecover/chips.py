"""Reading chip datasets: sparsecover's own (dataset.json) and Esri "Classified Tiles" export folders.

Both load into one :class:`ChipDataset` so that training and evaluation never care where chips came
from. Esri exports carry no spatial groups, so for them a group is a class inside a block of
2 x 2 tiles on the map (from each chip's georeferencing): overlapping chips then agree on every
pixel's group and a split by group still cannot leak.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from .classes import ClassInfo, build_class_table, rgb_to_hex
from .errors import SparsecoverError, warn
from .raster import BandInfo, BandStatistics, _first_line, common_dtype, gdal_env, parse_nodata

DATASET_FILE = "dataset.json"
DATASET_FORMAT = "sparsecover-chips"
DATASET_VERSION = 1
ESRI_MAP = "map.txt"
ESRI_EMD = "esri_model_definition.emd"
ESRI_STATS = "esri_accumulated_stats.json"
ESRI_STATS_SAMPLE = 2000  # chips read to compute band statistics of an Esri export


@dataclass
class Chip:
    id: str
    image: Path
    label: Path
    groups: Path | None  # None: groups are derived from the chip's position (Esri exports)
    bounds: tuple[float, float, float, float] | None = None
    group_ids: list[int] = field(default_factory=list)
    source: int = 0
    window: tuple[int, int, int, int] | None = None  # col, row, width, height in the source raster


@dataclass
class ChipDataset:
    """A folder of image/label chips with everything training needs to know about them."""

    root: Path
    kind: str  # "sparsecover" or "esri-classified-tiles"
    bands: list[BandInfo]
    dtype: str
    nodata: float | None
    classes: list[ClassInfo]
    tile_size: int
    stride: int | None
    statistics: list[dict]
    class_pixel_counts: dict[int, int]
    chips: list[Chip]
    crs_wkt: str | None = None
    resolution: tuple[float, float] | None = None
    group_table: dict[int, dict] = field(default_factory=dict)  # id -> {"class", "pixels"}
    block_origin: tuple[float, float] | None = None  # Esri: where the group block grid starts
    class_field: str | None = None  # the label polygons' class field, named again by `suggest`
    sources: list[Path] = field(default_factory=list)  # the rasters the chips were cut from

    def __len__(self) -> int:
        return len(self.chips)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image (bands, h, w) in its source dtype, labels (h, w) uint8, groups (h, w) int64."""
        chip = self.chips[index]
        try:
            with rasterio.open(chip.image) as src:
                image = src.read()
                transform = src.transform
            with rasterio.open(chip.label) as src:
                label = src.read(1)
            if chip.groups is not None:
                with rasterio.open(chip.groups) as src:
                    groups = src.read(1).astype(np.int64)
            else:
                groups = self._block_groups(label, transform)
        except RasterioError as exc:
            raise SparsecoverError(f"{chip.image}: cannot read chip ({_first_line(exc)})") from None
        if image.shape[0] != len(self.bands):
            raise SparsecoverError(
                f"{chip.image}: has {image.shape[0]} bands, the dataset has {len(self.bands)}; "
                "every chip of a dataset needs the same bands"
            )
        return image, label.astype(np.uint8), groups

    def _block_groups(self, label: np.ndarray, transform) -> np.ndarray:
        """Esri chips: group = (block of 2 x 2 tiles on the map, class); chip index when not georeferenced."""
        if self.block_origin is None or self.resolution is None:
            return np.where(label > 0, label.astype(np.int64), 0)
        block = 2 * self.tile_size * self.resolution[0]
        rows, cols = np.indices(label.shape)
        xs = transform.c + (cols + 0.5) * transform.a
        ys = transform.f + (rows + 0.5) * transform.e
        bx = np.floor((xs - self.block_origin[0]) / block).astype(np.int64)
        by = np.floor((self.block_origin[1] - ys) / block).astype(np.int64)
        ids = ((by * 100_000 + bx) * 256 + label.astype(np.int64)) + 1
        return np.where(label > 0, ids, 0)

    @cached_property
    def groups(self) -> dict[int, dict]:
        """Spatial group id -> {"class": value, "pixels": count}; computed from chips for Esri exports."""
        if self.group_table:
            return self.group_table
        table: dict[int, dict] = {}
        for i, chip in enumerate(self.chips):
            _, label, groups = self.read(i)
            hit = label > 0
            ids, first, counts = np.unique(groups[hit], return_index=True, return_counts=True)
            for gid, cls, n in zip(ids.tolist(), label[hit][first].tolist(), counts.tolist()):
                entry = table.setdefault(gid, {"class": cls, "pixels": 0})
                entry["pixels"] += n  # overlapping chips count a pixel more than once
            chip.group_ids = ids.tolist()
        return table


def open_chip_dataset(path: str | Path) -> ChipDataset:
    """Open a sparsecover chip dataset or an Esri Classified Tiles folder, whichever ``path`` holds."""
    root = Path(path)
    if not root.is_dir():
        raise SparsecoverError(f"{root}: not a folder; pass the folder that `sparsecover export` wrote")
    if (root / DATASET_FILE).exists():
        return _open_sparsecover(root)
    if (root / ESRI_MAP).exists() and (root / ESRI_EMD).exists():
        return _open_esri(root)
    raise SparsecoverError(
        f"{root}: not a chip dataset (no {DATASET_FILE}, and no {ESRI_MAP} + {ESRI_EMD} of an Esri export)"
    )


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise SparsecoverError(f"{path}: not valid JSON ({exc})") from None


def _open_sparsecover(root: Path) -> ChipDataset:
    meta = _load_json(root / DATASET_FILE)
    if meta.get("format") != DATASET_FORMAT:
        raise SparsecoverError(f"{root / DATASET_FILE}: not a sparsecover chip dataset description")
    version = int(meta.get("format_version", 0))
    if version > DATASET_VERSION:
        raise SparsecoverError(
            f"{root / DATASET_FILE}: format version {version} is newer than this sparsecover reads "
            f"({DATASET_VERSION}); upgrade sparsecover"
        )
    chips = [
        Chip(
            id=c["id"],
            image=root / c["image"],
            label=root / c["label"],
            groups=root / c["groups"],
            bounds=tuple(c["bounds"]),
            group_ids=list(c.get("group_ids", [])),
            source=int(c.get("source", 0)),
            window=tuple(c["window"]) if c.get("window") else None,
        )
        for c in meta["chips"]
    ]
    if not chips:
        raise SparsecoverError(f"{root}: the chip dataset holds no chips")
    bands = [BandInfo(b["name"], b["dtype"], parse_nodata(b["nodata"])) for b in meta["bands"]]
    return ChipDataset(
        root=root,
        kind="sparsecover",
        bands=bands,
        dtype=meta["dtype"],
        nodata=parse_nodata(meta.get("nodata")),
        classes=[ClassInfo(c["value"], c["name"], c["color"]) for c in meta["classes"]],
        tile_size=int(meta["tile_size"]),
        stride=int(meta["stride"]),
        statistics=meta["statistics"],
        class_pixel_counts={int(k): int(v) for k, v in meta["class_pixel_counts"].items()},
        chips=chips,
        crs_wkt=meta.get("crs"),
        resolution=tuple(meta["resolution"]) if meta.get("resolution") else None,
        group_table={g["id"]: {"class": g["class"], "pixels": g["pixels"]} for g in meta["groups"]},
        class_field=(meta.get("labels") or {}).get("class_field"),
        sources=[Path(source["path"]) for source in meta.get("sources", [])],
    )


def _open_esri(root: Path) -> ChipDataset:
    """Esri "Classified Tiles": map.txt pairs image and label chips; the .emd names the classes."""
    emd = _load_json(root / ESRI_EMD)
    stats_meta = _load_json(root / ESRI_STATS) if (root / ESRI_STATS).exists() else {}
    mode = stats_meta.get("MetaDataMode")
    if mode and mode.replace(" ", "_").lower() != "classified_tiles":
        raise SparsecoverError(
            f"{root}: Esri export in {mode!r} format; pixel classification needs 'Classified Tiles'"
        )
    chips = []
    for number, line in enumerate((root / ESRI_MAP).read_text().splitlines(), 1):
        parts = line.replace("\\", "/").split()
        if not parts:
            continue
        if len(parts) < 2:
            raise SparsecoverError(f"{root / ESRI_MAP}: line {number} does not name an image and a label")
        image, label = root / parts[0], root / parts[-1]
        for p in (image, label):
            if not p.exists():
                raise SparsecoverError(f"{root / ESRI_MAP}: line {number} names {p}, which is missing")
        chips.append(Chip(id=image.stem, image=image, label=label, groups=None))
    if not chips:
        raise SparsecoverError(f"{root / ESRI_MAP}: lists no chips")

    with gdal_env(), rasterio.open(chips[0].image) as src:
        bands = [
            BandInfo(src.descriptions[i] or f"band_{i + 1}", src.dtypes[i], src.nodatavals[i])
            for i in range(src.count)
        ]
        crs_wkt = src.crs.to_wkt() if src.crs else None
        resolution = (abs(src.transform.a), abs(src.transform.e)) if src.crs else None
        tile = src.width
    classes_meta = emd.get("Classes") or []
    names = {int(c["Value"]): str(c.get("Name", f"class_{c['Value']}")) for c in classes_meta}
    colors = {int(c["Value"]): rgb_to_hex(c["Color"]) for c in classes_meta if c.get("Color")}
    values = [v for v in names if v != 0]
    if not values:
        raise SparsecoverError(f"{root / ESRI_EMD}: lists no classes")

    bounds = []
    stats = BandStatistics(len(bands), common_dtype([b.dtype for b in bands]))
    step = max(1, len(chips) // ESRI_STATS_SAMPLE)
    class_pixels = dict.fromkeys(values, 0)
    with gdal_env():
        for i, chip in enumerate(chips):
            with rasterio.open(chip.image) as src:
                west, south, east, north = src.bounds
                chip.bounds = (west, south, east, north)
                bounds.append(chip.bounds)
                if i % step == 0:
                    data = src.read()
                    valid = np.all(src.read_masks() > 0, axis=0)
                    stats.add(data[:, valid])
            with rasterio.open(chip.label) as src:
                label = src.read(1)
            for value, count in zip(*np.unique(label[label > 0], return_counts=True)):
                class_pixels[int(value)] = class_pixels.get(int(value), 0) + int(count)
        if stats.needs_histogram_pass:
            for i, chip in enumerate(chips[::step]):
                with rasterio.open(chip.image) as src:
                    valid = np.all(src.read_masks() > 0, axis=0)
                    stats.add_histogram(src.read()[:, valid])
    origin = None
    if crs_wkt is not None:
        origin = (min(b[0] for b in bounds), max(b[3] for b in bounds))
        for chip in chips:  # the chip's place on a grid anchored at the top-left chip
            col = round((chip.bounds[0] - origin[0]) / resolution[0])
            row = round((origin[1] - chip.bounds[3]) / resolution[1])
            chip.window = (col, row, tile, tile)
    else:
        warn(f"{root}: Esri chips carry no georeferencing; the validation split can only be by class")
    extra = set(class_pixels) - set(values)
    if extra:
        raise SparsecoverError(
            f"{root}: labels hold class values {sorted(extra)} that {ESRI_EMD} does not list"
        )
    return ChipDataset(
        root=root,
        kind="esri-classified-tiles",
        bands=bands,
        dtype=common_dtype([b.dtype for b in bands]),
        nodata=bands[0].nodata,
        classes=build_class_table(values, names, colors),
        tile_size=int(emd.get("ImageWidth", tile)),
        stride=None,
        statistics=stats.result([b.name for b in bands]),
        class_pixel_counts=class_pixels,
        chips=chips,
        crs_wkt=crs_wkt,
        resolution=resolution,
        block_origin=origin,
    )
