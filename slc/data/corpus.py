"""Find the clips of a corpus and give each a language, a group and a split.

Layouts understood (`FORMATS`; recognised by a look at the input, or named):

- `tree`: `<root>/<lang>/**/<audio>`, as VoxLingua107; a `manifest.csv` or
  `manifest.tsv` at the root may add `group` and `split` for the files it names;
- `manifest`: a CSV/TSV with columns `path,lang` and optional `group`, `split`
  (relative paths resolve against the manifest's folder);
- the formats of `slc.batch.formats`: `huggingface` (`save_to_disk` or
  Parquet), `commonvoice`, `webdataset`, `lhotse`.

A clip's group is its manifest `group` or its speaker where the corpus names
one, else the YouTube id that prefixes VoxLingua107 file names
(`<id>__U__S...`), else its parent folder (a row or sample: itself). Whole
groups go to one split, so validation and test speakers are never heard in
training: by a hash of the group, or (`SplitConfig.mode = "from-release"`)
the split the corpus itself gives, a clip without one taking its group's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import posixpath
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path, PurePath, PurePosixPath

import pyarrow.fs as pafs

from slc import storage
from slc.batch import formats, inputs
from slc.config import SplitConfig
from slc.data.background import select as select_background
from slc.labels import BACKGROUND, LabelError, LabelSet, normalize

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".caf", ".w64", ".rf64"}
)
MANIFEST_NAMES = ("manifest.csv", "manifest.tsv")
FORMATS = ("auto", "tree", "manifest", *formats.FORMATS)
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
    source: str  # the file holding it, within the corpus's filesystem
    # How to read its bytes from `source`, as `slc.batch.inputs` items say.
    member: str | None = None
    offset: int | None = None
    size: int | None = None
    data: bytes | None = None
    span: list[float] | None = None  # (start_s, duration_s) of a segment
    source_lang: str | None = None  # a background clip's own language (its `lang` is `other`)


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


def discover(
    source: str | Path,
    labels: LabelSet | None = None,
    split: SplitConfig = SplitConfig(),
    layout: str = "auto",
    lang_column: str | None = None,
    background: Sequence[str] = (),
    background_per_lang: int = 100,
) -> Corpus:
    """All clips of a corpus (a local path or a URI), sorted by id.

    `layout` is one of FORMATS (`auto`: recognised by a look at the input);
    `lang_column` names the column or field holding the language in formats
    that have them. `labels` restricts the corpus to those languages, in that
    order; clips of other languages are counted in `Corpus.excluded`. Without
    it the label set is every language found. `background` languages (or
    `all-others`) outside `labels` join as the class `other`, at most
    `background_per_lang` clips each (slc.data.background).
    """
    if background and labels is None:
        raise CorpusError("a background class needs --labels: without them every language is a label")
    if layout not in FORMATS:
        raise CorpusError(f"unknown corpus format {layout!r}; use one of {list(FORMATS)}")
    location = str(source)
    fs, path = storage.resolve(location)
    shown = inputs.shown_name(location, path)
    kind, hidden = fs.get_file_info(path).type, 0
    files = None
    if kind == pafs.FileType.Directory:
        tree = inputs.walk(fs, path)
        files, hidden = tree.files, tree.skipped_hidden
    elif kind != pafs.FileType.File:
        raise CorpusError(f"{shown}: no such file or directory")
    if layout == "auto":
        layout = formats.detect(fs, path, files) or ("tree" if files is not None else "manifest")
    if layout in formats.FORMATS:
        clips = _format_clips(fs, path, shown, files, layout, lang_column, split)
    else:
        clips = _layout_clips(fs, path, shown, files, layout, split)
    corpus = _restricted(clips, labels, fs, hidden)
    if not background:
        return corpus
    try:
        others, splits = select_background(clips, corpus.labels, background, background_per_lang, split)
    except ValueError as error:
        raise CorpusError(f"{shown}: {error}") from None
    log.info("background class %r: %d clips of %s", BACKGROUND, len(others),
             ", ".join(f"{lang} ({where})" for lang, where in sorted(splits.items())))
    # Clips beyond a language's cap stay excluded, so every clip is counted once.
    taken = Counter(c.source_lang for c in others)
    excluded = {lang: n - taken[lang] for lang, n in corpus.excluded.items() if n > taken[lang]}
    return dataclasses.replace(
        corpus, clips=sorted(corpus.clips + others, key=lambda c: c.id),
        labels=LabelSet(corpus.labels.codes + (BACKGROUND,)), excluded=excluded,
    )  # fmt: skip


def _layout_clips(
    fs: pafs.FileSystem, path: str, shown: str, files: list[str] | None, layout: str, split: SplitConfig
) -> list[Clip]:
    """The clips of a tree (`files` under the directory `path`) or a manifest."""
    if (layout == "tree") != (files is not None):
        expected = "a directory" if layout == "tree" else "a CSV/TSV file"
        raise CorpusError(f"{shown}: a {layout} corpus is {expected}")
    if files is not None:
        root = path
        entries = {e.path: e for e in _tree_entries(files, root, shown)}
        manifests = [storage.join(root, name) for name in MANIFEST_NAMES]
        manifest = next((m for m in manifests if fs.get_file_info(m).type == pafs.FileType.File), None)
        if manifest is not None:
            entries.update({e.path: e for e in read_manifest(fs, manifest, inputs.shown_as(shown, root, manifest))})
    else:
        root = posixpath.dirname(path)
        entries = {e.path: e for e in read_manifest(fs, path, shown)}
    if not entries:
        raise CorpusError(f"{shown}: {_none_found(files, root)} (expected <root>/<lang>/**/<audio> or a manifest)")
    shown_root = inputs.shown_as(shown, path, root)
    clips = [_to_clip(e, root, shown_root, split) for e in entries.values()]
    return _grouped_splits(clips, {}, split)


def _format_clips(
    fs: pafs.FileSystem,
    path: str,
    shown: str,
    files: list[str] | None,
    layout: str,
    lang_column: str | None,
    split: SplitConfig,
) -> list[Clip]:
    """The clips of a corpus in one of `formats.FORMATS`, with their release splits when asked for."""
    try:
        records = formats.read(layout, fs, path, files, lang_column)
    except formats.FormatError as error:
        raise CorpusError(str(error)) from None
    root = path if files is not None else posixpath.dirname(path)
    clips, release = [], {}
    for record in records:
        relative = posixpath.relpath(record.source, root)
        clip_id = (record.source if relative.startswith("../") else relative) + (f"::{record.name}" if record.name else "")
        group, where = record.group or clip_id, inputs.record_path(shown, path, record)
        if record.lang is None:
            raise CorpusError(f"{where}: no language")
        if split.mode == "from-release" and record.split is not None:
            release[clip_id] = _split(record.split, where)
        clips.append(
            Clip(
                id=clip_id,
                path=where,
                lang=_lang(record.lang, where),
                group=group,
                split=split_of(group, split),
                source=record.source,
                **inputs.record_fields(record),
            )
        )
    return _grouped_splits(clips, release, split)


def _grouped_splits(clips: list[Clip], release: dict[str, str], config: SplitConfig) -> list[Clip]:
    """`clips` sorted by id; with `release` (clip id -> the corpus's split),
    each clip in its release split, else its group's, else its own. Raises
    CorpusError when a release puts one group in two splits."""
    if not release:
        return sorted(clips, key=lambda c: c.id)
    by_group: dict[str, set[str]] = defaultdict(set)
    for clip in clips:
        if clip.id in release:
            by_group[clip.group].add(release[clip.id])
    spanning = {group: sorted(found) for group, found in by_group.items() if len(found) > 1}
    if spanning:
        group, found = next(iter(sorted(spanning.items())))
        raise CorpusError(
            f"the release puts {len(spanning)} group(s) in more than one split, e.g. {group!r} in {found}: "
            "use the hash split (leave out --split from-release)"
        )
    placed = [
        dataclasses.replace(clip, split=release.get(clip.id) or next(iter(by_group.get(clip.group, ())), clip.split))
        for clip in clips
    ]
    return sorted(placed, key=lambda c: c.id)


def _restricted(clips: list[Clip], labels: LabelSet | None, fs: pafs.FileSystem, hidden: int) -> Corpus:
    """The corpus of `clips`, kept to `labels` (in that order) when given."""
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
        if below and _is_audio(file):
            by_lang[lang_dir].append(file)
    return [
        _Entry(path=file, lang=_lang(lang_dir, inputs.shown_as(shown, root, storage.join(root, lang_dir))))
        for lang_dir, found in sorted(by_lang.items())
        for file in found
    ]


def _none_found(files: list[str] | None, root: str) -> str:
    """Why a tree under `root` gave no clips: its audio files lie at its top level, or it has none."""
    loose = sum(posixpath.dirname(f) == root and _is_audio(f) for f in files or [])
    if not loose:
        return "no audio files found"
    return f"{loose} audio file{'' if loose == 1 else 's'} at its top level and none in a language folder"


def _is_audio(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in AUDIO_EXTENSIONS


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
