"""Output directories: a new run's is empty, a resumed run's is kept."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from slc import storage
from slc.apps.cli import app


def test_a_new_run_refuses_an_output_with_contents_and_a_resumed_one_keeps_it(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("x")
    with pytest.raises(storage.StorageError, match="output is not empty; pass --overwrite"):
        storage.open_output(tmp_path / "out", resume=False, overwrite=False)
    storage.open_output(tmp_path / "out", resume=True, overwrite=False)
    assert (tmp_path / "out" / "kept.txt").read_text() == "x"
    storage.open_output(tmp_path / "out", resume=False, overwrite=True)
    assert not list((tmp_path / "out").iterdir())


def test_resume_with_overwrite_is_refused_by_every_command_and_the_output_kept(tmp_path, small_shards, small_bundle):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("x")
    commands = {
        "ingest": ["ingest", str(tmp_path), str(out)],
        "train": ["train", str(small_shards), str(out)],
        "label": ["label", str(tmp_path), "--bundle", str(small_bundle), "--out", str(out)],
    }
    for name, args in commands.items():
        result = CliRunner().invoke(app, [*args, "--resume", "--overwrite"])
        assert result.exit_code == 2, (name, result.output)
        assert "--resume keeps what the output holds and --overwrite deletes it; pass one of them" in result.output, name
        assert (out / "kept.txt").read_text() == "x", name


def test_resuming_a_training_run_that_never_started_starts_it(tmp_path):
    from slc.config import TrainConfig
    from slc.labels import LabelSet
    from slc.training import run_dir

    run_dir.prepare(str(tmp_path / "new"), TrainConfig(), LabelSet(("de", "en")), overwrite=False, resume=True)
    settings = json.loads((tmp_path / "new" / "settings.json").read_text())
    assert settings["labels"] == ["de", "en"] and settings["train"]["epochs"] == TrainConfig().epochs
