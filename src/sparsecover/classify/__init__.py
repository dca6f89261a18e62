"""`sparsecover classify`: a raster of any size -> classified Cloud-Optimized GeoTIFF, on one machine
or a Dask cluster.

The raster is cut into output blocks, each predicted from a tile with ``padding`` pixels of context
(:mod:`.plan`: no seams, blocks independent). That makes a block the unit of everything else: a Dask
task (each worker loads the model once), a resume point (finished blocks are recorded beside the
partial output), and a bounded amount of memory (nothing of scene size is allocated; GDAL's cache
is capped). The parts: :mod:`.plan` (blocks and tiles), :mod:`.engine` (tiles -> probabilities,
PyTorch or ONNX Runtime), :mod:`.schedule` (local or Dask, reading ahead), :mod:`.outputs` (the
output kinds, partial files, resume record and final COGs).

Outputs: uint8 class values as the user defined them, 0 = nodata (input nodata, outside ``aoi``),
colour table and class names embedded (the names also in GDAL's ``.aux.xml`` sidecar, where QGIS
and ArcGIS look for them, see :func:`sparsecover.classes.write_class_sidecar`), overviews (2 x 2
mode, computed while the blocks are written); optional confidence (top-class probability),
uncertainty (what `suggest` ranks places by: 1 - the top-two margin, or an ensemble's members'
disagreement) and per-class probabilities (float32): the rows of
:data:`.outputs.KINDS`. Everything is written to hidden partial files and turned into COGs only at
the end, so a failure never leaves a file that looks finished.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import rasterio
from rasterio import features
from rasterio.windows import Window

from ..errors import SparsecoverError, warn
from ..polygonize import parse_min_area, vectorize
from ..predict import LoadedModel, check_raster, load_meta, load_model
from ..progress import track
from ..raster import GDAL_ERRORS, describe, gdal_env, open_raster, thread_pool
from ..staging import check_output, exclusive
from . import schedule
from .engine import PRECISIONS, TTA_VIEWS, Inference, Predictor, device_of, use_bf16
from .outputs import Outputs, Settings, resume_record
from .plan import MULTIPLE, plan_blocks

#: How the map decides between classes: under the class frequencies of the training labels (the
#: model's decision offsets, :func:`sparsecover.model.decision_offsets`), or as if every class were
#: equally common (the network alone, trained with balancing class weights: more of the rare classes).
CLASS_PRIORS = ("labels", "balanced")


def _aoi_masker(aoi: Path | None, source):
    """A function window -> bool mask (inside the AOI), or None without an AOI."""
    if aoi is None:
        return None
    from shapely.geometry import box

    from ..labels import read_label_file

    frame = read_label_file(aoi, "AOI").to_crs(source.crs)
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
    tta: str | bool = "flip",
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
    ``confidence``, ``uncertainty`` and ``probabilities`` are further COGs to write (see :data:`.outputs.KINDS`).
    ``tta``: the views averaged, one of :data:`.engine.TTA_VIEWS` (True / False: all / none).
    ``class_prior``: one of :data:`CLASS_PRIORS`. ``precision``: one of :data:`PRECISIONS` (auto:
    bf16 on CUDA and on CPUs with native bf16, see :func:`.engine.cpu_has_bf16`). ``vector``: also the map as polygons in a
    GeoPackage, with ``min_area`` as the minimum mapping unit (see :func:`polygonize.vectorize`).
    """
    out = Path(out)
    extras = {k: Path(v) for k, v in (("confidence", confidence), ("uncertainty", uncertainty),
                                      ("probabilities", probabilities)) if v is not None}
    outputs = [out, *extras.values(), *([Path(vector)] if vector is not None else [])]
    if vector is not None and Path(vector).suffix.lower() != ".gpkg":
        raise SparsecoverError(f"{vector}: the vector map is a GeoPackage; name it *.gpkg")
    parse_min_area(min_area)
    # outputs an interrupted run already renamed into place are its own, which --resume replaces
    resuming = resume and resume_record(out).exists()
    for path in map(Path, outputs):
        check_output(path, overwrite or resuming)
    if padding < 0:
        raise SparsecoverError(f"--padding must be 0 or more, got {padding}")
    if isinstance(tta, bool):
        tta = "all" if tta else "none"
    if tta not in TTA_VIEWS:
        raise SparsecoverError(f"--tta must be one of {', '.join(TTA_VIEWS)}, got {tta!r}")
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
        vectorize(out, vector, min_area=min_area, overwrite=overwrite or resuming, progress=progress)
    return out


