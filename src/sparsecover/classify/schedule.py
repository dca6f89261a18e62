"""Where and in what order blocks are predicted: in this process (reading ahead on a GPU host) or as
Dask tasks; and how many threads prepare what the writer writes."""

from __future__ import annotations

import functools
import os
import queue
import threading

import rasterio
import torch

from ..errors import SparsecoverError
from ..predict import load_model
from ..raster import GDAL_CACHE_BYTES, thread_pool
from .engine import Inference, Predictor, device_of, predict_blocks, predict_tiles, read_run, read_tile
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
    """Batches predicted in this process: on a CPU read in order, inline; on a GPU read ahead by
    :func:`reading_threads` readers (see :func:`read_ahead`)."""
    readers = min(reading_threads(predictor.device), len(batches))
    if readers:
        yield from read_ahead(raster, predictor, batches, band_indexes, readers)
        return
    with rasterio.open(raster) as src:
        for batch in batches:
            yield predict_tiles(predictor, batch, [read_tile(src, b.tile, band_indexes) for b in batch])


def read_ahead(raster: str, predictor: Predictor, batches: list[list[Block]], band_indexes: list[int], readers: int):
    """Batches predicted while ``readers`` threads read the ones ahead, each its own contiguous share
    of the batches (a band of the raster) through its own dataset: no reader waits on another's,
    and the input blocks under the overlaps of neighbouring tiles stay in the cache of the reader
    that reads both (one dataset shared in turn serialised reading: the model's thread waited on
    reads for 76 % of a run on an H200, benchmarks/results/gpu_h200_2026-12-04.txt). The tiles side
    by side in a batch are read as one window (:func:`.engine.read_run`), decoded by its reader alone
    (the readers are the parallelism; GDAL's own decoding threads on top of them only contend).
    Results come in the readers' turn, not the raster's order (the writer takes any order). At most
    two batches per reader are in memory, one read and one being read, and the readers' share of
    GDAL's block cache.
    """
    shares = [batches[len(batches) * i // readers : len(batches) * (i + 1) // readers] for i in range(readers)]
    queues: list[queue.Queue] = [queue.Queue(maxsize=1) for _ in shares]
    stop = threading.Event()

    def hand_over(out: queue.Queue, item) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(share: list[list[Block]], out: queue.Queue) -> None:
        try:
            with rasterio.Env(GDAL_NUM_THREADS=1), rasterio.open(raster) as src:  # a thread's own setting
                for batch in share:
                    tiles = [predictor.stage(t) for run in tile_runs(batch) for t in read_run(src, run, band_indexes)]
                    if not hand_over(out, tiles):
                        return
        except BaseException as exc:  # noqa: BLE001 - raised again in the model's thread
            hand_over(out, exc)

    # GDAL's block cache is one for the process: each reader gets the share that the blocks' order
    # (plan.plan_blocks) was sized for, or the overlaps' blocks are decoded again. Set here, once:
    # a reader's own Env would put the smaller cache back for all when the first reader finishes.
    with rasterio.Env(GDAL_CACHEMAX=readers * GDAL_CACHE_BYTES), thread_pool(readers, "sparsecover-read") as pool:
        for share, out in zip(shares, queues):
            pool.submit(read, share, out)
        try:
            for k in range(max(map(len, shares))):
                for share, out in zip(shares, queues):
                    if k < len(share):
                        tiles = out.get()
                        if isinstance(tiles, BaseException):
                            raise tiles
                        yield predict_tiles(predictor, share[k], tiles)
        finally:
            stop.set()


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

