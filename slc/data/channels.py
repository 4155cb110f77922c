"""What a recording goes through after the microphone: an equaliser's
colouring, a telephone line, a lossy codec. Each takes and returns mono
`float32[n]` at `sample_rate` with the same length, so speech keeps its timing.
"""

from __future__ import annotations

import io

import numpy as np
import scipy.fft
import scipy.signal
import scipy.special
import soundfile as sf
import soxr

from slc.config import AugmentConfig

# (kind, centre or corner Hz, gain dB, width in octaves)
Band = tuple[str, float, float, float]

TELEPHONE_RATE = 8000
TELEPHONE_BAND_HZ = (300.0, 3400.0)  # ITU-T G.712's voice channel
# Enough zeros after a clip that the equaliser's short response does not wrap around.
_EQ_TAIL = 2048


def eq_gain_db(freqs_hz: np.ndarray, bands: tuple[Band, ...]) -> np.ndarray:
    """The equaliser's gain (dB) at each frequency: the sum of its bands. On a
    log-frequency axis, a `peak` is a Gaussian bump whose standard deviation
    is the width; a `lowshelf` / `highshelf` a logistic step, full gain below /
    above the corner and half at it, rising over about the width."""
    octaves = np.log2(np.maximum(freqs_hz, 1.0))
    gain = np.zeros_like(octaves)
    for kind, hz, db, width in bands:
        distance = (octaves - np.log2(hz)) / width
        if kind == "peak":
            gain += db * np.exp(-0.5 * distance**2)
        elif kind in ("lowshelf", "highshelf"):
            gain += db * scipy.special.expit(4.0 * (distance if kind == "highshelf" else -distance))
        else:
            raise ValueError(f"unknown equaliser band {kind!r}; choose from {list(AugmentConfig.EQ_KINDS)}")
    return gain


def equalize(audio: np.ndarray, bands: tuple[Band, ...], sample_rate: int) -> np.ndarray:
    """`audio` through a zero-phase equaliser of `bands` (see `eq_gain_db`),
    applied in the frequency domain over the whole clip."""
    size = scipy.fft.next_fast_len(len(audio) + _EQ_TAIL, real=True)
    spectrum = scipy.fft.rfft(audio, size)
    gain = eq_gain_db(scipy.fft.rfftfreq(size, 1.0 / sample_rate), bands)
    return scipy.fft.irfft(spectrum * 10.0 ** (gain / 20.0), size)[: len(audio)].astype(np.float32)


def telephone(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """A narrowband call: down to 8 kHz, the 300-3400 Hz voice band (4th-order
    Butterworth band-pass, causal as a line is), G.711 mu-law (8 bits, by
    libsndfile), back to `sample_rate`. Raises ValueError at 8 kHz or below."""
    if sample_rate <= TELEPHONE_RATE:
        raise ValueError(f"telephone needs a clip above {TELEPHONE_RATE} Hz, got {sample_rate} Hz")
    narrow = soxr.resample(audio, sample_rate, TELEPHONE_RATE)
    band = scipy.signal.butter(4, TELEPHONE_BAND_HZ, "bandpass", fs=TELEPHONE_RATE, output="sos")
    narrow = np.clip(scipy.signal.sosfilt(band, narrow), -1.0, 1.0)
    coded = _round_trip(narrow, TELEPHONE_RATE, "WAV", "ULAW")
    return _same_length(soxr.resample(coded, TELEPHONE_RATE, sample_rate), len(audio))


def codec(audio: np.ndarray, name: str, level: float, sample_rate: int) -> np.ndarray:
    """`audio` encoded with codec `name` (one of AugmentConfig.CODECS) at
    soundfile's `compression_level` `level` (0 best, towards 1 smallest; below
    1, as libsndfile's MP3 encoder refuses 1) and decoded again. Raises
    ValueError for an unknown codec or one that cannot encode this rate."""
    if name not in AugmentConfig.CODECS:
        raise ValueError(f"unknown codec {name!r}; choose from {list(AugmentConfig.CODECS)}")
    container, subtype = AugmentConfig.CODECS[name]
    try:
        decoded = _round_trip(np.clip(audio, -1.0, 1.0), sample_rate, container, subtype, level)
    except sf.LibsndfileError as error:
        raise ValueError(f"codec {name} at level {level} cannot encode {sample_rate} Hz audio: {error}") from None
    return _same_length(decoded, len(audio))


def _round_trip(
    audio: np.ndarray, sample_rate: int, container: str, subtype: str, level: float | None = None
) -> np.ndarray:
    encoded = io.BytesIO()
    sf.write(encoded, audio, sample_rate, format=container, subtype=subtype, compression_level=level)
    encoded.seek(0)
    return sf.read(encoded, dtype="float32")[0]


def _same_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Resampling and codec frames can leave a few samples more or fewer."""
    return np.ascontiguousarray(np.pad(audio, (0, max(0, length - len(audio))))[:length], dtype=np.float32)
