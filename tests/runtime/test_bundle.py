"""A bundle's files are checked against bundle.json: the files a Classifier
loads, each once per process."""

import json
import os
import shutil

import numpy as np
import pytest

from slc.runtime import bundle as bundles
from slc.runtime.classifier import Classifier


@pytest.fixture
def copy(small_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(small_bundle, target)
    return target


def alter(file):
    """Flip a byte, and move the modification time on as a later edit would."""
    data = bytearray(file.read_bytes())
    data[-10] ^= 0xFF
    before = file.stat()
    file.write_bytes(bytes(data))
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def hashed(monkeypatch):
    """The names of the files sha256 is computed for, in order."""
    names = []
    real = bundles.sha256

    def counting(path):
        names.append(path.name)
        return real(path)

    monkeypatch.setattr(bundles, "sha256", counting)
    return names


def test_an_altered_variant_stops_only_itself(copy):
    alter(copy / "model.int8-dynamic.onnx")
    assert Classifier(copy, variant="fp32").variant == "fp32"
    with pytest.raises(bundles.BundleError, match=r"model.int8-dynamic.onnx: sha256 does not match bundle.json"):
        Classifier(copy, variant="int8-dynamic")


def test_an_altered_feature_graph_is_refused_for_every_variant(copy):
    alter(copy / "features.onnx")
    for variant in ("fp32", "int8-dynamic"):
        with pytest.raises(bundles.BundleError, match=r"features.onnx: sha256 does not match"):
            Classifier(copy, variant=variant)


def test_a_classifier_hashes_only_the_files_it_loads_and_a_second_one_none(copy, hashed):
    Classifier(copy, variant="fp32")
    assert sorted(hashed) == ["features.onnx", "model.onnx"]
    Classifier(copy, variant="fp32")
    assert sorted(hashed) == ["features.onnx", "model.onnx"], "the second Classifier hashed again"
    Classifier(copy, variant="fp16")
    assert sorted(hashed) == ["features.onnx", "model.fp16.onnx", "model.onnx"]


def test_a_file_altered_after_it_was_checked_is_checked_again(copy, hashed):
    Classifier(copy, variant="fp32")
    alter(copy / "model.onnx")
    with pytest.raises(bundles.BundleError, match=r"model.onnx: sha256 does not match"):
        Classifier(copy, variant="fp32")
    assert hashed.count("model.onnx") == 2


def test_a_missing_file_is_refused_even_when_unused(copy):
    (copy / "model.fp16.onnx").unlink()
    with pytest.raises(bundles.BundleError, match=r"model.fp16.onnx: listed in bundle.json but missing"):
        Classifier(copy, variant="fp32")


def test_a_feature_graph_that_disagrees_with_the_feature_settings_is_refused(copy):
    """The runtime computes features in numpy from bundle.json's settings;
    a features.onnx made with other settings would have given the model
    other numbers in training."""
    manifest = bundles.read_manifest(copy)
    manifest["features"]["normalize"] = False
    (copy / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(bundles.BundleError, match=r"features.onnx: its features differ from those of the bundle's feature settings"):
        Classifier(copy)


def test_a_gpu_asked_of_an_onnxruntime_without_cuda_runs_on_cpu_and_says_so(small_bundle, caplog):
    import onnxruntime

    assert "CUDAExecutionProvider" not in onnxruntime.get_available_providers()  # the CPU wheel these tests run on
    classifier = Classifier(small_bundle, device="cuda")
    assert classifier.device == "cpu"
    assert "no CUDA provider" in caplog.text and "onnxruntime-gpu" in caplog.text
    clip = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    assert classifier.classify(clip).language == Classifier(small_bundle).classify(clip).language


def test_an_unknown_device_is_refused():
    with pytest.raises(ValueError, match="device must be one of"):
        bundles.providers("tpu")
