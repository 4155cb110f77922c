"""The bundle: what `slc export` writes and the runtime loads. No torch here.

    features.onnx          waveforms float32[B, N], lengths int64[B] -> features, frame_lengths
    model.onnx             features float32[B, T, 80], frame_lengths int64[B] -> probabilities [B, labels]
    model.<variant>.onnx   the same graph optimised or quantized (fp32-all, int8-dynamic, fp16, ...)
    labels.json            the label set, in output order
    bundle.json            settings, variants with their scores, the default variant, sha256 of every file
    report.md              the variants table

A bundle whose files do not match the hashes in `bundle.json` is refused. A
process checks only the files it loads, and each of them once: a file
already found intact is known by its path, size, inode and mtime.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

import onnxruntime as ort

FORMAT = 1
MANIFEST = "bundle.json"
FEATURES_FILE = "features.onnx"
LABELS_FILE = "labels.json"
FP32 = "fp32"
DEVICES = ("cpu", "cuda")

log = logging.getLogger(__name__)


class BundleError(ValueError):
    """A bundle that is missing, from an unknown format, or altered since export."""


def model_file(variant: str) -> str:
    return "model.onnx" if variant == FP32 else f"model.{variant}.onnx"


def slc_version() -> str:
    try:
        return metadata.version("slc")
    except metadata.PackageNotFoundError:
        return "unknown"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write `bundle.json` with the sha256 of every other file in `directory`."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {**manifest, "format": FORMAT, "files": {p.name: sha256(p) for p in files}}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    """`bundle.json` of a bundle directory, after checking its format; raises
    BundleError when there is none or it is not one this slc reads. The
    files it lists are checked by `verify`, for those a process loads."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise BundleError(f"{directory}: not a bundle (no {MANIFEST}); write one with `slc export`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BundleError(f"{path}: not valid JSON ({error})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: bundle format {manifest.get('format')!r}; this slc reads format {FORMAT}")
    return manifest


# Files this process found intact, by (real path, size, inode, mtime_ns) ->
# their sha256: Serve replicas and Ray Data workers each build Classifiers,
# and re-hashing a large model for every one is start-up time for nothing.
_intact: dict[tuple[str, int, int, int], str] = {}


def verify(directory: Path, manifest: dict[str, Any], names: Iterable[str]) -> None:
    """Check that every file `manifest` lists is present in `directory`, and
    that the files `names` (those a process loads) match their sha256;
    raises BundleError naming the first that does not. Each file is hashed
    once per process while it stays unchanged on disk."""
    directory = Path(directory)
    # Presence is cheap to check for every file: a bundle missing one was
    # copied or synced incompletely, whichever variant this process loads.
    for listed in manifest["files"]:
        if not (directory / listed).is_file():
            raise BundleError(f"{directory / listed}: listed in {MANIFEST} but missing")
    for name in names:
        file = directory / name
        expected = manifest["files"].get(name)
        if expected is None:
            raise BundleError(f"{file}: not listed in {MANIFEST}; the bundle was altered after export")
        stat = file.stat()
        key = (os.path.realpath(file), stat.st_size, stat.st_ino, stat.st_mtime_ns)
        if _intact.get(key) == expected:
            continue
        if sha256(file) != expected:
            raise BundleError(f"{file}: sha256 does not match {MANIFEST}; the bundle was altered after export")
        _intact[key] = expected


def session(path: Path, threads: int = 1, device: str = "cpu") -> ort.InferenceSession:
    """An onnxruntime session on `device` (see `providers`) with explicit
    thread counts: ORT ignores OMP_NUM_THREADS, and replicas sharing a node
    must not each take every core."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: the fp16 and int8 graphs' cast warnings are expected
    return ort.InferenceSession(str(path), options, providers=providers(device))


def providers(device: str) -> list[str]:
    """onnxruntime's execution providers for `device`, `cpu` or `cuda` (the
    CPU provider behind CUDA takes the operators CUDA lacks). An onnxruntime
    built without CUDA (the `onnxruntime` wheel; `onnxruntime-gpu` has it)
    runs `cuda` on the CPU and says so, as onnxruntime itself does when
    CUDA's libraries are missing."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {list(DEVICES)}, got {device!r}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        log.warning(
            "a GPU was asked for, but this onnxruntime has no CUDA provider (it has %s): classifying on CPU; "
            "install onnxruntime-gpu to use the GPU", ", ".join(available),
        )  # fmt: skip
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]
