"""What an interrupted ingest left behind, for `ingest(..., resume=True)`.

A clip is done when its shards hold it whole: its own row and, in `train`,
every augmented copy. Shard parts are whole or absent (`slc.batch.sink`), but
one clip's rows can span two parts, so a run cut between them leaves a clip
in part; its rows are taken out and the clip is featurized again. Rejected
clips are not in the shards: a resumed run tries them again.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from slc import config_io, storage
from slc.batch import sink
from slc.config import IngestConfig
from slc.data.corpus import SPLITS
from slc.data.shards import SHARD_SCHEMA, ShardError, validate

CONFIG_FILE = "config.json"
# Settings that change how fast an ingest goes, not what it writes: a resumed run may change them.
_SPEED_SETTINGS = ("clips_per_task", "rows_per_file")
_DESCRIPTION = SHARD_SCHEMA.remove(SHARD_SCHEMA.get_field_index("features"))  # a row without its features
_COPY_MARK = "#aug"


def record_config(fs: pafs.FileSystem, root: str, out: str, config: IngestConfig, resume: bool) -> None:
    """Write CONFIG_FILE as the run starts. Resuming refuses an output that
    was featurized with settings that change the shards."""
    if resume and not storage.is_empty(fs, root):
        _check_same_config(fs, root, out, config)
    storage.write_text(fs, storage.join(root, CONFIG_FILE), config_io.dumps(config))


def _check_same_config(fs: pafs.FileSystem, root: str, out: str, config: IngestConfig) -> None:
    path = storage.join(root, CONFIG_FILE)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise ShardError(f"{storage.redact(out)}: has contents but no {CONFIG_FILE}; not an ingest output to resume")
    before = _deciding(json.loads(storage.read_text(fs, path)))
    now = _deciding(config_io.to_dict(config))
    changed = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if changed:
        raise ShardError(
            f"{storage.redact(out)}: was featurized with other settings ({', '.join(changed)}); "
            "resume with the same settings, or ingest into a new output"
        )


def _deciding(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Settings flattened to dotted names, without the speed settings."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_deciding(value, f"{prefix}{key}."))
        elif f"{prefix}{key}" not in _SPEED_SETTINGS:
            flat[f"{prefix}{key}"] = value
    return flat


def featurized(fs: pafs.FileSystem, root: str, out: str, ids: set[str], copies: int) -> pa.Table:
    """The rows (CLIP_OUTCOME_SCHEMA without `features`) of the clips the
    shards under `root` hold whole, a training clip having `copies`
    augmented copies. Rows of clips held in part are taken out of their
    parts. Raises ShardError for shards of another version or holding clips
    that are not among `ids`."""
    folders = [storage.join(root, split) for split in SPLITS]
    for folder in folders:
        sink.remove_unfinished(fs, folder)
    parts = {path: _read(fs, path, _DESCRIPTION) for folder in folders for path in sink.parts(fs, folder, "parquet")}
    rows = pa.concat_tables([_DESCRIPTION.empty_table(), *parts.values()])
    strangers = set(_clip_ids(rows)) - ids
    if strangers:
        raise ShardError(
            f"{storage.redact(out)}: holds {len(strangers)} clips that are not in the corpus "
            f"(e.g. {min(strangers)}); resume with the same corpus"
        )
    whole = pa.array(sorted(_whole(rows, copies)), pa.string())
    for path, table in parts.items():
        keep = pc.is_in(pa.array(_clip_ids(table), pa.string()), whole)
        if not pc.all(keep).as_py():
            sink.replace_part(fs, path, _read(fs, path, SHARD_SCHEMA).filter(keep), pq.write_table, "parquet", "id")
    done = rows.filter(pc.is_in(pa.array(_clip_ids(rows), pa.string()), whole))
    no_reason = pa.nulls(done.num_rows, pa.string())
    return done.append_column("reason", no_reason).append_column("detail", no_reason)


def _read(fs: pafs.FileSystem, path: str, schema: pa.Schema) -> pa.Table:
    """The `schema` columns of the shard part at `path`."""
    with fs.open_input_file(path) as handle:
        part = pq.ParquetFile(handle)
        validate(part.schema_arrow, path)
        return part.read(columns=schema.names).cast(schema)


def _clip_ids(rows: pa.Table) -> list[str]:
    """The clip each row is of: an augmented copy's id is `<clip id>#aug<i>`."""
    return [
        row_id if recipe is None else row_id.rsplit(_COPY_MARK, 1)[0]
        for row_id, recipe in zip(rows["id"].to_pylist(), rows["augment"].to_pylist())
    ]


def _whole(rows: pa.Table, copies: int) -> set[str]:
    """The clips whose own row and, in `train`, every augmented copy are among `rows`."""
    split_of: dict[str, str] = {}
    copies_of: dict[str, int] = {}
    for clip, recipe, split in zip(_clip_ids(rows), rows["augment"].to_pylist(), rows["split"].to_pylist()):
        if recipe is None:
            split_of[clip] = split
        else:
            copies_of[clip] = copies_of.get(clip, 0) + 1
    return {clip for clip, split in split_of.items() if copies_of.get(clip, 0) == (copies if split == "train" else 0)}
