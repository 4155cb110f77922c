"""Accuracy of a bundle on speech it never heard, clean and degraded, and its
open-set figures.

`--conditions DIR` is a corpus made by `slc synth DIR --conditions` (unseen
voices and sentences, each clip under clean, noise, reverb, telephone and
codec conditions). Every clip is classified as `slc predict` does
(`Classifier`: decode, resample, trim, then the bundle's answer, open set
included when the bundle has one) and the table gives, per condition, macro
F1 and accuracy of the answer (`unknown` counts as wrong), the share answered
`unknown`, and the macro F1 of the top language alone (closed set); then all
degraded conditions together.

`--unknown DIR` adds the open-set figures: a corpus (tree or manifest) holding
languages outside the bundle's label set; `--unknown-langs` keeps only some,
e.g. the demo corpus's test background languages (the shards' `summary.json`
lists them), which the background class never trained on. From the score of
each clip (the calibrated probability of the best language in the set; none
when the background class wins), for in-set clips (the clean ones, and all of
them) against out-of-set clips: the false-accept rate at 5% miss, the equal
error rate, and the shares answered `unknown` at the bundle's defaults.

Run after `make demo` (or pass your own): `slc synth /tmp/cond --conditions
--per-lang 20 && python bench/accuracy.py --conditions /tmp/cond
[--bundle demo-output/bundle] [--unknown DIR]`.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from slc.data.corpus import discover
from slc.labels import BACKGROUND
from slc.runtime.classifier import Classifier, Prediction
from slc.runtime.openset import detection_scores
from slc.runtime.smoothing import UNKNOWN
from slc.training.metrics import equal_error_rate, false_accept_at_miss

TARGET_MISS = 0.05


def classify(classifier: Classifier, paths: Sequence[Path], batch: int = 32) -> list[Prediction]:
    """Each file's Prediction, clips decoded as `slc predict` decodes them and scored in shared batches."""
    predictions: list[Prediction] = []
    for start in range(0, len(paths), batch):
        clips = [classifier.load_audio(path) for path in paths[start : start + batch]]
        predictions += classifier.classify_batch(clips)
    return predictions


def top_language(prediction: Prediction) -> str:
    """The most probable language of the label set, whatever the open-set answer."""
    return next(code for code in prediction.probabilities if code != BACKGROUND)


def scores(truth: Sequence[str], predictions: Sequence[Prediction]) -> dict[str, float]:
    """Macro F1 (over the languages in `truth`) and accuracy of the answers; the
    share answered `unknown`; macro F1 of the top language alone."""
    answers = [p.language for p in predictions]
    labels = sorted(set(truth))
    return {
        "clips": len(truth),
        "macro_f1": f1_score(truth, answers, labels=labels, average="macro", zero_division=0),
        "accuracy": float(np.mean([a == t for a, t in zip(answers, truth)])),
        "unknown": float(np.mean([a == UNKNOWN for a in answers])),
        "closed_f1": f1_score(truth, [top_language(p) for p in predictions], labels=labels, average="macro",
                              zero_division=0),
    }  # fmt: skip


def condition_table(rows: Sequence[dict[str, str]], predictions: Sequence[Prediction]) -> dict[str, dict[str, float]]:
    """Scores per condition of the manifest, then all degraded conditions together."""
    table = {}
    names = sorted({row["condition"] for row in rows}, key=lambda name: (name != "clean", name))
    for name in [*names, "degraded"]:
        chosen = [i for i, row in enumerate(rows) if row["condition"] == name or (name == "degraded" and row["condition"] != "clean")]
        if chosen:
            table[name] = scores([rows[i]["lang"] for i in chosen], [predictions[i] for i in chosen])
    return table


def open_set_score(prediction: Prediction) -> float:
    """How surely a clip is in the label set, as `slc evaluate` scores it
    (`openset.detection_scores`)."""
    codes = list(prediction.probabilities)
    return float(detection_scores(np.array([list(prediction.probabilities.values())]), codes)[0])


