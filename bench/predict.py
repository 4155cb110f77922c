"""Per-file benchmark of `slc predict`: a loop of `Classifier.classify_file`
over many short files on one core, against the limit its stages set.

The stages, each timed alone over the same files in the same run: decode +
resample + trim (`load_audio`), fbank (`featurize`), the model
(`classify_features`). The limit is the real-time factor of doing just those,
one after another; the loop's ratio to it is what per-file overhead costs.
Each figure is the best of a few rounds (other work on the machine only
slows a round down). Target: the loop at >= 400x real time.

Run after `make demo` (or pass your own): `python bench/predict.py
[--bundle demo-output/bundle] [--clips demo-output/corpus]`.
"""

from __future__ import annotations

import os

# One core: every pool single-threaded, set before numpy or onnxruntime load.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import soundfile as sf

from slc.runtime.classifier import Classifier

AUDIO = (".wav", ".flac", ".ogg", ".mp3")


def best_seconds(work: Callable[[], object], rounds: int) -> float:
    """Wall time of `work`, the best of `rounds` after one warm-up."""
    work()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("demo-output/bundle"))
    parser.add_argument("--clips", type=Path, default=Path("demo-output/corpus"), help="a folder of short audio files")
    parser.add_argument("--files", type=int, default=200, help="files in the loop")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not (args.bundle / "bundle.json").is_file():
        raise SystemExit(f"{args.bundle} is not a bundle: run `make demo` first, or pass --bundle")
    files = sorted(p for p in args.clips.rglob("*") if p.suffix.lower() in AUDIO)[: args.files]
    if not files:
        raise SystemExit(f"no audio under {args.clips}: run `make demo` first, or pass --clips")
    classifier = Classifier(args.bundle, threads=1, batch_size=1)
    audio_s = sum(sf.info(path).duration for path in files)

    clips = [classifier.load_audio(path) for path in files]
    features = classifier.featurize(clips)
    durations = [len(c) / classifier.feature_config.sample_rate for c in clips]
    stages = {
        "decode + resample + trim": best_seconds(lambda: [classifier.load_audio(p) for p in files], args.rounds),
        "fbank": best_seconds(lambda: [classifier.featurize([c]) for c in clips], args.rounds),
        "model": best_seconds(
            lambda: [classifier.classify_features([f], [d]) for f, d in zip(features, durations)], args.rounds
        ),
    }
    loop = best_seconds(lambda: [classifier.classify_file(p) for p in files], args.rounds)

    print(f"\n{len(files)} files, {audio_s:.1f} s of audio ({audio_s / len(files):.1f} s each); one thread; "
          f"best of {args.rounds} rounds\n")
    for name, seconds in stages.items():
        print(f"{name:<26} {1e3 * seconds / len(files):7.2f} ms/file  {audio_s / seconds:7.0f}x real time")
    limit = audio_s / sum(stages.values())
    print(f"{'limit (stages in a row)':<26} {1e3 * sum(stages.values()) / len(files):7.2f} ms/file  {limit:7.0f}x real time")
    print(f"{'classify_file loop':<26} {1e3 * loop / len(files):7.2f} ms/file  {audio_s / loop:7.0f}x real time")
    print(f"\nloop / limit: {audio_s / loop / limit:.2f} (target: loop >= 400x real time)")


if __name__ == "__main__":
    main()
