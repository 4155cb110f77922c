"""Benchmark of live detection (`WS /v1/stream`): N concurrent streams fed at real time.

Starts the endpoint on this machine (`slc.apps.serve_launcher.running`: one
replica with `--threads` onnxruntime threads and as many CPUs) and streams
recordings to it from an asyncio client: each is `--part-s` of one language
then `--part-s` of another (clips of the corpus's test split, trimmed and
joined; every ordered pair of the bundle's languages in turn), sent as
100 ms frames of 16 kHz pcm_s16le at real time, the streams' starts spread
over a second. Reported, each next to its target:

- change latency: seconds of audio from the true change to the `change`
  event naming the new language (median, p95; target <= 3 s median), with
  the changes missed and the spurious ones (any change but the first into
  each part's language);
- partial latency: wall time from sending the frame that completes a
  window to receiving its `partial` (median, p95; target <= 300 ms);
- capacity: N doubles from `--start-streams` until the p95 partial latency
  passes its target or a stream fails, then the gap to the first failing N
  is halved twice; the most streams that held, per replica core (target
  >= 50 with the `tiny` bundle).

`--sweep` instead scores each recording's windows once, here, as the
endpoint would, and replays them through the change detector for a grid of
its settings (StreamConfig.change_evidence, evidence_cap): the change
latency and the spurious changes each setting gives.

Change latency is in seconds of audio, so it does not depend on the load;
it is taken over all distinct recordings streamed at the levels that held.
The client runs on the same machine and its CPU time is reported: on a
small machine it competes with the replica.

Run after `make demo` (or pass your own): `python bench/stream.py
[--bundle demo-output/bundle] [--clips demo-output/corpus]`; without a
corpus at `--clips`, clips are made with espeak-ng (`slc synth`).
"""

import argparse
import asyncio
import csv
import dataclasses
import json
import math
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from slc import audio
from slc.apps.serve_launcher import free_port, running
from slc.apps.stream_session import StreamSession, StreamStart
from slc.config import ServeConfig, StreamConfig
from slc.labels import BACKGROUND
from slc.runtime.classifier import Classifier

RATE = 16_000
FRAME_S = 0.1
AUDIO = (".wav", ".flac", ".ogg", ".mp3")
CHANGE_TARGET_S, PARTIAL_TARGET_S, STREAMS_PER_CORE_TARGET = 3.0, 0.3, 50


@dataclasses.dataclass(frozen=True)
class Recording:
    pcm: bytes  # 16 kHz mono pcm_s16le
    first: str
    second: str
    change_s: float


@dataclasses.dataclass
class Streamed:
    """One stream's outcome: (wall time received, event) pairs, wall times
    at which each frame's audio was sent, and whether it ended normally."""

    recording: int
    events: list[tuple[float, dict]]
    sent_at: list[float]
    ok: bool


# --- recordings ------------------------------------------------------------


def corpus_clips(root: Path, labels: tuple[str, ...]) -> dict[str, list[Path]]:
    """A corpus in `<lang>/<file>` layout -> files per language: the test
    split of its manifest.csv when it has one, else every file."""
    manifest = root / "manifest.csv"
    clips: dict[str, list[Path]] = {code: [] for code in labels}
    if manifest.is_file():
        with manifest.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if row["lang"] in clips and row.get("split", "test") == "test":
                    clips[row["lang"]].append(root / row["path"])
    else:
        for code in labels:
            clips[code] = sorted(p for p in (root / code).rglob("*") if p.suffix.lower() in AUDIO)
    return {code: paths for code, paths in clips.items() if paths}


def synthesised_corpus(labels: tuple[str, ...], out: Path) -> Path:
    """A small espeak-ng corpus of `labels` (the demo's voices and texts; a seed of its own)."""
    from slc.data.synth import make_corpus

    print(f"no corpus given: synthesising clips of {', '.join(labels)} with espeak-ng in {out}")
    make_corpus(out, labels, per_lang=40, seed=1234)
    return out


