"""Batch labelling of audio archives on Ray Data: every file in, one row out.

    list (driver) -> read, decode, featurise (CPU tasks) -> classify (an actor
    pool of Classifiers) -> part files under OUT, written as the run goes

Inputs are what `slc.batch.inputs` lists: directories, globs (local or on
URIs), archives and manifests. A file that cannot be labelled is a row with
its `error` (a reason code) and `detail`, never a failed job: labelled +
failed == listed, always. Recordings longer than the bundle's
`whole_clip_max_s` (and all of them with `segments`) are classified by
sliding windows, a batch of windows at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray

from slc import __version__, config as cfg, storage
from slc.apps.label_output import LabelError, open_output, output_schema, read_labels, read_parts, settled, writer
from slc.batch import accounting
from slc.batch.columns import arrays_of, flat_list_column
from slc.batch.decode import decode_items
from slc.batch.inputs import list_inputs
from slc.batch.raydata import without_resource_reservation
from slc.batch.sink import PartSink
from slc.config import LabelConfig
from slc.runtime.classifier import Classifier, Prediction

__all__ = ["LabelError", "Labeller", "format_summary", "label", "read_batch", "read_labels", "summarize"]

log = logging.getLogger(__name__)

# Between reading and classifying: features of a whole clip, or the waveform of one classified by windows.
_READ_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("error", pa.string()),
        ("detail", pa.string()),
        ("duration_s", pa.float64()),
        ("features", pa.large_list(pa.float32())),  # frames * num_mel_bins, row-major
        ("waveform", pa.large_list(pa.float32())),
    ]
)


def label(
    inputs: Sequence[str | Path],
    bundle: str | Path,
    out: str,
    config: LabelConfig = LabelConfig(),
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Label every audio file of `inputs` with `bundle` into `out` (a path or URI).

    With `resume`, files `out` already has an answer for are skipped, and those
    that failed for a transient reason (`unreadable`, `failed`) are tried again.
    Returns the summary also written to `out/summary.json`. Raises
    `StorageError` when `out` has contents and neither `resume` nor
    `overwrite`, `InputError` for an input that names nothing, and
    `LabelError` when resuming with other settings or inputs.
    """
    started = time.perf_counter()
    bundle = Path(bundle).expanduser().resolve()  # workers may run in another directory
    classifier = Classifier(bundle, config.variant, config.threads)  # a bad bundle or variant fails here, not in a worker
    settings = {"bundle": classifier.info, "config": cfg.to_dict(config)}
    fs, root = open_output(out, settings, resume, overwrite)
    listing = list_inputs(inputs)
    listed = {item["path"] for item in listing.items}
    done = settled(fs, root, listed, out) if resume else set()
    todo = [item for item in listing.items if item["path"] not in done]
    log.info("labelling %d files (%d listed, %d labelled before)", len(todo), len(listed), len(done))
    if todo:
        sink = PartSink(fs, root, writer(config.format), config.format, config.rows_per_file, "path")
        with without_resource_reservation():
            _pipeline(todo, listing.filesystems, str(bundle), config).write_datasink(sink)
    cores = ray.cluster_resources().get("CPU") if ray.is_initialized() else None
    this_run = {item["path"] for item in todo}
    summary = summarize(listed, read_parts(fs, root), this_run, time.perf_counter() - started, cores)
    summary.update(
        skipped_hidden=listing.skipped_hidden,
        inputs=[storage.redact(i) for i in inputs],
        out=storage.redact(out),
        bundle=classifier.info,
        format=config.format,
        slc_version=__version__,
    )
    storage.write_json(fs, storage.join(root, "summary.json"), summary)
    return summary


def _pipeline(items: list[dict[str, Any]], filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig):
    blocks = max(1, math.ceil(len(items) / config.files_per_task))
    return (
        ray.data.from_items(items, override_num_blocks=blocks)
        .map_batches(
            read_batch,
            fn_kwargs={"filesystems": filesystems, "bundle": bundle, "config": config},
            batch_format="pyarrow",
            batch_size=config.files_per_task,
            num_cpus=config.cpus_per_task,
        )
        .map_batches(
            Labeller,
            fn_constructor_kwargs={"bundle": bundle, "config": config},
            compute=ray.data.ActorPoolStrategy(size=config.concurrency),
            batch_format="pyarrow",
            num_cpus=config.cpus_per_actor,
        )
    )


@functools.lru_cache(maxsize=2)
def _classifier(bundle: str, variant: str | None) -> Classifier:
    """One per worker process, kept across read tasks; one thread, as tasks are many."""
    return Classifier(bundle, variant, threads=1)


def read_batch(
    batch: pa.Table, filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig
) -> pa.Table:
    """Items (from `list_inputs`) -> rows of _READ_SCHEMA: the features of a
    whole clip, the waveform of one to classify by windows, or the error."""
    classifier = _classifier(bundle, config.variant)
    audio_config = classifier.audio_config
    if config.max_duration_s is not None:
        audio_config = dataclasses.replace(audio_config, max_duration_s=config.max_duration_s)
    decoded = decode_items(batch.to_pylist(), filesystems, audio_config)
    rate = audio_config.sample_rate
    longest = classifier.window.whole_clip_max_s * classifier.feature_config.sample_rate
    whole = [i for i, d in enumerate(decoded) if d.ok and not (config.segments or len(d.clip) > longest)]
    features: list[np.ndarray | None] = [None] * len(decoded)
    for i, clip_features in zip(whole, classifier.featurize([decoded[i].clip for i in whole])):
        features[i] = clip_features
    waveforms = [d.clip if d.ok and features[i] is None else None for i, d in enumerate(decoded)]
    columns = {
        "path": [d.path for d in decoded],
        "error": [d.reason for d in decoded],
        "detail": [d.detail for d in decoded],
        "duration_s": [len(d.clip) / rate if d.ok else None for d in decoded],
        "features": flat_list_column(features, np.float32),
        "waveform": flat_list_column(waveforms, np.float32),
    }
    return pa.table(columns, schema=_READ_SCHEMA)


