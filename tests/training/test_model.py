import pytest
import torch
from transformers import Speech2TextForConditionalGeneration

from slc.config import ModelConfig
from slc.training.model import LanguageClassifier, count_parameters, encoder_config


@pytest.fixture(scope="module", params=["tiny", "tdnn"])
def model(request):
    torch.manual_seed(0)
    return LanguageClassifier.build(ModelConfig.preset(request.param), num_labels=4)


def padded_batch(lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(lengths), max(lengths), 80, generator=generator)
    for i, n in enumerate(lengths):
        features[i, n:] = 0.0
    return features, torch.tensor(lengths)


@pytest.mark.parametrize(
    "preset, low, high", [("tiny", 1e6, 2e6), ("small", 15e6, 19e6), ("base", 40e6, 48e6), ("tdnn", 0.6e6, 1e6)]
)
def test_preset_sizes(preset, low, high):
    assert low <= count_parameters(LanguageClassifier.build(ModelConfig.preset(preset), 5)) <= high


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        ModelConfig.preset("huge")


def test_a_family_is_checked_and_only_speech2text_loads_pretrained_weights():
    with pytest.raises(ValueError, match="model family must be one of"):
        ModelConfig(family="lstm")
    with pytest.raises(ValueError, match="no pretrained weights"):
        ModelConfig.preset("tdnn", init_from="facebook/s2t-small-librispeech-asr")


def test_every_parameter_gets_a_gradient_and_nothing_is_nan(model):
    model.train()
    features, lengths = padded_batch([300, 123, 57])
    logits = model(features, lengths)
    assert logits.shape == (3, 4) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 3])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
    model.zero_grad()


@pytest.mark.parametrize("lengths", [[400, 237, 61], [97, 600, 13, 320]])
def test_clip_alone_equals_clip_in_padded_batch(model, lengths):
    model.eval()
    features, frame_lengths = padded_batch(lengths, seed=len(lengths))
    with torch.no_grad():
        batch = model(features, frame_lengths)
        for i, n in enumerate(lengths):
            alone = model(features[i : i + 1, :n], frame_lengths[i : i + 1])
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=1e-5)


def test_init_from_local_save_pretrained(tmp_path):
    shape = ModelConfig(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128, conv_channels=64)
    hf_config = encoder_config(shape)
    hf_config.decoder_layers, hf_config.vocab_size = 1, 32
    pretrained = Speech2TextForConditionalGeneration(hf_config)
    pretrained.save_pretrained(tmp_path / "s2t")
    model = LanguageClassifier.build(ModelConfig.preset("tiny", init_from=str(tmp_path / "s2t")), num_labels=3)
    assert model.config.d_model == 64 and model.config.encoder_layers == 2
    theirs = pretrained.model.encoder.state_dict()
    for name, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, theirs[name])
    features, lengths = padded_batch([100, 80])
    assert model(features, lengths).shape == (2, 3)


SMALL = ModelConfig(d_model=64, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=128, conv_channels=64)


def test_init_from_keeps_the_requested_head_and_dropout(tmp_path):
    hf_config = encoder_config(SMALL)
    hf_config.dropout = 0.3
    Speech2TextForConditionalGeneration(hf_config).save_pretrained(tmp_path / "s2t")
    asked = ModelConfig.preset("tiny", init_from=str(tmp_path / "s2t"), pooling_hidden=32, dropout=0.05, head_dropout=0.4)
    model = LanguageClassifier.build(asked, num_labels=3)
    assert (model.config.pooling_hidden, model.config.dropout, model.config.head_dropout) == (32, 0.05, 0.4)
    assert model.encoder.dropout == 0.05 and model.config.d_model == 64


def test_init_from_refuses_an_encoder_a_checkpoint_could_not_rebuild(tmp_path):
    hf_config = encoder_config(SMALL)
    hf_config.scale_embedding = False
    Speech2TextForConditionalGeneration(hf_config).save_pretrained(tmp_path / "s2t")
    with pytest.raises(ValueError, match=r"s2t: its encoder differs .* scale_embedding False \(slc builds True\)"):
        LanguageClassifier.build(ModelConfig.preset("tiny", init_from=str(tmp_path / "s2t")), num_labels=3)
