"""Audio files (or their bytes) -> clips: mono float32 at 16 kHz.

Anything libsndfile decodes is accepted (WAV PCM/float, FLAC, OGG/Vorbis, MP3
where the installed libsndfile has it). Every way a file can fail to become a
clip raises an `AudioError` subclass that names the file and the reason, so a
batch job can record it and move on.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile as sf
import soxr

from slc.config import AudioConfig

Source = str | os.PathLike | bytes

# Silence trimming looks at the loudness of 10 ms blocks.
_TRIM_BLOCK_S = 0.010


class AudioError(Exception):
    """A file that cannot become a clip. `reason` is a short stable code
    (`empty`, `too_short`, ...) for tables; the message says what to do."""

    reason: ClassVar[str] = "audio_error"

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(f"{source}: {self.reason}: {detail}")
        self.source = source
        self.detail = detail


class UnreadableAudioError(AudioError):
    reason = "unreadable"


class EmptyAudioError(AudioError):
    reason = "empty"


class UndecodableAudioError(AudioError):
    reason = "undecodable"


class NonFiniteAudioError(AudioError):
    reason = "non_finite"


class TooShortAudioError(AudioError):
    reason = "too_short"


class TooLongAudioError(AudioError):
    reason = "too_long"


def load(source: Source, config: AudioConfig = AudioConfig(), name: str | None = None) -> np.ndarray:
    """Decode a path or encoded bytes into a clip.

    Returns `float32[n]`, mono, at `config.sample_rate`, finite, with leading and
    trailing silence removed when `config.trim_silence`. `name` is what errors
    call the source (defaults to the path, or `<bytes>`).
    """
    label = name or (os.fspath(source) if not isinstance(source, bytes) else "<bytes>")
    samples, sample_rate = _decode(source, label, config.max_duration_s)
    if not np.isfinite(samples).all():
        bad = int((~np.isfinite(samples)).sum())
        raise NonFiniteAudioError(label, f"{bad} samples are NaN or infinite")
    clip = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if sample_rate != config.sample_rate:
        clip = soxr.resample(clip, sample_rate, config.sample_rate, quality="HQ")
    clip = np.ascontiguousarray(clip, dtype=np.float32)
    if config.trim_silence:
        clip = trim_silence(clip, config.sample_rate, config.trim_top_db)
    duration = len(clip) / config.sample_rate
    if duration < config.min_duration_s:
        after = " after trimming silence" if config.trim_silence else ""
        raise TooShortAudioError(
            label, f"{duration:.2f} s of audio{after}, at least {config.min_duration_s:.2f} s needed"
        )
    return clip


def trim_silence(clip: np.ndarray, sample_rate: int, top_db: float) -> np.ndarray:
    """Drop leading and trailing 10 ms blocks quieter than `top_db` below the
    loudest block. A clip with no sound at all comes back empty."""
    block = max(1, int(sample_rate * _TRIM_BLOCK_S))
    n_blocks = -(-len(clip) // block)
    padded = np.zeros(n_blocks * block, dtype=np.float32)
    padded[: len(clip)] = clip
    power = np.square(padded.reshape(n_blocks, block)).mean(axis=1)
    peak = power.max(initial=0.0)
    if peak <= 0.0:
        return clip[:0]
    loud = np.flatnonzero(power >= peak * 10.0 ** (-top_db / 10.0))
    return clip[loud[0] * block : min(len(clip), (loud[-1] + 1) * block)]


def _decode(source: Source, label: str, max_duration_s: float) -> tuple[np.ndarray, int]:
    """libsndfile decode to `float32[frames, channels]`, refusing before reading
    a file whose header promises more than `max_duration_s`."""
    if isinstance(source, bytes):
        if not source:
            raise EmptyAudioError(label, "0 bytes")
        handle: io.BytesIO | str = io.BytesIO(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError as error:
            raise UnreadableAudioError(label, error.strerror or str(error)) from None
        if size == 0:
            raise EmptyAudioError(label, "0 bytes")
        handle = os.fspath(path)
    try:
        with sf.SoundFile(handle) as audio:
            if audio.frames == 0:
                raise EmptyAudioError(label, "the file holds no audio frames")
            duration = audio.frames / audio.samplerate
            if duration > max_duration_s:
                raise TooLongAudioError(
                    label, f"{duration:.1f} s of audio, at most {max_duration_s:.1f} s allowed"
                )
            samples = audio.read(dtype="float32", always_2d=True)
            sample_rate = audio.samplerate
    except sf.SoundFileError as error:
        why = getattr(error, "error_string", None) or str(error)
        raise UndecodableAudioError(label, f"not a readable audio file ({why})") from None
    except OSError as error:
        raise UnreadableAudioError(label, error.strerror or str(error)) from None
    if len(samples) == 0:
        raise EmptyAudioError(label, "the file holds no audio frames")
    return samples, sample_rate
