"""Corpus -> features -> Parquet shards, on Ray Data.

discover (driver) -> decode + fbank (parallel tasks) -> shards per split,
plus a rejects table and a summary. A file that cannot become a clip is a row
in `rejects.parquet` with its reason, never a failed job: accepted + rejected
always equals discovered.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from slc import __version__, config as cfg, storage
from slc.audio import AudioError, load
from slc.config import FeatureConfig, IngestConfig
from slc.corpus import SPLITS, Corpus, discover
from slc.features import Fbank, extract
from slc.labels import LabelSet
from slc.shards import CLIP_OUTCOME_SCHEMA, REJECT_SCHEMA, ShardSink, features_column

log = logging.getLogger(__name__)


def ingest(corpus: str | Path, out: str, config: IngestConfig = IngestConfig(), overwrite: bool = False) -> dict[str, Any]:
    """Featurize every clip of `corpus` into shards under `out` (a path or URI).

    Returns the summary also written to `out/summary.json`. Raises
    `StorageError` when `out` has contents and not `overwrite`.
    """
    started = time.perf_counter()
    fs, root = storage.prepare_output(out, overwrite)
    labels = LabelSet.parse(config.labels) if config.labels else None
    found = discover(corpus, labels, config.split)
    log.info("discovered %d clips in %s (%s)", len(found.clips), corpus, ", ".join(found.labels.codes))

    sink = ShardSink(fs, root, config.rows_per_file)
    with _parallel_map():
        _featurize(found, config).write_datasink(sink)
    outcome = sink.outcomes
    rejects = outcome.filter(pc.is_valid(outcome["reason"])).select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA)
    with fs.open_output_stream(storage.join(root, "rejects.parquet")) as stream:
        pq.write_table(rejects.sort_by("id"), stream)

    summary = summarize(found, outcome, time.perf_counter() - started)
    summary.update(corpus=str(corpus), out=storage.redact(out), slc_version=__version__)
    storage.write_json(fs, storage.join(root, "summary.json"), summary)
    storage.write_text(fs, storage.join(root, "labels.json"), found.labels.to_json())
    storage.write_text(fs, storage.join(root, "config.json"), cfg.dumps(config))
    return summary


def _featurize(found: Corpus, config: IngestConfig) -> ray.data.Dataset:
    items = [
        {"id": c.id, "path": c.path, "lang": c.lang, "split": c.split, "group": c.group} for c in found.clips
    ]
    blocks = max(1, math.ceil(len(items) / config.clips_per_task))
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        functools.partial(featurize_batch, config=config),
        batch_format="pyarrow",
        batch_size=config.clips_per_task,
    )


def featurize_batch(batch: pa.Table, config: IngestConfig) -> pa.Table:
    """Clips (`id, path, lang, split, group`) -> rows of `CLIP_OUTCOME_SCHEMA`, one per
    clip: features for those that load, reason and detail for those that don't."""
    fbank = _fbank(config.features)
    columns: dict[str, list] = defaultdict(list)
    for clip in batch.to_pylist():
        for name in ("id", "path", "lang", "split", "group"):
            columns[name].append(clip[name])
        features = duration = reason = detail = None
        try:
            audio = load(clip["path"], config.audio)
            features = extract(audio, fbank)
            duration = len(audio) / config.audio.sample_rate
        except AudioError as error:
            reason, detail = error.reason, str(error)
        except Exception as error:  # a bug or resource failure must not lose the other clips
            reason, detail = "failed", f"{clip['path']}: {type(error).__name__}: {error}"
        columns["duration_s"].append(duration)
        columns["n_frames"].append(None if features is None else len(features))
        columns["features"].append(features)
        columns["reason"].append(reason)
        columns["detail"].append(detail)
    columns["features"] = features_column(columns["features"])
    return pa.table(columns, schema=CLIP_OUTCOME_SCHEMA)


@contextlib.contextmanager
def _parallel_map():
    """Ray Data reserves a share of the CPUs for each operator; on a small
    machine that leaves featurizing, the one operator that matters here, a single
    task at a time. Lifted for the duration of ingest."""
    context = ray.data.DataContext.get_current()
    reserving = context.op_resource_reservation_enabled
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        context.op_resource_reservation_enabled = reserving


@functools.lru_cache(maxsize=4)
def _fbank(features: FeatureConfig) -> Fbank:
    return Fbank(features).eval()


def summarize(found: Corpus, outcome: pa.Table, wall_s: float) -> dict[str, Any]:
    """Counts and hours per split and language; accepted + rejected == discovered."""
    rows = outcome.select(["lang", "split", "duration_s", "reason"]).to_pylist()
    accepted = [r for r in rows if r["reason"] is None]
    if len(rows) != len(found.clips):
        raise RuntimeError(f"ingest lost clips: {len(found.clips)} discovered, {len(rows)} processed")
    splits: dict[str, Any] = {}
    for split in SPLITS:
        in_split = [r for r in accepted if r["split"] == split]
        languages = {
            lang: {
                "clips": sum(1 for r in in_split if r["lang"] == lang),
                "hours": round(sum(r["duration_s"] for r in in_split if r["lang"] == lang) / 3600, 4),
            }
            for lang in found.labels.codes
        }
        splits[split] = {
            "clips": len(in_split),
            "hours": round(sum(r["duration_s"] for r in in_split) / 3600, 4),
            "languages": languages,
        }
    audio_s = sum(r["duration_s"] for r in accepted)
    return {
        "discovered": len(found.clips),
        "accepted": len(accepted),
        "rejected": len(rows) - len(accepted),
        "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in rows if r["reason"]).items())),
        "excluded_by_label": found.excluded,
        "labels": list(found.labels.codes),
        "splits": splits,
        "audio_hours": round(audio_s / 3600, 4),
        "wall_s": round(wall_s, 2),
    }
