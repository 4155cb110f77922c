import json

import pytest

from slc import config_io
from slc.config import AudioConfig, IngestConfig, LabelConfig, ServeConfig, SplitConfig


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


@pytest.mark.parametrize(
    "cls, data, message",
    [
        (ServeConfig, {"port": "abc"}, "port: Input should be a valid integer, unable to parse string as an integer (got 'abc')"),
        (LabelConfig, {"top_k": "x"}, "top_k: Input should be a valid integer, unable to parse string as an integer (got 'x')"),
        (IngestConfig, {"augment": {"snr_db": [5, "loud"]}}, "snr_db: Input should be a valid number, unable to parse string as a number (got [5, 'loud'])"),
        (IngestConfig, {"augment": {"snr_db": [5, 10, 20]}}, "snr_db: Tuple should have at most 2 items after validation, not 3 (got [5, 10, 20])"),
        (IngestConfig, {"labels": "de"}, "labels: Input should be a valid tuple (got 'de')"),
    ],
)  # fmt: skip
def test_a_setting_of_the_wrong_type_is_an_error_naming_it_and_its_value(cls, data, message):
    with pytest.raises(ValueError) as caught:
        config_io.from_dict(cls, data)
    assert str(caught.value) == message


def test_settings_of_their_types_keep_their_values():
    loaded = config_io.from_dict(IngestConfig, {"audio": {"min_duration_s": 1}, "labels": ["de", "fr"]})
    assert loaded.audio.min_duration_s == 1.0 and loaded.labels == ("de", "fr")
    assert config_io.from_dict(ServeConfig, {"port": 8001, "host": "0.0.0.0"}) == ServeConfig(port=8001, host="0.0.0.0")
