"""`sparsecover train` / `lr-find`: a segmentation network from a chip dataset, on PyTorch Lightning.

Lightning brings devices, mixed precision, DDP (multi-GPU, multi-node) and checkpointing; this
module adds what sparse land-cover labels need: a validation split by spatial group, the per-pixel
spectral model fitted first, the LR range test, early stopping with the best weights restored,
ensembles, and ``--resume`` that refuses a run made with other settings. The losses are
:class:`sparsecover.task.SegmentationTask`'s; the epoch table is :mod:`sparsecover.history`'s.

A run folder holds ``config.json``, ``history.csv``, ``checkpoints/`` (last and best; removed when
the run finishes unless ``keep_checkpoints``), ``logs/``, ``lr_find.png`` when the LR was found,
``metrics.json`` (validation per-class metrics of the final model), ``model/`` (``model.json`` +
``weights.safetensors``, readable as they are) and the same as one package file,
``model.sparsecover`` (see :mod:`sparsecover.modelfile`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import logging
import math
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from . import __version__
from .chips import ChipDataset
from .combine import dataset_hash, dataset_roots, open_chip_datasets
from .data import (
    IGNORE_INDEX,
    ChipTorchDataset,
    ClassMapping,
    Normalisation,
    Split,
    class_mapping,
    class_weights,
    select_bands,
    spatial_split,
)
from .errors import SparsecoverError
from .history import EpochBar, EpochTable
from .metrics import summarize
from .model import Ensemble, check_network, decision_offsets
from .modelfile import SCHEMA_MAJOR, ModelJson, write_model_folder
from .runfolder import RunFolder
from .spectral import MAX_PIXELS, fit_spectral
from .task import SegmentationTask
from .trainconfig import (DEFAULT_LR, RESUMABLE_DIFFERENCES, SETTINGS_BEFORE_THEY_EXISTED, TrainConfig,
                          check_ranges)

#: The LR finder's suggestion is capped here. On few chips its training loss can fall all the way
#: to LR 1 (BatchNorm absorbs the steps) and it suggested 0.1 for 1 m NAIP, where validation loss
#: then blew up to 1e14; 4.7e-3 blew up too (benchmarks/results/sparse_accuracy_2026-11-28.txt).
MAX_SUGGESTED_LR = 3e-3


@dataclass
class Prepared:
    """A chip dataset made ready for training: classes, bands, normalisation, split, torch datasets."""

    dataset: ChipDataset
    mapping: ClassMapping
    band_indices: list[int]
    band_names: list[str]
    normalisation: Normalisation
    split: Split
    train: ChipTorchDataset
    valid: ChipTorchDataset | None
    weights: list[float]


ChipsArg = str | Path | list[str | Path] | ChipDataset  # one dataset folder, several, or an opened one


def check_settings(config: TrainConfig) -> None:
    """Refuse settings out of range, and a network that cannot be built, before any work."""
    check_ranges(config)
    check_network(config.backbone, config.architecture, config.encoder_depth)


def prepare(chips: ChipsArg, config: TrainConfig) -> Prepared:
    """Open chip dataset(s) and build the class mapping, normalisation and leak-free split."""
    check_settings(config)
    dataset = chips if isinstance(chips, ChipDataset) else open_chip_datasets(chips)
    if len(dataset) == 0:
        raise SparsecoverError(f"{dataset.root}: the chip dataset holds no chips")
    mapping = class_mapping(dataset, list(config.ignore_classes))
    band_indices, band_names = select_bands(dataset, config.bands, config.imagery_type)
    stats = [dataset.statistics[i] for i in band_indices]
    normalisation = Normalisation.from_statistics(stats)
    split = spatial_split(dataset, mapping, config.val_fraction, config.seed)
    group_sets = [set(c.group_ids) for c in dataset.chips]
    if not any(g for g in group_sets):  # Esri: chip group ids are known once groups are computed
        dataset.groups  # noqa: B018 - fills chip.group_ids
        group_sets = [set(c.group_ids) for c in dataset.chips]
    # semi-supervised training learns from every chip (also unlabelled ones, `export --all-tiles`)
    train_idx = [i for i, g in enumerate(group_sets) if g & split.train_groups or config.unlabelled_weight > 0]
    valid_idx = [i for i, g in enumerate(group_sets) if g & split.valid_groups]
    common = dict(dataset=dataset, mapping=mapping, normalisation=normalisation, bands=band_indices)
    train = ChipTorchDataset(indices=train_idx, own_groups=split.train_groups, train=True, patch=config.patch_size,
                             **common)
    valid = (
        ChipTorchDataset(indices=valid_idx, own_groups=split.valid_groups, train=False, score_once=True, **common)
        if valid_idx
        else None
    )
    weights = (
        class_weights(dataset, mapping, split.train_groups)
        if config.class_weights == "auto"
        else [1.0] * len(mapping.values)
    )
    return Prepared(dataset, mapping, band_indices, band_names, normalisation, split, train, valid, weights)


def _accelerator(device: str) -> str:
    if device == "cuda" and not torch.cuda.is_available():
        raise SparsecoverError("--device cuda asked for, but no CUDA GPU is available; use --device auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise SparsecoverError("--device mps asked for, but MPS is not available; use --device auto or cpu")
    if device not in ("auto", "cpu", "cuda", "mps"):
        raise SparsecoverError(f"--device must be auto, cpu, cuda or mps, got {device!r}")
    return {"cuda": "gpu"}.get(device, device)


def _loaders(prepared: Prepared, config: TrainConfig) -> tuple[DataLoader, DataLoader | None]:
    # page-locked batches let Lightning copy them to a GPU without blocking the next step
    cuda = config.device in ("auto", "cuda") and torch.cuda.is_available()
    kwargs = dict(batch_size=config.batch_size, num_workers=config.workers,
                  persistent_workers=config.workers > 0, pin_memory=cuda)
    train = DataLoader(prepared.train, shuffle=True, drop_last=len(prepared.train) > config.batch_size, **kwargs)
    valid = DataLoader(prepared.valid, shuffle=False, **kwargs) if prepared.valid is not None else None
    return train, valid


def _quiet_lightning(quiet: bool) -> None:
    """Lightning's banners (devices, tips, checkpoint paths) are noise next to the epoch table."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*val_dataloader.*Skipping val loop.*")
    warnings.filterwarnings("ignore", message=".*weights_only.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*smaller than the logging interval.*")


