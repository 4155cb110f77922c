"""Tar and zip archives as collections of members, each read from storage once.

A compressed tar (gzip, bzip2, xz) can only be read from its start, so it is
read once, decompressed in order, and each member keeps its bytes; one that
ends early or fails its checksum is damaged as a whole, never listed in part.
An uncompressed tar is listed from its headers alone and each member is a
byte range of the file; a zip's members are found through its central
directory and read by name, each on its own.

Two kinds of failure: storage that cannot read the file (`OSError`, worth
trying again) and a file that is not a readable archive or a member whose
bytes are damaged (`DamagedArchiveError`: the file is at fault).
"""

from __future__ import annotations

import bz2
import contextlib
import dataclasses
import gzip
import io
import lzma
import posixpath
import tarfile
import zipfile
import zlib
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz", ".zip")
_DECOMPRESSORS = {b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ\x00": lzma.open}
# What the archive modules raise for bytes that are not what their format
# says (pyarrow refuses the seek before the start that zipfile makes on a
# file under 22 bytes; zipfile raises NotImplementedError for a compression
# method it lacks).
_FORMAT_ERRORS = (
    EOFError, tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, pa.ArrowInvalid,
    NotImplementedError,
)  # fmt: skip
# Reading one zip member: zipfile raises RuntimeError for an encrypted one.
_MEMBER_ERRORS = (*_FORMAT_ERRORS, RuntimeError)


class DamagedArchiveError(Exception):
    """The file was read, but is not a readable archive of its kind, or a
    member's bytes are damaged."""


# Reading an archive or a member fails with one of these.
ERRORS = (OSError, DamagedArchiveError)


@dataclasses.dataclass(frozen=True)
class Member:
    """One file of an archive. `name` is normalised (no `./`, no leading `/`);
    `stored` is the name in the archive; exactly one of `data` (a compressed
    tar's member) or `offset`/`size` (a plain tar's) is set, neither for a zip's."""

    name: str
    stored: str
    data: bytes | None = None
    offset: int | None = None
    size: int | None = None


def is_archive(path: str) -> bool:
    return path.lower().endswith(SUFFIXES)


def normalise(name: str) -> str:
    """`./a/b.wav`, `/a/b.wav` and `a//b.wav` -> `a/b.wav`; `.` or `./` -> ``."""
    name = posixpath.normpath(name.lstrip("/"))
    return "" if name == "." else name


def members(fs: pafs.FileSystem, path: str) -> list[Member]:
    """The files (not directories, links or devices) of the archive at `path`,
    in archive order. Raises OSError where storage fails to read it and
    DamagedArchiveError where it is not a readable archive."""
    with fs.open_input_file(path) as handle:
        if path.lower().endswith(".zip"):
            with _damage_named(), zipfile.ZipFile(handle) as archive:
                return [Member(normalise(i.filename), i.filename) for i in archive.infolist() if not i.is_dir()]
        head = handle.read(6)
        handle.seek(0)
        decompressor = next((d for magic, d in _DECOMPRESSORS.items() if head.startswith(magic)), None)
        if decompressor is not None:
            return _decompressed(decompressor, handle.read())
        with _damage_named(), tarfile.open(fileobj=handle, mode="r:") as archive:
            return [Member(normalise(m.name), m.name, offset=m.offset_data, size=m.size) for m in archive if m.isfile()]


def _decompressed(decompressor, data: bytes) -> list[Member]:
    """Every member's bytes, decompressing the archive (`data`, already read)
    once from its start and on to the end of its compressed stream, where a
    truncated or altered one fails: the tar inside would end quietly at the
    last whole member. With the bytes in memory, any error is the archive's."""
    found = []
    with _damage_named((OSError, *_FORMAT_ERRORS)), decompressor(io.BytesIO(data)) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                if member.isfile():
                    found.append(Member(normalise(member.name), member.name, data=archive.extractfile(member).read()))
        while stream.read(1 << 20):
            pass
    return found


@contextlib.contextmanager
def _damage_named(errors: tuple[type[BaseException], ...] = _FORMAT_ERRORS) -> Iterator[None]:
    """`errors` (by default the archive modules' format errors) raised as
    DamagedArchiveError; anything else, OSError (storage) among it, passes."""
    try:
        yield
    except errors as error:
        raise DamagedArchiveError(str(error) or type(error).__name__) from error


def read_zip_members(fs: pafs.FileSystem, path: str, stored: set[str]) -> dict[str, bytes | Exception]:
    """The bytes of each zip member named in `stored` that the archive holds,
    or the error reading it: a damaged member fails alone. Raises as
    `members` when the zip itself cannot be opened."""
    found: dict[str, bytes | Exception] = {}
    with fs.open_input_file(path) as handle:
        with _damage_named():
            archive = zipfile.ZipFile(handle)
        with archive:
            for name in stored & archive.NameToInfo.keys():
                try:
                    with _damage_named(_MEMBER_ERRORS):
                        found[name] = archive.read(name)
                except ERRORS as error:
                    found[name] = error
    return found


def read_ranges(fs: pafs.FileSystem, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each `(offset, size)` range of the file at `path`, opened once."""
    with fs.open_input_file(path) as handle:
        return [handle.read_at(size, offset) for offset, size in ranges]
