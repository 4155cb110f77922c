"""Batch labelling benchmark: `slc label` end to end on Ray against a plain
sequential loop over `slc predict`'s code path (`Classifier.load_audio` +
`classify` per file, one thread), on the same files in the same run.

The files: demo clips until there are at least `--minutes` of audio in all,
`--long` of it as recordings of `--long-minutes` each, made by joining clips
of different languages (they go through sliding windows). Each of `--rounds`
rounds starts Ray afresh and runs `slc label` in the fused shape (cold: Ray's
start, worker processes, imports and model loads included, as a user's first
job sees it), then warm, then in the pool shape twice (its first run pays for
Ray Data's start, which the fused shape does without), then the sequential
loop; ratios are taken within a round (the machine may be shared) and their
median printed.

The ceiling for that ratio: as many sequential loops as there are cores, at
once, each in a process of its own over its share of the files, no Ray.

Where the time goes: the sequential work split into stages (listing,
reading, decoding, resampling, fbank, model, writing), on one core, and for
each pipeline run what its cores spent beyond that work (scheduling, idle
cores, Ray Data), with the object-store round trip the pool shape pays for
its features measured apart.

Run after `make demo` (or pass your own): `python bench/label.py
[--bundle demo-output/bundle] [--corpus demo-output/corpus] [--rounds 3]`.
"""

from __future__ import annotations

import os

# Ray runs its workers at niceness 15 and this process runs the sequential loop
# at 0: on a shared machine the comparison would measure the scheduler.
os.environ.setdefault("RAY_worker_niceness", "0")
# The loop runs on one core: numpy's BLAS on one thread, as Ray's workers
# have it (OMP_NUM_THREADS=1). Left to itself, OpenBLAS would lend the loop's
# fbank the second core, and the loop would not be one core's.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import io
import itertools
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import soundfile as sf
import soxr

from slc.apps.label import label, read_batch, read_labels
from slc.apps.label_output import output_schema, writer
from slc.audio import trim_silence
from slc.batch import cluster
from slc.batch.inputs import list_inputs, read_bytes
from slc.config import LabelConfig
from slc.data.corpus import AUDIO_EXTENSIONS
from slc.runtime.classifier import Classifier
from slc.runtime.windows import window_bounds

