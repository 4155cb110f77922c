"""What every format reader gives: a record per clip, and its errors."""

from __future__ import annotations

import dataclasses
import posixpath
import re
from collections.abc import Sequence

# Columns (or fields) that hold a clip's language, tried in this order.
LANG_COLUMNS = ("language", "lang", "locale", "label")
# Columns that name a clip's speaker: its group.
GROUP_COLUMNS = ("client_id", "speaker_id", "speaker")
# Names releases give their splits, as found in file and folder names.
RELEASE_SPLITS = ("train", "validation", "valid", "val", "dev", "test")
_NAME_PARTS = re.compile(r"[-_.]")


class FormatError(ValueError):
    """A corpus file that does not hold what its format says: a missing
    column, a malformed line. The message names the file and the reason."""


@dataclasses.dataclass(frozen=True)
class Record:
    """One clip of a corpus.

    `source` is the file holding its bytes (a path within the input's
    filesystem) and `name` what it is within that file: a row number, an
    archive member or a segment id (None: the whole file). How to read the
    bytes follows `slc.batch.inputs` items: `member`, `offset`/`size` (a plain
    tar's byte range) or `data` (bytes already read); `span` is `(start_s,
    duration_s)` within the decoded file, for a segment of a recording.
    `lang`, `group` and `split` are as the corpus writes them (None: not given).
    """

    source: str
    name: str | None
    lang: str | None
    group: str | None = None
    split: str | None = None
    member: str | None = None
    offset: int | None = None
    size: int | None = None
    data: bytes | None = None
    span: tuple[float, float] | None = None

    def where(self) -> str:
        return self.source if self.name is None else f"{self.source}::{self.name}"


def release_split(relative: str) -> str | None:
    """The split a release names in a file's relative path (`data/train-0000-of-0002.parquet`,
    `test/data-00000-of-00001.arrow`, `supervisions_dev.jsonl.gz`), or None."""
    for part in relative.split("/"):
        for word in _NAME_PARTS.split(part.lower()):
            if word in RELEASE_SPLITS:
                return word
    return None


def column(names: Sequence[str], wanted: str | None, candidates: Sequence[str], where: str) -> str | None:
    """`wanted` when given (FormatError naming `where` if `names` lacks it),
    else the first of `candidates` in `names`, else None."""
    if wanted is not None:
        if wanted not in names:
            raise FormatError(f"{where}: no column {wanted!r}; found {list(names)}")
        return wanted
    return next((name for name in candidates if name in names), None)


def voxlingua_id(name: str) -> str | None:
    """The YouTube id that prefixes a VoxLingua107 file name (`<id>__U__S...`), else None."""
    stem = posixpath.basename(name)
    return stem.split("__", 1)[0] if "__" in stem else None
