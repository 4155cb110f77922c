"""The output of a labelling run: part files of one format (parquet, csv,
jsonl) under one directory, the settings they were written with, and how a
resumed run finds what is left to do.

    <out>/part-<digest>.<format>   one row per input file (`output_schema`)
    <out>/settings.json            the bundle and settings of the run
    <out>/summary.json             written when a run completes
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from slc import storage
from slc.batch import accounting, sink
from slc.config import LabelConfig

SETTINGS_FILE = "settings.json"
# Settings that change how fast a run goes, not what it writes: a resumed run may change them.
_SPEED_SETTINGS = (
    "concurrency", "threads", "cpus_per_actor", "cpus_per_task", "files_per_task", "rows_per_file",
    "audio_s_per_task", "shape", "fused_max_model_mb",
)  # fmt: skip
_NESTED = ("probabilities", "segments")  # JSON text in a CSV cell

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


class LabelError(ValueError):
    """An output that cannot be resumed."""


def output_schema(segments: bool) -> pa.Schema:
    """Columns of the label files: the outcome, the top-k `probabilities`
    (highest first) and, with `segments`, the timeline."""
    schema = OUTCOME_SCHEMA.insert(3, pa.field("probabilities", pa.map_(pa.string(), pa.float64())))
    return schema.insert(5, pa.field("segments", pa.list_(_SEGMENT))) if segments else schema


def writer(fmt: str) -> sink.Writer:
    """The function writing a table of `output_schema` rows in `fmt`."""
    return {"parquet": _write_parquet, "csv": _write_csv, "jsonl": _write_jsonl}[fmt]


def _write_parquet(table: pa.Table, stream) -> None:
    pq.write_table(table, stream)


def _write_jsonl(table: pa.Table, stream) -> None:
    stream.write("".join(json.dumps(row) + "\n" for row in _plain_rows(table)).encode())


def _write_csv(table: pa.Table, stream) -> None:
    """Nested values as JSON text: CSV cells are flat. A table read back from
    CSV (nested columns already text) is written as it is."""
    nested = [n for n in _NESTED if n in table.column_names and not pa.types.is_string(table.schema.field(n).type)]
    rows = _plain_rows(table)
    for row in rows:
        row.update({name: None if row[name] is None else json.dumps(row[name]) for name in nested})
    schema = pa.schema([pa.field(n, pa.string()) if n in nested else table.schema.field(n) for n in table.column_names])
    pacsv.write_csv(pa.Table.from_pylist(rows, schema=schema), stream)


def _plain_rows(table: pa.Table) -> list[dict[str, Any]]:
    """Rows with `probabilities` as a dict (a map column reads as pairs)."""
    rows = table.to_pylist()
    if "probabilities" in table.column_names and pa.types.is_map(table.schema.field("probabilities").type):
        for row in rows:
            row["probabilities"] = None if row["probabilities"] is None else dict(row["probabilities"])
    return rows


def read_labels(out: str) -> pa.Table:
    """Every row a labelling run has written to `out` (any format), with the
    columns of OUTCOME_SCHEMA."""
    fs, root = storage.resolve(out)
    return read_parts(fs, root)


def read_parts(fs: pafs.FileSystem, root: str) -> pa.Table:
    """The OUTCOME_SCHEMA columns of every part under `root`."""
    tables = [_read_part(fs, path, OUTCOME_SCHEMA.names) for path in _all_parts(fs, root)]
    return pa.concat_tables(tables or [OUTCOME_SCHEMA.empty_table()])


def _all_parts(fs: pafs.FileSystem, root: str) -> list[str]:
    return sorted(path for fmt in LabelConfig.FORMATS for path in sink.parts(fs, root, fmt))


def _read_part(fs: pafs.FileSystem, path: str, columns: list[str] | None) -> pa.Table:
    """A part's rows: `columns` of OUTCOME_SCHEMA, or None for every column as stored."""
    with fs.open_input_file(path) as handle:
        if path.endswith(".parquet"):
            table = pq.read_table(handle, columns=columns)
            return table if columns is None else table.cast(OUTCOME_SCHEMA)
        if path.endswith(".csv"):
            return _read_csv(handle, columns)
        rows = [json.loads(line) for line in handle.read().decode().splitlines() if line]
    if columns is None:
        return pa.Table.from_pylist(rows, schema=output_schema(bool(rows) and "segments" in rows[0]))
    return pa.Table.from_pylist([{n: r[n] for n in columns} for r in rows], schema=OUTCOME_SCHEMA)


def _read_csv(handle, columns: list[str] | None) -> pa.Table:
    types = {f.name: f.type for f in OUTCOME_SCHEMA} | {n: pa.string() for n in _NESTED}
    options = pacsv.ConvertOptions(include_columns=columns or [], column_types=types, strings_can_be_null=True)
    table = pacsv.read_csv(handle, pacsv.ReadOptions(), pacsv.ParseOptions(newlines_in_values=True), options)
    return table.select(columns) if columns else table


def record_settings(fs: pafs.FileSystem, root: str, out: str, settings: dict[str, Any], resume: bool) -> None:
    """Write SETTINGS_FILE for this run. Resuming refuses an output written
    with settings that change the labels, and drops the parts an interrupted
    run had not finished."""
    if resume:
        if not storage.is_empty(fs, root):
            _check_same_settings(fs, root, settings, out)
        sink.remove_unfinished(fs, root)
    storage.write_json(fs, storage.join(root, SETTINGS_FILE), settings)


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
        was, now = before["bundle"].get("variant"), settings["bundle"]["variant"]
        hint = (
            f"variant {now} now, {was} before; resume with --variant {was}"
            if "model" in changed and was != now
            else "resume with the same bundle and settings"
        )
        raise LabelError(
            f"{storage.redact(out)}: was labelled with other settings ({', '.join(changed)}); {hint}, or label into a new output"
        )


def settled(fs: pafs.FileSystem, root: str, listed: set[str], out: str) -> set[str]:
    """For a resumed run: the paths `root` holds a final answer for (a
    language, or a permanent reason). Rows of transient failures are taken
    out of their parts, to be tried again. Raises LabelError when `root`
    holds rows of files not `listed`."""
    outcome = read_parts(fs, root)
    strangers = set(outcome["path"].to_pylist()) - listed
    if strangers:
        raise LabelError(
            f"{storage.redact(out)}: holds labels for {len(strangers)} files that are not among the inputs "
            f"(e.g. {min(strangers)}); resume with the same inputs"
        )
    transient = pc.is_in(outcome["error"], pa.array(sorted(accounting.TRANSIENT_REASONS)))
    retry = set(outcome.filter(transient)["path"].to_pylist())
    if retry:
        _drop_rows(fs, root, retry)
    return set(outcome["path"].to_pylist()) - retry


def _drop_rows(fs: pafs.FileSystem, root: str, paths: set[str]) -> None:
    """Rewrite each part holding some of `paths` without them."""
    for part in _all_parts(fs, root):
        table = _read_part(fs, part, None)
        drop = pc.is_in(table["path"], pa.array(sorted(paths)))
        if pc.any(drop).as_py():
            fmt = part.rsplit(".", 1)[1]
            sink.replace_part(fs, part, table.filter(pc.invert(drop)), writer(fmt), fmt, "path")
