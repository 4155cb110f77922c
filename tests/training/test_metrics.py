import json

import numpy as np
import pytest

from slc.labels import LabelSet
from slc.training.metrics import (
    accuracy_by_duration,
    classification_metrics,
    confusion,
    equal_error_rate,
    expected_calibration_error,
    false_accept_at_miss,
    metrics_from_confusion,
    open_set_scores,
    reliability_bins,
)

LABELS = LabelSet(("gsw", "de", "fr"))
# gsw: TP 2, FP 0, FN 1; de: TP 1, FP 1, FN 1; fr: TP 1, FP 1, FN 0.
Y_TRUE = [0, 0, 0, 1, 1, 2]
Y_PRED = [0, 0, 1, 1, 2, 2]


def assert_same_metrics(got, expected):
    assert got["confusion"] == expected["confusion"]
    assert (got["labels"], got["n"]) == (expected["labels"], expected["n"])
    assert got["accuracy"] == pytest.approx(expected["accuracy"])
    assert got["macro"] == pytest.approx(expected["macro"])
    assert got["per_class"].keys() == expected["per_class"].keys()
    for code, stats in expected["per_class"].items():
        assert got["per_class"][code] == pytest.approx(stats)


def test_hand_computed_example():
    metrics = classification_metrics(Y_TRUE, Y_PRED, LABELS)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"] == {
        "gsw": pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "iou": 2 / 3, "support": 3}),
        "de": pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "iou": 1 / 3, "support": 2}),
        "fr": pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "iou": 0.5, "support": 1}),
    }
    assert metrics["macro"] == pytest.approx({"precision": 2 / 3, "recall": 13 / 18, "f1": 59 / 90, "iou": 0.5})
    assert metrics["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert metrics["labels"] == ["gsw", "de", "fr"]
    assert metrics["n"] == 6


def test_perfect_predictions_score_one():
    labels = LabelSet(("gsw", "de", "it", "fr", "en"))
    y = [0, 1, 2, 3, 4, 4, 0]
    metrics = classification_metrics(y, y, labels)
    assert metrics["accuracy"] == 1.0
    assert metrics["macro"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0}
    assert all(stats[k] == 1.0 for stats in metrics["per_class"].values() for k in ("precision", "recall", "f1", "iou"))
    assert np.trace(metrics["confusion"]) == len(y)


@pytest.mark.parametrize("n_classes, n_samples, seed", [(2, 1, 0), (5, 200, 1), (107, 3000, 2)])
def test_confusion_route_equals_direct_route(n_classes, n_samples, seed):
    rng = np.random.default_rng(seed)
    labels = LabelSet(tuple(f"l{i:03d}" for i in range(n_classes)))
    y_true = rng.integers(0, n_classes, n_samples)
    y_pred = np.where(rng.random(n_samples) < 0.6, y_true, rng.integers(0, n_classes, n_samples))
    direct = classification_metrics(y_true, y_pred, labels)
    assert_same_metrics(metrics_from_confusion(confusion(y_true, y_pred, n_classes), labels), direct)


def test_confusion_summed_over_workers_equals_all_samples():
    rng = np.random.default_rng(3)
    y_true, y_pred = rng.integers(0, 3, 90), rng.integers(0, 3, 90)
    summed = sum(confusion(y_true[part], y_pred[part], 3) for part in np.array_split(np.arange(90), 4))
    assert_same_metrics(metrics_from_confusion(summed, LABELS), classification_metrics(y_true, y_pred, LABELS))


def test_confusion_has_every_class_as_int64():
    counts = confusion([1, 1], [1, 0], 4)
    assert counts.dtype == np.int64 and counts.shape == (4, 4)
    assert counts.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_class_absent_from_truth_and_predictions_is_left_out_of_macro():
    labels = LabelSet(("gsw", "de", "it"))
    metrics = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], labels)
    assert metrics["per_class"]["it"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0, "support": 0}
    present = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], LabelSet(("gsw", "de")))
    assert metrics["macro"] == pytest.approx(present["macro"])
    assert metrics["confusion"][2] == [0, 0, 0] and [row[2] for row in metrics["confusion"]] == [0, 0, 0]


