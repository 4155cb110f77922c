"""Batch labelling of audio archives on Ray Data: every file in, one row out.

    list (driver) -> read, decode, featurise (CPU tasks) -> classify (an actor
    pool of Classifiers) -> part files under OUT, written as the run goes

Inputs are local paths or pyarrow filesystem URIs: directories (every file
under them, hidden ones aside), local globs, `.tar`/`.tar.gz`/`.tgz`/`.zip`
archives (members read in place, named `archive.tar::member`), and manifests
(a CSV/TSV with a `path` column, or a `.txt`/`.lst` file with one path per
line; relative paths resolve against the manifest's folder).

A file that cannot be labelled is a row with its `error` (a reason code) and
`detail`, never a failed job: labelled + failed == listed, always. Recordings
longer than the bundle's `whole_clip_max_s` (and all of them with `segments`)
are classified by sliding windows, a batch of windows at a time.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import glob
import hashlib
import json
import logging
import math
import os
import posixpath
import tarfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
from ray.data.block import BlockAccessor
from ray.data.datasource.datasink import Datasink

from slc import __version__, audio, config as cfg, storage
from slc.config import LabelConfig
from slc.batch.raydata import without_resource_reservation
from slc.batch.columns import arrays_of, flat_list_column
from slc.runtime.classifier import Classifier, Prediction

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".lst")  # as inputs; inside a directory they are files like any other
MEMBER_SEPARATOR = "::"
SETTINGS_FILE = "settings.json"
# Settings that change how fast a run goes, not what it writes: a resumed run may change them.
_SPEED_SETTINGS = ("concurrency", "threads", "cpus_per_actor", "cpus_per_task", "files_per_task", "rows_per_file")

OUTCOME_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("language", pa.string()),  # null when the file could not be labelled
        ("confidence", pa.float64()),
        ("duration_s", pa.float64()),  # of the clip after silence trimming
        ("error", pa.string()),  # a reason code (empty, undecodable, ...); null when labelled
        ("detail", pa.string()),  # the error's message, naming the file
    ]
)
_SEGMENT = pa.struct(
    [("start_s", pa.float64()), ("end_s", pa.float64()), ("language", pa.string()), ("confidence", pa.float64())]
)
# Between reading and classifying: features of a whole clip, or the waveform of one classified by windows.
_READ_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("error", pa.string()),
        ("detail", pa.string()),
        ("duration_s", pa.float64()),
        ("features", pa.large_list(pa.float32())),  # frames * num_mel_bins, row-major
        ("waveform", pa.large_list(pa.float32())),
    ]
)


class LabelError(ValueError):
    """Inputs that cannot be listed, or an output that cannot be resumed."""


def output_schema(segments: bool) -> pa.Schema:
    """Columns of the label files: the outcome, the top-k `probabilities`
    (highest first) and, with `segments`, the timeline."""
    schema = OUTCOME_SCHEMA.insert(3, pa.field("probabilities", pa.map_(pa.string(), pa.float64())))
    return schema.insert(5, pa.field("segments", pa.list_(_SEGMENT))) if segments else schema


def label(
    inputs: Sequence[str | Path],
    bundle: str | Path,
    out: str,
    config: LabelConfig = LabelConfig(),
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Label every audio file of `inputs` with `bundle` into `out` (a path or URI).

    Returns the summary also written to `out/summary.json`. Raises
    `StorageError` when `out` has contents and neither `resume` nor
    `overwrite`, and `LabelError` when resuming with other settings or inputs.
    """
    started = time.perf_counter()
    bundle = Path(bundle).expanduser().resolve()  # workers may run in another directory
    classifier = Classifier(bundle, config.variant, config.threads)  # a bad bundle or variant fails here, not in a worker
    settings = {"bundle": classifier.info, "config": cfg.to_dict(config)}
    fs, root = _open_output(out, settings, resume, overwrite)
    items, filesystems = list_inputs(inputs)
    done = _done(fs, root, items, out) if resume else set()
    todo = [item for item in items if item["path"] not in done]
    log.info("labelling %d files (%d listed, %d labelled before)", len(todo), len(items), len(done))
    if todo:
        sink = LabelSink(fs, root, config.format, config.rows_per_file)
        with without_resource_reservation():
            _pipeline(todo, filesystems, str(bundle), config).write_datasink(sink)
    cores = ray.cluster_resources().get("CPU") if ray.is_initialized() else None
    summary = summarize(items, read_parts(fs, root), {i["path"] for i in todo}, time.perf_counter() - started, cores)
    summary.update(
        inputs=[storage.redact(i) for i in inputs],
        out=storage.redact(out),
        bundle=classifier.info,
        format=config.format,
        slc_version=__version__,
    )
    storage.write_json(fs, storage.join(root, "summary.json"), summary)
    return summary


