"""The `slc` command line: parse, call the library, print."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Annotated, Optional

import typer

from slc import config as cfg

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Spoken language classifier on Ray.")

# Errors a user can act on: printed as one line, exit status 2, no traceback.
_USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileExistsError, FileNotFoundError, OSError)


def _fail(error: Exception) -> typer.Exit:
    typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logger = logging.getLogger("slc")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("slc: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Directory for the corpus (VoxLingua107 layout + manifest.csv).")],
    langs: Annotated[str, typer.Option(help="Comma-separated languages espeak-ng speaks.")] = "de,en,fr,it",
    per_lang: Annotated[int, typer.Option(help="Clips per language.")] = 100,
    seed: Annotated[int, typer.Option(help="Same seed, same corpus.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it has contents.")] = False,
) -> None:
    """Make a demo corpus of espeak-ng speech: many voices, unseen test voices and sentences."""
    from slc.synth import make_corpus

    if overwrite and out.exists():
        shutil.rmtree(out)
    codes = [c.strip() for c in langs.split(",") if c.strip()]
    try:
        with typer.progressbar(length=per_lang * len(codes), label="synthesising", file=None) as bar:
            summary = make_corpus(out, codes, per_lang, seed=seed, progress=lambda done, total: bar.update(1))
    except _USER_ERRORS + (RuntimeError,) as error:
        raise _fail(error) from None
    rows = [
        [split, lang, str(summary.clips[split].get(lang, 0)), str(summary.voices[split].get(lang, 0))]
        for split in summary.clips
        for lang in codes
    ]
    typer.echo(_table(["split", "lang", "clips", "voices"], rows))
    typer.echo(f"corpus: {summary.root}  manifest: {summary.manifest}")


@app.command()
def ingest(
    corpus: Annotated[str, typer.Argument(help="Corpus tree (<root>/<lang>/**/<audio>) or CSV/TSV manifest.")],
    out: Annotated[str, typer.Argument(help="Shard directory: a path or a URI such as s3://bucket/shards.")],
    labels: Annotated[Optional[str], typer.Option(help="Keep only these languages, in this order: de,fr,it.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="IngestConfig as YAML or JSON; flags override it.")] = None,
    split: Annotated[Optional[str], typer.Option(help="train,val,test fractions by group, e.g. 0.8,0.1,0.1.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the group split.")] = None,
    max_duration: Annotated[Optional[float], typer.Option(help="Reject clips longer than this (s).")] = None,
    min_duration: Annotated[Optional[float], typer.Option(help="Reject clips shorter than this after trimming (s).")] = None,
    trim: Annotated[Optional[bool], typer.Option("--trim/--no-trim", help="Trim leading/trailing silence.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUT if it has contents.")] = False,
) -> None:
    """Featurize a corpus into Parquet shards per split, with rejects and a summary."""
    from slc.ingest import ingest as run_ingest

    try:
        settings = cfg.load(cfg.IngestConfig, config) if config else cfg.IngestConfig()
        settings = _override_ingest(settings, labels, split, seed, max_duration, min_duration, trim)
        summary = run_ingest(corpus, out, settings, overwrite=overwrite)
    except _USER_ERRORS as error:
        raise _fail(error) from None
    typer.echo(format_ingest_summary(summary))


def _override_ingest(
    settings: cfg.IngestConfig,
    labels: str | None,
    split: str | None,
    seed: int | None,
    max_duration: float | None,
    min_duration: float | None,
    trim: bool | None,
) -> cfg.IngestConfig:
    audio = settings.audio
    if max_duration is not None:
        audio = dataclasses.replace(audio, max_duration_s=max_duration)
    if min_duration is not None:
        audio = dataclasses.replace(audio, min_duration_s=min_duration)
    if trim is not None:
        audio = dataclasses.replace(audio, trim_silence=trim)
    split_config = settings.split
    if split is not None:
        train, val, test = (float(x) for x in split.split(","))
        split_config = dataclasses.replace(split_config, train=train, val=val, test=test)
    if seed is not None:
        split_config = dataclasses.replace(split_config, seed=seed)
    codes = tuple(c.strip() for c in labels.split(",") if c.strip()) if labels else settings.labels
    return dataclasses.replace(settings, audio=audio, split=split_config, labels=codes)


def format_ingest_summary(summary: dict) -> str:
    """The ingest summary as a table of clips and hours per split and language."""
    rows = [
        [split, lang, str(stats["clips"]), f"{stats['hours']:.3f}"]
        for split, split_stats in summary["splits"].items()
        for lang, stats in split_stats["languages"].items()
    ]
    lines = [_table(["split", "lang", "clips", "hours"], rows)]
    lines.append(
        f"discovered {summary['discovered']} = accepted {summary['accepted']} + rejected {summary['rejected']}"
        f"  ({summary['audio_hours']:.3f} h of audio in {summary['wall_s']:.1f} s)"
    )
    if summary["rejected_by_reason"]:
        lines.append("rejected by reason: " + json.dumps(summary["rejected_by_reason"]))
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


if __name__ == "__main__":
    app()
