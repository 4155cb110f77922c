"""Corpus formats as batch inputs: a Hugging Face dataset lists one item per
row and reads each row's bytes; `slc label --truth-column` checks the labels
against the dataset's own language column."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from conftest import espeak_wav
from slc.apps.cli import app
from slc.apps.label import read_labels
from slc.batch.inputs import InputError, list_inputs, read_bytes

SAYINGS = {
    "de": ["Guten Morgen, der Zug nach Bern fährt um acht Uhr.", "Wir essen heute Abend bei meiner Schwester."],
    "en": ["Good morning, the train to London leaves at eight.", "We are having dinner at my sister's tonight."],
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Parquet files as the Hub lays them out: 4 clips and a row without
    audio bytes, `language` spelt as people do, 2 rows per row group."""
    from datasets import Audio, Dataset

    clips = [(espeak_wav(text, lang), spelt) for lang, spelt in (("de", "de-DE"), ("en", "English")) for text in SAYINGS[lang]]
    rows = {"audio": [{"bytes": b, "path": f"{i}.wav"} for i, (b, _) in enumerate(clips)], "language": [s for _, s in clips]}
    rows["audio"].append({"bytes": None, "path": "missing.wav"})
    rows["language"].append("de")
    root = tmp_path_factory.mktemp("hub") / "fleurs-like"
    (root / "data").mkdir(parents=True)
    Dataset.from_dict(rows).cast_column("audio", Audio()).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"), batch_size=2)
    return root, [b for b, _ in clips]


def test_a_parquet_dataset_lists_a_row_per_clip_and_reads_each_rows_bytes(dataset):
    root, clips = dataset
    listing = list_inputs([root], lang_column="language")
    table = f"{root}/data/test-00000-of-00001.parquet"
    assert [i["path"] for i in listing.items] == [f"{table}::{n}" for n in range(5)]
    assert listing.languages == {f"{table}::{n}": lang for n, lang in enumerate(["de-DE", "de-DE", "English", "English", "de"])}
    read = read_bytes(listing.items[::-1], listing.filesystems)  # rows of three row groups, out of order
    assert read[1:] == clips[::-1]
    assert str(read[0]) == f"{table}::4: empty: the row holds no audio bytes"
    with pytest.raises(InputError, match=r"test-00000-of-00001.parquet: no column 'lingo'; found \['audio', 'language'\]"):
        list_inputs([root], lang_column="lingo")


def test_label_reports_agreement_with_the_datasets_language_column(dataset, small_bundle, tmp_path, ray_session):
    root, _ = dataset
    out = tmp_path / "labels"
    args = ["label", str(root), "--bundle", str(small_bundle), "--out", str(out), "--truth-column", "language"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    truth = summary["truth"]
    assert summary["listed"] == 5 and summary["labelled"] == 4 and summary["errors_by_reason"] == {"empty": 1}
    assert truth["column"] == "language" and truth["compared"] == 4
    assert {code: c["files"] for code, c in truth["languages"].items()} == {"de": 2, "en": 2}
    answers = {r["path"]: r["language"] for r in read_labels(str(out)).to_pylist()}
    table = f"{root}/data/test-00000-of-00001.parquet"
    assert truth["agreed"] == sum(answers[f"{table}::{n}"] == lang for n, lang in enumerate(["de", "de", "en", "en"]))
    assert truth["agreed"] == sum(c["agreed"] for c in truth["languages"].values())
    assert truth["rate"] == truth["agreed"] / 4
    assert f"agreement with language: {truth['agreed']} of 4" in result.output