# --- listing -----------------------------------------------------------------


def list_inputs(inputs: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[pafs.FileSystem]]:
    """Inputs -> (items sorted by `path`, each once; the filesystems they
    index). An item names a file or archive member by `path` (what the output
    calls it) and `source` (its path in `filesystems[fs]`); an archive that
    cannot be listed is an item with its `error` already set."""
    filesystems: list[pafs.FileSystem] = []
    items: dict[str, dict[str, Any]] = {}
    for location in inputs:
        for fs, path, shown in _locations(str(location)):
            index = next((i for i, known in enumerate(filesystems) if known.equals(fs)), None)
            if index is None:
                filesystems.append(fs)
                index = len(filesystems) - 1
            for item in _expand(fs, path, shown, index):
                items.setdefault(item["path"], item)
    return sorted(items.values(), key=lambda item: item["path"]), filesystems


def _locations(location: str) -> list[tuple[pafs.FileSystem, str, str]]:
    """(filesystem, path, shown name) for an input; a local glob gives one per match."""
    fs, path = storage.resolve(location)
    shown = _shown(location, path)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return [(fs, path, shown)]
    if "://" not in location and glob.has_magic(location):
        matches = sorted(glob.glob(os.path.expanduser(location), recursive=True))
        resolved = [Path(m).resolve().as_posix() for m in matches]
        if resolved:
            return [(fs, m, m) for m in resolved]
    raise LabelError(f"{storage.redact(location)}: no such file, directory or glob match")


def _shown(location: str, path: str) -> str:
    """How the output names a file: its local path, or its URI without credentials or options."""
    return f"{urlsplit(location).scheme}://{path}" if "://" in location else path


def _shown_as(shown: str, path: str, other: str) -> str:
    """The shown name of `other`, a path on the filesystem where `path` is shown as `shown`."""
    return shown[: len(shown) - len(path)] + other


def _expand(fs: pafs.FileSystem, path: str, shown: str, index: int) -> list[dict[str, Any]]:
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = [
            f.path for f in found
            if f.type == pafs.FileType.File and not _hidden(posixpath.relpath(f.path, path))
        ]  # fmt: skip
        return [item for file in sorted(files) for item in _file_items(fs, file, _shown_as(shown, path, file), index)]
    if path.lower().endswith(MANIFEST_SUFFIXES):
        return [item for entry in _manifest_entries(fs, path, shown) for item in _file_items(*entry, index)]
    return _file_items(fs, path, shown, index)


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _manifest_entries(fs: pafs.FileSystem, path: str, shown: str) -> list[tuple[pafs.FileSystem, str, str]]:
    """The files a manifest names, relative to its folder, on its filesystem."""
    text = storage.read_text(fs, path)
    if path.lower().endswith((".csv", ".tsv")):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.lower().endswith(".tsv") else ",")
        if "path" not in (reader.fieldnames or ()):
            raise LabelError(f"{shown}: a manifest needs a 'path' column; found {reader.fieldnames}")
        names = [(row["path"] or "").strip() for row in reader]
    else:
        names = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    entries = []
    for name in filter(None, names):
        if "://" in name:
            entry_fs, entry_path = storage.resolve(name)
            entries.append((entry_fs, entry_path, _shown(name, entry_path)))
        else:
            entry = posixpath.normpath(posixpath.join(posixpath.dirname(path), name))  # join keeps an absolute name
            entries.append((fs, entry, _shown_as(shown, path, entry)))
    return entries


