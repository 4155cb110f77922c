"""Classification metrics for a label set: accuracy, precision, recall, F1 and
IoU (Jaccard), per class and macro-averaged, plus the confusion matrix. All
numbers come from scikit-learn.

A ratio that is 0/0 counts as 0 (a class never predicted has precision 0).
Macro averages run over the classes that occur, in the truth or in the
predictions, as scikit-learn's own default does: a split that happens to lack a
language is scored on the others, and predicting that language still counts
against the macro scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, jaccard_score, precision_recall_fscore_support

from slc.labels import LabelSet

ZERO_DIVISION = 0.0


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Class ids (ints in [0, n_classes), equal length) -> int64 counts of
    shape (n_classes, n_classes): rows are true classes, columns predicted;
    every class has its row and column, with or without samples."""
    y_true, y_pred = _class_ids(y_true, y_pred, n_classes)
    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


def classification_metrics(y_true, y_pred, labels: LabelSet) -> dict[str, Any]:
    """True and predicted class ids (ids of `labels`) -> the metrics dict:
    `accuracy`, `macro` {precision, recall, f1, iou}, `per_class` {code:
    {precision, recall, f1, iou, support}}, `confusion` (rows true, columns
    predicted), `labels` (codes) and `n` (samples). Plain Python types, so it
    serialises to JSON as is."""
    y_true, y_pred = _class_ids(y_true, y_pred, len(labels))
    return _metrics(y_true, y_pred, None, labels)


def metrics_from_confusion(confusion: np.ndarray, labels: LabelSet) -> dict[str, Any]:
    """Confusion counts (len(labels) x len(labels), rows true, columns
    predicted), e.g. summed over workers -> the same dict as
    `classification_metrics` on the samples behind those counts."""
    counts = np.asarray(confusion)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not fit {n} labels")
    if (counts < 0).any():
        raise ValueError("confusion matrix holds negative counts")
    # Every (true, predicted) cell becomes one sample weighted by its count, so
    # both routes go through the same scikit-learn calls.
    y_true, y_pred = np.divmod(np.arange(n * n), n)
    return _metrics(y_true, y_pred, counts.ravel(), labels)


def _class_ids(y_true, y_pred, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Checked 1-D int arrays; scikit-learn would silently drop ids outside the labels."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D of equal length")
    both = np.concatenate([y_true, y_pred])
    if both.size and (not np.issubdtype(both.dtype, np.integer) or both.min() < 0 or both.max() >= n_classes):
        raise ValueError(f"class ids must be integers in [0, {n_classes})")
    return y_true, y_pred


def _metrics(y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None, labels: LabelSet) -> dict[str, Any]:
    ids = np.arange(len(labels))
    n = int(len(y_true) if weights is None else weights.sum())
    if n == 0:
        raise ValueError("no samples to score")
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, average=None, sample_weight=weights, zero_division=ZERO_DIVISION
    )
    iou = jaccard_score(y_true, y_pred, labels=ids, average=None, sample_weight=weights, zero_division=ZERO_DIVISION)
    counts = confusion_matrix(y_true, y_pred, labels=ids, sample_weight=weights)
    occurring = (counts.sum(axis=0) + counts.sum(axis=1)) > 0
    per_class = {
        code: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "iou": float(iou[i]),
            "support": int(round(support[i])),
        }
        for i, code in enumerate(labels.codes)
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred, sample_weight=weights)),
        "macro": {
            "precision": float(np.mean(precision[occurring])),
            "recall": float(np.mean(recall[occurring])),
            "f1": float(np.mean(f1[occurring])),
            "iou": float(np.mean(iou[occurring])),
        },
        "per_class": per_class,
        "confusion": np.rint(counts).astype(np.int64).tolist(),
        "labels": list(labels.codes),
        "n": n,
    }
