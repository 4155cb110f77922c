"""Batch labelling benchmark: `slc label` end to end on Ray against a plain
sequential loop over `slc predict`'s code path (`Classifier.load_audio` +
`classify` per file, one thread), on the same files in the same run.

The files: demo clips until there are at least `--minutes` of audio in all,
`--long` of it as recordings of `--long-minutes` each, made by joining clips
of different languages (they go through sliding windows). `slc label` runs
twice: first on a fresh cluster (worker processes start, imports, model
loads: end to end as a user's first job sees it), then again (warm).

Run after `make demo` (or pass your own): `python bench/label.py
[--bundle demo-output/bundle] [--corpus demo-output/corpus]`.
"""

from __future__ import annotations

import os

# Ray runs its workers at niceness 15 and this process runs the sequential loop
# at 0: on a shared machine the comparison would measure the scheduler.
os.environ.setdefault("RAY_worker_niceness", "0")

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import soundfile as sf

from slc.config import LabelConfig
from slc.data.corpus import AUDIO_EXTENSIONS
from slc.apps.label import label, read_labels
from slc.runtime.classifier import Classifier

TARGET_PER_CORE = 300.0  # audio-seconds per wall-second per core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("demo-output/bundle"))
    parser.add_argument("--corpus", type=Path, default=Path("demo-output/corpus"))
    parser.add_argument("--minutes", type=float, default=30.0, help="Audio in all, long recordings included.")
    parser.add_argument("--long", type=int, default=3, help="Long recordings among it.")
    parser.add_argument("--long-minutes", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=LabelConfig.concurrency)
    parser.add_argument("--cpus-per-task", type=float, default=LabelConfig.cpus_per_task)
    args = parser.parse_args()
    for path in (args.bundle, args.corpus):
        if not path.is_dir():
            raise SystemExit(f"{path} does not exist: run `make demo` first, or pass --bundle and --corpus")

    with tempfile.TemporaryDirectory(prefix="slc-bench-label-") as scratch:
        files, file_s = choose_files(args.corpus, Path(scratch), args.minutes * 60, args.long, args.long_minutes * 60)
        listing = Path(scratch) / "files.txt"
        listing.write_text("".join(f"{f}\n" for f in files))
        ray.init(include_dashboard=False, log_to_driver=False)
        config = LabelConfig(concurrency=args.concurrency, cpus_per_task=args.cpus_per_task)
        runs = [label([str(listing)], args.bundle, str(Path(scratch) / name), config) for name in ("cold", "warm")]
        labels = {r["path"]: r["language"] for r in read_labels(Path(scratch) / "cold").to_pylist()}
        sequential_s, sequential_audio_s, answers = sequential_predict(files, args.bundle)
    report(runs, file_s, sequential_s, sequential_audio_s, labels, answers)


def choose_files(corpus: Path, scratch: Path, total_s: float, n_long: int, long_s: float) -> tuple[list[str], float]:
    """(files, seconds of audio in them): corpus clips, languages in turn,
    until `total_s` with the long recordings joined from clips after them."""
    folders = [d for d in sorted(corpus.iterdir()) if d.is_dir()]
    by_language = [sorted(p for p in d.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS) for d in folders]
    clips = [p for group in itertools.zip_longest(*by_language) for p in group if p is not None]
    chosen, seconds = [], 0.0
    remaining = iter(clips)
    for clip in remaining:
        if seconds >= total_s - n_long * long_s:
            break
        chosen.append(str(clip))
        seconds += sf.info(clip).duration
    joined = [str(join_clips(remaining, scratch / f"long-{i}.wav", long_s)) for i in range(n_long)]
    return chosen + joined, seconds + n_long * long_s


def join_clips(clips, out: Path, seconds: float) -> Path:
    """One recording of `seconds` from the next clips (a run of languages), at their sample rate."""
    parts, length, rate = [], 0, None
    for clip in clips:
        samples, clip_rate = sf.read(clip, dtype="float32", always_2d=True)
        if rate is not None and clip_rate != rate:
            continue
        rate = clip_rate
        parts.append(samples[:, 0])
        length += len(samples)
        if length >= seconds * rate:
            break
    if rate is None or length < seconds * rate:
        raise SystemExit(f"not enough clips left to join {seconds:.0f} s of audio: use a bigger corpus or fewer --long")
    sf.write(out, np.concatenate(parts)[: int(seconds * rate)], rate, subtype="PCM_16")
    return out


def sequential_predict(files: list[str], bundle: Path) -> tuple[float, float, dict[str, str]]:
    """`slc predict`'s loop: (wall s, audio s, language per file), one thread."""
    classifier = Classifier(bundle, threads=1)
    started = time.perf_counter()
    audio_s, answers = 0.0, {}
    for path in files:
        prediction = classifier.classify(classifier.load_audio(path))
        audio_s += prediction.duration_s
        answers[path] = prediction.language
    return time.perf_counter() - started, audio_s, answers


def report(
    runs: list[dict], file_s: float, sequential_s: float, sequential_audio_s: float, labels: dict, answers: dict
) -> None:
    """Speeds count the audio both classify: what is left after silence trimming."""
    audio_s, cores = runs[0]["audio_hours"] * 3600, runs[0]["cores"]
    sequential_speed = sequential_audio_s / sequential_s
    agree = sum(labels.get(path) == language for path, language in answers.items()) / len(answers)
    print(
        f"\n{runs[0]['listed']} files, {file_s / 60:.1f} min of audio ({audio_s / 60:.1f} min after silence "
        f"trimming), {cores:g} cores\n"
    )
    print(f"{'':<30}{'wall s':>7}  {'x real time':>11}  {'per core':>9}  {'vs sequential':>13}")
    names = ("slc label, fresh cluster", "slc label, warm")
    rows = [(name, run["wall_s"], audio_s / run["wall_s"], cores) for name, run in zip(names, runs)]
    rows.append(("sequential predict loop", sequential_s, sequential_speed, 1))
    for name, wall_s, speed, used in rows:
        print(f"{name:<30}{wall_s:>7.1f}  {speed:>10.0f}x  {speed / used:>8.0f}x  {speed / sequential_speed:>12.2f}x")
    print(f"\ntarget >= {TARGET_PER_CORE:.0f}x real time per core; label and the loop agree on {agree:.1%} of the files")


if __name__ == "__main__":
    main()
