"""Corpus -> features -> Parquet shards, on Ray Data.

discover (driver) -> decode + fbank (parallel tasks) -> shards per split,
plus a rejects table and a summary. A file that cannot become a clip is a row
in `rejects.parquet` with its reason, never a failed job: accepted + rejected
always equals discovered.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from slc import __version__, config as cfg, storage
from slc.data import augment
from slc.audio import AudioError, load
from slc.config import FeatureConfig, IngestConfig
from slc.data.corpus import SPLITS, Corpus, discover
from slc.data.features import Fbank, extract
from slc.labels import LabelSet
from slc.batch.raydata import without_resource_reservation
from slc.data.shards import CLIP_OUTCOME_SCHEMA, REJECT_SCHEMA, ShardSink, features_column

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
    with without_resource_reservation():
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
    """Clips (`id, path, lang, split, group`) -> rows of CLIP_OUTCOME_SCHEMA:
    features for a clip that loads, plus `config.augment.copies` augmented
    copies of a training clip; reason and detail for a clip that does not."""
    fbank = _fbank(config.features)
    rows: list[dict[str, Any]] = []
    for clip in batch.to_pylist():
        try:
            audio = load(clip["path"], config.audio)
        except AudioError as error:
            rows.append({**clip, "reason": error.reason, "detail": str(error)})
            continue
        except Exception as error:  # a bug or resource failure must not lose the other clips
            rows.append({**clip, "reason": "failed", "detail": f"{clip['path']}: {type(error).__name__}: {error}"})
            continue
        versions = [(None, audio)]
        if clip["split"] == "train":
            versions += augment.copies(audio, clip["id"], config.augment, config.audio.sample_rate)
        for index, (recipe, wave) in enumerate(versions):
            features = extract(wave, fbank)
            rows.append({
                **clip,
                "id": clip["id"] if recipe is None else f"{clip['id']}#aug{index}",
                "duration_s": len(wave) / config.audio.sample_rate,
                "n_frames": len(features),
                "features": features,
                "augment": None if recipe is None else recipe.to_json(),
            })
    columns = {name: [row.get(name) for row in rows] for name in CLIP_OUTCOME_SCHEMA.names}
    columns["features"] = features_column(columns["features"])
    return pa.table(columns, schema=CLIP_OUTCOME_SCHEMA)


@functools.lru_cache(maxsize=4)
def _fbank(features: FeatureConfig) -> Fbank:
    return Fbank(features).eval()


def summarize(found: Corpus, outcome: pa.Table, wall_s: float) -> dict[str, Any]:
    """Counts and hours per split and language; accepted + rejected ==
    discovered (augmented copies are counted apart)."""
    rows = outcome.select(["lang", "split", "duration_s", "reason", "augment"]).to_pylist()
    originals = [r for r in rows if r["augment"] is None]
    copies = [r for r in rows if r["augment"] is not None]
    accepted = [r for r in originals if r["reason"] is None]
    if len(originals) != len(found.clips):
        raise RuntimeError(f"ingest lost clips: {len(found.clips)} discovered, {len(originals)} processed")
    splits = {split: _tally([r for r in accepted if r["split"] == split], found.labels) for split in SPLITS}
    audio_s = sum(r["duration_s"] for r in accepted)
    return {
        "discovered": len(found.clips),
        "accepted": len(accepted),
        "rejected": len(originals) - len(accepted),
        "rejected_by_reason": dict(sorted(Counter(r["reason"] for r in originals if r["reason"]).items())),
        "excluded_by_label": found.excluded,
        "augmented": _tally(copies, found.labels),
        "labels": list(found.labels.codes),
        "splits": splits,
        "audio_hours": round(audio_s / 3600, 4),
        "wall_s": round(wall_s, 2),
    }


def _tally(rows: list[dict[str, Any]], labels: LabelSet) -> dict[str, Any]:
    """Clips and hours, in all and per language."""
    def hours(selected: list[dict[str, Any]]) -> float:
        return round(sum(r["duration_s"] for r in selected) / 3600, 4)

    by_lang = {code: [r for r in rows if r["lang"] == code] for code in labels.codes}
    return {
        "clips": len(rows),
        "hours": hours(rows),
        "languages": {code: {"clips": len(selected), "hours": hours(selected)} for code, selected in by_lang.items()},
    }
