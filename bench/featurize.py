"""Featurization benchmark: how fast slc turns audio into features, measured
against baselines timed in the same run (timings on a shared machine are noisy,
so only ratios mean anything).

1. fbank: `slc.features.extract` vs transformers' `Speech2TextFeatureExtractor`
   on the same espeak-ng speech (>= `--fbank-seconds`), one thread each; best of
   `--repeats` after a warm-up. Also the largest difference between their outputs.
2. ingest: `slc.ingest.ingest` end to end on a local Ray using every core, on a
   corpus of >= `--minutes` of speech (synthesised once into `--out`, reused while
   complete). First run on a fresh cluster, then warm runs. The baseline is
   `featurize_batch` run serially in this process on one core, over the same clips.
3. where ingest time goes: that serial pass split into decode, resample, trim
   silence, fbank and Arrow conversion.

Run: `python bench/featurize.py [--minutes 15] [--fbank-seconds 120] [--out bench-output]`
(or `make bench`). Nothing is asserted; targets are printed next to the figures.
"""

from __future__ import annotations

import os

# One thread for the BLAS/OpenMP pools, set before numpy or torch are imported:
# both implementations compared in section 1 must run on one core.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import csv
import logging
import math
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import ray
import ray.data
import soundfile as sf
import soxr
import torch
from transformers import Speech2TextFeatureExtractor

from slc.audio import load, trim_silence
from slc.batch import cluster
from slc.config import IngestConfig
from slc.data.corpus import discover
from slc.data.features import Fbank, extract
from slc.data.ingest import clip_items, featurize_batch, ingest
from slc.data.shards import features_column
from slc.data.synth import DEFAULT_LANGS, make_corpus

FBANK_TARGET = 3.0  # slc at least this many times faster than transformers
INGEST_TARGET = 400.0  # audio seconds per wall second per core
PARITY_LIMIT = 1e-3
# espeak-ng clips average about 4 s before silence trimming; plan on less so
# the corpus comes out at least as long as asked.
_PLANNED_CLIP_S = 3.3


@dataclass
class Timing:
    best: float
    median: float


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    fbank_line = bench_fbank(args.fbank_seconds, args.repeats, args.seed)
    corpus = cached_corpus(args.out, args.minutes * 60, args.seed)
    ingest_run = bench_ingest(corpus, args.out / "shards", args.ingest_runs)
    serial_s = bench_stages(corpus, ingest_run.audio_s)
    # What a perfect scheduler would take: the serial work spread over every core.
    ideal_s = serial_s / ingest_run.cores
    print("\n== summary ==")
    print(fbank_line)
    print(ingest_run.summary_line())
    print(
        f"baseline: featurize_batch serially on 1 core (no Ray) {ingest_run.audio_s / serial_s:.0f} x real time; "
        f"ingest's parallel efficiency {ideal_s / ingest_run.best_s:.0%} ({ingest_run.best_s:.1f} s vs "
        f"{ideal_s:.1f} s = serial / {ingest_run.cores} cores; the rest is Ray Data and shard writing)"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0, help="ingest corpus, minutes of audio (>= 10)")
    parser.add_argument("--fbank-seconds", type=float, default=120.0, help="audio for the fbank comparison")
    parser.add_argument("--out", type=Path, default=Path("bench-output"), help="cache of corpora and shards")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per fbank implementation")
    parser.add_argument("--ingest-runs", type=int, default=3, help="ingest runs: the first cold, the rest warm")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


# ---------------------------------------------------------------- 1. fbank


def bench_fbank(seconds: float, repeats: int, seed: int) -> str:
    """slc fbank vs transformers on one thread; returns the summary line."""
    with tempfile.TemporaryDirectory(prefix="slc-bench-") as tmp:
        clips = synth_clips(Path(tmp) / "corpus", seconds, seed)
    audio_s = sum(len(c) for c in clips) / 16_000
    fbank = Fbank().eval()
    reference = Speech2TextFeatureExtractor(feature_size=80, num_mel_bins=80)
    implementations = {
        "slc": lambda clip: extract(clip, fbank),
        "transformers": lambda clip: reference(clip, sampling_rate=16_000)["input_features"][0],
    }
    timings = time_interleaved(implementations, clips, repeats)
    max_diff = max(
        float(np.abs(extract(c, fbank) - np.asarray(implementations["transformers"](c))).max()) for c in clips
    )

    print(f"\n== 1. fbank: {len(clips)} clips, {audio_s:.1f} s of audio, 1 thread, best of {repeats} ==")
    print(f"{'implementation':<14} {'best s':>8} {'median s':>9} {'x real time':>12}")
    for name, t in timings.items():
        print(f"{name:<14} {t.best:>8.3f} {t.median:>9.3f} {audio_s / t.best:>12.0f}")
    speedup = timings["transformers"].best / timings["slc"].best
    median_speedup = timings["transformers"].median / timings["slc"].median
    print(f"slc / transformers speed: {speedup:.2f}x best, {median_speedup:.2f}x median (target >= {FBANK_TARGET:g}x)")
    verdict = "ok" if max_diff <= PARITY_LIMIT else "OVER LIMIT"
    print(f"max |slc - transformers| over all clips: {max_diff:.2e} (limit {PARITY_LIMIT:g}: {verdict})")
    return (
        f"fbank: slc {audio_s / timings['slc'].best:.0f}x real time, transformers "
        f"{audio_s / timings['transformers'].best:.0f}x real time -> slc is {speedup:.1f} x faster "
        f"(target >= {FBANK_TARGET:g}x); max abs diff {max_diff:.1e}"
    )


