"""The run folder `train` writes into: whether ``--out`` may start a new run or resume one.

Kept free of heavy imports so that the CLI refuses a bad ``--out`` at once, before PyTorch and
Lightning load (about 10 s on 2 cores).
"""

from __future__ import annotations

from pathlib import Path

from .errors import SparsecoverError

CONFIG = "config.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


def check_run_folder(run: Path, resume: bool) -> None:
    """Refuse an ``--out`` that is a file, a used folder for a new run, or a folder without a run to resume."""
    if run.exists() and not run.is_dir():
        raise SparsecoverError(f"{run}: is a file; --out names the run folder to create")
    if resume:
        if not (run / CONFIG).exists() or not (run / LAST_CHECKPOINT).exists():
            raise SparsecoverError(f"{run}: nothing to resume (no {CONFIG} and {LAST_CHECKPOINT.as_posix()})")
    elif run.exists() and any(run.iterdir()):
        raise SparsecoverError(f"{run}: run folder exists and is not empty; use --resume or a new --out")
