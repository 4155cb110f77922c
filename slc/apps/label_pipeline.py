"""The shapes of `slc label`'s pipeline, and the stages they run.

    fused: read, decode, featurise, classify and write in one Ray task per
           batch of files, on the Classifier its worker process keeps
           loaded (plain tasks, `slc.batch.tasks`)
    pool:  read, decode, featurise (tasks) -> features through the object
           store -> classify (an actor pool of Classifiers, each with a GPU
           and onnxruntime's CUDA provider where the cluster has GPUs), on
           Ray Data

For a small model on CPUs, moving features through the object store costs
more than the model does: `fused` is the shape for it. `pool` pays when the
model is large (one session per actor, not one per worker process) or runs
on GPUs. `auto` chooses between them (see `choose_shape`).

Tasks take files in batches of about `audio_s_per_task` seconds (estimated
from file sizes at listing), fewer where a small job would leave a core
without a task, and at most `files_per_task` files. In the fused
shape a recording longer than the bundle's `whole_clip_max_s` is streamed
from its file a block at a time (`Classifier.classify_file`): its waveform
is never held whole, and a local file is never read whole into memory.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import soundfile as sf

from slc import audio
from slc.apps.label_output import output_schema
from slc.batch.columns import arrays_of, flat_list_column
from slc.batch.decode import Decoded, decode, decode_items
from slc.batch.inputs import read_bytes
from slc.batch.progress import Reporter, relay
from slc.batch.sink import PartWriter
from slc.batch.tasks import run_tasks
from slc.config import LabelConfig
from slc.runtime import bundle as bundles
from slc.runtime.classifier import Classifier, Prediction

log = logging.getLogger(__name__)

# Bytes per second of a 16 kHz 16-bit mono WAV: how a file's size becomes an
# estimate of its duration. Compressed files count as shorter than they are,
# which makes their tasks longer, never empty.
_BYTES_PER_AUDIO_S = 32_000

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


def choose_shape(config: LabelConfig, classifier: Classifier) -> tuple[str, str]:
    """(shape, why): `config.shape` unless `auto`; then `pool` when the
    cluster has GPUs or the model file is over `config.fused_max_model_mb`
    (each worker process would load its own copy), else `fused`."""
    if config.shape != "auto":
        return config.shape, f"--shape {config.shape}"
    model_mb = (classifier.path / classifier.manifest["variants"][classifier.variant]["file"]).stat().st_size / 1e6
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus:
        return "pool", f"the cluster has {gpus:g} GPUs"
    if model_mb > config.fused_max_model_mb:
        return "pool", f"the model is {model_mb:.0f} MB, over {config.fused_max_model_mb:g} MB per worker process"
    return "fused", f"the model is {model_mb:.1f} MB and the cluster has no GPUs"


def gpus_per_actor(config: LabelConfig) -> float:
    """`config.gpus_per_actor`, else 1 when the cluster has GPUs."""
    if config.gpus_per_actor is not None:
        return config.gpus_per_actor
    return 1.0 if ray.cluster_resources().get("GPU", 0) else 0.0


def gpu_variant(config: LabelConfig, shape: str) -> str | None:
    """The variant for classifier actors on GPUs when none is named: fp32.
    The bundle's default is chosen by timing on one CPU thread, and the int8
    variants owe their speed to onnxruntime's CPU kernels. None where the
    bundle's default or the named variant stands."""
    if shape == "pool" and config.variant is None and gpus_per_actor(config):
        return bundles.FP32
    return None


def slots(config: LabelConfig, shape: str) -> float:
    """How many of the shape's reading tasks the cluster runs at once."""
    return ray.cluster_resources().get("CPU", 1.0) / (config.threads if shape == "fused" else config.cpus_per_task)