def synth_clips(root: Path, seconds: float, seed: int) -> list[np.ndarray]:
    """At least `seconds` of clips (after silence trimming), as slc loads them."""
    per_lang = math.ceil(seconds / (_PLANNED_CLIP_S * len(DEFAULT_LANGS)))
    summary = make_corpus(root, DEFAULT_LANGS, per_lang, seed)
    clips = [load(summary.root / path) for path in manifest_paths(summary.manifest)]
    got = sum(len(c) for c in clips) / 16_000
    if got < seconds:
        raise RuntimeError(f"synthesised {got:.1f} s of audio, asked for {seconds:.1f} s")
    return clips


def time_interleaved(
    implementations: dict[str, Callable[[np.ndarray], object]], clips: list[np.ndarray], repeats: int
) -> dict[str, Timing]:
    """Seconds per pass over `clips`, per implementation. Passes alternate
    between implementations so a noisy spell on the machine hits both."""
    for run in implementations.values():  # warm-up: first calls allocate and build caches
        for clip in clips[:8]:
            run(clip)
    passes: dict[str, list[float]] = {name: [] for name in implementations}
    for _ in range(repeats):
        for name, run in implementations.items():
            started = time.perf_counter()
            for clip in clips:
                run(clip)
            passes[name].append(time.perf_counter() - started)
    return {name: Timing(min(p), statistics.median(p)) for name, p in passes.items()}


# ---------------------------------------------------------------- 2. ingest


def cached_corpus(out: Path, seconds: float, seed: int) -> Path:
    """A corpus of >= `seconds` of speech under `out`, synthesised on first use.
    `make_corpus` writes manifest.csv last, so a manifest whose files all exist
    marks a complete corpus; anything else is removed and made again."""
    per_lang = math.ceil(seconds / (_PLANNED_CLIP_S * len(DEFAULT_LANGS)))
    root = out / f"corpus-{'-'.join(DEFAULT_LANGS)}-{per_lang}-seed{seed}"
    manifest = root / "manifest.csv"
    if manifest.is_file() and all((root / p).is_file() for p in manifest_paths(manifest)):
        print(f"\nreusing corpus {root}")
        return root
    shutil.rmtree(root, ignore_errors=True)
    print(f"\nsynthesising {per_lang} clips per language into {root} ...", flush=True)
    started = time.perf_counter()
    make_corpus(root, DEFAULT_LANGS, per_lang, seed)
    print(f"synthesised in {time.perf_counter() - started:.1f} s")
    return root


def manifest_paths(manifest: Path) -> list[str]:
    with manifest.open(newline="", encoding="utf-8") as handle:
        return [row["path"] for row in csv.DictReader(handle)]


@dataclass
class IngestRun:
    """Timings of `ingest` runs on one local Ray cluster."""

    audio_s: float  # accepted audio, seconds
    cores: int  # CPUs of the Ray cluster
    init_s: float  # ray.init
    walls: list[float]  # per ingest call, the first on fresh workers

    @property
    def best_s(self) -> float:
        return min(self.walls[1:] or self.walls)

    def per_core(self, wall: float) -> float:
        """Audio seconds per wall second per core."""
        return self.audio_s / wall / self.cores

    def summary_line(self) -> str:
        kind = "warm" if len(self.walls) > 1 else "cold"
        return (
            f"ingest: {self.audio_s:.0f} s audio in {self.best_s:.1f} s ({kind}; cold {self.walls[0]:.1f} s "
            f"+ ray.init {self.init_s:.1f} s) on {self.cores} cores -> {self.per_core(self.best_s):.0f} x real time "
            f"per core (target >= {INGEST_TARGET:g}x)"
        )


