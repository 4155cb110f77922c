import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pyroomacoustics as pra
import pytest
import scipy.linalg
import scipy.signal

from slc import config_io
from slc.config import AugmentConfig
from slc.data import augment, rooms
from slc.data.augment import Recipe

SR = 16000
EVERY_PART = AugmentConfig(
    copies=8, speed_prob=1.0, pitch_prob=1.0, noise_prob=1.0, gain_prob=1.0, band_limit_prob=1.0, silence_prob=1.0,
    formant_prob=1.0, reverb_prob=1.0, rt60_s=(0.15, 0.4), eq_prob=1.0, telephone_prob=1.0, codec_prob=1.0,
)  # fmt: skip
NO_PART = AugmentConfig(
    speed_prob=0, pitch_prob=0, noise_prob=0, gain_prob=0, band_limit_prob=0, silence_prob=0, formant_prob=0,
    reverb_prob=0, eq_prob=0, telephone_prob=0, codec_prob=0,
)  # fmt: skip
# A room where the microphone stands 1 m from the speaker.
ROOM = {"room_m": (6.0, 5.0, 3.0), "source_m": (2.0, 2.0, 1.5), "mic_m": (2.8, 2.6, 1.5)}


def power_db(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)))


def tone(freq: float, seconds: float = 3.0, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def peak_hz(x: np.ndarray) -> float:
    """Frequency of the strongest component, interpolated on an 8x zero-padded FFT."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 8 * len(x)))
    return np.argmax(spectrum) * SR / (8 * len(x))


def band_db(x: np.ndarray, low_hz: float, high_hz: float) -> float:
    """Mean power spectral density (dB) between two frequencies (Welch, 2048-sample segments)."""
    freqs, psd = scipy.signal.welch(x, SR, nperseg=2048)
    return float(10 * np.log10(psd[(freqs >= low_hz) & (freqs <= high_hz)].mean()))


def centroid_hz(x: np.ndarray) -> float:
    freqs, psd = scipy.signal.welch(x, SR, nperseg=2048)
    return float((freqs * psd).sum() / psd.sum())


def vowel(f0: float = 120.0, formants: tuple[float, ...] = (500.0, 1500.0, 2500.0), seconds: float = 2.0) -> np.ndarray:
    """A steady vowel: a pulse train at `f0` through a resonance (80 Hz wide) at each formant."""
    x = np.zeros(int(seconds * SR))
    x[:: round(SR / f0)] = 1.0
    pole = np.exp(-np.pi * 80 / SR)
    for formant in formants:
        x = scipy.signal.lfilter([1 - pole], [1, -2 * pole * np.cos(2 * np.pi * formant / SR), pole**2], x)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)


def formants_hz(x: np.ndarray, order: int = 12) -> np.ndarray:
    """The peaks of a steady sound's LPC envelope (autocorrelation method, whole clip)."""
    x = x.astype(np.float64) * np.hanning(len(x))
    r = np.fft.irfft(np.abs(np.fft.rfft(x, 2 * len(x))) ** 2)[: order + 1]
    a = scipy.linalg.solve_toeplitz(r[:order], -r[1:])
    freqs, response = scipy.signal.freqz([1.0], np.r_[1.0, a], worN=4096, fs=SR)
    return freqs[scipy.signal.find_peaks(np.abs(response))[0]]


def f0_hz(x: np.ndarray) -> float:
    """The fundamental of a harmonic sound: the strongest cepstral peak between 60 and 400 Hz."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    cepstrum = np.fft.irfft(np.log(spectrum + 1e-9 * spectrum.max()))
    low, high = SR // 400, SR // 60
    return SR / (low + int(np.argmax(cepstrum[low:high])))


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
        gain_db=6.0, band_rate=8000, formant_warp=0.85, rt60_s=0.5, eq=(("peak", 2000.0, 12.0, 1.0),),
        telephone=True, codec="opus", codec_level=0.98, **ROOM,
    )
    outputs = [augment.apply(clip, harsh)] + [a for _, a in augment.copies(clip, "x", EVERY_PART)]
    for out in outputs:
        assert out.dtype == np.float32 and out.ndim == 1
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.0


def test_draw_switches_parts_by_probability_and_stays_in_range():
    rng = np.random.default_rng(0)
    neutral = augment.draw(rng, NO_PART)
    assert neutral == Recipe(seed=neutral.seed, floor_db=NO_PART.floor_db)
    for _ in range(50):
        r = augment.draw(rng, EVERY_PART)
        assert EVERY_PART.speed[0] <= r.speed <= EVERY_PART.speed[1]
        assert EVERY_PART.pitch_semitones[0] <= r.pitch_semitones <= EVERY_PART.pitch_semitones[1]
        assert r.noise in EVERY_PART.noise_colors and EVERY_PART.snr_db[0] <= r.snr_db <= EVERY_PART.snr_db[1]
        assert EVERY_PART.gain_db[0] <= r.gain_db <= EVERY_PART.gain_db[1]
        assert r.band_rate in EVERY_PART.band_limit_rates
        assert all(EVERY_PART.silence_s[0] <= p <= EVERY_PART.silence_s[1] for p in (r.pad_start_s, r.pad_end_s))
        assert EVERY_PART.formant_warp[0] <= r.formant_warp <= EVERY_PART.formant_warp[1]
        low, high = EVERY_PART.room_min_m, EVERY_PART.room_max_m
        assert all(lo <= side <= hi for lo, side, hi in zip(low, r.room_m, high))
        for point in (r.source_m, r.mic_m):
            assert all(rooms.MARGIN_M <= p <= side - rooms.MARGIN_M for p, side in zip(point, r.room_m))
        dry_limit = max(EVERY_PART.rt60_s[0], 1.2 * rooms.shortest_rt60(r.room_m)) - 0.001
        assert dry_limit <= r.rt60_s <= max(EVERY_PART.rt60_s[1], 1.2 * rooms.shortest_rt60(r.room_m)) + 0.001
        assert EVERY_PART.eq_bands[0] <= len(r.eq) <= EVERY_PART.eq_bands[1]
        for kind, hz, db, octaves in r.eq:
            assert kind in AugmentConfig.EQ_KINDS and EVERY_PART.eq_hz[0] <= hz <= EVERY_PART.eq_hz[1]
            assert EVERY_PART.eq_gain_db[0] <= db <= EVERY_PART.eq_gain_db[1]
            assert EVERY_PART.eq_octaves[0] <= octaves <= EVERY_PART.eq_octaves[1]
        assert r.telephone and r.codec in EVERY_PART.codecs
        assert EVERY_PART.codec_level[0] <= r.codec_level <= EVERY_PART.codec_level[1]


def test_parts_left_off_draw_the_recipes_drawn_before_they_existed():
    """A recipe stored before formants, rooms, equaliser, telephone and codecs
    were parts still loads, and the settings of that time still draw it."""
    stored = (
        '{"seed": 948159094065940963, "speed": 1.1497, "pitch_semitones": 2.01, "pad_start_s": 0.0, "pad_end_s": 0.0, '
        '"noise": "pink", "snr_db": 7.11, "floor_db": -60.0, "gain_db": 4.7, "band_rate": 8000}'
    )
    then = dataclasses.replace(NO_PART, speed_prob=0.8, pitch_prob=0.3, pitch_semitones=(-3.0, 3.0), noise_prob=0.8,
                               gain_prob=0.5, band_limit_prob=0.3, silence_prob=0.5)  # fmt: skip
    assert augment.draw(np.random.default_rng([3, 3]), then) == Recipe.from_json(stored)


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
        ('{"seed": 1, "formant_warp": 3}', r"formant_warp must be within \[0.5, 2\], got 3"),
        ('{"seed": 1, "room_m": [5, 4, 3], "rt60_s": 0.4}', "room_m, rt60_s, source_m and mic_m go together"),
        ('{"seed": 1, "eq": [["notch", 100, 3, 1]]}', "unknown equaliser band 'notch'"),
        ('{"seed": 1, "codec": "aac", "codec_level": 0.5}', "unknown codec 'aac'"),
        ('{"seed": 1, "codec": "mp3"}', "codec and codec_level"),
        ('{"seed": 1, "codec": "mp3", "codec_level": 1.0}', r"codec_level \(within \[0, 1\)\)"),
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
        ({"speed": (1.15, 0.85)}, r"speed must be a \(min, max\) pair with min <= max, got \(1.15, 0.85\)"),
        ({"snr_db": (3.0,)}, r"snr_db must be a \(min, max\) pair"),
        ({"speed": (0.0, 1.1)}, "speed must be > 0"),
        ({"silence_s": (-0.5, 1.0)}, "silence_s >= 0"),
        ({"noise_colors": ("white", "blue")}, r"noise_colors must name some of \['white', 'pink', 'brown'\]"),
        ({"noise_colors": ()}, "noise_colors must name some of"),
        ({"noise_prob": 1.5}, r"noise_prob must be within \[0, 1\], got 1.5"),
        ({"band_limit_rates": (8000, 22050)}, "band_limit_rates must be rates in Hz below 16000"),
        ({"pitch_semitones": (-24.0, 0.0)}, r"pitch_semitones must be within \[-12, 12\]"),
        ({"copies": -1}, "copies and seed must be >= 0"),
        ({"reverb_prob": -0.1}, r"reverb_prob must be within \[0, 1\]"),
        ({"formant_warp": (0.4, 1.2)}, r"formant_warp must be within \[0.5, 2\]"),
        ({"room_max_m": (10.0, 2.0, 4.0)}, "room_min_m and room_max_m must be"),
        ({"room_min_m": (3.0, 3.0)}, "room_min_m and room_max_m must be"),
        ({"rt60_s": (0.0, 0.5)}, "rt60_s must be > 0"),
        ({"eq_bands": (0, 2)}, "eq_bands must be >= 1"),
        ({"codecs": ("mp3", "aac")}, r"codecs must name some of \['mp3', 'vorbis', 'opus'\]"),
        ({"codec_level": (0.5, 1.0)}, r"codec_level must be within \[0, 1\)"),
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


@pytest.mark.parametrize("warp", [0.85, 0.92, 1.08, 1.15])
def test_formant_warp_moves_the_formants_and_keeps_pitch_and_length(warp):
    clip = vowel()
    out = augment.apply(clip, Recipe(seed=0, formant_warp=warp))
    assert len(out) == len(clip)
    assert f0_hz(out) == pytest.approx(f0_hz(clip), rel=0.02)
    np.testing.assert_allclose(formants_hz(out)[:3], formants_hz(clip)[:3] * warp, rtol=0.05)


def test_formant_warp_moves_speech_centroid_in_order(speech):
    centroids = [centroid_hz(augment.apply(speech, Recipe(seed=0, formant_warp=w))) for w in (0.85, 1.0, 1.15)]
    assert centroids == sorted(centroids) and centroids[2] - centroids[0] > 0.15 * centroids[1]


@pytest.mark.parametrize("semitones", [-5.0, 5.0])
def test_pitch_moves_apart_from_formants_when_formants_are_set(semitones):
    clip = vowel()
    factor = 2 ** (semitones / 12)
    follows = augment.apply(clip, Recipe(seed=0, pitch_semitones=semitones))
    kept = augment.apply(clip, Recipe(seed=0, pitch_semitones=semitones, formant_warp=1.0))
    for out in (follows, kept):
        assert len(out) == len(clip)
        assert f0_hz(out) == pytest.approx(f0_hz(clip) * factor, rel=0.02)
    np.testing.assert_allclose(formants_hz(follows)[:3], formants_hz(clip)[:3] * factor, rtol=0.05)
    np.testing.assert_allclose(formants_hz(kept)[:3], formants_hz(clip)[:3], rtol=0.05)


def test_room_response_decays_at_its_rt60_and_starts_with_the_direct_sound():
    for rt60 in (0.3, 0.6):
        response = rooms.impulse_response(ROOM["room_m"], rt60, ROOM["source_m"], ROOM["mic_m"], SR)
        # The image source model's decay runs somewhat longer than Sabine's formula says.
        assert 0.8 * rt60 <= pra.experimental.measure_rt60(response, fs=SR) <= 1.5 * rt60
        # Propagation delay removed: the direct sound's filter is centred where it always is.
        assert np.argmax(np.abs(response)) == pra.constants.get("frac_delay_length") // 2


def test_reverb_adds_a_tail_that_grows_with_rt60_and_keeps_length_and_power():
    rng = np.random.default_rng(0)
    burst = np.zeros(2 * SR, np.float32)
    burst[: SR // 2] = rng.standard_normal(SR // 2) * 0.1
    tails = []
    for rt60 in (0.2, 0.4, 0.8):
        out = augment.apply(burst, Recipe(seed=0, rt60_s=rt60, **ROOM))
        assert len(out) == len(burst)
        assert power_db(out) == pytest.approx(power_db(burst), abs=0.01)
        # 50-250 ms after the burst stops, relative to the burst; silence there without a room.
        tails.append(power_db(out[SR // 2 + 800 : SR // 2 + 4000]) - power_db(burst[: SR // 2]))
    assert tails[0] < tails[1] < tails[2] and tails[2] > -15


@pytest.mark.parametrize(
    "room, message",
    [
        (dict(ROOM, rt60_s=0.05), r"cannot reverberate for only 0.05 s; its shortest RT60 is 0.115 s"),
        (dict(ROOM, rt60_s=0.5, mic_m=(7.0, 1.0, 1.0)), r"microphone at \(7.0, 1.0, 1.0\) m is outside"),
    ],
)
def test_room_that_cannot_be_built_is_a_clear_error(speech, room, message):
    with pytest.raises(ValueError, match=message):
        augment.apply(speech, Recipe(seed=0, **room))


def test_telephone_keeps_the_voice_band_and_removes_the_rest():
    noise = (np.random.default_rng(0).standard_normal(3 * SR) * 0.1).astype(np.float32)
    out = augment.apply(noise, Recipe(seed=0, telephone=True))
    assert len(out) == len(noise)
    assert band_db(out, 500, 3000) - band_db(noise, 500, 3000) == pytest.approx(0.0, abs=1.0)
    assert band_db(out, 4200, 7800) - band_db(noise, 4200, 7800) < -60
    assert band_db(out, 50, 150) - band_db(noise, 50, 150) < -20


@pytest.mark.parametrize("amplitude", [0.01, 0.1, 0.9])
def test_telephone_quantises_with_mu_law(amplitude):
    freq = 1013.0  # not a divisor of 8 kHz, so the quantisation error is spread like noise
    out = augment.apply(tone(freq, amplitude=amplitude), Recipe(seed=0, telephone=True))[SR:-SR]
    t = np.arange(SR, 2 * SR) / SR
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    residual = out - basis @ np.linalg.lstsq(basis, out, rcond=None)[0]
    # 8-bit mu-law keeps 35-39 dB of signal over quantisation noise from -40 dBFS
    # to full scale; 8-bit linear codes would keep about 10 dB at -40 dBFS, 16-bit over 55.
    assert 33 < power_db(out) - power_db(residual) < 42


@pytest.mark.parametrize("codec", ["mp3", "vorbis", "opus"])
def test_codec_degrades_but_keeps_the_speech(speech, codec):
    out = augment.apply(speech, Recipe(seed=0, codec=codec, codec_level=0.95))
    assert len(out) == len(speech)
    assert not np.allclose(out, speech, atol=1e-3)
    assert power_db(speech) - power_db(out - speech) < 30  # lossy
    assert np.corrcoef(out, speech)[0, 1] > 0.95  # aligned, the same speech
    np.testing.assert_array_equal(out, augment.apply(speech, Recipe(seed=0, codec=codec, codec_level=0.95)))


def test_codec_that_cannot_encode_the_rate_is_a_clear_error():
    with pytest.raises(ValueError, match="codec opus at level 0.9 cannot encode 22050 Hz audio"):
        augment.apply(tone(300.0), Recipe(seed=0, codec="opus", codec_level=0.9), sample_rate=22050)


def test_equaliser_bands_change_the_level_at_their_frequencies():
    noise = (np.random.default_rng(0).standard_normal(3 * SR) * 0.05).astype(np.float32)
    bands = (("peak", 1000.0, 12.0, 0.5), ("lowshelf", 300.0, -10.0, 0.25), ("highshelf", 5000.0, 6.0, 0.25))
    out = augment.apply(noise, Recipe(seed=0, eq=bands))
    assert len(out) == len(noise)
    for (low, high), gain in {(950, 1050): 12.0, (50, 120): -10.0, (7000, 7900): 6.0, (2400, 2600): 0.0}.items():
        assert band_db(out, low, high) - band_db(noise, low, high) == pytest.approx(gain, abs=0.5)


def test_recipes_with_every_part_round_trip_and_old_recipes_load(speech):
    recipe = Recipe(
        seed=3, formant_warp=1.1, rt60_s=0.4, eq=(("peak", 800.0, -6.0, 1.0),), telephone=True, codec="mp3",
        codec_level=0.9, **ROOM,
    )
    assert Recipe.from_json(recipe.to_json()) == recipe
    np.testing.assert_array_equal(augment.apply(speech, Recipe.from_json(recipe.to_json())), augment.apply(speech, recipe))
    old = Recipe.from_json('{"seed": 5, "speed": 1.1, "noise": "white", "snr_db": 10.0}')
    assert (old.formant_warp, old.room_m, old.eq, old.telephone, old.codec) == (None, None, (), False, None)
