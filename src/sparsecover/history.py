"""What a training run shows and records as its epochs end: the progress bar, and the epoch table
printed and kept in ``history.csv`` (read back by :meth:`sparsecover.runfolder.RunFolder.history`)."""

from __future__ import annotations

import csv
import os
import time

from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from .runfolder import HISTORY, HISTORY_COLUMNS, RunFolder


class EpochBar(TQDMProgressBar):
    """Lightning's progress bar, counting epochs as people do: "Epoch 1/10" to "Epoch 10/10"."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")


class EpochTable(Callback):
    """Prints one row per epoch and keeps history.csv complete, across --resume too."""

    def __init__(self, folder: RunFolder, quiet: bool) -> None:
        self.folder = folder
        self.quiet = quiet
        self.started = 0.0
        self.rows: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        start = trainer.current_epoch  # restored from the checkpoint by now, when resuming
        if not trainer.is_global_zero:
            return
        self.rows = [r for r in self.folder.history() if int(r["epoch"]) < start]
        self._write()
        if not self.quiet and not self.rows:
            print("  ".join(f"{c:>10}" for c in HISTORY_COLUMNS))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row = {
            "epoch": trainer.current_epoch,
            "train_loss": _metric(metrics, "train_loss"),
            "valid_loss": _metric(metrics, "valid_loss"),
            "accuracy": _metric(metrics, "accuracy"),
            "macro_f1": _metric(metrics, "macro_f1"),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
            "time_s": round(time.perf_counter() - self.started, 2),
        }
        self.rows.append(row)
        self._write()
        if not self.quiet:
            # people count epochs from 1 (the bar says "Epoch 1/10"); history.csv keeps Lightning's index
            shown = {**row, "epoch": f"{row['epoch'] + 1}/{trainer.max_epochs}"}
            print("  ".join(_fmt(shown[c]) for c in HISTORY_COLUMNS), flush=True)

    def _write(self) -> None:
        tmp = self.folder.root / f".{HISTORY}.tmp"
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, HISTORY_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.folder.history_file)


def _metric(metrics: dict, name: str) -> float | str:
    value = metrics.get(name)
    return "" if value is None else float(value)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:>10.4g}"
    return f"{value!s:>10}"
