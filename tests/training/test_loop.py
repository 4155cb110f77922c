"""Training on Ray Train, end to end on a small espeak-ng corpus."""

import json
import shutil
import os
import signal
import threading
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import registered_epochs
from slc.training import checkpoint as ckpt
from slc.apps.cli import app
from slc.apps.options import PRESET_HELP
from slc.config import MODEL_PRESETS, ModelConfig, TrainConfig
from slc.training.evaluation import evaluate
from slc.training.model import LanguageClassifier, count_parameters
from slc.training.loop import train

TINY = TrainConfig(model=ModelConfig.preset("tiny"), batch_size=8, max_frames=300, workers=2)


def _worker_pids() -> list[int]:
    """Live Ray Train worker processes (Ray titles them `ray::RayTrainWorker...`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def run(small_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    best = train(str(small_shards), str(out), TrainConfig(**{**TINY.__dict__, "epochs": 3, "keep_checkpoints": 1}))
    return out, best


def test_best_checkpoint_is_copied_with_its_history(run, small_shards):
    out, best = run
    assert best["best"] == str(out / "best") and best["epochs_run"] == 3
    model, labels, config, _ = ckpt.load(out / "best")
    assert labels.codes == ("de", "en") and config.epochs == 3
    assert ckpt.trained_on(out / "best") == str(small_shards)
    history = json.loads((out / "best" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert best["val_f1"] == max(row["val_f1"] for row in history)
    assert all(row["train_loss"] > 0 and 0 <= row["data_wait_share"] <= 1 for row in history)
    metrics = ckpt.read_metrics(out / "best")
    assert metrics["epoch"] == best["epoch"] and sum(map(sum, metrics["val"]["confusion"])) > 0


def test_keeps_the_best_checkpoints_only(run):
    out, _ = run
    checkpoints = [p for p in (out / "run").glob("checkpoint_*") if p.is_dir()]
    assert 1 <= len(checkpoints) <= 2  # of 3 epochs: the best 1, plus the latest when it is not the best


def test_evaluate_writes_the_report(run, small_shards, tmp_path):
    out, _ = run
    metrics = evaluate(out / "best", str(small_shards), tmp_path / "report")
    for name in ("report.md", "metrics.json", "confusion.png", "training.png"):
        assert (tmp_path / "report" / name).is_file()
    assert metrics["n"] == sum(sum(row) for row in metrics["confusion"]) > 0
    assert f"{metrics['macro']['f1']:.4f}" in (tmp_path / "report" / "report.md").read_text()


def test_non_empty_output_is_refused(run, small_shards):
    out, _ = run
    result = CliRunner().invoke(app, ["train", str(small_shards), str(out), "--epochs", "1"])
    assert result.exit_code == 2 and "not empty" in result.output


def test_a_resume_on_shards_of_other_labels_or_with_other_settings_is_refused_before_it_starts(run, small_shards, tmp_path):
    out, _ = run
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


def test_a_worker_killed_in_epoch_two_resumes_and_ends_as_an_uninterrupted_run(run, small_shards, tmp_path):
    """A worker process dies in epoch 2; Ray restarts the group from the
    epoch-1 checkpoint, and the run ends with the history of the run that
    nothing interrupted: rows reach the workers in order and every random
    draw is seeded by epoch, so the same shards and settings give the same
    weights, resumed or not."""
    killed = []

    def kill_a_worker_after_first_checkpoint():
        while not registered_epochs(tmp_path):
            if threading.main_thread().is_alive() is False:
                return
            threading.Event().wait(0.1)
        pids = _worker_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(registered_epochs(tmp_path))

    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint, daemon=True)
    killer.start()
    config = TrainConfig(**{**TINY.__dict__, "epochs": 3, "max_failures": 1})
    best = train(str(small_shards), str(tmp_path), config)
    killer.join(timeout=5)
    assert killed, "no worker was running after the first checkpoint"
    assert killed[0] in ([1], [2]), f"killed with checkpoints of epochs {killed[0]} registered"
    assert best["epochs_run"] == 3
    uninterrupted, resumed = (json.loads((d / "best" / "history.json").read_text()) for d in (run[0], tmp_path))
    assert [row["epoch"] for row in resumed] == [1, 2, 3]
    for name in ("train_loss", "val_loss", "val_f1"):
        assert [row[name] for row in resumed] == pytest.approx([row[name] for row in uninterrupted], abs=1e-6), name


def test_help_lists_presets_with_their_parameter_counts():
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0 and "tiny" in result.output and "base" in result.output
    with torch.device("meta"):
        for name in MODEL_PRESETS:
            millions = count_parameters(LanguageClassifier(ModelConfig.preset(name), 5)) / 1e6
            assert f"{name} ({millions:.1f} M" in PRESET_HELP
