import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given, settings, strategies as st
from transformers import Speech2TextFeatureExtractor
from transformers.audio_utils import mel_filter_bank as hf_mel_filter_bank

from slc.config import FeatureConfig
from slc.data.features import Fbank, export_onnx, extract
from slc.runtime.fbank import mel_filter_bank, num_frames


@pytest.fixture(scope="module")
def fbank():
    return Fbank().eval()


@pytest.fixture(scope="module")
def reference():
    return Speech2TextFeatureExtractor(feature_size=80, num_mel_bins=80)


@pytest.fixture(scope="module")
def noise():
    return (np.random.default_rng(0).standard_normal(16000 * 7 + 123) * 0.1).astype(np.float32)


def test_mel_filters_match_transformers():
    theirs = hf_mel_filter_bank(
        num_frequency_bins=257, num_mel_filters=80, min_frequency=20, max_frequency=8000,
        sampling_rate=16000, norm=None, mel_scale="kaldi", triangularize_in_mel_space=True,
    )
    np.testing.assert_allclose(mel_filter_bank(FeatureConfig()), theirs, atol=1e-6)


@pytest.mark.parametrize("signal", ["speech_16k", "noise"])
def test_equals_speech2text_feature_extractor(signal, fbank, reference, request):
    clip = request.getfixturevalue(signal)
    theirs = reference(clip, sampling_rate=16000, return_tensors="np")["input_features"][0]
    ours = extract(clip, fbank)
    assert ours.shape == theirs.shape == (num_frames(len(clip)), 80)
    assert np.abs(ours - theirs).max() <= 1e-3


def test_padding_does_not_change_a_shorter_clip(fbank, speech_16k, noise):
    clips = [speech_16k, noise, noise[:8000]]
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.zeros(len(clips), int(lengths.max()))
    for i, clip in enumerate(clips):
        batch[i, : len(clip)] = torch.from_numpy(clip)
    with torch.inference_mode():
        features, frame_lengths = fbank(batch, lengths)
    for i, clip in enumerate(clips):
        alone = extract(clip, fbank)
        assert frame_lengths[i] == len(alone)
        np.testing.assert_allclose(features[i, : len(alone)].numpy(), alone, atol=1e-5)
        assert not features[i, len(alone):].any()


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=400, max_value=20_000))
def test_frame_count_is_kaldi_snip_edges(n_samples):
    module = Fbank(FeatureConfig(normalize=False))
    with torch.inference_mode():
        features, frame_lengths = module(torch.zeros(1, n_samples), torch.tensor([n_samples]))
    assert features.shape[1] == frame_lengths[0] == num_frames(n_samples) == 1 + (n_samples - 400) // 160


def test_features_are_normalised_per_clip(fbank, noise):
    features = extract(noise * 0.01, fbank)
    np.testing.assert_allclose(features.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(features.std(axis=0), 1, atol=1e-3)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    return export_onnx(tmp_path_factory.mktemp("onnx") / "features.onnx")


def test_onnx_graph_has_named_dynamic_inputs_and_outputs(onnx_path):
    graph = onnx.load(onnx_path).graph
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.input}
    outputs = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.output}
    assert list(dims) == ["waveforms", "lengths"] and list(outputs) == ["features", "frame_lengths"]
    assert all(isinstance(d, str) for d in dims["waveforms"])
    assert isinstance(outputs["features"][0], str) and isinstance(outputs["features"][1], str)
    assert outputs["features"][2] == 80


@pytest.mark.parametrize("batch, seconds", [(1, 1.0), (3, 4.0), (8, 30.0)])
def test_onnxruntime_matches_torch(onnx_path, fbank, batch, seconds):
    rng = np.random.default_rng(batch)
    n = int(seconds * 16000)
    waveforms = (rng.standard_normal((batch, n)) * 0.1).astype(np.float32)
    lengths = np.array([n] + list(rng.integers(400, n + 1, batch - 1)), dtype=np.int64)
    for i, length in enumerate(lengths):
        waveforms[i, length:] = 0.0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    features, frame_lengths = session.run(None, {"waveforms": waveforms, "lengths": lengths})
    with torch.inference_mode():
        expected, expected_lengths = fbank(torch.from_numpy(waveforms), torch.from_numpy(lengths))
    np.testing.assert_array_equal(frame_lengths, expected_lengths.numpy())
    assert np.abs(features - expected.numpy()).max() <= 1e-4
