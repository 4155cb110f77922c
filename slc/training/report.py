"""Evaluation report: a metrics dict (from `slc.training.metrics`) -> `report.md` with
Markdown tables, `confusion.png`, `training.png` (when there is a training
history) and `metrics.json`, all in one directory. The open-set, calibration
(with `reliability.png`) and duration sections (slc.training.assessment)
appear when the metrics hold them."""

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
    if "calibration" in metrics:
        plot_reliability(metrics["calibration"], out_dir / "reliability.png")
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
    the confusion matrix, the open-set, calibration and duration sections
    when the metrics hold them, and the embedded plots."""
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
    if "open_set" in metrics:
        sections.append(open_set_markdown(metrics["open_set"]))
    if "calibration" in metrics:
        sections.append(calibration_markdown(metrics["calibration"]))
    if "by_duration" in metrics:
        sections.append("## By clip duration\n\nThe most probable class, as in the tables above.\n\n" + _table(
            ["duration", "clips", "accuracy", "macro F1"],
            [[row["range"], str(row["clips"]), _cell(row["accuracy"]), _cell(row["macro_f1"])] for row in metrics["by_duration"]],
        ))
    if with_training:
        sections.append("## Training\n\n![training](training.png)")
    return "\n\n".join(sections) + "\n"


def open_set_summary(metrics: dict[str, Any]) -> str:
    """Two lines for the terminal: the open-set answer's in-set F1 and false
    accepts, and the calibration error before and after temperature scaling."""
    open_set, calibration = metrics["open_set"], metrics["calibration"]
    background = open_set["background"]
    if background:
        at_miss = background["at_miss"]
        false_accepts = (f"false accepts {at_miss['false_accept']:.1%} at {at_miss['target_miss']:.0%} miss, EER "
                         f"{background['eer']['eer']:.1%}, {background['false_accept']:.1%} at the fitted threshold")
    else:
        false_accepts = "no background clips"
    return (f"open set: in-set macro F1 {open_set['answers']['macro_f1']:.4f} with 'unknown' answers; {false_accepts}\n"
            f"calibration error {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} "
            f"(temperature {calibration['temperature']:.3g})")


def open_set_markdown(figures: dict[str, Any]) -> str:
    """The open-set section: the rule, the in-set scores with `unknown`
    answers, the background figures (or why there are none) and the answers'
    confusion."""
    background_rule = " or the background class `other` wins" if figures["background_class"] else ""
    answers = figures["answers"]
    parts = [
        "## Open set",
        (f"The answer of a bundle exported with these settings: probabilities at temperature "
         f"{figures['temperature']:.4g}, and `unknown` when the best language of the set is below "
         f"{figures['threshold']:.4f}{background_rule}. The threshold rejects at most {figures['target_miss']:.0%} of the "
         "validation split's clips in the set. A background clip answered `unknown` is right."),
        _table(["in-set macro F1", "accuracy (all clips)", "in-set clips answered unknown"],
               [[_number(answers["macro_f1"]), _number(answers["accuracy"]), _cell(figures["in_set_rejected"])]]),
        _background_markdown(figures),
        "Answers (rows: true language; columns: answer):\n\n" + _table(
            ["true \\ answer", *figures["confusion"]["columns"]],
            [[row, *map(str, counts)] for row, counts in zip(figures["confusion"]["rows"], figures["confusion"]["counts"])],
        ),
    ]
    return "\n\n".join(parts)


def _background_markdown(figures: dict[str, Any]) -> str:
    excluded = ", ".join(f"{language} ({clips})" for language, clips in figures["excluded"].items())
    background = figures["background"]
    if background is None:
        if excluded:
            return (f"### Background clips\n\nEvery background clip is of a language the background class was "
                    f"trained on ({excluded}): no false-accept figures.")
        return ("### Background clips\n\nThe split has no background clips (speech in languages outside the label "
                "set, `other`): no false-accept rate or EER.")
    if not figures["disjoint_checked"]:
        provenance = ("No training split was found to check these languages against those the background class "
                      "was trained on.")
    elif excluded:
        provenance = f"Left out, as languages the background class was trained on: {excluded}."
    else:
        provenance = "None of these languages was used to train the background class."
    at_miss, eer = background["at_miss"], background["eer"]
    miss = f"{at_miss['target_miss']:.0%} miss"
    return "\n\n".join([
        f"### Background clips\n\nFalse accepts: background clips answered with a language of the set. {provenance}",
        _table(["background clips", f"false accepts at {miss}", f"threshold at {miss}", "EER", "EER threshold",
                "false accepts at the fitted threshold"],
               [[str(background["clips"]), _number(at_miss["false_accept"]), _number(at_miss["threshold"]),
                 _number(eer["eer"]), _number(eer["threshold"]), _number(background["false_accept"])]]),
        _table(["language", "clips", "accepted", f"accepted at {miss}", "accepted as"],
               [[row["language"], str(row["clips"]), str(row["accepted"]), str(row["accepted_at_miss"]),
                 ", ".join(f"{code} {n}" for code, n in row["accepted_as"].items()) or "-"]
                for row in background["by_language"]]),
    ])  # fmt: skip


def calibration_markdown(calibration: dict[str, Any]) -> str:
    """The calibration section: expected calibration error before and after
    temperature scaling, the calibrated reliability bins and their plot."""
    bins = [row for row in calibration["reliability"] if row["count"]]
    return (
        f"## Calibration\n\nExpected calibration error ({len(calibration['reliability'])} bins) of the most probable "
        f"class's probability: {calibration['ece_before']:.4f} before and {calibration['ece_after']:.4f} after "
        f"temperature scaling (T = {calibration['temperature']:.4g}).\n\n"
        + _table(["confidence", "clips", "mean confidence", "accuracy"],
                 [[f"{row['low']:.1f}-{row['high']:.1f}", str(row["count"]), _number(row["confidence"]),
                   _number(row["accuracy"])] for row in bins])
        + "\n\n![reliability](reliability.png)"
    )  # fmt: skip


def plot_reliability(calibration: dict[str, Any], path: Path) -> None:
    """Reliability diagram: accuracy against mean confidence per bin, before
    and after temperature scaling, above the calibrated bins' clip counts."""
    figure = Figure(figsize=(6, 7), layout="constrained")
    curve_axes, count_axes = figure.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    curve_axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    for key, name, style in (("reliability_before", "before", "--"), ("reliability", "after", "-")):
        bins = [row for row in calibration[key] if row["count"]]
        curve_axes.plot([row["confidence"] for row in bins], [row["accuracy"] for row in bins], style, marker="o",
                        label=f"{name} temperature scaling (ECE {calibration['ece_' + name]:.3f})")
    curve_axes.set(title=f"Reliability (T = {calibration['temperature']:.3g})", ylabel="accuracy", xlim=(0, 1),
                   ylim=(0, 1.02))
    curve_axes.legend(loc="lower right")
    bins = calibration["reliability"]
    bars = count_axes.bar([(row["low"] + row["high"]) / 2 for row in bins], [row["count"] for row in bins],
                          width=bins[0]["high"] - bins[0]["low"], edgecolor="white")
    count_axes.bar_label(bars, [str(row["count"]) if row["count"] else "" for row in bins])
    count_axes.set(xlabel="confidence (calibrated)", ylabel="clips", ylim=(0, 1.3 * max(row["count"] for row in bins)))
    for axes in (curve_axes, count_axes):
        axes.grid(alpha=0.3)
    figure.savefig(path, dpi=100)


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
