"""The open-set answer: calibrated probabilities, and `unknown` for speech in
none of the model's languages.

A model's softmax is over-confident, and it always names one of its
languages, even for a language it never heard. `fit` learns two numbers on
validation clips: a temperature (scaling the log-probabilities so that a
confidence of 0.9 is right about 90% of the time, Guo et al. 2017) and a
threshold on the calibrated probability of the best language in the label
set, the lowest that rejects at most `target_miss` of validation clips whose
language is in the set. A model trained with a background class (`other`,
slc.labels.BACKGROUND) also answers `unknown` when that class wins.

Temperature works on probabilities as well as on logits (softmax(log p / T)),
so it applies to any bundle without re-exporting its graph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from slc.labels import BACKGROUND
from slc.runtime.smoothing import UNKNOWN

_FLOOR = 1e-12
# Temperatures searched (log-spaced); NLL is smooth in log T, so a fine grid
# then a golden-section refinement finds the minimum without scipy.
_LOG_T_RANGE = (np.log(0.05), np.log(20.0))


@dataclasses.dataclass(frozen=True)
class OpenSet:
    """How a bundle turns probabilities into an answer. `threshold` is on the
    calibrated probability of the best language in the set; `target_miss` is
    the share of validation clips in the set that it rejects."""

    temperature: float = 1.0
    threshold: float = 0.0
    target_miss: float = 0.0
    background: str | None = None  # the background class's code, when the model has one

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.target_miss < 1.0:
            raise ValueError(f"threshold must be within [0, 1] and target_miss within [0, 1), got "
                             f"{self.threshold} and {self.target_miss}")

    def calibrate(self, probabilities: np.ndarray) -> np.ndarray:
        """Rows of probabilities -> the same rows at this temperature."""
        return tempered(probabilities, self.temperature)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenSet:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def tempered(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log p / T) along the last axis, as float32."""
    if temperature == 1.0:
        return np.asarray(probabilities, dtype=np.float32)
    logits = np.log(np.clip(probabilities, _FLOOR, None)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return (scaled / scaled.sum(axis=-1, keepdims=True)).astype(np.float32)


def answerable(codes: Sequence[str], allowed: Collection[str] | None, open_set: bool) -> np.ndarray:
    """The labels an answer may name, as a mask over `codes`: the languages
    `allowed` (all when None), and the background class while the open set is
    on (it wins as `unknown`); off, the background class is never an answer."""
    return np.array([open_set if c == BACKGROUND else allowed is None or c in allowed for c in codes], dtype=bool)


def shown_names(codes: Sequence[str]) -> tuple[str, ...]:
    """Label codes as answers name them: the background class is `unknown`."""
    return tuple(UNKNOWN if c == BACKGROUND else c for c in codes)


def in_set_scores(probabilities: np.ndarray, codes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of probabilities -> (best class of each row, the probability of
    the best language in the set). The best class may be the background; the
    score never is."""
    background = _background_index(codes)
    best = probabilities.argmax(axis=-1)
    in_set = probabilities if background is None else np.delete(probabilities, background, axis=-1)
    return best, in_set.max(axis=-1)


def detection_scores(probabilities: np.ndarray, codes: Sequence[str]) -> np.ndarray:
    """How surely each row is speech in the label set: the probability of its
    best language in the set, -inf where the background class wins (no
    threshold accepts it)."""
    best, scores = in_set_scores(probabilities, codes)
    background = _background_index(codes)
    return scores if background is None else np.where(best == background, -np.inf, scores)


def rejected(probabilities: np.ndarray, codes: Sequence[str], threshold: float) -> np.ndarray:
    """Which rows the open-set rule answers `unknown`: the background wins, or
    the best language in the set is below `threshold`."""
    best, scores = in_set_scores(probabilities, codes)
    background = _background_index(codes)
    return (scores < threshold) | (best == background if background is not None else False)


def fit(probabilities: np.ndarray, targets: np.ndarray, codes: Sequence[str], target_miss: float) -> OpenSet:
    """Temperature and threshold from validation clips: `probabilities`
    (`float[n, labels]`, uncalibrated), `targets` (class ids). The threshold
    rejects at most `target_miss` of the clips whose language is in the set,
    counting those the background class already takes."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if len(targets) == 0:
        raise ValueError("calibration needs at least one clip")
    temperature = fit_temperature(probabilities, targets)
    calibrated = tempered(probabilities, temperature)
    background = _background_index(codes)
    in_set = targets != background if background is not None else np.ones(len(targets), dtype=bool)
    threshold = _threshold(calibrated[in_set], codes, target_miss) if in_set.any() else 0.0
    return OpenSet(
        temperature=round(temperature, 4), threshold=threshold, target_miss=target_miss,
        background=BACKGROUND if background is not None else None,
    )  # fmt: skip


def fit_temperature(probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of `targets`."""
    log_p = np.log(np.clip(probabilities, _FLOOR, None))

    def nll(log_t: float) -> float:
        scaled = log_p / np.exp(log_t)
        scaled -= scaled.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(scaled).sum(axis=-1))
        return float(np.mean(log_norm - scaled[np.arange(len(targets)), targets]))

    grid = np.linspace(*_LOG_T_RANGE, 41)
    i = int(np.argmin([nll(x) for x in grid]))
    low, high = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(40):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if nll(a) < nll(b):
            high = b
        else:
            low = a
    return float(np.exp((low + high) / 2.0))


def _threshold(calibrated: np.ndarray, codes: Sequence[str], target_miss: float) -> float:
    """The largest threshold whose misses (background wins, or score below
    it) stay within `target_miss` of these in-set clips; 0 when the
    background alone already takes more."""
    best, scores = in_set_scores(calibrated, codes)
    background = _background_index(codes)
    taken = best == background if background is not None else np.zeros(len(best), dtype=bool)
    allowed = int(np.floor(target_miss * len(scores))) - int(taken.sum())
    if allowed <= 0:
        return 0.0
    # Rejecting the `allowed` lowest scores of the clips the background left:
    # the threshold sits just above the highest of them.
    remaining = np.sort(scores[~taken])
    return float(np.nextafter(np.float32(remaining[allowed - 1]), np.float32(1.0)))


def _background_index(codes: Sequence[str]) -> int | None:
    return list(codes).index(BACKGROUND) if BACKGROUND in codes else None
