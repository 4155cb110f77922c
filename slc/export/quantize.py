"""Smaller and faster variants of `model.onnx`, and how each one scores.

Variants (onnxruntime.quantization and onnxruntime's fp16 converter):

    int8-dynamic   MatMul weights int8 per channel, activations quantized at run time
    int8-static    QDQ on MatMul and Conv: weights int8 per channel, activations
                   uint8 calibrated on validation clips
    int8-matmul    the same on MatMul only
    fp16           float16 weights and arithmetic, float32 inputs and outputs

The int8 choices are what runs fast on x86 (`bench/inference.py`, README):
uint8 activations times int8 weights is the product onnxruntime's x86
kernels are built for (int8 activations ran 1.5-2x slower); dynamic
quantization leaves Conv in float, where ConvInteger is slower than float;
static quantization of the other op types quantized the attention mask too,
so a clip's answer depended on what it was batched with (`batch_drift`).
On an x86 CPU without VNNI, uint8 x int8 sums can saturate: the F1 columns
are measured on the exporting machine, so export where the model will run.

Each variant, and the fp32 graph it came from, is scored on the validation
and test clips (macro F1, IoU) and timed on one 4 s clip on one thread, alone
(p50) and against fp32 in alternation (the speed-up the default is chosen on).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from slc.runtime import bundle as bundles
from slc.labels import LabelSet
from slc.training.metrics import classification_metrics

log = logging.getLogger(__name__)

Batch = tuple[np.ndarray, np.ndarray]  # features float32[B, T, 80], frame_lengths int64[B]

QUANTIZED = ("int8-dynamic", "int8-static", "int8-matmul", "fp16")


class _Batches(CalibrationDataReader):
    def __init__(self, batches: list[Batch]) -> None:
        self._inputs = iter([{"features": f, "frame_lengths": n} for f, n in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._inputs, None)


def quantize_all(fp32: Path, directory: Path, calibration: list[Batch]) -> dict[str, Path | Exception]:
    """Write every variant of QUANTIZED next to `fp32` in `directory`: the
    variant's path, or the exception that stopped it (the others go on)."""
    made: dict[str, Path | Exception] = {}
    with tempfile.TemporaryDirectory() as scratch:
        # Shape inference and graph clean-up before quantizing, as
        # onnxruntime's quantization guide asks.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        builders: dict[str, Callable[[Path], None]] = {
            "int8-dynamic": lambda out: quantize_dynamic(
                str(prepared), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True
            ),
            "int8-static": lambda out: _static(prepared, out, calibration, op_types=["MatMul", "Conv"]),
            "int8-matmul": lambda out: _static(prepared, out, calibration, op_types=["MatMul"]),
            "fp16": lambda out: _fp16(fp32, out),
        }
        for name, build in builders.items():
            out = directory / bundles.model_file(name)
            log.info("quantizing: %s", name)
            try:
                build(out)
                onnx.checker.check_model(str(out))
                made[name] = out
            except Exception as error:  # one variant failing must not cost the others
                log.warning("variant %s failed: %s", name, error)
                out.unlink(missing_ok=True)
                made[name] = error
    return made


def _static(prepared: Path, out: Path, calibration: list[Batch], op_types: list[str]) -> None:
    quantize_static(
        str(prepared),
        str(out),
        _Batches(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=op_types,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def _fp16(fp32: Path, out: Path) -> None:
    converted = OnnxModel(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True))
    # The converter appends the input casts after the nodes that read them.
    converted.topological_sort()
    onnx.save(converted.model, str(out))


def score(
    model: ort.InferenceSession, batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]], labels: LabelSet
) -> dict[str, Any]:
    """Metrics of `model` on (features, frame_lengths, label ids) batches."""
    predicted = probabilities(model, batches).argmax(axis=1)
    truth = np.concatenate([targets for _, _, targets in batches])
    return classification_metrics(truth.tolist(), predicted.tolist(), labels)


