"""Inputs of a batch job -> items, one per audio file, and their bytes.

An input is a local path or a pyarrow filesystem URI (`s3://bucket/audio`),
naming a file, a directory (every file under it), a glob (`audio/**/*.wav`,
`s3://bucket/audio/*.wav`), a `.tar`/`.tar.gz`/`.tgz`/`.zip` archive (members
named `archive.tar::member`) or a manifest (a CSV/TSV with a `path` column, or
a `.txt`/`.lst` file with one path per line; relative paths resolve against
the manifest's folder). A corpus in a format of `slc.batch.formats` (a Hugging
Face dataset, a Common Voice release, WebDataset shards, lhotse manifests)
lists its clips instead of its files: rows named `<table>::<row>`, samples
`<shard>::<member>`, segments `<audio file>::<id>`.

Hidden files (a name, or a folder below the input, starting with `.`) are
skipped and counted. An item is a dict (a Ray Data row) with:

    path    what outputs call it: the local path, the URI without credentials,
            or `<archive>::<member>`; unique within a listing
    fs      index into the listing's `filesystems`
    source  its path within that filesystem (the archive's, for a member)
    member  the archive member's stored name, else None
    offset, size   its byte range within `source` (plain tar members), else None
    data    its bytes (compressed tar members, read once at listing), else None
    error, detail  why it cannot be read, when listing already knows (else None)
    span    (start_s, duration_s) of a segment cut from the decoded file, else None
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import posixpath
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from fsspec.implementations.arrow import ArrowFSWrapper

from slc import audio, storage
from slc.batch import archives, formats, segments
from slc.batch.formats import huggingface, webdataset

MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt", ".lst")  # as inputs; inside a directory they are files like any other
MEMBER_SEPARATOR = "::"


class InputError(ValueError):
    """An input that cannot be listed: nothing at that location, a malformed manifest."""


class NoAudioError(audio.AudioError):
    """A directory or archive that holds no file to read."""

    reason = "no_audio"


@dataclasses.dataclass
class Listing:
    """Items sorted by `path`, each once; the filesystems they index; how many
    hidden files were skipped; the language each item's own corpus gives it,
    by path (for inputs in a format that carries one)."""

    items: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    filesystems: list[pafs.FileSystem] = dataclasses.field(default_factory=list)
    skipped_hidden: int = 0
    languages: dict[str, str] = dataclasses.field(default_factory=dict)

    def fs_index(self, fs: pafs.FileSystem) -> int:
        """The index of `fs` among `filesystems`, adding it when new."""
        for index, known in enumerate(self.filesystems):
            if known.equals(fs):
                return index
        self.filesystems.append(fs)
        return len(self.filesystems) - 1


@dataclasses.dataclass(frozen=True)
class Tree:
    """The files under a directory (paths within its filesystem, sorted) and
    how many hidden ones were left out."""

    files: list[str]
    skipped_hidden: int


def item(path: str, fs: int, source: str, **fields: Any) -> dict[str, Any]:
    """An item with every key set: `fields` among member, offset, size, data, error, detail, span."""
    row = {"path": path, "fs": fs, "source": source, "member": None, "offset": None, "size": None, "data": None}
    return {**row, "error": None, "detail": None, "span": None, **fields}


def list_inputs(inputs: Sequence[str | Path], lang_column: str | None = None) -> Listing:
    """Every file (or clip of a corpus format) named by `inputs`, archives
    opened. `lang_column` names the column or field holding a clip's language
    in formats that have them (see `slc.batch.formats.read`). Raises
    InputError for an input that names nothing or a corpus file that does
    not hold what its format says; a directory or archive without files, or
    an archive that cannot be read, is an item with its `error` set."""
    listing = Listing()
    found: dict[str, dict[str, Any]] = {}
    for location in inputs:
        for fs, path, shown in _locations(str(location), listing):
            try:
                for entry in _expand(fs, path, shown, listing, lang_column):
                    found.setdefault(entry["path"], entry)
            except formats.FormatError as error:
                raise InputError(str(error)) from None
    listing.items = sorted(found.values(), key=lambda entry: entry["path"])
    return listing


def record_path(shown: str, path: str, record: formats.Record) -> str:
    """What outputs call a corpus record found under `path` (shown as `shown`):
    its file's shown name, then `::` and its name within the file."""
    file = shown_as(shown, path, record.source)
    return file if record.name is None else f"{file}{MEMBER_SEPARATOR}{record.name}"


def record_fields(record: formats.Record) -> dict[str, Any]:
    """The item fields (see `item`) that say how to read a record's bytes."""
    span = None if record.span is None else list(record.span)
    return dict(member=record.member, offset=record.offset, size=record.size, data=record.data, span=span)


def walk(fs: pafs.FileSystem, root: str) -> Tree:
    """The files under the directory `root`, recursively, hidden ones counted apart."""
    files, hidden = [], 0
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        if is_hidden(posixpath.relpath(info.path, root)):
            hidden += 1
        else:
            files.append(info.path)
    return Tree(sorted(files), hidden)


