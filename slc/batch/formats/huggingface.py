"""Hugging Face `datasets` corpora: rows of Arrow or Parquet files whose
audio column holds each clip's bytes (`{bytes, path}`, the `Audio` feature).

Two layouts: a directory written by `save_to_disk` (`dataset_info.json`,
`state.json` and `data-*.arrow`, or a `DatasetDict` with `dataset_dict.json`
and a folder per split), and Parquet files as the Hub serves them
(`data/train-00000-of-00004.parquet`, `<config>/test/0000.parquet`). Files are
read with pyarrow: Parquet by row group, Arrow memory-mapped where local.
A record's `name` and `member` are its row number within its file.
"""

from __future__ import annotations

import bisect
import itertools
import json
import posixpath
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from slc.batch.formats.record import GROUP_COLUMNS, LANG_COLUMNS, FormatError, Record, column, release_split, voxlingua_id

SUFFIXES = (".parquet", ".arrow")
_SAVED_MARKERS = ("dataset_dict.json", "state.json")


def is_table(path: str) -> bool:
    return path.lower().endswith(SUFFIXES)


def recognises(fs: pafs.FileSystem, path: str, files: Sequence[str] | None) -> bool:
    """A `save_to_disk` directory, or a table file (or a directory whose
    first table file) with an audio column."""
    if files is None:
        return is_table(path) and _audio_column_or_none(fs, path) is not None
    if any(posixpath.join(path, marker) in files for marker in _SAVED_MARKERS):
        return True
    tables = [f for f in files if f.lower().endswith(".parquet")]
    return bool(tables) and _audio_column_or_none(fs, tables[0]) is not None


def read(fs: pafs.FileSystem, path: str, files: Sequence[str] | None, lang_column: str | None) -> list[Record]:
    """A record per row of every table file; the split is the one the file's
    path names (`train`, `validation`, `test`, ...)."""
    root = posixpath.dirname(path) if files is None else path
    if files is None:
        tables = [path]
    else:
        saved = any(posixpath.basename(f) in _SAVED_MARKERS for f in files)
        tables = [f for f in files if f.lower().endswith(".arrow" if saved else ".parquet")]
    records = []
    for table in tables:
        records += _records(fs, table, posixpath.relpath(table, root), lang_column)
    return records


def read_rows(fs: pafs.FileSystem, path: str, rows: Sequence[int]) -> list[bytes | None]:
    """The audio bytes of each row number in `rows` of the table file at
    `path` (None for a row without bytes), reading only the row groups
    (Parquet) or record batches (Arrow) that hold them."""
    with _opened(fs, path) as source:
        if path.lower().endswith(".parquet"):
            file = pq.ParquetFile(source)
            audio = _audio_column(file.schema_arrow, path)
            starts = [0]
            for group in range(file.num_row_groups):
                starts.append(starts[-1] + file.metadata.row_group(group).num_rows)
            groups = sorted({bisect.bisect_right(starts, row) - 1 for row in rows})
            table = file.read_row_groups(groups, columns=[audio])
            first = dict(zip(groups, itertools.accumulate((starts[g + 1] - starts[g] for g in groups), initial=0)))
            index = [first[g] + row - starts[g] for row in rows for g in [bisect.bisect_right(starts, row) - 1]]
        else:
            table = _arrow(source)
            audio = _audio_column(table.schema, path)
            index = list(rows)
        return pc.struct_field(table[audio].take(index), "bytes").to_pylist()


def _records(fs: pafs.FileSystem, path: str, relative: str, lang_column: str | None) -> list[Record]:
    with _opened(fs, path) as source:
        if path.lower().endswith(".parquet"):
            file = pq.ParquetFile(source)
            schema = file.schema_arrow
            audio = _audio_column(schema, path)
            lang = column(schema.names, lang_column, LANG_COLUMNS, path)
            group = column(schema.names, None, GROUP_COLUMNS, path)
            table = file.read(columns=[name for name in (lang, group) if name] + [f"{audio}.path"])
        else:
            table = _arrow(source)
            schema = table.schema
            audio = _audio_column(schema, path)
            lang = column(schema.names, lang_column, LANG_COLUMNS, path)
            group = column(schema.names, None, GROUP_COLUMNS, path)
    if lang is None:
        raise FormatError(f"{path}: no language column; name one of {schema.names} (--lang-column)")
    names = _class_names(schema, lang)
    langs = [names[v] if names and v is not None else v for v in table[lang].to_pylist()]
    groups = table[group].to_pylist() if group else [None] * table.num_rows
    audio_paths = pc.struct_field(table[audio], "path").to_pylist()
    split = release_split(relative)
    return [
        Record(
            source=path,
            name=str(row),
            lang=None if value is None else str(value),
            group=str(speaker) if speaker is not None else voxlingua_id(audio_path or ""),
            split=split,
            member=str(row),
        )
        for row, (value, speaker, audio_path) in enumerate(zip(langs, groups, audio_paths))
    ]


def _features(schema: pa.Schema) -> dict[str, Any]:
    """The `datasets` features stored in a table's schema metadata."""
    stored = (schema.metadata or {}).get(b"huggingface")
    return json.loads(stored).get("info", {}).get("features", {}) if stored else {}


def _class_names(schema: pa.Schema, name: str) -> list[str] | None:
    feature = _features(schema).get(name, {})
    return feature.get("names") if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" else None


def _audio_column(schema: pa.Schema, path: str) -> str:
    found = _audio_in(schema)
    if found is None:
        raise FormatError(f"{path}: no audio column (a struct of bytes and path); columns: {schema.names}")
    return found


def _audio_in(schema: pa.Schema) -> str | None:
    typed = [n for n, f in _features(schema).items() if isinstance(f, dict) and f.get("_type") == "Audio"]
    if typed and typed[0] in schema.names:
        return typed[0]
    for field in schema:
        if pa.types.is_struct(field.type) and {"bytes", "path"} <= {f.name for f in field.type}:
            return field.name
    return None


def _audio_column_or_none(fs: pafs.FileSystem, path: str) -> str | None:
    try:
        with _opened(fs, path) as source:
            schema = pq.read_schema(source) if path.lower().endswith(".parquet") else _arrow(source).schema
    except (OSError, pa.ArrowInvalid):
        return None
    return _audio_in(schema)


def _opened(fs: pafs.FileSystem, path: str):
    # Local Arrow files are memory-mapped: a batch of rows then reads only their pages.
    if isinstance(fs, pafs.LocalFileSystem) and path.lower().endswith(".arrow"):
        return pa.memory_map(path)
    return fs.open_input_file(path)


def _arrow(source) -> pa.Table:
    """An Arrow IPC stream (what `save_to_disk` writes) or file, whole."""
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source).read_all()

