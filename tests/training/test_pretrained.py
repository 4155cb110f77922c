"""A run started from a pretrained Speech2Text encoder (`--init-from`) whose
shape is no preset: its checkpoints rebuild the model that was trained, so
evaluate, export, prediction and resume work without the pretrained files."""

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import Speech2TextForConditionalGeneration

from slc.config import ExportConfig, ModelConfig, TrainConfig
from slc.export.exporter import export_bundle
from slc.runtime.classifier import Classifier
from slc.training import checkpoint as ckpt
from slc.training.evaluation import evaluate
from slc.training.loop import train
from slc.training.model import encoder_config

from conftest import espeak_wav

SHAPE = {"d_model": 96, "encoder_layers": 3, "encoder_attention_heads": 4, "encoder_ffn_dim": 192, "conv_channels": 64}
# Far from the 1.0 a fresh LayerNorm starts at: only the pretrained encoder has it.
MARKER = 0.5


@pytest.fixture
def pretrained(tmp_path):
    """A save_pretrained Speech2Text model (encoder + decoder, as the hub's are)
    whose final encoder LayerNorm weight is MARKER everywhere."""
    torch.manual_seed(1)
    hf_config = encoder_config(ModelConfig(**SHAPE))
    hf_config.decoder_layers, hf_config.vocab_size = 1, 32
    model = Speech2TextForConditionalGeneration(hf_config)
    with torch.no_grad():
        model.model.encoder.layer_norm.weight.fill_(MARKER)
    model.save_pretrained(tmp_path / "s2t")
    return tmp_path / "s2t", {k: v.clone() for k, v in model.model.encoder.state_dict().items()}


@pytest.fixture
def slc_log(caplog):
    """slc's log records, also when the CLI has stopped them propagating."""
    logger = logging.getLogger("slc")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="slc")
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.mark.slow
def test_a_run_from_a_pretrained_encoder_evaluates_exports_predicts_and_resumes(
    pretrained, small_shards, tmp_path, slc_log
):
    path, before = pretrained
    config = TrainConfig(
        model=ModelConfig.preset("tiny", init_from=str(path)), batch_size=8, max_frames=300, workers=1, epochs=1,
        keep_checkpoints=1,
    )  # fmt: skip
    run = tmp_path / "run"
    train(str(small_shards), str(run), config)
    cpu_line = "training on CPU: the cluster has no GPUs now and --gpu was not given"
    assert cpu_line in slc_log.text

    # Every checkpoint records the shape that was built, not the preset asked for.
    (first,) = [p for p in run.glob("run/checkpoint_*") if p.is_dir()]
    for directory in (first, run / "best"):
        recorded = json.loads((directory / "config.json").read_text())["train"]["model"]
        assert {k: recorded[k] for k in SHAPE} == SHAPE and recorded["init_from"] == str(path)

    # Nothing below may read the pretrained files again.
    shutil.rmtree(path)
    model, labels, _, _ = ckpt.load(first)
    trained = load_file(first / "model.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained[name]), name
    # Training started from the pretrained encoder and moved it a little.
    layer_norm = model.encoder.layer_norm.weight.detach()
    assert not torch.equal(layer_norm, before["layer_norm.weight"])
    assert torch.allclose(layer_norm, before["layer_norm.weight"], atol=0.05)
    conv = model.encoder.conv.conv_layers[0].weight.detach()
    assert torch.allclose(conv, before["conv.conv_layers.0.weight"], atol=0.05)

    metrics = evaluate(run / "best", str(small_shards), tmp_path / "report")
    assert metrics["n"] > 0 and (tmp_path / "report" / "report.md").is_file()

    export_config = ExportConfig(latency_repeats=2, calibration_clips=4, target_miss=0.0)  # threshold 0: never `unknown`
    manifest = export_bundle(run / "best", tmp_path / "bundle", config=export_config)
    assert manifest["model"]["d_model"] == SHAPE["d_model"]
    clip = tmp_path / "hallo.wav"
    clip.write_bytes(espeak_wav("Guten Tag, wie geht es Ihnen heute?", "de"))
    classifier = Classifier(tmp_path / "bundle")
    prediction = classifier.classify(classifier.load_audio(clip))
    assert prediction.language in labels.codes and sum(prediction.probabilities.values()) == pytest.approx(1.0)

    resumed = train(str(small_shards), str(run), TrainConfig(**{**config.__dict__, "epochs": 2}), resume=True)
    assert resumed["epochs_run"] == 2
    history = json.loads((run / "best" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
