"""Listing inputs: archives as `tar` makes them, hidden files counted, no
empty successes, globs on URIs, and a compressed archive read once."""

from __future__ import annotations

import io
import re
import secrets
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem
import pyarrow.fs as pafs
import pytest

from conftest import S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY
from slc import storage
from slc.batch import inputs
from slc.batch.inputs import list_inputs, read_bytes


def _clip(i: int) -> bytes:
    return f"RIFF-clip-{i:04d}".encode() * 50


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    (root / "clip.wav").write_bytes(_clip(1))
    (root / "sub" / "other.wav").write_bytes(_clip(2))
    (root / ".DS_Store").write_bytes(b"\0" * 8)
    (root / "sub" / "._other.wav").write_bytes(b"\0" * 8)
    return root


@pytest.mark.parametrize(
    "flags, name",
    [
        ("cf", "a.tar"), ("czf", "a.tar.gz"), ("czf", "a.tgz"), ("cjf", "a.tar.bz2"), ("cjf", "a.tbz2"),
        ("cJf", "a.tar.xz"), ("cJf", "a.txz"), ("cjf", "bzip2-inside.tar"),
    ],
)  # fmt: skip
def test_a_tar_of_dot_lists_its_members_and_counts_the_hidden_ones(folder, tmp_path, flags, name):
    archive = tmp_path / name
    subprocess.run(["tar", flags, str(archive), "-C", str(folder), "."], check=True)
    listing = list_inputs([str(archive)])
    assert [i["path"] for i in listing.items] == [f"{archive}::clip.wav", f"{archive}::sub/other.wav"]
    assert listing.skipped_hidden == 2
    assert read_bytes(listing.items, listing.filesystems) == [_clip(1), _clip(2)]


