"""`slc` commands: settings by precedence default < --config file < flag, one-line errors.

The library call of each command is replaced by one that records the settings
it receives: no training, export or Ray runs here.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
import tempfile
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from slc import config as cfg
from slc import config_io
from slc.apps.cli import app


class Called(Exception):
    """Raised by a stand-in library call, carrying the settings it was given."""

    def __init__(self, settings: Any) -> None:
        super().__init__()
        self.settings = settings


@dataclasses.dataclass(frozen=True)
class Command:
    args: list[str]  # the command and its required arguments
    target: str  # the library call the command makes, "module:function"
    cls: type
    file: dict[str, Any]  # a --config file
    flags: list[str]  # flags that override one of the file's settings
    expected: dict[str, Any]  # dotted setting -> value, with the file and the flags


COMMANDS = {
    "ingest": Command(
        ["ingest", "corpus", "shards"], "slc.data.ingest:ingest", cfg.IngestConfig,
        {"audio": {"max_duration_s": 30.0, "min_duration_s": 1.0}, "augment": {"copies": 2}, "labels": ["de", "fr"]},
        ["--max-duration", "20", "--split", "0.7,0.2,0.1"],
        {"audio.max_duration_s": 20.0, "audio.min_duration_s": 1.0, "augment.copies": 2, "labels": ("de", "fr"),
         "split.train": 0.7, "split.val": 0.2},
    ),
    "train": Command(
        ["train", "shards", "run"], "slc.training.loop:train", cfg.TrainConfig,
        {"epochs": 10, "lr": 0.01, "model": {"dropout": 0.3}},
        ["--epochs", "3", "--preset", "small"],
        {"epochs": 3, "lr": 0.01, "model.dropout": 0.3, "model.d_model": 256},
    ),
    "export": Command(
        ["export", "run/best", "bundle"], "slc.export.exporter:export_bundle", cfg.ExportConfig,
        {"max_f1_loss": 0.05, "latency_repeats": 7, "window": {"hop_s": 1.0}},
        ["--latency-repeats", "3"],
        {"max_f1_loss": 0.05, "latency_repeats": 3, "window.hop_s": 1.0},
    ),
    "serve": Command(
        ["serve", "bundle"], "slc.apps.serve_launcher:run", cfg.ServeConfig,
        {"port": 9000, "max_batch_size": 4, "max_ongoing_requests": 8},
        ["--port", "9100", "--threads", "2"],
        {"port": 9100, "max_batch_size": 4, "max_ongoing_requests": 8, "threads": 2, "num_cpus": 2.0},
    ),
    "label": Command(
        ["label", "audio", "--bundle", "bundle", "--out", "labels"], "slc.apps.label:label", cfg.LabelConfig,
        {"top_k": 5, "rows_per_file": 10, "allow": ["de", "fr"]},
        ["--top-k", "2", "--segments"],
        {"top_k": 2, "rows_per_file": 10, "allow": ("de", "fr"), "segments": True},
    ),
}  # fmt: skip


@pytest.fixture(autouse=True)
def _logs_of_failed_commands_in_tmp_path(monkeypatch, tmp_path):
    """A command that fails keeps its log in the temporary directory for the
    user to read; every command here ends in an exception, so keep them in
    the test's own directory."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def run(monkeypatch, command: Command, *extra: str) -> Any:
    """The settings `slc COMMAND` hands to its library call."""
    module, name = command.target.split(":")

    def record(*args: Any, **kwargs: Any) -> None:
        settings = [a for a in (*args, *kwargs.values()) if isinstance(a, command.cls)]
        raise Called(settings[0] if settings else None)

    monkeypatch.setattr(f"{module}.{name}", record)
    result = CliRunner().invoke(app, [*command.args, *extra])
    assert isinstance(result.exception, Called), result.output
    return result.exception.settings


def setting(config: Any, name: str) -> Any:
    return functools.reduce(getattr, name.split("."), config)


@pytest.mark.parametrize("name", COMMANDS)
def test_without_config_or_flags_a_command_uses_the_config_class_defaults(monkeypatch, name):
    command = COMMANDS[name]
    assert run(monkeypatch, command) == command.cls()


@pytest.mark.parametrize("name", COMMANDS)
def test_a_config_file_sets_what_it_names_and_leaves_the_rest_at_the_defaults(monkeypatch, tmp_path, name):
    command = COMMANDS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(command.file))
    settings = run(monkeypatch, command, "--config", str(path))
    assert settings == config_io.load(command.cls, path)
    assert settings == config_io.override(command.cls(), config_io.dotted(command.file))


@pytest.mark.parametrize("name", COMMANDS)
def test_a_flag_given_overrides_the_config_file_and_keeps_its_other_settings(monkeypatch, tmp_path, name):
    command = COMMANDS[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(command.file))
    settings = run(monkeypatch, command, "--config", str(path), *command.flags)
    assert {key: setting(settings, key) for key in command.expected} == command.expected
    untouched = {f.name for f in dataclasses.fields(command.cls)} - {k.split(".")[0] for k in command.expected}
    assert {k: getattr(settings, k) for k in untouched} == {k: getattr(command.cls(), k) for k in untouched}


