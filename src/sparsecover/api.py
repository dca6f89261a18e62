"""The arcgis.learn-shaped Python API: ``prepare_data`` and ``UnetClassifier``.

Same names and arguments as arcgis.learn where they make sense, so a notebook written for ArcGIS
reads almost unchanged; underneath are the same functions the CLI calls (:mod:`sparsecover.train`).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import replace
from pathlib import Path

from .chips import ChipDataset
from .combine import open_chip_datasets
from .errors import SparsecoverError
from .predict import LoadedModel
from .runfolder import RunFolder
from .train import find_lr, prepare, train
from .trainconfig import DEFAULT_LR, TrainConfig


class TrainingData:
    """Chips plus the data settings of ``prepare_data``; what ``UnetClassifier`` trains on."""

    def __init__(self, dataset: ChipDataset, config: TrainConfig) -> None:
        self.dataset = dataset
        self.config = config

    @property
    def path(self) -> Path:
        return self.dataset.root

    @property
    def classes(self) -> list[str]:
        return [c.name for c in self.dataset.classes]

    @property
    def c(self) -> int:
        """Number of classes (arcgis.learn's name)."""
        return len(self.dataset.classes)

    def show_batch(self, rows: int = 2, columns: int = 4, bands: list[int] | None = None, path=None):
        """Random chips with their labels drawn over them (unlabelled pixels transparent)."""
        from .plots import show_batch

        return show_batch(self.dataset, rows=rows, columns=columns, bands=bands, path=path)

    def __repr__(self) -> str:
        return f"TrainingData({self.path}, {len(self.dataset)} chips, classes={self.classes})"


def prepare_data(path: str | Path | list[str | Path], batch_size: int = 8, imagery_type: str | None = None,
                 val_fraction: float = 0.2, bands: list[str] | None = None, seed: int = 42,
                 workers: int = 0) -> TrainingData:
    """Open a chip dataset (ours or an Esri Classified Tiles export), or a list of them, for training.

    ``imagery_type`` ('naip', 'landsat8', 'sentinel2', 'ms') names the bands like arcgis.learn;
    ``val_fraction`` is the share of polygons (spatial groups) per class held out for validation.
    """
    dataset = open_chip_datasets(path)
    config = TrainConfig(batch_size=batch_size, imagery_type=imagery_type, val_fraction=val_fraction,
                         bands=bands, seed=seed, workers=workers)
    return TrainingData(dataset, config)


class UnetClassifier:
    """A U-Net pixel classifier, like ``arcgis.learn.UnetClassifier``.

    ``ignore_classes`` lists class values left out of the loss and the metrics (0, "NoData", always
    is). ``pretrained_path`` starts from a saved model or run folder.
    """

    def __init__(self, data: TrainingData, backbone: str = "resnet34", ignore_classes: list[int] | None = None,
                 pretrained_path: str | Path | None = None, quiet: bool = False, **settings) -> None:
        ignore = [int(v) for v in (ignore_classes or []) if int(v) != 0]
        self.data = data
        self.config = replace(data.config, backbone=backbone, ignore_classes=ignore,
                              weights=str(pretrained_path) if pretrained_path else None, quiet=quiet, **settings)
        prepare(data.dataset, self.config)  # validate settings now, not at fit time
        self.run: Path | None = None

    def lr_find(self, plot: str | Path | None = None) -> float:
        """Run the LR range test; returns the suggested learning rate and saves the curve to ``plot``."""
        return find_lr(prepare(self.data.dataset, self.config), self.config, Path(plot) if plot else None)

    def fit(self, epochs: int = 10, lr: float | None = DEFAULT_LR, early_stopping: int | None = None,
            out: str | Path | None = None) -> Path:
        """Train; prints the per-epoch table and returns the run folder.

        ``lr=None`` runs the LR finder first, as arcgis.learn's ``fit`` does. The fixed default is
        the steadier choice from few polygons: on few chips the finder's loss keeps falling to
        large rates that then diverge (benchmarks/results/sparse_accuracy_2026-11-28.txt).
        """
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run = Path(out) if out else self.data.path / "models" / f"run-{stamp}"
        config = replace(self.config, epochs=epochs, lr=lr, early_stopping=early_stopping)
        self.run = train(self.data.dataset, run, config)
        return self.run

    def _metrics(self) -> dict:
        metrics = RunFolder(self.run).validation_metrics() if self.run is not None else None
        if metrics is None:
            raise SparsecoverError("no validation metrics yet: call fit() first (with val_fraction > 0)")
        return metrics

    def per_class_metrics(self):
        """Precision, recall and F1 per class on the held-out polygons, as a pandas DataFrame."""
        import pandas as pd

        rows = self._metrics()["per_class"]
        return pd.DataFrame({r["class"]: {"precision": r["precision"], "recall": r["recall"],
                                          "f1_score": r["f1"]} for r in rows})

    def mIOU(self) -> dict[str, float]:  # noqa: N802 - arcgis.learn's name
        """IoU per class and their mean, on the held-out polygons."""
        metrics = self._metrics()
        result = {r["class"]: r["iou"] for r in metrics["per_class"]}
        result["mean"] = metrics["mean_iou"]
        return result

    def show_results(self, rows: int = 4, path: str | Path | None = None):
        """Validation chips as image | ground truth | prediction rows (saved to ``path`` if given)."""
        from .plots import show_results
        from .predict import load_model

        if self.run is None:
            raise SparsecoverError("no model yet: call fit() first")
        prepared = prepare(self.data.dataset, self.config)
        pool = prepared.valid.indices if prepared.valid is not None else prepared.train.indices
        chosen = pool[:: max(1, len(pool) // rows)][:rows]
        return show_results(self.data.dataset, load_model(self.run), chosen, path)

    def suggest(self, raster: str | Path, out: str | Path, n: int = 30, size: int = 5,
                labels: str | Path | None = None, uncertainty: str | Path | None = None, **options) -> Path:
        """Where to label next: ``n`` squares of ``size`` pixels where the trained model is least
        sure on ``raster``, as a GeoPackage to fill in (:func:`sparsecover.suggest.suggest_labels`)."""
        from .suggest import suggest_labels

        if self.run is None:
            raise SparsecoverError("no model yet: call fit() first")
        return suggest_labels(raster, self.run, out, n=n, size=size, labels=labels, uncertainty=uncertainty,
                              **options)

    @classmethod
    def load(cls, path: str | Path, data: TrainingData | None = None) -> LoadedModel:
        """A saved model (``.sparsecover`` package or run folder), ready for :func:`classify_pixels`."""
        from .predict import load_model

        return load_model(path)

    def save(self, name: str | Path, onnx: bool = False) -> Path:
        """Save the trained model as one package file: ``models/<name>.sparsecover`` in the data
        folder, or the path you give; ``onnx=True`` puts model.onnx and an Esri .emd inside too."""
        from .package import save_package

        if self.run is None:
            raise SparsecoverError("nothing to save: call fit() first")
        target = Path(name) if Path(name).is_absolute() or "/" in str(name) else self.data.path / "models" / str(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        return save_package(RunFolder(self.run).model, target, onnx=onnx, overwrite=True)
