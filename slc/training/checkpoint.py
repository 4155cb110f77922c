"""Checkpoints: weights as safetensors (never pickles), the resolved config,
the label set and the metrics, in one directory that Ray Train manages.

    model.safetensors   classifier weights
    optimizer.safetensors + training_state.json   what resuming needs
    config.json         {"train": TrainConfig, "features": FeatureConfig}; its
                        model is the shape that was built (a pretrained encoder's)
    labels.json, metrics.json
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from slc import config_io
from slc.config import FeatureConfig, TrainConfig
from slc.labels import LabelSet
from slc.training.model import LanguageClassifier


class CheckpointError(ValueError):
    """A checkpoint that is missing files or does not fit the model it describes."""


def save(
    directory: Path,
    model: LanguageClassifier,
    labels: LabelSet,
    train: TrainConfig,
    features: FeatureConfig,
    metrics: dict[str, Any],
    shards: str | None = None,
) -> Path:
    """Write a checkpoint; `shards` records where the model's training data
    lives, so export and evaluation can find its validation and test splits."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, directory / "model.safetensors")
    (directory / "config.json").write_text(
        json.dumps({"train": config_io.to_dict(train), "features": config_io.to_dict(features), "shards": shards}, indent=2) + "\n"
    )
    (directory / "labels.json").write_text(labels.to_json())
    (directory / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return directory


def _what_it_is(directory: Path, name: str) -> str:
    """A hint for a directory given where a checkpoint was wanted: a training
    run names its best checkpoint, a bundle the checkpoint it was exported from."""
    if (directory / "best" / name).is_file():
        return f"; it is a training run: its best checkpoint is {directory / 'best'}"
    if (directory / "bundle.json").is_file():
        try:
            source = json.loads((directory / "bundle.json").read_text()).get("exported_from")
        except (OSError, ValueError, AttributeError):
            source = None
        of = f" exported from the checkpoint {source}" if source else ""
        return f"; it is a bundle{of}, and its bundle.json holds each variant's val and test scores"
    return ""


def load(directory: Path) -> tuple[LanguageClassifier, LabelSet, TrainConfig, FeatureConfig]:
    """Rebuild the classifier a checkpoint describes and load its weights."""
    directory = Path(directory)
    for name in ("model.safetensors", "config.json", "labels.json"):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory}: not a checkpoint (no {name}){_what_it_is(directory, name)}")
    settings = json.loads((directory / "config.json").read_text())
    train = config_io.from_dict(TrainConfig, settings["train"])
    features = config_io.from_dict(FeatureConfig, settings["features"])
    labels = LabelSet.from_json((directory / "labels.json").read_text())
    # The encoder shape is in the config; init_from only mattered for the first run.
    model = LanguageClassifier(train.model, len(labels))
    state = load_file(directory / "model.safetensors")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{directory}/model.safetensors does not fit its config.json: {error}") from None
    return model, labels, train, features


def trained_on(directory: Path) -> str | None:
    """The shard directory the checkpoint was trained on, when it was recorded."""
    return json.loads((Path(directory) / "config.json").read_text()).get("shards")


def read_metrics(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / "metrics.json").read_text())


def save_training_state(
    directory: Path, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int, history: list[dict]
) -> None:
    """Optimizer moments as safetensors, the rest (step counts, learning rates,
    epoch, per-epoch history) as JSON."""
    state = optimizer.state_dict()
    tensors = {
        f"{param}.{name}": value.detach().cpu().contiguous()
        for param, slots in state["state"].items()
        for name, value in slots.items()
    }
    save_file(tensors, Path(directory) / "optimizer.safetensors")
    (Path(directory) / "training_state.json").write_text(
        json.dumps(
            {
                "param_groups": state["param_groups"],
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
            },
            indent=2,
        )
        + "\n"
    )


def load_training_state(directory: Path, optimizer: torch.optim.Optimizer, scheduler: Any) -> tuple[int, list[dict]]:
    """Restore optimizer and scheduler; -> (last finished epoch, history)."""
    info = json.loads((Path(directory) / "training_state.json").read_text())
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in load_file(Path(directory) / "optimizer.safetensors").items():
        param, name = key.split(".", 1)
        slots.setdefault(int(param), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": info["param_groups"]})
    scheduler.load_state_dict(info["scheduler"])
    return info["epoch"], info["history"]
