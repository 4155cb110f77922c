"""Sliding windows over a recording: where they fall, and cutting them from a
recording that arrives a block at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def window_bounds(n_samples: int, window: int, hop: int) -> list[tuple[int, int]]:
    """Sample ranges of sliding windows over `n_samples`: every `hop` from 0,
    the last aligned to the end so no tail goes unheard; one window when the
    recording is not longer than a window."""
    if n_samples <= window:
        return [(0, n_samples)]
    starts = list(range(0, n_samples - window + 1, hop))
    if starts[-1] + window < n_samples:
        starts.append(n_samples - window)
    return [(s, s + window) for s in starts]


def cut(blocks: Iterable[np.ndarray], bounds: list[tuple[int, int]]) -> Iterator[np.ndarray]:
    """Consecutive blocks of one recording -> the windows `bounds` (sample
    ranges, in order of start) of it, each as soon as its last sample has
    arrived. Holds only the samples a window still to come needs: about one
    window plus one block."""
    buffer = np.zeros(0, dtype=np.float32)
    offset = 0  # the recording's sample index of buffer[0]
    pending = iter(bounds)
    upcoming = next(pending, None)
    for block in blocks:
        buffer = np.concatenate([buffer, block])
        while upcoming is not None and upcoming[1] <= offset + len(buffer):
            start, end = upcoming
            yield buffer[start - offset : end - offset].copy()
            upcoming = next(pending, None)
        keep_from = min(upcoming[0], offset + len(buffer)) if upcoming is not None else offset + len(buffer)
        buffer = buffer[keep_from - offset :]
        offset = keep_from
    if upcoming is not None:
        raise ValueError(f"the recording ended at sample {offset + len(buffer)}, before window {upcoming}")
