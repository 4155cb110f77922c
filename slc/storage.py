"""Where artifacts live: a local path or any URI pyarrow has a filesystem for
(`s3://bucket/prefix`, `gs://...`, `hdfs://...`).

S3-compatible servers are reached with pyarrow's URI options, e.g.
`s3://bucket/shards?endpoint_override=localhost:9000&scheme=http`.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs


class StorageError(OSError):
    """An output location that cannot be used as asked."""


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a local path or a URI."""
    text = str(location)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), Path(text).expanduser().resolve().as_posix()


def redact(location: str | Path) -> str:
    """The location without credentials (`s3://KEY:SECRET@bucket` -> `s3://***@bucket`),
    for messages and summaries."""
    parts = urlsplit(str(location))
    if "@" not in parts.netloc:
        return str(location)
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def join(*parts: str) -> str:
    return posixpath.join(*parts)


def is_empty(fs: pafs.FileSystem, path: str) -> bool:
    """True when `path` does not exist or is an empty directory."""
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return True
    if info.type != pafs.FileType.Directory:
        return False
    return not fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def prepare_output(location: str | Path, overwrite: bool) -> tuple[pafs.FileSystem, str]:
    """An empty output directory: refuses one with contents unless `overwrite`,
    which removes them."""
    fs, path = resolve(location)
    if not is_empty(fs, path):
        if not overwrite:
            raise StorageError(f"{redact(location)}: output is not empty; pass --overwrite to replace it")
        if fs.get_file_info(path).type == pafs.FileType.Directory:
            fs.delete_dir_contents(path)
        else:
            fs.delete_file(path)
    fs.create_dir(path, recursive=True)
    return fs, path


def open_output(location: str | Path, resume: bool, overwrite: bool) -> tuple[pafs.FileSystem, str]:
    """The output directory of a run: empty (emptied, with `overwrite`) for a
    new run, as it is for a resumed one. Raises StorageError for one with
    contents otherwise, and for `resume` with `overwrite`."""
    if resume and overwrite:
        raise StorageError(
            f"{redact(location)}: --resume keeps what the output holds and --overwrite deletes it; pass one of them"
        )
    if not resume:
        return prepare_output(location, overwrite)
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)
    return fs, path


def write_json(fs: pafs.FileSystem, path: str, data: Any) -> None:
    write_text(fs, path, json.dumps(data, indent=2) + "\n")


def write_text(fs: pafs.FileSystem, path: str, text: str) -> None:
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode("utf-8"))


def read_text(fs: pafs.FileSystem, path: str) -> str:
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")
