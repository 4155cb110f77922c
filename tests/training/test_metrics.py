import json

import numpy as np
import pytest

from slc.labels import LabelSet
from slc.training.metrics import classification_metrics, confusion, metrics_from_confusion

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
