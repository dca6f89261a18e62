"""The run folder `train` writes into: its layout (the names below, one place), whether ``--out``
may start a new run or resume one, and reading what a run recorded.

Kept free of heavy imports so that the CLI refuses a bad ``--out`` at once, before PyTorch and
Lightning load (about 10 s on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

from .errors import SparsecoverError

CONFIG = "config.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
HISTORY = "history.csv"  # one row per finished epoch: written by history.EpochTable, read by read_history
HISTORY_COLUMNS = ["epoch", "train_loss", "valid_loss", "accuracy", "macro_f1", "lr", "time_s"]
MODEL_DIR = "model"  # model.json + weights.safetensors (sparsecover.modelfile)
PACKAGE_NAME = "model.sparsecover"  # the one-file package written at the end of every run
METRICS = "metrics.json"  # validation metrics of the final model on the held-out polygons
LR_PLOT = "lr_find.png"  # the LR range test, when the LR was found


def member_folder(run: Path, index: int) -> Path:
    """Where ensemble member ``index`` (0-based) keeps checkpoints and history: the run folder for
    the first (a one-member run looks as it always did), ``member2``, ``member3``... for the others."""
    return run if index == 0 else run / f"member{index + 1}"


def check_run_folder(run: Path, resume: bool) -> None:
    """Refuse an ``--out`` that is a file, a used folder for a new run, or a folder without a run to resume."""
    if run.exists() and not run.is_dir():
        raise SparsecoverError(f"{run}: is a file; --out names the run folder to create")
    if resume:
        if (run / PACKAGE_NAME).exists() and not (run / LAST_CHECKPOINT).exists():
            raise SparsecoverError(f"{run}: this run has finished ({PACKAGE_NAME} is there); nothing to resume")
        if not (run / CONFIG).exists() or not (run / LAST_CHECKPOINT).exists():
            raise SparsecoverError(f"{run}: nothing to resume (no {CONFIG} and {LAST_CHECKPOINT.as_posix()})")
    elif run.exists() and any(run.iterdir()):
        raise SparsecoverError(f"{run}: run folder exists and is not empty; use --resume or a new --out")


def read_history(folder: Path) -> list[dict[str, str]]:
    """The rows of ``folder``'s history.csv (none before the first epoch has ended), as strings."""
    import csv

    if not (folder / HISTORY).exists():
        return []
    with (folder / HISTORY).open() as fh:
        return list(csv.DictReader(fh))


def unfinished(run: Path) -> str | None:
    """Why ``run`` holds no finished model (a killed or failed run), or None when it has one."""
    if (run / PACKAGE_NAME).exists():
        return None
    import json

    epochs = json.loads((run / CONFIG).read_text())["settings"].get("epochs")
    done = len(read_history(run))
    return (f"{run}: training did not finish ({done} of {epochs} epochs in {HISTORY}, no {PACKAGE_NAME}); "
            f"continue it with `sparsecover train CHIPS --out {run} --resume`")
