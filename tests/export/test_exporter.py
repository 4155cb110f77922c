"""Export: the trained classifier as ONNX, checked against PyTorch, with
optimised and quantized variants scored, timed and hashed into a bundle."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from slc.runtime import bundle as bundles
from slc.training import checkpoint as ckpt
from slc.config import ExportConfig
from slc.export import quantize
from slc.export.exporter import ExportError, check_parity, export_bundle, export_model
from slc.export.selection import choose_default, variants_table
from slc.data.features import Fbank
from slc.runtime.classifier import Classifier

from conftest import REPO, espeak_wav

VARIANTS = ("fp32", "fp32-basic", "fp32-extended", "fp32-all", "int8-dynamic", "int8-static", "int8-matmul", "fp16")


def test_bundle_holds_every_variant_scored_timed_and_hashed(small_bundle):
    manifest = json.loads((small_bundle / "bundle.json").read_text())
    assert manifest["labels"] == ["de", "en"] and manifest["slc_version"]
    assert manifest["window"]["window_s"] == 4.0 and manifest["features"]["num_mel_bins"] == 80
    assert set(manifest["variants"]) == set(VARIANTS)
    for name, variant in manifest["variants"].items():
        assert "error" not in variant, (name, variant)
        for split in ("val", "test"):
            assert 0 <= variant[f"{split}_macro_f1"] <= 1 and 0 <= variant[f"{split}_iou"] <= 1
        assert variant["size_mb"] > 0 and variant["p50_ms"] > 0 and variant["speedup_vs_torch"] > 0
        assert variant["speedup_vs_fp32"] > 0
        assert (small_bundle / variant["file"]).is_file()
    sizes = {name: v["size_mb"] for name, v in manifest["variants"].items()}
    assert all(sizes[name] < sizes["fp32"] for name in ("int8-dynamic", "int8-static", "int8-matmul"))
    assert sizes["fp16"] < sizes["fp32"] * 0.6
    listed = set(manifest["files"])
    assert listed == {p.name for p in small_bundle.iterdir()} - {"bundle.json"}
    assert all(manifest["files"][name] == bundles.sha256(small_bundle / name) for name in listed)
    assert manifest["parity"]["max_abs_diff"] <= 1e-4
    assert manifest["default_variant"] in manifest["variants"]
    default = manifest["variants"][manifest["default_variant"]]
    assert not default["rejected"] and default["batch_drift"] <= manifest["parity"]["tolerance"]
    assert manifest["variants"]["fp32"]["batch_drift"] < 1e-5  # masking: padding changes nothing
    report = (small_bundle / "report.md").read_text()
    assert "| variant | val F1 | test F1 | test IoU | size MB" in report and "| int8-matmul |" in report
    assert manifest["scored_on"]["clips"]["val"] > 0 and manifest["scored_on"]["clips"]["test"] > 0


def test_int8_variants_use_the_products_onnxruntime_runs_fast_on_x86(small_bundle):
    """uint8 activations x int8 weights, and no ConvInteger: int8 activations and
    ConvInteger each made a variant slower than fp32 on x86 (bench/inference.py)."""
    def graph(variant):
        return onnx.load(str(small_bundle / bundles.model_file(variant))).graph

    dynamic = {node.op_type for node in graph("int8-dynamic").node}
    assert "MatMulInteger" in dynamic and "ConvInteger" not in dynamic and "Conv" in dynamic
    for variant in ("int8-static", "int8-matmul"):
        g = graph(variant)
        constants = {t.name: t for t in g.initializer}
        zero_points = [constants[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear"]
        assert zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points), variant


def test_exported_graph_takes_any_batch_and_length(small_bundle, small_checkpoint):
    model, *_ = ckpt.load(small_checkpoint)
    model.eval()
    session = ort.InferenceSession(str(small_bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch, frames in ((1, 50), (5, 1234)):
        features = rng.standard_normal((batch, frames, 80)).astype(np.float32)
        lengths = np.linspace(frames // 3, frames, batch).astype(np.int64)
        (got,) = session.run(None, {"features": features, "frame_lengths": lengths})
        with torch.inference_mode():
            expected = torch.softmax(model(torch.from_numpy(features), torch.from_numpy(lengths)), -1).numpy()
        assert got.shape == (batch, 2) and np.abs(got - expected).max() <= 1e-4


def test_a_tdnn_model_exports_within_parity(tmp_path):
    from slc.config import ModelConfig
    from slc.training.model import LanguageClassifier

    torch.manual_seed(0)
    model = LanguageClassifier.build(ModelConfig.preset("tdnn"), 3).eval()
    path = export_model(model, tmp_path / "model.onnx")
    assert check_parity(model, path, tolerance=1e-4)["max_abs_diff"] <= 1e-4


def test_parity_check_fails_an_export_that_disagrees_with_pytorch(small_checkpoint, tmp_path):
    model, *_ = ckpt.load(small_checkpoint)
    model.eval()
    path = export_model(model, tmp_path / "model.onnx")
    assert check_parity(model, path, 1e-4)["max_abs_diff"] <= 1e-4
    with torch.no_grad():
        model.classifier.bias += torch.tensor([2.0, -2.0])
    with pytest.raises(ExportError, match="differ by"):
        check_parity(model, path, 1e-4)


def test_features_graph_matches_the_torch_fbank(small_bundle, speech_16k):
    session = ort.InferenceSession(str(small_bundle / "features.onnx"), providers=["CPUExecutionProvider"])
    clips = [speech_16k, speech_16k[:16000]]
    waveforms = np.zeros((2, len(speech_16k)), dtype=np.float32)
    waveforms[1, :16000] = speech_16k[:16000]
    waveforms[0] = speech_16k
    lengths = np.array([len(c) for c in clips])
    features, frames = session.run(None, {"waveforms": waveforms, "lengths": lengths})
    with torch.inference_mode():
        expected, expected_frames = Fbank()(torch.from_numpy(waveforms), torch.from_numpy(lengths))
    assert (frames == expected_frames.numpy()).all()
    assert np.abs(features - expected.numpy()).max() < 1e-4


def test_a_variant_losing_more_than_a_point_on_val_is_rejected_and_never_the_default():
    # Test scores disagree with val everywhere: only val decides.
    variants = {
        "fp32": {"file": "a", "val_macro_f1": 0.950, "test_macro_f1": 0.900, "speedup_vs_fp32": 1.0},
        "int8-static": {"file": "b", "val_macro_f1": 0.930, "test_macro_f1": 0.990, "speedup_vs_fp32": 5.0},  # -2: rejected
        "int8-dynamic": {"file": "c", "val_macro_f1": 0.942, "test_macro_f1": 0.990, "speedup_vs_fp32": 3.3},  # -0.8: kept
        "int8-matmul": {"file": "d", "val_macro_f1": 0.946, "test_macro_f1": 0.500, "speedup_vs_fp32": 2.0},  # -0.4: default
        "fp16": {"error": "RuntimeError: failed"},
    }
    for row in variants.values():
        row["batch_drift"] = 0.0
    assert choose_default(variants, ExportConfig()) == "int8-matmul"
    assert variants["int8-static"]["rejected"]
    assert "val macro F1 0.9300 is 2.0 points below fp32" in variants["int8-static"]["rejected_because"]
    assert not variants["int8-dynamic"]["rejected"] and not variants["fp32"]["rejected"]


def test_a_variant_whose_answers_depend_on_the_batch_is_never_the_default():
    """int8-dynamic scales activations per batch: served in a batch, a clip
    gets another answer than alone. It stays a variant to ask for."""
    scored = {"val_macro_f1": 0.95, "test_macro_f1": 0.9, "test_iou": 0.8, "size_mb": 1.0, "p50_ms": 1.0,
              "speedup_vs_torch": 2.0}  # fmt: skip
    variants = {
        "fp32": {"file": "a", **scored, "batch_drift": 1e-7, "speedup_vs_fp32": 1.0},
        "int8-dynamic": {"file": "b", **scored, "batch_drift": 1.4e-3, "speedup_vs_fp32": 2.2},
        "int8-matmul": {"file": "c", **scored, "batch_drift": 2e-7, "speedup_vs_fp32": 2.1},
    }
    assert choose_default(variants, ExportConfig()) == "int8-matmul"
    assert not variants["int8-dynamic"]["rejected"]
    manifest = {"variants": variants, "default_variant": "int8-matmul", "torch_p50_ms": 2.0, "parity": {"tolerance": 1e-4}}
    assert "| ok (answers depend on the batch: 1e-03) |" in variants_table(manifest).splitlines()[3]


def test_one_noisy_timing_cannot_make_a_slower_variant_the_default():
    """fp16 takes 11.1 ms to fp32's 10 in every round but one, where the
    machine was busy while fp32 ran (30 ms) and fp16 looked 2.7x faster;
    int8-matmul takes 7.7 ms throughout. Times are injected per call."""
    variant_ms = {"fp16": 11.1, "int8-matmul": 7.7, "fp32-all": 9.9}
    # fp32 is timed once per variant per round, variants in order: call 6 is
    # round 3's pairing with fp16.
    fp32_ms = iter([30.0 if call == 6 else 10.0 for call in range(15)])

    def timer(run, repeats):
        name = run()
        return next(fp32_ms) if name == "fp32" else variant_ms[name]

    runs = {name: (lambda name=name: name) for name in ("fp32", *variant_ms)}
    speedups = quantize.paired_speedups(runs, rounds=5, repeats=3, timer=timer)
    assert speedups["fp32"] == 1.0
    assert speedups["fp16"] == pytest.approx(10.0 / 11.1, rel=1e-3)
    assert speedups["int8-matmul"] == pytest.approx(10.0 / 7.7, rel=1e-3)
    rows = {name: {"file": name, "val_macro_f1": 0.9, "batch_drift": 0.0, "speedup_vs_fp32": speedups[name]}
            for name in runs}  # fmt: skip
    assert choose_default(rows, ExportConfig()) == "int8-matmul"
    # 1% faster is within the noise: fp32 stays the default.
    del rows["int8-matmul"]
    assert choose_default(rows, ExportConfig()) == "fp32"


def test_the_default_variant_is_chosen_on_val_and_test_is_only_reported(small_checkpoint, tmp_path, monkeypatch):
    """int8-dynamic scores badly on val but well on test: rejected. int8-matmul
    scores as fp32 on val but badly on test, and is the fastest: the default,
    its test score reported. Speed-ups over PyTorch come from the same paired
    timings as those over fp32."""
    measure = quantize.measure
    rows = {}

    def measured(path, *args):
        row = rows[path.name] = measure(path, *args)
        if path.name == "model.int8-dynamic.onnx":
            row["val_macro_f1"] = 0.0
        if path.name == "model.int8-matmul.onnx":
            row.update(val_macro_f1=rows["model.onnx"]["val_macro_f1"], test_macro_f1=0.0)
        return row

    def timed(runs, *args):
        return {name: {"int8-matmul": 100.0, "PyTorch eager": 0.5}.get(name, 1.0) for name in runs}

    monkeypatch.setattr(quantize, "measure", measured)
    monkeypatch.setattr(quantize, "paired_speedups", timed)
    manifest = export_bundle(small_checkpoint, tmp_path / "bundle", config=ExportConfig(latency_repeats=2, calibration_clips=4))
    variants = manifest["variants"]
    assert manifest["default_rule"]["split"] == "val"
    assert variants["int8-dynamic"]["rejected"] and variants["int8-dynamic"]["test_macro_f1"] > 0
    assert "val macro F1 0.0000" in variants["int8-dynamic"]["rejected_because"]
    assert not variants["int8-matmul"]["rejected"] and variants["int8-matmul"]["test_macro_f1"] == 0.0
    assert manifest["default_variant"] == "int8-matmul"  # the fastest, and as good as fp32 on val
    assert variants["int8-matmul"]["speedup_vs_torch"] == 200.0 and variants["fp32"]["speedup_vs_torch"] == 2.0
    report = (tmp_path / "bundle" / "report.md").read_text()
    matmul = variants["int8-matmul"]
    assert f"| int8-matmul | {matmul['val_macro_f1']:.4f} | 0.0000 |" in report
    assert "| int8-dynamic | 0.0000 |" in report and "rejected" in report
    open_set = manifest["open_set"]
    assert open_set["target_miss"] == ExportConfig().target_miss and open_set["background"] is None
    assert open_set["temperature"] > 0 and 0 <= open_set["threshold"] <= 1
    assert open_set["fitted_on"] == {"split": "val", "clips": manifest["scored_on"]["clips"]["val"]}
    assert "- open set: temperature" in report
    assert Classifier(tmp_path / "bundle").open_set.threshold == open_set["threshold"]


def test_a_bundle_altered_after_export_is_refused(small_bundle, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(small_bundle, copy)
    Classifier(copy)  # intact
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(bundles.BundleError, match="model.onnx: sha256 does not match"):
        Classifier(copy, variant="fp32")
    (copy / "model.onnx").unlink()
    with pytest.raises(bundles.BundleError, match="model.onnx: listed in bundle.json but missing"):
        Classifier(copy)
    with pytest.raises(bundles.BundleError, match="not a bundle"):
        Classifier(tmp_path)


def test_export_job_refuses_a_non_empty_bundle_and_names_the_fix(small_checkpoint, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    result = subprocess.run(
        [sys.executable, "jobs/export.py", str(small_checkpoint), str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2 and "--overwrite" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_predict_prints_language_and_top_probabilities(small_bundle, tmp_path):
    good = tmp_path / "hallo.wav"
    good.write_bytes(espeak_wav("Guten Tag, wie geht es Ihnen heute?", "de"))
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio")
    command = [sys.executable, "-m", "slc.apps.cli", "predict", str(good), str(bad), "--bundle", str(small_bundle)]
    result = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1  # one file failed; the other was still classified
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    classifier = Classifier(small_bundle)
    expected = classifier.classify(classifier.load_audio(good))
    assert first["path"] == str(good) and first["language"] == expected.language
    assert first["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert second == {"path": str(bad), "error": "undecodable", "detail": second["detail"]}
    assert str(bad) in second["detail"]
    text = subprocess.run(command[:-3] + ["--bundle", str(small_bundle)], capture_output=True, text=True, timeout=60)
    assert text.stdout.startswith(f"{good}  {expected.language}  (")


@pytest.mark.skipif("MP3" not in __import__("soundfile").available_formats(), reason="this libsndfile has no MP3")
def test_predict_keeps_a_decoders_notes_off_the_terminal_and_names_the_log_that_has_them(small_bundle, tmp_path):
    """libmpg123 writes notes to stderr as it gives up on a damaged MP3: the
    terminal shows slc's line for the file, the notes go to a log it names;
    a run without notes leaves no log."""
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(b"\xff\xfb\x90\x00" + bytes(400))
    good = tmp_path / "hallo.wav"
    good.write_bytes(espeak_wav("Guten Tag, wie geht es Ihnen heute?", "de"))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = {**os.environ, "TMPDIR": str(temporary)}

    def predict(path: Path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "slc.apps.cli", "predict", str(path), "--bundle", str(small_bundle)]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

    result = predict(damaged)
    assert result.returncode == 1
    error, named = result.stderr.splitlines()
    assert error.startswith(f"error: {damaged}: undecodable: ")
    assert named.startswith("slc: decoder messages: ")
    notes = Path(named.removeprefix("slc: decoder messages: "))
    assert notes.parent == temporary and "libmpg123" in notes.read_text()
    notes.unlink()

    result = predict(good)
    assert result.returncode == 0 and result.stderr == "" and not list(temporary.glob("slc-*"))