def _loggers(run: Path | None) -> list | bool:
    """CSV logs always; TensorBoard too when it is installed."""
    if run is None:
        return False
    loggers = [CSVLogger(run, name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run, name="logs", version="tensorboard"))
    except ImportError:
        pass
    return loggers


def _trainer(config: TrainConfig, run: Path | None, callbacks: list, max_epochs: int,
             root: Path | None = None) -> L.Trainer:
    return L.Trainer(
        accelerator=_accelerator(config.device),
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        precision=config.precision,
        max_epochs=max_epochs,
        callbacks=callbacks + ([EpochBar()] if not config.quiet else []),
        logger=_loggers(run),
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=not config.quiet,
        enable_model_summary=False,
        deterministic=True,
        log_every_n_steps=1,
        default_root_dir=run or root,
    )


def find_lr(prepared: Prepared, config: TrainConfig, plot: Path | None = None) -> float:
    """LR range test (exponential sweep 1e-6..1 over 100 steps); returns the suggested LR.

    The sweep trains on the labelled pixels alone (the semi-supervised term would double its cost
    and says nothing about the LR the labels tolerate), on the same training patches as ``train``.
    """
    _quiet_lightning(config.quiet)
    L.seed_everything(config.seed, workers=True, verbose=False)
    task = _task(prepared, replace(config, unlabelled_weight=0.0), lr=DEFAULT_LR)
    train, _ = _loaders(prepared, config)
    steps = 100
    if not config.quiet:
        print(f"LR finder: {steps} steps of {config.batch_size} patches", flush=True)
    from lightning.pytorch.tuner import Tuner

    # the finder saves and restores the network through a checkpoint file in the trainer's folder:
    # a temporary one, so that a killed lr-find leaves no 100 MB file among the user's
    with tempfile.TemporaryDirectory(prefix="sparsecover-lr-find-") as scratch:
        trainer = _trainer(config, None, [], max_epochs=steps // max(1, len(train)) + 2, root=Path(scratch))
        # Lightning's LR finder always draws its own tqdm bar (on stderr): swallow it when quiet
        with contextlib.redirect_stderr(io.StringIO()) if config.quiet else contextlib.nullcontext():
            finder = Tuner(trainer).lr_find(task, train_dataloaders=train, min_lr=1e-6, max_lr=1.0,
                                            num_training=steps, update_attr=False, early_stop_threshold=None)
    suggestion = _suggest(finder.results["lr"], finder.results["loss"]) if finder is not None else DEFAULT_LR
    if plot is not None and finder is not None:
        plot_lr_curve(finder.results["lr"], finder.results["loss"], suggestion, plot)
    return float(suggestion)


def plot_lr_curve(lrs: list[float], losses: list[float], suggestion: float, path: Path) -> None:
    """The LR range test's smoothed loss against LR (log axis), with the suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title("LR range test")
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _suggest(lrs: list[float], losses: list[float]) -> float:
    """A tenth of the LR where the smoothed loss is lowest (robust where the steepest slope is
    noise), at most ``MAX_SUGGESTED_LR``."""
    pairs = [(lr, loss) for lr, loss in zip(lrs, losses) if math.isfinite(loss)]
    pairs = pairs[len(pairs) // 10 :]  # the first points of the smoothed curve are mostly bias
    if len(pairs) < 3:
        return DEFAULT_LR
    lr_at_min = min(pairs, key=lambda p: p[1])[0]
    return float(min(lr_at_min / 10, MAX_SUGGESTED_LR))


def _task(prepared: Prepared, config: TrainConfig, lr: float) -> SegmentationTask:
    return SegmentationTask(
        num_bands=len(prepared.band_indices), num_classes=len(prepared.mapping.values),
        class_weights=prepared.weights, backbone=config.backbone, architecture=config.architecture,
        lr=lr, weight_decay=config.weight_decay, weights=config.weights, band_names=prepared.band_names,
        encoder_depth=config.encoder_depth, unlabelled_weight=config.unlabelled_weight,
        pseudo_threshold=config.pseudo_threshold, spectral=config.spectral,
    )


def _check_resume(run: RunFolder, config: TrainConfig, dataset: ChipDataset) -> None:
    saved = run.settings()
    current = {**asdict(config), "dataset": dataset_roots(dataset)}
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_DIFFERENCES or key == "lr":
            continue
        if saved.get(key, SETTINGS_BEFORE_THEY_EXISTED.get(key)) != current.get(key):
            raise SparsecoverError(
                f"{run.root}: --resume with other settings: {key} was {saved.get(key)!r}, "
                f"now {current.get(key)!r}; rerun with the same settings or use a new --out"
            )
    # a checkpoint cut short (disk full, killed mid-write) fails deep in torch
    for path in [f.last_checkpoint for k in range(config.members) for f in (run.member(k), run.member(k).refit)]:
        if path.exists():
            try:
                torch.load(path, map_location="cpu", weights_only=False)
            except Exception as exc:
                raise SparsecoverError(f"{path}: damaged checkpoint ({str(exc).splitlines()[0]}); this run cannot be "
                                       "resumed: train again with a new --out") from None


def train(chips: ChipsArg, out: str | Path, config: TrainConfig | None = None) -> Path:
    """Train a model on chip dataset(s) into the run folder ``out``; returns the run folder."""
    config = config or TrainConfig()
    run = RunFolder(Path(out))
    check_settings(config)
    _accelerator(config.device)
    run.check(config.resume)
    prepared = prepare(chips, config)
    if config.resume:
        _check_resume(run, config, prepared.dataset)
        return _train(prepared, run, config, run.settings()["lr"])
    existed = run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    try:
        lr = config.lr if config.lr is not None else find_lr(prepared, config, run.lr_plot)
        run.write_settings({**asdict(config), "lr": lr, "dataset": dataset_roots(prepared.dataset)}, __version__)
        return _train(prepared, run, config, lr)
    except BaseException:
        if not run.last_checkpoint.exists():  # nothing --resume could use: as if never started
            shutil.rmtree(run.root, ignore_errors=True)
            if existed:
                run.root.mkdir()
        raise


def _train(prepared: Prepared, run: RunFolder, config: TrainConfig, lr: float) -> Path:
    """The members' fits, validation metrics, the refit on every polygon, and the model package of a
    started run."""
    _quiet_lightning(config.quiet)
    fits = []
    for k in range(config.members):
        if config.members > 1 and not config.quiet:
            print(f"ensemble member {k + 1} of {config.members}", flush=True)
        fits.append(_fit(prepared, config, lr, run.member(k), config.seed + k, config.resume))
    task = _combined(fits)
    metrics = None
    if prepared.valid is not None and task is not None:
        metrics = evaluate_split(task, _loaders(prepared, config)[1], prepared)
        run.metrics.write_text(json.dumps(metrics, indent=1))
    final = prepared
    if config.refit and prepared.valid is not None:
        # the held-out polygons have measured the recipe; the map's model learns from all of them, as a class
        # with two polygons loses half its labels to validation (benchmarks/results/sparse_accuracy_refit_2026-12-04.txt)
        final = prepare(prepared.dataset, replace(config, val_fraction=0.0))
        for k in range(config.members):
            if not config.quiet:
                print(f"refit on every polygon{f' (member {k + 1})' if config.members > 1 else ''}", flush=True)
            fits[k] = _fit(final, config, lr, run.member(k).refit, config.seed + k, config.resume, refit=True)
        task = _combined(fits)
    if task is None:  # a DDP rank other than 0: rank 0 writes the outputs
        return run.root
    save_model_folder(task, final, config, lr, run, metrics, valid_groups=len(prepared.split.valid_groups))
    from .package import save_package

    save_package(run.model, run.package, onnx=config.onnx, overwrite=True)
    run.remove_partials()
    if not config.keep_checkpoints:  # a finished run has nothing to resume; the package holds the model
        # last.ckpt first: while it is there --resume takes the run as unfinished and needs best.ckpt too,
        # so a kill halfway through removing the folder must not leave it without best.ckpt
        for k in range(config.members):
            run.member(k).last_checkpoint.unlink(missing_ok=True)
        for k in range(config.members):
            shutil.rmtree(run.member(k).checkpoints, ignore_errors=True)
            shutil.rmtree(run.member(k).refit.checkpoints, ignore_errors=True)
    return run.root


def _combined(tasks: list[SegmentationTask | None]) -> SegmentationTask | None:
    """The first task, carrying the members' average where the run trained several (None on a DDP
    rank other than 0). Call it once per set of fits: it sets the first task's model."""
    task = tasks[0]
    if task is not None and len(tasks) > 1:
        task.model = Ensemble([t.model for t in tasks])
    return task


