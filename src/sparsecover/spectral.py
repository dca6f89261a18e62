"""Fitting the per-pixel spectral model that a pooled network carries (see model.PooledNetwork).

It learns from the labelled pixels alone, before the context network's training, and is then held
fixed: the pool's two halves must stay independent opinions, and a per-pixel model converges in
seconds where the network needs epochs. Deterministic for a seed, and without touching torch's global
random stream, so that a resumed run repeats the same model.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .model import SpectralModel

#: Labelled pixels the spectral model learns from at most (drawn evenly from the chips): enough for a
#: few dozen weights per band, and a bound on memory with large exports.
MAX_PIXELS = 1_000_000
STEPS = 2000
BATCH = 1024
LR = 1e-3
WEIGHT_DECAY = 1e-4


def fit_spectral(model: SpectralModel, pixels: np.ndarray, classes: np.ndarray, class_weights: list[float],
                 seed: int) -> None:
    """Adam on class-weighted cross-entropy (the same weights as the network's loss, so that both
    halves of the pool lean the same way and the decision offsets correct them together); the
    learning rate decays to 0 along a cosine. The model is then frozen."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a start of its own, not a draw from the global stream
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d):
                bound = 1 / layer.in_channels**0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
    model.requires_grad_(True)
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
    y = torch.from_numpy(classes)
    loss_of = nn.CrossEntropyLoss(weight=torch.tensor(class_weights, dtype=torch.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, STEPS)
    threads = torch.get_num_threads()
    # one thread: its operations are too small to share out, and on a busy machine threads that wait
    # for each other make the fit many times slower
    torch.set_num_threads(1)
    try:
        for _ in range(STEPS if len(y) else 0):
            batch = torch.randint(len(y), (min(BATCH, len(y)),), generator=generator)
            loss = loss_of(model.of_pixels(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    model.requires_grad_(False)
