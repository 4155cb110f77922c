"""An oracle bundle: a valid slc bundle whose model knows the truth of test
audio made for it, so live and offline timelines can be checked against
where the languages really change.

Each language owns a band of frequencies. Its "speech" is noise in that
band under a syllable-rate envelope (syllables of 0.1-0.3 s, gaps, pauses),
over a faint white noise floor. The bundle's `features.onnx` is the fbank
graph `slc export` writes, with the utterance normalisation off
(`FeatureConfig.normalize=False`, a setting a checkpoint may carry): per-bin
normalisation would erase the band levels the oracle reads. Only
`model.onnx` is made by hand: logit j is `SHARPNESS` times the mean log-mel
level of language j's band over the window, above that band's level in the
noise floor. The answer does not depend on loudness (a gain adds the same to
every logit), a window of one language is about 97 % sure, and a window
holding two is split by how much of it each fills, even at half and half.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

RATE = 16000
# language -> its band (Hz), each well inside the fbank's 20 Hz - 8 kHz
BANDS = {"de": (500.0, 1000.0), "fr": (1300.0, 2300.0), "it": (2800.0, 4200.0), "en": (5000.0, 7000.0)}
SHARPNESS = 0.5
NOISE_FLOOR = 3e-4  # rms of the white noise under everything (about -70 dBFS)
SPEECH_RMS = 0.1
MURMUR = 0.02  # envelope between syllables


def _mel(hz: float) -> float:
    return 1127.0 * np.log1p(hz / 700.0)


def mel_bins(low_hz: float, high_hz: float, n_bins: int = 80) -> np.ndarray:
    """Indices of the mel bins of `slc.data.features`' filter bank (Kaldi's
    mel scale, 20 Hz - 8 kHz) whose centres lie within [low_hz, high_hz]."""
    centres = np.linspace(_mel(20.0), _mel(8000.0), n_bins + 2)[1:-1]
    return np.flatnonzero((centres >= _mel(low_hz)) & (centres <= _mel(high_hz)))


def band_matrix(labels: Sequence[str], n_bins: int = 80) -> np.ndarray:
    """`float32[n_bins, labels]`: column j averages the bins of label j's band."""
    matrix = np.zeros((n_bins, len(labels)), dtype=np.float32)
    for j, code in enumerate(labels):
        bins = mel_bins(*BANDS[code], n_bins=n_bins)
        matrix[bins, j] = 1.0 / len(bins)
    return matrix


