"""The run folder `train` writes into: whether ``--out`` may start a new run or resume one.

Kept free of heavy imports so that the CLI refuses a bad ``--out`` at once, before PyTorch and
Lightning load (about 10 s on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

from .errors import SparsecoverError

CONFIG = "config.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
HISTORY = "history.csv"
MODEL_DIR = "model"
PACKAGE_NAME = "model.sparsecover"  # the one-file package written at the end of every run


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


def unfinished(run: Path) -> str | None:
    """Why ``run`` holds no finished model (a killed or failed run), or None when it has one."""
    if (run / PACKAGE_NAME).exists():
        return None
    import csv
    import json

    epochs = json.loads((run / CONFIG).read_text())["settings"].get("epochs")
    done = 0
    if (run / HISTORY).exists():
        with (run / HISTORY).open() as fh:
            done = sum(1 for _ in csv.DictReader(fh))
    return (f"{run}: training did not finish ({done} of {epochs} epochs in {HISTORY}, no {PACKAGE_NAME}); "
            f"continue it with `sparsecover train CHIPS --out {run} --resume`")
