"""Raster access for every stage: opening with clear errors, windows, nodata masks, band statistics.

Rasters are only ever read window by window (DESIGN invariant: no stage holds a whole raster in
memory), and GDAL's block cache is capped so that reading a big file does not grow the process to
the file's size.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio._err import _ERROR_STACK, CPLE_BaseError, stack_errors
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from .errors import SparsecoverError, warn

#: What a failed GDAL read or write raises: rasterio's own errors, and GDAL's errors passed through
#: as they are (``rasterio.shutil.copy`` raises e.g. ``CPLE_AppDefinedError`` on a full disk).
GDAL_ERRORS = (OSError, RasterioError, CPLE_BaseError)

#: GDAL block cache in bytes. GDAL's default (5 % of RAM) lets windowed reads grow RSS to the file
#: size; 64 MB holds what classify reuses (the input blocks under the overlap of neighbouring tiles,
#: in bands of columns, see ``classify.plan_blocks``; output blocks shared by neighbouring cores):
#: a larger cache read and wrote no faster and only grew peak RSS. In bytes, not MB: rasterio's Env
#: hands the number to GDALSetCacheMax64, and a cache of a few hundred bytes decodes every input block
#: again for each tile and re-reads every output block for each window written.
GDAL_CACHE_BYTES = 64 * 2**20

#: dtypes a chip dataset or a model input may have.
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


#: rasterio wraps dataset creation in ``warnings.catch_warnings``, which is not thread-safe: two
#: threads creating datasets at once can leave a global "ignore all warnings" filter behind and
#: swallow the user's warnings. Every dataset creation from worker threads takes this lock.
CREATE_LOCK = threading.Lock()


@contextlib.contextmanager
def create(path: str | Path, **profile) -> Iterator[rasterio.io.DatasetWriter]:
    """``with rasterio.open(path, "w", ...)``, safe to call from worker threads, and closed with
    :func:`close_checked` (a failure to write the cached blocks raises OSError)."""
    with CREATE_LOCK:
        dataset = rasterio.open(path, "w", **profile)
    try:
        yield dataset
    except BaseException:
        dataset.close()
        raise
    close_checked(dataset)


def close_checked(dataset: rasterio.io.DatasetWriter) -> None:
    """Close a dataset opened for writing; raise OSError if GDAL failed to write its cached blocks.

    Windows written to a dataset stay in GDAL's block cache until it is closed, and rasterio's
    ``close()`` reports nothing when writing them fails: on a full disk the file was left truncated
    as if written. GDAL's error stack has the failure.
    """
    with stack_errors():
        dataset.close()
        failures = list(_ERROR_STACK.get())
    if failures:
        raise OSError(f"{dataset.name}: {failures[-1]}")


def copy_checked(source: str | Path, target: Path, output: Path | None = None, **options) -> None:
    """``rasterio.shutil.copy`` (e.g. to GDAL's COG driver), then the copy reopened and its tail read;
    errors name ``output``, the file the user asked for, where ``target`` is a hidden staging file.

    A copy that runs out of disk can end without an exception, leaving a file GDAL cannot open (its
    directory is written last) or whose last blocks are missing; GDAL's error stack and a read of
    the last full-resolution block (a COG stores those last) catch both, as one clear error.
    """
    import rasterio.shutil

    try:
        with stack_errors():
            rasterio.shutil.copy(source, target, **options)
            failures = list(_ERROR_STACK.get())
        if failures:
            raise RasterioError(str(failures[-1]))
        with rasterio.open(target) as written:
            block = Window(max(0, written.width - 1), max(0, written.height - 1), 1, 1)
            written.read(window=block)
    except RasterioError as exc:
        Path(target).unlink(missing_ok=True)
        raise SparsecoverError(f"{output or target}: writing failed ({_first_line(exc)}); is the disk full?") from None


class ThreadHandles:
    """One open dataset per thread and path, kept until :meth:`close`: GDAL datasets must not be
    shared between threads, and reopening one for every window is slow on a VRT of many sources."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._all: list = []
        self._lock = threading.Lock()

    def get(self, path: str | Path, opener=rasterio.open):
        """This thread's dataset for ``path``, opened by ``opener(path)`` on first use."""
        cache = self._local.__dict__.setdefault("open", {})
        if path not in cache:
            cache[path] = opener(path)
            with self._lock:
                self._all.append(cache[path])
        return cache[path]

    def close(self) -> None:
        for handle in self._all:
            handle.close()
        self._all.clear()


def gdal_env() -> rasterio.Env:
    """A rasterio environment with a bounded block cache, for every stage's I/O."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES, GDAL_NUM_THREADS="ALL_CPUS")


def thread_pool(workers: int, name: str) -> ThreadPoolExecutor:
    """A thread pool whose threads run inside :func:`gdal_env`. rasterio's environment is per thread:
    without one, GDAL's messages from a pool thread went straight to stderr, not to Python logging."""
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=_enter_gdal_env)


