"""The `slc` command line: parse, call the library, print."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from slc import config_io
from slc import config as cfg
from slc.apps import options, terminal

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Spoken language classifier on Ray.")

# Errors a user can act on: printed as one line, exit status 2, no traceback.
_USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileExistsError, FileNotFoundError, OSError)


def _fail(error: Exception | str) -> typer.Exit:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@contextlib.contextmanager
def _training_extra(command: str) -> Iterator[None]:
    """Around the import of a stage that needs the `train` extra: a missing
    third-party module becomes one line and exit status 2."""
    try:
        yield
    except ModuleNotFoundError as error:
        message = options.missing_extra(command, error)
        if message is None:
            raise
        raise _fail(message) from None


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's output, warnings and debug lines on the terminal too (they always go to OUT/logs/slc.log).")] = False,
) -> None:
    terminal.configure(verbose)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Directory for the corpus (VoxLingua107 layout + manifest.csv).")],
    langs: Annotated[str, typer.Option(help="Comma-separated languages espeak-ng speaks.")] = "de,en,fr,it",
    per_lang: Annotated[int, typer.Option(help="Clips per language.")] = 100,
    seed: Annotated[int, typer.Option(help="Same seed, same corpus.")] = 0,
    background: Annotated[int, typer.Option(help="Also this many languages outside --langs, spoken by training voices, for `ingest --background`.")] = 0,
    background_per_lang: Annotated[int, typer.Option(help="Clips per background language.")] = 40,
    conditions: Annotated[bool, typer.Option(help="Make a robustness test set instead: voices and sentences no demo corpus trains on, all in the test split, each clip under every condition (clean, noise, reverb, telephone, codec) in OUT/<lang>/<condition>/, the condition in the manifest.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it has contents.")] = False,
) -> None:
    """Make a demo corpus of espeak-ng speech: many voices, unseen test voices and sentences."""
    with _training_extra("synth"):
        from slc.data.synth import make_corpus

    if conditions and background:
        raise _fail("--conditions makes a test set of the --langs alone; leave out --background")
    if overwrite and out.exists():
        shutil.rmtree(out)
    codes = [c.strip() for c in langs.split(",") if c.strip()]
    if conditions:
        _synth_conditions(out, codes, per_lang, seed)
        return
    try:
        total = per_lang * len(codes) + background * background_per_lang
        with typer.progressbar(length=total, label="synthesising", file=None) as bar:
            summary = make_corpus(
                out, codes, per_lang, seed=seed, progress=lambda done, total: bar.update(1),
                background=background, background_per_lang=background_per_lang,
            )  # fmt: skip
    except _USER_ERRORS + (RuntimeError,) as error:
        raise _fail(error) from None
    rows = [
        [split, lang, str(summary.clips[split].get(lang, 0)), str(summary.voices[split].get(lang, 0))]
        for split in summary.clips
        for lang in summary.clips[split]
        if summary.clips[split][lang]
    ]
    typer.echo(_table(["split", "lang", "clips", "voices"], rows))
    typer.echo(f"corpus: {summary.root}  manifest: {summary.manifest}")


def _synth_conditions(out: Path, codes: list[str], per_lang: int, seed: int) -> None:
    with _training_extra("synth"):
        from slc.data.conditions import CONDITIONS, make_conditions_corpus

    try:
        with typer.progressbar(length=per_lang * len(codes) * (1 + len(CONDITIONS)), label="synthesising", file=None) as bar:
            summary = make_conditions_corpus(out, codes, per_lang, seed=seed, progress=lambda done, total: bar.update(1))
    except _USER_ERRORS + (RuntimeError,) as error:
        raise _fail(error) from None
    rows = [[name, lang, str(n), str(summary.voices[lang])] for name, by_lang in summary.clips.items() for lang, n in by_lang.items()]
    typer.echo(_table(["condition", "lang", "clips", "voices"], rows))
    typer.echo(f"corpus: {summary.root}  manifest: {summary.manifest}")


@app.command()
def ingest(
    corpus: Annotated[str, typer.Argument(help="Corpus: a tree (<root>/<lang>/**/<audio>), a CSV/TSV manifest, a Hugging Face dataset (save_to_disk or Parquet), a Common Voice release, WebDataset shards or lhotse manifests.")],
    out: Annotated[str, typer.Argument(help="Shard directory: a path or a URI such as s3://bucket/shards.")],
    config: Annotated[Optional[Path], typer.Option(help=options.CONFIG_HELP.format("IngestConfig"))] = None,
    labels: Annotated[Optional[str], typer.Option(help="Keep only these languages, in this order: de,fr,it. (default: every language the corpus brings)")] = None,
    split: Annotated[Optional[str], typer.Option(help="train,val,test fractions by group, or from-release: the corpus's own splits (Common Voice TSVs, dataset split names). (default: {0.train},{0.val},{0.test})".format(cfg.SplitConfig()))] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help=options.with_default("Corpus layout: auto, tree, manifest, huggingface, commonvoice, webdataset or lhotse.", cfg.IngestConfig, "format"))] = None,
    lang_column: Annotated[Optional[str], typer.Option(help="Column (or field) holding the language. (default: the first of language, lang, locale, label)")] = None,
    seed: Annotated[Optional[int], typer.Option(help=options.with_default("Seed of the group split.", cfg.IngestConfig, "split.seed"))] = None,
    max_duration: Annotated[Optional[float], typer.Option(help=options.with_default("Reject clips longer than this (s).", cfg.IngestConfig, "audio.max_duration_s"))] = None,
    min_duration: Annotated[Optional[float], typer.Option(help=options.with_default("Reject clips shorter than this after trimming (s).", cfg.IngestConfig, "audio.min_duration_s"))] = None,
    trim: Annotated[Optional[bool], typer.Option("--trim/--no-trim", help=options.with_default("Trim leading/trailing silence.", cfg.IngestConfig, "audio.trim_silence"))] = None,
    augment: Annotated[Optional[int], typer.Option(help=options.with_default("Augmented copies of every training clip (speed, noise, gain, band, silence, pitch).", cfg.IngestConfig, "augment.copies"))] = None,
    background: Annotated[Optional[str], typer.Option(help="Languages outside --labels that become the class 'other' (es,nl,pl), or all-others; split by language, so test's are never trained on. (default: none)")] = None,
    background_per_lang: Annotated[Optional[int], typer.Option(help=options.with_default("Most clips of one background language.", cfg.IngestConfig, "background_per_lang"))] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it has contents.")] = False,
    resume: Annotated[bool, typer.Option(help="Keep the clips OUT already holds (same corpus and settings) and featurize the rest; rejected clips are tried again.")] = False,
) -> None:
    """Featurize a corpus into Parquet shards per split, with rejects and a summary."""
    with _training_extra("ingest"):
        from slc.data.ingest import ingest as run_ingest

    try:
        flags = {
            "labels": options.codes(labels), "format": fmt, "lang_column": lang_column, "split.seed": seed,
            **({"split.mode": "from-release"} if split == "from-release" else options.split_fractions(split)),
            "audio.max_duration_s": max_duration, "audio.min_duration_s": min_duration,
            "audio.trim_silence": trim, "augment.copies": augment,
            "background": options.codes(background), "background_per_lang": background_per_lang,
        }  # fmt: skip
        settings = config_io.resolve(cfg.IngestConfig, config, flags)
        with terminal.job(out), terminal.Bar("featurizing", "clip") as bar:
            summary = run_ingest(corpus, out, settings, overwrite=overwrite, resume=resume, progress=bar)
    except _USER_ERRORS as error:
        raise _fail(error) from None
    typer.echo(format_ingest_summary(summary))


def format_ingest_summary(summary: dict) -> str:
    """The ingest summary as a table of clips and hours per split and language."""
    rows = [
        [split, lang, str(stats["clips"]), f"{stats['hours']:.3f}"]
        for split, split_stats in summary["splits"].items()
        for lang, stats in split_stats["languages"].items()
    ]
    lines = [_table(["split", "lang", "clips", "hours"], rows)]
    kept, took = summary["kept_from_earlier_run"], f"{summary['wall_s']:.1f} s"
    lines.append(
        f"discovered {summary['discovered']} = accepted {summary['accepted']} + rejected {summary['rejected']}"
        f"  ({summary['audio_hours']:.3f} h of audio{'' if kept else f' in {took}'})"
    )
    if kept:
        lines.append(
            f"resumed: {kept} clips kept as an earlier run featurized them; "
            f"the other {summary['discovered'] - kept} took {took}"
        )
    if summary["augmented"]["clips"]:
        lines.append(
            f"augmented training copies: {summary['augmented']['clips']} ({summary['augmented']['hours']:.3f} h)"
        )
    if summary["rejected_by_reason"]:
        lines.append("rejected by reason: " + json.dumps(summary["rejected_by_reason"]))
    for split, languages in summary.get("background", {}).items():
        lines.append(f"background 'other' in {split}: " + ", ".join(f"{lang} {n}" for lang, n in languages.items()))
    if summary["excluded_by_label"]:
        lines.append("outside the label set: " + json.dumps(summary["excluded_by_label"]))
    lines.append(f"shards: {summary['out']}")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


@app.command()
def train(
    shards: Annotated[str, typer.Argument(help="Shard directory written by `slc ingest` (path or URI).")],
    out: Annotated[str, typer.Argument(help="Run directory: Ray Train's checkpoints under run/, the best in best/.")],
    config: Annotated[Optional[Path], typer.Option(help=options.CONFIG_HELP.format("TrainConfig"))] = None,
    preset: Annotated[Optional[str], typer.Option(help=options.PRESET_HELP)] = None,
    init_from: Annotated[Optional[str], typer.Option(help="Speech2Text checkpoint (save_pretrained directory or hub name) for the encoder.")] = None,
    workers: Annotated[Optional[int], typer.Option(help=options.with_default("Ray Train workers (DDP).", cfg.TrainConfig, "workers"))] = None,
    epochs: Annotated[Optional[int], typer.Option(help=options.with_default("Passes over the training shards.", cfg.TrainConfig, "epochs"))] = None,
    batch_size: Annotated[Optional[int], typer.Option(help=options.with_default("Clips per worker per step.", cfg.TrainConfig, "batch_size"))] = None,
    lr: Annotated[Optional[float], typer.Option(help=options.with_default("AdamW peak learning rate.", cfg.TrainConfig, "lr"))] = None,
    weight_decay: Annotated[Optional[float], typer.Option(help=options.with_default("AdamW weight decay.", cfg.TrainConfig, "weight_decay"))] = None,
    warmup_ratio: Annotated[Optional[float], typer.Option(help=options.with_default("Share of steps of linear warmup before linear decay.", cfg.TrainConfig, "warmup_ratio"))] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(help=options.with_default("Cross-entropy label smoothing.", cfg.TrainConfig, "label_smoothing"))] = None,
    max_frames: Annotated[Optional[int], typer.Option(help=options.with_default("Random crop of training clips, in 10 ms frames.", cfg.TrainConfig, "max_frames"))] = None,
    balance: Annotated[Optional[str], typer.Option(help=options.with_default("Class imbalance: weights (loss weights) or none.", cfg.TrainConfig, "balance"))] = None,
    patience: Annotated[Optional[int], typer.Option(help="Stop after this many epochs without a better val F1. (default: train every epoch)")] = None,
    gpu: Annotated[Optional[bool], typer.Option("--gpu/--no-gpu", help="Train on GPUs. (default: when the cluster has them)")] = None,
    cpus_per_worker: Annotated[Optional[float], typer.Option(help="Logical CPUs per worker. (default: 1, or less so Ray Data keeps a CPU)")] = None,
    max_failures: Annotated[Optional[int], typer.Option(help=options.with_default("Worker failures to recover from (resume from the last checkpoint).", cfg.TrainConfig, "max_failures"))] = None,
    keep: Annotated[Optional[int], typer.Option(help=options.with_default("Checkpoints kept: the best by val F1 (plus the latest).", cfg.TrainConfig, "keep_checkpoints"))] = None,
    seed: Annotated[Optional[int], typer.Option(help=options.with_default("Seed of weights, crops and masks.", cfg.TrainConfig, "seed"))] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it has contents.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUT from its latest checkpoint, on the same shards and settings (more epochs and other resources allowed); with no run in OUT, start one.")] = False,
) -> None:
    """Train the classifier on Ray Train; the best checkpoint by val macro F1 goes to OUT/best."""
    with _training_extra("train"):
        from slc.training.loop import train as run_train

    try:
        flags = {
            **options.preset_shape(preset), "model.init_from": init_from, "workers": workers, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "warmup_ratio": warmup_ratio,
            "label_smoothing": label_smoothing, "max_frames": max_frames, "balance": balance, "patience": patience,
            "use_gpu": gpu, "cpus_per_worker": cpus_per_worker, "max_failures": max_failures,
            "keep_checkpoints": keep, "seed": seed,
        }  # fmt: skip
        settings = config_io.resolve(cfg.TrainConfig, config, flags)
        with terminal.job(out), terminal.Bar("training", "step") as bar:
            best = run_train(shards, out, settings, overwrite=overwrite, resume=resume, progress=bar)
    except _USER_ERRORS as error:
        raise _fail(error) from None
    typer.echo(
        f"best checkpoint: epoch {best['epoch']} of {best['epochs_run']}, val macro F1 {best['val_f1']:.4f} -> {best['best']}"
    )


@app.command()
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint directory, e.g. RUN/best.")],
    shards: Annotated[str, typer.Argument(help="Shard directory (path or URI).")],
    out: Annotated[Path, typer.Argument(help="Report directory: report.md, metrics.json, PNG plots.")],
    split: Annotated[str, typer.Option(help="Shard split to evaluate.")] = "test",
    target_miss: Annotated[Optional[float], typer.Option(help=options.with_default("Open-set threshold, fitted on the val split: the share of in-set clips answered 'unknown'.", cfg.ExportConfig, "target_miss"))] = None,
) -> None:
    """Score a checkpoint on unseen clips: precision, recall, F1, IoU, confusion, the open-set answer, calibration, accuracy by duration."""
    with _training_extra("evaluate"):
        from slc.training.evaluation import evaluate as run_evaluate
        from slc.training.report import open_set_summary

    try:
        metrics = run_evaluate(checkpoint, shards, out, split=split, target_miss=target_miss)
    except _USER_ERRORS as error:
        raise _fail(error) from None
    rows = [[code, f"{m['f1']:.4f}", f"{m['precision']:.4f}", f"{m['recall']:.4f}", str(m["support"])]
            for code, m in metrics["per_class"].items()]
    typer.echo(_table(["lang", "F1", "precision", "recall", "clips"], rows))
    macro = metrics["macro"]
    typer.echo(f"macro F1 {macro['f1']:.4f}  precision {macro['precision']:.4f}  recall {macro['recall']:.4f}  "
               f"IoU {macro['iou']:.4f}")
    typer.echo(f"{open_set_summary(metrics)}\n-> {out / 'report.md'}")


@app.command()
def export(
    checkpoint: Annotated[str, typer.Argument(help="Checkpoint directory (or URI), e.g. RUN/best.")],
    bundle: Annotated[Path, typer.Argument(help="Bundle directory: features.onnx, model*.onnx, bundle.json, report.md.")],
    shards: Annotated[Optional[str], typer.Option(help="Shards for calibration (val) and scoring (test); default: those the checkpoint was trained on.")] = None,
    config: Annotated[Optional[Path], typer.Option(help=options.CONFIG_HELP.format("ExportConfig"))] = None,
    max_f1_loss: Annotated[Optional[float], typer.Option(help=options.with_default("A variant losing more macro F1 than this against fp32 is rejected.", cfg.ExportConfig, "max_f1_loss"))] = None,
    calibration_clips: Annotated[Optional[int], typer.Option(help=options.with_default("Validation clips for static int8 calibration.", cfg.ExportConfig, "calibration_clips"))] = None,
    latency_repeats: Annotated[Optional[int], typer.Option(help=options.with_default("Timed runs of one 4 s clip per variant.", cfg.ExportConfig, "latency_repeats"))] = None,
    target_miss: Annotated[Optional[float], typer.Option(help=options.with_default("Open-set threshold: the share of in-set validation clips answered 'unknown'.", cfg.ExportConfig, "target_miss"))] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace BUNDLE if it has contents.")] = False,
) -> None:
    """Export a checkpoint to ONNX with optimised and quantized variants, each scored and timed."""
    with _training_extra("export"):
        from slc.export.exporter import ExportError, export_bundle
        from slc.export.selection import variants_table

    try:
        flags = {
            "max_f1_loss": max_f1_loss, "calibration_clips": calibration_clips, "latency_repeats": latency_repeats,
            "target_miss": target_miss,
        }  # fmt: skip
        settings = config_io.resolve(cfg.ExportConfig, config, flags)
        with terminal.job(bundle, uses_ray=False), terminal.Bar("scoring variants", "variant") as bar:
            manifest = export_bundle(checkpoint, bundle, shards=shards, overwrite=overwrite, config=settings, progress=bar)
    except _USER_ERRORS + (ExportError,) as error:
        raise _fail(error) from None
    typer.echo(variants_table(manifest))
    typer.echo(f"default variant: {manifest['default_variant']}  -> {bundle}")


@app.command()
def predict(
    files: Annotated[list[Path], typer.Argument(help="Audio files.")],
    bundle: Annotated[Path, typer.Option(help="Bundle directory written by `slc export`.")],
    variant: Annotated[Optional[str], typer.Option(help="Model variant; default: the bundle's default.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Probabilities shown per file.")] = 3,
    allow: Annotated[Optional[str], typer.Option(help="Answer only among these languages, e.g. de,fr.")] = None,
    min_confidence: Annotated[Optional[float], typer.Option(help="Below this probability the answer is 'unknown'. (default: the bundle's open-set threshold)")] = None,
    open_set: Annotated[str, typer.Option(help=options.OPEN_SET_HELP)] = "on",
    segments: Annotated[bool, typer.Option(help="Timeline of languages from sliding windows.")] = False,
    threads: Annotated[int, typer.Option(help="onnxruntime threads.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per file.")] = False,
) -> None:
    """Classify audio files with an exported bundle (onnxruntime; no torch).
    Exit status 1 when some file could not be classified."""
    from slc.audio import AudioError
    from slc.runtime.classifier import Classifier

    allowed = [c for c in allow.split(",") if c.strip()] if allow else None
    try:
        classifier = Classifier(bundle, variant=variant, threads=threads, open_set=options.on_off(open_set, "--open-set"))
    except _USER_ERRORS as error:
        raise _fail(error) from None
    failed = 0
    with terminal.decoder_notes():
        for path in files:
            try:
                # Streamed from the file: a recording of hours needs no more memory than a minute.
                prediction = classifier.classify_file(path, allow=allowed, min_confidence=min_confidence, segments=segments)
            except AudioError as error:
                failed += 1
                if as_json:
                    typer.echo(json.dumps({"path": str(path), "error": error.reason, "detail": str(error)}))
                else:
                    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
                continue
            except ValueError as error:
                raise _fail(error) from None
            if as_json:
                typer.echo(json.dumps({"path": str(path), **prediction.to_dict(top_k)}))
            else:
                typer.echo(format_prediction(str(path), prediction, top_k))
    if failed:
        raise typer.Exit(code=1)


def format_prediction(path: str, prediction, top_k: int) -> str:
    """`path  language  p1 code1  p2 code2 ...`, then the timeline, one segment per line."""
    ranked = "  ".join(f"{code} {p:.3f}" for code, p in prediction.top(top_k))
    lines = [f"{path}  {prediction.language}  ({ranked})  {prediction.duration_s:.1f} s"]
    for segment in prediction.segments or []:
        lines.append(
            f"  {segment.start_s:7.1f} - {segment.end_s:7.1f} s  {segment.language:8s} {segment.confidence:.3f}"
        )
    return "\n".join(lines)


@app.command()
def serve(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory written by `slc export`.")],
    config: Annotated[Optional[Path], typer.Option(help=options.CONFIG_HELP.format("ServeConfig"))] = None,
    host: Annotated[Optional[str], typer.Option(help=options.with_default("Address to listen on; 0.0.0.0 for every interface.", cfg.ServeConfig, "host"))] = None,
    port: Annotated[Optional[int], typer.Option(help=options.with_default("HTTP port.", cfg.ServeConfig, "port"))] = None,
    ingress: Annotated[Optional[str], typer.Option(help=options.with_default(
        "What answers HTTP: `proxy` (Serve's own) or `haproxy` (HAProxy in front of replicas that serve HTTP "
        "themselves: about twice `proxy`'s requests per second on a replica; needs the haproxy binary).", cfg.ServeConfig, "ingress"))] = None,
    variant: Annotated[Optional[str], typer.Option(help="Model variant; default: the bundle's default.")] = None,
    replicas: Annotated[Optional[int], typer.Option(help=options.with_default("Replicas, each holding the model.", cfg.ServeConfig, "num_replicas"))] = None,
    threads: Annotated[Optional[int], typer.Option(help=options.with_default("onnxruntime threads (and CPUs) per replica.", cfg.ServeConfig, "threads"))] = None,
    max_batch_size: Annotated[Optional[int], typer.Option(help=options.with_default("Requests classified together.", cfg.ServeConfig, "max_batch_size"))] = None,
    open_set: Annotated[Optional[str], typer.Option(help=options.OPEN_SET_HELP + " (default: on)")] = None,
    once: Annotated[Optional[Path], typer.Option(help="Start, classify this audio file over HTTP, print the answer, stop.")] = None,
) -> None:
    """Serve a bundle over HTTP with Ray Serve: POST /v1/classify, a web page at /. Ctrl-C stops."""
    from slc.apps.serve_launcher import classify_once, run

    try:
        base = config_io.resolve(cfg.ServeConfig, config, {})
        settings = config_io.override(base, {
            "host": host, "port": port, "ingress": ingress, "variant": variant, "num_replicas": replicas,
            "threads": threads, "num_cpus": None if threads is None else float(threads),
            "max_batch_size": max_batch_size, "open_set": options.on_off(open_set, "--open-set"),
            # Room for two batches in a replica's queue, or batches never fill.
            "max_ongoing_requests": None if max_batch_size is None else max(base.max_ongoing_requests, 2 * max_batch_size),
        })  # fmt: skip
        if once is None:
            with terminal.service():
                run(bundle, settings)
            return
        status, answer = classify_once(bundle, once, settings)
    except _USER_ERRORS as error:
        raise _fail(error) from None
    typer.echo(f"{once}: HTTP {status} {json.dumps(answer)}")
    if status != 200:
        raise typer.Exit(code=1)


@app.command()
def stream(
    source: Annotated[str, typer.Argument(help="An audio file, or - for raw PCM on standard input (arecord, ffmpeg).")],
    url: Annotated[str, typer.Option(help="The endpoint `slc serve` runs.")] = "http://127.0.0.1:8000",
    realtime: Annotated[bool, typer.Option(help="Send a file at real time (as a microphone would), not as fast as the server takes it.")] = False,
    rate: Annotated[int, typer.Option(help="Standard input: sample rate in Hz.")] = 16000,
    channels: Annotated[int, typer.Option(help="Standard input: channels.")] = 1,
    encoding: Annotated[str, typer.Option(help="Standard input: pcm_s16le or f32le.")] = "pcm_s16le",
    allow: Annotated[Optional[str], typer.Option(help="Answer only among these languages, e.g. de,fr.")] = None,
    min_confidence: Annotated[Optional[float], typer.Option(help="Below this probability the answer is 'unknown'.")] = None,
    hop: Annotated[Optional[float], typer.Option(help="Seconds between partials; default: the server's.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Events as JSON lines.")] = False,
) -> None:
    """Stream audio to WS /v1/stream and print the live events. Exit status
    2 when the audio cannot be read or the server closed the stream for an error."""
    import sys

    from slc.audio import AudioError
    from slc.apps.stream_client import FRAME_S, file_frames, format_event, pipe_frames, stream_events

    start = {"sample_rate": rate, "encoding": encoding, "channels": channels}
    if source == "-":
        width = {"pcm_s16le": 2, "f32le": 4}.get(encoding, 2) * channels
        frames = pipe_frames(sys.stdin.buffer, int(FRAME_S * rate) * width, width)
    else:
        start = {"sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1}
        frames = file_frames(source)
    start.update({k: v for k, v in {"allow": allow.split(",") if allow else None, "min_confidence": min_confidence, "hop_s": hop}.items() if v is not None})

    def show(event: dict) -> None:
        typer.echo(json.dumps(event) if as_json else format_event(event))

    with terminal.decoder_notes():
        try:
            closed = stream_events(url, frames, start, realtime and source != "-", show)
        except (*_USER_ERRORS, AudioError) as error:
            raise _fail(error) from None
    if closed is not None:
        raise _fail(f"the server closed the stream: {closed['code']} {closed['reason']}")


@app.command()
def label(
    inputs: Annotated[list[str], typer.Argument(help="Directories, globs, .tar/.tar.gz/.zip archives, manifests (CSV with a path column, or a .txt of paths) or URIs such as s3://bucket/audio.")],
    bundle: Annotated[Path, typer.Option(help="Bundle directory written by `slc export`.")],
    out: Annotated[str, typer.Option(help="Output directory: a path or a URI such as s3://bucket/labels.")],
    config: Annotated[Optional[Path], typer.Option(help=options.CONFIG_HELP.format("LabelConfig"))] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help=options.with_default("parquet, csv or jsonl.", cfg.LabelConfig, "format"))] = None,
    variant: Annotated[Optional[str], typer.Option(help="Model variant; default: the bundle's default, fp32 on GPUs.")] = None,
    top_k: Annotated[Optional[int], typer.Option(help=options.with_default("Probabilities kept per file, highest first.", cfg.LabelConfig, "top_k"))] = None,
    segments: Annotated[Optional[bool], typer.Option("--segments/--no-segments", help=options.with_default("A timeline of languages per file, from sliding windows.", cfg.LabelConfig, "segments"))] = None,
    allow: Annotated[Optional[str], typer.Option(help="Answer only among these languages, e.g. de,fr. (default: all)")] = None,
    min_confidence: Annotated[Optional[float], typer.Option(help="Below this probability the answer is 'unknown'. (default: the bundle's open-set threshold)")] = None,
    open_set: Annotated[Optional[str], typer.Option(help=options.OPEN_SET_HELP + " (default: on)")] = None,
    max_duration: Annotated[Optional[float], typer.Option(help="Longest recording accepted (s); default: the bundle's.")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help=options.with_default("Classifier actors (pool shape).", cfg.LabelConfig, "concurrency"))] = None,
    threads: Annotated[Optional[int], typer.Option(help=options.with_default("onnxruntime threads per actor (pool) or task (fused).", cfg.LabelConfig, "threads"))] = None,
    cpus_per_actor: Annotated[Optional[float], typer.Option(help=options.with_default("Logical CPUs per classifier actor.", cfg.LabelConfig, "cpus_per_actor"))] = None,
    cpus_per_task: Annotated[Optional[float], typer.Option(help=options.with_default("Logical CPUs per read task (decode + featurise); must differ from --cpus-per-actor.", cfg.LabelConfig, "cpus_per_task"))] = None,
    gpus_per_actor: Annotated[Optional[float], typer.Option(help="GPUs per classifier actor (pool shape); the model then runs on CUDA (onnxruntime-gpu). (default: 1 when the cluster has GPUs, else 0)")] = None,
    files_per_task: Annotated[Optional[int], typer.Option(help=options.with_default("Most files per task.", cfg.LabelConfig, "files_per_task"))] = None,
    audio_per_task: Annotated[Optional[float], typer.Option(help=options.with_default("Seconds of audio per task, estimated from file sizes.", cfg.LabelConfig, "audio_s_per_task"))] = None,
    shape: Annotated[Optional[str], typer.Option(help=options.with_default("fused (read, decode, featurise and classify in one task: small models on CPUs), pool (classify in an actor pool: GPUs, large models) or auto.", cfg.LabelConfig, "shape"))] = None,
    rows_per_file: Annotated[Optional[int], typer.Option(help=options.with_default("Most rows per output file; each task writes its rows as it finishes.", cfg.LabelConfig, "rows_per_file"))] = None,
    truth_column: Annotated[Optional[str], typer.Option(help="Column (or field) of the inputs' dataset holding each clip's language: the summary says how often the labels agree with it.")] = None,
    resume: Annotated[bool, typer.Option(help="Skip the files OUT already has an answer for (same bundle and settings); retry those that failed for a transient reason (unreadable, failed).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it has contents.")] = False,
) -> None:
    """Label audio archives on Ray Data: one row per file, its language or why it has none."""
    from slc.apps.label import format_summary, label as run_label

    try:
        flags = {
            "variant": variant, "format": fmt, "top_k": top_k, "segments": segments, "allow": options.codes(allow),
            "min_confidence": min_confidence, "max_duration_s": max_duration, "concurrency": concurrency,
            "threads": threads, "cpus_per_actor": cpus_per_actor, "cpus_per_task": cpus_per_task,
            "gpus_per_actor": gpus_per_actor,
            "files_per_task": files_per_task, "rows_per_file": rows_per_file, "truth_column": truth_column,
            "audio_s_per_task": audio_per_task, "shape": shape, "open_set": options.on_off(open_set, "--open-set"),
        }  # fmt: skip
        settings = config_io.resolve(cfg.LabelConfig, config, flags)
        with terminal.job(out), terminal.Bar("labelling", "file") as bar:
            summary = run_label(inputs, bundle, out, settings, resume=resume, overwrite=overwrite, progress=bar)
    except _USER_ERRORS as error:
        raise _fail(error) from None
    typer.echo(format_summary(summary))


if __name__ == "__main__":
    app()
