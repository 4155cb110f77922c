import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from typer.testing import CliRunner

from slc import config_io
from slc.audio import load
from slc.data.augment import Recipe
from slc.apps.cli import app
from slc.config import IngestConfig
from slc.data.features import Fbank, extract
from slc.data.ingest import ingest
from slc.data.shards import SCHEMA_VERSION, read_rejects, read_split, unflatten
from slc.storage import StorageError
from slc.data.synth import make_corpus

BAD_FILES = {
    "de/zero.wav": "empty",
    "de/corrupt.wav": "undecodable",
    "en/nan.wav": "non_finite",
    "en/silence.wav": "too_short",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "c"
    make_corpus(root, ("de", "en"), per_lang=12, seed=1)
    (root / "de" / "zero.wav").write_bytes(b"")
    (root / "de" / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(4000))
    samples = np.full(16000, 0.1, np.float32)
    samples[5] = np.nan
    sf.write(root / "en" / "nan.wav", samples, 16000, subtype="FLOAT")
    sf.write(root / "en" / "silence.wav", np.zeros(32000, np.float32), 16000)
    t = np.arange(44100 * 2) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], axis=1) * 0.3
    sf.write(root / "en" / "stereo44k.flac", stereo, 44100)
    return root


@pytest.fixture(scope="module")
def shards(corpus, tmp_path_factory, ray_session):
    out = tmp_path_factory.mktemp("shards") / "s"
    summary = ingest(corpus, str(out), IngestConfig())
    return out, summary


def test_counts_reconcile(shards, corpus):
    out, summary = shards
    audio_files = [p for p in corpus.rglob("*") if p.suffix in (".wav", ".flac")]
    assert summary["discovered"] == len(audio_files) == 12 * 2 + len(BAD_FILES) + 1
    assert summary["accepted"] + summary["rejected"] == summary["discovered"]
    assert summary["rejected"] == len(BAD_FILES)
    rows = sum(read_split(str(out), s).num_rows for s in ("train", "val", "test"))
    assert rows == summary["accepted"] == sum(summary["splits"][s]["clips"] for s in ("train", "val", "test"))
    assert json.loads((out / "summary.json").read_text()) == summary


def test_rejects_name_file_and_reason(shards, corpus):
    out, summary = shards
    rejects = read_rejects(str(out)).to_pylist()
    assert {r["id"]: r["reason"] for r in rejects} == BAD_FILES
    assert all(r["path"] in r["detail"] for r in rejects)
    assert summary["rejected_by_reason"] == {"empty": 1, "non_finite": 1, "too_short": 1, "undecodable": 1}


def test_shards_follow_the_schema_and_hold_the_features(shards, corpus):
    out, _ = shards
    table = read_split(str(out), "train")
    assert table.schema.metadata[b"slc.schema_version"] == str(SCHEMA_VERSION).encode()
    assert set(table.column("split").to_pylist()) == {"train"}
    row = table.slice(0, 1).to_pylist()[0]
    features = unflatten(row["features"], row["n_frames"])
    expected = extract(load(row["path"]), Fbank())
    assert features.shape == expected.shape
    np.testing.assert_allclose(features, expected, atol=2e-2)  # float16 storage
    assert row["duration_s"] == pytest.approx(len(load(row["path"])) / 16000, abs=1e-4)


def test_manifest_splits_are_kept_and_groups_stay_in_one_split(shards, corpus):
    out, _ = shards
    manifest = {r["path"]: r["split"] for r in __import__("csv").DictReader(open(corpus / "manifest.csv"))}
    groups = {}
    for split in ("train", "val", "test"):
        for row in read_split(str(out), split, columns=["id", "group"]).to_pylist():
            if row["id"] in manifest:
                assert manifest[row["id"]] == split
            assert groups.setdefault(row["group"], split) == split


def test_artifacts_written_next_to_shards(shards):
    out, _ = shards
    assert json.loads((out / "labels.json").read_text()) == {"labels": ["de", "en"]}
    assert config_io.load(IngestConfig, out / "config.json") == IngestConfig()
    assert pq.read_schema(out / "rejects.parquet").names[:2] == ["id", "path"]


def test_non_empty_output_is_refused_unless_overwrite(shards, corpus):
    out, _ = shards
    with pytest.raises(StorageError, match="not empty"):
        ingest(corpus, str(out))


def test_cli_reports_errors_without_traceback(tmp_path, corpus, ray_session):
    out = tmp_path / "s"
    (out / "x").mkdir(parents=True)
    result = CliRunner().invoke(app, ["ingest", str(corpus), str(out)])
    assert result.exit_code == 2
    assert "not empty" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "missing"), str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such file" in result.output


def test_cli_labels_restrict_and_summary_prints(tmp_path, corpus, ray_session):
    result = CliRunner().invoke(app, ["ingest", str(corpus), str(tmp_path / "s"), "--labels", "en"])
    assert result.exit_code == 0, result.output
    assert "outside the label set" in result.output and '"de": 14' in result.output
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["labels"] == ["en"] and summary["discovered"] == 12 + 3


def test_augmented_copies_only_for_training_clips(corpus, tmp_path, ray_session):
    config = IngestConfig(augment=dataclasses.replace(IngestConfig().augment, copies=2))
    summary = ingest(corpus, str(tmp_path / "s"), config)
    train = read_split(str(tmp_path / "s"), "train", columns=["id", "group", "augment", "n_frames"]).to_pylist()
    originals = [r for r in train if r["augment"] is None]
    copies = [r for r in train if r["augment"] is not None]
    assert len(originals) == summary["splits"]["train"]["clips"]
    assert len(copies) == 2 * len(originals) == summary["augmented"]["clips"]
    assert {r["id"].split("#")[0] for r in copies} == {r["id"] for r in originals}
    assert all(Recipe.from_json(r["augment"]) for r in copies)
    for split in ("val", "test"):
        assert read_split(str(tmp_path / "s"), split, columns=["augment"]).column("augment").null_count == summary["splits"][split]["clips"]
    assert summary["accepted"] + summary["rejected"] == summary["discovered"]