def _file_items(fs: pafs.FileSystem, path: str, shown: str, index: int) -> list[dict[str, Any]]:
    item = {"path": shown, "fs": index, "source": path, "member": None, "error": None, "detail": None}
    if not path.lower().endswith(ARCHIVE_SUFFIXES):
        return [item]
    try:
        members = _archive_members(fs, path)
    except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as error:
        unreadable = audio.UnreadableAudioError(shown, f"not a readable archive ({error})")
        return [{**item, "error": unreadable.reason, "detail": str(unreadable)}]
    return [{**item, "path": f"{shown}{MEMBER_SEPARATOR}{m}", "member": m} for m in members if not _hidden(m)]


def _archive_members(fs: pafs.FileSystem, path: str) -> list[str]:
    with fs.open_input_file(path) as handle:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(handle) as archive:
                return [info.filename for info in archive.infolist() if not info.is_dir()]
        with tarfile.open(fileobj=handle, mode="r:*") as archive:
            return [member.name for member in archive.getmembers() if member.isfile()]


# --- the pipeline --------------------------------------------------------------


def _pipeline(items: list[dict[str, Any]], filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig):
    blocks = max(1, math.ceil(len(items) / config.files_per_task))
    return (
        ray.data.from_items(items, override_num_blocks=blocks)
        .map_batches(
            read_batch,
            fn_kwargs={"filesystems": filesystems, "bundle": bundle, "config": config},
            batch_format="pyarrow",
            batch_size=config.files_per_task,
            num_cpus=config.cpus_per_task,
        )
        .map_batches(
            Labeller,
            fn_constructor_kwargs={"bundle": bundle, "config": config},
            compute=ray.data.ActorPoolStrategy(size=config.concurrency),
            batch_format="pyarrow",
            num_cpus=config.cpus_per_actor,
        )
    )


@functools.lru_cache(maxsize=2)
def _classifier(bundle: str, variant: str | None) -> Classifier:
    """One per worker process, kept across read tasks; one thread, as tasks are many."""
    return Classifier(bundle, variant, threads=1)


def read_batch(
    batch: pa.Table, filesystems: list[pafs.FileSystem], bundle: str, config: LabelConfig
) -> pa.Table:
    """Items (from `list_inputs`) -> rows of _READ_SCHEMA: the features of a
    whole clip, the waveform of one to classify by windows, or the error."""
    classifier = _classifier(bundle, config.variant)
    audio_config = classifier.audio_config
    if config.max_duration_s is not None:
        audio_config = dataclasses.replace(audio_config, max_duration_s=config.max_duration_s)
    items = batch.to_pylist()
    rows = [_decode(item, data, audio_config) for item, data in zip(items, _read_all(items, filesystems))]
    longest = classifier.window.whole_clip_max_s * classifier.feature_config.sample_rate
    whole = [i for i, row in enumerate(rows) if "clip" in row and not (config.segments or len(row["clip"]) > longest)]
    for i, features in zip(whole, classifier.featurize([rows[i].pop("clip") for i in whole])):
        rows[i]["features"] = features
    columns = {name: [row.get(name) for row in rows] for name in ("path", "error", "detail", "duration_s")}
    columns["features"] = flat_list_column([row.get("features") for row in rows], np.float32)
    columns["waveform"] = flat_list_column([row.get("clip") for row in rows], np.float32)
    return pa.table(columns, schema=_READ_SCHEMA)


def _read_all(items: list[dict[str, Any]], filesystems: list[pafs.FileSystem]) -> list[bytes | Exception | None]:
    """The bytes of each item (None for an item failed at listing); an
    archive is opened once for all of its members in the batch."""
    data: list[bytes | Exception | None] = [None] * len(items)
    by_archive: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        if item["error"] is None and item["member"] is None:
            data[i] = _read_file(filesystems[item["fs"]], item["source"], item["path"])
        elif item["error"] is None:
            by_archive[(item["fs"], item["source"])].append(i)
    for (index, source), chosen in by_archive.items():
        try:
            members = _read_members(filesystems[index], source, {items[i]["member"] for i in chosen})
        except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as error:
            members = {}
            why = f"archive not readable ({error})"
        else:
            why = "member not found in the archive"
        for i in chosen:
            member = items[i]["member"]
            data[i] = members[member] if member in members else audio.UnreadableAudioError(items[i]["path"], why)
    return data


