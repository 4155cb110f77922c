import json

import numpy as np
import pytest
from matplotlib.image import imread

from slc.labels import LabelSet
from slc.runtime.openset import OpenSet
from slc.training.assessment import (
    SplitScores,
    calibration_figures,
    duration_figures,
    open_set_figures,
)
from slc.training.metrics import classification_metrics
from slc.training.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LABELS = LabelSet(("gsw", "de", "it", "fr", "en"))
HISTORY = [
    {"epoch": 1, "train_loss": 1.6, "val_loss": 1.5, "val_f1": 0.31},
    {"epoch": 2, "train_loss": 1.1, "val_loss": 1.2, "val_f1": 0.55},
    {"epoch": 3, "train_loss": 0.7, "val_loss": 0.9, "val_f1": 0.72},
]


@pytest.fixture
def metrics():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, len(LABELS), 120)
    y_pred = np.where(rng.random(120) < 0.7, y_true, rng.integers(0, len(LABELS), 120))
    return classification_metrics(y_true, y_pred, LABELS)


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    image = imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 200
    assert image.std() > 0.01  # not a blank canvas


def test_report_files_tables_and_numbers(tmp_path, metrics):
    details = {"checkpoint": "run/best", "epoch": 3, "val macro F1 (training)": 0.72, "clips": 120, "note": None}
    report = write_report(tmp_path / "out", metrics, LABELS, history=HISTORY, title="Test split", details=details)
    assert report == tmp_path / "out" / "report.md"
    text = report.read_text()
    assert text.startswith("# Test split\n")
    assert "| checkpoint | run/best |" in text and "| val macro F1 (training) | 0.7200 |" in text
    assert "| note | n/a |" in text
    macro = metrics["macro"]
    average_row = (f"| {metrics['accuracy']:.4f} | {macro['precision']:.4f} | {macro['recall']:.4f} "
                   f"| {macro['f1']:.4f} | {macro['iou']:.4f} | 120 |")
    assert "## Average" in text and average_row in text
    gsw = metrics["per_class"]["gsw"]
    assert (f"| gsw | {gsw['f1']:.4f} | {gsw['precision']:.4f} | {gsw['recall']:.4f} | {gsw['iou']:.4f} "
            f"| {gsw['support']} |") in text
    assert "| true \\ predicted | gsw | de | it | fr | en |" in text
    assert "| en | " + " | ".join(map(str, metrics["confusion"][4])) + " |" in text
    assert "![confusion](confusion.png)" in text and "![training](training.png)" in text
    assert_png(tmp_path / "out" / "confusion.png")
    assert_png(tmp_path / "out" / "training.png")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved == {**metrics, "history": HISTORY}


def test_report_without_history(tmp_path, metrics):
    text = write_report(tmp_path, metrics, LABELS).read_text()
    assert "![confusion](confusion.png)" in text and "training.png" not in text
    assert not (tmp_path / "training.png").exists()
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert_png(tmp_path / "confusion.png")


def test_report_with_a_class_without_clips(tmp_path):
    metrics = classification_metrics([0, 0, 1, 1, 3], [0, 1, 1, 1, 3], LabelSet(("gsw", "de", "it", "fr")))
    text = write_report(tmp_path, metrics, LabelSet(("gsw", "de", "it", "fr")), history=HISTORY[:1]).read_text()
    assert "| it | 0.0000 | 0.0000 | 0.0000 | 0.0000 | 0 |" in text
    assert_png(tmp_path / "confusion.png")
    assert_png(tmp_path / "training.png")


def test_report_with_many_classes(tmp_path):
    labels = LabelSet(tuple(f"l{i:02d}" for i in range(40)))
    rng = np.random.default_rng(1)
    y = rng.integers(0, 40, 400)
    write_report(tmp_path, classification_metrics(y, np.roll(y, 1), labels), labels)
    assert_png(tmp_path / "confusion.png")


