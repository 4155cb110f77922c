"""WebDataset shards: tar files of samples, each the members sharing a key
(the member name up to the first dot of its file name): an audio member
(`<key>.wav`, `.flac`, ...) and its language in `<key>.json` (a field such
as `language`), `<key>.cls` or `<key>.language_id` (the code as text).

Shards are read through `slc.batch.archives`: a plain tar by byte ranges, a
compressed one once. A record's `name` is its audio member; its release
split is the one the shard's path names (`train/shard-000001.tar`).
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from collections.abc import Sequence

import pyarrow.fs as pafs

from slc.batch import archives
from slc.batch.formats.record import (
    GROUP_COLUMNS,
    LANG_COLUMNS,
    FormatError,
    Record,
    column,
    release_split,
    voxlingua_id,
)

AUDIO_EXTENSIONS = frozenset({"wav", "flac", "ogg", "oga", "opus", "mp3", "aif", "aiff", "au", "caf", "w64", "rf64"})
_TEXT_LABELS = ("cls", "language_id")


def recognises(fs: pafs.FileSystem, path: str, files: Sequence[str] | None) -> bool:
    shards = [path] if files is None else [f for f in files if is_shard(f)]
    if not shards or not is_shard(shards[0]):
        return False
    try:
        return holds_samples(archives.members(fs, shards[0]))
    except archives.ERRORS:
        return False


def read(fs: pafs.FileSystem, path: str, files: Sequence[str] | None, lang_column: str | None) -> list[Record]:
    """A record per sample of every shard (`path`, or the shards under it)."""
    root = posixpath.dirname(path) if files is None else path
    shards = [path] if files is None else [f for f in files if is_shard(f)]
    records = []
    for shard in shards:
        split = release_split(posixpath.relpath(shard, root))
        try:
            records += shard_records(fs, shard, archives.members(fs, shard), split, lang_column)
        except archives.ERRORS as error:
            raise FormatError(f"{shard}: not a readable tar shard ({error})") from None
    return records


def holds_samples(members: list[archives.Member]) -> bool:
    """True when some key of the archive's members has an audio member and a language member."""
    return any(_audio_of(parts) and _label_of(parts) for parts in _samples(members).values())


def shard_records(
    fs: pafs.FileSystem, shard: str, members: list[archives.Member], split: str | None, lang_column: str | None
) -> list[Record]:
    """A record per sample among `members` of the tar at `shard`: its audio
    member, and the language its label member gives. Raises FormatError for
    a sample without audio or with a label that gives no language, and one of
    `archives.ERRORS` when the shard cannot be read."""
    samples = _samples(members)
    labels = {key: _label_of(parts) for key, parts in samples.items()}
    ranged = [m for m in labels.values() if m is not None and m.data is None]
    read = dict(zip((m.name for m in ranged), archives.read_ranges(fs, shard, [(m.offset, m.size) for m in ranged])))
    records = []
    for key, parts in sorted(samples.items()):
        audio, label = _audio_of(parts), labels[key]
        if label is None:
            continue  # a member of no sample with a language (a shard's own metadata)
        if audio is None:
            extensions = ", ".join(sorted(parts))
            raise FormatError(f"{shard}::{key}: no audio member ({extensions}); expected one of {sorted(AUDIO_EXTENSIONS)}")
        data = label.data if label.data is not None else read[label.name]
        lang, group = _language(data, label.name, f"{shard}::{label.name}", lang_column)
        records.append(
            Record(
                source=shard,
                name=audio.name,
                lang=lang,
                group=group or voxlingua_id(key),
                split=split,
                member=audio.stored,
                offset=audio.offset,
                size=audio.size,
                data=audio.data,
            )
        )
    return records


def _language(data: bytes, name: str, where: str, lang_column: str | None) -> tuple[str, str | None]:
    """(language, speaker or None) from a label member's bytes."""
    text = data.decode("utf-8", errors="replace").strip()
    if not name.endswith("json"):
        if text.isdigit():
            raise FormatError(f"{where}: holds a class number ({text}), not a language code")
        return text, None
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as error:
        raise FormatError(f"{where}: not JSON ({error})") from None
    if not isinstance(fields, dict):
        raise FormatError(f"{where}: expected a JSON object, got {type(fields).__name__}")
    lang = column(list(fields), lang_column, (*LANG_COLUMNS, "language_id"), where)
    if lang is None or fields[lang] in (None, ""):
        raise FormatError(f"{where}: no language field; found {sorted(fields)}")
    speaker = column(list(fields), None, GROUP_COLUMNS, where)
    return str(fields[lang]), None if speaker is None else str(fields[speaker])


def _samples(members: list[archives.Member]) -> dict[str, dict[str, archives.Member]]:
    """Members by sample key, then by extension (webdataset's `base_plus_ext`)."""
    samples: dict[str, dict[str, archives.Member]] = defaultdict(dict)
    for member in members:
        folder, base = posixpath.split(member.name)
        stem, dot, extension = base.partition(".")
        if dot and stem:
            samples[posixpath.join(folder, stem)][extension.lower()] = member
    return samples


def _audio_of(parts: dict[str, archives.Member]) -> archives.Member | None:
    return next((m for ext, m in sorted(parts.items()) if ext.rsplit(".", 1)[-1] in AUDIO_EXTENSIONS), None)


def _label_of(parts: dict[str, archives.Member]) -> archives.Member | None:
    return next((m for ext, m in sorted(parts.items()) if ext.endswith("json") or ext in _TEXT_LABELS), None)


def is_shard(path: str) -> bool:
    return archives.is_archive(path) and not path.lower().endswith(".zip")
