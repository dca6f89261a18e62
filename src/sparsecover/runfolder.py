"""The run folder `train` writes into: :class:`RunFolder` knows where each of its files lies, whether
``--out`` may start a new run or resume one, and reads what a run recorded.

Kept free of heavy imports so that the CLI refuses a bad ``--out`` at once, before PyTorch and
Lightning load (about 10 s on 2 cores).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import SparsecoverError

CONFIG = "config.json"  # the settings the run started with (the LR found included), for --resume and report
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
HISTORY = "history.csv"  # one row per finished epoch: written by history.EpochTable, read by RunFolder.history
HISTORY_COLUMNS = ["epoch", "train_loss", "valid_loss", "accuracy", "macro_f1", "lr", "time_s"]
MODEL_DIR = "model"  # model.json + weights.safetensors (sparsecover.modelfile)
PACKAGE_NAME = "model.sparsecover"  # the one-file package written at the end of every run
METRICS = "metrics.json"  # validation metrics of the final model on the held-out polygons
LR_PLOT = "lr_find.png"  # the LR range test, when the LR was found


@dataclass(frozen=True)
class RunFolder:
    """One training run on disk. Ensemble members other than the first keep their checkpoints and
    history in ``member2``, ``member3``... (see :meth:`member`)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def last_checkpoint(self) -> Path:
        return self.root / LAST_CHECKPOINT

    @property
    def checkpoints(self) -> Path:
        return self.last_checkpoint.parent

    @property
    def history_file(self) -> Path:
        return self.root / HISTORY

    @property
    def model(self) -> Path:
        return self.root / MODEL_DIR

    @property
    def package(self) -> Path:
        return self.root / PACKAGE_NAME

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def lr_plot(self) -> Path:
        return self.root / LR_PLOT

    @property
    def refit(self) -> RunFolder:
        """Where the refit on every polygon (``TrainConfig.refit``) keeps its checkpoints and history."""
        return RunFolder(self.root / "refit")

    def member(self, index: int) -> RunFolder:
        """Where ensemble member ``index`` (0-based) keeps checkpoints and history: the run folder for
        the first (a one-member run looks as it always did), ``member2``, ``member3``... for the others."""
        return self if index == 0 else RunFolder(self.root / f"member{index + 1}")

    def check(self, resume: bool) -> None:
        """Refuse an ``--out`` that is a file, a used folder for a new run, or a folder without a run to resume."""
        run = self.root
        if run.exists() and not run.is_dir():
            raise SparsecoverError(f"{run}: is a file; --out names the run folder to create")
        if resume:
            if self.package.exists() and not self.last_checkpoint.exists():
                raise SparsecoverError(f"{run}: this run has finished ({PACKAGE_NAME} is there); nothing to resume")
            if not self.config.exists() or not self.last_checkpoint.exists():
                raise SparsecoverError(f"{run}: nothing to resume (no {CONFIG} and {LAST_CHECKPOINT.as_posix()})")
        elif run.exists() and any(run.iterdir()):
            raise SparsecoverError(f"{run}: run folder exists and is not empty; use --resume or a new --out")

    def remove_partials(self) -> None:
        """Hidden partial files a killed run left (a package cut short): the run that finishes it removes them."""
        for stale in self.root.glob(".*.partial*"):
            if stale.is_file():
                stale.unlink()

    def write_settings(self, settings: dict, version: str) -> None:
        self.config.write_text(json.dumps({"settings": settings, "sparsecover_version": version}, indent=1))

    def settings(self) -> dict:
        """The settings the run started with; one clear error where ``root`` holds no run."""
        if not self.config.exists():
            raise SparsecoverError(f"{self.root}: not a training run folder (no {CONFIG})")
        return json.loads(self.config.read_text())["settings"]

    def history(self) -> list[dict[str, str]]:
        """The rows of history.csv (none before the first epoch has ended), as strings."""
        if not self.history_file.exists():
            return []
        with self.history_file.open() as fh:
            return list(csv.DictReader(fh))

    def validation_metrics(self) -> dict | None:
        """The final model's metrics on the held-out polygons (None: no validation split)."""
        return json.loads(self.metrics.read_text()) if self.metrics.exists() else None

    def unfinished(self) -> str | None:
        """Why the run holds no finished model (a killed or failed run), or None when it has one."""
        if self.package.exists():
            return None
        epochs = self.settings().get("epochs")
        return (f"{self.root}: training did not finish ({len(self.history())} of {epochs} epochs in {HISTORY}, "
                f"no {PACKAGE_NAME}); continue it with `sparsecover train CHIPS --out {self.root} --resume`")
