"""Crash-safe parts: whole or absent, named by the ids they hold."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from slc.batch import sink


def _table(ids: list[str]) -> pa.Table:
    return pa.table({"path": ids, "value": list(range(len(ids)))})


def test_parts_are_named_by_their_ids_and_a_retried_write_replaces_its_own(tmp_path):
    parts = sink.PartWriter(pafs.LocalFileSystem(), str(tmp_path), pq.write_table, "parquet", 2, "path")
    parts.write_table(_table(["a", "b", "c"]))
    parts.write_table(_table(["a", "b", "c"]))  # the same task again
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([sink.part_name(["a", "b"], "parquet"), sink.part_name(["c"], "parquet")])
    assert sorted(pq.read_table(tmp_path).column("path").to_pylist()) == ["a", "b", "c"]


def test_a_write_that_dies_leaves_no_part_and_its_leftover_is_removed(tmp_path):
    def dies(table, stream):
        stream.write(b"half a part")
        raise OSError("disk gone")

    parts = sink.PartWriter(pafs.LocalFileSystem(), str(tmp_path), dies, "csv", 10, "path")
    with pytest.raises(OSError, match="disk gone"):
        parts.write_table(_table(["a"]))
    assert sink.parts(pafs.LocalFileSystem(), str(tmp_path), "csv") == []
    assert [p.name for p in tmp_path.iterdir()] == [f".{sink.part_name(['a'], 'csv')}.tmp"]
    sink.remove_unfinished(pafs.LocalFileSystem(), str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_replacing_a_part_keeps_only_the_rows_given(tmp_path):
    fs = pafs.LocalFileSystem()
    old = sink.write_part(fs, str(tmp_path), _table(["a", "b", "c"]), pq.write_table, "parquet", "path")
    sink.replace_part(fs, old, _table(["a", "c"]), pq.write_table, "parquet", "path")
    (new,) = sink.parts(fs, str(tmp_path), "parquet")
    assert new != old and pq.read_table(new).column("path").to_pylist() == ["a", "c"]
    sink.replace_part(fs, new, _table([]), pq.write_table, "parquet", "path")
    assert list(tmp_path.iterdir()) == []
