import json
import re
import shutil

import pytest
import torch

from slc.training import checkpoint as ckpt
from slc.config import FeatureConfig, ModelConfig, TrainConfig
from slc.labels import LabelSet
from slc.training.model import LanguageClassifier

LABELS = LabelSet(("de", "fr", "it"))


@pytest.fixture
def saved(tmp_path):
    config = TrainConfig(model=ModelConfig.preset("tiny"), epochs=3)
    model = LanguageClassifier.build(config.model, len(LABELS)).eval()
    ckpt.save(tmp_path / "c", model, LABELS, config, FeatureConfig(), {"epoch": 2, "val_f1": 0.5})
    return tmp_path / "c", model, config


def test_round_trip_rebuilds_the_same_model(saved):
    directory, model, config = saved
    loaded, labels, train_config, features = ckpt.load(directory)
    assert labels == LABELS and train_config == config and features == FeatureConfig()
    features_in, lengths = torch.randn(2, 200, 80), torch.tensor([200, 150])
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(features_in, lengths), model(features_in, lengths))
    assert ckpt.read_metrics(directory)["val_f1"] == 0.5


def test_only_safetensors_and_json(saved):
    directory, _, _ = saved
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json", "labels.json", "metrics.json", "model.safetensors"
    ]


def test_refuses_weights_that_do_not_fit_the_config(saved):
    directory, _, config = saved
    settings = json.loads((directory / "config.json").read_text())
    settings["train"]["model"]["d_model"] = 96
    (directory / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ckpt.CheckpointError, match="does not fit its config.json"):
        ckpt.load(directory)


def test_refuses_a_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no model.safetensors"):
        ckpt.load(tmp_path)


def test_training_state_round_trip(tmp_path):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler.step()
    ckpt.save_training_state(tmp_path, optimizer, scheduler, epoch=4, history=[{"epoch": 5}])
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh, lambda step: 1.0 / (1 + step))
    assert ckpt.load_training_state(tmp_path, fresh, fresh_scheduler) == (4, [{"epoch": 5}])
    for a, b in zip(optimizer.state.values(), fresh.state.values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"])
    assert fresh_scheduler.last_epoch == scheduler.last_epoch


def test_a_training_run_given_for_a_checkpoint_names_its_best(saved, tmp_path):
    directory, _, _ = saved
    (tmp_path / "run").mkdir()
    shutil.copytree(directory, tmp_path / "run" / "best")
    with pytest.raises(ckpt.CheckpointError, match=re.escape(f"its best checkpoint is {tmp_path / 'run' / 'best'}")):
        ckpt.load(tmp_path / "run")


def test_a_bundle_given_for_a_checkpoint_names_the_checkpoint_it_was_exported_from(tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "bundle.json").write_text(json.dumps({"exported_from": "runs/a/best"}))
    with pytest.raises(ckpt.CheckpointError) as raised:
        ckpt.load(tmp_path / "bundle")
    assert str(raised.value) == (
        f"{tmp_path / 'bundle'}: not a checkpoint (no model.safetensors); it is a bundle exported from the checkpoint "
        "runs/a/best, and its bundle.json holds each variant's val and test scores"
    )
