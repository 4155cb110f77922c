"""Items -> clips, or the reason each one is not a clip.

The one step every batch job decodes through: a file that cannot be read or
decoded, and any failure along the way, becomes a reason and a detail naming
the file, never a failed task.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from slc import audio
from slc.batch.inputs import read_bytes
from slc.config import AudioConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Decoded:
    """An item's outcome: its `clip` (float32, mono, at the config's rate) or
    the `reason` (a stable code such as `undecodable`) and `detail` (naming
    the file) why there is none."""

    path: str
    clip: np.ndarray | None = None
    reason: str | None = None
    detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def decode(item: dict[str, Any], data: bytes | Exception | None, config: AudioConfig) -> Decoded:
    """One item (see `slc.batch.inputs`) and its bytes, or the error reading
    them -> a clip or a reason. Never raises."""
    path = item["path"]
    if item["error"] is not None:
        return Decoded(path, reason=item["error"], detail=item["detail"])
    try:
        if isinstance(data, Exception):
            raise data
        return Decoded(path, clip=audio.load(data, config, name=path))
    except audio.AudioError as error:
        return Decoded(path, reason=error.reason, detail=str(error))
    except Exception as error:  # a bug or resource failure must not lose the other files
        log.exception("decoding %s failed", path)
        return Decoded(path, reason="failed", detail=f"{path}: {type(error).__name__}: {error}")


def decode_items(items: list[dict[str, Any]], filesystems: list[pafs.FileSystem], config: AudioConfig) -> list[Decoded]:
    """Items -> their outcomes, in order: bytes read (an archive opened once
    for all of its members among `items`), then decoded."""
    try:
        data = read_bytes(items, filesystems)
    except Exception as error:  # a bug reading must still give every item its row
        log.exception("reading %d files failed", len(items))
        data = [error] * len(items)
    return [decode(entry, read, config) for entry, read in zip(items, data)]
