"""lhotse manifests: a recording set with its supervision set, or a cut set,
as JSON lines (`.jsonl`, `.jsonl.gz`).

A clip is a supervision (or a `MonoCut`): a span of a recording, with the
supervision's `language` and `speaker` (its group; else the recording). A
span that is the whole recording reads the whole file; a shorter one is cut
from it after reading. Recordings are read from their first `file` source;
a relative path resolves against the manifest's folder. A record's `name` is
the supervision's (or cut's) id; its release split is the one the manifest's
file name names (`supervisions_dev.jsonl.gz`).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from typing import Any

import pyarrow.fs as pafs

from slc.batch.formats.record import LANG_COLUMNS, FormatError, Record, column, release_split

SUFFIXES = (".jsonl", ".jsonl.gz")
_WHOLE_TOLERANCE_S = 1e-3


def recognises(fs: pafs.FileSystem, path: str, files: Sequence[str] | None) -> bool:
    manifests = [path] if files is None else [f for f in files if f.lower().endswith(SUFFIXES)]
    return bool(manifests) and manifests[0].lower().endswith(SUFFIXES) and _kind_or_none(fs, manifests[0]) is not None


def read(fs: pafs.FileSystem, path: str, files: Sequence[str] | None, lang_column: str | None) -> list[Record]:
    """A record per supervision of the recording and supervision manifests,
    and per cut of the cut manifests, at `path` or under it."""
    if files is None:
        manifests = [path, *_partner(fs, path)]
        root = posixpath.dirname(path)
    else:
        manifests = [f for f in files if f.lower().endswith(SUFFIXES)]
        root = path
    by_kind: dict[str, list[tuple[str, list[tuple[int, dict[str, Any]]]]]] = {"recordings": [], "supervisions": [], "cuts": []}
    for manifest in manifests:
        lines = _lines(fs, manifest)
        by_kind[_kind(lines[0][1] if lines else {}, manifest)].append((manifest, lines))
    recordings = {
        row["id"]: (manifest, row) for manifest, lines in by_kind["recordings"] for _, row in lines if "id" in row
    }
    records = []
    for manifest, lines in by_kind["supervisions"]:
        split = release_split(posixpath.relpath(manifest, root))
        for line, row in lines:
            where = f"{manifest}:{line}"
            if row.get("recording_id") not in recordings:
                raise FormatError(f"{where}: recording {row.get('recording_id')!r} is in no recording manifest")
            recording_manifest, recording = recordings[row["recording_id"]]
            records.append(_record(row, [row], recording, recording_manifest, split, lang_column, where))
    for manifest, lines in by_kind["cuts"]:
        split = release_split(posixpath.relpath(manifest, root))
        for line, row in lines:
            where = f"{manifest}:{line}"
            if row.get("type", "MonoCut") != "MonoCut" or "recording" not in row:
                raise FormatError(f"{where}: only MonoCut cuts with a recording are read, got {row.get('type')!r}")
            records.append(_record(row, row.get("supervisions") or [], row["recording"], manifest, split, lang_column, where))
    return records


def _record(
    span: dict[str, Any],
    supervisions: list[dict[str, Any]],
    recording: dict[str, Any],
    manifest: str,
    split: str | None,
    lang_column: str | None,
    where: str,
) -> Record:
    """The record of a supervision or cut (`span`: its id, start and duration)
    of `recording` (as found in `manifest`)."""
    try:
        languages = {str(s[column(list(s), lang_column, LANG_COLUMNS, where) or "language"]) for s in supervisions}
    except KeyError:
        languages = set()
    if len(languages) != 1:
        raise FormatError(f"{where}: {span.get('id')!r} needs one language among its supervisions, found {sorted(languages)}")
    speakers = [s["speaker"] for s in supervisions if s.get("speaker")]
    start, duration = float(span.get("start", 0.0)), float(span["duration"])
    whole = start == 0 and duration >= float(recording.get("duration", 0.0)) - _WHOLE_TOLERANCE_S
    return Record(
        source=_audio_path(recording, manifest, where),
        name=str(span["id"]),
        lang=languages.pop(),
        group=str(speakers[0]) if speakers else str(recording["id"]),
        split=split,
        span=None if whole else (start, duration),
    )


def _audio_path(recording: dict[str, Any], manifest: str, where: str) -> str:
    sources = recording.get("sources") or []
    if not sources or sources[0].get("type") != "file":
        kinds = [s.get("type") for s in sources]
        raise FormatError(f"{where}: recording {recording.get('id')!r} has no file source (sources: {kinds})")
    name = str(sources[0]["source"])
    if "://" in name:
        raise FormatError(f"{where}: {name} is not on the manifest's filesystem")
    return posixpath.normpath(posixpath.join(posixpath.dirname(manifest), name))


def _lines(fs: pafs.FileSystem, path: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line."""
    compression = "gzip" if path.lower().endswith(".gz") else None
    try:
        with fs.open_input_stream(path, compression=compression) as stream:
            text = stream.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise FormatError(f"{path}: not readable as JSON lines ({error})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise FormatError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(row, dict):
            raise FormatError(f"{path}:{number}: expected a JSON object")
        rows.append((number, row))
    return rows


def _kind(row: dict[str, Any], path: str) -> str:
    if "sources" in row:
        return "recordings"
    if "recording_id" in row:
        return "supervisions"
    if "recording" in row or row.get("type", "").endswith("Cut"):
        return "cuts"
    raise FormatError(f"{path}: not a lhotse recording, supervision or cut manifest")


def _kind_or_none(fs: pafs.FileSystem, path: str) -> str | None:
    compression = "gzip" if path.lower().endswith(".gz") else None
    try:
        with fs.open_input_stream(path, compression=compression) as stream:
            first = stream.read(1 << 16).decode("utf-8", errors="replace").split("\n", 1)[0]
        return _kind(json.loads(first), path)
    except (OSError, ValueError, AttributeError):
        return None


def _partner(fs: pafs.FileSystem, path: str) -> list[str]:
    """The supervision manifest of a recording manifest given alone, or the reverse."""
    folder, name = posixpath.split(path)
    for mine, theirs in (("recordings", "supervisions"), ("supervisions", "recordings")):
        if mine in name:
            partner = posixpath.join(folder, name.replace(mine, theirs))
            if fs.get_file_info(partner).type == pafs.FileType.File:
                return [partner]
            raise FormatError(f"{path}: its {theirs} manifest {partner} is missing")
    return []
