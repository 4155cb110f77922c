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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from slc import __version__, storage
from slc.batch import accounting, inputs
from slc.batch.cluster import check_address, connect
from slc.batch.decode import decode_items
from slc.batch.progress import ProgressFn, Reporter, relay
from slc.data import augment, ingest_resume
from slc.config import FeatureConfig, IngestConfig
from slc.data.corpus import SPLITS, Corpus, discover
from slc.data.features import Fbank, extract
from slc.labels import BACKGROUND, LabelSet
from slc.batch.raydata import references_released, without_resource_reservation
from slc.data.shards import CLIP_OUTCOME_SCHEMA, REJECT_SCHEMA, ShardSink, copy_id, features_column

log = logging.getLogger(__name__)


def ingest(
    corpus: str | Path, out: str, config: IngestConfig = IngestConfig(), overwrite: bool = False,
    resume: bool = False, progress: ProgressFn | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Featurize every clip of `corpus` into shards under `out` (a path or URI).

    With `resume`, the clips an earlier run on `out` featurized whole are
    kept (`slc.data.ingest_resume`) and the others featurized: the shards end
    as an uninterrupted run leaves them. Returns the summary also written to
    `out/summary.json`. Raises `StorageError` when `out` has contents and
    neither `resume` nor `overwrite`, `ShardError` when it cannot be resumed.
    `progress(clips done, clips to featurize)` follows the featurizing tasks.
    """
    started = time.perf_counter()
    check_address()
    fs, root = storage.open_output(out, resume, overwrite)
    labels = LabelSet.parse(config.labels) if config.labels else None
    found = discover(
        corpus, labels, config.split, config.format, config.lang_column, config.background, config.background_per_lang
    )
    log.info("discovered %d clips in %s (%s)", len(found.clips), corpus, ", ".join(found.labels.codes))
    ingest_resume.record_config(fs, root, out, config, resume)
    items = clip_items(found)
    kept = None
    if resume:
        kept = ingest_resume.featurized(fs, root, out, {c.id for c in found.clips}, config.augment.copies)
        done = set(kept["id"].to_pylist())
        items = [item for item in items if item["id"] not in done]
        log.info("resuming: %d of %d clips featurized before, %d to go",
                 len(found.clips) - len(items), len(found.clips), len(items))  # fmt: skip

    sink = ShardSink(fs, root, config.rows_per_file)
    if items:
        connect()
        with references_released(), without_resource_reservation(), relay(_counting(progress, len(items))) as report:
            _featurize(items, config, [found.filesystem], report).write_datasink(sink)
    outcome = sink.outcomes if kept is None else pa.concat_tables([kept, sink.outcomes])
    rejects = outcome.filter(pc.is_valid(outcome["reason"])).select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA)
    with fs.open_output_stream(storage.join(root, "rejects.parquet")) as stream:
        pq.write_table(rejects.sort_by("id"), stream)

    summary = summarize(found, outcome, time.perf_counter() - started)
    summary.update(
        kept_from_earlier_run=len(found.clips) - len(items),
        corpus=storage.redact(corpus), out=storage.redact(out), slc_version=__version__,
    )  # fmt: skip
    storage.write_json(fs, storage.join(root, "summary.json"), summary)
    storage.write_text(fs, storage.join(root, "labels.json"), found.labels.to_json())
    return summary


def clip_items(found: Corpus) -> list[dict[str, Any]]:
    """The clips of `found` as items (see `slc.batch.inputs`) on
    `[found.filesystem]`, with their `id, lang, source_lang, split, group`."""
    return [
        {
            **inputs.item(c.path, 0, c.source, member=c.member, offset=c.offset, size=c.size, data=c.data, span=c.span),
            "id": c.id, "lang": c.lang, "source_lang": c.source_lang or c.lang, "split": c.split, "group": c.group,
        }  # fmt: skip
        for c in found.clips
    ]


def _counting(progress: ProgressFn | None, total: int) -> Callable[[dict[str, Any]], None] | None:
    """Tasks' `{"clips": n}` events -> `progress(clips done, total)`."""
    if progress is None:
        return None
    done = 0

    def on_event(event: dict[str, Any]) -> None:
        nonlocal done
        done += event["clips"]
        progress(done, total)

    return on_event


def _featurize(
    items: list[dict[str, Any]], config: IngestConfig, filesystems: list[pafs.FileSystem], report: Reporter | None = None
) -> ray.data.Dataset:
    blocks = max(1, math.ceil(len(items) / config.clips_per_task))
    return ray.data.from_items(items, override_num_blocks=blocks).map_batches(
        functools.partial(featurize_batch, config=config, filesystems=filesystems, report=report),
        batch_format="pyarrow",
        batch_size=config.clips_per_task,
    )


def featurize_batch(
    batch: pa.Table, config: IngestConfig, filesystems: list[pafs.FileSystem], report: Reporter | None = None
) -> pa.Table:
    """Clip items (from `clip_items`) -> rows of CLIP_OUTCOME_SCHEMA:
    features for a clip that loads, plus `config.augment.copies` augmented
    copies of a training clip; reason and detail for a clip that does not.
    `report(clips=n)`, if given, when the batch is done."""
    fbank = _fbank(config.features)
    clips = batch.to_pylist()
    rows: list[dict[str, Any]] = []
    for clip, decoded in zip(clips, decode_items(clips, filesystems, config.audio)):
        described = {name: clip[name] for name in ("id", "path", "lang", "source_lang", "split", "group")}
        if not decoded.ok:
            rows.append({**described, "reason": decoded.reason, "detail": decoded.detail})
            continue
        versions = [(None, decoded.clip)]
        if clip["split"] == "train":
            versions += augment.copies(decoded.clip, clip["id"], config.augment, config.audio.sample_rate)
        for index, (recipe, wave) in enumerate(versions):
            features = extract(wave, fbank)
            rows.append({
                **described,
                "id": clip["id"] if recipe is None else copy_id(clip["id"], index),
                "duration_s": len(wave) / config.audio.sample_rate,
                "n_frames": len(features),
                "features": features,
                "augment": None if recipe is None else recipe.to_json(),
            })
    columns = {name: [row.get(name) for row in rows] for name in CLIP_OUTCOME_SCHEMA.names}
    columns["features"] = features_column(columns["features"])
    if report:
        report(clips=len(clips))
    return pa.table(columns, schema=CLIP_OUTCOME_SCHEMA)


@functools.lru_cache(maxsize=4)
def _fbank(features: FeatureConfig) -> Fbank:
    return Fbank(features).eval()


def summarize(found: Corpus, outcome: pa.Table, wall_s: float) -> dict[str, Any]:
    """Counts and hours per split and language. Raises AccountingError unless
    the outcome holds every discovered clip once (augmented copies are counted apart)."""
    rows = outcome.select(["id", "lang", "source_lang", "split", "duration_s", "reason", "augment"]).to_pylist()
    originals = [r for r in rows if r["augment"] is None]
    copies = [r for r in rows if r["augment"] is not None]
    accounting.reconcile((c.id for c in found.clips), (r["id"] for r in originals), "ingest")
    accepted = [r for r in originals if r["reason"] is None]
    splits = {split: _tally([r for r in accepted if r["split"] == split], found.labels) for split in SPLITS}
    audio_s = sum(r["duration_s"] for r in accepted)
    return {
        "discovered": len(found.clips),
        "accepted": len(accepted),
        "rejected": len(originals) - len(accepted),
        "rejected_by_reason": accounting.by_reason(r["reason"] for r in originals),
        "excluded_by_label": found.excluded,
        "skipped_hidden": found.skipped_hidden,
        "augmented": _tally(copies, found.labels),
        "labels": list(found.labels.codes),
        "splits": splits,
        "background": _background_languages(accepted),
        "audio_hours": round(audio_s / 3600, 4),
        "wall_s": round(wall_s, 2),
    }


def _background_languages(accepted: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Split -> background language -> accepted clips: which languages the
    class `other` learnt from, and which only the test split holds."""
    found: dict[str, dict[str, int]] = {}
    for row in accepted:
        if row["lang"] == BACKGROUND:
            languages = found.setdefault(row["split"], {})
            languages[row["source_lang"]] = languages.get(row["source_lang"], 0) + 1
    return {split: dict(sorted(found[split].items())) for split in SPLITS if split in found}


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