def test_predicting_an_absent_class_costs_macro_scores():
    metrics = classification_metrics([0, 0, 1], [0, 2, 1], LabelSet(("gsw", "de", "it")))
    assert metrics["per_class"]["it"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0, "support": 0}
    gsw_f1 = 2 / 3  # precision 1, recall 1/2
    assert metrics["macro"]["f1"] == pytest.approx((gsw_f1 + 1.0 + 0.0) / 3)


def test_never_predicted_class_has_zero_recall_f1_and_iou():
    metrics = classification_metrics([0, 1, 1], [0, 0, 0], LabelSet(("gsw", "de")))
    assert metrics["per_class"]["de"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0, "support": 2}


def test_metrics_are_json_serialisable():
    for metrics in (classification_metrics(np.array(Y_TRUE), np.array(Y_PRED), LABELS),
                    metrics_from_confusion(np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]]), LABELS)):
        assert json.loads(json.dumps(metrics, allow_nan=False)) == metrics


@pytest.mark.parametrize("y_true, y_pred, match", [
    ([0, 3], [0, 1], "class ids"),
    ([0, -1], [0, 1], "class ids"),
    ([0.0, 1.0], [0, 1], "class ids"),
    ([0, 1], [0], "equal length"),
    ([], [], "no samples"),
])
def test_bad_class_ids_are_refused(y_true, y_pred, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_pred, LABELS)


@pytest.mark.parametrize("counts, match", [
    (np.zeros((2, 2), dtype=np.int64), "does not fit 3 labels"),
    (np.zeros((3, 3), dtype=np.int64), "no samples"),
    (np.array([[1, -1, 0], [0, 1, 0], [0, 0, 1]]), "negative"),
])
def test_bad_confusion_is_refused(counts, match):
    with pytest.raises(ValueError, match=match):
        metrics_from_confusion(counts, LABELS)


# Open-set scores: the best in-set probability; -inf where the background class won.
IN_SET = np.array([-np.inf, 0.30, *np.linspace(0.4, 0.95, 18)])  # 20 in-set clips
BACKGROUND = np.array([-np.inf, 0.1, 0.3, 0.5, 0.9])


def test_false_accept_at_five_percent_miss():
    # 5% of 20 in-set clips = 1 rejection, spent on the clip the background took:
    # the threshold is the second-lowest score, and 3 of 5 background clips pass it.
    assert false_accept_at_miss(IN_SET, BACKGROUND, 0.05) == {"threshold": 0.30, "miss": 0.05, "false_accept": 0.6}
    # 10% = 2 rejections: the threshold moves to the third-lowest score (0.4).
    assert false_accept_at_miss(IN_SET, BACKGROUND, 0.10) == {"threshold": 0.4, "miss": 0.10, "false_accept": 0.4}


def test_false_accept_when_the_background_takes_more_than_the_miss_allows():
    taken = np.array([-np.inf, -np.inf, 0.8, 0.9])  # 50% already rejected; 5% of 4 allows none
    assert false_accept_at_miss(taken, np.array([-np.inf, 0.2]), 0.05) == {
        "threshold": 0.0, "miss": 0.5, "false_accept": 0.5,
    }  # fmt: skip


def test_equal_error_rate_hand_computed():
    # At threshold 0.6: in-set 0.2 is missed (1/4) and background 0.8 accepted (1/4).
    assert equal_error_rate(np.array([0.2, 0.6, 0.7, 0.9]), np.array([0.1, 0.3, 0.5, 0.8])) == {
        "eer": 0.25, "threshold": 0.6,
    }  # fmt: skip