def probabilities(model: ort.InferenceSession, batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """`float32[clips, labels]` of `model` on (features, frame_lengths, label ids) batches, in order."""
    return np.concatenate([
        model.run(None, {"features": features, "frame_lengths": lengths})[0] for features, lengths, _ in batches
    ])  # fmt: skip


def measure(
    path: Path,
    splits: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]],
    labels: LabelSet,
    clip_4s: Batch,
    repeats: int,
) -> dict[str, Any]:
    """One variant's row of the manifest: macro F1, IoU and accuracy on each of
    `splits` (name -> labelled batches) as `{split}_macro_f1` etc., its
    `batch_drift` on val clips, size, and the p50 latency of `clip_4s` on
    one thread."""
    session = bundles.session(path, threads=1)  # one thread: the latency column's terms
    row: dict[str, Any] = {"file": path.name}
    for split, batches in splits.items():
        metrics = score(session, batches, labels)
        row.update({f"{split}_macro_f1": metrics["macro"]["f1"], f"{split}_iou": metrics["macro"]["iou"],
                    f"{split}_accuracy": metrics["accuracy"]})  # fmt: skip
    row["batch_drift"] = batch_drift(session, splits["val"])
    row["size_mb"] = round(size_mb(path), 3)
    row["p50_ms"] = round(latency_ms(session, clip_4s, repeats), 3)
    return row


def batch_drift(model: ort.InferenceSession, batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    """Largest |p| difference between clips classified alone and together,
    padded to the longest: the shortest, the longest and two between of the
    (length-sorted) `batches`. Masking makes it ~1e-7 in float; activations
    quantized with one scale for a whole batch, or a quantized attention
    mask, make a clip's answer depend on what it is batched with."""
    clips = [(f[i, :n], n) for f, lengths, _ in batches for i, n in enumerate(lengths)]
    chosen = [clips[i] for i in sorted({0, len(clips) // 3, 2 * len(clips) // 3, len(clips) - 1})]
    alone = [model.run(None, {"features": f[None], "frame_lengths": np.array([n])})[0][0] for f, n in chosen]
    features = np.zeros((len(chosen), max(n for _, n in chosen), chosen[0][0].shape[-1]), dtype=np.float32)
    for row, (f, n) in zip(features, chosen):
        row[:n] = f
    (together,) = model.run(None, {"features": features, "frame_lengths": np.array([n for _, n in chosen])})
    return float(np.abs(together - np.stack(alone)).max())


def p50_ms(run: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall time of `run` in ms, after `warmup` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


def paired_speedups(
    runs: dict[str, Callable[[], object]],
    rounds: int,
    repeats: int,
    timer: Callable[[Callable[[], object], int], float] = lambda run, repeats: p50_ms(run, repeats, warmup=1),
) -> dict[str, float]:
    """How many times faster than fp32 each of `runs` (variant name -> one
    forward pass; `bundle.FP32` among them) is: the median over `rounds` of
    fp32's time over the variant's, each `timer(run, repeats)` in ms. Each
    round times fp32 and the variant back to back, in alternating order, so
    load from elsewhere on the machine slows both alike and a single noisy
    round cannot decide. fp32 itself -> 1.0."""
    reference = runs[bundles.FP32]
    ratios: dict[str, list[float]] = {name: [] for name in runs if name != bundles.FP32}
    for round_ in range(rounds):
        for name, ratio in ratios.items():
            if round_ % 2:
                variant_ms, fp32_ms = timer(runs[name], repeats), timer(reference, repeats)
            else:
                fp32_ms, variant_ms = timer(reference, repeats), timer(runs[name], repeats)
            ratio.append(fp32_ms / variant_ms)
    return {bundles.FP32: 1.0, **{name: round(statistics.median(r), 3) for name, r in ratios.items()}}


def latency_ms(model: ort.InferenceSession, clip: Batch, repeats: int) -> float:
    """p50 of one forward pass of `model` over `clip`."""
    inputs = {"features": clip[0], "frame_lengths": clip[1]}
    return p50_ms(lambda: model.run(None, inputs), repeats)


def size_mb(path: Path) -> float:
    return path.stat().st_size / 1e6
