import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from slc import config_io
from slc.data import augment
from slc.data.augment import Recipe
from slc.config import AugmentConfig

SR = 16000
EVERY_PART = AugmentConfig(
    copies=8, speed_prob=1.0, pitch_prob=1.0, noise_prob=1.0, gain_prob=1.0, band_limit_prob=1.0, silence_prob=1.0
)


def power_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)))


def tone(freq: float, seconds: float = 3.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def peak_hz(x: np.ndarray) -> float:
    """Frequency of the strongest component, interpolated on an 8x zero-padded FFT."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 8 * len(x)))
    return np.argmax(spectrum) * SR / (8 * len(x))


def band_power(x: np.ndarray, low_hz: float, high_hz: float) -> float:
    """Power of `x` between two frequencies, from a Hann-windowed periodogram averaged over 2048-sample segments."""
    segments = x[: len(x) // 2048 * 2048].reshape(-1, 2048) * np.hanning(2048)
    psd = np.mean(np.abs(np.fft.rfft(segments)) ** 2, axis=0)
    freqs = np.fft.rfftfreq(2048, 1 / SR)
    return float(psd[(freqs >= low_hz) & (freqs <= high_hz)].sum())


@pytest.fixture(scope="module")
def speech(speech_16k) -> np.ndarray:
    """The session's espeak-ng speech at a level that leaves headroom for noise."""
    return (speech_16k * (0.25 / np.abs(speech_16k).max())).astype(np.float32)


def test_copies_are_reproducible_per_clip_id_and_seed(speech):
    first = augment.copies(speech, "de/clip-1.wav", EVERY_PART)
    again = augment.copies(speech, "de/clip-1.wav", EVERY_PART)
    other_id = augment.copies(speech, "de/clip-2.wav", EVERY_PART)
    other_seed = augment.copies(speech, "de/clip-1.wav", dataclasses.replace(EVERY_PART, seed=1))
    assert [r for r, _ in first] == [r for r, _ in again]
    for (_, a), (_, b) in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert {r for r, _ in first}.isdisjoint(r for r, _ in other_id)
    assert {r for r, _ in first}.isdisjoint(r for r, _ in other_seed)
    assert len({r.seed for r, _ in first}) == len(first)


def test_copies_are_the_same_in_another_process():
    script = (
        "from slc.data import augment; from slc.config import AugmentConfig; import numpy as np; "
        "print([r.to_json() for r, _ in augment.copies(np.ones(1600, np.float32) * 0.1, 'de/clip-1.wav', "
        "AugmentConfig(copies=3))])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    there = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    clip = np.ones(1600, np.float32) * 0.1
    here = [r.to_json() for r, _ in augment.copies(clip, "de/clip-1.wav", AugmentConfig(copies=3))]
    assert there.strip() == str(here)


def test_a_copy_does_not_depend_on_how_many_are_made(speech):
    two = augment.copies(speech, "x", dataclasses.replace(EVERY_PART, copies=2))
    five = augment.copies(speech, "x", dataclasses.replace(EVERY_PART, copies=5))
    assert [r for r, _ in two] == [r for r, _ in five[:2]]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_copies_makes_config_copies_items(speech, count):
    made = augment.copies(speech, "x", AugmentConfig(copies=count))
    assert len(made) == count
    assert all(isinstance(r, Recipe) and a.dtype == np.float32 for r, a in made)


@pytest.mark.parametrize("speed", [0.85, 0.9371, 1.0, 1.15])
def test_speed_changes_length_by_one_over_factor_and_pitch_by_factor(speed):
    clip = tone(200.0)
    out = augment.apply(clip, Recipe(seed=0, speed=speed))
    assert len(out) == round(len(clip) / speed)
    assert peak_hz(out[1000:-1000]) == pytest.approx(200.0 * speed, rel=0.005)


@pytest.mark.parametrize("semitones, speed", [(-3.0, 1.0), (3.0, 1.0), (2.5, 0.9), (-1.5, 1.15)])
@pytest.mark.parametrize("freq", [110.0, 330.0])
def test_pitch_shift_moves_pitch_and_keeps_tempo_without_beating(semitones, speed, freq):
    clip = tone(freq)
    out = augment.apply(clip, Recipe(seed=0, speed=speed, pitch_semitones=semitones))
    assert len(out) == round(len(clip) / speed)
    inner = out[1000:-1000]
    assert peak_hz(inner) == pytest.approx(freq * speed * 2 ** (semitones / 12), rel=0.005)
    # Misaligned overlap-add would make the loudness of a steady tone swing.
    envelope = np.sqrt(np.convolve(np.square(inner), np.ones(400) / 400, "valid"))
    assert envelope.min() > 0.9 * 0.5 / np.sqrt(2) and envelope.max() < 1.1 * 0.5 / np.sqrt(2)


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
@pytest.mark.parametrize("snr_db", [3.0, 17.5, 30.0])
@pytest.mark.parametrize("pads", [(0.0, 0.0), (0.7, 0.3)])
def test_noise_is_added_at_the_recipes_snr(speech, color, snr_db, pads):
    recipe = Recipe(
        seed=7, noise=color, snr_db=snr_db, floor_db=-60.0, gain_db=-6.0, pad_start_s=pads[0], pad_end_s=pads[1]
    )
    noisy = augment.apply(speech, recipe)
    clean = augment.apply(speech, dataclasses.replace(recipe, noise=None, snr_db=None))
    assert np.abs(noisy).max() < 1.0  # nothing clipped: the difference is the noise alone
    start = round(pads[0] * SR)
    measured = power_db(clean[start : start + len(speech)]) - power_db(noisy - clean)
    assert measured == pytest.approx(snr_db, abs=0.5)


@pytest.mark.parametrize("color, db_per_octave", [("white", 0.0), ("pink", -3.01), ("brown", -6.02)])
def test_noise_colours_have_their_spectral_slope(speech, color, db_per_octave):
    recipe = Recipe(seed=3, noise=color, snr_db=0.0)
    noise = augment.apply(speech, recipe) - augment.apply(speech, dataclasses.replace(recipe, noise=None, snr_db=None))
    segments = noise[: len(noise) // 2048 * 2048].reshape(-1, 2048) * np.hanning(2048)
    psd = np.mean(np.abs(np.fft.rfft(segments)) ** 2, axis=0)
    freqs = np.fft.rfftfreq(2048, 1 / SR)
    band = (freqs >= 200) & (freqs <= 6000)
    slope = np.polyfit(np.log2(freqs[band]), 10 * np.log10(psd[band]), 1)[0]
    assert slope == pytest.approx(db_per_octave, abs=0.5)


@pytest.mark.parametrize("rate", [8000, 11025])
def test_band_limiting_removes_energy_above_the_narrow_nyquist(rate):
    clip = (np.random.default_rng(0).standard_normal(3 * SR) * 0.1).astype(np.float32)
    out = augment.apply(clip, Recipe(seed=0, band_rate=rate))
    assert len(out) == len(clip)
    nyquist = rate / 2
    removed = band_power(out, nyquist + 100, SR / 2) / band_power(clip, nyquist + 100, SR / 2)
    kept = band_power(out, 100, 0.8 * nyquist) / band_power(clip, 100, 0.8 * nyquist)
    assert 10 * np.log10(removed) < -40
    assert 10 * np.log10(kept) == pytest.approx(0.0, abs=0.5)


def test_silence_padding_adds_samples_with_a_noise_floor(speech):
    out = augment.apply(speech, Recipe(seed=0, pad_start_s=0.25, pad_end_s=1.0, floor_db=-60.0))
    assert len(out) == len(speech) + 4000 + 16000
    np.testing.assert_allclose(out[4000:-16000], speech, atol=1e-3)
    for pad in (out[:4000], out[-16000:]):
        assert power_db(pad) == pytest.approx(power_db(speech) - 60.0, abs=1.0)
    bare = augment.apply(speech, Recipe(seed=0, pad_start_s=0.25, pad_end_s=1.0))
    assert not bare[:4000].any() and not bare[-16000:].any()


def test_gain_scales_and_overloads_clip_at_full_scale(speech_16k):
    loud = (speech_16k / np.abs(speech_16k).max()).astype(np.float32)
    quiet = augment.apply(loud, Recipe(seed=0, gain_db=-12.0))
    np.testing.assert_allclose(quiet, loud * 10 ** (-12 / 20), rtol=1e-6)
    hot = augment.apply(loud, Recipe(seed=0, gain_db=6.0))
    assert np.abs(hot).max() == 1.0
    assert 0 < np.mean(np.abs(hot) == 1.0) < 0.05  # a few overloaded peaks, as a hot recording has


@pytest.mark.parametrize(
    "clip",
    [
        pytest.param("loud", id="full-scale speech"),
        pytest.param(np.sign(tone(300.0)), id="full-scale square wave"),
        pytest.param(np.zeros(SR, np.float32), id="silence"),
        pytest.param(tone(440.0, seconds=0.3), id="0.3 s"),
    ],
)
def test_output_is_finite_float32_within_full_scale(speech_16k, clip):
    if isinstance(clip, str):
        clip = (speech_16k / np.abs(speech_16k).max()).astype(np.float32)
    harsh = Recipe(
        seed=1, speed=0.85, pitch_semitones=3.0, pad_start_s=0.5, noise="brown", snr_db=3.0, floor_db=-60.0,
        gain_db=6.0, band_rate=8000,
    )
    outputs = [augment.apply(clip, harsh)] + [a for _, a in augment.copies(clip, "x", EVERY_PART)]
    for out in outputs:
        assert out.dtype == np.float32 and out.ndim == 1
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.0


def test_draw_switches_parts_by_probability_and_stays_in_range():
    rng = np.random.default_rng(0)
    off = AugmentConfig(speed_prob=0, pitch_prob=0, noise_prob=0, gain_prob=0, band_limit_prob=0, silence_prob=0)
    neutral = augment.draw(rng, off)
    assert neutral == Recipe(seed=neutral.seed, floor_db=off.floor_db)
    for _ in range(50):
        r = augment.draw(rng, EVERY_PART)
        assert EVERY_PART.speed[0] <= r.speed <= EVERY_PART.speed[1]
        assert EVERY_PART.pitch_semitones[0] <= r.pitch_semitones <= EVERY_PART.pitch_semitones[1]
        assert r.noise in EVERY_PART.noise_colors and EVERY_PART.snr_db[0] <= r.snr_db <= EVERY_PART.snr_db[1]
        assert EVERY_PART.gain_db[0] <= r.gain_db <= EVERY_PART.gain_db[1]
        assert r.band_rate in EVERY_PART.band_limit_rates
        assert all(EVERY_PART.silence_s[0] <= p <= EVERY_PART.silence_s[1] for p in (r.pad_start_s, r.pad_end_s))


def test_recipe_json_round_trip_reproduces_the_copy(speech):
    for recipe, audio in augment.copies(speech, "x", EVERY_PART):
        text = recipe.to_json()
        assert isinstance(json.loads(text), dict)
        assert Recipe.from_json(text) == recipe
        np.testing.assert_array_equal(augment.apply(speech, Recipe.from_json(text)), audio)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"seed": 1, "colour": "pink"}', r"unknown Recipe fields: \['colour'\]"),
        ('{"seed": 1, "noise": "blue", "snr_db": 10}', "unknown noise colour 'blue'"),
        ('{"seed": 1, "noise": "pink"}', "noise and snr_db go together"),
        ('{"seed": 1, "speed": 0}', "speed must be > 0"),
    ],
)
def test_bad_recipe_is_a_clear_error(text, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_json(text)


def test_clips_it_cannot_augment_are_a_clear_error(speech):
    with pytest.raises(ValueError, match="empty clip"):
        augment.apply(np.zeros(0, np.float32), Recipe(seed=0))
    with pytest.raises(ValueError, match="band_rate 16000 Hz must be below the clip's 16000 Hz"):
        augment.apply(speech, Recipe(seed=0, band_rate=16000))


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(speed=(1.15, 0.85)), r"speed must be a \(min, max\) pair with min <= max, got \(1.15, 0.85\)"),
        (dict(snr_db=(3.0,)), r"snr_db must be a \(min, max\) pair"),
        (dict(speed=(0.0, 1.1)), "speed must be > 0"),
        (dict(silence_s=(-0.5, 1.0)), "silence_s >= 0"),
        (dict(noise_colors=("white", "blue")), r"noise_colors must name some of \['white', 'pink', 'brown'\]"),
        (dict(noise_colors=()), "noise_colors must name some of"),
        (dict(noise_prob=1.5), r"noise_prob must be within \[0, 1\], got 1.5"),
        (dict(band_limit_rates=(8000, 22050)), "band_limit_rates must be rates in Hz below 16000"),
        (dict(pitch_semitones=(-24.0, 0.0)), r"pitch_semitones must be within \[-12, 12\]"),
        (dict(copies=-1), "copies and seed must be >= 0"),
    ],
)
def test_bad_config_is_a_clear_error(settings, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig(**settings)


def test_switched_off_parts_need_no_choices():
    assert AugmentConfig(noise_prob=0.0, noise_colors=(), band_limit_prob=0.0, band_limit_rates=()).noise_colors == ()


def test_config_round_trips_through_json_and_yaml(tmp_path):
    settings = AugmentConfig(copies=4, seed=9, noise_colors=("pink",), band_limit_rates=(8000,), floor_db=None)
    for suffix in ("json", "yaml"):
        path = tmp_path / f"augment.{suffix}"
        path.write_text(config_io.dumps(settings, suffix))
        assert config_io.load(AugmentConfig, path) == settings
