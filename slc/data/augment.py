"""Waveform augmentation of training clips: random, reproducible copies.

A `Recipe` holds every choice behind one augmented copy, its noise seed
included, so `apply(clip, recipe)` gives the same samples on any machine and
the recipe, stored as JSON next to the copy, says exactly what was done.
`copies` draws a clip's recipes from `(config.seed, clip id)` alone, so a
clip's copies are the same on every run and on any worker.

`apply` follows the way a recording comes about: the speaker (speed, pitch),
pauses around the utterance (silence), the room (noise, noise floor), the
microphone level and converter (gain, clipping), the channel (band-limiting).
Pure numpy and soxr; with the default config about 1 ms per second of audio.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import soxr
from numpy.lib.stride_tricks import sliding_window_view

from slc.config import SAMPLE_RATE, AugmentConfig

# Below this, coloured noise is flat: microphones and rooms have little energy
# there, and an unbounded 1/f^2 would put nearly all its power into rumble.
_NOISE_CORNER_HZ = 50.0
# WSOLA frames of 32 ms span two pitch periods of even a low voice; the 8 ms
# search either way spans a whole period down to 62 Hz, so a match is found.
_FRAME_S = 0.032
_SEARCH_S = 0.008


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that makes one augmented copy. Neutral values switch a part
    off: `speed` 1, `pitch_semitones` 0, `noise` None, `gain_db` 0,
    `band_rate` None, pads 0, `floor_db` None."""

    seed: int  # seeds the noise and the noise floor
    speed: float = 1.0  # tempo and pitch factor: the copy is 1/speed as long
    pitch_semitones: float = 0.0  # pitch and formants move, tempo stays
    pad_start_s: float = 0.0
    pad_end_s: float = 0.0
    noise: str | None = None  # a colour of AugmentConfig.NOISE_COLORS
    snr_db: float | None = None  # speech power over noise power
    floor_db: float | None = None  # white noise floor power relative to speech power
    gain_db: float = 0.0
    band_rate: int | None = None  # Hz: resampled down to this and back

    def __post_init__(self) -> None:
        if self.noise is not None and self.noise not in AugmentConfig.NOISE_COLORS:
            raise ValueError(f"unknown noise colour {self.noise!r}; choose from {list(AugmentConfig.NOISE_COLORS)}")
        if (self.noise is None) != (self.snr_db is None):
            raise ValueError(f"noise and snr_db go together, got noise={self.noise!r}, snr_db={self.snr_db}")
        if self.speed <= 0 or self.pad_start_s < 0 or self.pad_end_s < 0:
            raise ValueError(
                f"speed must be > 0 and pads >= 0, got speed={self.speed}, "
                f"pads=({self.pad_start_s}, {self.pad_end_s})"
            )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        """Inverse of `to_json`; unknown keys and invalid values raise ValueError."""
        data = json.loads(text)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown Recipe fields: {sorted(unknown)}")
        return cls(**data)


def draw(rng: np.random.Generator, config: AugmentConfig) -> Recipe:
    """A random recipe: each part on with its `*_prob`, values uniform in its
    range. Values are rounded so that the stored JSON stays readable; `apply`
    uses the rounded values, so the record is exact."""

    def on(prob: float) -> bool:
        return bool(rng.random() < prob)

    def uniform(span: tuple[float, float], digits: int) -> float:
        return round(float(rng.uniform(*span)), digits)

    seed = int(rng.integers(2**63))
    speed = uniform(config.speed, 4) if on(config.speed_prob) else 1.0
    pitch = uniform(config.pitch_semitones, 2) if on(config.pitch_prob) else 0.0
    pads = (uniform(config.silence_s, 3), uniform(config.silence_s, 3)) if on(config.silence_prob) else (0.0, 0.0)
    noise = snr = None
    if on(config.noise_prob):
        noise = str(rng.choice(config.noise_colors))
        snr = uniform(config.snr_db, 2)
    gain = uniform(config.gain_db, 2) if on(config.gain_prob) else 0.0
    band_rate = int(rng.choice(config.band_limit_rates)) if on(config.band_limit_prob) else None
    return Recipe(
        seed=seed, speed=speed, pitch_semitones=pitch, pad_start_s=pads[0], pad_end_s=pads[1],
        noise=noise, snr_db=snr, floor_db=config.floor_db, gain_db=gain, band_rate=band_rate,
    )