def is_hidden(relative: str) -> bool:
    """True when any part of the `/`-separated path starts with a dot."""
    return any(part.startswith(".") for part in relative.split("/"))


def shown_name(location: str, path: str) -> str:
    """How outputs name `path`, found from `location`: the local path, or the
    URI without credentials or options."""
    return f"{urlsplit(location).scheme}://{path}" if "://" in location else path


def shown_as(shown: str, path: str, other: str) -> str:
    """The shown name of `other`, a path on the filesystem where `path` is shown as `shown`."""
    return shown[: len(shown) - len(path)] + other


def manifest_rows(fs: pafs.FileSystem, path: str, shown: str, required: Sequence[str] = ("path",)) -> list[dict[str, str]]:
    """Rows of a CSV (or, by extension, TSV) manifest, as read by csv.DictReader.
    Raises InputError naming `shown` when a `required` column is missing."""
    text = storage.read_text(fs, path)
    reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.lower().endswith(".tsv") else ",")
    missing = set(required) - set(reader.fieldnames or ())
    if missing:
        raise InputError(f"{shown}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
    return list(reader)


def resolve_entry(fs: pafs.FileSystem, manifest: str, shown: str, name: str) -> tuple[pafs.FileSystem, str, str]:
    """(filesystem, path, shown name) of a path a manifest names: a URI, an
    absolute path, or a path relative to the manifest's folder."""
    if "://" in name:
        entry_fs, entry_path = storage.resolve(name)
        return entry_fs, entry_path, shown_name(name, entry_path)
    name = str(Path(name).expanduser()) if name.startswith("~") else name
    entry = posixpath.normpath(posixpath.join(posixpath.dirname(manifest), name))  # join keeps an absolute name
    return fs, entry, shown_as(shown, manifest, entry)


def _locations(location: str, listing: Listing) -> list[tuple[pafs.FileSystem, str, str]]:
    """(filesystem, path, shown name) for an input; a glob gives one per match."""
    fs, path = storage.resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return [(fs, path, shown_name(location, path))]
    if glob.has_magic(path):
        matches = _glob(fs, path, listing)
        if matches:
            return [(fs, match, shown_name(location, match)) for match in matches]
    raise InputError(f"{storage.redact(location)}: no such file, directory or glob match")


def _glob(fs: pafs.FileSystem, pattern: str, listing: Listing) -> list[str]:
    """Files matching `pattern` (`*`, `?`, `[...]`, `**`), hidden ones counted apart."""
    parts = pattern.split("/")
    fixed = "/".join(parts[: next(i for i, part in enumerate(parts) if glob.has_magic(part))])
    matches = []
    for match in ArrowFSWrapper(fs).glob(pattern):
        if is_hidden(posixpath.relpath(match, fixed or "/")):
            listing.skipped_hidden += 1
        else:
            matches.append(match)
    return sorted(matches)


# Formats recognised by a look at an input; WebDataset shards are recognised
# from the members an archive is listed by, so a compressed one is read once.
_INPUT_FORMATS = tuple(name for name in formats.FORMATS if name != "webdataset")


def _expand(
    fs: pafs.FileSystem, path: str, shown: str, listing: Listing, lang_column: str | None
) -> list[dict[str, Any]]:
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        tree = walk(fs, path)
        listing.skipped_hidden += tree.skipped_hidden
        if not tree.files:
            return [_failed(shown, fs, path, listing, NoAudioError(shown, _nothing("directory", tree.skipped_hidden)))]
        kind = formats.detect(fs, path, tree.files, _INPUT_FORMATS)
        if kind is not None:
            return _record_items(formats.read(kind, fs, path, tree.files, lang_column), fs, path, shown, listing)
        files = [(fs, file, shown_as(shown, path, file)) for file in tree.files]
        return [entry for found in files for entry in _file_items(*found, listing, lang_column)]
    if path.lower().endswith(MANIFEST_SUFFIXES):
        found = _manifest_entries(fs, path, shown)
        return [entry for named in found for entry in _file_items(*named, listing, lang_column)]
    kind = formats.detect(fs, path, None, _INPUT_FORMATS)
    if kind is not None:
        return _record_items(formats.read(kind, fs, path, None, lang_column), fs, path, shown, listing)
    return _file_items(fs, path, shown, listing, lang_column)


def _record_items(
    records: list[formats.Record], fs: pafs.FileSystem, path: str, shown: str, listing: Listing
) -> list[dict[str, Any]]:
    """Items of a corpus's records, their languages noted in `listing`."""
    index = listing.fs_index(fs)
    items = []
    for record in records:
        items.append(item(record_path(shown, path, record), index, record.source, **record_fields(record)))
        if record.lang is not None:
            listing.languages[items[-1]["path"]] = record.lang
    return items


def _nothing(kind: str, hidden: int) -> str:
    return f"the {kind} holds no file to read" + (f" ({hidden} hidden skipped)" if hidden else "")


def _manifest_entries(fs: pafs.FileSystem, path: str, shown: str) -> list[tuple[pafs.FileSystem, str, str]]:
    """The files a manifest names, on their filesystems."""
    if path.lower().endswith((".csv", ".tsv")):
        names = [(row["path"] or "").strip() for row in manifest_rows(fs, path, shown)]
    else:
        lines = (line.strip() for line in storage.read_text(fs, path).splitlines())
        names = [line for line in lines if not line.startswith("#")]
    return [resolve_entry(fs, path, shown, name) for name in names if name]


def _file_items(
    fs: pafs.FileSystem, path: str, shown: str, listing: Listing, lang_column: str | None = None
) -> list[dict[str, Any]]:
    index = listing.fs_index(fs)
    if not archives.is_archive(path):
        return [item(shown, index, path)]
    try:
        members = archives.members(fs, path)
    except archives.ERRORS as error:
        return [_failed(shown, fs, path, listing, _archive_error(shown, error, "not a readable archive"))]
    visible = [m for m in members if m.name and not is_hidden(m.name)]
    listing.skipped_hidden += len(members) - len(visible)
    if not visible:
        return [_failed(shown, fs, path, listing, NoAudioError(shown, _nothing("archive", len(members))))]
    if webdataset.is_shard(path) and webdataset.holds_samples(visible):
        records = webdataset.shard_records(fs, path, visible, None, lang_column)
        return _record_items(records, fs, path, shown, listing)
    return [
        item(f"{shown}{MEMBER_SEPARATOR}{m.name}", index, path, member=m.stored, offset=m.offset, size=m.size, data=m.data)
        for m in visible
    ]


def _archive_error(shown: str, error: Exception, what: str) -> audio.AudioError:
    """`undecodable` for an archive or member that is damaged (the file is at
    fault), `unreadable` where storage failed to read it (worth a --resume)."""
    kind = audio.UndecodableAudioError if isinstance(error, archives.DamagedArchiveError) else audio.UnreadableAudioError
    return kind(shown, f"{what} ({error})")


def _failed(shown: str, fs: pafs.FileSystem, path: str, listing: Listing, error: audio.AudioError) -> dict[str, Any]:
    return item(shown, listing.fs_index(fs), path, error=error.reason, detail=str(error))


def read_bytes(items: list[dict[str, Any]], filesystems: list[pafs.FileSystem]) -> list[bytes | Exception | None]:
    """The bytes of each item, or the error reading it (None for an item
    failed at listing). A file is opened once for all of its members."""
    data: list[bytes | Exception | None] = [None] * len(items)
    by_file: dict[tuple[int, str], list[int]] = defaultdict(list)
    for i, entry in enumerate(items):
        if entry["error"] is not None:
            continue
        if entry["data"] is not None:
            data[i] = entry["data"]
        elif entry["member"] is None:
            data[i] = _read_file(filesystems[entry["fs"]], entry["source"], entry["path"])
        else:
            by_file[(entry["fs"], entry["source"])].append(i)
    for (index, source), chosen in by_file.items():
        for i, read in zip(chosen, _read_members(filesystems[index], source, [items[i] for i in chosen])):
            data[i] = read
    for i, entry in enumerate(items):
        if entry.get("span") is not None and isinstance(data[i], bytes):
            data[i] = segments.cut(data[i], tuple(entry["span"]), entry["path"])
    return data


def _read_file(fs: pafs.FileSystem, source: str, shown: str) -> bytes | Exception:
    try:
        with fs.open_input_stream(source) as stream:
            return stream.read()
    except OSError as error:
        return audio.UnreadableAudioError(shown, str(error))


def _read_members(fs: pafs.FileSystem, source: str, members: list[dict[str, Any]]) -> list[bytes | Exception]:
    try:
        if huggingface.is_table(source):
            return _read_rows(fs, source, members)
        if members[0]["offset"] is not None:
            return list(archives.read_ranges(fs, source, [(m["offset"], m["size"]) for m in members]))
        found = archives.read_zip_members(fs, source, {m["member"] for m in members})
    except archives.ERRORS as error:
        return [_archive_error(m["path"], error, "archive not readable") for m in members]
    return [_member(m["path"], found.get(m["member"])) for m in members]


def _member(shown: str, read: bytes | Exception | None) -> bytes | audio.AudioError:
    """A zip member's bytes, or the error (None: not in the archive)."""
    if read is None:
        return audio.UnreadableAudioError(shown, "member not found in the archive")
    return _archive_error(shown, read, "member not readable") if isinstance(read, Exception) else read


def _read_rows(fs: pafs.FileSystem, source: str, rows: list[dict[str, Any]]) -> list[bytes | Exception]:
    """The audio bytes of table rows (`member`: the row number)."""
    found = huggingface.read_rows(fs, source, [int(row["member"]) for row in rows])
    missing = "the row holds no audio bytes"
    return [data if data else audio.EmptyAudioError(row["path"], missing) for row, data in zip(rows, found)]
