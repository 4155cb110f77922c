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
    prediction = classifier.classify(speech_16k)
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
    prediction = classifier.classify(speech_16k)
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
    prediction = classifier.classify_long(np.zeros(20 * rate, dtype=np.float32))
    assert [(s.start_s, s.end_s, s.language) for s in prediction.segments] == [
        (0.0, 7.0, "de"), (7.0, 17.0, "en"), (17.0, 20.0, "de"),
    ]  # fmt: skip
    assert prediction.segments[1].confidence == pytest.approx(0.95)
    mean_log = np.log(scores).mean(axis=0)
    expected = np.exp(mean_log) / np.exp(mean_log).sum()
    assert prediction.language == "en" and prediction.probabilities["en"] == pytest.approx(expected[1], abs=1e-5)
    unsure = classifier.classify_long(np.zeros(20 * rate, dtype=np.float32), min_confidence=0.92)
    assert [s.language for s in unsure.segments] == [UNKNOWN, "en", UNKNOWN]


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