def test_train_config_epochs_are_kept_when_no_epochs_flag_is_given(monkeypatch, tmp_path):
    path = tmp_path / "f.yaml"
    path.write_text("epochs: 10\n")
    assert run(monkeypatch, COMMANDS["train"], "--config", str(path)).epochs == 10


def test_serve_makes_room_in_the_queue_for_a_larger_batch(monkeypatch, tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("max_ongoing_requests: 40\n")
    settings = run(monkeypatch, COMMANDS["serve"], "--config", str(path), "--max-batch-size", "32")
    assert (settings.max_batch_size, settings.max_ongoing_requests) == (32, 64)


@pytest.mark.parametrize(
    "text, message",
    [
        ("epoch: 10\n", "unknown TrainConfig settings: ['epoch']"),
        ("epochs: [10\n", "while parsing a flow sequence"),
        ("- 10\n", "expected a mapping of TrainConfig settings, got list"),
        ("model: 5\n", "model must be a mapping of ModelConfig settings, got 5"),
        ("epochs: ten\n", "epochs: Input should be a valid integer, unable to parse string as an integer (got 'ten')"),
        ("lr: fast\n", "lr: Input should be a valid number, unable to parse string as a number (got 'fast')"),
        ("model:\n  d_model: 1.5\n", "d_model: Input should be a valid integer, got a number with a fractional part (got 1.5)"),
    ],
)
def test_a_bad_config_file_is_one_line_naming_the_file(monkeypatch, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    monkeypatch.setattr("slc.training.loop.train", lambda *a, **k: pytest.fail("trained with a bad config"))
    result = CliRunner().invoke(app, ["train", "shards", "run", "--config", str(path)])
    assert result.exit_code == 2 and result.exception is not None and "Traceback" not in result.output
    assert f"error: {path}: " in result.output and message in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["ingest", "c", "s", "--split", "0.8,0.2"], "--split takes three fractions"),
        (["ingest", "c", "s", "--split", "0.8,0.3,0.1"], "split fractions must be >= 0 and sum to 1"),
        (["train", "s", "r", "--preset", "huge"], "unknown preset 'huge'"),
        (["serve", "b", "--max-batch-size", "0"], "max_batch_size must be >= 1"),
        (["label", "a", "--bundle", "b", "--out", "o", "--format", "xml"], "format must be one of"),
        (["label", "a", "--bundle", "b", "--out", "o", "--open-set", "maybe"], "--open-set takes on or off"),
        (["predict", "a.wav", "--bundle", "b", "--open-set", "maybe"], "--open-set takes on or off"),
        (["predict", "a.wav", "--bundle", "b", "--top-k", "0"], "Invalid value for '--top-k'"),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_status_2(args, message):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.parametrize("shards", ["missing", "empty"])
def test_training_on_a_path_that_holds_no_shards_names_it_and_what_writes_them(tmp_path, shards):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["train", str(tmp_path / shards), str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert f"error: {tmp_path / shards}: no shards here (no labels.json; `slc ingest` writes them)" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "args, missing",
    [
        (["synth", "corpus"], "faker"),
        (["ingest", "corpus", "shards"], "torch"),
        (["train", "shards", "run"], "torch"),
        (["evaluate", "run/best", "shards", "report"], "torch"),
        (["export", "run/best", "bundle"], "torch"),
    ],
)
def test_a_training_command_without_the_training_extra_says_what_to_install(args, missing):
    # As after `pip install slc` without extras: the module cannot be found. (A None
    # in sys.modules would also block it, but libraries such as scipy take an entry
    # there for the loaded module and fail on None.)
    code = (
        "import sys\n"
        "class Missing:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] == {missing!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Missing())\n"
        f"from slc.apps.cli import app; app({args!r})"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip() == (
        f"error: slc {args[0]} needs the training extra: pip install 'slc[train]' (missing module: {missing})"
    )


def test_synth_conditions_makes_the_robustness_set_of_the_langs(monkeypatch, tmp_path):
    from slc.data import conditions

    def record(out, langs, per_lang, seed, progress):
        raise Called({"out": out, "langs": langs, "per_lang": per_lang, "seed": seed})

    monkeypatch.setattr(conditions, "make_conditions_corpus", record)
    args = ["synth", str(tmp_path / "c"), "--conditions", "--langs", "de,it", "--per-lang", "3", "--seed", "5"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, Called), result.output
    assert result.exception.settings == {"out": tmp_path / "c", "langs": ["de", "it"], "per_lang": 3, "seed": 5}
    result = CliRunner().invoke(app, [*args, "--background", "2"])
    assert result.exit_code == 2 and "--conditions makes a test set of the --langs alone" in result.output