def _fit(prepared: Prepared, config: TrainConfig, lr: float, folder: RunFolder, seed: int, resume: bool,
         refit: bool = False) -> SegmentationTask | None:
    """One Lightning fit into ``folder`` (checkpoints, history.csv, logs); on rank 0 the task with
    the weights of its best epoch (lowest validation loss; training loss without validation), or of
    its last epoch for a ``refit`` (nothing is left to choose an epoch by).

    ``seed`` draws the initial weights, the chip order and the augmentation; the split is the
    run's (``config.seed``), so every member of an ensemble holds out the same polygons.
    """
    folder.root.mkdir(parents=True, exist_ok=True)
    L.seed_everything(seed, workers=True, verbose=False)
    task = _task(prepared, config, lr)
    if config.spectral:
        pixels, classes = prepared.train.labelled_pixels(MAX_PIXELS, seed)
        fit_spectral(task.model.spectral, pixels, classes, prepared.weights, seed)
    train_loader, valid_loader = _loaders(prepared, config)
    resume_from = folder.last_checkpoint
    # every epoch's state, for --resume: Lightning's save_last writes only in epochs that improve the
    # monitored loss, and a resume from there repeats the epochs after it
    callbacks: list = [ModelCheckpoint(dirpath=folder.checkpoints, filename="last", enable_version_counter=False),
                       EpochTable(folder, config.quiet)]
    best = None
    if not refit:
        monitor = "valid_loss" if valid_loader is not None else "train_loss"
        best = ModelCheckpoint(dirpath=folder.checkpoints, filename="best", monitor=monitor, mode="min",
                               save_top_k=1, enable_version_counter=False)
        callbacks.insert(0, best)
        if config.early_stopping:
            callbacks.append(EarlyStopping(monitor=monitor, patience=config.early_stopping, mode="min"))
    trainer = _trainer(config, folder.root, callbacks, config.epochs)
    trainer.fit(task, train_loader, valid_loader, ckpt_path=resume_from if resume and resume_from.exists() else None)
    if not trainer.is_global_zero:
        return None
    if best is not None and best.best_model_path:
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=False)["state_dict"]
        task.load_state_dict(state)
    return task