TARGET_PER_CORE = {"warm": 400.0, "cold": 250.0}  # audio-seconds per wall-second per core
TARGET_VS_LOOP = 1.6  # slc label over the sequential loop, all cores against one
RUNS = ("fused, cold", "fused, warm", "pool, first", "pool, warm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("demo-output/bundle"))
    parser.add_argument("--corpus", type=Path, default=Path("demo-output/corpus"))
    parser.add_argument("--minutes", type=float, default=30.0, help="Audio in all, long recordings included.")
    parser.add_argument("--long", type=int, default=3, help="Long recordings among it.")
    parser.add_argument("--long-minutes", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3, help="Fresh Ray, label runs and the loop, this many times.")
    args = parser.parse_args()
    for path in (args.bundle, args.corpus):
        if not path.is_dir():
            raise SystemExit(f"{path} does not exist: run `make demo` first, or pass --bundle and --corpus")

    with tempfile.TemporaryDirectory(prefix="slc-bench-label-") as scratch:
        # Absolute: a listing's relative paths are read from the listing's own folder.
        corpus = args.corpus.resolve()
        files, file_s = choose_files(corpus, Path(scratch), args.minutes * 60, args.long, args.long_minutes * 60)
        listing = Path(scratch) / "files.txt"
        listing.write_text("".join(f"{f}\n" for f in files))
        rounds = [one_round(listing, args.bundle, Path(scratch) / f"round{r}", files) for r in range(args.rounds)]
        stages = stage_times(files, args.bundle, listing)
    report(rounds, stages, file_s)


def one_round(listing: Path, bundle: Path, out: Path, files: list[str]) -> dict:
    """A fresh Ray: the label runs of RUNS, then the sequential loop. Walls in
    seconds; `audio_s` is the audio both classify (after silence trimming)."""
    started = time.perf_counter()
    cluster.init(include_dashboard=False, log_to_driver=False)
    init_s = time.perf_counter() - started
    try:
        walls, summaries = {}, {}
        for name in RUNS:
            shape = name.split(",")[0]
            config = LabelConfig(shape=shape)
            summaries[name] = label([str(listing)], bundle, str(out / name.replace(", ", "-")), config)
            if summaries[name]["failed"]:
                raise SystemExit(f"{name}: {summaries[name]['failed']} files failed {summaries[name]['errors_by_reason']}")
            walls[name] = summaries[name]["wall_s"] + (init_s if name.endswith("cold") else 0.0)
        cores = summaries[RUNS[0]]["cores"]
        labels = {r["path"]: r["language"] for r in read_labels(out / "fused-cold").to_pylist()}
    finally:
        cluster.shutdown()
    loop_s, loop_audio_s, answers = sequential_predict(files, bundle)
    loops_s, loops_audio_s = loops_at_once(files, bundle, int(cores))
    agree = sum(labels.get(path) == language for path, language in answers.items()) / len(answers)
    audio_s = summaries[RUNS[0]]["audio_hours"] * 3600
    return {"init_s": init_s, "walls": walls, "cores": cores, "audio_s": audio_s, "loop_s": loop_s,
            "loop_audio_s": loop_audio_s, "loops_s": loops_s, "loops_audio_s": loops_audio_s,
            "agree": agree, "listed": summaries[RUNS[0]]["listed"]}  # fmt: skip


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
    return _timed_loop(Classifier(bundle, threads=1), files)


def _timed_loop(classifier: Classifier, files: list[str]) -> tuple[float, float, dict[str, str]]:
    started = time.perf_counter()
    audio_s, answers = 0.0, {}
    for path in files:
        prediction = classifier.classify(classifier.load_audio(path))
        audio_s += prediction.duration_s
        answers[path] = prediction.language
    return time.perf_counter() - started, audio_s, answers


def loops_at_once(files: list[str], bundle: Path, n: int) -> tuple[float, float]:
    """`n` sequential loops at once, each in a process of its own over every
    n-th file, started together once their models are loaded: (wall s of the
    slowest, audio s of all). What `n` cores give this work without Ray."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(n), context.Queue()
    loops = [context.Process(target=_loop_in_step, args=(files[i::n], bundle, barrier, results)) for i in range(n)]
    for loop in loops:
        loop.start()
    done = [results.get() for _ in loops]
    for loop in loops:
        loop.join()
    return max(seconds for seconds, _ in done), sum(audio_s for _, audio_s in done)


def _loop_in_step(files: list[str], bundle: Path, barrier, results) -> None:
    classifier = Classifier(bundle, threads=1)
    barrier.wait()
    seconds, audio_s, _ = _timed_loop(classifier, files)
    results.put((seconds, audio_s))


def stage_times(files: list[str], bundle: Path, listing: Path) -> dict[str, float]:
    """Seconds of each step of labelling `files` on one core, done step by
    step as the sequential loop does them, and the object-store round trip
    of the features the pool shape moves (put and get of read_batch's output)."""
    classifier = Classifier(bundle, threads=1)
    config, rate = classifier.audio_config, classifier.feature_config.sample_rate
    names = ("reading (bytes)", "decoding (libsndfile)", "resampling (soxr)", "trimming silence", "fbank", "model")
    stages = dict.fromkeys(["listing", *names, "writing (parquet)", "object store (pool's features)"], 0.0)
    started = time.perf_counter()
    found = list_inputs([str(listing)])
    stages["listing"] = time.perf_counter() - started
    rows = []
    for entry in found.items:
        marks = [time.perf_counter()]
        data = read_bytes([entry], found.filesystems)[0]
        marks.append(time.perf_counter())
        samples, file_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        marks.append(time.perf_counter())
        clip = np.ascontiguousarray(soxr.resample(samples[:, 0], file_rate, rate, quality="HQ"), dtype=np.float32)
        marks.append(time.perf_counter())
        clip = trim_silence(clip, rate, config.trim_top_db)
        marks.append(time.perf_counter())
        pieces = [clip[s:e] for s, e in _pieces(classifier, len(clip))]
        features = [f for start in range(0, len(pieces), 16) for f in classifier.featurize(pieces[start : start + 16])]
        marks.append(time.perf_counter())
        prediction = classifier.classify_features(features, [len(p) / rate for p in pieces])[0]
        marks.append(time.perf_counter())
        for name, begin, end in zip(names, marks, marks[1:]):
            stages[name] += end - begin
        rows.append({"path": entry["path"], "language": prediction.language, "confidence": prediction.confidence,
                     "probabilities": prediction.top(3), "duration_s": len(clip) / rate})  # fmt: skip
    started = time.perf_counter()
    with pa.OSFile(str(listing.with_suffix(".parquet")), "wb") as stream:
        writer("parquet")(pa.Table.from_pylist(rows, schema=output_schema(False)), stream)
    stages["writing (parquet)"] = time.perf_counter() - started
    stages["object store (pool's features)"] = _object_store_round_trip(found, str(bundle))
    return stages


def _pieces(classifier: Classifier, n_samples: int) -> list[tuple[int, int]]:
    """The whole clip, or the sliding windows a long recording is cut into."""
    if n_samples <= classifier.window.whole_clip_max_s * classifier.feature_config.sample_rate:
        return [(0, n_samples)]
    rate = classifier.feature_config.sample_rate
    return window_bounds(n_samples, round(classifier.window.window_s * rate), round(classifier.window.hop_s * rate))


def _object_store_round_trip(found, bundle: str) -> float:
    """Seconds to put read_batch's output (features, waveforms of long
    recordings) into a local object store and get it back, in 16-file blocks:
    a lower bound of what the pool shape pays (one process, no Ray Data)."""
    blocks = [
        read_batch(pa.Table.from_pylist(found.items[i : i + 16]), found.filesystems, bundle, LabelConfig())
        for i in range(0, len(found.items), 16)
    ]
    cluster.init(include_dashboard=False, log_to_driver=False)
    try:
        started = time.perf_counter()
        for block in blocks:
            ray.get(ray.put(block))
        return time.perf_counter() - started
    finally:
        cluster.shutdown()


def report(rounds: list[dict], stages: dict[str, float], file_s: float) -> None:
    """Median over rounds of each ratio taken within a round."""
    first = rounds[0]
    audio_s, cores = first["audio_s"], first["cores"]
    print(f"\n{first['listed']} files, {file_s / 60:.1f} min of audio ({audio_s / 60:.1f} min after silence trimming), "
          f"{cores:g} cores, {len(rounds)} rounds; ray.init {statistics.median(r['init_s'] for r in rounds):.1f} s")  # fmt: skip
    print(f"\n{'':<34}{'wall s':>7}  {'per core':>9}  {'vs sequential loop':>18}")
    for name in RUNS:
        wall = statistics.median(r["walls"][name] for r in rounds)
        per_core = statistics.median(r["audio_s"] / r["walls"][name] / r["cores"] for r in rounds)
        versus = statistics.median((r["audio_s"] / r["walls"][name]) / (r["loop_audio_s"] / r["loop_s"]) for r in rounds)
        title = f"slc label {name}" + (" (+ ray.init)" if name.endswith("cold") else "")
        print(f"{title:<34}{wall:>7.1f}  {per_core:>8.0f}x  {versus:>17.2f}x")
    loop_s = statistics.median(r["loop_s"] for r in rounds)
    print(f"{'sequential predict loop, 1 core':<34}{loop_s:>7.1f}  {audio_s / loop_s:>8.0f}x  {1:>17.2f}x")
    loops_s = statistics.median(r["loops_s"] for r in rounds)
    per_core = statistics.median(r["loops_audio_s"] / r["loops_s"] / r["cores"] for r in rounds)
    versus = statistics.median((r["loops_audio_s"] / r["loops_s"]) / (r["loop_audio_s"] / r["loop_s"]) for r in rounds)
    print(f"{f'{cores:g} loops at once, no Ray (ceiling)':<34}{loops_s:>7.1f}  {per_core:>8.0f}x  {versus:>17.2f}x")

    work_s = sum(v for k, v in stages.items() if not k.startswith("object store"))
    print(f"\nwhere the time goes: the loop's work on one core, stage by stage ({work_s:.1f} s)")
    print(f"{'stage':<34}{'s':>7}  {'share':>6}  {'x real time':>11}")
    for name, seconds in stages.items():
        share = f"{seconds / work_s:>6.0%}" if not name.startswith("object store") else f"{'':>6}"
        print(f"{name:<34}{seconds:>7.2f}  {share}  {audio_s / max(seconds, 1e-9):>10.0f}x")
    print(f"\npipeline runs: core-seconds held ({cores:g} cores x wall) beyond that work (scheduling, idle cores, Ray Data)")
    for name in RUNS:
        held = statistics.median(r["walls"][name] * r["cores"] for r in rounds)
        print(f"{'slc label ' + name:<34}{held:>7.1f}  core-s held, {held - work_s:>6.1f} beyond the work ({work_s / held:.0%} busy)")
    print(f"\ntargets: >= {TARGET_PER_CORE['warm']:.0f}x per core warm, >= {TARGET_PER_CORE['cold']:.0f}x cold, "
          f">= {TARGET_VS_LOOP}x the loop; label and the loop agree on "
          f"{min(r['agree'] for r in rounds):.1%} of the files (worst round)")  # fmt: skip


if __name__ == "__main__":
    main()
