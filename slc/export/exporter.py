"""Checkpoint -> bundle: the trained classifier exported to ONNX, checked
against PyTorch, optimised and quantized into variants, each scored on the
validation and test splits and timed; the default variant chosen on the
validation scores (slc.export.selection; the test scores are reported, never
used to choose);
every file hashed.

The exported graph is the trained `LanguageClassifier` itself (encoder and
pooling head) followed by a softmax, traced by torch.onnx's dynamo exporter.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pyarrow.fs as pafs
import torch
from torch import nn

from slc import config_io
from slc.runtime import bundle as bundles
from slc.runtime import openset
from slc.training import checkpoint as ckpt
from slc import config as cfg
from slc.data import features as fbank
from slc import storage
from slc.export import quantize
from slc.export.selection import choose_default, report
from slc.config import AudioConfig, ExportConfig, IngestConfig
from slc.training.batches import COLUMNS, collate
from slc.labels import LabelSet
from slc.training.model import LanguageClassifier, count_parameters
from slc.data.shards import NUM_MEL_BINS, read_split

log = logging.getLogger(__name__)

OPTIMISED = {  # variant -> ORT graph optimisation level, applied offline
    "fp32-basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "fp32-extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "fp32-all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Frames of 1 s, 4 s and 30 s clips; parity is checked on padded batches of them.
PARITY_FRAMES = (98, 398, 2998)
PARITY_BATCHES = ((398,), (98, 398, 2998), (98, 398, 2998, 98, 2998, 398, 98, 2998))
FRAMES_4S = 398
TORCH = "PyTorch eager"  # timed against fp32 with the variants, for their speed-up over it
# The default variant is chosen on val; test is only reported, so its figures stay unbiased.
SCORED_SPLITS = ("val", "test")


class ExportError(RuntimeError):
    """An export whose ONNX graph is invalid or disagrees with PyTorch."""


class _Probabilities(nn.Module):
    def __init__(self, model: LanguageClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(features, frame_lengths), dim=-1)


def export_model(model: LanguageClassifier, path: Path) -> Path:
    """`model` (eval mode) + softmax -> ONNX at `path`, dynamic batch and frames,
    weights inside the file; `onnx.checker` must pass."""
    config = model.config
    # Speech2Text's sinusoidal positions cover max_source_positions subsampled
    # frames; the TDNN has no limit, and is given the same.
    max_frames = config.max_source_positions * 2 ** len(config.conv_kernel_sizes)
    # Batch of two clips of different lengths: a batch of one would make the
    # batch axis static, equal lengths would hide the masking.
    features = torch.randn(2, 300, NUM_MEL_BINS)
    frame_lengths = torch.tensor([300, 217])
    batch = torch.export.Dim("batch", min=1)
    frames = torch.export.Dim("frames", min=8, max=max_frames)
    with torch.inference_mode(False), contextlib.redirect_stdout(None):
        torch.onnx.export(
            _Probabilities(model).eval(),
            (features, frame_lengths),
            path,
            input_names=["features", "frame_lengths"],
            output_names=["probabilities"],
            dynamic_shapes=({0: batch, 1: frames}, {0: batch}),
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"{path}: onnx.checker refused the exported graph: {error}") from None
    return path


def check_parity(model: LanguageClassifier, path: Path, tolerance: float, seed: int = 0) -> dict[str, Any]:
    """Largest |p_onnx - p_torch| over padded batches of mixed lengths; raises
    ExportError above `tolerance`."""
    rng = np.random.default_rng(seed)
    session = bundles.session(path, threads=2)
    worst: dict[str, float] = {}
    for lengths in PARITY_BATCHES:
        features = np.zeros((len(lengths), max(lengths), 80), dtype=np.float32)
        for row, n in zip(features, lengths):
            row[:n] = rng.standard_normal((n, 80))
        frame_lengths = np.array(lengths, dtype=np.int64)
        with torch.inference_mode():
            expected = torch.softmax(model(torch.from_numpy(features), torch.from_numpy(frame_lengths)), -1).numpy()
        (got,) = session.run(None, {"features": features, "frame_lengths": frame_lengths})
        worst[f"batch {len(lengths)}: frames {sorted(set(lengths))}"] = float(np.abs(got - expected).max())
    largest = max(worst.values())
    if not largest <= tolerance:
        raise ExportError(
            f"{path}: ONNX and PyTorch probabilities differ by {largest:.2e} (> {tolerance:.0e}): {worst}"
        )
    return {"max_abs_diff": largest, "tolerance": tolerance, "cases": worst}


def optimise(fp32: Path, directory: Path) -> dict[str, Path]:
    """ORT graph optimisations applied offline, one file per level."""
    made = {}
    for name, level in OPTIMISED.items():
        out = directory / bundles.model_file(name)
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.log_severity_level = 3  # "all" warns that its graph fits this CPU only: recorded in the README
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"])
        made[name] = out
    return made


def export_bundle(
    checkpoint: str | Path,
    bundle: str | Path,
    shards: str | None = None,
    overwrite: bool = False,
    config: ExportConfig = ExportConfig(),
    progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Write the bundle for `checkpoint` to `bundle` (a local directory) and
    return its manifest. `shards` (default: the shards the checkpoint was
    trained on) provides validation clips for calibration and for choosing
    the default variant, and test clips for the reported scores.
    `progress(variants scored, variants made, variant=name)` follows the scoring."""
    bundle = Path(bundle)
    if bundle.exists() and any(bundle.iterdir()) and not overwrite:
        raise FileExistsError(f"{bundle}: output is not empty; pass --overwrite to replace it")
    with tempfile.TemporaryDirectory(prefix="slc-export-") as scratch:
        local = _local_checkpoint(checkpoint, Path(scratch) / "checkpoint")
        model, labels, train_config, feature_config = ckpt.load(local)
        model.eval()
        shards = shards or ckpt.trained_on(local)
        if not shards:
            raise ValueError(f"{checkpoint}: no shards recorded in the checkpoint; pass --shards")
        # Assemble next to the target, then move into place: an export that
        # fails leaves no half-written bundle behind.
        bundle.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.", dir=bundle.parent))
        try:
            with _quiet_tools():
                manifest = _build(
                    model, labels, train_config, feature_config, shards, staging, config, str(checkpoint), progress
                )
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if bundle.exists():
        shutil.rmtree(bundle)
    staging.rename(bundle)
    log.info("bundle written: %s (default variant %s)", bundle, manifest["default_variant"])
    return manifest