@torch.inference_mode()
def evaluate_split(task: SegmentationTask, loader: DataLoader, prepared: Prepared) -> dict:
    """Per-class metrics of ``task`` on a validation loader (each validation pixel scored once), with
    the decision offsets that classify applies."""
    from .metrics import confusion_matrix

    task.eval()
    device = next(task.parameters()).device
    offsets = torch.tensor(decision_offsets(prepared.weights), device=device).view(1, -1, 1, 1)
    k = len(prepared.mapping.values)
    matrix = np.zeros((k, k), dtype=np.int64)
    for image, target in loader:
        prediction = (task(image.to(device)) + offsets).argmax(1).cpu().numpy()
        target = target.numpy()
        keep = target != IGNORE_INDEX
        matrix += confusion_matrix(target[keep], prediction[keep], k)
    summary = summarize(matrix, prepared.mapping.names)
    summary["confusion_matrix"] = matrix.tolist()
    summary["class_values"] = prepared.mapping.values
    return summary


def save_model_folder(task: SegmentationTask, prepared: Prepared, config: TrainConfig, lr: float, run: RunFolder,
                      metrics: dict | None, valid_groups: int) -> None:
    """Weights (safetensors) and model.json into the run's model folder: all that inference and the
    model package need. ``prepared`` is what the packaged weights learnt from (every polygon after a
    refit); ``valid_groups`` the polygons the validated fit held out."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in task.model.state_dict().items()}
    dataset = prepared.dataset
    history, refit = run.history(), run.refit.history()
    import lightning
    import segmentation_models_pytorch as smp

    model_json: ModelJson = {
        "schema_version": SCHEMA_MAJOR,
        "architecture": config.architecture,
        "encoder": config.backbone,
        "encoder_depth": config.encoder_depth,
        "spectral": config.spectral,  # pooled with a per-pixel spectral model (model.PooledNetwork)
        "ensemble": config.members,  # networks averaged (1: a single network)
        "input_channels": len(prepared.band_indices),
        "classes": [
            {"index": i, "value": v, "name": n, "color": c}
            for i, (v, n, c) in enumerate(zip(prepared.mapping.values, prepared.mapping.names, prepared.mapping.colors))
        ],
        "ignore_classes": list(config.ignore_classes),
        "class_field": dataset.class_field,  # of the training polygons (None: raster labels or Esri chips)
        "bands": [
            {"name": name, "source_index": i + 1, "dtype": dataset.bands[i].dtype, "nodata": dataset.bands[i].nodata}
            for i, name in zip(prepared.band_indices, prepared.band_names)
        ],
        "source_band_count": len(dataset.bands),  # bands of the rasters the chips came from
        "nodata": dataset.nodata,
        "normalisation": prepared.normalisation.as_json(),
        "decision_offsets": decision_offsets(prepared.weights),  # added to the logits (model.decision_offsets)
        "training_statistics": [dataset.statistics[i] for i in prepared.band_indices],
        "tile_size": dataset.tile_size,
        "padding": dataset.tile_size // 8,
        "resolution": list(dataset.resolution) if dataset.resolution else None,
        "crs": dataset.crs_wkt,
        "training": {
            "epochs": len(history),
            "lr": lr,
            "batch_size": config.batch_size,
            "seed": config.seed,
            "precision": config.precision,
            "weights": config.weights,
            "history": history,
            "member_histories": [run.member(k).history() for k in range(1, config.members)],
            "validation_metrics": metrics,  # of the validated fit, before any refit
            "refit": {"epochs": len(refit), "history": refit} if refit else None,  # on every polygon
            "train_groups": len(prepared.split.train_groups),  # that the packaged weights learnt from
            "valid_groups": valid_groups,
        },
        "dataset": {"paths": dataset_roots(dataset), "kind": dataset.kind, "sha256": dataset_hash(dataset)},
        "versions": {"sparsecover": __version__, "torch": torch.__version__,
                     "segmentation_models_pytorch": smp.__version__, "lightning": lightning.__version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_model_folder(run.model, _json_safe(model_json), save(state))


def _json_safe(value):
    """NaN is not JSON: write it as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value
