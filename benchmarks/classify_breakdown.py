"""Where the wall time of one `sparsecover classify` goes, by stage and thread, printed as tables.

    python benchmarks/classify_breakdown.py [--device cuda] [--mp 376] [--geotiff [--compress deflate]] [--pipeline-only] [--data DIR]

On a fast GPU the network is a small part of classify's time (an H200 runs the bare ResNet34
U-Net at ~350 MP/s); this shows which host-side stage holds it back. Input: the Sentinel-2 scene of
``--data`` repeated by a VRT to about ``--mp`` megapixels (see classify_speed.py) or, with
``--geotiff``, that VRT written out as one GeoTIFF first (DEFLATE by default: a real file to decode, as users
have; the VRT repeats one file, whose blocks GDAL's cache then serves). Two runs: classify at
default settings but one pass per tile (``--tta none``: the host's work per pixel is the same with
more passes, the network's grows), and the pipeline alone (the network replaced by a near-free stand-in).
Last, the CPU that decoding the input alone takes per MP: what no pipeline can go below.

Stages are timed by wrapping classify's own functions; times of the reading threads are summed
over threads (so they can exceed the wall time), the others are wall time in their thread. "CPU s"
is the CPU time of the thread that called the stage (GDAL's own worker threads, e.g. of the COG
conversion, are not in it): well below the wall time means the stage waited (for the GIL, a lock, the
disk or the GPU). A second table gives the CPU time of every kind of thread, GDAL's and PyTorch's
native ones included (sampled from /proc, Linux only).
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import queue
import resource
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import classify_speed
import rasterio
import rasterio.shutil
import torch
from rasterio.windows import Window

from sparsecover import classify
from sparsecover.classify import engine, outputs, schedule
from sparsecover.raster import gdal_env
from sparsecover.stack import stack_bands

READ = "read tiles (reading threads, summed)"
STAGES = {  # classify's functions, as the module that calls them names them -> label
    "schedule.read_tile": READ,
    "engine.read_tile": READ,  # reached through read_run on a GPU host
    "engine.Predictor.batch": "copy batch to the device (main)",
    "engine.Predictor._forward": "forward + argmax + copy back (main)",
    "outputs.Outputs.prepare": "prepare strips (preparing threads, summed)",
    "outputs.Outputs.write": "write strips (writer thread)",
    "outputs.Outputs._checkpoint": "  of which checkpoints",
    "outputs.Outputs.finish": "COG conversion (main, at the end)",
    "classify.load_model": "load model (main)",
    "classify.check_raster": "check data contract (main)",
}
MODULES = {"classify": classify, "engine": engine, "outputs": outputs, "schedule": schedule}


class Timer:
    """Wraps functions of the classify module and sums their wall time per label, thread-safely."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.cpu: dict[str, float] = collections.defaultdict(float)  # CPU time of the calling thread
        self.calls: collections.Counter = collections.Counter()
        self.lock = threading.Lock()

    def add(self, label: str, seconds: float, cpu: float) -> None:
        with self.lock:
            self.seconds[label] += seconds
            self.cpu[label] += cpu
            self.calls[label] += 1

    def wrap(self, label: str, function, cuda: bool = False):
        def timed(*args, **kwargs):
            start, cpu = time.perf_counter(), time.thread_time()
            result = function(*args, **kwargs)
            if cuda:  # the copy is asynchronous: count it where it is done
                torch.cuda.synchronize()
            self.add(label, time.perf_counter() - start, time.thread_time() - cpu)
            return result

        return timed

    def install(self, device: str) -> None:
        for name, label in STAGES.items():
            module, *owner, attribute = name.split(".")
            target = getattr(MODULES[module], owner[0]) if owner else MODULES[module]
            setattr(target, attribute, self.wrap(label, getattr(target, attribute),
                                                 cuda=name == "engine.Predictor.batch" and device == "cuda"))
        result = Future.result
        timer = self

        def waited(future, *args, **kwargs):  # a thread waiting for the writer or a prepared batch
            start, cpu = time.perf_counter(), time.thread_time()
            value = result(future, *args, **kwargs)
            main = threading.current_thread() is threading.main_thread()
            label = "wait for the writer (main)" if main else "writer waits for prepared batches"
            timer.add(label, time.perf_counter() - start, time.thread_time() - cpu)
            return value

        Future.result = waited
        get = queue.Queue.get

        def read_waited(tiles, *args, **kwargs):  # the model's thread waiting for a reader's batch
            start, cpu = time.perf_counter(), time.thread_time()
            value = get(tiles, *args, **kwargs)
            if threading.current_thread() is threading.main_thread():
                timer.add("wait for reads (main)", time.perf_counter() - start, time.thread_time() - cpu)
            return value

        queue.Queue.get = read_waited


