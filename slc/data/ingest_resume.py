"""What an interrupted ingest left behind, for `ingest(..., resume=True)`.

A clip is done when its shards hold it whole: its own row and, in `train`,
every augmented copy. Shard parts are whole or absent (`slc.batch.sink`), but
one clip's rows can span two parts, so a run cut between them leaves a clip
in part; its rows are taken out and the clip is featurized again. Rejected
clips are not in the shards: a resumed run tries them again.
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from slc import config_io, storage
from slc.batch import sink
from slc.config import IngestConfig
from slc.data.corpus import SPLITS
from slc.data.shards import SHARD_SCHEMA, ShardError, clip_id, validate

CONFIG_FILE = "config.json"
# Settings that change how fast an ingest goes, not what it writes: a resumed run may change them.
_SPEED_SETTINGS = ("clips_per_task", "rows_per_file")
# A shard row without its features, and the part it is in.
_DESCRIPTION = SHARD_SCHEMA.remove(SHARD_SCHEMA.get_field_index("features")).append(pa.field("part", pa.string()))

log = logging.getLogger(__name__)


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
    changed = config_io.changed(json.loads(storage.read_text(fs, path)), config_io.to_dict(config), _SPEED_SETTINGS)
    if changed:
        raise ShardError(
            f"{storage.redact(out)}: was featurized with other settings ({', '.join(changed)}); "
            "resume with the same settings, or ingest into a new output"
        )


def featurized(fs: pafs.FileSystem, root: str, out: str, ids: set[str], copies: int) -> pa.Table:
    """The rows (CLIP_OUTCOME_SCHEMA without `features`) of the clips the
    shards under `root` hold whole, a training clip having `copies`
    augmented copies. Rows of clips held in part are taken out of their
    parts. Raises ShardError for shards of another version or holding clips
    that are not among `ids`."""
    folders = [storage.join(root, split) for split in SPLITS]
    for folder in folders:
        sink.remove_unfinished(fs, folder)
    rows = _descriptions(fs, [path for folder in folders for path in sink.parts(fs, folder, "parquet")], out)
    clips = _clip_ids(rows)
    strangers = set(clips) - ids
    if strangers:
        raise ShardError(
            f"{storage.redact(out)}: holds {len(strangers)} clips that are not in the corpus "
            f"(e.g. {min(strangers)}); resume with the same corpus"
        )
    whole_clips = pa.array(sorted(_whole(clips, rows, copies)), pa.string())
    whole = pc.is_in(pa.array(clips, pa.string()), whole_clips)
    for path in pc.unique(rows.filter(pc.invert(whole))["part"]).to_pylist():
        part = _read_part(fs, path)
        keep = pc.is_in(pa.array(_clip_ids(part), pa.string()), whole_clips)
        sink.replace_part(fs, path, part.filter(keep), pq.write_table, "parquet", "id")
    done = rows.filter(whole).drop_columns(["part"])
    no_reason = pa.nulls(done.num_rows, pa.string())
    return done.append_column("reason", no_reason).append_column("detail", no_reason)


def _descriptions(fs: pafs.FileSystem, paths: list[str], out: str) -> pa.Table:
    """The rows of the shard parts at `paths` without their features, and the
    `part` each is in; read in parallel, as a remote store wants."""
    if not paths:
        return _DESCRIPTION.empty_table()
    log.info("resuming: reading the %d shard files an earlier run wrote", len(paths))
    dataset = pads.dataset(paths, filesystem=fs, format="parquet")
    validate(dataset.schema, storage.redact(out))
    table = dataset.to_table(columns=[*_DESCRIPTION.names[:-1], "__filename"])
    return table.rename_columns(_DESCRIPTION.names).cast(_DESCRIPTION)


def _read_part(fs: pafs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_file(path) as handle:
        return pq.read_table(handle).cast(SHARD_SCHEMA)


def _clip_ids(rows: pa.Table) -> list[str]:
    """The clip each row is of."""
    return [clip_id(row_id, recipe) for row_id, recipe in zip(rows["id"].to_pylist(), rows["augment"].to_pylist())]


def _whole(clips: list[str], rows: pa.Table, copies: int) -> set[str]:
    """The clips whose own row and, in `train`, every augmented copy are among
    `rows`, the clip of each row being in `clips`."""
    split_of: dict[str, str] = {}
    copies_of: dict[str, int] = {}
    for clip, recipe, split in zip(clips, rows["augment"].to_pylist(), rows["split"].to_pylist()):
        if recipe is None:
            split_of[clip] = split
        else:
            copies_of[clip] = copies_of.get(clip, 0) + 1
    return {clip for clip, split in split_of.items() if copies_of.get(clip, 0) == (copies if split == "train" else 0)}
