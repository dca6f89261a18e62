"""The training settings: one dataclass whose defaults are `sparsecover train`'s, the Python API's
and config.json's, and the range checks every entry point applies.

Kept free of PyTorch, so that the CLI builds its options from these defaults without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import SparsecoverError

#: AdamW's learning rate for a network trained from scratch: the peak of the one-cycle schedule.
DEFAULT_LR = 1e-3
# Settings that may differ between a run and its --resume (the rest must match).
RESUMABLE_DIFFERENCES = {"workers", "quiet", "resume", "onnx", "keep_checkpoints"}
# What a run made before a setting existed did (its config.json lacks the key).
SETTINGS_BEFORE_THEY_EXISTED = {"members": 1, "patch_size": None, "spectral": False, "refit": False}


@dataclass
class TrainConfig:
    """Every training setting; stored in config.json and compared on --resume."""

    backbone: str = "resnet34"
    architecture: str = "unet"
    encoder_depth: int = 3
    epochs: int = 10
    lr: float | None = DEFAULT_LR  # None: run the LR finder first
    batch_size: int = 8
    val_fraction: float = 0.2
    ignore_classes: list[int] = field(default_factory=list)
    class_weights: str = "auto"  # auto | none
    device: str = "auto"  # auto | cpu | cuda | mps
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32"
    weights: str | None = None  # none | imagenet | PATH
    seed: int = 42
    early_stopping: int | None = None
    workers: int = 0
    bands: list[str] | None = None
    imagery_type: str | None = None
    weight_decay: float = 1e-2
    unlabelled_weight: float = 1.0  # weight of the pseudo-label loss on unlabelled pixels; 0 = supervised only
    pseudo_threshold: float = 0.9  # confidence a pseudo-label needs
    members: int = 1  # networks trained from other random starts and averaged (an ensemble); costs members x
    patch_size: int | None = 128  # train on random patches of this size cut from larger chips; None = whole chips
    spectral: bool = True  # pool the network with a per-pixel spectral model (model.PooledNetwork)
    refit: bool = True  # after the validated fit, train the packaged model again on every polygon
    onnx: bool = False  # also put model.onnx (+ model.emd) into the package
    keep_checkpoints: bool = False  # keep checkpoints/ (2 x the model, with optimizer state) after a finished run
    quiet: bool = False
    resume: bool = False


def check_ranges(config: TrainConfig) -> None:
    """Refuse settings out of range before any work: the CLI and the Python API pass through here."""
    rules = [
        (config.epochs >= 1, f"--epochs must be at least 1, got {config.epochs}"),
        (config.members >= 1, f"--members must be at least 1, got {config.members}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (0 <= config.val_fraction < 1, f"--val-fraction must be in [0, 1), got {config.val_fraction}"),
        (config.lr is None or config.lr > 0, f"--lr must be a positive number or auto, got {config.lr}"),
        (config.unlabelled_weight >= 0, f"--unlabelled-weight must be 0 or more, got {config.unlabelled_weight}"),
        (0 <= config.pseudo_threshold <= 1, f"--pseudo-threshold must be in [0, 1], got {config.pseudo_threshold}"),
        (config.weight_decay >= 0, f"weight_decay must be 0 or more, got {config.weight_decay}"),
        (config.workers >= 0, f"--workers must be 0 or more, got {config.workers}"),
        (config.early_stopping is None or config.early_stopping >= 1,
         f"--early-stopping must be at least 1, got {config.early_stopping}"),
        (not config.patch_size or (config.patch_size > 0 and config.patch_size % 32 == 0),
         f"--patch-size must be a multiple of 32 (or 0 for whole chips), got {config.patch_size}"),
        (config.class_weights in ("auto", "none"), f"--class-weights must be auto or none, got {config.class_weights!r}"),
    ]
    for ok, message in rules:
        if not ok:
            raise SparsecoverError(message)