def classify_rasters(rasters: list[str | Path], model: str | Path, out: str | Path,
                     confidence: str | Path | None = None, uncertainty: str | Path | None = None,
                     probabilities: str | Path | None = None, vector: str | Path | None = None,
                     **options) -> list[dict[str, Path]]:
    """Classify each of ``rasters`` with one model; returns each raster's outputs (kind -> path).

    One raster: ``out`` and the other paths are files, as in :func:`classify_pixels`. Several: they
    are existing folders, and each raster's outputs are named after it there (``out/<raster>.tif``,
    ``vector/<raster>.gpkg``). To get one map of a mosaic, classify a VRT of the tiles instead.
    ``options``: those of :func:`classify_pixels`.
    """
    rasters = [Path(r) for r in rasters]
    if not rasters:
        raise SparsecoverError("no raster to classify")
    extras = {k: Path(v) for k, v in (("confidence", confidence), ("uncertainty", uncertainty),
                                      ("probabilities", probabilities), ("vector", vector)) if v is not None}
    jobs = [(rasters[0], Path(out), extras)]
    if len(rasters) > 1:
        for folder in (Path(out), *extras.values()):
            if not folder.is_dir():
                raise SparsecoverError(f"{folder}: with several rasters, --out (and --confidence, --uncertainty, "
                                       "--probabilities, --vector) must be existing folders")
        names = [r.stem for r in rasters]
        if len(set(names)) < len(names):
            raise SparsecoverError("several input rasters share a file name; their outputs would collide")
        jobs = [(r, Path(out) / f"{r.stem}.tif", {k: v / f"{r.stem}{'.gpkg' if k == 'vector' else '.tif'}"
                                                  for k, v in extras.items()}) for r in rasters]
    return [{"classes": classify_pixels(raster, model, target, **paths, **options), **paths}
            for raster, target, paths in jobs]


def _classify(raster: str | Path, model: str | Path | LoadedModel, out: Path, tile_size: int, padding: int,
              batch_size: int | None, tta: str, extras: dict[str, Path], class_prior: str,
              aoi: str | Path | None, device: str, engine: str, workers: int | None, dask_scheduler: str | None,
              resume: bool, progress: bool, precision: str) -> Path:
    """classify_pixels once its outputs are checked and locked."""
    torch_device = device_of(device)
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
    from ..model import Ensemble  # loaded with the network, not before (`sparsecover check` needs neither)

    # an ensemble's uncertainty is its members' disagreement, which the ONNX graph does not output
    disagreement = "uncertainty" in extras and isinstance(loaded.network, Ensemble)
    if disagreement and engine == "onnx":
        warn(f"{out}: with --engine onnx an ensemble's uncertainty is 1 - the margin of its mean probability; "
             "--engine torch gives the members' disagreement")
        disagreement = False
    how = Inference(engine, tta, not extras, class_prior, bf16, disagreement)
    stat = Path(raster).stat()
    settings = Settings(str(Path(raster).resolve()), f"{stat.st_size} bytes, modified {stat.st_mtime_ns} ns",
                        str(Path(model).resolve()) if not isinstance(model, LoadedModel) else "in-memory",
                        loaded.weights_sha256, tile_size, padding, tta, engine, str(aoi) if aoi else None, class_prior,
                        "bf16" if bf16 else "fp32")
    with gdal_env():  # bounded GDAL cache for the outputs too; GDAL errors go to Python logging
        try:
            writer = Outputs(out, extras, source, loaded.meta, settings, resume, disagreement)
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
                results = schedule.dask_results(str(Path(raster).resolve()), str(Path(model).resolve()), device, how,
                                                batches, loaded.band_indexes, workers, dask_scheduler)
            else:
                predictor = Predictor(loaded, torch_device, how)
                results = schedule.local_results(str(source.path), predictor, batches, loaded.band_indexes)
            # batches are prepared (class values, overviews) by a few threads and written, in order,
            # by one, while the next batches are predicted
            preparers = schedule.preparing_threads()
            with thread_pool(preparers, "sparsecover-prepare") as preparing, thread_pool(1, "sparsecover-write") as pool:
                writes: deque = deque()
                for result in track(results, len(batches), f"classify {source.path.name}", progress,
                                    weights=weights, unit="MP"):
                    prepared = preparing.submit(writer.prepare, result, aoi_mask)
                    writes.append(pool.submit(lambda batch: writer.write(batch.result()), prepared))
                    while len(writes) > schedule.QUEUED_BATCHES + preparers - 1:
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

