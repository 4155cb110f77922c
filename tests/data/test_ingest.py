import dataclasses
import json
import re
import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from typer.testing import CliRunner

from conftest import object_references
from slc import config_io
from slc.audio import load
from slc.data.augment import Recipe
from slc.apps.cli import app
from slc.config import IngestConfig
from slc.data.features import Fbank, extract
from slc.data.ingest import ingest
from slc.data.shards import SCHEMA_VERSION, ShardError, read_rejects, read_split, unflatten
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


def test_an_ingest_leaves_no_objects_of_its_own_in_the_object_store(corpus, tmp_path, ray_session):
    held = object_references()
    ingest(corpus, str(tmp_path / "s"), IngestConfig())
    assert object_references() <= held


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


@pytest.fixture(scope="module")
def augmented(corpus, tmp_path_factory, ray_session):
    """Shards with two augmented copies of every training clip, in parts of
    at most four rows: a clip's rows can span two parts."""
    out = tmp_path_factory.mktemp("augmented") / "s"
    config = IngestConfig(augment=dataclasses.replace(IngestConfig().augment, copies=2), rows_per_file=4)
    return out, config, ingest(corpus, str(out), config)


def test_augmented_copies_only_for_training_clips(augmented):
    out, _, summary = augmented
    train = read_split(str(out), "train", columns=["id", "group", "augment", "n_frames"]).to_pylist()
    originals = [r for r in train if r["augment"] is None]
    copies = [r for r in train if r["augment"] is not None]
    assert len(originals) == summary["splits"]["train"]["clips"]
    assert len(copies) == 2 * len(originals) == summary["augmented"]["clips"]
    assert {r["id"].split("#")[0] for r in copies} == {r["id"] for r in originals}
    assert all(Recipe.from_json(r["augment"]) for r in copies)
    for split in ("val", "test"):
        assert read_split(str(out), split, columns=["augment"]).column("augment").null_count == summary["splits"][split]["clips"]
    assert summary["accepted"] + summary["rejected"] == summary["discovered"]


def _rows(out):
    """Every shard row, by id: what training reads."""
    return {r["id"]: r for split in ("train", "val", "test") for r in read_split(str(out), split).to_pylist()}


def _interrupted_copy(out, tmp_path):
    """A copy of the output `out` as a run cut short leaves it: one part of
    `train` lost, one augmented copy of a clip missing from another part, a
    part half-written, no summary or rejects yet. Returns the copy and the
    clips it still holds whole."""
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    for name in ("summary.json", "rejects.parquet", "labels.json"):
        (cut / name).unlink()
    parts = sorted((cut / "train").glob("part-*.parquet"))
    lost = pq.read_table(parts[0], columns=["id"])["id"].to_pylist()
    parts[0].unlink()
    table = pq.read_table(parts[1])
    copy = next(i for i, recipe in zip(table["id"].to_pylist(), table["augment"].to_pylist()) if recipe)
    pq.write_table(table.filter(pc.not_equal(table["id"], copy)), parts[1])
    (cut / "train" / ".part-0123456789abcdef.parquet.tmp").write_bytes(b"PAR1")
    gone = {i.split("#")[0] for i in lost} | {copy.split("#")[0]}
    whole = {i for i, r in _rows(out).items() if r["augment"] is None and i not in gone}
    return cut, whole


def test_a_resumed_ingest_keeps_whole_clips_and_ends_as_an_uninterrupted_run(augmented, corpus, tmp_path):
    out, config, summary = augmented
    cut, whole = _interrupted_copy(out, tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(config_io.dumps(dataclasses.replace(config, rows_per_file=16)))  # a speed setting
    result = CliRunner().invoke(app, ["ingest", str(corpus), str(cut), "--config", str(config_file), "--resume"])
    assert result.exit_code == 0, result.output
    discovered = summary["discovered"]
    assert f"resumed: {len(whole)} clips kept as an earlier run featurized them; the other {discovered - len(whole)} took" in result.output

    expected, resumed = _rows(out), _rows(cut)
    assert resumed.keys() == expected.keys()
    for row_id, row in expected.items():
        assert resumed[row_id]["features"] == row["features"], row_id
    assert not list(cut.rglob(".part-*"))
    again = json.loads((cut / "summary.json").read_text())
    assert again["kept_from_earlier_run"] == len(whole)
    different = {"wall_s", "kept_from_earlier_run", "out"}
    assert {k: v for k, v in again.items() if k not in different} == {k: v for k, v in summary.items() if k not in different}
    assert read_rejects(str(cut)).sort_by("id").to_pylist() == read_rejects(str(out)).sort_by("id").to_pylist()


def test_resuming_a_finished_ingest_featurizes_only_its_rejects(shards, corpus, tmp_path):
    out, summary = shards
    shutil.copytree(out, tmp_path / "s")
    again = ingest(corpus, str(tmp_path / "s"), IngestConfig(), resume=True)
    assert again["kept_from_earlier_run"] == summary["accepted"]
    assert again["rejected_by_reason"] == summary["rejected_by_reason"]
    assert _rows(tmp_path / "s").keys() == _rows(out).keys()


def test_resuming_with_other_settings_or_another_corpus_is_refused(shards, corpus, tmp_path):
    out, _ = shards
    shutil.copytree(out, tmp_path / "s")
    other = IngestConfig(split=dataclasses.replace(IngestConfig().split, seed=7))
    with pytest.raises(ShardError, match=r"other settings \(split.seed\)"):
        ingest(corpus, str(tmp_path / "s"), other, resume=True)

    smaller = tmp_path / "corpus"
    shutil.copytree(corpus, smaller)
    kept = next(r for r in read_split(str(out), "train", columns=["id"]).to_pylist())["id"]
    (smaller / kept).unlink()
    manifest = (smaller / "manifest.csv").read_text().splitlines(keepends=True)
    (smaller / "manifest.csv").write_text("".join(line for line in manifest if not line.startswith(f"{kept},")))
    with pytest.raises(ShardError, match=re.escape(f"not in the corpus (e.g. {kept})")):
        ingest(smaller, str(tmp_path / "s"), IngestConfig(), resume=True)

    (tmp_path / "s" / "config.json").unlink()
    with pytest.raises(ShardError, match="no config.json; not an ingest output to resume"):
        ingest(corpus, str(tmp_path / "s"), IngestConfig(), resume=True)