import json

import pytest

from slc import config_io
from slc.config import AudioConfig, IngestConfig, SplitConfig


def sample() -> IngestConfig:
    return IngestConfig(
        audio=AudioConfig(max_duration_s=30.0, trim_silence=False),
        split=SplitConfig(train=0.7, val=0.2, test=0.1, seed=3),
        labels=("de", "fr"),
    )


@pytest.mark.parametrize("fmt, suffix", [("json", ".json"), ("yaml", ".yaml")])
def test_round_trip_through_files(tmp_path, fmt, suffix):
    path = tmp_path / f"ingest{suffix}"
    path.write_text(config_io.dumps(sample(), fmt))
    assert config_io.load(IngestConfig, path) == sample()


def test_partial_file_keeps_defaults(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"audio": {"min_duration_s": 1.0}}))
    loaded = config_io.load(IngestConfig, path)
    assert loaded.audio.min_duration_s == 1.0 and loaded.audio.max_duration_s == AudioConfig().max_duration_s


def test_unknown_setting_is_an_error():
    with pytest.raises(ValueError, match="unknown AudioConfig settings: \\['sample_rat'\\]"):
        config_io.from_dict(AudioConfig, {"sample_rat": 8000})