def test_equal_error_rate_of_separable_and_of_inverted_scores():
    assert equal_error_rate(np.array([0.8, 0.9]), np.array([-np.inf, 0.1, 0.2])) == {"eer": 0.0, "threshold": 0.8}
    # Every background clip above every in-set clip: at 0.8 every in-set clip is
    # missed and every background clip accepted; the rates are never closer.
    assert equal_error_rate(np.array([0.1, 0.2]), np.array([0.8, 0.9])) == {"eer": 1.0, "threshold": 0.8}


@pytest.mark.parametrize("function", [false_accept_at_miss, equal_error_rate])
def test_open_set_figures_need_both_kinds_of_clips(function):
    args = (np.array([0.5]), np.array([])) + ((0.05,) if function is false_accept_at_miss else ())
    with pytest.raises(ValueError, match="background scores"):
        function(*args)


def test_open_set_scores_count_unknown_for_background_as_right():
    truth = ["de", "de", "en", "en", "other", "other"]
    answers = ["de", "unknown", "en", "en", "unknown", "en"]
    # de: precision 1, recall 1/2 -> F1 2/3; en: precision 2/3, recall 1 -> F1 0.8.
    scores = open_set_scores(truth, answers, ["de", "en"])
    assert scores == {
        "accuracy": pytest.approx(4 / 6),
        "macro_f1": pytest.approx((2 / 3 + 0.8) / 2),
        "per_class": {"de": pytest.approx(2 / 3), "en": pytest.approx(0.8)},
    }


def test_open_set_scores_leave_absent_languages_out_of_the_macro():
    scores = open_set_scores(["de", "de"], ["de", "unknown"], ["gsw", "de", "en"])
    assert scores["per_class"] == {"de": pytest.approx(2 / 3)} and scores["macro_f1"] == pytest.approx(2 / 3)


def test_reliability_bins_and_expected_calibration_error():
    confidence = np.array([0.95, 0.95, 0.85, 0.55, 0.45])
    correct = np.array([True, False, True, True, False])
    bins = reliability_bins(confidence, correct, n_bins=10)
    assert [b["count"] for b in bins] == [0, 0, 0, 0, 1, 1, 0, 0, 1, 2]
    assert bins[9] == {"low": 0.9, "high": 1.0, "count": 2, "confidence": 0.95, "accuracy": 0.5}
    assert bins[0] == {"low": 0.0, "high": 0.1, "count": 0, "confidence": None, "accuracy": None}
    # Gaps 0.45 (x2 clips), 0.15, 0.45, 0.45 over 5 clips.
    assert expected_calibration_error(confidence, correct, n_bins=10) == pytest.approx(1.95 / 5)
    assert expected_calibration_error(np.array([0.0, 1.0]), np.array([False, True])) == 0.0


def test_accuracy_by_duration():
    duration = [0.5, 1.9, 2.0, 3.0, 4.0, 5.0, 12.0]
    truth = [0, 1, 0, 0, 1, 1, 0]
    predicted = [0, 0, 0, 1, 1, 1, 0]
    ranges = accuracy_by_duration(duration, truth, predicted)
    assert [r["range"] for r in ranges] == ["< 2 s", "2-5 s", ">= 5 s"]
    assert [r["clips"] for r in ranges] == [2, 3, 2]
    assert [r["accuracy"] for r in ranges] == pytest.approx([0.5, 2 / 3, 1.0])
    # < 2 s: class 0 F1 2/3, class 1 F1 0; 2-5 s: class 0 F1 2/3 (P 1, R 1/2), class 1 F1 2/3 (P 1/2, R 1).
    assert [r["macro_f1"] for r in ranges] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_accuracy_by_duration_with_an_empty_range():
    ranges = accuracy_by_duration([1.0], ["de"], ["de"])
    assert ranges[1] == {"range": "2-5 s", "clips": 0, "accuracy": None, "macro_f1": None}
    assert ranges[0]["accuracy"] == 1.0