def _enter_gdal_env() -> None:
    # for the thread's whole life (it ends with its pool); without GDAL_CACHEMAX: the block cache is
    # the process's, sized by the thread that started the work, and setting it here again would
    # shrink a larger one (classify's reading threads, schedule.read_ahead) as each thread starts
    rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS").__enter__()


@dataclass(frozen=True)
class BandInfo:
    """One image band as the later stages need it: its name, dtype and nodata value."""

    name: str
    dtype: str
    nodata: float | None

    def as_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "nodata": _json_number(self.nodata)}


@dataclass
class RasterSource:
    """What a stage knows about an input raster before reading any pixel."""

    path: Path
    crs: CRS
    transform: Affine
    width: int
    height: int
    bands: list[BandInfo]
    band_indexes: list[int] = field(default_factory=list)  # 1-based, alpha bands excluded

    @property
    def dtype(self) -> str:
        return common_dtype([b.dtype for b in self.bands])

    @property
    def pixel_bytes(self) -> int:
        """Bytes of one pixel's image bands as stored (what GDAL's block cache holds per pixel)."""
        return sum(np.dtype(b.dtype).itemsize for b in self.bands)

    @property
    def resolution(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        return _bounds(self.transform, self.width, self.height)


def _bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    west, north = transform @ (0, 0)
    east, south = transform @ (width, height)
    return (min(west, east), min(south, north), max(west, east), max(south, north))


def _json_number(value: float | None) -> float | int | str | None:
    """JSON has no NaN: keep it as the string "nan" so the file stays valid JSON."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return int(value) if float(value).is_integer() else float(value)


def parse_nodata(value: float | str | None) -> float | None:
    """Inverse of the JSON encoding used for nodata values."""
    if value is None:
        return None
    return float("nan") if value == "nan" else float(value)


def common_dtype(dtypes: list[str]) -> str:
    """The smallest dtype that holds every band's values (int16 + float32 -> float32)."""
    return str(np.result_type(*[np.dtype(d) for d in dtypes]))


@contextlib.contextmanager
def open_raster(path: str | Path) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading, turning GDAL's failures into one line that names the file.

    ``path`` may be a GDAL virtual path (``/vsicurl/https://...``), kept as a string: a Path would
    fold its ``//``."""
    if not is_virtual(path):
        path = Path(path)
        if not path.exists():
            raise SparsecoverError(f"{path}: file not found")
    try:
        src = rasterio.open(path)
    except RasterioError as exc:
        raise SparsecoverError(
            f"{path}: not a raster GDAL can read ({_first_line(exc)}); check the file is complete"
        ) from None
    with src:
        yield src


def is_virtual(path: str | Path) -> bool:
    """A GDAL virtual file system path (remote or in-memory), not a local file."""
    return str(path).startswith("/vsi")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def describe(src: rasterio.io.DatasetReader, require_crs: bool = True) -> RasterSource:
    """Band names, dtypes, nodata and grid of an open raster; alpha bands are masks, not image bands."""
    path = Path(src.name)  # for names and messages; a virtual path's "//" folds (stack keeps the original)
    if require_crs and src.crs is None:
        raise SparsecoverError(
            f"{path}: raster has no CRS; assign one first, e.g. "
            f"`gdal_edit.py -a_srs EPSG:XXXX {path.name}`"
        )
    if src.transform == Affine.identity() and require_crs:
        raise SparsecoverError(f"{path}: raster has no georeferencing (identity transform)")
    indexes = [i for i, ci in zip(src.indexes, src.colorinterp) if ci != ColorInterp.alpha or _alpha_holds_data(src, i)]
    if not indexes:
        raise SparsecoverError(f"{path}: raster has no image bands (only alpha)")
    bands = []
    for i in indexes:
        dtype = src.dtypes[i - 1]
        if dtype not in SUPPORTED_DTYPES:
            raise SparsecoverError(
                f"{path}: band {i} has dtype {dtype}; supported are {', '.join(SUPPORTED_DTYPES)}"
            )
        name = src.descriptions[i - 1] or (path.stem if src.count == 1 else f"band_{i}")
        nodata = src.nodatavals[i - 1]
        bands.append(BandInfo(name=name, dtype=dtype, nodata=nodata))
    return RasterSource(
        path=path,
        crs=src.crs,
        transform=src.transform,
        width=src.width,
        height=src.height,
        bands=bands,
        band_indexes=indexes,
    )


def _alpha_holds_data(src: rasterio.io.DatasetReader, band: int, grid: int = 3, size: int = 64) -> bool:
    """Whether a band tagged alpha holds imagery rather than a mask, from a few small windows.

    GDAL tags the fourth band of a 4-band GeoTIFF written as PHOTOMETRIC=RGB as alpha unless told
    otherwise, so 4-band NAIP (red, green, blue, NIR) often arrives with its NIR band as "alpha":
    read as a mask, the model would never see NIR. A real mask holds 0 and its maximum (255 for
    8 bits); a band where over 1 % of the sampled pixels hold other values is imagery.
    """
    rows = np.unique(np.linspace(0, max(src.height - size, 0), grid).astype(int))
    cols = np.unique(np.linspace(0, max(src.width - size, 0), grid).astype(int))
    values = np.concatenate([
        src.read(band, window=Window(int(c), int(r), min(size, src.width), min(size, src.height))).ravel()
        for r in rows for c in cols
    ])
    top = np.iinfo(values.dtype).max if np.issubdtype(values.dtype, np.integer) else 1.0
    share = float(np.mean((values != 0) & (values != top)))
    if share <= 0.01:
        return False
    warn(f"{src.name}: band {band} is tagged alpha but holds image values ({share:.0%} of sampled pixels "
         f"are neither 0 nor {top:g}); it is read as an image band (4-band NAIP's NIR often carries "
         f"this tag). If it is a mask, make it one; if not, silence this with "
         f"`gdal_edit.py -colorinterp_{band} undefined {Path(src.name).name}`")
    return True


def read_window(
    src: rasterio.io.DatasetReader, window: Window, indexes: list[int], dtype: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read ``window`` (may reach past the edges) as (bands, h, w) data and (bands, h, w) band validity.

    A band value is valid when it is not its own band's nodata value, not masked by a mask or alpha
    band, finite, and inside the raster. Reads past the edge are zero-filled and invalid. A *pixel* is
    classifiable where any band is valid (``valid.any(0)``): bands missing at a pixel (Landsat 7
    SLC-off gaps, a band with a smaller footprint) are imputed, not the whole pixel dropped.
    (rasterio's ``boundless`` reads apply band 1's nodata to every band, so the padding is done here.)
    """
    try:
        data = read_padded(src, window, indexes, dtype=dtype)
        alpha_is_image = any(src.colorinterp[i - 1] == ColorInterp.alpha for i in indexes)
        if alpha_is_image or all(src.mask_flag_enums[i - 1] == [MaskFlags.all_valid] for i in indexes):
            # no nodata, mask or alpha: only the part inside the raster is valid (reading the masks
            # of such a raster decodes every block a second time). An alpha band read as imagery
            # (see _alpha_holds_data) masks nothing: GDAL's masks, derived from it, do not apply.
            valid = _inside(src, window, len(indexes))
            if alpha_is_image:
                valid &= _not_nodata(src, data, indexes)
        else:
            valid = read_padded(src, window, indexes, masks=True) > 0
    except RasterioError as exc:
        raise SparsecoverError(
            f"{src.name}: cannot read pixels ({_first_line(exc)}); the file may be truncated or corrupt"
        ) from None
    if any(np.issubdtype(np.dtype(src.dtypes[i - 1]), np.floating) for i in indexes):
        valid &= np.isfinite(data)  # integer bands read as float cannot be NaN: skip the pass
    return data, valid


def _not_nodata(src, data: np.ndarray, indexes: list[int]) -> np.ndarray:
    """(bands, h, w) True where each band's value is not that band's nodata value."""
    valid = np.ones(data.shape, dtype=bool)
    for k, i in enumerate(indexes):
        nodata = src.nodatavals[i - 1]
        if nodata is not None and not math.isnan(nodata):
            valid[k] = data[k] != nodata
    return valid


def _inside(src, window: Window, bands: int) -> np.ndarray:
    """(bands, h, w) True where ``window`` lies inside the raster."""
    inside = np.zeros((bands, int(window.height), int(window.width)), dtype=bool)
    row0, col0 = int(window.row_off), int(window.col_off)
    inside[:, max(-row0, 0) : src.height - row0, max(-col0, 0) : src.width - col0] = True
    return inside


def read_padded(
    src, window: Window, indexes: list[int] | int, dtype: str | None = None, masks: bool = False,
    fill: float = 0,
) -> np.ndarray:
    """Read the part of ``window`` inside the raster and pad the rest with ``fill`` (masks: 0)."""
    row0, col0 = int(window.row_off), int(window.col_off)
    height, width = int(window.height), int(window.width)
    r0, c0 = max(row0, 0), max(col0, 0)
    r1, c1 = min(row0 + height, src.height), min(col0 + width, src.width)
    inner = Window(c0, r0, max(c1 - c0, 0), max(r1 - r0, 0))
    reader = src.read_masks if masks else src.read
    kwargs = {} if masks else {"out_dtype": dtype}
    if (r0, c0, r1, c1) == (row0, col0, row0 + height, col0 + width):
        return reader(indexes, window=inner, **kwargs)
    bands = () if isinstance(indexes, int) else (len(indexes),)
    out_dtype = "uint8" if masks else (dtype or src.dtypes[(indexes if bands == () else indexes[0]) - 1])
    out = np.full(bands + (height, width), 0 if masks else fill, dtype=out_dtype)
    if inner.width > 0 and inner.height > 0:
        out[..., r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = reader(indexes, window=inner, **kwargs)
    return out


def block_windows(width: int, height: int, size: int = 1024) -> Iterator[Window]:
    """Non-overlapping windows that cover a raster, row by row."""
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def tile_offsets(length: int, tile: int, stride: int) -> list[int]:
    """Chip start offsets along one axis: every ``stride``, plus one flush with the far edge.

    A raster smaller than a tile gets a single chip at 0 (read past the edge, marked nodata).
    """
    if length <= tile:
        return [0]
    offsets = list(range(0, length - tile + 1, stride))
    if offsets[-1] != length - tile:
        offsets.append(length - tile)
    return offsets


class BandStatistics:
    """Per-band min, max, mean, std and 1st/99th percentiles over valid pixels, window by window.

    8- and 16-bit integers get exact percentiles from a full histogram in one pass. Other dtypes
    need a second pass (:meth:`add_histogram`) over a 4096-bin histogram between min and max, so
    their percentiles are exact to (max - min) / 4096.
    """

    BINS = 4096

    def __init__(self, nbands: int, dtype: str) -> None:
        dt = np.dtype(dtype)
        self.exact = dt.kind in "ui" and dt.itemsize <= 2
        self.offset = int(np.iinfo(dt).min) if self.exact else 0
        nbins = 2 ** (8 * dt.itemsize) if self.exact else self.BINS
        self.hist = np.zeros((nbands, nbins), dtype=np.int64)
        self.count = 0
        self.mean = np.zeros(nbands)
        self.m2 = np.zeros(nbands)
        self.min = np.full(nbands, np.inf)
        self.max = np.full(nbands, -np.inf)

    @property
    def needs_histogram_pass(self) -> bool:
        return not self.exact and self.count > 0

    def add(self, pixels: np.ndarray) -> None:
        """Add valid pixels, shaped (bands, n). Chan's parallel update keeps the variance stable."""
        n = pixels.shape[1]
        if n == 0:
            return
        values = pixels.astype(np.float64)
        mean = values.mean(axis=1)
        m2 = ((values - mean[:, None]) ** 2).sum(axis=1)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total
        self.min = np.minimum(self.min, values.min(axis=1))
        self.max = np.maximum(self.max, values.max(axis=1))
        if self.exact:
            for b in range(pixels.shape[0]):
                self.hist[b] += np.bincount(
                    pixels[b].astype(np.int64) - self.offset, minlength=self.hist.shape[1]
                )

    def add_histogram(self, pixels: np.ndarray) -> None:
        """Second pass for non-integer dtypes, once min and max are known."""
        for b in range(pixels.shape[0]):
            lo, hi = self.min[b], self.max[b]
            counts, _ = np.histogram(pixels[b], bins=self.BINS, range=(lo, hi if hi > lo else lo + 1))
            self.hist[b] += counts

    def _percentile(self, band: int, q: float) -> float:
        cum = np.cumsum(self.hist[band])
        index = int(np.searchsorted(cum, q / 100.0 * cum[-1], side="left"))
        if self.exact:
            return float(index + self.offset)
        lo, hi = self.min[band], self.max[band]
        width = (hi - lo) / self.BINS if hi > lo else 0.0
        return float(lo + (index + 0.5) * width)

    def result(self, names: list[str]) -> list[dict]:
        if self.count == 0:
            raise SparsecoverError("no valid pixels: every pixel of the raster is nodata")
        std = np.sqrt(self.m2 / self.count)
        return [
            {
                "band": name,
                "count": int(self.count),
                "min": float(self.min[b]),
                "max": float(self.max[b]),
                "mean": float(self.mean[b]),
                "std": float(std[b]),
                "p1": self._percentile(b, 1),
                "p99": self._percentile(b, 99),
            }
            for b, name in enumerate(names)
        ]