class Labeller:
    """Ray Data actor: rows of _READ_SCHEMA -> rows of `output_schema`. A
    batch that fails is tried again clip by clip, so only the clip at fault
    gets `error=failed`; each failure is logged with its traceback."""

    def __init__(self, bundle: str, config: LabelConfig) -> None:
        self.classifier = Classifier(bundle, config.variant, config.threads)
        self.config = config
        self.allow = list(config.allow) or None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["path", "error", "detail", "duration_s"]).to_pylist()
        features = arrays_of(batch["features"], self.classifier.feature_config.num_mel_bins)
        waveforms = arrays_of(batch["waveform"], 1)
        predictions: dict[int, Prediction] = {}
        whole = [i for i, f in enumerate(features) if f is not None]
        try:
            predictions.update(zip(whole, self._classify_whole([features[i] for i in whole], [rows[i] for i in whole])))
        except Exception:
            log.exception("classifying a batch of %d clips failed; trying them one by one", len(whole))
            for i in whole:
                self._one(rows[i], predictions, i, lambda i=i: self._classify_whole([features[i]], [rows[i]])[0])
        for i in (i for i, w in enumerate(waveforms) if w is not None):
            self._one(rows[i], predictions, i, lambda i=i: self._classify_windows(waveforms[i][:, 0]))
        table = [_output_row(row, predictions.get(i), self.config) for i, row in enumerate(rows)]
        return pa.Table.from_pylist(table, schema=output_schema(self.config.segments))

    def _classify_whole(self, features: list[np.ndarray], rows: list[dict[str, Any]]) -> list[Prediction]:
        durations = [row["duration_s"] for row in rows]
        return self.classifier.classify_features(features, durations, self.allow, self.config.min_confidence)

    def _classify_windows(self, waveform: np.ndarray) -> Prediction:
        return self.classifier.classify(waveform, self.allow, self.config.min_confidence, segments=self.config.segments)

    @staticmethod
    def _one(row: dict[str, Any], predictions: dict[int, Prediction], i: int, classify) -> None:
        """`predictions[i] = classify()`, or the failure as the row's error."""
        try:
            predictions[i] = classify()
        except Exception as error:
            log.exception("classifying %s failed", row["path"])
            row.update(error="failed", detail=f"{row['path']}: {type(error).__name__}: {error}")


def _output_row(row: dict[str, Any], prediction: Prediction | None, config: LabelConfig) -> dict[str, Any]:
    out: dict[str, Any] = {**row, "language": None, "confidence": None, "probabilities": None, "duration_s": None}
    if prediction is not None and row["error"] is None:
        out.update(
            language=prediction.language,
            confidence=prediction.confidence,
            probabilities=prediction.top(config.top_k),
            duration_s=prediction.duration_s,
        )
    if config.segments:
        segments = prediction.segments if prediction is not None and row["error"] is None else None
        out["segments"] = None if segments is None else [dataclasses.asdict(s) for s in segments]
    return out


def summarize(listed: set[str], outcome: pa.Table, this_run: set[str], wall_s: float, cores: float | None) -> dict[str, Any]:
    """Counts, hours, languages and errors over the whole output; speed over
    the files labelled in this run. Raises AccountingError if the output does
    not hold every `listed` path exactly once."""
    rows = outcome.select(["path", "language", "duration_s", "error"]).to_pylist()
    accounting.reconcile(listed, (r["path"] for r in rows), "labelling")
    labelled = [r for r in rows if r["error"] is None]
    run_audio_s = sum(r["duration_s"] for r in labelled if r["path"] in this_run)
    return {
        "listed": len(listed),
        "labelled": len(labelled),
        "failed": len(rows) - len(labelled),
        **accounting.split_by_permanence(r["error"] for r in rows),
        "labelled_before": len(listed) - len(this_run),
        "audio_hours": round(sum(r["duration_s"] for r in labelled) / 3600, 4),
        "languages": dict(Counter(r["language"] for r in labelled).most_common()),
        "errors_by_reason": accounting.by_reason(r["error"] for r in rows),
        "wall_s": round(wall_s, 2),
        "cores": cores,
        "audio_s_per_s_per_core": round(run_audio_s / wall_s / cores, 1) if cores else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a table of files per language and a few lines of totals."""
    counts = [("language", "files"), *((code, str(n)) for code, n in summary["languages"].items())]
    width = max(len(code) for code, _ in counts)
    lines = [f"{code.ljust(width)}  {n}" for code, n in counts]
    lines.insert(1, f"{'-' * width}  -----")
    lines.append(
        f"listed {summary['listed']} = labelled {summary['labelled']} + failed {summary['failed']}"
        f" ({summary['failed_transient']} worth a --resume, {summary['failed_permanent']} not)"
        f"  ({summary['audio_hours']:.3f} h of audio; {summary['labelled_before']} labelled before this run)"
    )
    if summary["skipped_hidden"]:
        lines.append(f"skipped {summary['skipped_hidden']} hidden files")
    if summary["audio_s_per_s_per_core"] is not None:
        lines.append(
            f"{summary['wall_s']:.1f} s on {summary['cores']:g} cores: "
            f"{summary['audio_s_per_s_per_core']:.1f} audio-seconds per second per core"
        )
    if summary["errors_by_reason"]:
        lines.append("failed by reason: " + json.dumps(summary["errors_by_reason"]))
    lines.append(f"labels: {summary['out']}")
    return "\n".join(lines)