def bench_ingest(corpus: Path, out: Path, runs: int) -> IngestRun:
    """`ingest` on a fresh local Ray with every core: a cold run, then warm ones."""
    quiet_ray_data()
    started = time.perf_counter()
    cluster.init(include_dashboard=False)
    init_s = time.perf_counter() - started
    try:
        walls = []
        for _ in range(max(1, runs)):
            started = time.perf_counter()
            summary = ingest(corpus, str(out), IngestConfig(), overwrite=True)
            walls.append(time.perf_counter() - started)
        run = IngestRun(summary["audio_hours"] * 3600, int(ray.cluster_resources()["CPU"]), init_s, walls)
    finally:
        cluster.shutdown()
    print_ingest(run, summary["accepted"])
    return run


def print_ingest(run: IngestRun, clips: int) -> None:
    print(f"\n== 2. slc ingest: {clips} clips, {run.audio_s:.0f} s of audio, {run.cores} cores ==")
    if run.audio_s < 600:
        print(f"note: {run.audio_s:.0f} s is under 10 minutes; Ray's fixed costs weigh more (raise --minutes)")
    print(f"{'run':<34} {'wall s':>8} {'x real time/core':>17}")
    print(f"{'ray.init':<34} {run.init_s:>8.2f}")
    cold = run.init_s + run.walls[0]
    print(f"{'first ingest incl. ray.init':<34} {cold:>8.2f} {run.per_core(cold):>17.0f}")
    print(f"{'first ingest (cold workers)':<34} {run.walls[0]:>8.2f} {run.per_core(run.walls[0]):>17.0f}")
    for i, wall in enumerate(run.walls[1:], start=2):
        print(f"{f'ingest {i} (warm cluster)':<34} {wall:>8.2f} {run.per_core(wall):>17.0f}")


def quiet_ray_data() -> None:
    """Ray Data logs a progress table per dataset; it would bury the figures."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


# ---------------------------------------------------------------- 3. stages


def bench_stages(corpus: Path, ingest_audio_s: float, passes: int = 3) -> float:
    """Serial featurize_batch over the whole corpus on one core, then the same
    work split into stages, best of `passes`. Returns the serial seconds."""
    config = IngestConfig()
    found = discover(corpus)
    rows, filesystems = clip_items(found), [found.filesystem]
    size = config.clips_per_task
    batches = [pa.Table.from_pylist(rows[i : i + size]) for i in range(0, len(rows), size)]
    featurize_batch(batches[0], config, filesystems)  # warm-up
    total_s, stages = math.inf, {}
    for _ in range(passes):  # best of a few passes, stage by stage
        started = time.perf_counter()
        for batch in batches:
            featurize_batch(batch, config, filesystems)
        total_s = min(total_s, time.perf_counter() - started)
        for name, seconds in stage_times([b.column("path").to_pylist() for b in batches], config).items():
            stages[name] = min(stages.get(name, math.inf), seconds)

    print(f"\n== 3. where ingest time goes: featurize_batch serially, 1 core, {len(rows)} clips, best of {passes} ==")
    print(f"{'stage':<34} {'s':>8} {'share':>7} {'x real time':>12}")
    for name, seconds in stages.items():
        print(f"{name:<34} {seconds:>8.3f} {seconds / total_s:>7.0%} {ingest_audio_s / seconds:>12.0f}")
    other = total_s - sum(stages.values())
    print(f"{'other (rows, checks, schema)':<34} {other:>8.3f} {other / total_s:>7.0%}")
    print(f"{'featurize_batch total':<34} {total_s:>8.3f} {1:>7.0%} {ingest_audio_s / total_s:>12.0f}")
    return total_s


def stage_times(batches: list[list[str]], config: IngestConfig) -> dict[str, float]:
    """Seconds spent in each step of `audio.load` + `extract` + the features
    column, done step by step with ingest's settings, one batch at a time as
    featurize_batch does (keeping every clip's features alive would add
    allocation costs ingest does not have)."""
    names = ("decode (soundfile)", "resample to 16 kHz (soxr HQ)", "trim silence", "fbank (extract)")
    stages = dict.fromkeys([*names, "to Arrow (float16 column)"], 0.0)
    fbank = Fbank(config.features).eval()
    rate_out = config.audio.sample_rate
    for paths in batches:
        features = []
        for path in paths:
            marks = [time.perf_counter()]
            samples, rate = sf.read(path, dtype="float32", always_2d=True)
            clip = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
            marks.append(time.perf_counter())
            if rate != rate_out:
                clip = soxr.resample(clip, rate, rate_out, quality="HQ")
            clip = np.ascontiguousarray(clip, dtype=np.float32)
            marks.append(time.perf_counter())
            clip = trim_silence(clip, rate_out, config.audio.trim_top_db)
            marks.append(time.perf_counter())
            features.append(extract(clip, fbank))
            marks.append(time.perf_counter())
            for name, begin, end in zip(names, marks, marks[1:]):
                stages[name] += end - begin
        started = time.perf_counter()
        features_column(features)
        stages["to Arrow (float16 column)"] += time.perf_counter() - started
    return stages


if __name__ == "__main__":
    main()