def run_fused(
    blocks: list[pa.Table], filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig, parts: PartWriter,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> None:  # fmt: skip
    """Label each block of items (`task_blocks`) in a task of its own that
    writes its rows to `parts`; `on_event({"files": n, "audio_s": s})` on
    the driver as each task finishes. A block whose worker process keeps
    dying (a decoder that crashes on one of its files) is labelled again a
    file per task; a file that still kills its worker is written here as
    `failed`, which a resumed run tries again."""

    def lost(block: pa.Table, error: Exception) -> dict[str, float]:
        rows = [
            output_row({"path": path, "error": "failed", "detail": f"{path}: the process labelling it died ({type(error).__name__})"}, None, config)
            for path in block["path"].to_pylist()
        ]  # fmt: skip
        log.error("%s: the worker process labelling it died each time it was tried", ", ".join(r["path"] for r in rows))
        parts.write_table(pa.Table.from_pylist(rows, schema=output_schema(config.segments)))
        return {"files": len(rows), "audio_s": 0.0}

    kwargs = {"filesystems": filesystems, "bundle": bundle, "config": config, "parts": parts}
    run_tasks(
        label_part, blocks, kwargs, config.threads, on_event or (lambda event: None), name="slc-label",
        split=lambda block: [block.slice(i, 1) for i in range(block.num_rows)], lost=lost,
    )  # fmt: skip


def label_part(
    block: pa.Table, filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig, parts: PartWriter
) -> dict[str, float]:
    """A fused task: `block`'s items labelled and written as parts -> how many
    files and seconds of audio."""
    table = label_batch(block, filesystems, bundle, config)
    parts.write_table(table)
    return {"files": table.num_rows, "audio_s": sum(s or 0.0 for s in table["duration_s"].to_pylist())}


def run_pool(
    blocks: list[pa.Table], filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig, parts: PartWriter,
    on_event: Callable[[dict[str, Any]], None] | None = None,
) -> None:  # fmt: skip
    """Label the blocks of items in the pool shape, on Ray Data, into `parts`;
    `on_event({"files": n, "audio_s": s})` on the driver after each batch
    classified."""
    # Ray Data takes a second to import: only this shape needs it.
    from slc.batch.raydata import PartSink, without_resource_reservation

    sink = PartSink(parts.filesystem, parts.root, parts.writer, parts.suffix, parts.rows_per_file, parts.id_column)
    with without_resource_reservation(), relay(on_event) as report:
        _pool_dataset(blocks, filesystems, bundle, config, report).write_datasink(sink)


def _pool_dataset(
    blocks: list[pa.Table], filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig,
    report: Reporter | None,
):  # fmt: skip
    """The dataset of output rows (`output_schema`); `report(files=,
    audio_s=)` after each batch classified. The actors run the model on
    CUDA when they are given GPUs (`gpus_per_actor`)."""
    kwargs = {"filesystems": filesystems, "bundle": bundle, "config": config}
    gpus = gpus_per_actor(config)
    log.info("classifying in %d actors of %g CPU and %g GPU each", config.concurrency, config.cpus_per_actor, gpus)
    return ray.data.from_arrow(blocks).map_batches(
        read_batch, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=None, num_cpus=config.cpus_per_task
    ).map_batches(
        Labeller,
        fn_constructor_kwargs={"bundle": bundle, "config": config, "report": report, "device": "cuda" if gpus else "cpu"},
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        batch_format="pyarrow",
        batch_size=config.files_per_task,  # a read task's files (Ray Data wants a number where GPUs are asked for)
        num_cpus=config.cpus_per_actor,
        num_gpus=gpus,
    )


def task_blocks(
    items: list[dict[str, Any]], filesystems: list[pafs.FileSystem], config: LabelConfig, cores: float = 1.0
) -> list[pa.Table]:
    """`items` in listing order, cut into tables of about
    `config.audio_s_per_task` estimated seconds, or less where that would
    leave some of `cores` without a task, and at most `config.files_per_task`
    items: one table per task."""
    sizes = _sizes(items, filesystems)
    budget = min(config.audio_s_per_task * _BYTES_PER_AUDIO_S, sum(sizes) / cores)
    table = pa.Table.from_pylist(items)
    blocks, start, held = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and (held + size > budget or i - start >= config.files_per_task):
            blocks.append(table.slice(start, i - start))
            start, held = i, 0
        held += size
    return [*blocks, table.slice(start)] if items else []


def _sizes(items: list[dict[str, Any]], filesystems: list[pafs.FileSystem]) -> list[int]:
    """Bytes of each item: its byte range or held bytes, else a local file's
    size, else the mean of the known ones (a stat per file on an object
    store would cost a request each)."""
    sizes: list[int | None] = [
        item["size"] if item["size"] is not None else len(item["data"]) if item["data"] is not None else None
        for item in items
    ]
    by_fs: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        local = isinstance(filesystems[item["fs"]], pafs.LocalFileSystem)
        if sizes[i] is None and local and item["member"] is None and item["error"] is None:
            by_fs.setdefault(item["fs"], []).append(i)
    for index, chosen in by_fs.items():
        infos = filesystems[index].get_file_info([items[i]["source"] for i in chosen])
        for i, info in zip(chosen, infos):
            sizes[i] = info.size
    known = [s for s in sizes if s is not None]
    mean = sum(known) // len(known) if known else _BYTES_PER_AUDIO_S
    return [mean if s is None else s for s in sizes]


@functools.lru_cache(maxsize=2)
def _classifier(bundle: str, variant: str | None, open_set: bool) -> Classifier:
    """One per worker process, kept across read tasks; one thread, as tasks are many."""
    return Classifier(bundle, variant, threads=1, open_set=open_set)


@functools.lru_cache(maxsize=2)
def _labeller(bundle: str, config: LabelConfig) -> Labeller:
    """One per worker process, kept across fused tasks. Clips one at a time:
    on CPUs onnxruntime runs a clip alone as fast as in a batch, and the
    clips of one task differ in length, so a batch pays for its padding
    (the tiny model: 1.3x slower in batches of 16)."""
    return Labeller(bundle, config, batch_size=1)


def read_batch(
    batch: pa.Table, filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig
) -> pa.Table:
    """Items (from `list_inputs`) -> rows of _READ_SCHEMA: the features of a
    whole clip, the waveform of one to classify by windows, or the error."""
    classifier = _classifier(bundle, config.variant, config.open_set)
    decoded = decode_items(batch.to_pylist(), filesystems, _audio_config(classifier, config))
    return _read_table(decoded, classifier, config)


def label_batch(batch: pa.Table, filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig) -> pa.Table:
    """Items (from `list_inputs`) -> rows of `output_schema`, read, decoded,
    featurised and classified in this process. A recording whose header
    promises more than `whole_clip_max_s` is streamed from its file (a local
    path, else its bytes) instead of decoded whole."""
    labeller = _labeller(bundle, config)
    audio_config = _audio_config(labeller.classifier, config)
    items = batch.to_pylist()
    sources = _sources(items, filesystems)
    longest = labeller.classifier.window.whole_clip_max_s
    streamed = {i for i, s in enumerate(sources) if items[i]["error"] is None and _header_s(s) > longest}
    in_memory = [i for i in range(len(items)) if i not in streamed]
    decoded = [decode(items[i], sources[i], audio_config) for i in in_memory]
    rows: list[dict[str, Any]] = [{}] * len(items)
    for i, row in zip(in_memory, labeller(_read_table(decoded, labeller.classifier, config)).to_pylist()):
        rows[i] = row
    for i in streamed:
        rows[i] = labeller.stream(items[i]["path"], sources[i], audio_config.max_duration_s)
    return pa.Table.from_pylist(rows, schema=output_schema(config.segments))


def _audio_config(classifier: Classifier, config: LabelConfig):
    if config.max_duration_s is None:
        return classifier.audio_config
    return dataclasses.replace(classifier.audio_config, max_duration_s=config.max_duration_s)


def _sources(items: list[dict[str, Any]], filesystems: list[pafs.FileSystem]) -> list[audio.Source | Exception]:
    """What to decode each item from: the path of a plain local file (read
    by libsndfile as it goes), else its bytes or the error reading them."""
    local = [
        isinstance(filesystems[item["fs"]], pafs.LocalFileSystem)
        and item["member"] is None and item["data"] is None and item.get("span") is None
        for item in items
    ]  # fmt: skip
    others = [i for i, is_local in enumerate(local) if not is_local]
    try:
        read = read_bytes([items[i] for i in others], filesystems) if others else []
    except Exception as error:  # a bug reading must still give every item its row
        log.exception("reading %d files failed", len(others))
        read = [error] * len(others)
    sources: list[audio.Source | Exception] = [item["source"] for item in items]
    for i, data in zip(others, read):
        sources[i] = data
    return sources


def _header_s(source: audio.Source | Exception) -> float:
    """Seconds of audio a file's header promises; 0 when it cannot be read
    (decoding then says why)."""
    if isinstance(source, Exception):
        return 0.0
    try:
        info = sf.info(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (RuntimeError, OSError, ValueError, TypeError):
        return 0.0
    return info.frames / info.samplerate if info.samplerate else 0.0


def _read_table(decoded: list[Decoded], classifier: Classifier, config: LabelConfig) -> pa.Table:
    """Outcomes -> rows of _READ_SCHEMA: whole clips featurised, longer ones
    (all with `segments`) kept as waveforms for windows."""
    rate = classifier.feature_config.sample_rate
    longest = classifier.window.whole_clip_max_s * rate
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
    """Rows of _READ_SCHEMA -> rows of `output_schema` (a Ray Data actor in
    the pool shape). A batch that fails is tried again clip by clip, so only
    the clip at fault gets `error=failed`; each failure is logged with its
    traceback."""

    def __init__(
        self, bundle: str, config: LabelConfig, report: Reporter | None = None, batch_size: int = 16,
        device: str = "cpu",
    ) -> None:  # fmt: skip
        self.classifier = Classifier(
            bundle, config.variant, config.threads, batch_size, open_set=config.open_set, device=device
        )  # fmt: skip
        self.config = config
        self.allow = list(config.allow) or None
        self.report = report

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
        table = [output_row(row, predictions.get(i), self.config) for i, row in enumerate(rows)]
        if self.report:
            self.report(files=len(rows), audio_s=sum(r["duration_s"] or 0.0 for r in table))
        return pa.Table.from_pylist(table, schema=output_schema(self.config.segments))

    def stream(self, path: str, source: audio.Source | Exception, max_duration_s: float) -> dict[str, Any]:
        """A recording classified from its file a block at a time -> its
        output row. Longer than `max_duration_s` is `too_long`, as when
        decoded whole; an AudioError's reason is the row's error, any other
        failure is `failed`."""
        row: dict[str, Any] = {"path": path, "error": None, "detail": None}
        prediction = None
        try:
            if isinstance(source, Exception):
                raise source
            if (seconds := _header_s(source)) > max_duration_s:
                raise audio.TooLongAudioError(path, f"{seconds:.1f} s of audio, at most {max_duration_s:.1f} s allowed")
            config = self.config
            prediction = self.classifier.classify_file(source, self.allow, config.min_confidence, config.segments, path)
        except audio.AudioError as error:
            row.update(error=error.reason, detail=str(error))
        except Exception as error:
            log.exception("classifying %s failed", path)
            row.update(error="failed", detail=f"{path}: {type(error).__name__}: {error}")
        return output_row(row, prediction, self.config)

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


def output_row(row: dict[str, Any], prediction: Prediction | None, config: LabelConfig) -> dict[str, Any]:
    """A row of `path, error, detail` and its prediction (None: failed) -> an output row."""
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