def _read_file(fs: pafs.FileSystem, source: str, shown: str) -> bytes | Exception:
    try:
        with fs.open_input_stream(source) as stream:
            return stream.read()
    except OSError as error:
        return audio.UnreadableAudioError(shown, str(error))


def _read_members(fs: pafs.FileSystem, source: str, wanted: set[str]) -> dict[str, bytes]:
    with fs.open_input_file(source) as handle:
        if source.lower().endswith(".zip"):
            with zipfile.ZipFile(handle) as archive:
                return {name: archive.read(name) for name in wanted if name in archive.NameToInfo}
        found = {}
        with tarfile.open(fileobj=handle, mode="r:*") as archive:
            for member in archive:  # in order: a compressed tar cannot be read out of order
                if member.name in wanted and member.isfile():
                    found[member.name] = archive.extractfile(member).read()
                    if len(found) == len(wanted):
                        break
        return found


def _decode(item: dict[str, Any], data: bytes | Exception | None, audio_config) -> dict[str, Any]:
    row = {"path": item["path"], "error": item["error"], "detail": item["detail"]}
    if item["error"] is not None:
        return row
    try:
        if isinstance(data, Exception):
            raise data
        clip = audio.load(data, audio_config, name=item["path"])
    except audio.AudioError as error:
        return {**row, "error": error.reason, "detail": str(error)}
    except Exception as error:  # a bug or resource failure must not lose the other files
        return {**row, "error": "failed", "detail": f"{item['path']}: {type(error).__name__}: {error}"}
    return {**row, "clip": clip, "duration_s": len(clip) / audio_config.sample_rate}


class Labeller:
    """Ray Data actor: rows of _READ_SCHEMA -> rows of `output_schema`."""

    def __init__(self, bundle: str, config: LabelConfig) -> None:
        self.classifier = Classifier(bundle, config.variant, config.threads)
        self.config = config
        self.allow = list(config.allow) or None

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.select(["path", "error", "detail", "duration_s"]).to_pylist()
        features = arrays_of(batch["features"], self.classifier.feature_config.num_mel_bins)
        waveforms = arrays_of(batch["waveform"], 1)
        predictions: dict[int, Prediction] = {}
        whole = [i for i, f in enumerate(features) if f is not None]
        with _failures_as_errors(rows, whole):
            durations = [rows[i]["duration_s"] for i in whole]
            answers = self.classifier.classify_features(
                [features[i] for i in whole], durations, self.allow, self.config.min_confidence
            )
            predictions.update(zip(whole, answers))
        for i in (i for i, w in enumerate(waveforms) if w is not None):
            with _failures_as_errors(rows, [i]):
                predictions[i] = self.classifier.classify(
                    waveforms[i][:, 0], self.allow, self.config.min_confidence, segments=self.config.segments
                )
        table = [_output_row(row, predictions.get(i), self.config) for i, row in enumerate(rows)]
        return pa.Table.from_pylist(table, schema=output_schema(self.config.segments))


@contextlib.contextmanager
def _failures_as_errors(rows: list[dict[str, Any]], chosen: list[int]):
    """A failure classifying becomes the error of the rows it concerns, never a lost batch."""
    try:
        yield
    except Exception as error:
        for i in chosen:
            rows[i].update(error="failed", detail=f"{rows[i]['path']}: {type(error).__name__}: {error}")


def _output_row(row: dict[str, Any], prediction: Prediction | None, config: LabelConfig) -> dict[str, Any]:
    out: dict[str, Any] = {**row, "language": None, "confidence": None, "probabilities": None, "duration_s": None}
    if prediction is not None and row["error"] is None:
        out.update(
            language=prediction.language,
            confidence=prediction.confidence,
            probabilities=prediction.top(config.top_k),
            duration_s=prediction.duration_s,
        )
    if config.segments:
        segments = prediction.segments if prediction is not None and row["error"] is None else None
        out["segments"] = None if segments is None else [dataclasses.asdict(s) for s in segments]
    return out


# --- output --------------------------------------------------------------------


