"""Waveform augmentation of training clips: random, reproducible copies.

A `Recipe` holds every choice behind one augmented copy, its noise seed
included, so `apply(clip, recipe)` gives the same samples on any machine and
the recipe, stored as JSON next to the copy, says exactly what was done.
`copies` draws a clip's recipes from `(config.seed, clip id)` alone, so a
clip's copies are the same on every run and on any worker.

`apply` follows the way a recording comes about: the speaker (speed, pitch,
vocal tract length), pauses around the utterance (silence), the room
(reverberation, noise, noise floor), the microphone (equaliser colouring,
level, converter clipping), the channel (band-limiting, telephone, codec).
Rooms are in `slc.data.rooms`, channels in `slc.data.channels`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import soxr
from numpy.lib.stride_tricks import sliding_window_view

from slc.config import SAMPLE_RATE, AugmentConfig
from slc.data import channels, rooms

# Below this, coloured noise is flat: microphones and rooms have little energy
# there, and an unbounded 1/f^2 would put nearly all its power into rumble.
_NOISE_CORNER_HZ = 50.0
# WSOLA frames of 32 ms span two pitch periods of even a low voice; the 8 ms
# search either way spans a whole period down to 62 Hz, so a match is found.
_FRAME_S = 0.032
_SEARCH_S = 0.008
# Formant warping: 32 ms frames at 75% overlap; an LPC envelope of order 20
# (the usual sample rate in kHz + 4) follows the formants, not the harmonics.
_ENVELOPE_FRAME_S = 0.032
_LPC_ORDER = 20
_ENVELOPE_MAX_GAIN_DB = 40.0  # a formant moved into a deep valley does not lift the noise there beyond this


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that makes one augmented copy. Neutral values switch a part
    off: `speed` 1, `pitch_semitones` 0, `formant_warp` None, `noise` None,
    `gain_db` 0, `band_rate` None, pads 0, `floor_db` None, `room_m` None,
    `eq` empty, `telephone` False, `codec` None."""

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
    # Spectral envelope (formants) scale against the speed-perturbed voice, pitch
    # and tempo kept; None: the formants follow the pitch shift.
    formant_warp: float | None = None
    room_m: tuple[float, float, float] | None = None  # a shoebox room (see slc.data.rooms), with:
    rt60_s: float | None = None
    source_m: tuple[float, float, float] | None = None
    mic_m: tuple[float, float, float] | None = None
    eq: tuple[channels.Band, ...] = ()  # (kind, Hz, dB, octaves) bands, see channels.eq_gain_db
    telephone: bool = False
    codec: str | None = None  # a codec of AugmentConfig.CODECS, with:
    codec_level: float | None = None  # its compression level, [0, 1)

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
        if self.formant_warp is not None and not 0.5 <= self.formant_warp <= 2.0:
            raise ValueError(f"formant_warp must be within [0.5, 2], got {self.formant_warp}")
        room = (self.room_m, self.rt60_s, self.source_m, self.mic_m)
        if any(part is None for part in room) and any(part is not None for part in room):
            raise ValueError(f"room_m, rt60_s, source_m and mic_m go together, got {room}")
        for kind, *_ in self.eq:
            if kind not in AugmentConfig.EQ_KINDS:
                raise ValueError(f"unknown equaliser band {kind!r}; choose from {list(AugmentConfig.EQ_KINDS)}")
        if self.codec is not None and self.codec not in AugmentConfig.CODECS:
            raise ValueError(f"unknown codec {self.codec!r}; choose from {list(AugmentConfig.CODECS)}")
        if (self.codec is None) != (self.codec_level is None) or not 0.0 <= (self.codec_level or 0.0) < 1.0:
            raise ValueError(
                f"codec and codec_level (within [0, 1)) go together, got codec={self.codec!r}, "
                f"codec_level={self.codec_level}"
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
        return cls(**{name: _tuples(value) for name, value in data.items()})


def _tuples(value: object) -> object:
    """JSON's lists back into the tuples a Recipe holds (so recipes compare and hash)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


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
    # Parts added later draw after the earlier ones, so a config that leaves
    # them off draws the recipes it drew before they existed.
    formant = uniform(config.formant_warp, 4) if on(config.formant_prob) else None
    room = (None,) * 4
    if on(config.reverb_prob):
        room = rooms.draw_room(rng, config.room_min_m, config.room_max_m, config.rt60_s)
    eq = _draw_eq(rng, config) if on(config.eq_prob) else ()
    telephone = on(config.telephone_prob)
    codec = level = None
    if on(config.codec_prob):
        codec = str(rng.choice(config.codecs))
        level = uniform(config.codec_level, 3)
    return Recipe(
        seed=seed, speed=speed, pitch_semitones=pitch, pad_start_s=pads[0], pad_end_s=pads[1],
        noise=noise, snr_db=snr, floor_db=config.floor_db, gain_db=gain, band_rate=band_rate,
        formant_warp=formant, room_m=room[0], rt60_s=room[1], source_m=room[2], mic_m=room[3], eq=eq,
        telephone=telephone, codec=codec, codec_level=level,
    )  # fmt: skip


def _draw_eq(rng: np.random.Generator, config: AugmentConfig) -> tuple[channels.Band, ...]:
    """Between `eq_bands` random bands: kind, frequency (log-uniform), gain, width."""
    bands = []
    for _ in range(int(rng.integers(config.eq_bands[0], config.eq_bands[1] + 1))):
        kind = str(rng.choice(AugmentConfig.EQ_KINDS))
        hz = round(float(np.exp(rng.uniform(*np.log(config.eq_hz)))), 1)
        db = round(float(rng.uniform(*config.eq_gain_db)), 2)
        bands.append((kind, hz, db, round(float(rng.uniform(*config.eq_octaves)), 3)))
    return tuple(bands)


def apply(clip: np.ndarray, recipe: Recipe, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One augmented copy of `clip` (`float[n]`, mono, at `sample_rate`).

    Returns `float32[m]`, finite, within [-1, 1], with m = round(n / speed)
    plus the padding (round(pad_s * sample_rate) at each end): a room's tail
    past the end is cut. SNR and floor are relative to the power of the
    speech, not of the padded copy; a room keeps that power. Overloads are
    clipped at full scale, as a converter does, not limited: clipping
    distortion is a condition to learn, and a limiter's level change alone
    would vanish in the features' mean normalisation. Raises ValueError for an
    empty clip, a `band_rate` not below `sample_rate`, a room that cannot be
    built, or a channel that cannot carry `sample_rate` (see slc.data.channels).
    """
    if len(clip) == 0:
        raise ValueError("cannot augment an empty clip")
    if recipe.band_rate is not None and recipe.band_rate >= sample_rate:
        raise ValueError(f"band_rate {recipe.band_rate} Hz must be below the clip's {sample_rate} Hz")
    audio = _voice(
        np.asarray(clip, dtype=np.float32), recipe.speed, recipe.pitch_semitones, recipe.formant_warp, sample_rate
    )
    speech_power = float(np.mean(np.square(audio, dtype=np.float64)))
    pads = (round(recipe.pad_start_s * sample_rate), round(recipe.pad_end_s * sample_rate))
    audio = np.pad(audio, pads)
    if recipe.room_m is not None:
        room = (recipe.room_m, recipe.rt60_s, recipe.source_m, recipe.mic_m)
        audio = rooms.reverberate(audio, rooms.impulse_response(*room, sample_rate))
    noise_seed, floor_seed = np.random.SeedSequence(recipe.seed).spawn(2)
    if recipe.noise is not None:
        power = speech_power * 10.0 ** (-recipe.snr_db / 10.0)
        audio += _noise(len(audio), AugmentConfig.NOISE_COLORS[recipe.noise], power, noise_seed, sample_rate)
    if recipe.floor_db is not None:
        audio += _noise(len(audio), 0.0, speech_power * 10.0 ** (recipe.floor_db / 10.0), floor_seed, sample_rate)
    if recipe.eq:
        audio = channels.equalize(audio, recipe.eq, sample_rate)
    audio = np.clip(audio * np.float32(10.0 ** (recipe.gain_db / 20.0)), -1.0, 1.0)
    if recipe.band_rate is not None:
        narrow = soxr.resample(audio, sample_rate, recipe.band_rate)
        wide = soxr.resample(narrow, recipe.band_rate, sample_rate)
        # The round trip can be a sample off; the filters' overshoot saturates as PCM does.
        audio = np.clip(np.pad(wide, (0, max(0, len(audio) - len(wide))))[: len(audio)], -1.0, 1.0)
    if recipe.telephone:
        audio = channels.telephone(audio, sample_rate)
    if recipe.codec is not None:
        audio = channels.codec(audio, recipe.codec, recipe.codec_level, sample_rate)
    # The channels' filters overshoot; a decoder saturates at full scale.
    return np.ascontiguousarray(np.clip(audio, -1.0, 1.0), dtype=np.float32)


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


def _voice(
    clip: np.ndarray, speed: float, semitones: float, formant_warp: float | None, sample_rate: int
) -> np.ndarray:
    """Speed perturbation (resampling: tempo and pitch by `speed`), a pitch
    and formant shift by `semitones` at unchanged tempo (resampling by the
    combined factor, then WSOLA back to the length of speed alone), then, with
    `formant_warp`, the spectral envelope moved so the formants sit at
    `formant_warp` times those of the speed-perturbed voice."""
    pitch = 2.0 ** (semitones / 12.0)
    length = max(1, round(len(clip) / speed))
    if speed * pitch != 1.0:
        # Read as if recorded at a higher rate, the clip plays faster and higher.
        clip = soxr.resample(clip, sample_rate * speed * pitch, sample_rate)
    if pitch != 1.0:
        clip = _stretch(clip, length, sample_rate)
    if formant_warp is not None and formant_warp != pitch:
        clip = _warp_envelope(clip, formant_warp / pitch, sample_rate)
    return clip


def _warp_envelope(audio: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Formants moved by `factor` at the same pitch and length: every STFT
    frame's spectrum is multiplied by its LPC envelope read at f / factor
    over the envelope at f, keeping the harmonics and phases of the voice;
    then overlap-added."""
    frame = 4 * round(_ENVELOPE_FRAME_S * sample_rate / 4)
    hop = frame // 4
    # Frames batched through one FFT call (scipy's ShortTimeFFT goes a frame at a time, 5x slower).
    padded = np.pad(audio, (frame, frame + (-len(audio)) % hop))
    window = np.hanning(frame + 1)[:-1]
    spectrum = np.fft.rfft(sliding_window_view(padded, frame)[::hop] * window, axis=1)  # [frames, bins]
    autocorrelation = np.fft.irfft(np.abs(spectrum) ** 2, frame, axis=1)[:, : _LPC_ORDER + 1]
    # A little white noise keeps the prediction stable on pure tones and digital silence.
    autocorrelation[:, 0] = autocorrelation[:, 0] * (1.0 + 1e-6) + 1e-12
    envelope = -np.log(np.abs(np.fft.rfft(_lpc(autocorrelation), frame, axis=1)))
    top = envelope.shape[1] - 1
    source = np.minimum(np.arange(top + 1) / factor, top)  # past Nyquist: the last bin's level
    low = np.floor(source).astype(np.int64)
    weight = source - low
    warped = envelope[:, low] * (1.0 - weight) + envelope[:, np.minimum(low + 1, top)] * weight
    limit = _ENVELOPE_MAX_GAIN_DB / 20.0 * np.log(10.0)
    frames = np.fft.irfft(spectrum * np.exp(np.clip(warped - envelope, -limit, limit)), frame, axis=1) * window
    out = np.zeros(len(padded) + frame)
    for quarter in range(4):
        block = frames[:, quarter * hop : (quarter + 1) * hop].ravel()
        out[quarter * hop : quarter * hop + len(block)] += block
    # Periodic Hann analysis and synthesis windows at a quarter-frame hop sum to 1.5.
    return (out[frame : frame + len(audio)] / 1.5).astype(np.float32)


def _lpc(autocorrelation: np.ndarray) -> np.ndarray:
    """Levinson-Durbin on every row at once: `float[frames, p + 1]`
    autocorrelations -> prediction error filters `[1, a_1 .. a_p]` of the same shape."""
    order = autocorrelation.shape[1] - 1
    coefficients = np.zeros_like(autocorrelation)
    coefficients[:, 0] = 1.0
    error = autocorrelation[:, 0].copy()
    for i in range(1, order + 1):
        reflection = -np.sum(coefficients[:, :i] * autocorrelation[:, i:0:-1], axis=1) / error
        coefficients[:, 1 : i + 1] = coefficients[:, 1 : i + 1] + reflection[:, None] * coefficients[:, i - 1 :: -1]
        error = error * (1.0 - reflection**2)
    return coefficients


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
