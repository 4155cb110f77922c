"""`slc evaluate`: a checkpoint's predictions on a shard split -> metrics and
the Markdown/PNG report. Runs in-process: a test split is small enough for
one machine, and the numbers must not depend on how it was partitioned."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slc.training import checkpoint as ckpt
from slc.training.batches import COLUMNS, collate
from slc.training.metrics import classification_metrics
from slc.training.report import write_report
from slc.data.shards import read_split

log = logging.getLogger(__name__)


def evaluate(checkpoint: str | Path, shards: str, out: str | Path, split: str = "test", batch_size: int = 32) -> dict[str, Any]:
    """Classify every clip of `shards/split` (whole, up to the checkpoint's
    `eval_max_frames`) and write `report.md`, `metrics.json` and plots to `out`."""
    model, labels, train_config, _ = ckpt.load(Path(checkpoint))
    model.eval()
    table = read_split(shards, split, columns=COLUMNS + ["id"])
    unknown = sorted(set(table.column("lang").to_pylist()) - set(labels.codes))
    if unknown:
        raise ValueError(f"{shards}/{split} holds languages the checkpoint does not know: {unknown}")
    truth, predicted = [], []
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for start in range(0, table.num_rows, batch_size):
            features, lengths, targets = collate(
                table.slice(start, batch_size), labels, train_config.eval_max_frames, False, rng, train_config
            )
            predicted += model(features, lengths).argmax(dim=-1).tolist()
            truth += targets.tolist()
    metrics = classification_metrics(truth, predicted, labels)
    history_path = Path(checkpoint) / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else None
    trained = ckpt.read_metrics(Path(checkpoint))
    details = {
        "checkpoint": str(checkpoint),
        "epoch": trained.get("epoch"),
        "val macro F1 (training)": trained.get("val_f1"),
        "shards": f"{shards} ({split})",
        "clips": table.num_rows,
        "preset": f"d_model {train_config.model.d_model}, {train_config.model.encoder_layers} layers",
    }
    write_report(Path(out), metrics, labels, history=history, title=f"slc evaluation: {split} split", details=details)
    log.info("%s: macro F1 %.4f on %d clips -> %s", split, metrics["macro"]["f1"], table.num_rows, out)
    return metrics
