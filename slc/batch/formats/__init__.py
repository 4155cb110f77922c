"""Corpora in the layouts people already have -> records, one per clip.

A format reader turns an input (a file, or a directory and the files under
it) into `Record`s: where each clip's bytes are, and the language, group and
split the corpus itself gives it. Formats:

- `huggingface`: a `datasets` dataset saved with `save_to_disk` (Arrow) or
  Parquet files, rows with an audio column (`{bytes, path}`);
- `commonvoice`: a Common Voice release, `<locale>/clips/*.mp3` and its TSVs;
- `webdataset`: tar shards of `<key>.<audio>` with `<key>.json` or `<key>.cls`;
- `lhotse`: recording + supervision manifests, or a cut set (`.jsonl[.gz]`).

Values are as the corpus writes them: normalising languages and choosing
splits is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow.fs as pafs

from slc.batch.formats import commonvoice, huggingface, lhotse, webdataset
from slc.batch.formats.record import FormatError, Record

__all__ = ["FORMATS", "FormatError", "Record", "detect", "read"]

_READERS = {
    "huggingface": huggingface,
    "commonvoice": commonvoice,
    "webdataset": webdataset,
    "lhotse": lhotse,
}
FORMATS = tuple(_READERS)


def detect(fs: pafs.FileSystem, path: str, files: Sequence[str] | None, among: Sequence[str] = FORMATS) -> str | None:
    """The format, of those named in `among`, of the file `path` or of the
    directory `path` holding `files` (paths within `fs`, hidden ones left
    out); None for none of them."""
    for name in among:
        if _READERS[name].recognises(fs, path, files):
            return name
    return None


def read(
    name: str, fs: pafs.FileSystem, path: str, files: Sequence[str] | None, lang_column: str | None = None
) -> list[Record]:
    """The records of the input `path` (a file, or a directory holding
    `files`) read as format `name`. `lang_column` names the column or field
    holding the language (default: the first of `record.LANG_COLUMNS` present).
    Raises FormatError naming the file and what is wrong with it."""
    if name not in _READERS:
        raise ValueError(f"unknown format {name!r}; use one of {list(FORMATS)}")
    records = _READERS[name].read(fs, path, files, lang_column)
    if not records:
        raise FormatError(f"{path}: no clips found in it as a {name} corpus")
    seen: dict[tuple[str, str | None], Record] = {}
    for found in records:
        key = (found.source, found.name)
        if key in seen:
            raise FormatError(f"{found.where()}: listed twice")
        seen[key] = found
    return records