OPEN_LABELS = LabelSet(("de", "en", "other"))


def evaluated_metrics(with_background: bool, trained_background: set[str] | None = None) -> dict:
    """The metrics `slc evaluate` writes, on random probabilities of 90 clips
    (30 of them background clips of ca and ru when `with_background`)."""
    rng = np.random.default_rng(4)
    truth = np.array(["de", "en", "other"] * 30 if with_background else ["de", "en"] * 30, dtype=object)
    source = np.where(truth == "other", np.array(["ca", "ru"] * 45)[: len(truth)], truth).astype(object)
    ids = np.array([OPEN_LABELS.id(code) for code in truth])
    logits = rng.normal(size=(len(truth), 3)) + 2.5 * np.eye(3)[ids]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    scores = SplitScores(probabilities, truth, source, rng.uniform(0.5, 9.0, len(truth)))
    metrics = classification_metrics(ids, probabilities.argmax(axis=1), OPEN_LABELS)
    open_set = OpenSet(temperature=1.5, threshold=0.55, target_miss=0.05, background="other")
    metrics["open_set"] = open_set_figures(scores, OPEN_LABELS, open_set, trained_background)
    metrics["calibration"] = calibration_figures(scores, OPEN_LABELS, 1.5)
    metrics["by_duration"] = duration_figures(scores, OPEN_LABELS)
    return metrics


def test_report_with_background_clips(tmp_path):
    metrics = evaluated_metrics(with_background=True, trained_background={"es"})
    text = write_report(tmp_path, metrics, OPEN_LABELS).read_text()
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert_png(tmp_path / "reliability.png")
    assert "| true \\ predicted | de | en | other |" in text
    background = metrics["open_set"]["background"]
    assert "None of these languages was used to train the background class." in text
    assert (f"| 30 | {background['at_miss']['false_accept']:.4f} | {background['at_miss']['threshold']:.4f} "
            f"| {background['eer']['eer']:.4f} | {background['eer']['threshold']:.4f} "
            f"| {background['false_accept']:.4f} |") in text
    for row in background["by_language"]:
        assert f"| {row['language']} | 15 | {row['accepted']} | {row['accepted_at_miss']} |" in text
    assert "| true \\ answer | de | en | unknown |" in text
    counts = metrics["open_set"]["confusion"]["counts"][2]
    assert "| other | " + " | ".join(map(str, counts)) + " |" in text
    answers = metrics["open_set"]["answers"]
    assert f"| {answers['macro_f1']:.4f} | {answers['accuracy']:.4f} |" in text
    calibration = metrics["calibration"]
    assert f"{calibration['ece_before']:.4f} before and {calibration['ece_after']:.4f} after" in text
    assert "(T = 1.5)" in text and "![reliability](reliability.png)" in text
    for row in metrics["by_duration"]:
        assert f"| {row['range']} | {row['clips']} | {row['accuracy']:.4f} | {row['macro_f1']:.4f} |" in text


def test_report_without_background_clips(tmp_path):
    metrics = evaluated_metrics(with_background=False)
    text = write_report(tmp_path, metrics, OPEN_LABELS).read_text()
    assert "The split has no background clips" in text and "false accepts at" not in text
    assert "| true \\ answer | de | en | unknown |" in text and "| other |" not in text.split("## Open set")[1]
    assert_png(tmp_path / "reliability.png")


def test_report_when_every_background_language_trained_the_background_class(tmp_path):
    metrics = evaluated_metrics(with_background=True, trained_background={"ca", "ru"})
    text = write_report(tmp_path, metrics, OPEN_LABELS).read_text()
    assert metrics["open_set"]["background"] is None
    assert "Every background clip is of a language the background class was trained on (ca (15), ru (15))" in text


def test_report_when_no_training_split_was_found(tmp_path):
    text = write_report(tmp_path, evaluated_metrics(with_background=True, trained_background=None), OPEN_LABELS).read_text()
    assert "No training split was found to check these languages" in text
