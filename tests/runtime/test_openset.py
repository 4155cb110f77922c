"""The open-set answer: temperature, threshold, background class."""

import numpy as np
import pytest

from slc.runtime import openset


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_the_fitted_temperature_undoes_an_overconfident_scale():
    rng = np.random.default_rng(0)
    # True logits give calibrated probabilities; the model's are 3x too sharp.
    true_logits = rng.normal(size=(4000, 4)) * 1.5
    targets = np.array([rng.choice(4, p=p) for p in _softmax(true_logits)])
    fitted = openset.fit_temperature(_softmax(3.0 * true_logits), targets)
    assert fitted == pytest.approx(3.0, rel=0.1)


def test_tempered_keeps_the_ranking_and_sums_to_one():
    p = np.array([[0.7, 0.2, 0.1], [0.05, 0.9, 0.05]])
    t = openset.tempered(p, 2.0)
    assert np.allclose(t.sum(axis=1), 1.0)
    assert (t.argmax(axis=1) == p.argmax(axis=1)).all()
    assert t[0, 0] < p[0, 0]  # softer
    assert np.allclose(openset.tempered(p, 1.0), p)


def test_the_threshold_rejects_the_target_share_of_in_set_clips():
    rng = np.random.default_rng(1)
    codes = ("de", "fr", "other")
    probabilities = rng.dirichlet([1, 1, 1], size=1000)
    targets = probabilities.argmax(axis=1)
    fitted = openset.fit(probabilities, targets, codes, target_miss=0.1)
    calibrated = fitted.calibrate(probabilities)
    in_set = targets != 2
    rejected = openset.rejected(calibrated, codes, fitted.threshold)
    assert fitted.background == "other"
    # Clips the background wins count as misses; the threshold adds the rest up to 10%.
    assert rejected[in_set].mean() == pytest.approx(0.1, abs=0.002)


def test_no_threshold_when_the_background_already_takes_the_target():
    codes = ("de", "other")
    probabilities = np.array([[0.4, 0.6]] * 5 + [[0.9, 0.1]] * 5)
    fitted = openset.fit(probabilities, np.zeros(10, dtype=int), codes, target_miss=0.2)
    assert fitted.threshold == 0.0


def test_the_score_is_the_best_language_in_the_set_never_the_background():
    best, scores = openset.in_set_scores(np.array([[0.1, 0.2, 0.7]]), ("de", "fr", "other"))
    assert best.tolist() == [2] and scores.tolist() == pytest.approx([0.2])


def test_open_set_round_trips_and_refuses_bad_values():
    fitted = openset.OpenSet(temperature=1.7, threshold=0.4, target_miss=0.05, background="other")
    assert openset.OpenSet.from_dict(fitted.to_dict()) == fitted
    with pytest.raises(ValueError, match="temperature"):
        openset.OpenSet(temperature=0)
    with pytest.raises(ValueError, match="threshold"):
        openset.OpenSet(threshold=1.5)
