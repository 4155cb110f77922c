"""Classification metrics for a label set: accuracy, precision, recall, F1 and
IoU (Jaccard), per class and macro-averaged, plus the confusion matrix (from
scikit-learn); and the figures of the open-set answer and of calibration:
false accepts at a miss rate, equal error rate, expected calibration error,
scores by clip duration.

A ratio that is 0/0 counts as 0 (a class never predicted has precision 0).
Macro averages run over the classes that occur, in the truth or in the
predictions, as scikit-learn's own default does: a split that happens to lack a
language is scored on the others, and predicting that language still counts
against the macro scores.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    precision_recall_fscore_support,
)

from slc.labels import LabelSet
from slc.runtime.smoothing import UNKNOWN

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
            "support": round(support[i]),
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


# --- open set ---------------------------------------------------------------
# Scores of the open-set rule: the calibrated probability of the best language
# in the set, -inf for a clip the background class takes (rejected whatever
# the threshold). A clip is accepted when its score is >= the threshold.


def false_accept_at_miss(target: np.ndarray, nontarget: np.ndarray, miss: float) -> dict[str, float]:
    """Scores of in-set clips (`target`) and of background clips (`nontarget`)
    -> the threshold that rejects at most `miss` of the in-set clips (the
    floor(miss * n) lowest), and at it the in-set clips rejected (`miss`)
    and the background clips accepted (`false_accept`). When the background
    class alone takes more in-set clips than that, the threshold is 0."""
    target, nontarget = _scores(target, "in-set"), _scores(nontarget, "background")
    allowed = int(np.floor(miss * len(target) + 1e-9))  # 0.05 * 20 must give 1, not 0.99...
    threshold = max(float(np.sort(target)[allowed]), 0.0)
    return {
        "threshold": threshold,
        "miss": float(np.mean(target < threshold)),
        "false_accept": float(np.mean(nontarget >= threshold)),
    }


def equal_error_rate(target: np.ndarray, nontarget: np.ndarray) -> dict[str, float]:
    """Scores of in-set and background clips -> the equal error rate: over
    every threshold (each score, and one above them all), where the miss rate
    and the false-accept rate are closest, their mean (`eer`) and the lowest
    such threshold."""
    target, nontarget = _scores(target, "in-set"), _scores(nontarget, "background")
    scores = np.concatenate([target, nontarget])
    finite = np.unique(scores[np.isfinite(scores)])
    top = finite[-1] if len(finite) else 0.0
    thresholds = np.append(finite, np.nextafter(top, np.inf))
    # Clips below each threshold, counted on the sorted scores.
    missed = np.searchsorted(np.sort(target), thresholds, side="left")
    accepted = len(nontarget) - np.searchsorted(np.sort(nontarget), thresholds, side="left")
    # Compared as integers (cross-multiplied counts), so equal gaps tie exactly.
    best = int(np.argmin(np.abs(missed * len(nontarget) - accepted * len(target))))
    eer = (missed[best] / len(target) + accepted[best] / len(nontarget)) / 2
    return {"eer": float(eer), "threshold": float(thresholds[best])}


def open_set_scores(true_codes, answers, in_set: list[str]) -> dict[str, Any]:
    """True languages and answers (a language or `unknown`) -> how the open-set
    answer does: `accuracy` over all clips and `macro_f1` (with `per_class` F1)
    over the languages of `in_set` that occur in the truth or the answers. A
    clip whose true language is outside `in_set` (a background clip) is
    right when answered `unknown`."""
    truth = np.array([code if code in in_set else UNKNOWN for code in true_codes], dtype=object)
    answered = np.array([code if code in in_set else UNKNOWN for code in answers], dtype=object)
    if len(truth) == 0 or len(truth) != len(answered):
        raise ValueError(f"{len(truth)} true languages and {len(answered)} answers: need equal, non-zero counts")
    occurring = [code for code in in_set if code in set(truth) | set(answered)]
    f1 = f1_score(truth, answered, labels=occurring, average=None, zero_division=ZERO_DIVISION) if occurring else []
    return {
        "accuracy": float(np.mean(truth == answered)),
        "macro_f1": float(np.mean(f1)) if occurring else 0.0,
        "per_class": {code: float(value) for code, value in zip(occurring, f1)},
    }


def _scores(values, what: str) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"need a non-empty 1-D array of {what} scores, got shape {scores.shape}")
    return scores


# --- calibration and duration -----------------------------------------------


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> list[dict[str, Any]]:
    """Confidence of each answer (in [0, 1]) and whether it was right ->
    `n_bins` equal-width bins (low, high]: each with its `count`, mean
    `confidence` and `accuracy` (None when empty). The first bin includes 0."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if confidence.shape != correct.shape or confidence.ndim != 1:
        raise ValueError(f"confidence {confidence.shape} and correct {correct.shape} must be 1-D of equal length")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.digitize(confidence, edges[1:-1], right=True)
    bins = []
    for i in range(n_bins):
        members = index == i
        count = int(members.sum())
        bins.append({
            "low": float(edges[i]), "high": float(edges[i + 1]), "count": count,
            "confidence": float(confidence[members].mean()) if count else None,
            "accuracy": float(correct[members].mean()) if count else None,
        })  # fmt: skip
    return bins


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """The gap between confidence and accuracy, averaged over `n_bins`
    equal-width confidence bins weighted by their share of answers (Guo et
    al. 2017): 0 for a perfectly calibrated model."""
    bins = reliability_bins(confidence, correct, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        raise ValueError("no answers to calibrate")
    return float(sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]) / total)


def accuracy_by_duration(duration_s, y_true, y_pred, edges: tuple[float, ...] = (2.0, 5.0)) -> list[dict[str, Any]]:
    """Clip durations (s) with true and predicted classes -> per duration range
    (`< 2 s`, `2-5 s`, `>= 5 s` for the default edges; a clip on an edge goes
    to the longer range): `clips`, `accuracy` and `macro_f1` (over the classes
    occurring in that range; both None for a range without clips)."""
    duration_s, y_true, y_pred = np.asarray(duration_s, dtype=np.float64), np.asarray(y_true), np.asarray(y_pred)
    if not len(duration_s) == len(y_true) == len(y_pred):
        raise ValueError(f"{len(duration_s)} durations, {len(y_true)} true and {len(y_pred)} predicted classes")
    index = np.searchsorted(np.asarray(edges), duration_s, side="right")
    names = [f"< {edges[0]:g} s"] + [f"{a:g}-{b:g} s" for a, b in itertools.pairwise(edges)] + [f">= {edges[-1]:g} s"]
    ranges = []
    for i, name in enumerate(names):
        members = index == i
        count = int(members.sum())
        truth, predicted = y_true[members], y_pred[members]
        ranges.append({
            "range": name, "clips": count,
            "accuracy": float(np.mean(truth == predicted)) if count else None,
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=ZERO_DIVISION)) if count else None,
        })  # fmt: skip
    return ranges
