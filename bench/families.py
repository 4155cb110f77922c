"""Sample efficiency of the encoder families: val macro F1 after the same
training batches, and the cost of a step.

Each preset (`--presets tiny,tdnn`) trains in this process on one thread from
the same seed, on the same random batches of `--max-frames` crops of a shard
directory's train split (SpecAugment as `slc train` does), AdamW with linear
warmup and decay over `--steps`; every `--every` steps it scores the whole val
split. What `docs/experiments.md` quotes for choosing the demo's family.

    python bench/families.py --shards demo-output/shards --steps 600
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from slc.config import ModelConfig, TrainConfig
from slc.data.shards import read_split
from slc.labels import LabelSet
from slc.training.batches import COLUMNS, collate
from slc.training.metrics import classification_metrics
from slc.training.model import LanguageClassifier, count_parameters


def val_f1(model, table, labels, config) -> float:
    model.eval()
    truth, predicted = [], []
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        for start in range(0, table.num_rows, 32):
            features, lengths, targets = collate(table.slice(start, 32), labels, config.eval_max_frames, False, rng, config)
            predicted += model(features, lengths).argmax(-1).tolist()
            truth += targets.tolist()
    model.train()
    return classification_metrics(truth, predicted, labels)["macro"]["f1"]


def run(preset: str, train, val, labels, config: TrainConfig, steps: int, every: int) -> list[tuple[int, float, float]]:
    """-> (step, val macro F1, seconds of training so far) every `every` steps."""
    torch.manual_seed(config.seed)
    model = LanguageClassifier.build(ModelConfig.preset(preset), len(labels))
    print(f"{preset}: {count_parameters(model) / 1e6:.2f} M parameters", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    rng = np.random.default_rng(config.seed)
    trained_s, points = 0.0, []
    for step in range(1, steps + 1):
        started = time.perf_counter()
        rows = rng.integers(0, train.num_rows, config.batch_size)
        features, lengths, targets = collate(train.take(rows), labels, config.max_frames, True, rng, config)
        loss = loss_fn(model(features, lengths), targets)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
        trained_s += time.perf_counter() - started
        if step % every == 0:
            points.append((step, val_f1(model, val, labels, config), trained_s))
            print(f"  step {step:>5}  val macro F1 {points[-1][1]:.3f}  {trained_s:.0f} s", flush=True)
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="demo-output/shards")
    parser.add_argument("--presets", default="tiny,tdnn")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-frames", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    labels = LabelSet.from_json(open(f"{args.shards}/labels.json").read())
    config = TrainConfig(batch_size=args.batch_size, max_frames=args.max_frames)
    train, val = read_split(args.shards, "train", COLUMNS), read_split(args.shards, "val", COLUMNS)
    results = {preset: run(preset, train, val, labels, config, args.steps, args.every) for preset in args.presets.split(",")}
    print(f"\nval macro F1 after the same batches ({args.shards}, batch {args.batch_size}, {args.max_frames}-frame crops, one thread)")
    steps = [step for step, _, _ in next(iter(results.values()))]
    print(f"{'preset':<8}" + "".join(f"{s:>8}" for s in steps) + f"{'s/100 steps':>13}")
    for preset, points in results.items():
        per_100 = 100 * points[-1][2] / points[-1][0]
        print(f"{preset:<8}" + "".join(f"{f1:>8.3f}" for _, f1, _ in points) + f"{per_100:>13.1f}")


if __name__ == "__main__":
    main()
