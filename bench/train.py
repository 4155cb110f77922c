"""Training throughput benchmark: samples per second per worker, and the share
of step time spent waiting for data (target < 10%), from a short `slc train`
run on the demo corpus.

Both figures are measured inside the training loop of every worker and summed
over workers before they are reported, so they describe the real run, not a
synthetic loop. The first epoch includes start-up (worker processes, first
batches) and is shown apart.

Run: `python bench/train.py [--per-lang 100] [--epochs 3] [--workers 2] [--out bench-output]`
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

from slc.batch import cluster
from slc.config import AugmentConfig, IngestConfig, ModelConfig, TrainConfig
from slc.data.ingest import ingest
from slc.data.synth import make_corpus
from slc.training.loop import train


def shards_for(out: Path, per_lang: int, augment: int) -> Path:
    """A demo corpus and its shards, made once and reused while complete."""
    corpus = out / f"train-corpus-{per_lang}"
    shards = out / f"train-shards-{per_lang}-aug{augment}"
    if not (corpus / "manifest.csv").is_file():
        make_corpus(corpus, per_lang=per_lang, seed=0)
    if not (shards / "summary.json").is_file():
        ingest(corpus, str(shards), IngestConfig(augment=AugmentConfig(copies=augment)), overwrite=True)
    return shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-lang", type=int, default=100)
    parser.add_argument("--augment", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--out", type=Path, default=Path("bench-output"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cluster.init(include_dashboard=False, log_to_driver=False)
    shards = shards_for(args.out, args.per_lang, args.augment)
    summary = json.loads((shards / "summary.json").read_text())
    config = TrainConfig(model=ModelConfig.preset(args.preset), epochs=args.epochs, workers=args.workers)
    with tempfile.TemporaryDirectory() as run:
        train(str(shards), run, config)
        history = json.loads((Path(run) / "best" / "history.json").read_text())
    cluster.shutdown()

    clips = summary["splits"]["train"]["clips"] + summary["augmented"]["clips"]
    print(f"\n{clips} training clips per epoch, preset {args.preset}, {args.workers} workers, batch {config.batch_size}")
    print(f"{'epoch':>5}  {'samples/s/worker':>16}  {'data wait':>9}")
    for row in history:
        print(f"{row['epoch']:>5}  {row['samples_per_s_per_worker']:>16.1f}  {100 * row['data_wait_share']:>8.1f}%")
    steady = history[1:] or history
    rate = sum(r["samples_per_s_per_worker"] for r in steady) / len(steady)
    wait = sum(r["data_wait_share"] for r in steady) / len(steady)
    print(f"\ntrain: {rate:.1f} samples/s per worker, {100 * wait:.1f}% of step time waiting for data "
          f"(target < 10%; epochs 2..{len(history)})")


if __name__ == "__main__":
    main()