class ThreadCPU:
    """CPU time by kind of thread, sampled from /proc/self/task while a run lasts: Python's threads
    by name (sparsecover-read, -prepare, -write, the main thread) and the native ones (GDAL's
    decoding and compression workers, PyTorch's OpenMP team), which the stage table cannot see.
    Threads that end between two samples lose their last interval."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.last, self.names = interval, {}, {}  # names: Python's threads, by native id
        self.stopped = threading.Event()
        self.sampler = threading.Thread(target=self._run, name="breakdown-sampler", daemon=True)

    @staticmethod
    def _cpu(tid: str) -> float | None:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> None:
        python = {str(t.native_id): t.name.rsplit("_", 1)[0] for t in threading.enumerate()}
        for tid in os.listdir("/proc/self/task"):
            cpu = self._cpu(tid)
            if cpu is not None:
                self.last.setdefault(tid, (cpu, cpu))
                self.last[tid] = (self.last[tid][0], cpu)
        # a new thread is listed in /proc before it runs Python (it waits for the GIL): it is named
        # when a later sample sees it in Python, or it would be counted as a native one
        self.names.update(python)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            self._sample()

    def __enter__(self) -> ThreadCPU:
        self._sample()
        self.sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.sampler.join()
        self._sample()

    def by_kind(self) -> dict[str, float]:
        totals: dict[str, float] = collections.defaultdict(float)
        for tid, (first, last) in self.last.items():
            kind = self.names.get(tid, "native (GDAL, OpenMP)")
            if kind != "breakdown-sampler":
                totals[kind] += last - first
        return dict(sorted(totals.items(), key=lambda item: -item[1]))


def _process_cpu() -> float:
    """CPU seconds of this process, all threads (GDAL's included): what a many-core host shares out."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decode_floor(raster: Path) -> float:
    """CPU ms per MP to read every pixel of ``raster`` once, block row by block row, in one thread:
    the decoding any pipeline pays for this input, beside which its own CPU per MP is read."""
    with rasterio.Env(GDAL_NUM_THREADS=1), rasterio.open(raster) as src:
        start = _process_cpu()
        rows = src.block_shapes[0][0]
        for row in range(0, src.height, rows):
            src.read(window=Window(0, row, src.width, min(rows, src.height - row)))
        return (_process_cpu() - start) / (src.width * src.height / 1e6) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mp", type=float, default=376, help="size of the input in megapixels")
    parser.add_argument("--geotiff", action="store_true", help="write the repeated scene to one GeoTIFF first")
    parser.add_argument("--compress", default="deflate", choices=("deflate", "zstd", "lzw", "none"),
                        help="the GeoTIFF's codec (with the horizontal predictor, except none)")
    parser.add_argument("--data", type=Path, default=classify_speed.SHARED, help="folder with s2_B02/03/04/08.tif")
    parser.add_argument("--readers", type=int, default=None,
                        help="reading threads (default: classify's, i.e. none on a CPU): a GPU host's reading path on any machine")
    parser.add_argument("--pipeline-only", action="store_true",
                        help="only the pipeline without the network (minutes faster on a CPU)")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"benchmark data not found: {args.data}")
    if args.readers is not None:
        schedule.reading_threads = lambda device: args.readers
    timer = Timer()
    forward = engine.Predictor._forward
    timer.install(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        stack = stack_bands([args.data / f"s2_B0{b}.tif" for b in (2, 3, 4, 8)], tmp / "s2.vrt")
        package = classify_speed.make_package(tmp, stack)
        side = max(1, math.ceil((args.mp / 3.76) ** 0.5))
        raster = classify_speed.repeat_vrt(stack, tmp / "big.vrt", side, side)
        if args.geotiff:
            start = time.perf_counter()
            with gdal_env():
                rasterio.shutil.copy(raster, tmp / "big.tif", driver="GTiff", compress=args.compress,
                                     **({} if args.compress == "none" else {"predictor": 2}),
                                     tiled=True, blockxsize=512, blockysize=512, bigtiff="YES", num_threads="ALL_CPUS")
            raster = tmp / "big.tif"
            print(f"input written as one {args.compress.upper()} GeoTIFF in {time.perf_counter() - start:.1f} s")
        bare = classify_speed.bare_forward(package, args.device, *((8, 1024, 16) if args.device == "cuda" else (1, 1024, 2)))
        device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"classify_breakdown: {device}; bare forward {bare:.1f} MP/s (best batch); input {Path(raster).name}")
        runs = [("classify, defaults", forward), ("pipeline alone (no network)", classify_speed.no_network)]
        for label, network in runs[args.pipeline_only:]:
            engine.Predictor._forward = timer.wrap(STAGES["engine.Predictor._forward"], network)
            timer.seconds.clear()
            timer.cpu.clear()
            timer.calls.clear()
            with rasterio.open(raster) as src:
                mp = src.width * src.height / 1e6
            start, cpu = time.perf_counter(), _process_cpu()
            with ThreadCPU() as threads:
                classify.classify_pixels(raster, package, tmp / "out.tif", device=args.device, progress=False,
                                         overwrite=True, tta="none")
            wall, cpu = time.perf_counter() - start, _process_cpu() - cpu
            readers = schedule.reading_threads(torch.device(args.device))
            print(f"\n{label}: {mp:.0f} MP in {wall:.2f} s = {mp / wall:.1f} MP/s = {mp / wall / bare:.3f} of bare; "
                  f"{readers} reading threads; process CPU {cpu:.2f} s = {cpu / mp * 1000:.1f} ms per MP")
            print(f"  {'stage':<42}{'seconds':>8}  {'% of wall':>9}  {'CPU s':>6}  {'calls':>6}")
            for stage, seconds in sorted(timer.seconds.items(), key=lambda item: -item[1]):
                print(f"  {stage:<42}{seconds:>8.2f}  {100 * seconds / wall:>9.1f}  {timer.cpu[stage]:>6.2f}  "
                      f"{timer.calls[stage]:>6}", flush=True)
            print(f"  {'CPU by thread (sampled)':<42}{'CPU s':>8}  {'ms per MP':>9}")
            for kind, seconds in threads.by_kind().items():
                print(f"  {kind:<42}{seconds:>8.2f}  {seconds / mp * 1000:>9.1f}")
        print(f"\nreading the input alone (every block once, in order, one thread): process CPU "
              f"{decode_floor(raster):.1f} ms per MP")


if __name__ == "__main__":
    main()
