"""Settings for every stage, as dataclasses: the one home of defaults.

Each config round-trips through plain dicts, JSON and YAML, so the resolved
settings can be written next to every artifact and read back to rebuild it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

SAMPLE_RATE = 16_000


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """How a file becomes a clip: mono float32 at `sample_rate`."""

    sample_rate: int = SAMPLE_RATE
    trim_silence: bool = True
    # Frames quieter than this many dB below the loudest frame count as silence.
    trim_top_db: float = 40.0
    min_duration_s: float = 0.5
    max_duration_s: float = 600.0


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Kaldi fbank settings; the numbers of transformers' Speech2TextFeatureExtractor."""

    sample_rate: int = SAMPLE_RATE
    num_mel_bins: int = 80
    frame_length: int = 400  # samples: 25 ms at 16 kHz
    hop_length: int = 160  # samples: 10 ms at 16 kHz
    fft_length: int = 512
    preemphasis: float = 0.97
    low_freq_hz: float = 20.0
    high_freq_hz: float = 8000.0
    mel_floor: float = 1.192092955078125e-07  # float32 epsilon, as Kaldi
    normalize: bool = True  # utterance mean and variance normalisation


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """Group-aware train/val/test split by a hash of the group."""

    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        fractions = (self.train, self.val, self.test)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Corpus -> features -> Parquet shards."""

    audio: AudioConfig = dataclasses.field(default_factory=AudioConfig)
    features: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    labels: tuple[str, ...] = ()  # empty: every language the corpus brings
    clips_per_task: int = 16
    rows_per_file: int = 2_000


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as nested plain dicts and lists (JSON/YAML safe)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config dataclass from `to_dict` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {sorted(unknown)}")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value)
        elif typing.get_origin(kind) is tuple:
            value = tuple(value)
        values[name] = value
    return cls(**values)


def dumps(config: Any, fmt: str = "json") -> str:
    """Serialise a config as `json` or `yaml` text."""
    data = to_dict(config)
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False)
    return json.dumps(data, indent=2) + "\n"


def load(cls: type[T], path: str | Path) -> T:
    """Read a config from a .json, .yaml or .yml file."""
    text = Path(path).read_text()
    data = yaml.safe_load(text) if str(path).endswith((".yaml", ".yml")) else json.loads(text)
    return from_dict(cls, data)
