"""slc evaluate: closed-set metrics, the open-set answer fitted on validation
clips, calibration and duration figures, on splits with and without
background clips (speech in languages outside the label set)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import espeak_wav, train_in_process
from typer.testing import CliRunner

from slc import audio
from slc.apps.cli import app
from slc.config import ExportConfig, FeatureConfig
from slc.data.features import Fbank, extract
from slc.data.shards import SHARD_SCHEMA, features_column, read_split
from slc.labels import LabelSet
from slc.training.evaluation import evaluate

# Languages of the background class per split: those of val and test are
# never heard in training, as `slc ingest --background` splits them.
BACKGROUND_LANGUAGES = {"train": ("es", "nl", "pl"), "val": ("sv",), "test": ("ca", "ru")}
CLIPS_PER_LANGUAGE = {"train": 6, "val": 6, "test": 5}
REPORT_FILES = ("report.md", "metrics.json", "confusion.png", "reliability.png")


def _background_rows(split: str, fbank: Fbank) -> pa.Table:
    """espeak-ng numbers read in the split's background languages, as shard
    rows labelled `other` with their `source_lang`."""
    records, features = [], []
    for language in BACKGROUND_LANGUAGES[split]:
        for n in range(CLIPS_PER_LANGUAGE[split]):
            text = f"{n * 7919 + 13}, {n * 104729 % 9973}, {n + 2} {n * 37 + 5}"
            clip = audio.load(espeak_wav(text, language, rate=140 + 10 * n))
            features.append(extract(clip, fbank))
            records.append({
                "id": f"{language}-{split}-{n}", "path": f"{language}/{n}.wav", "lang": "other",
                "source_lang": language, "split": split, "group": f"{language}-voice",
                "duration_s": len(clip) / 16000, "n_frames": len(features[-1]), "augment": None,
            })  # fmt: skip
    table = pa.Table.from_pylist(records).append_column("features", features_column(features))
    return table.select(SHARD_SCHEMA.names).cast(SHARD_SCHEMA)


@pytest.fixture(scope="module")
def background_shards(small_shards, tmp_path_factory):
    """`small_shards` (de, en) plus background clips of other languages."""
    root = tmp_path_factory.mktemp("background") / "shards"
    fbank = Fbank(FeatureConfig()).eval()
    for split in ("train", "val", "test"):
        speech = read_split(str(small_shards), split).cast(SHARD_SCHEMA)
        background = _background_rows(split, fbank)
        (root / split).mkdir(parents=True)
        pq.write_table(pa.concat_tables([speech, background]), root / split / "part-0.parquet")
    return root


@pytest.fixture(scope="module")
def background_checkpoint(background_shards, tmp_path_factory):
    """A 2-layer tiny classifier of de, en and `other`, trained in-process
    for a few seconds on `background_shards`."""
    directory = tmp_path_factory.mktemp("background_checkpoint") / "best"
    return train_in_process(background_shards, LabelSet(("de", "en", "other")), epochs=6, directory=directory, shuffle=True)


def _assert_report_files(out):
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    text = (out / "report.md").read_text()
    saved = json.loads((out / "metrics.json").read_text())
    return text, saved


def test_a_split_with_background_clips_gets_open_set_figures(background_checkpoint, background_shards, tmp_path):
    metrics = evaluate(background_checkpoint, str(background_shards), tmp_path / "report")
    text, saved = _assert_report_files(tmp_path / "report")
    assert saved["open_set"] == metrics["open_set"]
    test = read_split(str(background_shards), "test", columns=["lang", "source_lang", "duration_s"])
    n_background = test.column("lang").to_pylist().count("other")
    # Closed-set metrics cover every clip, the background class included.
    assert metrics["labels"] == ["de", "en", "other"] and metrics["n"] == test.num_rows
    assert metrics["per_class"]["other"]["support"] == n_background == 10

    open_set = metrics["open_set"]
    assert open_set["background_class"] == "other" and open_set["target_miss"] == ExportConfig().target_miss
    assert open_set["temperature"] > 0 and 0 <= open_set["threshold"] <= 1
    assert open_set["disjoint_checked"] and open_set["excluded"] == {}
    background = open_set["background"]
    assert background["clips"] == n_background
    assert [row["language"] for row in background["by_language"]] == ["ca", "ru"]
    assert [row["clips"] for row in background["by_language"]] == [5, 5]
    accepted = sum(row["accepted"] for row in background["by_language"])
    assert background["false_accept"] == pytest.approx(accepted / n_background)
    at_miss = background["at_miss"]
    # The threshold keeps misses within 5% unless the background class alone takes more.
    assert 0 <= at_miss["false_accept"] <= 1 and (at_miss["miss"] <= 0.05 or at_miss["threshold"] == 0.0)
    assert 0 <= background["eer"]["eer"] <= 1
    # The answers' confusion: rows true (with `other`), columns answers (with `unknown`).
    confusion = open_set["confusion"]
    assert confusion["rows"] == ["de", "en", "other"] and confusion["columns"] == ["de", "en", "unknown"]
    assert sum(map(sum, confusion["counts"])) == test.num_rows
    assert sum(confusion["counts"][2][:2]) == accepted
    right = sum(confusion["counts"][i][i] for i in range(2)) + confusion["counts"][2][2]
    assert open_set["answers"]["accuracy"] == pytest.approx(right / test.num_rows)

    assert [row["range"] for row in metrics["by_duration"]] == ["< 2 s", "2-5 s", ">= 5 s"]
    assert sum(row["clips"] for row in metrics["by_duration"]) == test.num_rows
    calibration = metrics["calibration"]
    assert calibration["temperature"] == open_set["temperature"]
    assert sum(row["count"] for row in calibration["reliability"]) == test.num_rows
    assert 0 <= calibration["ece_after"] <= 1 and 0 <= calibration["ece_before"] <= 1

    assert "## Open set" in text and "### Background clips" in text
    assert f"| {n_background} | {at_miss['false_accept']:.4f} |" in text
    assert "| ca | 5 |" in text and "| ru | 5 |" in text
    assert "| true \\ answer | de | en | unknown |" in text
    assert "None of these languages was used to train the background class." in text
    assert f"{calibration['ece_before']:.4f} before and {calibration['ece_after']:.4f} after" in text
    assert "![reliability](reliability.png)" in text and "## By clip duration" in text


def test_background_languages_heard_in_training_are_left_out(background_checkpoint, background_shards, tmp_path):
    metrics = evaluate(background_checkpoint, str(background_shards), tmp_path / "report", split="train")
    open_set = metrics["open_set"]
    assert open_set["excluded"] == {"es": 6, "nl": 6, "pl": 6} and open_set["background"] is None
    assert open_set["confusion"]["rows"] == ["de", "en"]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "Every background clip is of a language the background class was trained on (es (6), nl (6), pl (6))" in text


def test_a_model_without_a_background_class_on_background_clips(small_checkpoint, background_shards, tmp_path):
    metrics = evaluate(small_checkpoint, str(background_shards), tmp_path / "report", target_miss=0.1)
    text, _ = _assert_report_files(tmp_path / "report")
    assert "(10 background clips: no class of the model, scored by the open set only)" in text
    test = read_split(str(background_shards), "test", columns=["lang"])
    # Closed-set metrics need a class: they cover the in-set clips only.
    assert metrics["labels"] == ["de", "en"] and metrics["n"] == test.num_rows - 10
    open_set = metrics["open_set"]
    assert open_set["background_class"] is None and open_set["target_miss"] == 0.1
    assert open_set["background"]["clips"] == 10
    # Without a background class only the threshold rejects: a background clip
    # below it is `unknown`, the others are accepted.
    accepted = sum(row["accepted"] for row in open_set["background"]["by_language"])
    assert open_set["confusion"]["rows"] == ["de", "en", "other"]
    assert open_set["confusion"]["counts"][2] == [*open_set["confusion"]["counts"][2][:2], 10 - accepted]


def test_a_split_without_background_clips_says_so(small_checkpoint, small_shards, tmp_path):
    metrics = evaluate(small_checkpoint, str(small_shards), tmp_path / "report")
    text, saved = _assert_report_files(tmp_path / "report")
    assert metrics["open_set"]["background"] is None and metrics["open_set"]["excluded"] == {}
    assert "The split has no background clips" in text
    assert saved["calibration"] == metrics["calibration"] and saved["by_duration"] == metrics["by_duration"]
    # Every `unknown` is an in-set clip the threshold rejected.
    confusion = metrics["open_set"]["confusion"]
    assert confusion["rows"] == ["de", "en"] and confusion["columns"] == ["de", "en", "unknown"]
    unknown = sum(row[2] for row in confusion["counts"])
    assert metrics["open_set"]["in_set_rejected"] == pytest.approx(unknown / metrics["n"])


def test_the_command_prints_the_open_set_figures(background_checkpoint, background_shards, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["evaluate", str(background_checkpoint), str(background_shards), str(out),
                                      "--target-miss", "0.1"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["open_set"]["target_miss"] == 0.1
    background, answers = saved["open_set"]["background"], saved["open_set"]["answers"]
    assert (f"open set: in-set macro F1 {answers['macro_f1']:.4f} with 'unknown' answers; false accepts "
            f"{background['at_miss']['false_accept']:.1%} at 5% miss, EER {background['eer']['eer']:.1%}") in result.output
    assert f"calibration error {saved['calibration']['ece_before']:.4f} -> " in result.output


def test_a_target_miss_outside_zero_to_one_is_refused(small_checkpoint, small_shards, tmp_path):
    result = CliRunner().invoke(app, ["evaluate", str(small_checkpoint), str(small_shards), str(tmp_path / "r"),
                                      "--target-miss", "1.5"])
    assert result.exit_code == 2 and "target_miss must be within [0, 1), got 1.5" in result.output
    assert not (tmp_path / "r").exists()