class LabelSink(Datasink[None]):
    """Ray Data sink: rows of `output_schema` into `part-<digest>.<format>`
    files of at most `rows_per_file` rows under `root`, each in place only
    once whole (written aside, then moved), so an interrupted run leaves only
    complete parts. The digest is of the paths in the part, so a retried
    write replaces its own file."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, fmt: str, rows_per_file: int) -> None:
        self.filesystem, self.root, self.format, self.rows_per_file = filesystem, root, fmt, rows_per_file

    @property
    def min_rows_per_write(self) -> int:
        return self.rows_per_file

    def write(self, blocks, ctx) -> None:
        tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
        table = pa.concat_tables([t for t in tables if t.num_rows])
        for start in range(0, table.num_rows, self.rows_per_file):
            self._write_part(table.slice(start, self.rows_per_file))

    def _write_part(self, table: pa.Table) -> None:
        digest = hashlib.sha256("\n".join(table["path"].to_pylist()).encode()).hexdigest()[:16]
        name = f"part-{digest}.{self.format}"
        aside = storage.join(self.root, f".{name}.tmp")
        with self.filesystem.open_output_stream(aside) as stream:
            _write_table(table, stream, self.format)
        self.filesystem.move(aside, storage.join(self.root, name))


def _write_table(table: pa.Table, stream, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, stream)
        return
    rows = table.to_pylist()
    for row in rows:
        row["probabilities"] = None if row["probabilities"] is None else dict(row["probabilities"])
    if fmt == "jsonl":
        stream.write("".join(json.dumps(row) + "\n" for row in rows).encode())
        return
    nested = [name for name in ("probabilities", "segments") if name in table.column_names]
    for row in rows:  # CSV cells are flat: nested values as JSON text
        row.update({name: None if row[name] is None else json.dumps(row[name]) for name in nested})
    schema = pa.schema([pa.field(n, pa.string()) if n in nested else table.schema.field(n) for n in table.column_names])
    pacsv.write_csv(pa.Table.from_pylist(rows, schema=schema), stream)


def read_labels(out: str | Path) -> pa.Table:
    """Every row a labelling run has written to `out` (any format), with the
    columns of OUTCOME_SCHEMA."""
    fs, root = storage.resolve(out)
    return read_parts(fs, root)


def read_parts(fs: pafs.FileSystem, root: str) -> pa.Table:
    found = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    parts = sorted(
        f.path for f in found
        if f.base_name.startswith("part-") and f.base_name.endswith(tuple(f".{x}" for x in LabelConfig.FORMATS))
    )  # fmt: skip
    return pa.concat_tables([_read_part(fs, p) for p in parts] or [OUTCOME_SCHEMA.empty_table()])


def _read_part(fs: pafs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_file(path) as handle:
        if path.endswith(".parquet"):
            return pq.read_table(handle, columns=OUTCOME_SCHEMA.names).cast(OUTCOME_SCHEMA)
        if path.endswith(".csv"):
            options = pacsv.ConvertOptions(
                include_columns=OUTCOME_SCHEMA.names,
                column_types={f.name: f.type for f in OUTCOME_SCHEMA},
                strings_can_be_null=True,
            )
            return pacsv.read_csv(handle, pacsv.ReadOptions(), pacsv.ParseOptions(newlines_in_values=True), options)
        rows = [json.loads(line) for line in handle.read().decode().splitlines() if line]
        return pa.Table.from_pylist([{n: r[n] for n in OUTCOME_SCHEMA.names} for r in rows], schema=OUTCOME_SCHEMA)


def _open_output(out: str, settings: dict[str, Any], resume: bool, overwrite: bool) -> tuple[pafs.FileSystem, str]:
    """The output directory, with SETTINGS_FILE recording the settings of the
    run; resuming refuses one written with settings that change the labels."""
    if not resume:
        fs, root = storage.prepare_output(out, overwrite)
    else:
        fs, root = storage.resolve(out)
        fs.create_dir(root, recursive=True)
        if not storage.is_empty(fs, root):
            _check_same_settings(fs, root, settings, out)
        for leftover in fs.get_file_info(pafs.FileSelector(root)):
            if leftover.base_name.startswith(".part-") and leftover.base_name.endswith(".tmp"):
                fs.delete_file(leftover.path)  # a part an interrupted run had not finished
    storage.write_json(fs, storage.join(root, SETTINGS_FILE), settings)
    return fs, root


def _check_same_settings(fs: pafs.FileSystem, root: str, settings: dict[str, Any], out: str) -> None:
    path = storage.join(root, SETTINGS_FILE)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise LabelError(f"{storage.redact(out)}: has contents but no {SETTINGS_FILE}; not a labelling output to resume")
    before = json.loads(storage.read_text(fs, path))

    def deciding(s: dict[str, Any]) -> dict[str, Any]:
        config = {k: v for k, v in s["config"].items() if k not in _SPEED_SETTINGS and k != "variant"}
        return {"model": s["bundle"]["sha256"], **config}

    changed = sorted(k for k, v in deciding(settings).items() if deciding(before).get(k) != v)
    if changed:
        raise LabelError(
            f"{storage.redact(out)}: was labelled with other settings ({', '.join(changed)}); "
            "resume with the same bundle and settings, or label into a new output"
        )


def _done(fs: pafs.FileSystem, root: str, items: list[dict[str, Any]], out: str) -> set[str]:
    done = set(read_parts(fs, root)["path"].to_pylist())
    strangers = done - {item["path"] for item in items}
    if strangers:
        raise LabelError(
            f"{storage.redact(out)}: holds labels for {len(strangers)} files that are not among the inputs "
            f"(e.g. {min(strangers)}); resume with the same inputs"
        )
    return done


# --- summary -------------------------------------------------------------------


def summarize(
    items: list[dict[str, Any]], outcome: pa.Table, this_run: set[str], wall_s: float, cores: float | None
) -> dict[str, Any]:
    """Counts, hours, languages and errors over the whole output; speed over
    the files labelled in this run. Raises if the output does not hold every
    listed file exactly once."""
    paths = outcome["path"].to_pylist()
    listed = {item["path"] for item in items}
    if len(paths) != len(set(paths)) or set(paths) != listed:
        raise RuntimeError(
            f"labelling lost or repeated files: {len(listed)} listed, {len(set(paths) & listed)} of them in "
            f"the output, which has {len(paths)} rows"
        )
    rows = outcome.select(["path", "language", "duration_s", "error"]).to_pylist()
    labelled = [r for r in rows if r["error"] is None]
    run_audio_s = sum(r["duration_s"] for r in labelled if r["path"] in this_run)
    return {
        "listed": len(listed),
        "labelled": len(labelled),
        "failed": len(rows) - len(labelled),
        "labelled_before": len(listed) - len(this_run),
        "audio_hours": round(sum(r["duration_s"] for r in labelled) / 3600, 4),
        "languages": dict(Counter(r["language"] for r in labelled).most_common()),
        "errors_by_reason": dict(sorted(Counter(r["error"] for r in rows if r["error"]).items())),
        "wall_s": round(wall_s, 2),
        "cores": cores,
        "audio_s_per_s_per_core": round(run_audio_s / wall_s / cores, 1) if cores else None,
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a table of files per language and a few lines of totals."""
    counts = [("language", "files"), *((code, str(n)) for code, n in summary["languages"].items())]
    width = max(len(code) for code, _ in counts)
    lines = [f"{code.ljust(width)}  {n}" for code, n in counts]
    lines.insert(1, f"{'-' * width}  -----")
    lines.append(
        f"listed {summary['listed']} = labelled {summary['labelled']} + failed {summary['failed']}"
        f"  ({summary['audio_hours']:.3f} h of audio; {summary['labelled_before']} labelled before this run)"
    )
    if summary["audio_s_per_s_per_core"] is not None:
        lines.append(
            f"{summary['wall_s']:.1f} s on {summary['cores']:g} cores: "
            f"{summary['audio_s_per_s_per_core']:.1f} audio-seconds per second per core"
        )
    if summary["errors_by_reason"]:
        lines.append("failed by reason: " + json.dumps(summary["errors_by_reason"]))
    lines.append(f"labels: {summary['out']}")
    return "\n".join(lines)
