"""Voice activity: does a window of a live stream hold speech?

An energy gate alone lets steady noise through, and WebRTC's VAD (tried)
calls white noise and a pure tone speech in every frame. Speech differs from
both in its loudness: syllables come and go several times a second, so the
loudness of its 10 ms frames spans tens of dB, while stationary noise and
tones stay within one or two. The gate asks for both a level and that span,
measured after pre-emphasis so the rumble of brown noise does not count.
Numpy only, a few microseconds per window, and nothing to download.
"""

from __future__ import annotations

import numpy as np

_FRAME_S = 0.010
_HEARD_BELOW_DB = 30.0  # frames this far below the speech level are silence
_PRE_EMPHASIS = 1.0  # a first difference: brown noise becomes white, its drift gone


def is_speech(clip: np.ndarray, sample_rate: int, level_db: float, range_db: float) -> bool:
    """`float32[n]` mono audio -> whether it holds speech: of its 10 ms
    frames not silent (within 30 dB of `level_db`), the loud ones (90th
    percentile of power, dBFS) reach `level_db` and the 10th to 90th
    percentile of power spans at least `range_db`."""
    frame = max(1, int(sample_rate * _FRAME_S))
    if len(clip) < 2 * frame:
        return False
    emphasised = np.empty_like(clip)
    emphasised[0] = clip[0]
    emphasised[1:] = clip[1:] - _PRE_EMPHASIS * clip[:-1]
    frames = emphasised[: len(emphasised) // frame * frame].reshape(-1, frame)
    power_db = 10.0 * np.log10(np.square(frames, dtype=np.float64).mean(axis=1) + 1e-10)
    # Frames of (near) digital silence do not count: silence then noise is not speech.
    heard = power_db[power_db >= level_db - _HEARD_BELOW_DB]
    if len(heard) < 2:
        return False
    quiet, loud = np.percentile(heard, [10, 90])
    return bool(loud >= level_db and loud - quiet >= range_db)
