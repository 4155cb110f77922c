"""A live stream without sockets: the start message, PCM in any framing, the
voice-activity gate, and the smoothing that both streams and recordings'
timelines go through. The model is replaced by known probabilities, so each
test runs in well under a second."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import espeak_wav

from slc.apps.stream_activity import is_speech
from slc.apps.stream_session import StreamClosed, StreamSession, StreamStart
from slc.config import FeatureConfig, StreamConfig, WindowConfig
from slc.runtime.smoothing import Smoother, timeline

RATE = 16000
CODES = ("de", "en", "fr", "it")
WINDOW = WindowConfig()
FEATURES = FeatureConfig()


def speech(text: str, voice: str) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(espeak_wav(text, voice)), dtype="float32")
    return soxr.resample(samples, rate, RATE).astype(np.float32)


def one_hot(language: str, sure: float = 0.9) -> np.ndarray:
    row = np.full(len(CODES), (1 - sure) / (len(CODES) - 1))
    row[CODES.index(language)] = sure
    return row


# --- smoothing: the same for streams and recordings -------------------------


def test_one_or_two_odd_windows_never_flip_the_language_and_three_sure_ones_do():
    smoother = Smoother(len(CODES), WINDOW.change_evidence, WINDOW.evidence_cap)
    pushed = [smoother.push(one_hot(lang, 0.99), WINDOW.hop_s) for lang in ["de", "de", "de", "it", "it", "de", "fr", "fr", "fr"]]
    changes = [(i, c.label, c.since) for i, c in enumerate(pushed) if c]
    assert changes == [(2, CODES.index("de"), 0), (8, CODES.index("fr"), 6)]


def test_a_stream_holds_through_two_seconds_of_sure_odd_windows_and_follows_a_change():
    """A stream's detector (StreamConfig): windows every 0.5 s. Four windows
    in a row 95 % sure of another language (2 s) do not flip it; a change
    whose windows are that sure is confirmed at the fifth."""
    config = StreamConfig()
    smoother = Smoother(len(CODES), config.change_evidence, config.evidence_cap)
    heard = ["de"] * 8 + ["it"] * 4 + ["de"] * 8 + ["fr"] * 8
    pushed = [smoother.push(one_hot(lang, 0.95), config.hop_s) for lang in heard]
    changes = [(i, CODES[c.label], c.since) for i, c in enumerate(pushed) if c]
    assert changes == [(4, "de", 0), (24, "fr", 20)]


def windows_of(truth: list[tuple[str, float]], window_s: float, hop_s: float, blips: dict[float, str]):
    """Windows over a recording of `truth` (language, seconds) -> bounds and
    probabilities: each window votes for the language of most of its audio
    (0.7 sure), except the windows starting at `blips`' times, which vote for
    another language, very sure."""
    edges = np.cumsum([0] + [s for _, s in truth])
    n = int(edges[-1] * RATE)
    starts = np.arange(0, edges[-1] - window_s + 1e-9, hop_s)
    bounds, scores = [], []
    for start in starts:
        middle = start + window_s / 2
        language = truth[int(np.searchsorted(edges, middle, side="right")) - 1][0]
        row = one_hot(blips[round(start, 3)], 0.95) if round(start, 3) in blips else one_hot(language, 0.7)
        bounds.append((int(start * RATE), int((start + window_s) * RATE)))
        scores.append(row)
    return bounds, np.array(scores), n, edges


def test_a_de_fr_de_recording_gets_three_segments_without_blips_and_its_boundaries_within_a_hop():
    # 63 s: German, French, German; two-window `it` blips inside each part.
    truth = [("de", 21.0), ("fr", 22.0), ("de", 20.0)]
    bounds, scores, n, edges = windows_of(truth, WINDOW.window_s, WINDOW.hop_s, {6.0: "it", 8.0: "it", 30.0: "it", 50.0: "it", 52.0: "it"})
    segments = timeline(bounds, scores, CODES, n, RATE, WINDOW.hop_s, WINDOW.change_evidence, WINDOW.evidence_cap)
    assert [s.language for s in segments] == ["de", "fr", "de"]
    assert segments[0].start_s == 0 and segments[-1].end_s == 63.0
    for segment, edge in zip(segments[1:], edges[1:-1]):
        assert abs(segment.start_s - edge) <= WINDOW.hop_s


def test_min_confidence_makes_unsure_segments_unknown_and_merges_them():
    truth = [("de", 20.0), ("fr", 20.0)]
    bounds, scores, n, _ = windows_of(truth, 4.0, 2.0, {})
    scores[: len(scores) // 2] = 0.5 * scores[: len(scores) // 2] + 0.5 / len(CODES)  # German: unsure
    segments = timeline(bounds, scores, CODES, n, RATE, 2.0, WINDOW.change_evidence, WINDOW.evidence_cap, 0.6)
    assert [s.language for s in segments] == ["unknown", "fr"]


# --- the voice-activity gate -----------------------------------------------


def test_the_gate_hears_speech_and_not_silence_noise_or_tones():
    rng = np.random.default_rng(0)
    german = speech("Guten Morgen. Der Zug nach Zürich fährt heute um halb neun vom dritten Gleis ab.", "de")
    brown = np.cumsum(rng.standard_normal(4 * RATE))
    pink = np.fft.irfft(np.fft.rfft(rng.standard_normal(4 * RATE)) / np.sqrt(np.arange(2 * RATE + 1) + 1))
    config = StreamConfig()

    def gate(clip):
        return is_speech(np.asarray(clip, dtype=np.float32), RATE, config.speech_level_db, config.speech_range_db)

    assert gate(german[: 4 * RATE]) and gate(german[RATE : 3 * RATE])
    assert gate(german[: 4 * RATE] * 0.1)  # 20 dB quieter
    for quiet in (np.zeros(4 * RATE), rng.standard_normal(4 * RATE) * 1e-4):
        assert not gate(quiet)
    for scale in (0.01, 0.3):
        assert not gate(rng.standard_normal(4 * RATE) * scale)
        assert not gate(brown / np.abs(brown).max() * scale)
        assert not gate(pink / np.abs(pink).max() * scale)
    assert not gate(0.3 * np.sin(2 * np.pi * 440 * np.arange(4 * RATE) / RATE))
    assert not gate(np.concatenate([np.zeros(3 * RATE), rng.standard_normal(RATE) * 0.05]))  # noise begins


# --- the start message ------------------------------------------------------

BAD_STARTS = [
    "not json", "[1, 2]", "{}", '{"sample_rate": 16000}', '{"sample_rate": 4000, "encoding": "pcm_s16le"}',
    '{"sample_rate": 16000.5, "encoding": "pcm_s16le"}', '{"sample_rate": true, "encoding": "pcm_s16le"}',
    '{"sample_rate": 16000, "encoding": "mp3"}', '{"sample_rate": 16000, "encoding": "pcm_s16le", "channels": 0}',
    '{"sample_rate": 16000, "encoding": "pcm_s16le", "allow": "de"}',
    '{"sample_rate": 16000, "encoding": "pcm_s16le", "allow": ["xx"]}',
    '{"sample_rate": 16000, "encoding": "pcm_s16le", "min_confidence": 2}',
    '{"sample_rate": 16000, "encoding": "pcm_s16le", "hop_s": 0}',
    '{"sample_rate": 16000, "encoding": "pcm_s16le", "surprise": 1}',
    '{"type": "end"}',
]  # fmt: skip


@pytest.mark.parametrize("text", BAD_STARTS)
def test_a_malformed_start_message_is_refused_with_1008_and_a_reason(text):
    with pytest.raises(StreamClosed) as raised:
        StreamStart.parse(text, CODES)
    assert raised.value.code == 1008 and raised.value.error == "bad_start"
    assert raised.value.detail.startswith("start message: ")


def test_a_good_start_message_keeps_what_it_asks():
    start = StreamStart.parse(json.dumps({
        "type": "start", "sample_rate": 44100, "encoding": "f32le", "channels": 2, "allow": ["DE", "fr"],
        "min_confidence": 0.5, "hop_s": 1,
    }), CODES)  # fmt: skip
    assert start == StreamStart(44100, "f32le", 2, ("de", "fr"), 0.5, 1, 3)


# --- audio in any framing -> windows -> events ------------------------------


def session(**start) -> StreamSession:
    asked = StreamStart(**{"sample_rate": RATE, "encoding": "pcm_s16le", **start})
    return StreamSession(asked, StreamConfig(), WINDOW, CODES, FEATURES)


def test_44k_stereo_in_odd_frames_gives_the_windows_of_the_resampled_mono_audio():
    rng = np.random.default_rng(1)
    stereo = (rng.standard_normal((44100 * 5, 2)) * 0.1).astype(np.float32)
    live = session(sample_rate=44100, encoding="f32le", channels=2)
    data, windows, at = stereo.astype("<f4").tobytes(), [], 0
    for size in rng.integers(1, 3000, 10_000) * 8:  # whole stereo float samples
        windows += live.feed(data[at : at + size])
        at += size
        if at >= len(data):
            break
    windows += live.finish()
    mono = soxr.resample(stereo.mean(axis=1), 44100, RATE, quality="HQ")
    ends = [w.end for w in windows]
    assert ends[:3] == [RATE, int(1.5 * RATE), 2 * RATE] and ends[-1] == len(mono) == live.produced
    for start, end, clip, _ in windows:
        assert end - start == min(end, WINDOW.window_s * RATE)
        np.testing.assert_allclose(clip, mono[start:end], atol=1e-5)


@pytest.mark.parametrize(
    ("start", "frame", "error"),
    [
        ({}, b"\x00\x01\x02", "wrong_encoding"),  # half a sample
        ({"encoding": "f32le"}, (np.ones(800) * 30000).astype("<i2").tobytes(), "wrong_encoding"),
        ({"encoding": "f32le"}, np.array([np.nan, 0.0], "<f4").tobytes(), "wrong_encoding"),
        ({"channels": 2}, b"\x00\x00" * 3, "wrong_encoding"),
    ],
)
def test_audio_not_in_the_streams_encoding_is_refused_with_1003(start, frame, error):
    with pytest.raises(StreamClosed) as raised:
        session(**start).feed(frame)
    assert (raised.value.code, raised.value.error) == (1003, error)


def test_a_stream_longer_than_allowed_is_closed_with_1008():
    live = StreamSession(StreamStart(RATE, "pcm_s16le"), StreamConfig(max_stream_s=2), WINDOW, CODES, FEATURES)
    live.feed(bytes(2 * RATE * 2))
    with pytest.raises(StreamClosed) as raised:
        live.feed(bytes(2))
    assert (raised.value.code, raised.value.error) == (1008, "too_long")


def test_events_say_silence_partials_and_changes_and_the_final_timeline_agrees():
    live = session(allow=("de", "fr"))
    truth = [("de", 10.0), ("fr", 10.0)]
    events = []
    for start, end, *_ in live.feed(bytes(int(sum(s for _, s in truth) * RATE) * 2)) + live.finish():
        middle = (start + end) / 2 / RATE
        if end <= 2 * RATE:
            events += live.observe(start, end, None)
        else:
            events += live.observe(start, end, one_hot("de" if middle < 10 else "fr", 0.8))
    kinds = {e["type"] for e in events}
    assert kinds == {"silence", "partial", "change"}
    partials = [e for e in events if e["type"] == "partial"]
    assert all(set(p["probabilities"]) <= {"de", "fr"} for p in partials)
    changes = [(e["from"], e["language"]) for e in events if e["type"] == "change"]
    assert changes == [(None, "de"), ("de", "fr")]
    (change,) = [e for e in events if e["type"] == "change" and e["language"] == "fr"]
    # Found once windows hold more French than German (half a window in), and
    # sure windows then gathered the evidence a change needs: French leads by
    # log(0.8 / German's 0.2 / 3) a second of audio, within the cap.
    lead = min(np.log(0.8 / (0.2 / (len(CODES) - 1))), live.config.evidence_cap)
    needed_s = WINDOW.window_s / 2 + live.config.change_evidence / lead + live.hop_s
    assert abs(change["at_s"] - 10.0) <= live.hop_s and change["time_s"] - 10.0 <= needed_s
    final = live.final()
    assert [s["language"] for s in final["segments"]] == ["de", "fr"]
    assert abs(final["segments"][1]["start_s"] - 10.0) <= live.hop_s and final["duration_s"] == 20.0


@pytest.mark.parametrize("open_set", [True, False])
def test_the_background_class_is_unknown_with_the_open_set_and_left_out_without(open_set):
    codes = ("de", "fr", "other")
    start = StreamStart.parse(json.dumps({"sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1}), codes)
    live = StreamSession(start, StreamConfig(), WINDOW, codes, FEATURES, threshold=0.5, open_set=open_set)
    events = []
    for s, e, *_ in live.feed(bytes(20 * RATE * 2)) + live.finish():
        middle = (s + e) / 2 / RATE
        row = np.array([0.8, 0.1, 0.1]) if middle < 10 else np.array([0.05, 0.25, 0.7])
        events += live.observe(s, e, row)
    changes = [(e["from"], e["language"]) for e in events if e["type"] == "change"]
    segments = [s["language"] for s in live.final()["segments"]]
    if open_set:
        assert changes == [(None, "de"), ("de", "unknown")] and segments == ["de", "unknown"]
    else:
        # Without the background, the French share wins the second half: 0.25 / 0.3.
        assert changes == [(None, "de"), ("de", "fr")] and segments == ["de", "fr"]
        assert all("other" not in e["probabilities"] for e in events if e["type"] == "partial")


def test_the_bundle_threshold_applies_unless_the_start_message_sets_its_own():
    strict = StreamSession(StreamStart.parse(json.dumps({"sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1}), CODES),
                           StreamConfig(), WINDOW, CODES, FEATURES, threshold=0.95)
    asked = StreamSession(StreamStart.parse(json.dumps({"sample_rate": RATE, "encoding": "pcm_s16le", "channels": 1,
                                                         "min_confidence": 0.5}), CODES),
                          StreamConfig(), WINDOW, CODES, FEATURES, threshold=0.95)
    for live in (strict, asked):
        (s, e, *_), *_ = live.feed(bytes(4 * RATE * 2))
        live.partial = live.observe(s, e, one_hot("de", 0.8))[0]
    assert strict.partial["language"] == "unknown" and asked.partial["language"] == "de"
