"""Evaluation report: a metrics dict (from `slc.training.metrics`) -> `report.md` with
Markdown tables, `confusion.png`, `training.png` (when there is a training
history) and `metrics.json`, all in one directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# The object-oriented API without pyplot: no global figure state, no backend
# selection, no display; savefig renders with Agg. Safe in Ray workers.
from matplotlib.figure import Figure

from slc.labels import LabelSet

# Beyond this many classes the cells are too small to hold readable numbers.
MAX_ANNOTATED_CLASSES = 20


def write_report(
    out_dir: Path,
    metrics: dict[str, Any],
    labels: LabelSet,
    history: list[dict[str, Any]] | None = None,
    title: str = "slc evaluation report",
    details: dict[str, Any] | None = None,
) -> Path:
    """Write the report files into `out_dir` (created if missing).

    `metrics` is the dict of `slc.metrics.classification_metrics`; `history`
    holds one dict per epoch with `epoch`, `train_loss`, `val_loss` and
    `val_f1`; `details` (e.g. checkpoint, epoch, shards, clips) becomes a
    small table under the title. Returns the path of `report.md`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(np.asarray(metrics["confusion"]), labels, out_dir / "confusion.png")
    if history:
        plot_history(history, out_dir / "training.png")
    saved = {**metrics, "history": history} if history else metrics
    (out_dir / "metrics.json").write_text(json.dumps(saved, indent=2) + "\n")
    report = out_dir / "report.md"
    report.write_text(markdown(metrics, labels, title, details, with_training=bool(history)))
    return report


def markdown(
    metrics: dict[str, Any], labels: LabelSet, title: str, details: dict[str, Any] | None, with_training: bool
) -> str:
    """The text of `report.md`: title, details, average and per-class tables,
    the confusion matrix and the embedded plots."""
    macro = metrics["macro"]
    sections = [f"# {title}"]
    if details:
        sections.append(_table(["detail", "value"], [[key, _cell(value)] for key, value in details.items()]))
    sections.append("## Average\n\nMacro average over the languages present in the truth or the predictions.\n\n" + _table(
        ["accuracy", "precision", "recall", "F1", "IoU", "clips"],
        [[_number(metrics["accuracy"]), *(_number(macro[k]) for k in ("precision", "recall", "f1", "iou")),
          str(metrics["n"])]],
    ))
    per_class = metrics["per_class"]
    sections.append("## Per class\n\n" + _table(
        ["language", "F1", "precision", "recall", "IoU", "clips"],
        [[code, *(_number(per_class[code][k]) for k in ("f1", "precision", "recall", "iou")),
          str(per_class[code]["support"])] for code in labels.codes],
    ))
    sections.append("## Confusion matrix\n\nRows: true language; columns: predicted.\n\n" + _table(
        ["true \\ predicted", *labels.codes],
        [[code, *map(str, row)] for code, row in zip(labels.codes, metrics["confusion"])],
    ))
    sections.append("![confusion](confusion.png)")
    if with_training:
        sections.append("## Training\n\n![training](training.png)")
    return "\n\n".join(sections) + "\n"


def plot_confusion(counts: np.ndarray, labels: LabelSet, path: Path) -> None:
    """Counts (n x n, rows true) -> a PNG of two heatmaps: the counts, and each
    row divided by its total (recall on the diagonal)."""
    totals = counts.sum(axis=1, keepdims=True)
    # A language with no clips keeps an empty row instead of a division by zero.
    normalised = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = min(max(4.0, 0.45 * len(labels) + 2.0), 30.0)
    figure = Figure(figsize=(2 * side + 1.5, side), layout="constrained")
    count_axes, share_axes = figure.subplots(1, 2)
    _heatmap(figure, count_axes, counts, labels, "Counts", "{:d}", vmax=max(int(counts.max()), 1))
    _heatmap(figure, share_axes, normalised, labels, "Share of true language (rows sum to 1)", "{:.2f}", vmax=1.0)
    figure.savefig(path, dpi=100)


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Per-epoch dicts (`epoch`, `train_loss`, `val_loss`, `val_f1`) -> a PNG
    with the losses in one panel and validation macro F1 in another."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, f1_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_axes.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    loss_axes.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    loss_axes.legend()
    f1 = [row["val_f1"] for row in history]
    best = int(np.argmax(f1))
    f1_axes.plot(epochs, f1, marker="o", color="tab:green")
    f1_axes.plot(epochs[best], f1[best], marker="o", markersize=14, fillstyle="none", color="black")
    f1_axes.set(title=f"Validation macro F1 (best {f1[best]:.4f}, epoch {epochs[best]})", xlabel="epoch",
                ylabel="F1", ylim=(0, 1.05))
    for axes in (loss_axes, f1_axes):
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
    figure.savefig(path, dpi=100)


def _heatmap(figure: Figure, axes, values: np.ndarray, labels: LabelSet, title: str, fmt: str, vmax: float) -> None:
    image = axes.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    ticks = np.arange(len(labels))
    axes.set_xticks(ticks, labels.codes, rotation=90 if len(labels) > MAX_ANNOTATED_CLASSES else 0)
    axes.set_yticks(ticks, labels.codes)
    axes.set(title=title, xlabel="predicted", ylabel="true")
    figure.colorbar(image, ax=axes, shrink=0.8)
    if len(labels) > MAX_ANNOTATED_CLASSES:
        return
    for (row, col), value in np.ndenumerate(values):
        # Dark cells get white text so the number stays legible.
        colour = "white" if value > 0.6 * vmax else "black"
        axes.text(col, row, fmt.format(value), ha="center", va="center", color=colour)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _number(value: float) -> str:
    return f"{value:.4f}"


def _cell(value: Any) -> str:
    """A details value as table text: floats to 4 decimals, pipes escaped."""
    if value is None:
        return "n/a"
    text = _number(value) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")
