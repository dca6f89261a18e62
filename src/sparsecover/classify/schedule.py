"""Where and in what order blocks are predicted: in this process (reading ahead on a GPU host) or as
Dask tasks; and how many threads prepare what the writer writes."""

from __future__ import annotations

import functools
import os
import threading
from collections import deque

import rasterio
import torch

from ..errors import SparsecoverError
from ..predict import load_model
from ..raster import thread_pool
from .engine import Inference, Predictor, RawTile, device_of, predict_blocks, predict_tiles, read_run, read_tile
from .plan import Block, tile_runs

#: Batches that may wait between the stages (read -> predict -> write) so that a slow moment in one
#: does not stall the others (benchmarks/results/gpu_h200_2026-11-26.txt: with no slack the model's
#: thread waited on reads while the readers sat idle).
QUEUED_BATCHES = 2


def reading_threads(device: torch.device) -> int:
    """Reading threads: a GPU eats tiles far faster than one core decompresses them
    (benchmarks/results/gpu_h200_2026-11-26.txt). None on a CPU: the model already uses every core,
    and a reader thread beside it measured no faster."""
    return max(1, min(8, (os.cpu_count() or 2) // 2)) if device.type == "cuda" else 0


def preparing_threads() -> int:
    """Threads preparing batches for the writer: one per 4 cores, up to 4, because on a GPU host the
    writer's arrays (the overview levels) would otherwise cap classify at one core's speed."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def local_results(raster: str, predictor: Predictor, batches: list[list[Block]], band_indexes: list[int]):
    """Batches predicted in this process; on a GPU the tiles ahead are read by a pool of threads meanwhile.

    One dataset serves every read, in turn: GDAL caches decoded blocks per dataset, and with a
    dataset per reading thread (as before) the blocks under the overlaps of neighbouring tiles were
    decoded again by other threads: 8 threads spent 2.3x the CPU time of one reading in order (60 MP
    GeoTIFF). Reads in parallel come from GDAL instead: on a GPU the tiles side by side in a tile
    row are read as one window (:func:`.engine.read_run`), whose blocks GDAL decodes on all cores, while the
    threads stage tiles for the GPU or wait their turn. At most readers + QUEUED_BATCHES batches of
    tiles (rounded up to whole runs) wait in memory, whatever the raster's size.
    """
    readers = reading_threads(predictor.device)
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
def _worker_predictor(model: str, device: str, how: Inference) -> Predictor:
    """Each Dask worker process loads the model once and keeps it."""
    torch_device = device_of(device)
    return Predictor(load_model(model, str(torch_device)), torch_device, how)


def _dask_task(raster: str, model: str, device: str, how: Inference, blocks: list[Block], band_indexes: list[int]):
    return predict_blocks(raster, _worker_predictor(model, device, how), blocks, band_indexes)


def dask_results(raster: str, model: str, device: str, how: Inference, batches: list[list[Block]],
                 band_indexes: list[int], workers: int | None, scheduler: str | None):
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
        futures = [client.submit(_dask_task, raster, model, device, how, b, band_indexes, pure=False)
                   for b in batches]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

