"""Training on Ray Train: DDP over `workers`, AdamW with linear warmup then
decay, cross-entropy, a checkpoint per epoch scored on validation macro F1.

`train()` runs on the driver: it reads the shards, launches `TorchTrainer`
and copies the best checkpoint to `OUT/best`. `train_loop` runs on every
worker. Relaunching with the same OUT and `resume=True` continues from the
latest checkpoint, as does Ray after a worker failure (`max_failures`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
from ray.train.torch import TorchTrainer
from transformers import get_linear_schedule_with_warmup

from slc import config_io
from slc import storage
from slc.batch.cluster import check_address, connect
from slc.batch.progress import ProgressFn, Reporter, relay
from slc.training import checkpoint as ckpt, placement, run_dir
from slc.config import FeatureConfig, IngestConfig, TrainConfig
from slc.data.shards import read_split, read_text
from slc.training.batches import COLUMNS, batches, class_weights
from slc.labels import LabelSet
from slc.training.metrics import metrics_from_confusion
from slc.training.model import LanguageClassifier

log = logging.getLogger(__name__)

# Ray Train's controller learns that its workers finished or died at its next
# health check: every 2 s by default, and a run's end takes several, so each
# run idled 5 s after its last epoch. Checks every 0.5 s cost a few small
# calls a second. Ray passes the setting from the driver's environment to the
# controller; a value set there wins.
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "0.5"


def train(
    shards: str, out: str, config: TrainConfig, overwrite: bool = False, resume: bool = False,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train on `shards` (an ingest output), writing Ray Train's run under
    `out/run` and the best checkpoint to `out/best`. Returns the best epoch's metrics.

    Each epoch's line is logged once, on this (the driver's) side;
    `progress(steps done, steps in all, epoch=, loss=, **{"val F1": })` follows
    rank 0's training steps."""
    labels = LabelSet.from_json(read_text(shards, "labels.json"))
    ingest_config = config_io.from_dict(IngestConfig, json.loads(read_text(shards, "config.json")))
    check_address()
    fs, root = run_dir.prepare(out, config, labels, overwrite, resume)
    # With the dashboard: Ray Train's placement-group cleaner asks its state
    # API whether the controller lives, and without it warns every second.
    connect(dashboard=True)
    resources = ray.cluster_resources()
    scaling_config, device = placement.scaling(config, resources)
    # First in the job log: a run meant for GPUs must not train on CPU unnoticed.
    (log.info if scaling_config.use_gpu or config.use_gpu is False else log.warning)("%s", device)

    # Epoch lines are the progress of a run; per-dataset bars would drown them.
    ray.data.DataContext.get_current().enable_progress_bars = False
    # Read once: every epoch then streams from the object store (spilling to
    # disk when it is full) instead of decoding Parquet again. Blocks keep the
    # files' order (not the order reads finish in), so runs are repeatable.
    # The reads hold no CPU (at most one per CPU run at once): when a node
    # dies, Ray rebuilds the blocks it held by reading them again, while the
    # restarted workers may hold every CPU left, and the run waited forever.
    shards_fs, shards_root = storage.resolve(shards)
    reads = {"num_cpus": 0, "concurrency": max(1, int(resources.get("CPU", 1)))}
    with _preserving_order():
        datasets = {
            split: ray.data.read_parquet(storage.join(shards_root, split), filesystem=shards_fs, **reads)
            .select_columns(COLUMNS)
            .materialize()
            for split in ("train", "val")
        }
    # One column read from the files: a groupby over the dataset would be a shuffle, seconds of a short run.
    counts = dict(Counter(read_split(shards, "train", ["lang"])["lang"].to_pylist()))
    log.info("training clips per language: %s", counts)
    loop_config = {
        "train": config_io.to_dict(config),
        "features": config_io.to_dict(ingest_config.features),
        "labels": list(labels.codes),
        "class_weights": class_weights(counts, labels) if config.balance == "weights" else None,
        "train_rows": sum(counts.values()),
        "shards": storage.redact(shards),
    }
    steps_per_epoch = math.ceil(loop_config["train_rows"] / (scaling_config.num_workers * config.batch_size))
    with relay(_on_progress(progress, config.epochs, steps_per_epoch)) as report:
        result = _fit({**loop_config, "report": report}, scaling_config, datasets, config, fs, root)
    best_checkpoint, best_metrics = max(result.best_checkpoints, key=lambda pair: pair[1]["val_f1"])
    best = storage.join(root, "best")
    fs.create_dir(best, recursive=True)
    pafs.copy_files(best_checkpoint.path, best, source_filesystem=best_checkpoint.filesystem, destination_filesystem=fs)
    with result.checkpoint.as_directory() as latest:
        history = json.loads((Path(latest) / "training_state.json").read_text())["history"]
    storage.write_json(fs, storage.join(best, "history.json"), history)
    log.info("best checkpoint: epoch %d, val macro F1 %.4f -> %s", best_metrics["epoch"], best_metrics["val_f1"], best)
    return {**best_metrics, "best": best, "epochs_run": len(history)}


