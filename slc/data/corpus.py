"""Find the clips of a corpus and give each a language, a group and a split.

Two layouts are understood:

- a VoxLingua107-style tree, `<root>/<lang>/**/<audio>`; a `manifest.csv` or
  `manifest.tsv` at the root may add `group` and `split` for the files it names;
- a CSV/TSV manifest with columns `path,lang` and optional `group`, `split`
  (relative paths resolve against the manifest's folder).

A clip's group is its manifest `group`, else the YouTube id that prefixes
VoxLingua107 file names (`<id>__U__S...`), else its parent folder. Whole groups
go to one split, so validation and test speakers are never heard in training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import posixpath
from collections import Counter, defaultdict
from pathlib import Path, PurePath, PurePosixPath

import pyarrow.fs as pafs

from slc import storage
from slc.batch import inputs
from slc.config import SplitConfig
from slc.labels import LabelError, LabelSet, normalize

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64"}
)
MANIFEST_NAMES = ("manifest.csv", "manifest.tsv")
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val", "test": "test"}


class CorpusError(ValueError):
    """A corpus that cannot be read: a missing path, a malformed manifest row."""


@dataclasses.dataclass(frozen=True)
class Clip:
    id: str  # the path relative to the corpus root, unique within the corpus
    path: str  # absolute local path, or URI without credentials
    lang: str  # normalised language code
    group: str
    split: str
    source: str  # its path within the corpus's filesystem


@dataclasses.dataclass(frozen=True)
class Corpus:
    clips: list[Clip]
    labels: LabelSet
    excluded: dict[str, int]  # language -> clips outside the requested label set
    filesystem: pafs.FileSystem  # where every clip's `source` is
    skipped_hidden: int = 0  # hidden files under the root, not clips


@dataclasses.dataclass(frozen=True)
class _Entry:
    path: str  # within the corpus's filesystem
    lang: str
    group: str | None = None
    split: str | None = None


def discover(source: str | Path, labels: LabelSet | None = None, split: SplitConfig = SplitConfig()) -> Corpus:
    """All clips of a tree or manifest (a local path or a URI), sorted by id.

    `labels` restricts the corpus to those languages, in that order; clips of
    other languages are counted in `Corpus.excluded`. Without it the label set
    is every language found.
    """
    location = str(source)
    fs, path = storage.resolve(location)
    shown = inputs.shown_name(location, path)
    kind, hidden = fs.get_file_info(path).type, 0
    if kind == pafs.FileType.Directory:
        root = path
        tree = inputs.walk(fs, root)
        hidden = tree.skipped_hidden
        entries = {e.path: e for e in _tree_entries(tree.files, root, shown)}
        manifests = [storage.join(root, name) for name in MANIFEST_NAMES]
        manifest = next((m for m in manifests if fs.get_file_info(m).type == pafs.FileType.File), None)
        if manifest is not None:
            entries.update({e.path: e for e in read_manifest(fs, manifest, inputs.shown_as(shown, root, manifest))})
    elif kind == pafs.FileType.File:
        root = posixpath.dirname(path)
        entries = {e.path: e for e in read_manifest(fs, path, shown)}
    else:
        raise CorpusError(f"{shown}: no such file or directory")
    if not entries:
        raise CorpusError(f"{shown}: no audio files found (expected <root>/<lang>/**/<audio> or a manifest)")

    shown_root = inputs.shown_as(shown, path, root)
    clips = sorted((_to_clip(e, root, shown_root, split) for e in entries.values()), key=lambda c: c.id)
    found = LabelSet.from_found(c.lang for c in clips)
    if labels is None:
        return Corpus(clips, found, {}, fs, hidden)
    kept = [c for c in clips if c.lang in labels]
    excluded = Counter(c.lang for c in clips if c.lang not in labels)
    return Corpus(kept, labels, dict(sorted(excluded.items())), fs, hidden)


def split_of(group: str, config: SplitConfig = SplitConfig()) -> str:
    """The split of a group: a hash of the group and seed, so it never
    changes when files are added."""
    digest = hashlib.sha256(f"{config.seed}:{group}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < config.train:
        return "train"
    return "val" if position < config.train + config.val else "test"


def group_of(path: PurePath) -> str:
    """The YouTube id of a VoxLingua107 name (`<id>__U__S...`), else the parent folder."""
    if "__" in path.stem:
        return path.stem.split("__", 1)[0]
    return path.parent.name


def read_manifest(fs: pafs.FileSystem, path: str, shown: str) -> list[_Entry]:
    """Rows of a CSV (or, by extension, TSV) manifest with `path,lang[,group][,split]`
    at `path` on `fs`; `shown` is how errors name it."""
    try:
        rows = inputs.manifest_rows(fs, path, shown, required=("path", "lang"))
    except inputs.InputError as error:
        raise CorpusError(str(error)) from None
    entries = []
    for line, row in enumerate(rows, start=2):
        where = f"{shown}:{line}"
        if not (row.get("path") or "").strip():
            raise CorpusError(f"{where}: empty path")
        entry_fs, entry_path, _ = inputs.resolve_entry(fs, path, shown, row["path"].strip())
        if not entry_fs.equals(fs):
            raise CorpusError(f"{where}: {row['path'].strip()} is not on the manifest's filesystem")
        entries.append(
            _Entry(
                path=entry_path,
                lang=_lang(row.get("lang") or "", where),
                group=(row.get("group") or "").strip() or None,
                split=_split(row.get("split") or "", where),
            )
        )
    return entries


def _tree_entries(files: list[str], root: str, shown: str) -> list[_Entry]:
    """The audio files of `<root>/<lang>/**`, each with its folder's language."""
    by_lang: dict[str, list[str]] = defaultdict(list)
    for file in files:
        lang_dir, _, below = posixpath.relpath(file, root).partition("/")
        if below and posixpath.splitext(file)[1].lower() in AUDIO_EXTENSIONS:
            by_lang[lang_dir].append(file)
    return [
        _Entry(path=file, lang=_lang(lang_dir, inputs.shown_as(shown, root, storage.join(root, lang_dir))))
        for lang_dir, found in sorted(by_lang.items())
        for file in found
    ]


def _to_clip(entry: _Entry, root: str, shown_root: str, config: SplitConfig) -> Clip:
    group = entry.group or group_of(PurePosixPath(entry.path))
    relative = posixpath.relpath(entry.path, root)
    clip_id = entry.path if relative.startswith("../") else relative
    return Clip(
        id=clip_id,
        path=inputs.shown_as(shown_root, root, entry.path),
        lang=entry.lang,
        group=group,
        split=entry.split or split_of(group, config),
        source=entry.path,
    )


def _lang(code: str, where: str) -> str:
    try:
        return normalize(code)
    except LabelError as error:
        raise CorpusError(f"{where}: {error}") from None


def _split(value: str, where: str) -> str | None:
    value = value.strip().lower()
    if not value:
        return None
    if value not in _SPLIT_ALIASES:
        raise CorpusError(f"{where}: unknown split {value!r}; use one of {list(SPLITS)}")
    return _SPLIT_ALIASES[value]
