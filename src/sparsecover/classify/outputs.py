"""What classify writes: the output kinds (one row each), their partial files with the resume record,
and the final Cloud-Optimized GeoTIFFs.

Everything is written to hidden partial files and turned into COGs only at the end, so a failure
never leaves a file that looks finished; overviews are computed while the blocks are written
(:mod:`sparsecover.overviews`).
"""

from __future__ import annotations

import functools
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import MemoryFile
from rasterio.windows import Window

from .. import overviews
from ..classes import ClassInfo, write_class_sidecar
from ..errors import SparsecoverError
from ..modelfile import ModelJson
from ..raster import GDAL_ERRORS, close_checked, copy_checked
from ..styles import write_raster_style

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
    tta: str
    engine: str
    aoi: str | None
    class_prior: str
    precision: str  # as resolved: fp32 or bf16


@dataclass(frozen=True)
class PreparedStrip:
    """One strip of output blocks as the writer writes it."""

    writes: list[tuple[str, int, Window, np.ndarray]]  # (output kind, level factor (1: the output), window, values)
    cores: list[Window]  # the blocks it finishes
    counts: np.ndarray  # pixels per class value (0: nodata), for the attribute table


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


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """1 - (top-class probability - second probability) per pixel of (K, H, W) probabilities: 0 where
    the model is sure, 1 where two classes tie. The margin rather than the entropy: it asks only which
    of two classes a pixel is, which is what one more label settles (margin sampling)."""
    if len(probs) < 2:
        return np.zeros(probs.shape[1:], np.float32)
    top = np.partition(probs, len(probs) - 2, axis=0)[-2:]
    return (1.0 - (top[1] - top[0])).astype(np.float32)


@dataclass(frozen=True)
class OutputKind:
    """One kind of raster classify writes: its pixels from a strip's probabilities, and its file's layout."""

    dtype: str
    nodata: float
    resampling: str  # of its overviews
    values: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (probabilities (K, h, w), class values) -> pixels
    description: str | None  # the band's description; None: one band per class, named after it


#: Every output classify can write; "classes" always, the others when asked for. A new output is a row.
KINDS = {
    "classes": OutputKind("uint8", 0, "MODE", lambda probs, lut: lut[probs.argmax(0)], "class"),
    "confidence": OutputKind("float32", 0, "AVERAGE", lambda probs, lut: probs.max(0).astype(np.float32),
                             "top-class probability"),
    "uncertainty": OutputKind("float32", -1, "AVERAGE", lambda probs, lut: margin_uncertainty(probs),
                              "uncertainty (1 - margin of the top two probabilities)"),
    "probabilities": OutputKind("float32", -1, "AVERAGE", lambda probs, lut: probs.astype(np.float32), None),
}


#: The uncertainty band's description when it is an ensemble's members' disagreement
#: (:func:`sparsecover.model.disagreement`) rather than :func:`margin_uncertainty`.
DISAGREEMENT = "uncertainty (the ensemble members' disagreement: mutual information, share of its maximum)"


def resume_record(out: Path) -> Path:
    """Where a run writing ``out`` records its finished blocks for --resume (hidden, beside it)."""
    return out.parent / f".{out.name}.state.json"


class Outputs:
    """The partial output files (each output and each of its overview levels) and the resume record;
    turned into COGs by :meth:`finish`."""

    CHECKPOINT_SECONDS = 2.0  # at least; and at least 20 x what the last checkpoint took (<= 5 % of the run)

    def __init__(self, out: Path, extras: dict[str, Path | None], source, meta: ModelJson, settings: Settings,
                 resume: bool, disagreement: bool = False) -> None:
        self.finals = {"classes": out, **extras}
        self.finals = {k: v for k, v in self.finals.items() if v is not None}
        self.source_path = source.path
        self.factors = overviews.levels(source.width, source.height)
        # (kind, 1) is the output itself, (kind, f) its overview level f
        self.partials = {(k, f): v.parent / (f".{v.name}.partial.tif" if f == 1 else f".{v.name}.partial.ovr{f}.tif")
                         for k, v in self.finals.items() for f in [1, *self.factors]}
        self.state_path = resume_record(out)
        self.settings = settings
        # the probabilities come with an ensemble's members' disagreement as a last channel: the uncertainty
        self.disagreement = disagreement
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
        try:
            for (kind, factor), path in self.partials.items():
                width, height = overviews.level_size(source.width, source.height, factor)
                count = 1 if KINDS[kind].description else len(self.classes)
                self.files[kind, factor] = rasterio.open(
                    path, "w", **base, width=width, height=height, count=count, dtype=KINDS[kind].dtype,
                    nodata=KINDS[kind].nodata,
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
            if probs.ndim == 2:  # the class values themselves (a run that writes the class map alone)
                outputs = {"classes": probs}
            elif self.disagreement:
                outputs = {kind: KINDS[kind].values(probs[:-1], self.lut) for kind in self.finals if kind != "uncertainty"}
                outputs["uncertainty"] = probs[-1].astype(np.float32)
            else:
                outputs = {kind: KINDS[kind].values(probs, self.lut) for kind in self.finals}
            masked = not keep.all()
            writes = []
            for kind, values in outputs.items():
                if masked:
                    values[..., ~keep] = KINDS[kind].nodata
                levels = overviews.block_levels(window, values, KINDS[kind].nodata, self.factors)
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

    def _describe(self, meta: ModelJson) -> None:
        files = {kind: self.files[kind, 1] for kind in self.finals}
        files["classes"].write_colormap(1, {c.value: (*c.rgb, 255) for c in self.classes})
        files["classes"].update_tags(CLASS_NAMES=json.dumps({c.value: c.name for c in self.classes}),
                                     MODEL=meta.get("encoder", ""))
        for kind, file in files.items():
            names = [KINDS[kind].description] if KINDS[kind].description else [c.name for c in self.classes]
            if kind == "uncertainty" and self.disagreement:
                names = [DISAGREEMENT]
            for band, name in enumerate(names, 1):
                file.set_band_description(band, name)

    def finish(self) -> None:
        """The partial files as COGs, with the overviews written beside them (levels above
        :data:`overviews.ALIGNED` are computed now, from the level below)."""
        self.close(checked=True)
        if not (self.done_counts + self.pending_counts)[1:].any():
            self.discard()
            raise SparsecoverError(f"{self.source_path}: no pixel to classify (every pixel is nodata or NaN, or "
                                   "outside the AOI); check the raster's nodata value and the AOI")
        staged = {}
        for kind, final in self.finals.items():
            levels = {f: self.partials[kind, f] for f in self.factors}
            overviews.upper_levels(levels, KINDS[kind].nodata)
            staged[final] = final.parent / f".{final.name}.cog.tif"
            source = overviews.with_overviews(self.partials[kind, 1], levels, self._vrt(final))
            copy_checked(source, staged[final], final, driver="COG", compress="DEFLATE", level=DEFLATE_LEVEL,
                         blocksize=512, overview_resampling=KINDS[kind].resampling, bigtiff="IF_SAFER",
                         num_threads="ALL_CPUS")
            if kind == "classes":
                write_class_sidecar(final, self.classes, self.done_counts + self.pending_counts)
                write_raster_style(final, self.classes)
        # every output is ready before the first is renamed, and the resume record goes last: a kill
        # between two renames leaves a run that --resume finishes (classify_pixels lets it replace them)
        for final, staging in staged.items():
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

