"""Tar and zip archives as collections of members, each read from storage once.

A compressed tar (gzip, bzip2, xz) can only be read from its start, so it is
streamed once, in order, and each member keeps its bytes. An uncompressed tar
is listed from its headers alone and each member is a byte range of the file;
a zip's members are found through its central directory and read by name.
"""

from __future__ import annotations

import dataclasses
import posixpath
import tarfile
import zipfile

import pyarrow as pa
import pyarrow.fs as pafs

SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
# Errors that mean "not a readable archive", as opposed to a bug (pyarrow
# refuses the seek before the start that zipfile makes on a file under 22 bytes).
ERRORS = (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile, pa.ArrowInvalid)
_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


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
    in archive order. Raises one of ERRORS for a file that is not a readable archive."""
    with fs.open_input_file(path) as handle:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(handle) as archive:
                return [Member(normalise(i.filename), i.filename) for i in archive.infolist() if not i.is_dir()]
        if handle.read(6).startswith(_COMPRESSED_MAGIC):
            handle.seek(0)
            return _streamed(handle)
        handle.seek(0)
        with tarfile.open(fileobj=handle, mode="r:") as archive:
            return [
                Member(normalise(m.name), m.name, offset=m.offset_data, size=m.size) for m in archive if m.isfile()
            ]


def _streamed(handle) -> list[Member]:
    """Every member's bytes, decompressing the archive once from its start."""
    found = []
    with tarfile.open(fileobj=handle, mode="r|*") as archive:
        for member in archive:
            if member.isfile():
                found.append(Member(normalise(member.name), member.name, data=archive.extractfile(member).read()))
    return found


def read_zip_members(fs: pafs.FileSystem, path: str, stored: set[str]) -> dict[str, bytes]:
    """The bytes of the zip members named `stored` that the archive holds."""
    with fs.open_input_file(path) as handle, zipfile.ZipFile(handle) as archive:
        return {name: archive.read(name) for name in stored if name in archive.NameToInfo}


def read_ranges(fs: pafs.FileSystem, path: str, ranges: list[tuple[int, int]]) -> list[bytes]:
    """The bytes of each `(offset, size)` range of the file at `path`, opened once."""
    with fs.open_input_file(path) as handle:
        return [handle.read_at(size, offset) for offset, size in ranges]
