"""Training on Ray Train, end to end on a small espeak-ng corpus."""

import json
import shutil

import torch
from typer.testing import CliRunner

from conftest import TINY_RUN_EPOCHS
from slc.training import checkpoint as ckpt
from slc.apps.cli import app
from slc.apps.options import PRESET_HELP
from slc.config import MODEL_PRESETS, ModelConfig
from slc.training.evaluation import evaluate
from slc.training.model import LanguageClassifier, count_parameters


def test_best_checkpoint_is_copied_with_its_history(tiny_run, small_shards):
    out, best = tiny_run
    assert best["best"] == str(out / "best") and best["epochs_run"] == TINY_RUN_EPOCHS
    model, labels, config, _ = ckpt.load(out / "best")
    assert labels.codes == ("de", "en") and config.epochs == TINY_RUN_EPOCHS
    assert ckpt.trained_on(out / "best") == str(small_shards)
    history = json.loads((out / "best" / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, TINY_RUN_EPOCHS + 1))
    assert best["val_f1"] == max(row["val_f1"] for row in history)
    assert all(row["train_loss"] > 0 and 0 <= row["data_wait_share"] <= 1 for row in history)
    metrics = ckpt.read_metrics(out / "best")
    assert metrics["epoch"] == best["epoch"] and sum(map(sum, metrics["val"]["confusion"])) > 0


def test_keeps_the_best_checkpoints_only(tiny_run):
    out, _ = tiny_run
    checkpoints = [p for p in (out / "run").glob("checkpoint_*") if p.is_dir()]
    assert 1 <= len(checkpoints) <= 2  # the best 1, plus the latest when it is not the best


def test_evaluate_writes_the_report(tiny_run, small_shards, tmp_path):
    out, _ = tiny_run
    metrics = evaluate(out / "best", str(small_shards), tmp_path / "report")
    for name in ("report.md", "metrics.json", "confusion.png", "training.png"):
        assert (tmp_path / "report" / name).is_file()
    assert metrics["n"] == sum(sum(row) for row in metrics["confusion"]) > 0
    assert f"{metrics['macro']['f1']:.4f}" in (tmp_path / "report" / "report.md").read_text()


def test_non_empty_output_is_refused(tiny_run, small_shards):
    out, _ = tiny_run
    result = CliRunner().invoke(app, ["train", str(small_shards), str(out), "--epochs", "1"])
    assert result.exit_code == 2 and "not empty" in result.output


def test_a_resume_on_shards_of_other_labels_or_with_other_settings_is_refused_before_it_starts(tiny_run, small_shards, tmp_path):
    out, _ = tiny_run
    before = sorted(p.name for p in (out / "run").iterdir())
    other = tmp_path / "shards"
    shutil.copytree(small_shards, other)
    (other / "labels.json").write_text(json.dumps({"labels": ["de", "en", "fr"]}))
    resume = ["train", "--preset", "tiny", "--batch-size", "8", "--max-frames", "300", "--workers", "2", "--resume"]

    result = CliRunner().invoke(app, [resume[0], str(other), str(out), *resume[1:]])
    assert result.exit_code == 2, result.output
    assert "was trained on shards labelled de, en, and these are labelled de, en, fr" in result.output

    result = CliRunner().invoke(app, [resume[0], str(small_shards), str(out), *resume[1:], "--lr", "0.01"])
    assert result.exit_code == 2, result.output
    assert "was trained with other settings (lr); resume with the same settings" in result.output
    assert sorted(p.name for p in (out / "run").iterdir()) == before


def test_help_lists_presets_with_their_parameter_counts():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "tiny" in result.output and "base" in result.output
    with torch.device("meta"):
        for name in MODEL_PRESETS:
            millions = count_parameters(LanguageClassifier(ModelConfig.preset(name), 5)) / 1e6
            assert f"{name} ({millions:.1f} M" in PRESET_HELP