def open_set_figures(in_set: Sequence[Prediction], out_of_set: Sequence[Prediction]) -> dict[str, float]:
    """Open-set figures (slc.training.metrics, as `slc evaluate` computes
    them): in-set clips should be accepted, out-of-set ones rejected.
    `fa_at_5_miss`: the share of out-of-set clips accepted at the threshold
    that rejects 5% of in-set clips; `eer`: where the two error rates meet;
    `unknown_out`, `unknown_in`: the shares answered `unknown` at the
    bundle's defaults."""
    target = np.array([open_set_score(p) for p in in_set])
    nontarget = np.array([open_set_score(p) for p in out_of_set])
    return {
        "in_clips": len(in_set),
        "out_clips": len(out_of_set),
        "fa_at_5_miss": false_accept_at_miss(target, nontarget, TARGET_MISS)["false_accept"],
        "eer": equal_error_rate(target, nontarget)["eer"],
        "unknown_out": float(np.mean([p.language == UNKNOWN for p in out_of_set])),
        "unknown_in": float(np.mean([p.language == UNKNOWN for p in in_set])),
    }


def read_conditions(root: Path) -> list[dict[str, str]]:
    manifest = root / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(f"{manifest} not found: make the corpus with `slc synth {root} --conditions`")
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "condition" not in rows[0]:
        raise SystemExit(f"{manifest} has no condition column: make the corpus with `slc synth {root} --conditions`")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("demo-output/bundle"))
    parser.add_argument("--conditions", type=Path, required=True, help="a corpus made by `slc synth DIR --conditions`")
    parser.add_argument("--unknown", type=Path, help="a corpus of languages outside the bundle's label set")
    parser.add_argument("--unknown-langs", help="only these languages of --unknown, e.g. those of the shards' test "
                        "background (summary.json): languages the background class never trained on")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads")
    args = parser.parse_args()
    if not (args.bundle / "bundle.json").is_file():
        raise SystemExit(f"{args.bundle} is not a bundle: run `make demo` first, or pass --bundle")
    classifier = Classifier(args.bundle, threads=args.threads)
    rows = read_conditions(args.conditions)
    start = time.perf_counter()
    predictions = classify(classifier, [args.conditions / row["path"] for row in rows])
    print(f"\n{args.bundle}: {len(rows)} clips of {args.conditions} in {time.perf_counter() - start:.0f} s; "
          f"open set {'on' if classifier.open_set is not None else 'off (the bundle has none)'}\n")  # fmt: skip
    print(f"{'condition':<11} {'clips':>5} {'macro F1':>8} {'accuracy':>8} {'unknown':>7} {'top-1 F1':>8}")
    for name, s in condition_table(rows, predictions).items():
        print(f"{name:<11} {s['clips']:>5} {s['macro_f1']:>8.3f} {s['accuracy']:>8.3f} {s['unknown']:>7.3f} "
              f"{s['closed_f1']:>8.3f}")  # fmt: skip
    if args.unknown is None:
        return
    wanted = set(args.unknown_langs.split(",")) if args.unknown_langs else None
    others = [c for c in discover(args.unknown).clips
              if c.lang not in classifier.labels.codes and (wanted is None or c.lang in wanted)]  # fmt: skip
    if not others:
        raise SystemExit(f"{args.unknown} holds no clips of languages outside {list(classifier.labels.codes)}")
    out_of_set = classify(classifier, [Path(c.path) for c in others])
    print(f"\nopen set: {len(others)} clips of {', '.join(sorted({c.lang for c in others}))} from {args.unknown}\n")
    print(f"{'in-set clips':<13} {'in':>5} {'out':>5} {'FA@5%miss':>9} {'EER':>6} {'unknown(out)':>12} {'unknown(in)':>11}")
    clean = [p for p, row in zip(predictions, rows) if row["condition"] == "clean"]
    for name, in_set in (("clean", clean), ("all", predictions)):
        f = open_set_figures(in_set, out_of_set)
        print(f"{name:<13} {f['in_clips']:>5} {f['out_clips']:>5} {f['fa_at_5_miss']:>9.3f} {f['eer']:>6.3f} "
              f"{f['unknown_out']:>12.3f} {f['unknown_in']:>11.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