@contextlib.contextmanager
def _quiet_tools():
    """Silence what the exporter and quantizer say about things that do not
    matter here (torchvision ops, deprecations, per-channel axes of 1-D
    weights); errors still show, and slc's own progress lines are unaffected."""
    loggers = [logging.getLogger(name) for name in ("", "torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _local_checkpoint(checkpoint: str | Path, scratch: Path) -> Path:
    """A checkpoint on a filesystem URI (s3://...) is copied to `scratch` first."""
    if "://" not in str(checkpoint):
        return Path(checkpoint)
    fs, path = storage.resolve(checkpoint)
    pafs.copy_files(path, str(scratch), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return scratch


def _build(
    model: LanguageClassifier,
    labels: LabelSet,
    train_config: cfg.TrainConfig,
    feature_config: cfg.FeatureConfig,
    shards: str,
    out: Path,
    config: ExportConfig,
    source: str,
    progress: Callable[..., None] | None = None,
) -> dict[str, Any]:
    started = time.monotonic()
    log.info("exporting model.onnx (%d parameters)", count_parameters(model))
    fp32 = export_model(model, out / bundles.model_file(bundles.FP32))
    parity = check_parity(model, fp32, config.parity_tolerance)
    log.info("parity with PyTorch: max |dp| %.1e on batches of 1, 3 and 8 clips of 1-30 s", parity["max_abs_diff"])
    fbank.export_onnx(out / bundles.FEATURES_FILE, feature_config)
    (out / bundles.LABELS_FILE).write_text(labels.to_json())

    splits = {split: _labelled_batches(shards, split, labels, train_config.eval_max_frames) for split in SCORED_SPLITS}
    clips = {split: sum(len(targets) for _, _, targets in batches) for split, batches in splits.items()}
    calibration = [(f, n) for f, n, _ in _labelled_batches(shards, "val", labels, 1000, batch_size=1)]
    calibration = calibration[: config.calibration_clips]
    if not all(clips.values()) or not calibration:
        raise ValueError(f"{shards}: needs clips in its val and test splits to calibrate and score variants")
    clip_4s = _clip_4s(splits["test"])

    files: dict[str, Path | Exception] = {bundles.FP32: fp32}
    log.info("optimising graphs: %s", ", ".join(OPTIMISED))
    files.update(optimise(fp32, out))
    files.update(quantize.quantize_all(fp32, out, calibration))

    torch_ms = _torch_latency(model, clip_4s, config.latency_repeats)
    log.info("scoring %d variants on %d val and %d test clips", len(files), clips["val"], clips["test"])
    variants = _scored(files, splits, labels, clip_4s, config, progress)
    _time_against_fp32(variants, out, clip_4s, config, model)
    default = choose_default(variants, config)
    open_set = _fit_open_set(out / variants[default]["file"], splits["val"], labels, config.target_miss)
    log.info("open set: temperature %.3f, threshold %.4f (%.0f%% of in-set val clips rejected)",
             open_set.temperature, open_set.threshold, 100 * open_set.target_miss)
    manifest = {
        "slc_version": bundles.slc_version(),
        "labels": list(labels.codes),
        "audio": config_io.to_dict(_audio_config(shards)),
        "features": config_io.to_dict(feature_config),
        "window": config_io.to_dict(config.window),
        "model": {"parameters": count_parameters(model), **config_io.to_dict(train_config.model)},
        "exported_from": storage.redact(source),
        "scored_on": {"shards": storage.redact(shards), "clips": clips},
        "calibrated_on": {"split": "val", "clips": len(calibration)},
        "parity": parity,
        "torch_p50_ms": round(torch_ms, 3),
        "latency": "p50 of one forward pass over one 4 s clip (398 frames), one thread",
        "default_variant": default,
        "open_set": {**open_set.to_dict(), "fitted_on": {"split": "val", "clips": clips["val"]}},
        "default_rule": {
            "split": "val", "margin": config.default_f1_margin, "max_loss": config.max_f1_loss,
            "min_speedup": config.min_speedup, "timing_rounds": config.timing_rounds,
        },
        "variants": variants,
        "export_s": round(time.monotonic() - started, 1),
    }
    (out / "report.md").write_text(report(manifest))
    return bundles.write_manifest(out, manifest)


def _scored(
    files: dict[str, Path | Exception], splits: dict[str, list], labels: LabelSet, clip_4s: quantize.Batch,
    config: ExportConfig, progress: Callable[..., None] | None,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Each variant's figures on the scored splits (`quantize.measure`), or the
    error that kept it from being made."""
    variants: dict[str, dict[str, Any]] = {}
    for done, (name, made) in enumerate(files.items(), start=1):
        if isinstance(made, Exception):
            variants[name] = {"error": f"{type(made).__name__}: {made}"}
        else:
            log.info("scoring %s", name)
            variants[name] = quantize.measure(made, splits, labels, clip_4s, config.latency_repeats)
        if progress is not None:
            progress(done, len(files), variant=name)
    return variants


def _fit_open_set(
    path: Path, batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]], labels: LabelSet, miss: float
) -> openset.OpenSet:
    """Temperature and threshold (slc.runtime.openset) of the variant at
    `path`, the one that answers, from the validation clips."""
    probabilities = quantize.probabilities(bundles.session(path, threads=1), batches)
    targets = np.concatenate([t for _, _, t in batches])
    return openset.fit(probabilities, targets, labels.codes, miss)


def _labelled_batches(
    shards: str, split: str, labels: LabelSet, max_frames: int, batch_size: int = 16
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(features, frame lengths, label ids) as numpy, clips sorted by length so
    batches carry little padding."""
    table = read_split(shards, split, columns=COLUMNS)
    if table.num_rows == 0:
        return []
    table = table.take(np.argsort(table.column("n_frames").to_numpy(), kind="stable"))
    unknown = sorted(set(table.column("lang").to_pylist()) - set(labels.codes))
    if unknown:
        raise ValueError(f"{shards}/{split} holds languages the checkpoint does not know: {unknown}")
    rng = np.random.default_rng(0)
    out = []
    for start in range(0, table.num_rows, batch_size):
        features, lengths, targets = collate(table.slice(start, batch_size), labels, max_frames, False, rng, None)
        out.append((features.numpy(), lengths.numpy(), targets.numpy()))
    return out


def _clip_4s(batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> quantize.Batch:
    """One test clip of 4 s (the first at least that long, cut; else the longest, tiled)."""
    features, lengths = next(((f[i], n[i]) for f, n, _ in batches for i in range(len(n)) if n[i] >= FRAMES_4S), (None, 0))
    if features is None:
        f, n, _ = batches[-1]
        features = np.resize(f[-1][: n[-1]], (FRAMES_4S, f.shape[-1]))
    return features[None, :FRAMES_4S].astype(np.float32), np.array([FRAMES_4S], dtype=np.int64)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """PyTorch on one thread, as the onnxruntime sessions it is timed against."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _torch_latency(model: LanguageClassifier, clip: quantize.Batch, repeats: int) -> float:
    with _one_torch_thread():
        return quantize.p50_ms(_torch_forward(model, clip), repeats)


def _torch_forward(model: LanguageClassifier, clip: quantize.Batch) -> Callable[[], object]:
    """One PyTorch eager forward pass of `model` over `clip`."""
    features, lengths = torch.from_numpy(clip[0]), torch.from_numpy(clip[1])

    def forward() -> torch.Tensor:
        with torch.inference_mode():
            return torch.softmax(model(features, lengths), -1)

    return forward


def _time_against_fp32(
    variants: dict[str, dict[str, Any]], directory: Path, clip: quantize.Batch, config: ExportConfig,
    model: LanguageClassifier,
) -> None:  # fmt: skip
    """Add `speedup_vs_fp32` and `speedup_vs_torch` to each variant made:
    paired timings on `clip`, one thread, the median of
    `config.timing_rounds` rounds; PyTorch eager is timed against fp32 too."""
    inputs = {"features": clip[0], "frame_lengths": clip[1]}
    runs = {name: _forward(directory / v["file"], inputs) for name, v in variants.items() if "file" in v}
    runs[TORCH] = _torch_forward(model, clip)
    repeats = max(3, config.latency_repeats // config.timing_rounds)
    log.info("timing %d variants and PyTorch against fp32: %d rounds", len(runs) - 2, config.timing_rounds)
    with _one_torch_thread():
        speedups = quantize.paired_speedups(runs, config.timing_rounds, repeats)
    torch_speedup = speedups.pop(TORCH)
    for name, speedup in speedups.items():
        variants[name]["speedup_vs_fp32"] = speedup
        variants[name]["speedup_vs_torch"] = round(speedup / torch_speedup, 2)


def _forward(path: Path, inputs: dict[str, np.ndarray]) -> Callable[[], object]:
    """One forward pass of the graph at `path` over `inputs`, on one thread."""
    model = bundles.session(path, threads=1)
    return lambda: model.run(None, inputs)


def _audio_config(shards: str) -> AudioConfig:
    """The audio settings the shards were made with: serving must trim and
    resample as ingest did."""
    fs, root = storage.resolve(shards)
    try:
        settings = json.loads(storage.read_text(fs, storage.join(root, "config.json")))
    except (FileNotFoundError, OSError):
        return AudioConfig()
    return config_io.from_dict(IngestConfig, settings).audio
