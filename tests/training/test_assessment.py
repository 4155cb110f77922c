"""slc.training.assessment: the open-set, calibration and duration figures of
a split, on hand-made probabilities."""

import numpy as np
import pytest

from slc.labels import LabelSet
from slc.runtime.openset import OpenSet
from slc.training.assessment import (
    SplitScores,
    calibration_figures,
    duration_figures,
    open_set_figures,
)

LABELS = LabelSet(("de", "en", "other"))
# Truth, source language, probabilities (de, en, other); threshold 0.6 below.
CLIPS = [
    ("de", "de", [0.9, 0.05, 0.05]),  # de
    ("de", "de", [0.5, 0.4, 0.1]),  # best in-set 0.5 < 0.6: unknown
    ("en", "en", [0.2, 0.7, 0.1]),  # en
    ("en", "en", [0.1, 0.2, 0.7]),  # the background wins: unknown
    ("other", "es", [0.8, 0.1, 0.1]),  # es trained the background class: left out
    ("other", "ca", [0.1, 0.1, 0.8]),  # unknown
    ("other", "ca", [0.65, 0.3, 0.05]),  # accepted as de
    ("other", "ru", [0.3, 0.55, 0.15]),  # unknown
]


def scores(clips=CLIPS, duration_s=None):
    truth, source, probabilities = zip(*clips)
    duration = np.full(len(clips), 3.0) if duration_s is None else np.asarray(duration_s, dtype=float)
    return SplitScores(np.array(probabilities), np.array(truth, dtype=object), np.array(source, dtype=object), duration)


def test_open_set_figures_hand_computed():
    figures = open_set_figures(scores(), LABELS, OpenSet(threshold=0.6, target_miss=0.05, background="other"), {"es", "pl"})
    assert (figures["temperature"], figures["threshold"], figures["background_class"]) == (1.0, 0.6, "other")
    assert figures["excluded"] == {"es": 1} and figures["disjoint_checked"]
    # Without the es clip: de F1 1/2 (one right, one missed, one background clip taken for de), en F1 2/3.
    assert figures["answers"] == {
        "accuracy": pytest.approx(4 / 7), "macro_f1": pytest.approx(7 / 12),
        "per_class": {"de": pytest.approx(0.5), "en": pytest.approx(2 / 3)},
    }  # fmt: skip
    assert figures["in_set_rejected"] == 0.5
    assert figures["confusion"] == {
        "rows": ["de", "en", "other"], "columns": ["de", "en", "unknown"],
        "counts": [[1, 0, 1], [0, 1, 1], [1, 0, 2]],
    }  # fmt: skip
    background = figures["background"]
    assert background["clips"] == 3 and background["false_accept"] == pytest.approx(1 / 3)
    # 5% of 4 in-set clips allows no rejection beyond the one the background
    # took: threshold 0, and both background clips the background class left pass it.
    assert background["at_miss"] == {"target_miss": 0.05, "threshold": 0.0, "miss": 0.25, "false_accept": pytest.approx(2 / 3)}
    # The rates are 1/6 apart at 0.55 (in-set 0.5 and the background-taken clip
    # missed: 1/2; background 0.55 and 0.65 accepted: 2/3) and at 0.65 (1/2, 1/3):
    # the lower threshold wins the tie.
    assert background["eer"] == {"eer": pytest.approx(7 / 12), "threshold": pytest.approx(0.55)}
    assert background["by_language"] == [
        {"language": "ca", "clips": 2, "accepted": 1, "accepted_at_miss": 1, "accepted_as": {"de": 1}},
        {"language": "ru", "clips": 1, "accepted": 0, "accepted_at_miss": 1, "accepted_as": {}},
    ]


def test_open_set_figures_without_background_clips():
    figures = open_set_figures(scores(CLIPS[:4]), LABELS, OpenSet(threshold=0.6, background="other"), None)
    assert figures["background"] is None and figures["excluded"] == {} and not figures["disjoint_checked"]
    assert figures["confusion"]["rows"] == ["de", "en"]


def test_a_model_without_a_background_class_rejects_by_threshold_alone():
    labels = LabelSet(("de", "en"))
    clips = [("de", "de", [0.9, 0.1]), ("en", "en", [0.3, 0.7]), ("other", "ca", [0.55, 0.45]), ("other", "ru", [0.2, 0.8])]
    figures = open_set_figures(scores(clips), labels, OpenSet(threshold=0.6), set())
    assert figures["confusion"]["counts"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert figures["background"]["false_accept"] == 0.5
    # At 0.8: in-set 0.7 missed (1/2), background 0.8 accepted (1/2).
    assert figures["background"]["eer"] == {"eer": 0.5, "threshold": pytest.approx(0.8)}


def test_calibration_figures_before_and_after_temperature():
    # Every clip at (0.8, 0.2), three of four right. T = 2 halves the log-odds: 0.8 -> 2/3.
    clips = [("de", "de", [0.8, 0.2])] * 3 + [("en", "en", [0.8, 0.2])]
    calibration = calibration_figures(scores(clips), LabelSet(("de", "en")), 2.0)
    assert calibration["ece_before"] == pytest.approx(0.05)
    assert calibration["ece_after"] == pytest.approx(0.75 - 2 / 3)
    assert [row["count"] for row in calibration["reliability"]] == [0] * 6 + [4] + [0] * 3
    assert calibration["reliability"][6]["confidence"] == pytest.approx(2 / 3)
    assert calibration["reliability_before"][7]["accuracy"] == 0.75


def test_duration_figures_score_the_clips_of_model_classes():
    labels = LabelSet(("de", "en"))
    clips = [("de", "de", [0.9, 0.1]), ("en", "en", [0.6, 0.4]), ("other", "ca", [0.5, 0.5])]
    ranges = duration_figures(scores(clips, duration_s=[1.0, 1.5, 7.0]), labels)
    assert [r["clips"] for r in ranges] == [2, 0, 0] and ranges[0]["accuracy"] == 0.5