def part(paths: list[Path], seconds: float, rng: random.Random, cache: dict[Path, np.ndarray]) -> np.ndarray:
    """Clips of one language, trimmed and joined in random order to `seconds`."""
    pieces, total = [], 0
    while total < seconds * RATE:
        path = rng.choice(paths)
        if path not in cache:
            cache[path] = audio.load(path)
        pieces.append(cache[path])
        total += len(cache[path])
    return np.concatenate(pieces)[: int(seconds * RATE)]


def recordings(clips: dict[str, list[Path]], count: int, part_s: float, seed: int = 0) -> list[Recording]:
    pairs = [(a, b) for a in clips for b in clips if a != b]
    if not pairs:
        raise SystemExit(f"clips of two languages at least are needed; found {sorted(clips)}")
    rng, cache, made = random.Random(seed), {}, []
    for i in range(count):
        first, second = pairs[i % len(pairs)]
        samples = np.concatenate([part(clips[first], part_s, rng, cache), part(clips[second], part_s, rng, cache)])
        pcm = (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
        made.append(Recording(pcm, first, second, part_s))
    return made


# --- streaming ---------------------------------------------------------------


async def stream_one(url: str, index: int, recording: Recording, hop_s: float, delay_s: float) -> Streamed:
    """Stream `recording` at real time after `delay_s`; every event with its arrival time."""
    await asyncio.sleep(delay_s)
    events: list[tuple[float, dict]] = []
    sent_at: list[float] = []
    step = int(FRAME_S * RATE) * 2
    start = {"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le", "hop_s": hop_s}

    async def read(ws) -> None:
        async for message in ws:
            events.append((time.perf_counter(), json.loads(message)))

    try:
        async with connect(url, max_size=None, open_timeout=60, close_timeout=60) as ws:
            await ws.send(json.dumps(start))
            json.loads(await ws.recv())  # ready
            reader = asyncio.create_task(read(ws))
            began = time.perf_counter()
            for k, at in enumerate(range(0, len(recording.pcm), step)):
                # A frame is sent once its audio has been "spoken".
                await asyncio.sleep(max(0.0, began + (k + 1) * FRAME_S - time.perf_counter()))
                await ws.send(recording.pcm[at : at + step])
                sent_at.append(time.perf_counter())
            await ws.send(json.dumps({"type": "end"}))
            await reader
        ok = bool(events) and events[-1][1]["type"] == "final"
    except (ConnectionClosed, OSError, TimeoutError):
        ok = False
    return Streamed(index, events, sent_at, ok)


async def run_level(url: str, streams: int, recs: list[Recording], hop_s: float, seed: int) -> list[Streamed]:
    rng = random.Random(seed)
    return await asyncio.gather(*(
        stream_one(url, i % len(recs), recs[i % len(recs)], hop_s, rng.uniform(0.0, 1.0)) for i in range(streams)
    ))  # fmt: skip


# --- figures -----------------------------------------------------------------


def partial_latencies(result: Streamed) -> list[float]:
    """Arrival of each partial less the sending of the frame completing its window."""
    out = []
    for received, event in result.events:
        if event["type"] in ("partial", "silence"):
            frame = min(len(result.sent_at), math.ceil(round(event["time_s"] / FRAME_S, 6))) - 1
            out.append(received - result.sent_at[frame])
    return out


def change_outcome(changes: list[dict], recording: Recording) -> tuple[float | None, int]:
    """A stream's `change` events -> (seconds of audio from the true change
    to the change into the second language, or None when missed; changes
    beyond the expected ones)."""
    expected = [next((c for c in changes if c["language"] == recording.first), None)]
    detected = next((c for c in changes if c["language"] == recording.second and c["time_s"] > recording.change_s), None)
    expected.append(detected)
    spurious = sum(1 for c in changes if all(c is not e for e in expected))
    return (None if detected is None else detected["time_s"] - recording.change_s), spurious


def percentiles(values: list[float]) -> tuple[float, float]:
    return (float(np.percentile(values, 50)), float(np.percentile(values, 95))) if values else (math.nan, math.nan)


@dataclasses.dataclass
class Level:
    streams: int
    results: list[Streamed]
    cpu_s: float  # client process CPU time
    wall_s: float

    @property
    def latencies(self) -> list[float]:
        return [x for r in self.results for x in partial_latencies(r)]

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.results)

    def holds(self) -> bool:
        return not self.failed and percentiles(self.latencies)[1] <= PARTIAL_TARGET_S


