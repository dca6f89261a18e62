"""Every accuracy figure, derived from one confusion matrix.

Rows are the reference (truth), columns the prediction, both over the model's class indices.
Unlabelled pixels (class 0), ignored classes and nodata never enter the matrix: callers drop them
before counting, so nothing here needs to know about them.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
    """Count (truth, prediction) pairs of class indices 0..num_classes-1 into an int64 matrix."""
    truth = np.asarray(truth, dtype=np.int64).ravel()
    prediction = np.asarray(prediction, dtype=np.int64).ravel()
    keep = (truth >= 0) & (truth < num_classes) & (prediction >= 0) & (prediction < num_classes)
    flat = truth[keep] * num_classes + prediction[keep]
    return np.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def _safe_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def summarize(matrix: np.ndarray, names: list[str] | None = None) -> dict:
    """Overall accuracy, kappa, per-class precision/recall/F1/IoU/support, macro and weighted means.

    Precision is the user's accuracy and recall the producer's accuracy of map-accuracy assessment.
    A class without reference pixels has recall, F1 and IoU undefined (NaN) and is left out of the
    macro means rather than counted as 0, so that a class absent from a validation split does not
    drag every figure down.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    k = matrix.shape[0]
    names = names or [str(i) for i in range(k)]
    total = matrix.sum()
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * tp, support + predicted)
    iou = _safe_divide(tp, support + predicted - tp)
    overall = tp.sum() / total if total else float("nan")
    expected = (support * predicted).sum() / total**2 if total else float("nan")
    kappa = (overall - expected) / (1 - expected) if total and expected < 1 else float("nan")
    present = support > 0
    weights = support / support.sum() if support.sum() else support

    def macro(values: np.ndarray) -> float:
        chosen = values[present & ~np.isnan(values)] if present.any() else values[:0]
        return float(chosen.mean()) if chosen.size else float("nan")

    def weighted(values: np.ndarray) -> float:
        return float(np.nansum(values * weights)) if support.sum() else float("nan")

    return {
        "pixels": int(total),
        "overall_accuracy": float(overall),
        "kappa": float(kappa),
        "macro_precision": macro(np.nan_to_num(precision, nan=0.0)),
        "macro_recall": macro(recall),
        "macro_f1": macro(np.where(present, np.nan_to_num(f1, nan=0.0), np.nan)),
        "mean_iou": macro(np.where(present, np.nan_to_num(iou, nan=0.0), np.nan)),
        "weighted_f1": weighted(np.nan_to_num(f1, nan=0.0)),
        "per_class": [
            {
                "class": names[i],
                "precision": _nan_to_none(precision[i]),
                "recall": _nan_to_none(recall[i]),
                "f1": _nan_to_none(f1[i]),
                "iou": _nan_to_none(iou[i]),
                "support": int(support[i]),
                "predicted": int(predicted[i]),
            }
            for i in range(k)
        ],
    }


def _nan_to_none(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
