"""The Classifier's open-set answer, on an oracle bundle whose fourth band is
the background class `other`: the bundle's calibration and threshold apply by
default, `min_confidence` overrides the threshold, `open_set=False` answers
one of the model's languages."""

import json
import shutil

import numpy as np
import pytest
from band_oracle import recording, speech_like

from slc.runtime import bundle as bundles
from slc.runtime.classifier import Classifier
from slc.runtime.openset import tempered


@pytest.fixture(scope="module")
def background_bundle(oracle_bundle, tmp_path_factory):
    """The oracle bundle with `en` relabelled `other` and an open-set entry."""
    def write(threshold: float, name: str):
        directory = tmp_path_factory.mktemp(name) / "bundle"
        shutil.copytree(oracle_bundle, directory)
        manifest = bundles.read_manifest(directory)
        manifest["labels"] = ["de", "fr", "it", "other"]
        manifest["open_set"] = {"temperature": 2.0, "threshold": threshold, "target_miss": 0.02, "background": "other"}
        (directory / bundles.MANIFEST).write_text(json.dumps(manifest))
        return directory

    return write


def test_speech_the_background_wins_is_unknown_and_its_confidence_is_the_best_language(background_bundle):
    classifier = Classifier(background_bundle(0.0, "bg"))
    answer = classifier.classify(speech_like("en", 4.0, seed=1))
    assert answer.language == "unknown"
    assert "other" in answer.probabilities
    assert answer.confidence == max(p for code, p in answer.probabilities.items() if code != "other")


def test_open_set_off_answers_one_of_the_languages_and_drops_the_background(background_bundle):
    classifier = Classifier(background_bundle(0.0, "off"), open_set=False)
    answer = classifier.classify(speech_like("en", 4.0, seed=1))
    assert answer.language in {"de", "fr", "it"}
    assert set(answer.probabilities) == {"de", "fr", "it"}
    assert classifier.info["open_set"] is False


def test_the_bundle_threshold_applies_by_default_and_min_confidence_overrides_it(background_bundle):
    classifier = Classifier(background_bundle(0.999, "strict"))
    clip = speech_like("de", 4.0, seed=2)
    assert classifier.classify(clip).language == "unknown"
    assert classifier.classify(clip, min_confidence=0.2).language == "de"
    assert classifier.threshold(None) == 0.999


def test_probabilities_are_tempered_by_the_bundle(background_bundle):
    clip = speech_like("fr", 4.0, seed=3)
    raw = Classifier(background_bundle(0.0, "raw"), open_set=False).probabilities([clip])
    calibrated = Classifier(background_bundle(0.0, "cal")).probabilities([clip])
    np.testing.assert_allclose(calibrated, tempered(raw, 2.0), atol=1e-5)


def test_a_timeline_calls_the_background_stretch_unknown(background_bundle):
    samples, _ = recording([("de", 16.0), ("en", 16.0)], seed=4)
    segments = Classifier(background_bundle(0.0, "timeline")).classify(samples, segments=True).segments
    assert [s.language for s in segments] == ["de", "unknown"]
    assert segments[0].end_s == pytest.approx(16.0, abs=1.0)