def model_graph(labels: Sequence[str], floor: np.ndarray, sharpness: float = SHARPNESS):
    """The oracle as an ONNX model with the exported model's interface:
    `features float32[batch, frames, 80]` (log-mel, not normalised; frames
    past a clip's length zero, as `features.onnx` leaves them),
    `frame_lengths int64[batch]` -> `probabilities float32[batch, labels]`.
    Logit j is `sharpness` times the mean log-mel level of label j's band
    over the clip's frames, less that band's level in the noise floor
    (`floor`, `float32[labels]`)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    constants = {
        "bands": band_matrix(labels),
        "frame_axis": np.array([1], dtype=np.int64),
        "one": np.array(1.0, dtype=np.float32),
        "floor": np.asarray(floor, dtype=np.float32),
        "sharpness": np.array(sharpness, dtype=np.float32),
    }
    nodes = [
        helper.make_node("MatMul", ["features", "bands"], ["band_levels"]),  # [B, T, L]
        helper.make_node("ReduceSum", ["band_levels", "frame_axis"], ["sums"], keepdims=0),  # [B, L]
        helper.make_node("Cast", ["frame_lengths"], ["frames_float"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["frames_float", "frame_axis"], ["frames_column"]),  # [B, 1]
        helper.make_node("Max", ["frames_column", "one"], ["frames_at_least_one"]),
        helper.make_node("Div", ["sums", "frames_at_least_one"], ["mean_levels"]),
        helper.make_node("Sub", ["mean_levels", "floor"], ["above_floor"]),
        helper.make_node("Mul", ["above_floor", "sharpness"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "oracle",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "frames", 80]),
            helper.make_tensor_value_info("frame_lengths", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(labels)])],
        initializer=[numpy_helper.from_array(value, name) for name, value in constants.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="slc-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_bundle(directory: Path, labels: Sequence[str] = tuple(BANDS)) -> Path:
    """A bundle at `directory` as `slc export` lays one out (features.onnx,
    model.onnx, labels.json, bundle.json with every file's sha256) whose
    model is the oracle for `labels`."""
    import onnx

    from slc.config import AudioConfig, FeatureConfig, WindowConfig
    from slc.config_io import to_dict
    from slc.data.features import export_onnx
    from slc.labels import LabelSet
    from slc.runtime import bundle as bundles

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    features = FeatureConfig(normalize=False)
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")  # the exporter's notes on dynamic axes
        export_onnx(directory / bundles.FEATURES_FILE, features)
    floor = _floor_levels(directory / bundles.FEATURES_FILE, labels)
    onnx.save(model_graph(labels, floor), directory / bundles.model_file(bundles.FP32))
    (directory / bundles.LABELS_FILE).write_text(LabelSet(tuple(labels)).to_json())
    manifest = {
        "slc_version": bundles.slc_version(),
        "labels": list(labels),
        "audio": to_dict(AudioConfig()),
        "features": to_dict(features),
        "window": to_dict(WindowConfig()),
        "model": {"oracle_bands_hz": {code: list(BANDS[code]) for code in labels}, "sharpness": SHARPNESS},
        "exported_from": "tests/oracle_bundle.py",
        "default_variant": bundles.FP32,
        "variants": {bundles.FP32: {"file": bundles.model_file(bundles.FP32)}},
    }
    bundles.write_manifest(directory, manifest)
    return directory


def _floor_levels(features_onnx: Path, labels: Sequence[str]) -> np.ndarray:
    """Each label's band level (mean log-mel) in 10 s of the noise floor alone."""
    from slc.runtime.bundle import session

    noise = np.random.default_rng(1).standard_normal((1, 10 * RATE)).astype(np.float32) * NOISE_FLOOR
    features, _ = session(features_onnx).run(None, {"waveforms": noise, "lengths": np.array([noise.shape[1]])})
    return (features[0] @ band_matrix(labels)).mean(axis=0)


# --- audio the oracle knows ------------------------------------------------


def _envelope(n: int, rng: np.random.Generator, rate: int) -> np.ndarray:
    """Syllables (0.1-0.3 s raised-cosine bumps) with 0.03-0.12 s gaps and
    now and then a 0.2-0.4 s pause, over a murmur 34 dB down (so trimming
    never cuts a part's edges)."""
    envelope = np.zeros(n, dtype=np.float64)
    at = 0
    while at < n:
        length = int(rng.uniform(0.1, 0.3) * rate)
        bump = np.sin(np.linspace(0, np.pi, length)) ** 2 * rng.uniform(0.6, 1.0)
        envelope[at : at + length] = bump[: n - at]
        at += length + int(rng.uniform(0.03, 0.12) * rate)
        if rng.random() < 0.1:
            at += int(rng.uniform(0.2, 0.4) * rate)
    return np.maximum(envelope, MURMUR)


def speech_like(language: str, seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """`seconds` of the oracle's `language`: band noise under a syllable
    envelope, `float32` at `rate`, rms about `SPEECH_RMS` while it sounds."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n, 1 / rate)
    low, high = BANDS[language]
    spectrum[(frequencies < low) | (frequencies > high)] = 0
    band = np.fft.irfft(spectrum, n)
    band *= SPEECH_RMS / band.std()
    return (band * _envelope(n, rng, rate)).astype(np.float32)


def recording(
    parts: Sequence[tuple[str | None, float]], seed: int = 0, rate: int = RATE
) -> tuple[np.ndarray, list[tuple[str | None, float, float]]]:
    """Languages one after another, e.g. `[("de", 20), ("fr", 20)]` (None:
    silence), over the noise floor -> (`float32` samples at `rate`, truth as
    (language, start_s, end_s))."""
    pieces, truth, at = [], [], 0.0
    for i, (language, seconds) in enumerate(parts):
        if language is None:
            pieces.append(np.zeros(round(seconds * rate), dtype=np.float32))
        else:
            pieces.append(speech_like(language, seconds, seed * 1000 + i, rate))
        truth.append((language, at, at + seconds))
        at += seconds
    samples = np.concatenate(pieces)
    samples += np.random.default_rng(seed + 7).standard_normal(len(samples)).astype(np.float32) * NOISE_FLOOR
    return samples, truth
