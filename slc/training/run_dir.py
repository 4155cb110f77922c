"""The output directory of a training run, new or resumed.

    <out>/run/             Ray Train's run: checkpoints and its snapshot
    <out>/best/            the best checkpoint, copied when the run ends
    <out>/settings.json    the labels and settings the run was started with

A resumed run continues the same training: it is refused on shards of other
labels or with settings that change what is learnt; more epochs, another
patience and other resources are allowed. Resuming where there is no run yet
starts one, so that a command retried as it is (a Kubernetes job's retry)
continues what its first attempt began.
"""

from __future__ import annotations

import json
import logging

import pyarrow.fs as pafs

from slc import config_io, storage
from slc.config import TrainConfig
from slc.labels import LabelSet

log = logging.getLogger(__name__)

RUN_NAME = "run"
SETTINGS_FILE = "settings.json"
# What a resumed run may change: how long it goes on, and what it runs on.
_FREE_SETTINGS = ("epochs", "patience", "workers", "cpus_per_worker", "use_gpu", "keep_checkpoints", "max_failures")


def prepare(
    out: str, config: TrainConfig, labels: LabelSet, overwrite: bool, resume: bool
) -> tuple[pafs.FileSystem, str]:
    """The run directory. Resumed: as the run left it. New (with `resume`
    too, where OUT holds no run yet): empty, emptied with `overwrite`, with
    SETTINGS_FILE written. Raises StorageError when resuming would make
    another run."""
    fs, root = storage.resolve(out)
    if resume and not overwrite:
        if not storage.is_empty(fs, storage.join(root, RUN_NAME)):
            _check_same_run(fs, root, out, config, labels)
            return fs, root
        log.info("%s holds no run to resume: starting one", storage.redact(out))
    fs, root = storage.open_output(out, resume, overwrite)  # refuses --resume with --overwrite
    settings = {"labels": list(labels.codes), "train": config_io.to_dict(config)}
    storage.write_json(fs, storage.join(root, SETTINGS_FILE), settings)
    return fs, root


def _check_same_run(fs: pafs.FileSystem, root: str, out: str, config: TrainConfig, labels: LabelSet) -> None:
    path = storage.join(root, SETTINGS_FILE)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return  # a run from before settings were recorded
    before = json.loads(storage.read_text(fs, path))
    if before["labels"] != list(labels.codes):
        raise storage.StorageError(
            f"{storage.redact(out)}: was trained on shards labelled {', '.join(before['labels'])}, and these are "
            f"labelled {', '.join(labels.codes)}; resume on the shards it was trained on, or train into a new OUT"
        )
    changed = config_io.changed(before["train"], config_io.to_dict(config), _FREE_SETTINGS)
    if changed:
        raise storage.StorageError(
            f"{storage.redact(out)}: was trained with other settings ({', '.join(changed)}); resume with the same "
            "settings (epochs, patience and resources may change), or train into a new OUT"
        )
