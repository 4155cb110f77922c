"""Per-window language probabilities -> the language in force, with hysteresis.

One odd window must not flip the language of a recording, yet a real change
must be found soon and placed where it happened. `Smoother` runs Page's
CUSUM test on each language's log-probability lead over the language in
force: the lead of every window is capped (one very sure window is one
window), weighted by the seconds of audio the window adds, and summed while
it stays positive. When a sum reaches the threshold the language changes, and
the change is dated to the window where that sum last started from zero.

The same `Smoother` serves live streams (a window at a time, `push`) and
offline recordings (`timeline`), so a recording gets one timeline whichever
way it arrives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class Segment:
    """A stretch of a recording in one language."""

    start_s: float
    end_s: float
    language: str
    confidence: float  # mean probability of `language` over the stretch's windows


@dataclasses.dataclass(frozen=True)
class Change:
    """The language in force became `label` (an index), from window `since`."""

    label: int
    since: int


class Smoother:
    """Windows, one at a time -> the language in force (`current`, an index
    into the labels, None until one is confirmed).

    `change_evidence` (nat-seconds) is what a language must gather to take
    over; `evidence_cap` (nats) caps one window's log-probability lead."""

    def __init__(self, n_labels: int, change_evidence: float, evidence_cap: float) -> None:
        self.change_evidence, self.evidence_cap = change_evidence, evidence_cap
        self.current: int | None = None
        self.evidence = np.zeros(n_labels)
        self.since = np.zeros(n_labels, dtype=np.int64)
        self.count = 0  # windows pushed

    def push(self, probabilities: np.ndarray, weight_s: float) -> Change | None:
        """One window's probabilities (`float[labels]`) and the seconds of
        audio it adds -> the Change it confirms, if any."""
        log_p = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, None))
        if self.current is None:
            # Before any language holds, each is measured against its best rival.
            rivals = np.array([np.delete(log_p, i).max(initial=-np.inf) for i in range(len(log_p))])
            lead = log_p - np.where(np.isfinite(rivals), rivals, log_p)
        else:
            lead = log_p - log_p[self.current]
        self.since[self.evidence <= 0] = self.count
        self.evidence = np.maximum(0.0, self.evidence + np.clip(lead, -self.evidence_cap, self.evidence_cap) * weight_s)
        if self.current is not None:
            self.evidence[self.current] = 0.0
        self.count += 1
        best = int(self.evidence.argmax())
        if self.evidence[best] < self.change_evidence:
            return None
        self.current = best
        self.evidence[:] = 0.0
        return Change(best, int(self.since[best]))


def window_languages(scores: np.ndarray, weight_s: float, change_evidence: float, evidence_cap: float) -> np.ndarray:
    """`float[windows, labels]` -> the label index in force at each window
    (`int[windows]`). Windows no confirmed language covers (those before the
    first one's change point, or all of a recording too short to confirm
    one) take the label of their highest mean log-probability."""
    smoother = Smoother(scores.shape[1], change_evidence, evidence_cap)
    labels = np.full(len(scores), -1, dtype=np.int64)
    for i, row in enumerate(scores):
        change = smoother.push(row, weight_s)
        if change is not None:
            labels[change.since :] = change.label
        elif smoother.current is not None:
            labels[i] = smoother.current
    unclaimed = labels < 0  # always a leading stretch
    if unclaimed.any():
        labels[unclaimed] = int(np.log(np.clip(scores[unclaimed], 1e-12, None)).mean(axis=0).argmax())
    return labels


def timeline(
    bounds: Sequence[tuple[int, int]],
    scores: np.ndarray,
    codes: Sequence[str],
    n_samples: int,
    sample_rate: int,
    weight_s: float,
    change_evidence: float,
    evidence_cap: float,
    min_confidence: float | None = None,
) -> list[Segment]:
    """Windows (sample ranges in order, their `float[windows, labels]`
    probabilities) -> segments covering `[0, n_samples)`. A boundary falls
    in the middle of the overlap (or gap) of the windows either side. A
    segment whose language's mean probability is below `min_confidence` is
    `unknown`; neighbours of one language merge."""
    if not len(bounds):
        return []
    labels = window_languages(scores, weight_s, change_evidence, evidence_cap)
    runs: list[tuple[int, int, int]] = []  # (first window, last window + 1, label)
    for i, label in enumerate(labels):
        if runs and runs[-1][2] == label:
            runs[-1] = (runs[-1][0], i + 1, label)
        else:
            runs.append((i, i + 1, int(label)))
    segments: list[Segment] = []
    for first, stop, label in runs:
        begin = 0 if first == 0 else (bounds[first - 1][1] + bounds[first][0]) / 2
        end = n_samples if stop == len(bounds) else (bounds[stop - 1][1] + bounds[stop][0]) / 2
        confidence = float(scores[first:stop, label].mean())
        language = UNKNOWN if min_confidence is not None and confidence < min_confidence else codes[label]
        if segments and segments[-1].language == language:
            previous = segments.pop()
            span = (previous.end_s - previous.start_s, end / sample_rate - previous.end_s)
            confidence = (previous.confidence * span[0] + confidence * span[1]) / max(sum(span), 1e-9)
            begin = previous.start_s * sample_rate
        segments.append(Segment(round(begin / sample_rate, 3), round(end / sample_rate, 3), language, confidence))
    return segments
