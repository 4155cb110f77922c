"""Load benchmark of the HTTP endpoint: 4 s clips at concurrency 1, 8 and 32.

Starts the endpoint on this machine (`slc.apps.serve_launcher.running`, the application
`slc serve` runs), posts 4 s WAV clips as raw bodies from an asyncio client,
and reports requests/s, p50 and p99 latency and the error count (must be 0)
per concurrency level, each the best of a few rounds (other work on the
machine only ever slows a round down). The baseline, measured in the same
run on the same WAV bytes: `Classifier` called in-process (decode, then
`classify_batch` in batches of the endpoint's `max_batch_size`, with the
replica's thread count), also the best of those rounds. The ratio is the
endpoint's requests/s over the baseline's clips/s; the target is >= 0.85 at
concurrency 32.

Run after `make demo` (or pass your own): `python bench/serve.py
[--bundle demo-output/bundle] [--clips demo-output/corpus]`; with
`--ingress haproxy --replicas 2`, the endpoint as `slc serve --ingress
haproxy --replicas 2` runs it (`make bench` runs both).
"""

import os

# The in-process baseline on the replica's footing: numpy's BLAS on one thread,
# as Ray gives its actors (OMP_NUM_THREADS=1), set before numpy loads.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import asyncio
import io
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import soundfile as sf
import soxr

from slc.config import INGRESSES, ServeConfig
from slc.runtime.classifier import Classifier
from slc.apps.serve_launcher import free_port, running

CLIP_S = 4.0
RATE = 16_000
LEVELS = (1, 8, 32)


def four_second_wavs(corpus: Path, count: int, seed: int = 0) -> list[bytes]:
    """`count` 16 kHz WAVs of exactly 4 s, each a corpus clip repeated to length."""
    paths = sorted(p for p in corpus.rglob("*") if p.suffix.lower() in (".wav", ".flac", ".ogg"))
    if not paths:
        raise SystemExit(f"no audio under {corpus}: run `make demo` first, or pass --clips")
    chosen = np.random.default_rng(seed).choice(len(paths), size=min(count, len(paths)), replace=False)
    wavs = []
    for i in chosen:
        samples, rate = sf.read(paths[i], dtype="float32", always_2d=True)
        clip = samples.mean(axis=1)
        if rate != RATE:
            clip = soxr.resample(clip, rate, RATE)
        clip = np.resize(clip, int(CLIP_S * RATE))
        buffer = io.BytesIO()
        sf.write(buffer, clip, RATE, format="WAV", subtype="PCM_16")
        wavs.append(buffer.getvalue())
    return wavs


def in_process_clips_per_s(bundle: Path, config: ServeConfig, wavs: list[bytes], total: int, rounds: int) -> float:
    """Decode + classify `total` clips in batches of `max_batch_size`, in
    this process; the best of `rounds` passes."""
    classifier = Classifier(bundle, variant=config.variant, threads=config.threads, batch_size=config.max_batch_size)
    bodies = [wavs[i % len(wavs)] for i in range(total)]

    def one_pass() -> float:
        start = time.perf_counter()
        for first in range(0, total, config.max_batch_size):
            clips = [classifier.load_audio(body) for body in bodies[first : first + config.max_batch_size]]
            classifier.classify_batch(clips)
        return time.perf_counter() - start

    one_pass()  # warm-up
    return total / min(one_pass() for _ in range(rounds))


async def load(url: str, wavs: list[bytes], concurrency: int, total: int) -> tuple[float, list[float], int]:
    """`total` requests from `concurrency` clients -> (seconds, latencies in s, errors)."""
    latencies: list[float] = []
    errors = 0
    sent = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal sent, errors
        while sent < total:
            body = wavs[sent % len(wavs)]
            sent += 1
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/v1/classify", data=body, headers={"Content-Type": "audio/wav"}) as reply:
                    await reply.read()
                    ok = reply.status == 200
            except aiohttp.ClientError:
                ok = False
            latencies.append(time.perf_counter() - start)
            errors += not ok

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("demo-output/bundle"))
    parser.add_argument("--clips", type=Path, default=Path("demo-output/corpus"), help="audio to cut 4 s clips from")
    parser.add_argument("--requests", type=int, default=256, help="requests per concurrency level (at least 4 per client)")
    parser.add_argument("--threads", type=int, default=ServeConfig.threads, help="onnxruntime threads, replica and baseline")
    parser.add_argument("--max-batch-size", type=int, default=ServeConfig.max_batch_size)
    parser.add_argument("--batch-wait-timeout-s", type=float, default=ServeConfig.batch_wait_timeout_s)
    parser.add_argument("--replicas", type=int, default=ServeConfig.num_replicas,
                        help="replicas of the endpoint (the baseline stays one process)")
    parser.add_argument("--ingress", choices=INGRESSES, default=ServeConfig.ingress, help="what answers HTTP (ServeConfig.ingress)")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of each measurement; the best counts")
    parser.add_argument("--port", type=int, default=0, help="default: a free port")
    args = parser.parse_args()
    if not (args.bundle / "bundle.json").is_file():
        raise SystemExit(f"{args.bundle} is not a bundle: run `make demo` first, or pass --bundle")
    config = ServeConfig(
        port=args.port or free_port(),
        ingress=args.ingress,
        threads=args.threads,
        num_replicas=args.replicas,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_timeout_s,
        max_ongoing_requests=max(ServeConfig.max_ongoing_requests, args.max_batch_size, max(LEVELS)),
    )
    wavs = four_second_wavs(args.clips, 32)

    rows = []
    with running(args.bundle, config, show_logs=False) as url:
        for concurrency in LEVELS:
            total = max(args.requests, 4 * concurrency)
            asyncio.run(load(url, wavs, concurrency, 2 * concurrency))  # warm-up
            runs = [asyncio.run(load(url, wavs, concurrency, total)) for _ in range(args.rounds)]
            seconds, latencies, _ = min(runs)
            errors = sum(run[2] for run in runs)
            rows.append((concurrency, total, total / seconds, np.percentile(latencies, 50), np.percentile(latencies, 99), errors))
    baseline = in_process_clips_per_s(args.bundle, config, wavs, max(args.requests, 4 * max(LEVELS)), args.rounds)

    print(f"\n{CLIP_S:.0f} s clips; endpoint: {config.ingress} ingress, {config.num_replicas} replica(s), {config.threads} onnxruntime thread(s), "
          f"max_batch_size {config.max_batch_size}, batch_wait_timeout_s {config.batch_wait_timeout_s}; "
          f"best of {args.rounds} rounds (errors: all rounds)\n")
    print(f"{'concurrency':>11}  {'requests':>8}  {'req/s':>7}  {'p50 ms':>7}  {'p99 ms':>7}  {'errors':>6}  {'vs in-process':>13}")
    for concurrency, total, rps, p50, p99, errors in rows:
        print(f"{concurrency:>11}  {total:>8}  {rps:>7.1f}  {p50 * 1e3:>7.1f}  {p99 * 1e3:>7.1f}  {errors:>6}  {rps / baseline:>12.2f}x")
    print(f"\nin-process Classifier, batch {config.max_batch_size}, {config.threads} thread(s): {baseline:.1f} clips/s")
    ratio = rows[-1][2] / baseline
    print(f"endpoint at concurrency {LEVELS[-1]}: {ratio:.2f} of in-process throughput (target >= 0.85; p50 at concurrency 1 <= 15 ms)")
    if any(row[-1] for row in rows):
        sys.exit("some requests failed")


if __name__ == "__main__":
    main()
