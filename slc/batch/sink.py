"""Crash-safe part files: every file whole or absent, written by Ray tasks
(`PartWriter`) or as a Ray Data sink (`PartSink`).

Each part is written aside (`.part-<digest>.<suffix>.tmp`) and then moved into
place as `part-<digest>.<suffix>`, the digest being of the ids the part holds:
an interrupted run leaves only complete parts (and leftovers that readers
ignore and `remove_unfinished` deletes), and a retried write replaces its own
file. The format is a writer function: `(table, output stream) -> None`.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable, Iterable

import pyarrow as pa
import pyarrow.fs as pafs

from slc import storage

Writer = Callable[[pa.Table, pa.NativeFile], None]


def part_name(ids: Iterable[str], suffix: str) -> str:
    """`part-<digest of the ids>.<suffix>`."""
    return f"part-{hashlib.sha256(chr(10).join(ids).encode()).hexdigest()[:16]}.{suffix}"


def write_part(fs: pafs.FileSystem, folder: str, table: pa.Table, writer: Writer, suffix: str, id_column: str) -> str:
    """Write `table` as one part under `folder`, aside first; returns its path."""
    name = part_name(table[id_column].to_pylist(), suffix)
    aside = storage.join(folder, f".{name}.tmp")
    with fs.open_output_stream(aside) as stream:
        writer(table, stream)
    fs.move(aside, storage.join(folder, name))
    return storage.join(folder, name)


def replace_part(fs: pafs.FileSystem, old: str, table: pa.Table, writer: Writer, suffix: str, id_column: str) -> None:
    """Put `table` (some of the rows of the part `old`) in place of `old`.
    Written aside before `old` goes, moved in after: a crash in between leaves
    the rows missing (a resumed run redoes them), never twice."""
    folder = posixpath.dirname(old)
    name = part_name(table[id_column].to_pylist(), suffix)
    aside = storage.join(folder, f".{name}.tmp")
    if table.num_rows:
        with fs.open_output_stream(aside) as stream:
            writer(table, stream)
    fs.delete_file(old)
    if table.num_rows:
        fs.move(aside, storage.join(folder, name))


def parts(fs: pafs.FileSystem, folder: str, suffix: str) -> list[str]:
    """Paths of the complete parts under `folder`, sorted."""
    found = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(f.path for f in found if f.base_name.startswith("part-") and f.base_name.endswith(f".{suffix}"))


def remove_unfinished(fs: pafs.FileSystem, folder: str) -> None:
    """Delete the parts an interrupted run had not finished writing."""
    for leftover in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        if leftover.base_name.startswith(".part-") and leftover.base_name.endswith(".tmp"):
            fs.delete_file(leftover.path)


class PartWriter:
    """Rows into parts of at most `rows_per_file` rows under `root`, the rows
    of one write at a time. Picklable, for the tasks that write. Subclasses
    choose the folder of each row (`folders`) and what a write returns
    (`returned`)."""

    def __init__(
        self, filesystem: pafs.FileSystem, root: str, writer: Writer, suffix: str, rows_per_file: int, id_column: str
    ) -> None:
        self.filesystem, self.root, self.rows_per_file = filesystem, root, rows_per_file
        self.writer, self.suffix, self.id_column = writer, suffix, id_column

    def write_table(self, table: pa.Table) -> pa.Table | None:
        """Write `table`'s rows; returns `returned(table)`."""
        for folder, rows in self.folders(table):
            self.filesystem.create_dir(folder, recursive=True)
            for start in range(0, rows.num_rows, self.rows_per_file):
                part = rows.slice(start, self.rows_per_file)
                write_part(self.filesystem, folder, part, self.writer, self.suffix, self.id_column)
        return self.returned(table)

    def folders(self, table: pa.Table) -> list[tuple[str, pa.Table]]:
        """(folder, rows) pairs to write: by default every row under `root`."""
        return [(self.root, table)]

    def returned(self, table: pa.Table) -> pa.Table | None:
        """What a write hands back: by default nothing."""
        return None