def apply(clip: np.ndarray, recipe: Recipe, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One augmented copy of `clip` (`float[n]`, mono, at `sample_rate`).

    Returns `float32[m]`, finite, within [-1, 1], with m = round(n / speed)
    plus the padding (round(pad_s * sample_rate) at each end). SNR and floor
    are relative to the power of the speech, not of the padded copy. Overloads
    are clipped at full scale, as a converter does, not limited: clipping
    distortion is a condition to learn, and a limiter's level change alone
    would vanish in the features' mean normalisation. Raises ValueError for an
    empty clip or a `band_rate` not below `sample_rate`.
    """
    if len(clip) == 0:
        raise ValueError("cannot augment an empty clip")
    if recipe.band_rate is not None and recipe.band_rate >= sample_rate:
        raise ValueError(f"band_rate {recipe.band_rate} Hz must be below the clip's {sample_rate} Hz")
    audio = _voice(np.asarray(clip, dtype=np.float32), recipe.speed, recipe.pitch_semitones, sample_rate)
    speech_power = float(np.mean(np.square(audio, dtype=np.float64)))
    pads = (round(recipe.pad_start_s * sample_rate), round(recipe.pad_end_s * sample_rate))
    audio = np.pad(audio, pads)
    noise_seed, floor_seed = np.random.SeedSequence(recipe.seed).spawn(2)
    if recipe.noise is not None:
        power = speech_power * 10.0 ** (-recipe.snr_db / 10.0)
        audio += _noise(len(audio), AugmentConfig.NOISE_COLORS[recipe.noise], power, noise_seed, sample_rate)
    if recipe.floor_db is not None:
        audio += _noise(len(audio), 0.0, speech_power * 10.0 ** (recipe.floor_db / 10.0), floor_seed, sample_rate)
    audio = np.clip(audio * np.float32(10.0 ** (recipe.gain_db / 20.0)), -1.0, 1.0)
    if recipe.band_rate is not None:
        narrow = soxr.resample(audio, sample_rate, recipe.band_rate)
        wide = soxr.resample(narrow, recipe.band_rate, sample_rate)
        # The round trip can be a sample off; the filters' overshoot saturates as PCM does.
        audio = np.clip(np.pad(wide, (0, max(0, len(audio) - len(wide))))[: len(audio)], -1.0, 1.0)
    return np.ascontiguousarray(audio, dtype=np.float32)


def copies(
    clip: np.ndarray, clip_id: str, config: AugmentConfig, sample_rate: int = SAMPLE_RATE
) -> list[tuple[Recipe, np.ndarray]]:
    """`config.copies` pairs of (recipe, `apply(clip, recipe)`) for the clip
    called `clip_id`. Copy i depends only on (config, clip_id, i): the same on
    every run and worker, and unchanged when `config.copies` grows."""
    # Python's hash() of a str differs between processes; a digest does not.
    key = int.from_bytes(hashlib.blake2b(clip_id.encode("utf-8"), digest_size=8).digest(), "little")
    recipes = [draw(np.random.default_rng([config.seed, key, i]), config) for i in range(config.copies)]
    return [(recipe, apply(clip, recipe, sample_rate)) for recipe in recipes]


def _voice(clip: np.ndarray, speed: float, semitones: float, sample_rate: int) -> np.ndarray:
    """Speed perturbation (resampling: tempo and pitch by `speed`) and a pitch
    and formant shift by `semitones` at unchanged tempo (resampling by the
    combined factor, then WSOLA back to the length of speed alone)."""
    pitch = 2.0 ** (semitones / 12.0)
    length = max(1, round(len(clip) / speed))
    if speed * pitch != 1.0:
        # Read as if recorded at a higher rate, the clip plays faster and higher.
        clip = soxr.resample(clip, sample_rate * speed * pitch, sample_rate)
    if pitch != 1.0:
        clip = _stretch(clip, length, sample_rate)
    return clip


def _stretch(audio: np.ndarray, length: int, sample_rate: int) -> np.ndarray:
    """WSOLA time-scale change (Verhelst & Roelands, 1993): `float32[n]` ->
    `float32[length]` at the same pitch. Each Hann frame is taken from within
    `_SEARCH_S` of its ideal place in the input, where its first half best
    matches the second half of the previous frame, so that pitch periods line
    up and the overlap-add does not beat."""
    frame = 2 * round(_FRAME_S * sample_rate / 2)
    hop, search = frame // 2, round(_SEARCH_S * sample_rate)
    n_frames = -(-length // hop) + 1
    starts = np.round(np.arange(n_frames) * hop * len(audio) / length).astype(np.int64) + search
    # Frame 0 is centred on sample 0, and every search may reach `search` beyond its frame.
    padded = np.pad(audio, (hop + search, max(0, int(starts[-1]) + frame - len(audio))))
    chosen = starts.copy()
    for k in range(1, n_frames):
        overlapped = padded[chosen[k - 1] + hop : chosen[k - 1] + frame]
        low = starts[k] - search
        match = np.correlate(padded[low : low + hop + 2 * search], overlapped, "valid")
        chosen[k] = low + int(np.argmax(match))
    # A periodic Hann window's halves, overlapped by half a frame, sum to one.
    frames = sliding_window_view(padded, frame)[chosen] * np.hanning(frame + 1)[:-1].astype(np.float32)
    out = np.zeros((n_frames + 1) * hop, dtype=np.float32)
    out[: n_frames * hop] += frames[:, :hop].ravel()
    out[hop:] += frames[:, hop:].ravel()
    return out[hop : hop + length]


def _noise(
    length: int, exponent: float, power: float, seed: np.random.SeedSequence, sample_rate: int
) -> np.ndarray:
    """Gaussian noise `float32[length]` with mean square `power` and power
    spectral density 1/f^exponent (0 white, 1 pink, 2 brown), shaped in the
    frequency domain: one inverse FFT, no filter state."""
    rng = np.random.default_rng(seed)
    if exponent == 0.0:
        noise = rng.standard_normal(length, dtype=np.float32)
    else:
        size = -(-length // 4096) * 4096  # a length whose FFT is fast; the rest is cut off
        freqs = np.fft.rfftfreq(size, 1.0 / sample_rate).astype(np.float32)
        shape = np.maximum(freqs, np.float32(_NOISE_CORNER_HZ)) ** np.float32(-exponent / 2.0)
        shape[0] = 0.0  # no DC offset
        spectrum = rng.standard_normal(2 * len(freqs), dtype=np.float32).view(np.complex64) * shape
        noise = np.fft.irfft(spectrum, size)[:length]
    return noise * np.float32(np.sqrt(power / np.mean(np.square(noise, dtype=np.float64))))
