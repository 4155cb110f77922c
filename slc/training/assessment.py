"""A split's probabilities -> the report's figures beyond closed-set metrics:
the open-set answer (calibrated on validation clips, slc.runtime.openset),
calibration before and after temperature scaling, and accuracy by clip
duration. The open-set figures leave out background clips of languages the
background class was trained on: they must measure speech never heard."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any

import numpy as np

from slc.labels import BACKGROUND, LabelSet
from slc.runtime.openset import OpenSet, detection_scores, in_set_scores, rejected, tempered
from slc.runtime.smoothing import UNKNOWN
from slc.training.metrics import (
    accuracy_by_duration,
    equal_error_rate,
    expected_calibration_error,
    false_accept_at_miss,
    open_set_scores,
    reliability_bins,
)

REPORTED_MISS = 0.05  # false accepts are reported at this share of in-set clips rejected
CALIBRATION_BINS = 10


@dataclasses.dataclass(frozen=True)
class SplitScores:
    """The clips of one split: uncalibrated `probabilities` (`float[n,
    labels]`), true language codes (`other` for background clips), the
    corpus's language of each clip (`source_lang`) and durations in seconds."""

    probabilities: np.ndarray
    truth: np.ndarray
    source: np.ndarray
    duration_s: np.ndarray

    def known(self, labels: LabelSet) -> np.ndarray:
        """Which clips are of one of the model's classes (a model without a
        background class has none for background clips)."""
        return np.isin(self.truth, labels.codes)

    def predicted(self, labels: LabelSet) -> np.ndarray:
        """The closed-set answer: the most probable class of each clip."""
        return np.asarray(labels.codes, dtype=object)[self.probabilities.argmax(axis=-1)]


def open_set_figures(
    scores: SplitScores, labels: LabelSet, open_set: OpenSet, trained_background: set[str] | None
) -> dict[str, Any]:
    """The open-set answer on a split: its settings, the in-set F1 with
    `unknown` answers, the answers' confusion and, when the split has
    background clips of languages outside `trained_background` (None: not
    known), false accepts at 5% miss, the EER, false accepts at the fitted
    threshold and accept rates per language."""
    codes, in_set = list(labels.codes), [code for code in labels.codes if code != BACKGROUND]
    calibrated = open_set.calibrate(scores.probabilities)
    best, _ = in_set_scores(calibrated, codes)
    refused = rejected(calibrated, codes, open_set.threshold)
    answers = np.where(refused, UNKNOWN, np.asarray(codes, dtype=object)[best])
    is_background = ~np.isin(scores.truth, in_set)
    source = scores.source
    heard = is_background & np.isin(source, sorted(trained_background or set()))
    kept = ~heard
    figures: dict[str, Any] = {
        "temperature": open_set.temperature,
        "threshold": open_set.threshold,
        "target_miss": open_set.target_miss,
        "background_class": open_set.background,
        "answers": open_set_scores(scores.truth[kept], answers[kept], in_set),
        "in_set_rejected": float(refused[~is_background].mean()) if (~is_background).any() else None,
        "confusion": _answer_confusion(scores.truth[kept], answers[kept], in_set),
        "disjoint_checked": trained_background is not None,
        "excluded": dict(sorted(Counter(source[heard].tolist()).items())),
        "background": None,
    }
    target, nontarget = ~is_background, is_background & kept
    if target.any() and nontarget.any():
        detection = detection_scores(calibrated, codes)
        at_miss = false_accept_at_miss(detection[target], detection[nontarget], REPORTED_MISS)
        figures["background"] = {
            "clips": int(nontarget.sum()),
            "at_miss": {"target_miss": REPORTED_MISS, **at_miss},
            "eer": equal_error_rate(detection[target], detection[nontarget]),
            "false_accept": float(np.mean(~refused[nontarget])),
            "by_language": _by_language(source[nontarget], answers[nontarget], detection[nontarget] >= at_miss["threshold"]),
        }
    return figures


def calibration_figures(scores: SplitScores, labels: LabelSet, temperature: float) -> dict[str, Any]:
    """Confidence (the top class's probability) against accuracy of the
    closed-set answer, before and after temperature scaling: the expected
    calibration error of each and the reliability bins."""
    known = scores.known(labels)
    probabilities = scores.probabilities[known]
    correct = scores.predicted(labels)[known] == scores.truth[known]
    before = probabilities.max(axis=-1)
    after = tempered(probabilities, temperature).max(axis=-1)
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(before, correct, CALIBRATION_BINS),
        "ece_after": expected_calibration_error(after, correct, CALIBRATION_BINS),
        "reliability_before": reliability_bins(before, correct, CALIBRATION_BINS),
        "reliability": reliability_bins(after, correct, CALIBRATION_BINS),
    }


def duration_figures(scores: SplitScores, labels: LabelSet) -> list[dict[str, Any]]:
    """Accuracy and macro F1 of the closed-set answer by clip duration."""
    known = scores.known(labels)
    return accuracy_by_duration(scores.duration_s[known], scores.truth[known], scores.predicted(labels)[known])


def _answer_confusion(truth: np.ndarray, answers: np.ndarray, in_set: list[str]) -> dict[str, Any]:
    """Counts of (true language, answer): rows the languages of the set and the
    background when present, columns the set and `unknown`."""
    rows = in_set + ([BACKGROUND] if (truth == BACKGROUND).any() else [])
    columns = [*in_set, UNKNOWN]
    pairs = Counter(zip(truth.tolist(), answers.tolist()))
    return {"rows": rows, "columns": columns, "counts": [[pairs[(r, c)] for c in columns] for r in rows]}


def _by_language(source: np.ndarray, answers: np.ndarray, accepted_at_miss: np.ndarray) -> list[dict[str, Any]]:
    """Per language of background clips: clips, how many the fitted threshold
    and the 5%-miss threshold accept, and what the accepted ones were called."""
    rows = []
    for language in sorted(set(source.tolist())):
        members = source == language
        accepted = answers[members][answers[members] != UNKNOWN]
        rows.append({
            "language": language, "clips": int(members.sum()),
            "accepted": len(accepted), "accepted_at_miss": int(accepted_at_miss[members].sum()),
            "accepted_as": dict(Counter(accepted.tolist()).most_common()),
        })  # fmt: skip
    return rows
