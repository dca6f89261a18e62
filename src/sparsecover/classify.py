"""`sparsecover classify`: a raster of any size -> classified Cloud-Optimized GeoTIFF, on one machine
or a Dask cluster.

Each output block (the "core") is predicted from an input tile that reaches at least ``padding``
pixels past it on every side inside the raster (see :func:`axis_layout`), and only the core is kept:
every output pixel comes from exactly one tile with at least ``padding`` pixels of context, so tiles
leave no seams and blocks are independent. That makes a block the unit of everything else: a Dask
task (each worker loads the model once), a resume point (finished blocks are recorded beside the
partial output), and a bounded amount of memory (nothing of scene size is allocated; GDAL's cache
is capped).

Outputs: uint8 class values as the user defined them, 0 = nodata (input nodata, outside ``aoi``),
colour table and class names embedded (the names also in GDAL's ``.aux.xml`` sidecar, where QGIS
and ArcGIS look for them, see :func:`classes.write_class_sidecar`), overviews (2 x 2 mode,
computed while the blocks are written, see :mod:`overviews`); optional confidence (top-class
probability), uncertainty (:func:`margin_uncertainty`, what `suggest` ranks places by) and per-class
probabilities (float32). Everything is written to hidden partial files
and turned into COGs only at the end, so a failure never leaves a file that looks finished.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
import torch
from affine import Affine
from rasterio import features
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile
from rasterio.windows import Window

from . import overviews
from .classes import ClassInfo, write_class_sidecar
from .errors import SparsecoverError
from .predict import LoadedModel, check_raster, load_meta, load_model
from .progress import track
from .raster import (GDAL_CACHE_BYTES, GDAL_ERRORS, close_checked, common_dtype, describe, gdal_env,
                     open_raster, read_window, thread_pool)
from .staging import exclusive
from .styles import write_raster_style
from .polygonize import parse_min_area, vectorize

MULTIPLE = 32  # U-Net encoders downsample 5 times: tile sides must be multiples of 32
#: Batches that may wait between the stages (read -> predict -> write) so that a slow moment in one
#: does not stall the others (benchmarks/results/gpu_h200_2026-11-26.txt: with no slack the model's
#: thread waited on reads while the readers sat idle).
QUEUED_BATCHES = 2
ENGINES = ("torch", "onnx")
#: How the map decides between classes: under the class frequencies of the training labels (the
#: model's decision offsets, :func:`sparsecover.model.decision_offsets`), or as if every class were
#: equally common (the network alone, trained with balancing class weights: more of the rare classes).
CLASS_PRIORS = ("labels", "balanced")
#: DEFLATE effort of the final COGs. The conversion runs after the last block, so on a fast GPU it
#: bounds the whole run; level 4 is about 3x faster than GDAL's 6 for a quarter more bytes
#: (benchmarks/results/classify_breakdown_cpu_2026-11-26.txt).
DEFLATE_LEVEL = 4


@dataclass(frozen=True)
class Settings:
    """What decides the output's pixels; a --resume must use the same."""

    raster: str
    raster_stamp: str  # size and modification time: a raster rewritten at the same path is another input
    model: str
    model_sha256: str  # the weights: a model replaced at the same path is another model
    tile_size: int
    padding: int
    tta: bool
    engine: str
    aoi: str | None
    class_prior: str
    precision: str  # as resolved: fp32 or bf16


@dataclass(frozen=True)
class Block:
    """One unit of work: the output pixels (``core``) and the input window predicted for them (``tile``)."""

    core: Window
    tile: Window


