"""The minimum mapping unit (``vectorize --min-area``): patches under it join their largest
neighbour, GDAL's sieve rule, decided on the whole map's patch graph so that the result does not
depend on where blocks end. A first pass over the blocks labels every patch, counts it and keeps
the edges it shares with its neighbours; :class:`SievedReader` then gives each block's pixels the
class their patch ends with. The graph grows with the map's patches (about 200 bytes a patch at
its peak).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rasterio.windows import Window
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .mapblocks import Frontier, MapReader, Pixels, label_patches, shared_edges
from .progress import track


@dataclass
class Patches:
    """The sieve's first pass: every patch of the map (global id 1..N, in block order)."""

    value: list[np.ndarray] = field(default_factory=list)   # per block: class of each local patch
    count: list[np.ndarray] = field(default_factory=list)   # per block: pixels of each local patch
    seams: list[np.ndarray] = field(default_factory=list)   # (2, k) global ids joined across a block edge
    touching: list[np.ndarray] = field(default_factory=list)  # (3, k) neighbouring ids and edge length
    offsets: list[int] = field(default_factory=lambda: [0])  # global id of each block's first patch - 1


def scan(read: MapReader, blocks: list[Window], threshold: int, progress: bool, width: int,
         height: int) -> Patches:
    """Pass 1: every patch, its joins across block edges and its neighbours, less the pairs of two
    patches already known to be kept (inside the block, at least ``threshold`` pixels)."""
    patches = Patches()
    frontier = Frontier(width, height)
    weights = [w.width * w.height / 1e6 for w in blocks]
    for window in track(blocks, len(blocks), "Patches for --min-area", progress, weights, "MP"):
        data, valid = read(window)
        labels, values = label_patches(data, valid)
        offset = patches.offsets[-1]
        ids = np.where(labels > 0, labels + offset, 0)
        patches.value.append(values.astype(np.int32))  # 4 bytes a patch: maps hold millions
        patches.count.append(np.bincount(labels.ravel(), minlength=len(values) + 1)[1:].astype(np.int32))
        patches.offsets.append(offset + len(values))
        for outer, outer_values, inner, inner_values in frontier.beside(window, ids, data):
            joined = (outer > 0) & (inner > 0) & (outer_values == inner_values)
            patches.seams.append(np.stack([outer[joined], inner[joined]]).astype(np.int32))
            patches.touching.append(shared_edges(outer, inner).astype(np.int32))
        settled = patches.count[-1] >= threshold
        on_edge = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])  # may continue beyond
        settled[on_edge[on_edge > 0] - 1] = False
        for pairs in (shared_edges(ids[:, :-1], ids[:, 1:]), shared_edges(ids[:-1], ids[1:])):
            both = settled[pairs[0] - offset - 1] & settled[pairs[1] - offset - 1]
            patches.touching.append(pairs[:, ~both].astype(np.int32))
        frontier.advance(window, ids, data)
    return patches

def sieve_groups(size: np.ndarray, value: np.ndarray, touching: np.ndarray, threshold: int) -> np.ndarray:
    """Each patch's group after sieving: a group under ``threshold`` pixels joins its largest
    neighbour (then the one sharing the longest edge, then the lower class), in rounds until every
    group left under it has no neighbour (an island in nodata). A group only joins one larger than
    itself (ties: by id), so chains end and nothing cycles. ``touching``: (3, k) patch pairs and
    their shared edge lengths. Numpy throughout: maps hold millions of patches."""
    n = len(size)
    group = np.arange(n)
    a, b, length = touching
    while True:
        group_size = np.bincount(group, weights=size, minlength=n)
        ga, gb = group[a], group[b]
        apart = ga != gb
        from_a = apart & (group_size[ga] < threshold)  # directed: from a small group to its neighbour
        from_b = apart & (group_size[gb] < threshold)
        src = np.concatenate([ga[from_a], gb[from_b]])
        dst = np.concatenate([gb[from_a], ga[from_b]])
        edge = np.concatenate([length[from_a], length[from_b]])
        pairs, index = np.unique(np.stack([src, dst]), axis=1, return_inverse=True)
        if not pairs.size:
            return group
        src, dst = pairs
        edge = np.bincount(index.ravel(), weights=edge, minlength=pairs.shape[1])
        order = np.lexsort((dst, -value[dst], edge, group_size[dst], src))
        last = np.flatnonzero(np.r_[src[order][1:] != src[order][:-1], True])
        src, best = src[order][last], dst[order][last]
        up = (group_size[best] > group_size[src]) | ((group_size[best] == group_size[src]) & (best > src))
        if not up.any():
            return group
        target = np.arange(n)
        target[src[up]] = best[up]
        while True:  # follow chains to a group that stays
            following = target[target]
            if np.array_equal(following, target):
                break
            target = following
        group = target[group]

def sieved_classes(patches: Patches, threshold: int) -> np.ndarray:
    """The class each patch (by global id; 0: none) has once the sieve has run."""
    n = patches.offsets[-1]
    none = np.zeros(1, np.int32)  # id 0: no patch
    value = np.concatenate([none, *patches.value])
    count = np.concatenate([none, *patches.count])
    seams = np.hstack([np.zeros((2, 0), np.int32), *patches.seams])
    graph = coo_matrix((np.ones(seams.shape[1], np.int8), (seams[0], seams[1])), shape=(n + 1, n + 1))
    _, root = connected_components(graph, directed=False)
    root_value = np.zeros(root.max() + 1, np.int32)
    root_value[root] = value
    root_size = np.bincount(root, weights=count)
    touching = np.hstack([np.zeros((3, 0), np.int32), *patches.touching])
    touching = np.vstack([root[touching[0]], root[touching[1]], touching[2]])
    touching = touching[:, touching[0] != touching[1]]
    return root_value[sieve_groups(root_size, root_value, touching, threshold)[root]]

class SievedReader:
    """Blocks of the map after the sieve: each block labelled as in the first pass, each patch given
    the class it ends with."""

    def __init__(self, read: MapReader, blocks: list[Window], patches: Patches, threshold: int) -> None:
        self.read = read
        self.offsets = {(w.row_off, w.col_off): patches.offsets[i] for i, w in enumerate(blocks)}
        self.classes = sieved_classes(patches, threshold)

    def __call__(self, window: Window) -> Pixels:
        data, valid = self.read(window)
        labels, _ = label_patches(data, valid)
        return self.classes[np.where(labels > 0, labels + self.offsets[window.row_off, window.col_off], 0)], labels > 0
