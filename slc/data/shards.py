"""The Parquet shard format: accepted clips with their features, and the
rejects table. Versioned, so a reader refuses shards it does not understand.

Layout of a shard directory:

    <root>/{train,val,test}/*.parquet   one row per clip (SHARD_SCHEMA)
    <root>/rejects.parquet              one row per file that failed (REJECT_SCHEMA)
    <root>/summary.json, labels.json, config.json
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.datasource.datasink import WriteResult

from slc import storage
from slc.batch.columns import flat_list_column
from slc.batch.raydata import PartSink

SCHEMA_VERSION = 3  # 2: the augment column; 3: source_lang
NUM_MEL_BINS = 80

SHARD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("lang", pa.string()),
        ("source_lang", pa.string()),  # the clip's own language: a background clip's `lang` is `other`
        ("split", pa.string()),
        ("group", pa.string()),
        ("duration_s", pa.float32()),
        ("n_frames", pa.int32()),
        ("features", pa.large_list(pa.float16())),  # n_frames * 80, row-major
        ("augment", pa.string()),  # an augmented copy's recipe as JSON; null for the clip itself
    ],
    metadata={"slc.schema_version": str(SCHEMA_VERSION), "slc.num_mel_bins": str(NUM_MEL_BINS)},
)

REJECT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("path", pa.string()),
        ("lang", pa.string()),
        ("split", pa.string()),
        ("reason", pa.string()),  # a stable code: empty, too_short, undecodable, ...
        ("detail", pa.string()),  # the message, naming the file
    ]
)


# What featurizing yields per clip: the shard columns (features null for a
# reject) plus why a clip was rejected.
CLIP_OUTCOME_SCHEMA = pa.schema(
    list(SHARD_SCHEMA) + [pa.field("reason", pa.string()), pa.field("detail", pa.string())]
)


COPY_MARK = "#aug"  # an augmented copy's id: <clip id>#aug<i>, i from 1


def copy_id(clip_id: str, index: int) -> str:
    """The id of augmented copy `index` (1, 2, ...) of the clip `clip_id`."""
    return f"{clip_id}{COPY_MARK}{index}"


def clip_id(row_id: str, augment: str | None) -> str:
    """The id of the clip a shard row is of: itself, or the clip it is a copy of."""
    return row_id if augment is None else row_id.rsplit(COPY_MARK, 1)[0]


class ShardError(ValueError):
    """Shards missing, or written by an incompatible version."""


class ShardSink(PartSink):
    """Ray Data sink for featurized clips (CLIP_OUTCOME_SCHEMA): accepted rows
    go to crash-safe parts `<root>/<split>/part-<digest>.parquet`; every row's
    outcome, without its features, goes back to the driver as `self.outcomes`.
    One pass over the data, however many splits and rejects."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, rows_per_file: int) -> None:
        super().__init__(filesystem, root, pq.write_table, "parquet", rows_per_file, "id")
        self.outcomes = CLIP_OUTCOME_SCHEMA.remove(SHARD_SCHEMA.get_field_index("features")).empty_table()

    @property
    def min_rows_per_write(self) -> int:
        """Ray Data gathers the featurizing tasks' rows up to `rows_per_file`
        per write, in one task: fewer, larger shard files for training to read."""
        return self.rows_per_file

    def folders(self, table: pa.Table) -> list[tuple[str, pa.Table]]:
        """Accepted rows, in SHARD_SCHEMA, under the folder of their split."""
        accepted = table.filter(pc.is_null(table["reason"])).select(SHARD_SCHEMA.names).cast(SHARD_SCHEMA)
        splits = pc.unique(accepted["split"]).to_pylist()
        return [(storage.join(self.root, s), accepted.filter(pc.equal(accepted["split"], s))) for s in splits]

    def returned(self, table: pa.Table) -> pa.Table:
        return table.cast(CLIP_OUTCOME_SCHEMA).drop_columns(["features"])

    def on_write_complete(self, write_result: WriteResult[pa.Table | None]) -> None:
        returned = [t for t in write_result.write_returns if t is not None]
        self.outcomes = pa.concat_tables([self.outcomes, *returned])


def features_column(features: list[np.ndarray | None]) -> pa.Array:
    """`float32[T, 80]` arrays -> the flattened float16 `features` column;
    None (a clip without features) becomes null."""
    return flat_list_column(features, np.float16)


def unflatten(row_features: np.ndarray, n_frames: int) -> np.ndarray:
    """A row's flattened features back to `float32[n_frames, 80]`."""
    return np.asarray(row_features, dtype=np.float32).reshape(n_frames, NUM_MEL_BINS)


def read_split(root: str, split: str, columns: list[str] | None = None) -> pa.Table:
    """One split of a shard directory (local path or URI) as an Arrow table."""
    fs, path = storage.resolve(root)
    split_path = storage.join(path, split)
    if storage.is_empty(fs, split_path):
        raise ShardError(f"{root}: no shards for split {split!r}")
    dataset = pads.dataset(split_path, filesystem=fs, format="parquet")
    validate(dataset.schema, f"{root}/{split}")
    return dataset.to_table(columns=columns)


def read_text(root: str, name: str) -> str:
    """`labels.json`, `config.json` or `summary.json` of a shard directory (local path or URI), as text."""
    fs, path = storage.resolve(root)
    file = storage.join(path, name)
    if not fs.get_file_info(file).is_file:
        raise ShardError(f"{root}: no shards here (no {name}; `slc ingest` writes them)")
    return storage.read_text(fs, file)


def read_rejects(root: str) -> pa.Table:
    fs, path = storage.resolve(root)
    return pads.dataset(storage.join(path, "rejects.parquet"), filesystem=fs, format="parquet").to_table()


def validate(schema: pa.Schema, where: str) -> None:
    """Refuse shards of another schema version or with missing columns."""
    version = (schema.metadata or {}).get(b"slc.schema_version", b"?").decode()
    if version != str(SCHEMA_VERSION):
        raise ShardError(f"{where}: shard schema version {version}, this slc reads version {SCHEMA_VERSION}")
    missing = set(SHARD_SCHEMA.names) - set(schema.names)
    if missing:
        raise ShardError(f"{where}: shards lack column(s) {sorted(missing)}")