def axis_layout(length: int, tile_size: int, padding: int) -> tuple[int, list[int], list[int]]:
    """Tiles along one axis: (tile span, tile starts, core bounds); core i is [bounds[i], bounds[i + 1]).

    - Tiles start on multiples of 32 px. The network downsamples by 32, so a pixel's prediction
      depends on its offset in the tile modulo 32: aligned tiles predict every pixel at the offset a
      single pass over the whole raster would (shifted tiles changed 3 % of a real scene's classes).
    - Tiles reach less than 32 px past the raster: its edge is the context there; padding beyond it
      would be fill, computed for nothing.
    - Neighbours overlap by at least 2 ``padding`` and the cores meet in the middle of each overlap,
      so every core pixel has at least ``padding`` pixels of context on each side inside the raster.

    Of the spans (multiples of 32, at most ``tile_size``) the one computing the fewest pixels is
    taken: on the 5799 x 3894 px benchmark scene, 1024 px tiles with 32 px padding compute 1.11
    pixels per output pixel (6 x 4 tiles), against 1.20 for 960 px cores padded outwards (7 x 5).
    An axis no longer than one tile gets one tile just big enough.
    """
    if length <= tile_size:
        return math.ceil(length / MULTIPLE) * MULTIPLE, [0], [0, length]
    options = []
    for span in range(MULTIPLE, tile_size + 1, MULTIPLE):
        last = math.ceil((length - span) / MULTIPLE)  # the last tile's start, in units of 32 px
        step = (span - 2 * padding) // MULTIPLE  # the longest step keeping the overlap >= 2 padding
        if step > 0:
            count = 1 + math.ceil(last / step)
            options.append((count * span, count, span, last))
    _, count, span, last = min(options)
    # starts spread evenly, rounded with floor(x + 1/2): every step stays at most ``step``
    starts = [MULTIPLE * ((2 * i * last + count - 1) // (2 * (count - 1))) for i in range(count)]
    bounds = [0] + [(starts[i] + starts[i - 1] + span) // 2 for i in range(1, count)] + [length]
    return span, starts, bounds


def plan_blocks(width: int, height: int, tile_size: int, padding: int, pixel_bytes: int = 0) -> list[Block]:
    """The blocks covering a raster; all tiles have the same shape (one batch shape).

    Row by row, in bands of as many tile columns as GDAL's block cache holds four input block rows
    of (``pixel_bytes``: all bands of one input pixel, as GDAL caches them; 0: one band across the
    raster). Neighbouring tiles overlap, and the input blocks under an overlap are decoded once only
    if they are still cached when the second tile reads them. Row by row across a 23k px wide
    GeoTIFF, the row below came too late for a 64 MB cache (reading took 1.2 x as long); within a
    band of columns it comes soon enough, whatever the raster's width.
    """
    span_x, starts_x, bounds_x = axis_layout(width, tile_size, padding)
    span_y, starts_y, bounds_y = axis_layout(height, tile_size, padding)
    columns = max(1, GDAL_CACHE_BYTES // (4 * 512 * pixel_bytes * span_x)) if pixel_bytes else len(starts_x)
    return [Block(Window(bounds_x[i], bounds_y[j], bounds_x[i + 1] - bounds_x[i], bounds_y[j + 1] - bounds_y[j]),
                  Window(starts_x[i], starts_y[j], span_x, span_y))
            for first in range(0, len(starts_x), columns)
            for j in range(len(starts_y)) for i in range(first, min(first + columns, len(starts_x)))]


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SparsecoverError("--device cuda asked for, but no CUDA GPU is available; use --device auto or cpu")
    if name not in ("cpu", "cuda"):
        raise SparsecoverError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


#: What ``precision`` may be: auto is bf16 on CUDA and on CPUs that compute bf16 natively, else fp32.
PRECISIONS = ("auto", "fp32", "bf16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16 among /proc/cpuinfo's flags);
    elsewhere PyTorch emulates bf16, slower than fp32. Without /proc/cpuinfo (not Linux): no."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def use_bf16(precision: str, device: torch.device, engine: str) -> bool:
    """Whether the network runs under bf16 autocast (the ONNX engine runs its fp32 graph)."""
    if precision not in PRECISIONS:
        raise SparsecoverError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if engine == "onnx":
        return False
    if precision == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    return precision == "bf16"


#: Band dtypes carried to the model as they are stored (float32 is 2x the bytes of uint16); others
#: are read as float32.
CARRIED_DTYPES = ("uint8", "int8", "uint16", "int16", "float32")


@dataclass(frozen=True)
class RawTile:
    """One input tile as read: band values as stored, and which of them are valid."""

    data: np.ndarray | torch.Tensor  # (bands, h, w), a CARRIED_DTYPES dtype; a page-locked tensor for CUDA
    band_valid: np.ndarray | None  # (bands, h, w); None where every value is valid (most tiles)
    valid: np.ndarray  # (h, w): pixels with at least one valid band; the others become nodata


def read_tile(src, tile: Window, band_indexes: list[int]) -> RawTile:
    """The tile's band values in the source's dtype where the model's device can take it as is."""
    dtype = common_dtype([src.dtypes[i - 1] for i in band_indexes])
    data, band_valid = read_window(src, tile, band_indexes, dtype=dtype if dtype in CARRIED_DTYPES else "float32")
    if band_valid.all():
        return RawTile(data, None, np.ones(data.shape[1:], dtype=bool))
    return RawTile(data, band_valid, band_valid.any(0))


class Predictor:
    """Raw tiles -> class probabilities (N, K, T, T), by PyTorch or ONNX Runtime.

    Tiles from :func:`read_tile` are assembled on the model's device (on a GPU they travel in their
    own dtype, e.g. uint16, and are converted there), and invalid band values get the band's
    normalisation mean, i.e. 0 after normalisation, as in training (see ``Normalisation.apply``),
    for both engines. ``tta`` averages the 8 flips/rotations. On CUDA a batch that runs out of
    memory is split in halves.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device, engine: str, tta: bool,
                 classes_only: bool = False, class_prior: str = "labels", bf16: bool = False) -> None:
        if engine not in ENGINES:
            raise SparsecoverError(f"--engine must be torch or onnx, got {engine!r}")
        if class_prior == "balanced":
            loaded = replace(loaded, meta={**loaded.meta, "decision_offsets": None})
        self.loaded, self.engine, self.tta, self.bf16 = loaded, engine, tta, bf16 and engine == "torch"
        self.device = device if engine == "torch" else torch.device("cpu")  # where batches are assembled
        # only the class map is wanted: (N, T, T) class values, no softmax or K x T x T copies back
        self.classes_only = classes_only and engine == "torch" and not tta
        self.values = torch.tensor(loaded.class_values, dtype=torch.uint8, device=self.device)
        self.fill = torch.tensor(loaded.normalisation.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        if engine == "onnx":
            from .package import onnx_bytes, onnx_session

            self.session = onnx_session(onnx_bytes(loaded.meta, loaded.network))
        else:
            from .model import RawInputModel  # the same graph the ONNX export traces

            self.module = RawInputModel(loaded.network, loaded.meta).eval().to(device)
            if device.type == "cpu":
                self.module.to(memory_format=torch.channels_last)

    def stage(self, tile: RawTile) -> RawTile:
        """On CUDA, the tile with its values copied to page-locked memory (in the reading thread), so
        that the copy to the GPU runs at full speed without holding up the model's thread (H200:
        pageable copies took 15 % of a run's wall time); elsewhere the tile as it is."""
        if self.device.type != "cuda":
            return tile
        data = torch.from_numpy(tile.data)  # may be a view into a run (strided): copied contiguous
        pinned = torch.empty(data.shape, dtype=data.dtype, pin_memory=True)
        pinned.copy_(data)
        return RawTile(pinned, tile.band_valid, tile.valid)

    def batch(self, tiles: list[RawTile]) -> torch.Tensor:
        """The tiles as one float32 batch on the device, invalid values filled.

        Each tile is copied straight into the batch (no stacked copy on the host: on a GPU that
        copy ran in the model's thread), in its own dtype, and converted on the device.
        """
        first = torch.as_tensor(tiles[0].data)
        wire = torch.empty((len(tiles), *first.shape), dtype=first.dtype, device=self.device)
        for i, tile in enumerate(tiles):
            wire[i].copy_(torch.as_tensor(tile.data), non_blocking=True)
        x = wire.float()
        if any(t.band_valid is not None for t in tiles):
            valid = torch.ones(x.shape, dtype=torch.bool, device=self.device)
            for i, tile in enumerate(tiles):
                if tile.band_valid is not None:
                    valid[i].copy_(torch.from_numpy(tile.band_valid))
            x = torch.where(valid, x, self.fill)
        return x

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        if self.engine == "onnx":
            return self.session.run(None, {"image": x.contiguous().numpy()})[0]
        try:
            return self._torch_forward(x)
        except torch.cuda.OutOfMemoryError:
            if len(x) == 1:
                raise SparsecoverError("the GPU ran out of memory on a single tile; pass a smaller --tile-size "
                                       "or --device cpu") from None
            torch.cuda.empty_cache()  # halve the batch and go on: the default batch size is a guess
            half = len(x) // 2
            return np.concatenate([self._forward(x[:half]), self._forward(x[half:])])

    def _torch_forward(self, x: torch.Tensor) -> np.ndarray:
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.classes_only:
                return self.values[self.module.logits(x).argmax(1)].cpu().numpy()
            return self.module(x).cpu().numpy()

    def __call__(self, tiles: list[RawTile]) -> np.ndarray:
        """Class probabilities (or class values, see ``classes_only``) of tiles from :func:`read_tile`."""
        x = self.batch(tiles)
        if not self.tta:
            return self._forward(x)
        total = None
        for k in range(4):
            for flip in (False, True):
                view = torch.rot90(x, k, (2, 3))
                probs = self._forward(torch.flip(view, (3,)) if flip else view)
                probs = probs[..., ::-1] if flip else probs
                probs = np.rot90(probs, -k, axes=(2, 3))
                total = probs if total is None else total + probs
        return np.ascontiguousarray(total / 8)


def crop_cores(blocks: list[Block], probs: np.ndarray,
               valids: list[np.ndarray]) -> list[tuple[Window, np.ndarray, np.ndarray]]:
    """Each block's core of the predicted tiles: (core window, probabilities or classes, valid pixels)."""
    results = []
    for block, p, valid in zip(blocks, probs, valids):
        core, tile = block.core, block.tile
        rows = slice(int(core.row_off - tile.row_off), int(core.row_off - tile.row_off + core.height))
        cols = slice(int(core.col_off - tile.col_off), int(core.col_off - tile.col_off + core.width))
        results.append((core, p[..., rows, cols], valid[rows, cols]))
    return results


def predict_tiles(predictor: Predictor, blocks: list[Block],
                  tiles: list[RawTile]) -> list[tuple[Window, np.ndarray, np.ndarray]]:
    """One batch of :func:`read_tile` results predicted: each block's (core, probabilities or classes, valid)."""
    return crop_cores(blocks, predictor(tiles), [t.valid for t in tiles])


def predict_blocks(raster: str, predictor: Predictor, blocks: list[Block],
                   band_indexes: list[int]) -> list[tuple[Window, np.ndarray, np.ndarray]]:
    """One batch read (opening the raster: a Dask task has no dataset of its own) and predicted."""
    with gdal_env(), rasterio.open(raster) as src:
        tiles = [read_tile(src, b.tile, band_indexes) for b in blocks]
    return predict_tiles(predictor, blocks, tiles)


def _readers(device: torch.device) -> int:
    """Reading threads: a GPU eats tiles far faster than one core decompresses them
    (benchmarks/results/gpu_h200_2026-11-26.txt). None on a CPU: the model already uses every core,
    and a reader thread beside it measured no faster."""
    return max(1, min(8, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 0


def tile_runs(blocks: list[Block]) -> list[list[Block]]:
    """Consecutive blocks whose tiles overlap side by side in one tile row: each run is read as one
    window (see :func:`read_run`)."""
    runs: list[list[Block]] = []
    for block in blocks:
        last = runs[-1][-1].tile if runs else None
        if last is not None and block.tile.row_off == last.row_off \
                and last.col_off < block.tile.col_off <= last.col_off + last.width:
            runs[-1].append(block)
        else:
            runs.append([block])
    return runs


def read_run(src, run: list[Block], band_indexes: list[int]) -> list[RawTile]:
    """The tiles of a run, read as one window and cut apart (views): GDAL decodes the input blocks
    under the overlaps once, and the blocks of one request in parallel (GDAL_NUM_THREADS)."""
    first, last = run[0].tile, run[-1].tile
    whole = read_tile(src, Window(first.col_off, first.row_off, last.col_off + last.width - first.col_off,
                                  first.height), band_indexes)
    tiles = []
    for block in run:
        cols = slice(int(block.tile.col_off - first.col_off), int(block.tile.col_off - first.col_off + block.tile.width))
        band_valid = None if whole.band_valid is None else whole.band_valid[..., cols]
        tiles.append(RawTile(whole.data[..., cols], band_valid, whole.valid[:, cols]))
    return tiles


@dataclass(frozen=True)
class PreparedStrip:
    """One strip of output blocks as the writer writes it."""

    writes: list[tuple[str, int, Window, np.ndarray]]  # (output kind, level factor (1: the output), window, values)
    cores: list[Window]  # the blocks it finishes
    counts: np.ndarray  # pixels per class value (0: nodata), for the attribute table


def _preparers() -> int:
    """Threads preparing batches for the writer: one per 4 cores, up to 4, because on a GPU host the
    writer's arrays (the overview levels) would otherwise cap classify at one core's speed."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def _local_results(raster: str, predictor: Predictor, batches: list[list[Block]], band_indexes: list[int]):
    """Batches predicted in this process; on a GPU the tiles ahead are read by a pool of threads meanwhile.

    One dataset serves every read, in turn: GDAL caches decoded blocks per dataset, and with a
    dataset per reading thread (as before) the blocks under the overlaps of neighbouring tiles were
    decoded again by other threads: 8 threads spent 2.3x the CPU time of one reading in order (60 MP
    GeoTIFF). Reads in parallel come from GDAL instead: on a GPU the tiles side by side in a tile
    row are read as one window (:func:`read_run`), whose blocks GDAL decodes on all cores, while the
    threads stage tiles for the GPU or wait their turn. At most readers + QUEUED_BATCHES batches of
    tiles (rounded up to whole runs) wait in memory, whatever the raster's size.
    """
    readers = _readers(predictor.device)
    with rasterio.open(raster) as src:
        if not readers:
            for batch in batches:
                yield predict_tiles(predictor, batch, [read_tile(src, b.tile, band_indexes) for b in batch])
            return
        turn = threading.Lock()

        def read(run: list[Block]) -> list[RawTile]:
            with turn:
                tiles = read_run(src, run, band_indexes)
            return [predictor.stage(t) for t in tiles]

        runs = tile_runs([b for batch in batches for b in batch])
        ahead = readers + QUEUED_BATCHES * len(batches[0]) if batches else 0
        with thread_pool(readers, "sparsecover-read") as pool:
            reads: deque = deque()  # runs being read, in order
            ready: deque = deque()  # tiles read, in order
            submitted = waiting = 0  # runs submitted; tiles submitted and not yet taken
            for batch in batches:
                tiles = []
                for _ in batch:
                    while submitted < len(runs) and waiting < ahead:
                        reads.append(pool.submit(read, runs[submitted]))
                        waiting += len(runs[submitted])
                        submitted += 1
                    if not ready:
                        ready.extend(reads.popleft().result())
                    tiles.append(ready.popleft())
                    waiting -= 1
                yield predict_tiles(predictor, batch, tiles)


@functools.lru_cache(maxsize=2)
def _worker_predictor(model: str, device: str, engine: str, tta: bool, classes_only: bool,
                      class_prior: str, bf16: bool) -> Predictor:
    """Each Dask worker process loads the model once and keeps it."""
    torch_device = _device(device)
    return Predictor(load_model(model, str(torch_device)), torch_device, engine, tta, classes_only, class_prior, bf16)


def _dask_task(raster: str, model: str, device: str, engine: str, tta: bool, classes_only: bool, class_prior: str,
               bf16: bool, blocks: list[Block], band_indexes: list[int]):
    predictor = _worker_predictor(model, device, engine, tta, classes_only, class_prior, bf16)
    return predict_blocks(raster, predictor, blocks, band_indexes)


@functools.cache
def _partial_codec() -> dict:
    """Compression of the partial files. They are temporary and read once, by the COG conversion,
    so the fastest codec wins: ZSTD level 1 (several times faster than DEFLATE, which a GPU run feels);
    DEFLATE where this GDAL has no ZSTD."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile() as memory, memory.open(driver="GTiff", width=1, height=1, count=1, dtype="uint8",
                                                     compress="zstd"):
                pass
        return {"compress": "zstd", "zstd_level": 1}
    except RasterioError:
        return {"compress": "deflate"}


class _Outputs:
    """The partial output files (each output and each of its overview levels) and the resume record;
    turned into COGs by :meth:`finish`."""

    CHECKPOINT_SECONDS = 2.0  # at least; and at least 20 x what the last checkpoint took (<= 5 % of the run)
    NODATA = {"classes": 0, "confidence": 0, "uncertainty": -1, "probabilities": -1}

    def __init__(self, out: Path, extras: dict[str, Path | None], source, meta: dict, settings: Settings,
                 resume: bool) -> None:
        self.finals = {"classes": out, **extras}
        self.finals = {k: v for k, v in self.finals.items() if v is not None}
        self.source_path = source.path
        self.factors = overviews.levels(source.width, source.height)
        # (kind, 1) is the output itself, (kind, f) its overview level f
        self.partials = {(k, f): v.parent / (f".{v.name}.partial.tif" if f == 1 else f".{v.name}.partial.ovr{f}.tif")
                         for k, v in self.finals.items() for f in [1, *self.factors]}
        self.state_path = out.parent / f".{out.name}.state.json"
        self.settings = settings
        self.classes = [ClassInfo(c["value"], c["name"], c["color"]) for c in meta["classes"]]
        self.lut = np.array([c.value for c in self.classes], dtype=np.uint8)
        self.done: set[tuple[int, int]] = set()  # blocks on disk (flushed), as recorded for --resume
        self.pending: set[tuple[int, int]] = set()  # written, maybe still in GDAL's cache
        # pixels per class value (0: nodata) of the done and of the pending blocks, for the attribute table
        self.done_counts, self.pending_counts = np.zeros(256, np.int64), np.zeros(256, np.int64)
        self.checkpointed, self.checkpoint_cost = time.monotonic(), 0.0
        self.files = {}
        if resume and self._resumable():
            state = json.loads(self.state_path.read_text())
            self.done = {tuple(d) for d in state["done"]}
            self.done_counts = np.array(state["counts"], np.int64)
            self._open()
            return
        base = {"driver": "GTiff", "crs": source.crs, "tiled": True, "blockxsize": 512, "blockysize": 512,
                "bigtiff": "IF_SAFER", **_partial_codec()}
        bands = {"classes": ("uint8", 1), "confidence": ("float32", 1), "uncertainty": ("float32", 1),
                 "probabilities": ("float32", len(self.classes))}
        try:
            for (kind, factor), path in self.partials.items():
                width, height = overviews.level_size(source.width, source.height, factor)
                dtype, count = bands[kind]
                self.files[kind, factor] = rasterio.open(
                    path, "w", **base, width=width, height=height, count=count, dtype=dtype, nodata=self.NODATA[kind],
                    transform=source.transform * Affine.scale(source.width / width, source.height / height))
            self._describe(meta)  # before any pixel: GDAL cannot add a colour table later in r+ mode
            self._save_state()
        except GDAL_ERRORS:
            self.discard()
            raise

    def _open(self) -> None:
        self.files = {key: rasterio.open(path, "r+") for key, path in self.partials.items()}

    def _resumable(self) -> bool:
        if not self.state_path.exists() or not all(p.exists() for p in self.partials.values()):
            return False
        state = json.loads(self.state_path.read_text())
        if "counts" not in state:
            raise SparsecoverError(f"{self.state_path}: an interrupted run of an older sparsecover (no class counts); "
                                   "rerun without --resume")
        saved, current = state["settings"], asdict(self.settings)
        changed = [k for k in current if saved.get(k) != current[k]]
        if changed:
            raise SparsecoverError(
                f"--resume with another input, model or settings: {changed[0]} was {saved.get(changed[0])!r}, now "
                f"{current[changed[0]]!r}; rerun with the same ones (or without --resume)"
            )
        return True

    def _save_state(self) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"settings": asdict(self.settings), "done": sorted(self.done),
                                   "counts": self.done_counts.tolist()}))
        os.replace(tmp, self.state_path)

    def prepare(self, results, aoi_mask) -> list[PreparedStrip]:
        """What one batch's strips write. Arrays only (class values, nodata, the overview levels, class
        counts: most of the writer's work), so batches are prepared in parallel threads and the one
        thread that may use the GDAL datasets only writes (:meth:`write`)."""
        prepared = []
        for window, probs, valid, cores in _strips(results):
            keep = valid if aoi_mask is None else valid & aoi_mask(window)
            outputs = {"classes": probs if probs.ndim == 2 else self.lut[probs.argmax(0)]}  # class values, or probabilities
            if "confidence" in self.finals:
                outputs["confidence"] = probs.max(0).astype(np.float32)
            if "uncertainty" in self.finals:
                outputs["uncertainty"] = margin_uncertainty(probs)
            if "probabilities" in self.finals:
                outputs["probabilities"] = probs.astype(np.float32)
            masked = not keep.all()
            writes = []
            for kind, values in outputs.items():
                if masked:
                    values[..., ~keep] = self.NODATA[kind]
                levels = overviews.block_levels(window, values, self.NODATA[kind], self.factors)
                writes += [(kind, factor, level_window, level) for factor, level_window, level in [(1, window, values), *levels]]
            counts = np.zeros(256, np.int64)  # one comparison per class: 3x faster than np.bincount here
            for value in (0, *self.lut.tolist()):
                counts[value] = np.count_nonzero(outputs["classes"] == value)
            prepared.append(PreparedStrip(writes, cores, counts))
        return prepared

    def write(self, prepared: list[PreparedStrip]) -> None:
        """Write a batch from :meth:`prepare` and checkpoint now and then."""
        for strip in prepared:
            for kind, factor, window, values in strip.writes:
                self.files[kind, factor].write(values.reshape(-1, *values.shape[-2:]), window=window)
            self.pending.update((int(c.col_off), int(c.row_off)) for c in strip.cores)
            self.pending_counts += strip.counts
        if time.monotonic() - self.checkpointed > max(self.CHECKPOINT_SECONDS, 20 * self.checkpoint_cost):
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Flush the partial files (close and reopen) before recording their blocks as done: a block
        is only listed for --resume once its pixels are on disk. The interval grows with the flush's
        cost, so that at GPU speeds flushing stays a small part of the writer's time."""
        start = time.monotonic()
        self.close(checked=True)
        self._open()
        self.done |= self.pending
        self.pending.clear()
        self.done_counts += self.pending_counts
        self.pending_counts[:] = 0
        self._save_state()
        self.checkpointed = time.monotonic()
        self.checkpoint_cost = self.checkpointed - start

    def _describe(self, meta: dict) -> None:
        files = {kind: self.files[kind, 1] for kind in self.finals}
        files["classes"].write_colormap(1, {c.value: (*c.rgb, 255) for c in self.classes})
        files["classes"].update_tags(CLASS_NAMES=json.dumps({c.value: c.name for c in self.classes}),
                                     MODEL=meta.get("encoder", ""))
        files["classes"].set_band_description(1, "class")
        if "confidence" in files:
            files["confidence"].set_band_description(1, "top-class probability")
        if "uncertainty" in files:
            files["uncertainty"].set_band_description(1, "uncertainty (1 - margin of the top two probabilities)")
        if "probabilities" in files:
            for i, c in enumerate(self.classes, 1):
                files["probabilities"].set_band_description(i, c.name)

    def finish(self) -> None:
        """The partial files as COGs, with the overviews written beside them (levels above
        :data:`overviews.ALIGNED` are computed now, from the level below)."""
        self.close(checked=True)
        if not (self.done_counts + self.pending_counts)[1:].any():
            self.discard()
            raise SparsecoverError(f"{self.source_path}: no pixel to classify (every pixel is nodata or NaN, or "
                                   "outside the AOI); check the raster's nodata value and the AOI")
        for kind, final in self.finals.items():
            levels = {f: self.partials[kind, f] for f in self.factors}
            overviews.upper_levels(levels, self.NODATA[kind])
            staging = final.parent / f".{final.name}.cog.tif"
            source = overviews.with_overviews(self.partials[kind, 1], levels, self._vrt(final))
            rasterio.shutil.copy(source, staging, driver="COG", compress="DEFLATE", level=DEFLATE_LEVEL, blocksize=512,
                                 overview_resampling="MODE" if kind == "classes" else "AVERAGE",
                                 bigtiff="IF_SAFER", num_threads="ALL_CPUS")
            if kind == "classes":
                write_class_sidecar(final, self.classes, self.done_counts + self.pending_counts)
                write_raster_style(final, self.classes)
            os.replace(staging, final)
        self.discard()

    @staticmethod
    def _vrt(final: Path) -> Path:
        return final.parent / f".{final.name}.partial.vrt"

    def close(self, checked: bool = False) -> None:
        """Close the partial files; ``checked``: raise OSError if their cached blocks failed to reach the disk."""
        for f in self.files.values():
            if f.closed:
                continue
            if checked:
                close_checked(f)
            else:
                f.close()

    def discard(self) -> None:
        self.close()
        for path in [*self.partials.values(), self.state_path]:
            path.unlink(missing_ok=True)
        for final in self.finals.values():
            for leftover in (final.parent / f".{final.name}.cog.tif", self._vrt(final)):
                leftover.unlink(missing_ok=True)


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """1 - (top-class probability - second probability) per pixel of (K, H, W) probabilities: 0 where
    the model is sure, 1 where two classes tie. The margin rather than the entropy: it asks only which
    of two classes a pixel is, which is what one more label settles (margin sampling)."""
    if len(probs) < 2:
        return np.zeros(probs.shape[1:], np.float32)
    top = np.partition(probs, len(probs) - 2, axis=0)[-2:]
    return (1.0 - (top[1] - top[0])).astype(np.float32)


def _strips(results: list[tuple[Window, np.ndarray, np.ndarray]]):
    """Side-by-side cores of a batch joined into one strip each: (window, values, valid, cores).

    GDAL writes a wide window 2-3x faster than its parts, since fewer output blocks are merged from
    partial writes, and on a GPU host the writer thread is the bottleneck
    (benchmarks/results/gpu_h200_2026-11-26.txt).
    """
    groups: list[list[tuple[Window, np.ndarray, np.ndarray]]] = []
    for result in results:
        window, last = result[0], groups[-1][-1][0] if groups else None
        if last is not None and (window.row_off, window.height) == (last.row_off, last.height) \
                and window.col_off == last.col_off + last.width:
            groups[-1].append(result)
        else:
            groups.append([result])
    for group in groups:
        cores = [g[0] for g in group]
        if len(group) == 1:  # nothing to join (batch size 1: every CPU run)
            yield (*group[0], cores)
            continue
        window = Window(cores[0].col_off, cores[0].row_off, sum(int(c.width) for c in cores), cores[0].height)
        yield (window, np.concatenate([g[1] for g in group], axis=-1), np.concatenate([g[2] for g in group], axis=-1),
               cores)


def _aoi_masker(aoi: Path | None, source):
    """A function window -> bool mask (inside the AOI), or None without an AOI."""
    if aoi is None:
        return None
    import geopandas as gpd
    from shapely.geometry import box

    frame = gpd.read_file(aoi, engine="pyogrio")
    if frame.crs is None:
        raise SparsecoverError(f"{aoi}: AOI has no CRS; assign one first")
    frame = frame.to_crs(source.crs)
    if not frame.intersects(box(*source.bounds)).any():
        raise SparsecoverError(f"{aoi}: the AOI lies outside {source.path.name}; nothing to classify")
    geometries = list(frame.geometry)

    def mask(window: Window) -> np.ndarray:
        shape = (int(window.height), int(window.width))
        inside = features.rasterize(((g, 1) for g in geometries), out_shape=shape,
                                    transform=rasterio.windows.transform(window, source.transform), dtype="uint8")
        return inside > 0

    return mask


def classify_pixels(
    raster: str | Path,
    model: str | Path | LoadedModel,
    out: str | Path,
    tile_size: int = 1024,
    padding: int = 32,
    batch_size: int | None = None,
    tta: bool = False,
    confidence: str | Path | None = None,
    probabilities: str | Path | None = None,
    uncertainty: str | Path | None = None,
    class_prior: str = "labels",
    aoi: str | Path | None = None,
    device: str = "auto",
    engine: str = "torch",
    workers: int | None = None,
    dask_scheduler: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    vector: str | Path | None = None,
    min_area: str | None = None,
    precision: str = "auto",
) -> Path:
    """Classify ``raster`` with a trained model (package, run or model folder) into ``out``.

    ``workers`` starts a local Dask cluster of that many processes; ``dask_scheduler`` uses a running
    one. ``resume`` continues an interrupted run from its finished blocks (same settings required).
    ``confidence``, ``uncertainty`` and ``probabilities`` are further COGs to write (see :class:`_Outputs`).
    ``class_prior``: one of :data:`CLASS_PRIORS`. ``precision``: one of :data:`PRECISIONS` (auto:
    bf16 on CUDA and on CPUs with native bf16, see :func:`cpu_has_bf16`). ``vector``: also the map as polygons in a
    GeoPackage, with ``min_area`` as the minimum mapping unit (see :func:`polygonize.vectorize`).
    """
    out = Path(out)
    extras = {k: Path(v) for k, v in (("confidence", confidence), ("uncertainty", uncertainty),
                                      ("probabilities", probabilities)) if v is not None}
    outputs = [out, *extras.values(), *([Path(vector)] if vector is not None else [])]
    if vector is not None and Path(vector).suffix.lower() != ".gpkg":
        raise SparsecoverError(f"{vector}: the vector map is a GeoPackage; name it *.gpkg")
    parse_min_area(min_area)
    for path in map(Path, outputs):
        if path.exists() and not overwrite:
            raise SparsecoverError(f"{path}: already exists; pass --overwrite to replace it")
        if not path.parent.exists():
            raise SparsecoverError(f"{path.parent}: output folder does not exist; create it first")
    if padding < 0:
        raise SparsecoverError(f"--padding must be 0 or more, got {padding}")
    if class_prior not in CLASS_PRIORS:
        raise SparsecoverError(f"--class-prior must be {' or '.join(CLASS_PRIORS)}, got {class_prior!r}")
    if precision not in PRECISIONS:
        raise SparsecoverError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if batch_size is not None and batch_size < 1:
        raise SparsecoverError(f"--batch-size must be at least 1, got {batch_size}")
    if tile_size % MULTIPLE or tile_size < 2 * padding + MULTIPLE:
        raise SparsecoverError(f"--tile-size must be a multiple of {MULTIPLE} and at least 2 x --padding + {MULTIPLE} "
                               f"(got {tile_size}, {padding})")
    with exclusive(out):
        _classify(raster, model, out, tile_size, padding, batch_size, tta, extras, class_prior, aoi,
                  device, engine, workers, dask_scheduler, resume, progress, precision)
    if vector is not None:
        vectorize(out, vector, min_area=min_area, overwrite=overwrite, progress=progress)
    return out


def _classify(raster: str | Path, model: str | Path | LoadedModel, out: Path, tile_size: int, padding: int,
              batch_size: int | None, tta: bool, extras: dict[str, Path], class_prior: str,
              aoi: str | Path | None, device: str, engine: str, workers: int | None, dask_scheduler: str | None,
              resume: bool, progress: bool, precision: str) -> Path:
    """classify_pixels once its outputs are checked and locked."""
    torch_device = _device(device)
    bf16 = use_bf16(precision, torch_device, engine)
    if isinstance(model, LoadedModel):
        loaded = model
        check_raster(raster, loaded)
    else:
        meta = load_meta(model)
        # the network loads (and CUDA starts) while the raster is checked: at GPU speeds each is a
        # good part of a run
        with thread_pool(1, "sparsecover-load") as pool:
            loading = pool.submit(load_model, model, str(torch_device))
            check_raster(raster, meta)
            loaded = loading.result()
    with open_raster(raster) as src:
        source = describe(src)
    aoi_mask = _aoi_masker(Path(aoi) if aoi else None, source)
    classes_only = not extras
    stat = Path(raster).stat()
    settings = Settings(str(Path(raster).resolve()), f"{stat.st_size} bytes, modified {stat.st_mtime_ns} ns",
                        str(Path(model).resolve()) if not isinstance(model, LoadedModel) else "in-memory",
                        loaded.weights_sha256, tile_size, padding, tta, engine, str(aoi) if aoi else None, class_prior,
                        "bf16" if bf16 else "fp32")
    with gdal_env():  # bounded GDAL cache for the outputs too; GDAL errors go to Python logging
        try:
            writer = _Outputs(out, extras, source, loaded.meta, settings, resume)
        except GDAL_ERRORS as exc:
            raise SparsecoverError(f"{out}: cannot create the output ({str(exc).splitlines()[0]}); is the disk full?") from None
        try:
            blocks = plan_blocks(source.width, source.height, tile_size, padding, source.pixel_bytes)
            blocks = [b for b in blocks if (int(b.core.col_off), int(b.core.row_off)) not in writer.done]
            if batch_size is None:  # a GPU needs several tiles at once to be busy (H200: 8 x 1024 px ran 2x 1 x 1024)
                batch_size = 8 if torch_device.type == "cuda" and engine == "torch" else 1
            batches = [blocks[i : i + batch_size] for i in range(0, len(blocks), batch_size)]
            weights = [sum(int(b.core.width) * int(b.core.height) for b in batch) / 1e6 for batch in batches]
            if workers or dask_scheduler:
                if isinstance(model, LoadedModel):
                    raise SparsecoverError("Dask workers load the model from its file: pass a path, not a loaded model")
                results = _dask_results(str(Path(raster).resolve()), str(Path(model).resolve()), device, engine, tta,
                                        classes_only, class_prior, bf16, batches, loaded.band_indexes, workers,
                                        dask_scheduler)
            else:
                predictor = Predictor(loaded, torch_device, engine, tta, classes_only, class_prior, bf16)
                results = _local_results(str(source.path), predictor, batches, loaded.band_indexes)
            # batches are prepared (class values, overviews) by a few threads and written, in order,
            # by one, while the next batches are predicted
            preparers = _preparers()
            with thread_pool(preparers, "sparsecover-prepare") as preparing, thread_pool(1, "sparsecover-write") as pool:
                writes: deque = deque()
                for result in track(results, len(batches), f"classify {source.path.name}", progress,
                                    weights=weights, unit="MP"):
                    prepared = preparing.submit(writer.prepare, result, aoi_mask)
                    writes.append(pool.submit(lambda batch: writer.write(batch.result()), prepared))
                    while len(writes) > QUEUED_BATCHES + preparers - 1:
                        writes.popleft().result()
                for write in writes:
                    write.result()
            writer.finish()
        except KeyboardInterrupt:
            writer.close()  # keep the partial files: --resume continues from them
            raise
        except GDAL_ERRORS as exc:
            writer.discard()
            raise SparsecoverError(f"{out}: writing failed ({str(exc).splitlines()[0]}); is the disk full?") from None
        except BaseException:
            writer.close()
            raise
    return out


def _dask_results(raster, model, device, engine, tta, classes_only, class_prior, bf16, batches, band_indexes, workers,
                  scheduler):
    """Blocks as Dask tasks; results come back as they finish (order does not matter to the writer)."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise SparsecoverError("Dask is not installed: pip install 'sparsecover[dask]'") from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=max(1, (os.cpu_count() or 1) // workers),
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = [client.submit(_dask_task, raster, model, device, engine, tta, classes_only, class_prior, bf16, b,
                                 band_indexes, pure=False)
                   for b in batches]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