@contextlib.contextmanager
def _preserving_order():
    """Inside the `with`, Ray Data yields blocks in input order; the setting is restored after."""
    options = ray.data.DataContext.get_current().execution_options
    before, options.preserve_order = options.preserve_order, True
    try:
        yield
    finally:
        options.preserve_order = before


def _fit(loop_config: dict[str, Any], scaling_config, datasets, config: TrainConfig, fs, root: str) -> ray.train.Result:
    # In order, each worker gets the same rows every epoch and every run: with
    # the seeded shuffle, crops and masks, a run is repeatable (locality would
    # deal rows by timing).
    ordered = DataConfig.default_ingest_options()
    ordered.preserve_order = True
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=scaling_config,
        run_config=RunConfig(
            name=run_dir.RUN_NAME,
            storage_path=root,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.keep_checkpoints, checkpoint_score_attribute="val_f1", checkpoint_score_order="max"
            ),
        ),
        datasets=datasets,
        dataset_config=DataConfig(execution_options=ordered),
    )
    with _env_default(HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S):
        return trainer.fit()


@contextlib.contextmanager
def _env_default(name: str, value: str):
    """Inside the `with`, `name` is `value` unless the environment sets it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        del os.environ[name]


def _on_progress(progress: ProgressFn | None, epochs: int, steps_per_epoch: int) -> Callable[[dict[str, Any]], None]:
    """Rank 0's events -> the epoch line, logged here once, and `progress`."""
    total = epochs * steps_per_epoch
    latest: dict[str, float] = {}  # the figures shown: last training loss, last val F1

    def on_event(event: dict[str, Any]) -> None:
        epoch = event["epoch"]
        if "row" in event:
            log.info("%s", _epoch_line(event["row"], epochs))
            latest["val F1"] = event["row"]["val_f1"]
            done = epoch * steps_per_epoch
        else:
            latest["loss"] = event["loss"]
            done = (epoch - 1) * steps_per_epoch + min(event["step"], steps_per_epoch)
        if progress is not None:
            progress(done, total, epoch=f"{epoch}/{epochs}", **latest)

    return on_event


