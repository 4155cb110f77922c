"""Batch labelling of audio archives on Ray: every file in, one row out.

    list (driver) -> read, decode, featurise, classify, write part files
    under OUT (Ray tasks; or on Ray Data with an actor pool classifying, see
    `slc.apps.label_run`), written as the run goes

Inputs are what `slc.batch.inputs` lists: directories, globs (local or on
URIs), archives and manifests. A file that cannot be labelled is a row with
its `error` (a reason code) and `detail`, never a failed job: labelled +
failed == listed, always. Recordings longer than the bundle's
`whole_clip_max_s` (and all of them with `segments`) are classified by
sliding windows, a batch of windows at a time; in the fused shape a long one
is streamed from its file, never decoded whole.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from slc import config_io
from slc import __version__, storage
from slc.apps.label_output import LabelError, read_labels, read_parts, record_settings, settled, writer
from slc.apps.label_pipeline import Labeller, label_batch, read_batch
from slc.apps.label_run import choose_shape, gpu_variant, run_fused, run_pool, slots, task_blocks
from slc.batch import accounting
from slc.batch.cluster import check_address, connect
from slc.batch.inputs import list_inputs
from slc.batch.progress import ProgressFn
from slc.batch.sink import PartWriter
from slc.config import LabelConfig
from slc.labels import normalize
from slc.runtime.classifier import Classifier

__all__ = ["LabelError", "Labeller", "format_summary", "label", "label_batch", "read_batch", "read_labels", "summarize"]

log = logging.getLogger(__name__)

def label(
    inputs: Sequence[str | Path],
    bundle: str | Path,
    out: str,
    config: LabelConfig = LabelConfig(),
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Label every audio file of `inputs` with `bundle` into `out` (a path or URI).

    With `resume`, files `out` already has an answer for are skipped, and those
    that failed for a transient reason (`unreadable`, `failed`) are tried again.
    Returns the summary also written to `out/summary.json`. Raises
    `StorageError` when `out` has contents and neither `resume` nor
    `overwrite`, `InputError` for an input that names nothing, and
    `LabelError` when resuming with other settings or inputs.
    `progress(files done, files to label, **{"audio h/s": })` follows the classifiers.
    """
    started = time.perf_counter()
    bundle = Path(bundle).expanduser().resolve()  # workers may run in another directory
    classifier = Classifier(bundle, config.variant, config.threads, open_set=config.open_set)  # a bad bundle or variant fails here, not in a worker
    check_address()
    fs, root = storage.open_output(out, resume, overwrite)
    listing = list_inputs(inputs, lang_column=config.truth_column)
    listed = {item["path"] for item in listing.items}
    connect()
    shape, why = choose_shape(config, classifier)
    variant = gpu_variant(config, shape)
    if variant is not None and variant != classifier.variant:
        log.info("on GPUs: variant %s (the bundle's default, %s, is chosen for CPUs; --variant picks another)",
                 variant, classifier.variant)  # fmt: skip
        config = dataclasses.replace(config, variant=variant)
        classifier = Classifier(bundle, variant, config.threads, open_set=config.open_set)
    record_settings(fs, root, out, {"bundle": classifier.info, "config": config_io.to_dict(config)}, resume)
    done = settled(fs, root, listed, out) if resume else set()
    todo = [item for item in listing.items if item["path"] not in done]
    log.info("labelling %d files (%d listed, %d labelled before); shape %s: %s", len(todo), len(listed), len(done), shape, why)
    if todo:
        run = run_fused if shape == "fused" else run_pool
        blocks = task_blocks(todo, listing.filesystems, config, slots(config, shape))
        parts = PartWriter(fs, root, writer(config.format), config.format, config.rows_per_file, "path")
        run(blocks, listing.filesystems, str(bundle), config, parts, _counting(progress, len(todo)))
    cores = ray.cluster_resources().get("CPU")
    this_run = {item["path"] for item in todo}
    outcome = read_parts(fs, root)
    summary = summarize(listed, outcome, this_run, time.perf_counter() - started, cores)
    if config.truth_column is not None:
        summary["truth"] = agreement(listing.languages, outcome, config.truth_column)
    summary.update(
        skipped_hidden=listing.skipped_hidden,
        inputs=[storage.redact(i) for i in inputs],
        out=storage.redact(out),
        bundle=classifier.info,
        shape=shape,
        format=config.format,
        slc_version=__version__,
    )
    storage.write_json(fs, storage.join(root, "summary.json"), summary)
    return summary


def _counting(progress: ProgressFn | None, total: int) -> Callable[[dict[str, Any]], None] | None:
    """Classifiers' `{"files": n, "audio_s": s}` events -> `progress(files
    done, total, **{"audio h/s": audio-hours labelled per second so far})`."""
    if progress is None:
        return None
    started = time.perf_counter()
    done = {"files": 0, "audio_s": 0.0}

    def on_event(event: dict[str, Any]) -> None:
        for name in done:
            done[name] += event[name]
        rate = done["audio_s"] / 3600 / max(time.perf_counter() - started, 1e-9)
        progress(done["files"], total, **{"audio h/s": rate})

    return on_event


def summarize(listed: set[str], outcome: pa.Table, this_run: set[str], wall_s: float, cores: float | None) -> dict[str, Any]:
    """Counts, hours, languages and errors over the whole output; speed over
    the files labelled in this run (None when it labelled none). Raises
    AccountingError if the output does not hold every `listed` path exactly once."""
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
        "audio_s_per_s_per_core": round(run_audio_s / wall_s / cores, 1) if cores and this_run else None,
    }


def agreement(truth: dict[str, str], outcome: pa.Table, column: str) -> dict[str, Any]:
    """How often the labels agree with the language the inputs' own `column`
    gives (`truth`: path -> language as written): over the labelled files
    that have one, in all and per true language (normalised)."""
    by_language: dict[str, dict[str, int]] = {}
    for row in outcome.select(["path", "language", "error"]).to_pylist():
        if row["error"] is not None or row["path"] not in truth:
            continue
        try:
            expected = normalize(truth[row["path"]])
        except ValueError:  # not a code: compared as written, so it never agrees
            expected = truth[row["path"]]
        counts = by_language.setdefault(expected, {"files": 0, "agreed": 0})
        counts["files"] += 1
        counts["agreed"] += int(row["language"] == expected)
    compared = sum(c["files"] for c in by_language.values())
    agreed = sum(c["agreed"] for c in by_language.values())
    return {
        "column": column,
        "compared": compared,
        "agreed": agreed,
        "rate": round(agreed / compared, 4) if compared else None,
        "languages": dict(sorted(by_language.items())),
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
    if "truth" in summary:
        truth = summary["truth"]
        rate = "-" if truth["rate"] is None else f"{truth['rate']:.1%}"
        per_language = ", ".join(f"{code} {c['agreed']}/{c['files']}" for code, c in truth["languages"].items())
        lines.append(
            f"agreement with {truth['column']}: {truth['agreed']} of {truth['compared']} ({rate})"
            + (f": {per_language}" if per_language else "")
        )
    lines.append(f"labels: {summary['out']}")
    return "\n".join(lines)
