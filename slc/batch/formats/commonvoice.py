"""Common Voice releases: `<locale>/clips/*.mp3` listed by the locale's TSVs.

The clips are those of `validated.tsv`, `train.tsv`, `dev.tsv` and `test.tsv`
(the last three are subsets of the first in a release); `other.tsv` and
`invalidated.tsv` are not used. A clip's language is its locale folder, its
group the speaker (`client_id`) and its release split the TSV that lists it.
The input is a release (a folder of locales) or one locale. TSVs are read
with pyarrow, quotes taken literally as Common Voice writes them.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs

from slc.batch.formats.record import FormatError, Record

SPLIT_TSVS = {"train.tsv": "train", "dev.tsv": "dev", "test.tsv": "test"}
TSVS = ("validated.tsv", *SPLIT_TSVS)


def recognises(fs: pafs.FileSystem, path: str, files: Sequence[str] | None) -> bool:
    return files is not None and bool(_locales(path, files))


def read(fs: pafs.FileSystem, path: str, files: Sequence[str] | None, lang_column: str | None) -> list[Record]:
    """A record per clip of every locale; `lang_column` is not used (the
    locale folder is the language)."""
    if files is None:
        raise FormatError(f"{path}: a Common Voice release is a directory (<locale>/clips/*.mp3 with TSVs)")
    records: dict[str, Record] = {}
    present = set(files)
    for locale_dir in _locales(path, files):
        locale = posixpath.basename(locale_dir)
        # validated.tsv first: a clip a split TSV lists again takes that split.
        for tsv in TSVS:
            tsv_path = posixpath.join(locale_dir, tsv)
            if tsv_path not in present:
                continue
            for line, (client_id, clip) in enumerate(_rows(fs, tsv_path), start=2):
                if not clip or not client_id:
                    raise FormatError(f"{tsv_path}:{line}: empty client_id or path")
                source = posixpath.join(locale_dir, "clips", clip)
                records[source] = Record(source, None, locale, group=client_id, split=SPLIT_TSVS.get(tsv))
    return [records[source] for source in sorted(records)]


def _locales(path: str, files: Sequence[str]) -> list[str]:
    """Folders (the input or one level below it) holding a release TSV and a `clips/` folder."""
    with_tsv = {posixpath.dirname(f) for f in files if posixpath.basename(f) in TSVS}
    with_clips = {posixpath.dirname(posixpath.dirname(f)) for f in files if posixpath.basename(posixpath.dirname(f)) == "clips"}
    return sorted(d for d in with_tsv & with_clips if d == path or posixpath.dirname(d) == path)


def _rows(fs: pafs.FileSystem, path: str) -> list[tuple[str, str]]:
    """(client_id, clip file name) of each row of a release TSV."""
    try:
        with fs.open_input_stream(path) as stream:
            table = pacsv.read_csv(
                stream,
                parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                convert_options=pacsv.ConvertOptions(
                    include_columns=["client_id", "path"],
                    column_types={"client_id": pa.string(), "path": pa.string()},
                ),
            )
    except (pa.ArrowInvalid, KeyError) as error:
        raise FormatError(f"{path}: not a Common Voice TSV with client_id and path columns ({error})") from None
    return list(zip(table["client_id"].to_pylist(), table["path"].to_pylist()))
