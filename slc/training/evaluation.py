"""`slc evaluate`: a checkpoint's predictions on a shard split -> metrics and
the Markdown/PNG report. Runs in-process: a test split is small enough for
one machine, and the numbers must not depend on how it was partitioned.

Besides the closed-set metrics (the most probable class), the open-set
answer is fitted on the validation split as an export would fit it
(temperature and threshold, slc.runtime.openset) and scored on the split."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from slc.config import ExportConfig, TrainConfig
from slc.data.shards import ShardError, read_split
from slc.labels import BACKGROUND, LabelSet
from slc.runtime import openset
from slc.training import checkpoint as ckpt
from slc.training.assessment import (
    SplitScores,
    calibration_figures,
    duration_figures,
    open_set_figures,
)
from slc.training.batches import collate
from slc.training.metrics import classification_metrics
from slc.training.report import write_report

log = logging.getLogger(__name__)


def evaluate(
    checkpoint: str | Path,
    shards: str,
    out: str | Path,
    split: str = "test",
    batch_size: int = 32,
    target_miss: float | None = None,
) -> dict[str, Any]:
    """Classify every clip of `shards/split` (whole, up to the checkpoint's
    `eval_max_frames`), fit the open-set answer on a validation split with
    `target_miss` (the share of in-set validation clips it may answer
    `unknown`; None: ExportConfig's), and write `report.md`, `metrics.json`
    and plots to `out`. -> the metrics dict: closed-set metrics at the top
    level, `open_set`, `calibration` and `by_duration` beside them.

    As `slc export` does by default, the open set is fitted on the val split
    of the shards the checkpoint was trained on (else of `shards`); the
    languages its background class was trained on come from their train split."""
    target_miss = ExportConfig.target_miss if target_miss is None else target_miss
    if not 0.0 <= target_miss < 1.0:
        raise ValueError(f"target_miss must be within [0, 1), got {target_miss}")
    checkpoint = Path(checkpoint)
    model, labels, train_config, _ = ckpt.load(checkpoint)
    model.eval()
    training_shards = list(dict.fromkeys([ckpt.trained_on(checkpoint) or shards, shards]))

    def score(split_name: str, roots: list[str]) -> tuple[SplitScores, str]:
        table, root = _read(roots, split_name, ["lang", "source_lang", "n_frames", "features", "duration_s"])
        scores = _scores(model, table, labels, batch_size, train_config)
        if not scores.known(labels).any():
            raise ValueError(f"{root}/{split_name} holds no clips of the checkpoint's languages {list(labels.codes)}")
        return scores, root

    evaluated, _ = score(split, [shards])
    validation, val_root = (evaluated, shards) if split == "val" else score("val", training_shards)
    known = validation.known(labels)
    targets = np.array([labels.id(code) for code in validation.truth[known]], dtype=np.int64)
    fitted = openset.fit(validation.probabilities[known], targets, labels.codes, target_miss)

    in_labels = evaluated.known(labels)
    truth_ids = [labels.id(code) for code in evaluated.truth[in_labels]]
    metrics = classification_metrics(truth_ids, evaluated.probabilities[in_labels].argmax(axis=-1), labels)
    has_background = bool((evaluated.truth == BACKGROUND).any())
    trained_background = _trained_background(training_shards) if has_background else None
    metrics["open_set"] = open_set_figures(evaluated, labels, fitted, trained_background)
    metrics["calibration"] = calibration_figures(evaluated, labels, fitted.temperature)
    metrics["by_duration"] = duration_figures(evaluated, labels)

    history_path = checkpoint / "history.json"
    history = json.loads(history_path.read_text()) if history_path.is_file() else None
    trained = ckpt.read_metrics(checkpoint)
    details = {
        "checkpoint": str(checkpoint),
        "epoch": trained.get("epoch"),
        "val macro F1 (training)": trained.get("val_f1"),
        "shards": f"{shards} ({split})",
        "clips": f"{len(evaluated.truth)}" + ("" if in_labels.all() else
                 f" ({(~in_labels).sum()} background clips: no class of the model, scored by the open set only)"),
        "open set fitted on": f"{val_root} (val, {len(validation.truth)} clips, target miss {target_miss:g})",
        "preset": f"d_model {train_config.model.d_model}, {train_config.model.encoder_layers} layers",
    }
    write_report(Path(out), metrics, labels, history=history, title=f"slc evaluation: {split} split", details=details)
    log.info("%s: macro F1 %.4f on %d clips -> %s", split, metrics["macro"]["f1"], len(evaluated.truth), out)
    return metrics


def _read(roots: list[str], split: str, columns: list[str]) -> tuple[pa.Table, str]:
    """`columns` of `split` from the first of `roots` that has it, and that root."""
    reasons = []
    for root in roots:
        try:
            return read_split(root, split, columns=columns), root
        except ShardError as error:
            reasons.append(str(error))
    raise ShardError("; ".join(reasons))


def _scores(model, table: pa.Table, labels: LabelSet, batch_size: int, config: TrainConfig) -> SplitScores:
    """Softmax probabilities of every clip of `table` (whole, up to
    `config.eval_max_frames`), in its row order."""
    truth = np.asarray(table.column("lang").to_pylist(), dtype=object)
    unknown = sorted(set(truth.tolist()) - set(labels.codes) - {BACKGROUND})
    if unknown:
        raise ValueError(f"the split holds languages the checkpoint does not know: {unknown}")
    # collate's class ids are not used here, and a background clip has none
    # when the model has no background class.
    clips = table.select(["n_frames", "features"]).append_column("lang", pa.array([labels.codes[0]] * len(truth)))
    # Clips of similar length share a batch: less padding to compute.
    order = np.argsort(table.column("n_frames").to_numpy(), kind="stable")
    probabilities = np.empty((len(truth), len(labels)), dtype=np.float32)
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            features, lengths, _ = collate(clips.take(rows), labels, config.eval_max_frames, False, rng, config)
            probabilities[rows] = torch.softmax(model(features, lengths).float(), dim=-1).numpy()
    source = np.asarray(table.column("source_lang").to_pylist(), dtype=object)
    return SplitScores(probabilities, truth, source, table.column("duration_s").to_numpy().astype(np.float64))


def _trained_background(roots: list[str]) -> set[str] | None:
    """The languages the background class was trained on (`source_lang` of
    the training split's background clips), or None without a training split."""
    try:
        table, _ = _read(roots, "train", ["lang", "source_lang"])
    except ShardError:
        return None
    background = np.asarray(table.column("lang").to_pylist()) == BACKGROUND
    return set(np.asarray(table.column("source_lang").to_pylist(), dtype=object)[background].tolist())