def train_loop(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: builds the model, resumes from the latest
    checkpoint if there is one, trains and reports every epoch."""
    config = config_io.from_dict(TrainConfig, loop_config["train"])
    features = config_io.from_dict(FeatureConfig, loop_config["features"])
    labels = LabelSet(tuple(loop_config["labels"]))
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(config.seed)

    model, optimizer, scheduler, start_epoch, history = _start(config, len(labels), loop_config["train_rows"], world)
    # Checkpoints record the shape that was built (a pretrained encoder's with
    # init_from), so loading one never needs the pretrained files.
    config = dataclasses.replace(config, model=model.config)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    weights = loop_config["class_weights"]
    loss_fn = torch.nn.CrossEntropyLoss(
        weight=torch.tensor(weights, device=device) if weights else None, label_smoothing=config.label_smoothing
    )
    shards = {split: ray.train.get_dataset_shard(split) for split in ("train", "val")}

    for epoch in range(start_epoch, config.epochs):
        # Seeded per epoch, so a resumed run draws the batches, masks and
        # dropout of an uninterrupted one.
        rng = np.random.default_rng([config.seed, rank, epoch])
        torch.manual_seed(int(rng.integers(2**63)))
        # Rank 0 reports its steps and epochs to the driver, which shows them once.
        report: Reporter | None = loop_config["report"] if rank == 0 else None
        on_step = functools.partial(report, epoch=epoch + 1) if report else None
        train_stats = _train_epoch(model, shards["train"], optimizer, scheduler, loss_fn, config, labels, rng, device, on_step)
        val_loss, confusion = _evaluate(model, shards["val"], loss_fn, config, labels, rng, device)
        totals = _all_reduce(torch.tensor([*train_stats, *val_loss], dtype=torch.float64), world)
        confusion = _all_reduce(confusion, world).numpy()
        train_loss_sum, train_n, data_s, step_s, val_loss_sum, val_n = totals.tolist()
        val = metrics_from_confusion(confusion, labels)
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss_sum / max(train_n, 1),
            "val_loss": val_loss_sum / max(val_n, 1),
            "val_f1": val["macro"]["f1"],
            "val_precision": val["macro"]["precision"],
            "val_recall": val["macro"]["recall"],
            "val_iou": val["macro"]["iou"],
            # Samples and seconds are both summed over workers: their ratio is per worker.
            "samples_per_s_per_worker": train_n / max(data_s + step_s, 1e-9),
            "data_wait_share": data_s / max(data_s + step_s, 1e-9),
            "lr": scheduler.get_last_lr()[0],
        }
        row.update({f"val_f1_{code}": stats["f1"] for code, stats in val["per_class"].items()})
        history.append(row)
        if report:
            report(epoch=epoch + 1, row=row)
        _report(model, optimizer, scheduler, row, val, history, config, features, labels, epoch, rank, loop_config["shards"])
        if _patience_exhausted(history, config.patience):
            break


def _start(config: TrainConfig, num_labels: int, train_rows: int, world: int) -> tuple:
    """-> (model, optimizer, scheduler, first epoch to run, history): fresh, or
    as the latest checkpoint left them. A resumed model is rebuilt from the
    shape its checkpoint records, not from `config.model`."""
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext() as directory:
        if directory:
            model = ckpt.load(Path(directory))[0]
        else:
            model = LanguageClassifier.build(config.model, num_labels)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        total_steps = math.ceil(train_rows / (world * config.batch_size)) * config.epochs
        scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
        if not directory:
            return model, optimizer, scheduler, 0, []
        last_epoch, history = ckpt.load_training_state(Path(directory), optimizer, scheduler)
    return model, optimizer, scheduler, last_epoch + 1, history


def _train_epoch(model, shard, optimizer, scheduler, loss_fn, config, labels, rng, device, on_step) -> tuple[float, ...]:
    """-> (loss sum, samples, seconds waiting for data, seconds computing);
    `on_step(step=, loss=)`, if given, after every step with the epoch's mean loss so far."""
    model.train()
    loss_sum, seen, data_s, step_s, steps = 0.0, 0, 0.0, 0.0, 0
    iterator = iter(batches(shard, config, labels, train=True, rng=rng))
    while True:
        started = time.perf_counter()
        batch = next(iterator, None)
        fetched = time.perf_counter()
        data_s += fetched - started
        if batch is None:
            break
        features, lengths, targets = (t.to(device) for t in batch)
        with _autocast(device):
            loss = loss_fn(model(features, lengths).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        scheduler.step()
        loss_sum += loss.item() * len(targets)
        seen += len(targets)
        step_s += time.perf_counter() - fetched
        if on_step:
            on_step(step=steps + 1, loss=loss_sum / seen)
        steps += 1
    return loss_sum, seen, data_s, step_s


@torch.no_grad()
def _evaluate(model, shard, loss_fn, config, labels, rng, device) -> tuple[tuple[float, int], torch.Tensor]:
    """-> ((loss sum, samples), confusion counts [labels, labels])."""
    model.eval()
    confusion = torch.zeros(len(labels), len(labels), dtype=torch.int64)
    loss_sum, seen = 0.0, 0
    for features, lengths, targets in batches(shard, config, labels, train=False, rng=rng):
        features, lengths, targets = features.to(device), lengths.to(device), targets.to(device)
        with _autocast(device):
            logits = model(features, lengths).float()
        loss_sum += loss_fn(logits, targets).item() * len(targets)
        seen += len(targets)
        predicted = logits.argmax(dim=-1)
        confusion += torch.bincount(
            (targets * len(labels) + predicted).cpu(), minlength=len(labels) ** 2
        ).reshape(len(labels), len(labels))
    return (loss_sum, seen), confusion


def _all_reduce(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """Sum over workers (gloo reduces CPU tensors; nccl needs them on the GPU)."""
    if world == 1:
        return tensor
    device = ray.train.torch.get_device()
    reduced = tensor.to(device)
    torch.distributed.all_reduce(reduced)
    return reduced.cpu()


def _report(model, optimizer, scheduler, row, val, history, config, features, labels, epoch, rank, shards) -> None:
    """Every rank reports (report is a barrier); rank 0 attaches the checkpoint."""
    metrics = {**row, "val": val}
    with tempfile.TemporaryDirectory() as directory:
        checkpoint = None
        if rank == 0:
            unwrapped = model.module if hasattr(model, "module") else model
            ckpt.save(Path(directory), unwrapped, labels, config, features, metrics, shards)
            ckpt.save_training_state(Path(directory), optimizer, scheduler, epoch, history)
            checkpoint = ray.train.Checkpoint.from_directory(directory)
        ray.train.report(row, checkpoint=checkpoint)


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
        f"val F1 {row['val_f1']:.4f}  {row['samples_per_s_per_worker']:.1f} clips/s/worker  "
        f"data wait {100 * row['data_wait_share']:.0f}%"
    )


def _patience_exhausted(history: list[dict], patience: int | None) -> bool:
    if patience is None:
        return False
    best_epoch = max(range(len(history)), key=lambda i: history[i]["val_f1"])
    return len(history) - 1 - best_epoch >= patience


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
