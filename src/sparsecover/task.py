"""The LightningModule that trains a network from sparse labels: supervised loss on the labelled
pixels, pseudo-labels on the unlabelled ones, AdamW with a one-cycle schedule, validation metrics."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from .data import IGNORE_INDEX, UNLABELLED
from .metrics import summarize
from .model import PooledNetwork, build_model, context_of, pool


def strong_view(image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A strongly perturbed copy of a normalised batch, aligned pixel for pixel with it.

    Per sample and band: gain in [0.7, 1.3] and offset in [-0.3, 0.3] (in standard deviations),
    Gaussian noise of 0.1, and one cut-out square of a quarter to half the chip side set to the band
    mean (0). The model must then predict a pixel from weaker evidence, or from its neighbourhood only.
    """
    n, bands, height, width = image.shape
    opts = {"device": image.device, "dtype": image.dtype}
    gain = 0.7 + 0.6 * torch.rand(n, bands, 1, 1, generator=generator, **opts)
    offset = 0.6 * torch.rand(n, bands, 1, 1, generator=generator, **opts) - 0.3
    noise = 0.1 * torch.randn(image.shape, generator=generator, **opts)
    strong = image * gain + offset + noise
    rows = torch.arange(height, device=image.device)[:, None]
    cols = torch.arange(width, device=image.device)[None, :]
    side = torch.randint(max(1, height // 4), max(2, height // 2 + 1), (n,), device=image.device)
    top = (torch.rand(n, device=image.device) * (height - side + 1)).long()
    left = (torch.rand(n, device=image.device) * (width - side + 1)).long()
    cut = ((rows[None] >= top[:, None, None]) & (rows[None] < (top + side)[:, None, None])
           & (cols[None] >= left[:, None, None]) & (cols[None] < (left + side)[:, None, None]))
    return strong.masked_fill(cut[:, None], 0.0)



class SegmentationTask(L.LightningModule):
    """Cross-entropy on labelled pixels, plus pseudo-labels on unlabelled ones; AdamW + one-cycle.

    Semi-supervised in the FixMatch manner (Sohn et al. 2020), per pixel: the model's own prediction
    on the (weakly augmented) chip becomes the target of a strongly perturbed copy of the chip
    wherever it is confident (>= ``pseudo_threshold``); for a pooled network, the pool's prediction
    (:meth:`pseudo_labels`). The many unlabelled pixels around and between
    the polygons then shape the decision boundaries, and the network cannot simply memorise the few
    labelled ones. The labelled pixels are learned from both copies (the mean of the two losses):
    under the strong copy's colour shifts and cut-outs a network must tell its classes apart by more
    than the exact colours of a few polygons, which the rest of a scene (other dates, other tiles of
    a mosaic) does not repeat. ``unlabelled_weight`` 0 turns it off (supervised only, half the compute).
    """

    def __init__(self, num_bands: int, num_classes: int, class_weights: list[float], backbone: str,
                 architecture: str, lr: float, weight_decay: float, weights: str | None = None,
                 band_names: list[str] | None = None, encoder_depth: int = 5, unlabelled_weight: float = 0.0,
                 pseudo_threshold: float = 0.9, spectral: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(num_bands, num_classes, backbone, architecture, weights, band_names, encoder_depth,
                                 spectral)
        # per pixel, summed by us: CUDA has no deterministic kernel for a reduced (sum/mean)
        # cross-entropy, and training runs with torch.use_deterministic_algorithms
        self.loss = nn.CrossEntropyLoss(weight=torch.tensor(class_weights, dtype=torch.float32),
                                        ignore_index=IGNORE_INDEX, reduction="none")
        self.lr = lr
        self.valid_loss = MeanMetric()
        self.train_loss = MeanMetric()
        self.confusion = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _supervised(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class-weighted mean cross-entropy over labelled pixels, and the total weight it averaged."""
        labelled = target != IGNORE_INDEX
        weight = self.loss.weight[target[labelled]].sum() if labelled.any() else logits.new_tensor(0.0)
        return self.loss(logits, target).sum() / weight.clamp_min(1e-8), weight

    def training_step(self, batch, batch_idx):
        image, target = batch
        n = len(image)
        unlabelled = target == UNLABELLED
        labelled_target = target.masked_fill(unlabelled, IGNORE_INDEX)
        semi = self.hparams.unlabelled_weight > 0 and bool(unlabelled.any())
        # the losses train the context network; a pooled network's spectral model is already fitted
        logits = context_of(self.model)(torch.cat([image, strong_view(image)]) if semi else image)
        loss, weight = self._supervised(logits[:n], labelled_target)
        self.train_loss.update(loss.detach(), weight.detach())  # the clean view's: comparable to validation
        self.log("train_loss", self.train_loss, on_step=False, on_epoch=True)
        if semi:
            # the labelled pixels under the strong view too (see the class docstring)
            loss = 0.5 * (loss + self._supervised(logits[n:], labelled_target)[0])
            confidence, pseudo = self.pseudo_labels(image, logits[:n].detach())
            confident = unlabelled & (confidence >= self.hparams.pseudo_threshold)
            per_pixel = nn.functional.cross_entropy(logits[n:], pseudo, reduction="none")
            loss = loss + self.hparams.unlabelled_weight * (per_pixel * confident).sum() / unlabelled.sum()
        return loss

    def pseudo_labels(self, image: torch.Tensor, context_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per pixel of the weakly augmented ``image``, the confidence and the class of the model that
        makes the map, from the context network's ``context_logits`` on it.

        For a pooled network that is the pool of the context network and the per-pixel model
        (co-training, Blum and Mitchell 1998: a second view of the same pixels labels the unlabelled
        ones for the first; here the per-pixel view, held fixed, teaches the network): the network
        then learns the scene's unlabelled pixels from a teacher that its own guesses about
        surroundings it has never seen cannot sway alone. See
        benchmarks/results/sparse_accuracy_cotraining_2026-12-04.txt.
        """
        if isinstance(self.model, PooledNetwork):
            with torch.no_grad():
                context_logits = pool(context_logits, self.model.spectral(image))
        return context_logits.float().softmax(1).max(1)

    def validation_step(self, batch, batch_idx):
        image, target = batch
        logits = self(image)
        loss, weight = self._supervised(logits, target)
        if weight > 0:
            self.valid_loss.update(loss, weight)
        self.confusion.update(logits.argmax(1), target)

    def on_validation_epoch_end(self) -> None:
        matrix = self.confusion.compute().cpu().numpy()
        self.confusion.reset()
        summary = summarize(matrix)
        self.log("valid_loss", self.valid_loss.compute(), sync_dist=True)
        self.valid_loss.reset()
        self.log("accuracy", _finite(summary["overall_accuracy"]))
        self.log("macro_f1", _finite(summary["macro_f1"]))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # the chip order, the augmentation and the strong views draw from torch's RNG: a resumed run
        # continues its stream and so repeats the uninterrupted run's epochs exactly
        # (numpy's global RNG is not used: per-sample generators are seeded from torch's)
        checkpoint["rng_state"] = {"torch": torch.get_rng_state(),
                                   "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("rng_state")
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.hparams.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        # OneCycleLR divides by zero when the warm-up phase ends exactly on step 0 (4 steps x 0.25)
        warmup = 0.25 if total != 4 else 0.3
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=total,
                                                        pct_start=warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}



def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) else value