def measure(url: str, streams: int, recs: list[Recording], hop_s: float) -> Level:
    cpu, wall = time.process_time(), time.perf_counter()
    results = asyncio.run(run_level(url, streams, recs, hop_s, seed=streams))
    level = Level(streams, results, time.process_time() - cpu, time.perf_counter() - wall)
    p50, p95 = percentiles(level.latencies)
    print(f"{streams:>4} streams: partials p50 {p50 * 1e3:6.0f} ms  p95 {p95 * 1e3:6.0f} ms  failed {level.failed}  "
          f"client CPU {level.cpu_s / level.wall_s:.2f} cores  -> {'holds' if level.holds() else 'falls behind'}", flush=True)
    return level


def ramp(url: str, recs: list[Recording], hop_s: float, first: int, most: int) -> list[Level]:
    """Double N until a level falls behind, then halve the gap twice."""
    levels, held, failed = [], 0, None
    streams = first
    while streams <= most:
        levels.append(measure(url, streams, recs, hop_s))
        if not levels[-1].holds():
            failed = streams
            break
        held, streams = streams, streams * 2
    for _ in range(2):
        if failed is None or failed - held <= max(2, held // 8):
            break
        middle = (held + failed) // 2
        levels.append(measure(url, middle, recs, hop_s))
        held, failed = (middle, failed) if levels[-1].holds() else (held, middle)
    return levels


def report(levels: list[Level], recs: list[Recording], cores: float, hop_s: float) -> None:
    held = [level for level in levels if level.holds()]
    seen: dict[int, tuple[float | None, int]] = {}
    for level in held or levels[:1]:
        for result in level.results:
            if result.ok and result.recording not in seen:
                changes = [e for _, e in result.events if e["type"] == "change"]
                seen[result.recording] = change_outcome(changes, recs[result.recording])
    delays = [d for d, _ in seen.values() if d is not None]
    missed = sum(d is None for d, _ in seen.values())
    spurious = sum(s for _, s in seen.values())
    c50, c95 = percentiles(delays)
    best = max(held, key=lambda level: level.streams) if held else None
    p50, p95 = percentiles(best.latencies if best else levels[0].latencies)
    most = best.streams if best else 0
    print(f"\n{len(seen)} recordings ({recs[0].change_s:g} s + {recs[0].change_s:g} s), hop {hop_s:g} s; "
          f"1 replica, {cores:g} core(s)\n")
    print(f"{'figure':<34} {'measured':>14}  target")
    print(f"{'change latency, median (audio s)':<34} {c50:>14.2f}  <= {CHANGE_TARGET_S:g} s")
    print(f"{'change latency, p95 (audio s)':<34} {c95:>14.2f}")
    print(f"{'changes missed / spurious':<34} {f'{missed} / {spurious}':>14}  0 / 0")
    at = f" (at {most} streams)" if best else ""
    print(f"{'partial latency, median (ms)':<34} {p50 * 1e3:>14.0f}  <= {PARTIAL_TARGET_S * 1e3:.0f} ms{at}")
    print(f"{'partial latency, p95 (ms)':<34} {p95 * 1e3:>14.0f}  <= {PARTIAL_TARGET_S * 1e3:.0f} ms{at}")
    print(f"{'real-time streams per replica core':<34} {most / cores:>14.1f}  >= {STREAMS_PER_CORE_TARGET}")


# --- the change detector's trade-off, offline ---------------------------------


def window_scores(classifier: Classifier, recording: Recording, hop_s: float) -> tuple[StreamSession, list, np.ndarray]:
    """A recording through a StreamSession here, as the endpoint scores it
    -> the session, its windows that hold speech and their probabilities."""
    start = StreamStart(RATE, "pcm_s16le", hop_s=hop_s)
    session = StreamSession(start, StreamConfig(), classifier.window, classifier.labels.codes, classifier.feature_config)
    step = int(FRAME_S * RATE) * 2
    windows = [w for at in range(0, len(recording.pcm), step) for w in session.feed(recording.pcm[at : at + step])]
    spoken = [w for w in windows + session.finish() if session.speech(w.clip)]
    return session, spoken, classifier.probabilities_of_features([w.features for w in spoken])


def sweep(classifier: Classifier, recs: list[Recording], hop_s: float) -> None:
    """Change latency and spurious changes for a grid of the detector's
    settings (StreamConfig.change_evidence, evidence_cap), from the windows
    each recording gets live."""
    scored = [window_scores(classifier, rec, hop_s) for rec in recs]
    default = StreamConfig()
    print(f"\n{len(recs)} recordings ({recs[0].change_s:g} s + {recs[0].change_s:g} s), hop {hop_s:g} s, "
          f"window {classifier.window.window_s:g} s; * marks the defaults\n")
    print(f"{'evidence_cap':>12} {'change_evidence':>15} {'median s':>9} {'p95 s':>7} {'missed':>7} {'spurious':>9}")
    for cap in (2.2, 4.6, 6.9):
        for evidence in (3.3, 4.4, 6.6, 9.0, 12.0):
            outcomes = []
            for rec, (session, windows, probabilities) in zip(recs, scored):
                live = dataclasses.replace(default, change_evidence=evidence, evidence_cap=cap)
                replay = StreamSession(session.start, live, session.window, session.codes, classifier.feature_config)
                changes = [e for w, p in zip(windows, probabilities) for e in replay.observe(w.start, w.end, p)
                           if e["type"] == "change"]  # fmt: skip
                outcomes.append(change_outcome(changes, rec))
            delays = [d for d, _ in outcomes if d is not None]
            c50, c95 = percentiles(delays)
            mark = "*" if (cap, evidence) == (default.evidence_cap, default.change_evidence) else " "
            print(f"{cap:>12g} {evidence:>15g} {c50:>9.2f} {c95:>7.2f} {sum(d is None for d, _ in outcomes):>7} "
                  f"{sum(n for _, n in outcomes):>9}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("demo-output/bundle"))
    parser.add_argument("--clips", type=Path, default=Path("demo-output/corpus"), help="a corpus in <lang>/<file> layout")
    parser.add_argument("--part-s", type=float, default=20.0, help="seconds of each language per recording")
    parser.add_argument("--recordings", type=int, default=24, help="distinct recordings, reused across streams")
    parser.add_argument("--hop-s", type=float, default=StreamConfig.hop_s)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the replica, and its CPUs")
    parser.add_argument("--start-streams", type=int, default=8)
    parser.add_argument("--max-streams", type=int, default=512)
    parser.add_argument("--sweep", action="store_true",
                        help="instead: the change detector's latency and spurious changes over a grid of its settings, offline")
    args = parser.parse_args()
    if not (args.bundle / "bundle.json").is_file():
        raise SystemExit(f"{args.bundle} is not a bundle: run `make demo` first, or pass --bundle")
    # Streams change between the model's languages; the background class has no clips of its own.
    labels = tuple(code for code in Classifier(args.bundle).labels.codes if code != BACKGROUND)
    with tempfile.TemporaryDirectory(prefix="slc-bench-stream-") as scratch:
        root = args.clips if args.clips.is_dir() else synthesised_corpus(labels, Path(scratch) / "corpus")
        recs = recordings(corpus_clips(root, labels), args.recordings, args.part_s)
    if args.sweep:
        sweep(Classifier(args.bundle), recs, args.hop_s)
        return
    config = ServeConfig(
        port=free_port(), threads=args.threads, num_cpus=args.threads,
        max_ongoing_requests=args.max_streams + 16,
        stream=StreamConfig(max_streams=args.max_streams + 16),
    )  # fmt: skip
    with running(args.bundle, config, show_logs=False) as url:
        address = url.replace("http", "ws") + "/v1/stream"
        warm_up = dataclasses.replace(recs[0], pcm=recs[0].pcm[: 4 * RATE])  # 2 s
        asyncio.run(run_level(address, 1, [warm_up], args.hop_s, 0))
        levels = ramp(address, recs, args.hop_s, args.start_streams, args.max_streams)
    report(levels, recs, args.threads, args.hop_s)


if __name__ == "__main__":
    main()
