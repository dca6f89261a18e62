"""The inference engine: raw tiles read from the raster -> class probabilities, by PyTorch or ONNX Runtime."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from ..errors import SparsecoverError
from ..predict import LoadedModel
from ..raster import common_dtype, gdal_env, read_window
from .plan import Block

ENGINES = ("torch", "onnx")
#: Test-time augmentation: the views of a tile whose class probabilities are averaged, as (quarter
#: turns, mirrored). "flip" (the default): the tile and its mirror image; the network learnt both
#: alike (data.augment), and their mean raised macro-F1 and kappa in every case of the accuracy
#: benchmark at two passes' cost (benchmarks/results/classify_tta_2026-12-04.txt). "all": the 8
#: flips and rotations, little more for 8 passes.
TTA_VIEWS = {"none": ((0, False),), "flip": ((0, False), (0, True)),
             "all": tuple((k, mirrored) for k in range(4) for mirrored in (False, True))}


def device_of(name: str) -> torch.device:
    """The device ``--device`` names (auto: a CUDA GPU when there is one); one line if it cannot be had."""
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
class Inference:
    """How a :class:`Predictor` runs: chosen once by classify, and sent as it is to Dask workers."""

    engine: str = "torch"  # one of ENGINES
    tta: str = "none"  # one of TTA_VIEWS
    classes_only: bool = False  # only the class map is wanted: (N, T, T) class values, no K x T x T copies back
    class_prior: str = "labels"  # "balanced": without the model's decision offsets
    bf16: bool = False  # the network under bf16 autocast (torch engine)
    disagreement: bool = False  # an ensemble's members' disagreement as a last channel (torch engine)


class Predictor:
    """Raw tiles -> class probabilities (N, K, T, T), by PyTorch or ONNX Runtime; with
    ``disagreement``, (N, K + 1, T, T), the last channel the ensemble members' disagreement
    (:meth:`sparsecover.model.RawInputModel.with_disagreement`).

    Tiles from :func:`read_tile` are assembled on the model's device (on a GPU they travel in their
    own dtype, e.g. uint16, and are converted there), and invalid band values get the band's
    normalisation mean, i.e. 0 after normalisation, as in training (see ``Normalisation.apply``),
    for both engines. On CUDA a batch that runs out of memory is split in halves.
    """

    def __init__(self, loaded: LoadedModel, device: torch.device, how: Inference) -> None:
        engine = how.engine
        if engine not in ENGINES:
            raise SparsecoverError(f"--engine must be torch or onnx, got {engine!r}")
        if how.class_prior == "balanced":
            loaded = replace(loaded, meta={**loaded.meta, "decision_offsets": None})
        self.loaded, self.engine, self.bf16 = loaded, engine, how.bf16 and engine == "torch"
        self.views = TTA_VIEWS[how.tta]
        self.device = device if engine == "torch" else torch.device("cpu")  # where batches are assembled
        # on a GPU the argmax too is taken there; on a CPU the writer's threads take it, beside the network
        self.classes_only = how.classes_only and engine == "torch" and (len(self.views) == 1 or device.type == "cuda")
        self.disagreement = how.disagreement and engine == "torch"
        self.values = torch.tensor(loaded.class_values, dtype=torch.uint8, device=self.device)
        self.fill = torch.tensor(loaded.normalisation.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        if engine == "onnx":
            from ..package import onnx_bytes, onnx_session

            self.session = onnx_session(onnx_bytes(loaded.meta, loaded.network))
        else:
            from ..model import RawInputModel  # the same graph the ONNX export traces

            self.module = RawInputModel(loaded.network, loaded.meta).eval().to(device)
            if device.type == "cpu":
                self.module.to(memory_format=torch.channels_last)

    def stage(self, tile: RawTile) -> RawTile:
        """On CUDA, the tile with its values copied to page-locked memory (in the reading thread), so
        that the copy to the GPU runs at full speed without holding up the model's thread (H200:
        pageable copies took 15 % of a run's wall time); elsewhere the tile as it is. numpy copies
        (the tile may be a strided view into a run): torch's copy would start a team of OpenMP
        threads in every reading thread, all spinning on a GPU host's cores."""
        if self.device.type != "cuda":
            return tile
        pinned = torch.empty(tile.data.shape, dtype=torch.from_numpy(tile.data[..., :0]).dtype, pin_memory=True)
        np.copyto(pinned.numpy(), tile.data)
        return RawTile(pinned, tile.band_valid, tile.valid)

    def batch(self, tiles: list[RawTile]) -> torch.Tensor:
        """The tiles as one float32 batch on the device, invalid values filled.

        Each tile is copied straight into the batch (no stacked copy on the host: on a GPU that
        copy ran in the model's thread): to a GPU in its own dtype, converted there; on a CPU
        converted by numpy's copy itself, one pass in this thread (a copy and a conversion by
        torch woke its OpenMP team for each batch, whose spinning cost more CPU than the copy:
        benchmarks/results/classify_breakdown_cpu_2026-12-05.txt).
        """
        first = torch.as_tensor(tiles[0].data)
        cpu = self.device.type == "cpu"
        wire = torch.empty((len(tiles), *first.shape), dtype=torch.float32 if cpu else first.dtype, device=self.device)
        for i, tile in enumerate(tiles):
            if cpu:
                np.copyto(wire[i].numpy(), tile.data)
            else:
                wire[i].copy_(torch.as_tensor(tile.data), non_blocking=True)
        x = wire.float()  # on a CPU the batch itself
        if any(t.band_valid is not None for t in tiles):
            valid = torch.ones(x.shape, dtype=torch.bool, device=self.device)
            for i, tile in enumerate(tiles):
                if tile.band_valid is not None:
                    valid[i].copy_(torch.from_numpy(tile.band_valid))
            x = torch.where(valid, x, self.fill)
        return x

    def _forward(self, x: torch.Tensor) -> np.ndarray:
        if self.engine == "onnx":
            def network(view: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(self.session.run(None, {"image": view.contiguous().numpy()})[0])

            return self._mean_of_views(x, network).numpy()
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
        """The views' mean on the model's device; only what is wanted comes back (class values, or the
        probabilities): on a GPU, copying every view's probabilities back and averaging them on the
        host took 6x the network's time (benchmarks/results/gpu_h200_2026-12-04.txt)."""
        cpu = self.device.type == "cpu"
        module = self.module.with_disagreement if self.disagreement else self.module

        def network(view: torch.Tensor) -> torch.Tensor:
            return module(view.contiguous(memory_format=torch.channels_last) if cpu else view)

        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if self.classes_only and len(self.views) == 1:
                view = x.contiguous(memory_format=torch.channels_last) if cpu else x
                return self.values[self.module.logits(view).argmax(1)].cpu().numpy()
            mean = self._mean_of_views(x, network)
            if self.classes_only:
                return self.values[mean.argmax(1)].cpu().numpy()
            return mean.cpu().numpy()

    def _mean_of_views(self, x: torch.Tensor, network) -> torch.Tensor:
        """The mean of ``network``'s probabilities over this predictor's views of ``x``, each turned back."""
        total = None
        for k, mirrored in self.views:
            view = torch.rot90(x, k, (2, 3)) if k else x
            probs = network(torch.flip(view, (3,)) if mirrored else view).float()
            probs = torch.flip(probs, (3,)) if mirrored else probs
            probs = torch.rot90(probs, -k, (2, 3)) if k else probs
            total = probs if total is None else total + probs
        return (total / len(self.views)).contiguous()

    def __call__(self, tiles: list[RawTile]) -> np.ndarray:
        """Class probabilities (or class values, see ``classes_only``) of tiles from :func:`read_tile`."""
        return self._forward(self.batch(tiles))


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