def test_a_zip_with_dotted_names_reads_by_its_stored_names(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("./x/clip.wav", _clip(3))
        archive.writestr("__MACOSX/x/._clip.wav", b"\0")
        archive.writestr(".hidden.wav", b"\0")
    listing = list_inputs([str(tmp_path / "a.zip")])
    assert [i["path"] for i in listing.items] == [f"{tmp_path}/a.zip::x/clip.wav"]
    assert read_bytes(listing.items, listing.filesystems) == [_clip(3)]
    assert listing.skipped_hidden == 2


def test_an_archive_or_directory_without_files_is_a_row_with_its_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "hidden_only").mkdir()
    (tmp_path / "hidden_only" / ".keep").write_bytes(b"")
    with tarfile.open(tmp_path / "hidden.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("./.secret.wav")
        tar.addfile(info, io.BytesIO(b""))
    with zipfile.ZipFile(tmp_path / "none.zip", "w") as archive:
        archive.writestr("x/.DS_Store", b"\0")
    names = ["empty", "hidden_only", "hidden.tar.gz", "none.zip"]
    listing = list_inputs([str(tmp_path / n) for n in names])
    assert {i["path"]: i["error"] for i in listing.items} == {str(tmp_path / n): "no_audio" for n in names}
    assert all(i["detail"].startswith(i["path"]) for i in listing.items)
    assert listing.skipped_hidden == 3


def test_local_globs_skip_and_count_hidden_files(folder):
    listing = list_inputs([f"{folder}/**/*.wav"])
    assert [i["path"] for i in listing.items] == [f"{folder}/clip.wav", f"{folder}/sub/other.wav"]
    assert listing.skipped_hidden == 1
    with pytest.raises(inputs.InputError, match="no such file, directory or glob match"):
        list_inputs([f"{folder}/*.flac"])


def test_globs_on_uris_list_the_matching_objects(s3):
    client, endpoint = s3
    prefix = f"globs-{secrets.token_hex(4)}"  # moto keeps the objects of earlier tests in the process
    for key in ("a.wav", "b.wav", "c.flac", ".d.wav", "sub/e.wav"):
        client.put_object(Bucket=S3_BUCKET, Key=f"{prefix}/{key}", Body=b"x")
    uri = f"s3://{S3_ACCESS_KEY}:{S3_SECRET_KEY}@{S3_BUCKET}/{prefix}/*.wav?endpoint_override={endpoint}&scheme=http"
    listing = list_inputs([uri])
    assert [i["path"] for i in listing.items] == [f"s3://{S3_BUCKET}/{prefix}/a.wav", f"s3://{S3_BUCKET}/{prefix}/b.wav"]
    assert listing.skipped_hidden == 1
    assert read_bytes(listing.items, listing.filesystems) == [b"x", b"x"]


class _CountingFS(LocalFileSystem):
    """The local filesystem, counting the bytes read through it."""

    read = 0

    def _open(self, path, mode="rb", **kwargs):
        handle = super()._open(path, mode, **kwargs)
        original = handle.read

        def counted(*args):
            data = original(*args)
            _CountingFS.read += len(data)
            return data

        handle.read = counted
        return handle


def test_a_compressed_archive_is_decompressed_once_per_run(tmp_path, monkeypatch):
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(200):
            data = _clip(i) + bytes(range(256)) * (i % 7)
            info = tarfile.TarInfo(f"./clips/{i:03d}.wav")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    counting = pafs.PyFileSystem(pafs.FSSpecHandler(_CountingFS(skip_instance_cache=True)))
    monkeypatch.setattr(storage, "resolve", lambda location: (counting, str(Path(location).resolve())))
    _CountingFS.read = 0

    listing = list_inputs([str(archive)])
    for start in range(0, len(listing.items), 16):  # as read tasks of 16 files would
        batch = listing.items[start : start + 16]
        assert all(isinstance(d, bytes) for d in read_bytes(batch, listing.filesystems))
    assert len(listing.items) == 200
    assert archive.stat().st_size <= _CountingFS.read <= 1.2 * archive.stat().st_size


def test_a_plain_tar_is_read_by_byte_ranges(tmp_path):
    with tarfile.open(tmp_path / "plain.tar", "w") as tar:
        for i in range(5):
            info = tarfile.TarInfo(f"{i}.wav")
            info.size = len(_clip(i))
            tar.addfile(info, io.BytesIO(_clip(i)))
    listing = list_inputs([str(tmp_path / "plain.tar")])
    assert all(i["data"] is None and i["size"] == len(_clip(0)) for i in listing.items)
    assert read_bytes(listing.items[2:4], listing.filesystems) == [_clip(2), _clip(3)]


def test_a_broken_archive_is_a_row_and_a_missing_file_an_error_when_read(tmp_path):
    (tmp_path / "broken.tar").write_bytes(b"\x00not a tar" * 10)
    (tmp_path / "list.txt").write_text(f"{tmp_path}/broken.tar\nabsent.wav\n")
    listing = list_inputs([str(tmp_path / "list.txt")])
    broken, absent = sorted(listing.items, key=lambda i: i["path"] != str(tmp_path / "broken.tar"))
    # The file itself is at fault: trying again cannot help.
    assert broken["error"] == "undecodable" and "not a readable archive" in broken["detail"]
    (error,) = read_bytes([absent], listing.filesystems)
    assert error.reason == "unreadable" and str(error).startswith(f"{tmp_path}/absent.wav")


@pytest.mark.parametrize("flags, name", [("czf", "a.tar.gz"), ("cjf", "a.tar.bz2"), ("cJf", "a.tar.xz"), ("", "a.zip")])
def test_a_truncated_archive_is_one_row_the_file_is_at_fault_for(folder, tmp_path, flags, name):
    whole = tmp_path / f"whole-{name}"
    if name.endswith(".zip"):
        shutil.make_archive(str(whole)[: -len(".zip")], "zip", folder)
    else:
        subprocess.run(["tar", flags, str(whole), "-C", str(folder), "."], check=True)
    cut = tmp_path / name
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (row,) = list_inputs([str(cut)]).items
    assert (row["path"], row["error"]) == (str(cut), "undecodable")
    assert row["detail"].startswith(f"{cut}: undecodable: not a readable archive (")


def test_a_zip_member_damaged_or_encrypted_fails_alone(tmp_path):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(4):
            archive.writestr(f"clip{i}.wav", _clip(i))
        damaged, encrypted = archive.getinfo("clip1.wav"), archive.getinfo("clip2.wav")
    data = bytearray(path.read_bytes())
    start = damaged.header_offset + 30 + len("clip1.wav")  # past the member's local header
    data[start : start + 8] = bytes(b ^ 0xFF for b in data[start : start + 8])
    # The encryption bit, in the member's local header and in its central directory entry (the third).
    data[encrypted.header_offset + 6] |= 1
    entries = [m.start() for m in re.finditer(b"PK\x01\x02", bytes(data))]
    data[entries[2] + 8] |= 1
    path.write_bytes(bytes(data))
    listing = list_inputs([str(path)])
    first, broken, locked, last = read_bytes(listing.items, listing.filesystems)
    assert (first, last) == (_clip(0), _clip(3))
    assert broken.reason == "undecodable" and str(broken).startswith(f"{path}::clip1.wav: undecodable: ")
    assert locked.reason == "undecodable" and "encrypted" in str(locked)
