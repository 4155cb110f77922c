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

import csv
import dataclasses
import hashlib
from collections import Counter
from pathlib import Path

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
    path: str  # absolute local path
    lang: str  # normalised language code
    group: str
    split: str


@dataclasses.dataclass(frozen=True)
class Corpus:
    clips: list[Clip]
    labels: LabelSet
    excluded: dict[str, int]  # language -> clips outside the requested label set


@dataclasses.dataclass(frozen=True)
class _Entry:
    path: Path
    lang: str
    group: str | None = None
    split: str | None = None


def discover(source: str | Path, labels: LabelSet | None = None, split: SplitConfig = SplitConfig()) -> Corpus:
    """All clips of a tree or manifest, sorted by id.

    `labels` restricts the corpus to those languages, in that order; clips of
    other languages are counted in `Corpus.excluded`. Without it the label set
    is every language found.
    """
    source = Path(source).expanduser().resolve()
    if source.is_dir():
        root = source
        entries = {e.path: e for e in _walk_tree(source)}
        manifest = next((source / n for n in MANIFEST_NAMES if (source / n).is_file()), None)
        if manifest is not None:
            entries.update({e.path: e for e in read_manifest(manifest)})
    elif source.is_file():
        root = source.parent
        entries = {e.path: e for e in read_manifest(source)}
    else:
        raise CorpusError(f"{source}: no such file or directory")
    if not entries:
        raise CorpusError(f"{source}: no audio files found (expected <root>/<lang>/**/<audio> or a manifest)")

    clips = sorted((_to_clip(e, root, split) for e in entries.values()), key=lambda c: c.id)
    found = LabelSet.from_found(c.lang for c in clips)
    if labels is None:
        return Corpus(clips, found, {})
    kept = [c for c in clips if c.lang in labels]
    excluded = Counter(c.lang for c in clips if c.lang not in labels)
    return Corpus(kept, labels, dict(sorted(excluded.items())))


def split_of(group: str, config: SplitConfig = SplitConfig()) -> str:
    """The split of a group: a hash of the group and seed, so it never
    changes when files are added."""
    digest = hashlib.sha256(f"{config.seed}:{group}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < config.train:
        return "train"
    return "val" if position < config.train + config.val else "test"


def group_of(path: Path) -> str:
    """The YouTube id of a VoxLingua107 name (`<id>__U__S...`), else the parent folder."""
    if "__" in path.stem:
        return path.stem.split("__", 1)[0]
    return path.parent.name


def read_manifest(manifest: Path) -> list[_Entry]:
    """Rows of a CSV (or, by extension, TSV) manifest with `path,lang[,group][,split]`."""
    delimiter = "\t" if manifest.suffix.lower() == ".tsv" else ","
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        missing = {"path", "lang"} - set(reader.fieldnames or ())
        if missing:
            raise CorpusError(f"{manifest}: missing column(s) {sorted(missing)}; found {reader.fieldnames}")
        entries = []
        for line, row in enumerate(reader, start=2):
            if not (row.get("path") or "").strip():
                raise CorpusError(f"{manifest}:{line}: empty path")
            path = Path(row["path"].strip()).expanduser()
            path = path if path.is_absolute() else manifest.parent / path
            entries.append(
                _Entry(
                    path=path.resolve(),
                    lang=_lang(row.get("lang") or "", f"{manifest}:{line}"),
                    group=(row.get("group") or "").strip() or None,
                    split=_split(row.get("split") or "", f"{manifest}:{line}"),
                )
            )
    return entries


def _walk_tree(root: Path) -> list[_Entry]:
    entries = []
    for lang_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = [
            p
            for p in lang_dir.rglob("*")
            if p.suffix.lower() in AUDIO_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
        if files:
            lang = _lang(lang_dir.name, str(lang_dir))
            entries.extend(_Entry(path=p.resolve(), lang=lang) for p in sorted(files))
    return entries


def _to_clip(entry: _Entry, root: Path, config: SplitConfig) -> Clip:
    group = entry.group or group_of(entry.path)
    try:
        clip_id = entry.path.relative_to(root).as_posix()
    except ValueError:
        clip_id = entry.path.as_posix()
    return Clip(
        id=clip_id,
        path=str(entry.path),
        lang=entry.lang,
        group=group,
        split=entry.split or split_of(group, config),
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
