"""Audio files (or their bytes) -> clips: mono float32 at 16 kHz.

Anything libsndfile decodes is accepted (WAV PCM/float, FLAC, OGG/Vorbis, MP3
where the installed libsndfile has it). Every way a file can fail to become a
clip raises an `AudioError` subclass that names the file and the reason, so a
batch job can record it and move on.

`load` decodes a whole file into one clip; `loud_span` and `stream` decode a
recording of any length block by block, in memory bounded by a block.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import soundfile as sf
import soxr

from slc.config import AudioConfig

Source = str | os.PathLike | bytes

# Silence trimming looks at the loudness of 10 ms blocks.
_TRIM_BLOCK_S = 0.010
# Long recordings are decoded this many seconds at a time.
_STREAM_BLOCK_S = 10.0
# What libsndfile says when its MPEG decoder finds no frame it can decode: a
# message for a path that is no regular file, untrue of a file or bytes slc opened.
_LIBSNDFILE_NOT_A_FILE = "File does not exist or is not a regular file (possibly a pipe?)."


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
    label = _label(source, name)
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
    _check_length(len(clip), config, label)
    return clip


def trim_silence(clip: np.ndarray, sample_rate: int, top_db: float) -> np.ndarray:
    """Drop leading and trailing 10 ms blocks quieter than `top_db` below the
    loudest block. A clip with no sound at all comes back empty."""
    block = _trim_block(sample_rate)
    n_blocks = -(-len(clip) // block)
    padded = np.zeros(n_blocks * block, dtype=np.float32)
    padded[: len(clip)] = clip
    first, last = _loud_blocks(_block_power(padded, block), top_db)
    return clip[first * block : min(len(clip), last * block)]


def loud_span(source: Source, config: AudioConfig = AudioConfig(), name: str | None = None) -> tuple[int, int]:
    """The part of a recording that `load` keeps, found by decoding it block
    by block: `(start, end)` sample indices at `config.sample_rate` into what
    `stream` yields, leading and trailing silence excluded as `trim_silence`
    does when `config.trim_silence` (the whole recording otherwise).

    Memory: one block plus 4 bytes per 10 ms of audio (each 10 ms block's
    loudness, as the threshold is relative to the loudest one). There is no
    `max_duration_s` limit. Raises TooShortAudioError when less than
    `min_duration_s` is left, and what `stream` raises."""
    label = _label(source, name)
    block = _trim_block(config.sample_rate)
    powers: list[np.ndarray] = []
    carry = np.zeros(0, dtype=np.float32)
    total = 0
    for chunk in stream(source, config, name):
        total += len(chunk)
        if config.trim_silence:
            joined = np.concatenate([carry, chunk])
            whole = len(joined) // block * block
            powers.append(_block_power(joined[:whole], block))
            carry = joined[whole:]
    start, end = 0, total
    if config.trim_silence:
        tail = np.zeros(block if len(carry) else 0, dtype=np.float32)
        tail[: len(carry)] = carry
        powers.append(_block_power(tail, block))
        first, last = _loud_blocks(np.concatenate(powers), config.trim_top_db)
        start, end = first * block, min(total, last * block)
    _check_length(end - start, config, label)
    return start, end


def stream(
    source: Source,
    config: AudioConfig = AudioConfig(),
    name: str | None = None,
    start: int = 0,
    end: int | None = None,
    block_s: float = _STREAM_BLOCK_S,
) -> Iterator[np.ndarray]:
    """Decode a path or encoded bytes a block at a time: yields `float32[n]`
    blocks, mono at `config.sample_rate`, of about `block_s` seconds, which
    together are samples `[start, end)` (`end` None: to the end) of the
    recording as `load` decodes it before trimming (soxr's stream resampler
    gives the samples its one-shot resampler gives).

    No trimming and no duration limits: memory holds one block whatever the
    recording's length. Raises what `load` raises on opening; a block with
    NaN or infinite samples raises NonFiniteAudioError naming where it is."""
    label = _label(source, name)
    with _opened(source, label) as sound:
        rate = sound.samplerate
        resampler = (
            soxr.ResampleStream(rate, config.sample_rate, 1, dtype="float32", quality="HQ")
            if rate != config.sample_rate
            else None
        )
        frames = max(1, int(block_s * rate))
        decoded = produced = 0
        while produced < (end if end is not None else np.inf):
            samples = sound.read(frames, dtype="float32", always_2d=True)
            last = len(samples) < frames
            if not np.isfinite(samples).all():
                bad = int((~np.isfinite(samples)).sum())
                where = f"between {decoded / rate:.1f} s and {(decoded + len(samples)) / rate:.1f} s"
                raise NonFiniteAudioError(label, f"{bad} samples are NaN or infinite {where}")
            decoded += len(samples)
            mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
            chunk = resampler.resample_chunk(mono, last=last) if resampler else mono
            wanted = chunk[max(0, start - produced) : None if end is None else max(0, end - produced)]
            produced += len(chunk)
            if len(wanted):
                yield np.ascontiguousarray(wanted, dtype=np.float32)
            if last:
                return


def _label(source: Source, name: str | None) -> str:
    return name or (os.fspath(source) if not isinstance(source, bytes) else "<bytes>")


def _check_length(n_samples: int, config: AudioConfig, label: str) -> None:
    duration = n_samples / config.sample_rate
    if duration < config.min_duration_s:
        after = " after trimming silence" if config.trim_silence else ""
        raise TooShortAudioError(
            label, f"{duration:.2f} s of audio{after}, at least {config.min_duration_s:.2f} s needed"
        )


def _trim_block(sample_rate: int) -> int:
    return max(1, int(sample_rate * _TRIM_BLOCK_S))


def _block_power(samples: np.ndarray, block: int) -> np.ndarray:
    """Mean square of each `block` samples (`len(samples)` a multiple of it)."""
    return np.square(samples.reshape(-1, block)).mean(axis=1)


def _loud_blocks(power: np.ndarray, top_db: float) -> tuple[int, int]:
    """Blocks `[first, last)` from the first to the last one within `top_db`
    of the loudest; `(0, 0)` when all are silent."""
    peak = power.max(initial=0.0)
    if peak <= 0.0:
        return 0, 0
    loud = np.flatnonzero(power >= peak * 10.0 ** (-top_db / 10.0))
    return int(loud[0]), int(loud[-1]) + 1


def _decode(source: Source, label: str, max_duration_s: float) -> tuple[np.ndarray, int]:
    """libsndfile decode to `float32[frames, channels]`, refusing before reading
    a file whose header promises more than `max_duration_s`."""
    with _opened(source, label) as sound:
        duration = sound.frames / sound.samplerate
        if duration > max_duration_s:
            raise TooLongAudioError(label, f"{duration:.1f} s of audio, at most {max_duration_s:.1f} s allowed")
        samples = sound.read(dtype="float32", always_2d=True)
        sample_rate = sound.samplerate
    if len(samples) == 0:
        raise EmptyAudioError(label, "the file holds no audio frames")
    return samples, sample_rate


@contextlib.contextmanager
def _opened(source: Source, label: str) -> Iterator[sf.SoundFile]:
    """An open libsndfile handle on a path or bytes with at least one frame;
    libsndfile's and the OS's errors, on opening or while reading, become
    AudioErrors naming `label`."""
    if isinstance(source, bytes):
        if not source:
            raise EmptyAudioError(label, "0 bytes")
        handle: io.BytesIO | str = io.BytesIO(source)
        regular = True
    else:
        path = Path(source)
        try:
            status = path.stat()
        except OSError as error:
            raise UnreadableAudioError(label, error.strerror or str(error)) from None
        if stat.S_ISDIR(status.st_mode):
            raise UnreadableAudioError(label, "a directory, not an audio file")
        if status.st_size == 0:
            raise EmptyAudioError(label, "0 bytes")
        handle, regular = os.fspath(path), stat.S_ISREG(status.st_mode)
    try:
        with sf.SoundFile(handle) as sound:
            if sound.frames == 0:
                raise EmptyAudioError(label, "the file holds no audio frames")
            yield sound
    except sf.SoundFileError as error:
        why = getattr(error, "error_string", None) or str(error)
        if regular and why == _LIBSNDFILE_NOT_A_FILE:
            why = "no audio frame could be decoded"
        raise UndecodableAudioError(label, f"not a readable audio file ({why})") from None
    except OSError as error:
        raise UnreadableAudioError(label, error.strerror or str(error)) from None
