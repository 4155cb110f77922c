"""How `slc label` runs on Ray: in which shape, and the blocks of files its
tasks take.

    fused: read, decode, featurise, classify and write in one Ray task per
           block of files, on the Classifier its worker process keeps
           loaded (plain tasks, `slc.batch.tasks`)
    pool:  read, decode, featurise (tasks) -> features through the object
           store -> classify (an actor pool of Classifiers, each with a GPU
           and onnxruntime's CUDA provider where the cluster has GPUs), on
           Ray Data

For a small model on CPUs, moving features through the object store costs
more than the model does: `fused` is the shape for it. `pool` pays when the
model is large (one session per actor, not one per worker process) or runs
on GPUs. `auto` chooses between them (see `choose_shape`).

Tasks take files in blocks of about `audio_s_per_task` seconds (estimated
from file sizes at listing), fewer where a small job would leave a core
without a task, and at most `files_per_task` files. What each stage does
with a block is `slc.apps.label_pipeline`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray

from slc.apps.label_output import output_schema, read_parts
from slc.apps.label_pipeline import Labeller, label_batch, output_row, read_batch
from slc.batch.progress import Reporter, relay
from slc.batch.sink import PartWriter
from slc.batch.tasks import MAX_RETRIES, run_tasks
from slc.config import LabelConfig
from slc.runtime import bundle as bundles
from slc.runtime.classifier import Classifier

log = logging.getLogger(__name__)

# Bytes per second of a 16 kHz 16-bit mono WAV: how a file's size becomes an
# estimate of its duration. Compressed files count as shorter than they are,
# which makes their tasks longer, never empty.
_BYTES_PER_AUDIO_S = 32_000


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
    classified. A block whose reading task failed each time it was tried
    (a decoder that crashed its worker on one of the files) is dropped, and
    its files are labelled afterwards in fused tasks (`run_fused`), which
    find the file that kills its worker and write it as `failed`. The
    classifier actors' tasks keep Ray Data's retries without end: they wait
    for an actor that is restarting, as on a node that died."""
    # Ray Data takes a second to import: only this shape needs it.
    from slc.batch.raydata import PartSink, errored_blocks_dropped, references_released, without_resource_reservation

    sink = PartSink(parts.filesystem, parts.root, parts.writer, parts.suffix, parts.rows_per_file, parts.id_column)
    with references_released(), without_resource_reservation(), errored_blocks_dropped(), relay(on_event) as report:
        _pool_dataset(blocks, filesystems, bundle, config, report).write_datasink(sink)
    if left := _unwritten(blocks, parts):
        log.warning(
            "%d files of blocks the pool could not label (the log has why): labelling them again in fused tasks",
            sum(block.num_rows for block in left),
        )
        run_fused(left, filesystems, bundle, config, parts, on_event)


def _unwritten(blocks: list[pa.Table], parts: PartWriter) -> list[pa.Table]:
    """Each of `blocks` with only its items that `parts` holds no row of."""
    written = read_parts(parts.filesystem, parts.root)["path"]
    left = [block.filter(pc.invert(pc.is_in(block["path"], written))) for block in blocks]
    return [block for block in left if block.num_rows]


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
        read_batch, fn_kwargs=kwargs, batch_format="pyarrow", batch_size=None, num_cpus=config.cpus_per_task,
        max_retries=MAX_RETRIES,  # not Ray Data's without end: a file that kills its worker each time would hold the run
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
