"""Where classify cuts a raster: output blocks ("cores") and the input tiles predicted for them.

Each core is predicted from a tile that reaches at least ``padding`` pixels past it on every side
inside the raster (see :func:`axis_layout`), and only the core is kept: every output pixel comes from
exactly one tile with at least ``padding`` pixels of context, so tiles leave no seams and blocks are
independent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rasterio.windows import Window

from ..raster import GDAL_CACHE_BYTES

MULTIPLE = 32  # U-Net encoders downsample 5 times: tile sides must be multiples of 32


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


def tile_runs(blocks: list[Block]) -> list[list[Block]]:
    """Consecutive blocks whose tiles overlap side by side in one tile row: each run is read as one
    window (see :func:`.engine.read_run`)."""
    runs: list[list[Block]] = []
    for block in blocks:
        last = runs[-1][-1].tile if runs else None
        if last is not None and block.tile.row_off == last.row_off \
                and last.col_off < block.tile.col_off <= last.col_off + last.width:
            runs[-1].append(block)
        else:
            runs.append([block])
    return runs

