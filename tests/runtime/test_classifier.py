"""The torch-free runtime: one clip, batches of mixed lengths, long
recordings by sliding windows, and the options users of language ID ask for."""

import subprocess
import sys

import numpy as np
import pytest

from slc.runtime.bundle import BundleError
from slc.runtime.classifier import UNKNOWN, Classifier, window_bounds


@pytest.fixture(scope="module")
def classifier(small_bundle):
    return Classifier(small_bundle, threads=2)


def test_runtime_never_imports_torch(small_bundle):
    code = (
        "import sys, numpy as np\n"
        "from slc.runtime.classifier import Classifier\n"
        f"c = Classifier({str(small_bundle)!r})\n"
        "c.classify_batch([np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1 "
        "for n in (8000, 70000, 16000 * 40)])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_one_clip_gives_a_distribution_over_the_labels(classifier, speech_16k):
    prediction = classifier.classify(speech_16k, min_confidence=0.0)  # never `unknown`
    assert list(prediction.probabilities) == sorted(prediction.probabilities, key=lambda c: -prediction.probabilities[c])
    assert set(prediction.probabilities) == {"de", "en"}
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert prediction.language == next(iter(prediction.probabilities))
    assert prediction.confidence == prediction.probabilities[prediction.language]
    assert prediction.duration_s == pytest.approx(len(speech_16k) / 16000, abs=1e-3)
    assert prediction.segments is None and prediction.to_dict(top_k=1)["probabilities"].keys() == {prediction.language}


def test_a_batch_of_different_lengths_matches_each_clip_alone(small_bundle, speech_16k):
    # fp32: quantized activations take their ranges from what shares the batch.
    classifier = Classifier(small_bundle, variant="fp32")
    clips = [speech_16k[:8000], speech_16k, speech_16k[:40000], speech_16k[5000:30000]]
    together = classifier.probabilities(clips)
    alone = np.concatenate([classifier.probabilities([clip]) for clip in clips])
    assert np.abs(together - alone).max() < 1e-5
    batched = [p.probabilities for p in classifier.classify_batch(clips)]
    assert batched == [pytest.approx(classifier.classify(clip).probabilities, abs=1e-5) for clip in clips]


def test_sessions_use_the_thread_count_asked_for(small_bundle):
    assert Classifier(small_bundle, threads=3)._model.get_session_options().intra_op_num_threads == 3


def test_allow_restricts_and_renormalises(classifier, speech_16k):
    full = classifier.classify(speech_16k).probabilities
    only_en = classifier.classify(speech_16k, allow=["en"])
    assert only_en.language == "en" and only_en.probabilities == {"en": pytest.approx(1.0)}
    assert classifier.classify(speech_16k, allow=["EN", "de"]).probabilities == pytest.approx(full, abs=1e-6)
    with pytest.raises(ValueError, match=r"does not know: \['fr'\]"):
        classifier.classify(speech_16k, allow=["fr"])


def test_min_confidence_answers_unknown_below_the_threshold(classifier, speech_16k):
    # 0 replaces the bundle's open-set threshold: the answer is the top language.
    prediction = classifier.classify(speech_16k, min_confidence=0.0)
    assert prediction.language == next(iter(prediction.probabilities))
    assert classifier.classify(speech_16k, min_confidence=prediction.confidence - 1e-3).language == prediction.language
    doubtful = classifier.classify(speech_16k, min_confidence=min(1.0, prediction.confidence + 1e-3))
    assert doubtful.language == UNKNOWN and doubtful.probabilities == prediction.probabilities
    with pytest.raises(ValueError, match="min_confidence"):
        classifier.classify(speech_16k, min_confidence=1.5)


def test_windows_cover_the_whole_recording_with_the_last_aligned_to_the_end():
    assert window_bounds(50, 64, 32) == [(0, 50)]
    assert window_bounds(64, 64, 32) == [(0, 64)]
    assert window_bounds(100, 64, 32) == [(0, 64), (32, 96), (36, 100)]
    assert window_bounds(128, 64, 32) == [(0, 64), (32, 96), (64, 128)]


def test_long_recording_gets_windows_a_timeline_and_a_recording_label(classifier, speech_16k):
    recording = np.concatenate([speech_16k] * 8)  # about 40 s: longer than a whole clip may be
    prediction = classifier.classify(recording)
    assert prediction.windows is not None and prediction.segments is None
    rate, window, hop = 16000, classifier.window.window_s, classifier.window.hop_s
    assert [(w.start_s, w.end_s) for w in prediction.windows] == [
        (s / rate, e / rate) for s, e in window_bounds(len(recording), int(window * rate), int(hop * rate))
    ]
    timeline = classifier.classify_long(recording).segments
    assert timeline[0].start_s == 0 and timeline[-1].end_s == pytest.approx(len(recording) / rate, abs=1e-3)
    assert all(a.end_s == b.start_s and a.language != b.language for a, b in zip(timeline, timeline[1:]))


def test_timeline_merges_agreeing_windows_and_label_is_mean_log_probability(classifier, monkeypatch):
    rate = 16000
    bounds = [(s * rate, (s + 4) * rate) for s in range(0, 18, 2)]  # 9 windows over 20 s
    de, en = [0.9, 0.1], [0.05, 0.95]
    scores = np.array([de, de, de, en, en, en, en, en, de], dtype=np.float32)
    monkeypatch.setattr(classifier, "window_probabilities", lambda clip: (bounds, scores))
    # min_confidence 0 replaces the bundle's open-set threshold: no segment is `unknown`.
    prediction = classifier.classify_long(np.zeros(20 * rate, dtype=np.float32), min_confidence=0.0)
    # The last window alone does not flip the timeline back to German.
    assert [(s.start_s, s.end_s, s.language) for s in prediction.segments] == [(0.0, 7.0, "de"), (7.0, 20.0, "en")]
    assert prediction.segments[1].confidence == pytest.approx((5 * 0.95 + 0.1) / 6)
    mean_log = np.log(scores).mean(axis=0)
    expected = np.exp(mean_log) / np.exp(mean_log).sum()
    assert prediction.language == "en" and prediction.probabilities["en"] == pytest.approx(expected[1], abs=1e-5)
    unsure = classifier.classify_long(np.zeros(20 * rate, dtype=np.float32), min_confidence=0.85)
    assert [s.language for s in unsure.segments] == ["de", UNKNOWN]


def test_variants_are_selectable_and_agree_with_fp32(small_bundle, speech_16k):
    fp32 = Classifier(small_bundle, variant="fp32").probabilities([speech_16k])
    for variant in ("int8-dynamic", "int8-matmul", "fp16", "fp32-all"):
        other = Classifier(small_bundle, variant=variant)
        assert other.variant == variant and other.info["variant"] == variant
        assert np.abs(other.probabilities([speech_16k]) - fp32).max() < 0.1
    with pytest.raises(BundleError, match="no variant 'int4'"):
        Classifier(small_bundle, variant="int4")


def test_too_short_a_clip_is_refused_with_the_reason(classifier):
    with pytest.raises(ValueError, match="at least 400 samples"):
        classifier.probabilities([np.zeros(100, dtype=np.float32)])


# --- recordings streamed from their files ------------------------------------


@pytest.fixture(scope="module")
def medium_wav(tmp_path_factory, speech_16k):
    """About 90 s at 22.05 kHz: German and English speech taking turns, with
    silence at both ends, as a file."""
    import io

    import soundfile as sf
    import soxr
    from conftest import espeak_wav

    english, rate = sf.read(io.BytesIO(espeak_wav("The train to London leaves at half past eight from platform three.")), dtype="float32")
    parts = [np.zeros(16000, np.float32)]
    while sum(map(len, parts)) < 88 * 16000:
        parts += [speech_16k, soxr.resample(english, rate, 16000).astype(np.float32)]
    parts.append(np.zeros(24000, np.float32))
    path = tmp_path_factory.mktemp("medium") / "medium.wav"
    sf.write(path, soxr.resample(np.concatenate(parts), 16000, 22050), 22050, subtype="PCM_16")
    return path


@pytest.mark.parametrize("segments", [False, True])
def test_a_streamed_file_gets_the_answer_of_the_whole_file(classifier, medium_wav, segments):
    whole = classifier.classify(classifier.load_audio(medium_wav), segments=segments)
    streamed = classifier.classify_file(medium_wav, segments=segments)
    assert streamed.duration_s == pytest.approx(whole.duration_s, abs=1e-3) and whole.duration_s > 80
    assert streamed.language == whole.language and list(streamed.probabilities) == list(whole.probabilities)
    assert streamed.probabilities == pytest.approx(whole.probabilities, abs=1e-4)
    assert [(w.start_s, w.end_s) for w in streamed.windows] == [(w.start_s, w.end_s) for w in whole.windows]
    for got, want in zip(streamed.windows, whole.windows):
        assert got.probabilities == pytest.approx(want.probabilities, abs=1e-4)
    if segments:
        # The windows disagree, so the (smoothed) timeline has work to do.
        assert len({max(w.probabilities, key=w.probabilities.get) for w in whole.windows}) > 1
        assert [(s.start_s, s.end_s, s.language) for s in streamed.segments] == [
            (s.start_s, s.end_s, s.language) for s in whole.segments
        ]


def test_a_short_file_streamed_is_one_whole_clip(classifier, tmp_path, speech_16k):
    import soundfile as sf

    path = tmp_path / "short.wav"
    sf.write(path, speech_16k, 16000, subtype="FLOAT")
    streamed = classifier.classify_file(path, allow=["de", "en"], min_confidence=0.2)
    whole = classifier.classify(classifier.load_audio(path), allow=["de", "en"], min_confidence=0.2)
    assert streamed.windows is None and streamed.language == whole.language
    assert streamed.probabilities == pytest.approx(whole.probabilities, abs=1e-6)


PEAK_RSS = """
import dataclasses, json, re, sys
from pathlib import Path
from slc.runtime.classifier import Classifier


def peak_mb():
    # VmHWM, not getrusage's ru_maxrss: a child started by fork and exec
    # inherits its parent's ru_maxrss, here pytest's.
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


bundle, recording, warm_up = sys.argv[1:]
classifier = Classifier(bundle)
# Sessions, imports and onnxruntime's arena (it grows over the first few
# batches of windows to what a batch needs) in place.
classifier.classify_file(warm_up)
# A window every 30 s keeps the test quick; memory does not depend on the hop.
classifier.window = dataclasses.replace(classifier.window, hop_s=30.0)
before = peak_mb()
prediction = classifier.classify_file(recording, segments=True)
print(json.dumps({"before_mb": before, "after_mb": peak_mb(),
                  "duration_s": prediction.duration_s, "windows": len(prediction.windows)}))
"""


def test_a_two_hour_recording_is_classified_in_bounded_memory(small_bundle, tmp_path, speech_16k):
    import json

    import soundfile as sf

    rate, hours = 8000, 2
    recording = tmp_path / "two-hours.wav"
    rng = np.random.default_rng(0)
    minute = np.arange(60 * rate) / rate
    with sf.SoundFile(recording, "w", rate, 1, "PCM_16") as out:
        for i in range(60 * hours):
            out.write((0.2 * np.sin(2 * np.pi * (200 + 10 * i) * minute) + 0.05 * rng.standard_normal(len(minute))).astype(np.float32))
    warm_up = tmp_path / "warm-up.wav"
    sf.write(warm_up, np.tile(speech_16k, 36), 16000, subtype="PCM_16")  # 3 min: 6 batches of windows
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(small_bundle), str(recording), str(warm_up)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured["duration_s"] == pytest.approx(hours * 3600, abs=0.1)
    assert measured["windows"] == len(window_bounds(hours * 3600 * 16000, 4 * 16000, 30 * 16000))
    # The whole recording at 16 kHz in float32 alone would be 460 MB.
    growth = measured["after_mb"] - measured["before_mb"]
    assert growth < 100, f"peak RSS grew by {growth:.0f} MB: {measured}"


@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_short_file_is_decoded_once(classifier, tmp_path, speech_16k, monkeypatch, as_bytes):
    """The per-file path of `slc predict`: a file no longer than a whole clip
    is read and resampled once, not once to find its silence and again to
    classify it."""
    import soundfile as sf

    path = tmp_path / "short.wav"
    sf.write(path, np.concatenate([np.zeros(8000, np.float32), speech_16k]), 16000, subtype="PCM_16")
    source = path.read_bytes() if as_bytes else path
    expected = classifier.classify(classifier.load_audio(source))
    opened = []
    real = sf.SoundFile
    monkeypatch.setattr(sf, "SoundFile", lambda *args, **kwargs: opened.append(args[0]) or real(*args, **kwargs))
    prediction = classifier.classify_file(source)
    assert len(opened) == 1
    assert prediction.duration_s == expected.duration_s and prediction.windows is None
    assert prediction.probabilities == pytest.approx(expected.probabilities, abs=1e-6)
