"""Batch labelling: every input accounted for, from directories, archives,
manifests and S3; resumable after the driver dies; long recordings by windows."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import soxr
from typer.testing import CliRunner

from conftest import S3_ACCESS_KEY, S3_BUCKET, S3_SECRET_KEY, espeak_wav, object_references
from slc.apps.cli import app
from slc.config import LabelConfig
from slc.apps import label_pipeline, label_run
from slc.apps.label import LabelError, Labeller, format_summary, label, label_batch, read_batch, read_labels, summarize
from slc.apps.label_run import task_blocks
from slc.batch.inputs import InputError, list_inputs
from slc.runtime.classifier import Classifier
from slc.storage import StorageError

REPO = Path(__file__).resolve().parents[2]
SAYINGS = {
    "de": ["Guten Morgen, der Zug nach Bern fährt um acht Uhr.", "Wir essen heute Abend bei meiner Schwester."],
    "en": ["Good morning, the train to London leaves at eight.", "We are having dinner at my sister's tonight."],
}
CORRUPT = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 64


@pytest.fixture(scope="module")
def speech() -> dict[str, list[bytes]]:
    return {lang: [espeak_wav(text, lang) for text in texts] for lang, texts in SAYINGS.items()}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, speech) -> tuple[Path, dict[str, str | None]]:
    """A folder of good clips, corrupt, empty and non-audio files, tar and zip
    archives holding both kinds and one that is no archive; with what each
    path's `error` must be."""
    root = tmp_path_factory.mktemp("mixed") / "in"
    (root / "de").mkdir(parents=True)
    (root / "en" / "deeper").mkdir(parents=True)
    (root / "de" / "a.wav").write_bytes(speech["de"][0])
    (root / "de" / "b.wav").write_bytes(speech["de"][1])
    (root / "en" / "deeper" / "c.wav").write_bytes(speech["en"][0])
    (root / "corrupt.wav").write_bytes(CORRUPT)
    (root / "zero.wav").write_bytes(b"")
    (root / "notes.txt").write_text("not audio at all\n")
    (root / ".DS_Store").write_bytes(b"\0" * 64)  # hidden: not an input
    with tarfile.open(root / "pack.tar", "w") as tar:
        for name, data in (("good/en.wav", speech["en"][1]), ("bad/corrupt.wav", CORRUPT)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with zipfile.ZipFile(root / "pack.zip", "w") as archive:
        archive.writestr("de.wav", speech["de"][1])
        archive.writestr("corrupt.wav", CORRUPT)
    (root / "broken.tar").write_bytes(CORRUPT * 8)
    expected = {
        "de/a.wav": None,
        "de/b.wav": None,
        "en/deeper/c.wav": None,
        "corrupt.wav": "undecodable",
        "zero.wav": "empty",
        "notes.txt": "undecodable",
        "pack.tar::good/en.wav": None,
        "pack.tar::bad/corrupt.wav": "undecodable",
        "pack.zip::de.wav": None,
        "pack.zip::corrupt.wav": "undecodable",
        "broken.tar": "undecodable",
    }
    return root, {f"{root}/{name}": error for name, error in expected.items()}


@pytest.fixture(scope="module")
def labelled(mixed, small_bundle, tmp_path_factory, ray_session):
    root, _ = mixed
    out = tmp_path_factory.mktemp("labels") / "out"
    summary = label([str(root)], small_bundle, str(out), LabelConfig(top_k=2, rows_per_file=3))
    return out, summary


def test_every_input_is_in_the_output_once_labelled_or_with_its_error(mixed, labelled):
    _, expected = mixed
    out, summary = labelled
    rows = read_labels(out).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(expected)
    for row in rows:
        assert row["error"] == expected[row["path"]], row
        if row["error"] is None:
            assert row["language"] in {"de", "en"} and 0.5 <= row["confidence"] <= 1.0
            assert row["duration_s"] > 1.0 and row["detail"] is None
        else:
            assert row["language"] is None and row["detail"].startswith(row["path"])
    assert summary["listed"] == summary["labelled"] + summary["failed"] == len(expected)
    assert summary["labelled"] == 5 and sum(summary["languages"].values()) == 5
    assert summary["errors_by_reason"] == {"empty": 1, "undecodable": 5}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert len(list(out.glob("part-*.parquet"))) >= 2  # written in pieces


def test_parquet_rows_carry_top_k_probabilities(labelled):
    out, _ = labelled
    table = pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))
    for row in table.to_pylist():
        if row["error"] is None:
            probabilities = dict(row["probabilities"])
            assert list(probabilities) == sorted(probabilities, key=lambda c: -probabilities[c])
            assert next(iter(probabilities)) == row["language"]
            assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        else:
            assert row["probabilities"] is None


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_csv_and_jsonl_hold_the_same_labels(fmt, mixed, labelled, small_bundle, tmp_path):
    root, _ = mixed
    parquet_out, _ = labelled
    out = tmp_path / fmt
    label([str(root)], small_bundle, str(out), LabelConfig(top_k=2, format=fmt))
    _assert_same_rows(read_labels(out), read_labels(parquet_out))
    if fmt == "jsonl":
        row = json.loads(next(out.glob("part-*.jsonl")).read_text().splitlines()[0])
        assert set(row) == {"path", "language", "confidence", "probabilities", "duration_s", "error", "detail"}


def test_inputs_are_listed_from_globs_manifests_and_archives_each_once(mixed, tmp_path):
    root, expected = mixed
    (tmp_path / "list.txt").write_text(f"# clips\n{root}/de/a.wav\n\n{root}/pack.tar\n")
    (tmp_path / "manifest.csv").write_text(f"path,lang\n{os.path.relpath(root, tmp_path)}/en/deeper/c.wav,en\n")
    inputs = [f"{root}/de/*.wav", str(tmp_path / "list.txt"), str(tmp_path / "manifest.csv"), str(root / "de")]
    assert [i["path"] for i in list_inputs(inputs).items] == sorted(
        [f"{root}/de/a.wav", f"{root}/de/b.wav", f"{root}/en/deeper/c.wav", f"{root}/pack.tar::bad/corrupt.wav",
         f"{root}/pack.tar::good/en.wav"]
    )  # fmt: skip
    with pytest.raises(InputError, match="no such file"):
        list_inputs([str(root / "missing.wav")])


def test_labels_read_from_and_written_to_s3(s3, speech, small_bundle, ray_session):
    client, endpoint = s3
    client.put_object(Bucket=S3_BUCKET, Key="in/de.wav", Body=speech["de"][0])
    client.put_object(Bucket=S3_BUCKET, Key="in/sub/broken.wav", Body=CORRUPT)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        info = tarfile.TarInfo("en.wav")
        info.size = len(speech["en"][0])
        tar.addfile(info, io.BytesIO(speech["en"][0]))
    client.put_object(Bucket=S3_BUCKET, Key="in/pack.tar.gz", Body=archive.getvalue())
    options = f"endpoint_override={endpoint}&scheme=http"
    uri = f"s3://{S3_ACCESS_KEY}:{S3_SECRET_KEY}@{S3_BUCKET}"
    summary = label([f"{uri}/in?{options}"], small_bundle, f"{uri}/labels?{options}")

    rows = {r["path"]: r["error"] for r in read_labels(f"{uri}/labels?{options}").to_pylist()}
    assert rows == {
        f"s3://{S3_BUCKET}/in/de.wav": None,
        f"s3://{S3_BUCKET}/in/pack.tar.gz::en.wav": None,
        f"s3://{S3_BUCKET}/in/sub/broken.wav": "undecodable",
    }
    stored = client.get_object(Bucket=S3_BUCKET, Key="labels/summary.json")["Body"].read().decode()
    assert json.loads(stored) == summary and S3_SECRET_KEY not in stored


def test_a_failure_while_classifying_becomes_the_error_of_its_rows(mixed, small_bundle, monkeypatch):
    root, _ = mixed
    listing = list_inputs([str(root / "de")])
    decoded = read_batch(pa.Table.from_pylist(listing.items), listing.filesystems, str(small_bundle), LabelConfig())
    labeller = Labeller(str(small_bundle), LabelConfig())

    def exhausted(*args, **kwargs):
        raise MemoryError("no room for the batch")

    monkeypatch.setattr(labeller.classifier, "classify_features", exhausted)
    rows = labeller(decoded).to_pylist()
    assert [r["path"] for r in rows] == [f"{root}/de/a.wav", f"{root}/de/b.wav"]
    assert all(r["error"] == "failed" and r["detail"] == f"{r['path']}: MemoryError: no room for the batch" for r in rows)


def test_a_clip_that_makes_the_model_raise_fails_alone(mixed, small_bundle, monkeypatch, caplog):
    root, _ = mixed
    listing = list_inputs([str(root / "de"), str(root / "en")])
    decoded = read_batch(pa.Table.from_pylist(listing.items), listing.filesystems, str(small_bundle), LabelConfig())
    labeller = Labeller(str(small_bundle), LabelConfig())
    classify_features = labeller.classifier.classify_features
    culprit = decoded["duration_s"][1].as_py()

    def breaks_on_the_culprit(features, durations, *args):
        if culprit in durations:
            raise RuntimeError("kernel fault")
        return classify_features(features, durations, *args)

    monkeypatch.setattr(labeller.classifier, "classify_features", breaks_on_the_culprit)
    with caplog.at_level(logging.ERROR, logger="slc.apps.label"):
        rows = labeller(decoded).to_pylist()
    bad = f"{root}/de/b.wav"
    assert [r["path"] for r in rows] == [f"{root}/de/a.wav", bad, f"{root}/en/deeper/c.wav"]
    assert (rows[1]["error"], rows[1]["detail"]) == ("failed", f"{bad}: RuntimeError: kernel fault")
    assert [r["language"] for r in rows] == ["de", None, "en"] and rows[0]["error"] is rows[2]["error"] is None
    assert f"classifying {bad} failed" in caplog.text and "Traceback" in caplog.text


def test_archives_made_of_a_folder_are_labelled_and_one_without_files_is_a_row(speech, small_bundle, tmp_path, ray_session):
    folder, hidden_only = tmp_path / "folder", tmp_path / "hidden_only"
    (folder / "sub").mkdir(parents=True)
    hidden_only.mkdir()
    (folder / "sub" / "de.wav").write_bytes(speech["de"][0])
    (folder / ".DS_Store").write_bytes(b"\0" * 64)
    (hidden_only / "._de.wav").write_bytes(b"\0" * 64)
    for source, archive in ((folder, "pack.tar.gz"), (hidden_only, "hidden.tgz")):
        subprocess.run(["tar", "czf", str(tmp_path / archive), "-C", str(source), "."], check=True)
    out = tmp_path / "out"
    archives = [str(tmp_path / "pack.tar.gz"), str(tmp_path / "hidden.tgz")]
    result = CliRunner().invoke(app, ["label", *archives, "--bundle", str(small_bundle), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["path"]: (r["language"], r["error"]) for r in read_labels(out).to_pylist()}
    assert rows == {f"{tmp_path}/pack.tar.gz::sub/de.wav": ("de", None), f"{tmp_path}/hidden.tgz": (None, "no_audio")}
    assert "listed 2 = labelled 1 + failed 1" in result.output and "skipped 2 hidden files" in result.output


@pytest.mark.parametrize("fmt", LabelConfig.FORMATS)
def test_resume_retries_transient_failures_and_keeps_permanent_ones(fmt, speech, small_bundle, tmp_path, ray_session):
    folder = tmp_path / "audio"
    folder.mkdir()
    (folder / "a.wav").write_bytes(speech["de"][0])
    (folder / "b.wav").write_bytes(speech["en"][0])
    (folder / "corrupt.wav").write_bytes(CORRUPT)
    (folder / "list.txt").write_text("a.wav\nb.wav\ncorrupt.wav\nlate.wav\n")  # late.wav: not there yet
    config, out = LabelConfig(format=fmt, rows_per_file=2), tmp_path / "out"
    first = label([str(folder / "list.txt")], small_bundle, str(out), config)
    assert (first["failed_transient"], first["failed_permanent"]) == (1, 1)
    assert first["errors_by_reason"] == {"undecodable": 1, "unreadable": 1}

    (folder / "late.wav").write_bytes(speech["en"][1])
    resumed = label([str(folder / "list.txt")], small_bundle, str(out), config, resume=True)
    rows = sorted(read_labels(out).to_pylist(), key=lambda r: r["path"])
    assert [(r["path"], r["language"], r["error"]) for r in rows] == [
        (f"{folder}/a.wav", "de", None),
        (f"{folder}/b.wav", "en", None),
        (f"{folder}/corrupt.wav", None, "undecodable"),
        (f"{folder}/late.wav", "en", None),
    ]
    assert resumed["labelled_before"] == 3 and resumed["labelled"] == 3
    assert (resumed["failed_transient"], resumed["failed_permanent"]) == (0, 1)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def _assert_same_rows(ours: pa.Table, theirs: pa.Table) -> None:
    """Same files, languages and errors; scores equal to float precision."""
    ours_rows, their_rows = (t.sort_by("path").to_pylist() for t in (ours, theirs))
    assert [(r["path"], r["language"], r["error"]) for r in ours_rows] == [
        (r["path"], r["language"], r["error"]) for r in their_rows
    ]
    for a, b in zip(ours_rows, their_rows):
        for column in ("confidence", "duration_s"):
            assert a[column] == (None if b[column] is None else pytest.approx(b[column], abs=1e-5))


@pytest.fixture(scope="module")
def many(tmp_path_factory, speech) -> Path:
    """60 clips: enough that a run killed after its first part has work left."""
    root = tmp_path_factory.mktemp("many")
    clips = [wav for wavs in speech.values() for wav in wavs]
    for i in range(60):
        (root / f"clip{i:02d}.wav").write_bytes(clips[i % len(clips)])
    return root


def test_a_run_whose_driver_is_killed_resumes_to_the_labels_of_one_whole_run(many, small_bundle, tmp_path, ray_session):
    # fp32: int8 activation ranges follow what shares a batch, and a resumed run batches differently.
    config = LabelConfig(variant="fp32", files_per_task=2, rows_per_file=2)
    out = tmp_path / "interrupted"
    command = [
        sys.executable, "jobs/label.py", str(many), "--bundle", str(small_bundle), "--out", str(out),
        "--variant", "fp32", "--files-per-task", "2", "--rows-per-file", "2",
    ]  # fmt: skip
    env = dict(os.environ, RAY_ADDRESS=ray_session.get_runtime_context().gcs_address)
    driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while not list(out.glob("part-*")) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        driver.kill()
        driver.wait()
    kept = read_labels(out).num_rows
    assert 0 < kept < 60 and not (out / "summary.json").exists()

    resumed = label([str(many)], small_bundle, str(out), config, resume=True)
    whole = label([str(many)], small_bundle, str(tmp_path / "whole"), config)
    assert resumed["labelled_before"] == kept and resumed["listed"] == resumed["labelled"] == 60
    assert {k: v for k, v in resumed.items() if k in ("languages", "errors_by_reason")} == {
        k: v for k, v in whole.items() if k in ("languages", "errors_by_reason")
    }
    _assert_same_rows(read_labels(out), read_labels(tmp_path / "whole"))


def test_resume_refuses_an_output_of_other_settings_and_a_plain_run_any_output(mixed, labelled, small_bundle):
    root, _ = mixed
    out, _ = labelled
    with pytest.raises(LabelError, match="top_k"):
        label([str(root)], small_bundle, str(out), LabelConfig(top_k=1, rows_per_file=3), resume=True)
    # Another variant is another model: the error says which variant to resume with.
    before = json.loads((out / "settings.json").read_text())["bundle"]["variant"]
    other = "int8-static" if before == "fp32" else "fp32"
    with pytest.raises(LabelError, match=rf"variant {other} now, {before} before; resume with --variant {before}"):
        label([str(root)], small_bundle, str(out), LabelConfig(top_k=2, rows_per_file=3, variant=other), resume=True)
    with pytest.raises(StorageError, match="not empty"):
        label([str(root)], small_bundle, str(out), LabelConfig(top_k=2))


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory, speech) -> Path:
    """A 10-minute recording: a minute of German, a minute of English, in
    turn, over light noise."""
    rng = np.random.default_rng(0)
    minutes = []
    for i in range(10):
        lang = ("de", "en")[i % 2]
        clips = [soxr.resample(sf.read(io.BytesIO(w), dtype="float32")[0], 22050, 16000) for w in speech[lang]]
        run = np.concatenate(clips * 20)[: 60 * 16000]
        minutes.append(np.pad(run, (0, 60 * 16000 - len(run))))
    recording = np.concatenate(minutes) + rng.normal(0, 0.01, 600 * 16000)
    path = tmp_path_factory.mktemp("long") / "ten_minutes.wav"
    sf.write(path, recording.astype(np.float32), 16000, subtype="PCM_16")
    return path


def test_a_long_recording_is_classified_by_windows_in_bounded_memory(ten_minutes, small_bundle):
    config = LabelConfig()
    listing = list_inputs([str(ten_minutes)])
    decoded = read_batch(pa.Table.from_pylist(listing.items), listing.filesystems, str(small_bundle), config)
    assert decoded["features"].null_count == 1 and decoded["waveform"].null_count == 0  # not featurised whole
    labeller = Labeller(str(small_bundle), config)
    tracemalloc.start()
    row = labeller(decoded).to_pylist()[0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole_file_features = 600 * 100 * 80 * 4  # 100 frames per second of 80 float32 bins
    assert peak < whole_file_features / 2
    assert row["error"] is None and row["duration_s"] == pytest.approx(600, abs=1)


def test_segments_give_a_timeline_of_the_long_recording(ten_minutes, small_bundle, tmp_path, ray_session):
    label([str(ten_minutes)], small_bundle, str(tmp_path / "out"), LabelConfig(segments=True))
    row = pq.read_table(next((tmp_path / "out").glob("part-*.parquet"))).to_pylist()[0]
    segments = row["segments"]
    assert segments[0]["start_s"] == 0 and segments[-1]["end_s"] == pytest.approx(row["duration_s"], abs=0.01)
    assert all(a["end_s"] == b["start_s"] for a, b in zip(segments, segments[1:]))
    assert {s["language"] for s in segments} <= {"de", "en"}


def test_featurising_apart_from_classifying_gives_the_same_answers(small_bundle, speech):
    classifier = Classifier(small_bundle, variant="fp32")
    clips = [classifier.load_audio(wav) for wavs in speech.values() for wav in wavs]
    clips.append(clips[0][:9000])
    features = classifier.featurize(clips)
    apart = classifier.classify_features(features, [len(c) / 16000 for c in clips])
    together = classifier.classify_batch(clips)
    assert [p.language for p in apart] == [p.language for p in together]
    assert [p.probabilities for p in apart] == [pytest.approx(p.probabilities, abs=1e-5) for p in together]
    assert all(f.shape == (1 + (len(c) - 400) // 160, 80) for f, c in zip(features, clips))


def test_labelling_never_imports_torch_nor_the_fused_shape_ray_data():
    """torch is the training stage's; Ray Data costs each worker process of
    the fused shape a second to import, and the driver too."""
    code = (
        "import sys, slc.apps.label\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'ray.data' not in sys.modules, 'ray.data was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_fused_stage_streams_a_long_recording_in_bounded_memory(ten_minutes, small_bundle):
    listing = list_inputs([str(ten_minutes)])
    batch = pa.Table.from_pylist(listing.items)
    label_batch(batch, listing.filesystems, str(small_bundle), LabelConfig())  # the model loads outside the count
    tracemalloc.start()
    row = label_batch(batch, listing.filesystems, str(small_bundle), LabelConfig()).to_pylist()[0]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    whole_waveform = 600 * 16000 * 4  # what decoding it whole would hold: a batch of windows is ~10 MB
    assert peak < whole_waveform / 3
    assert row["error"] is None and row["language"] in {"de", "en"} and row["duration_s"] == pytest.approx(600, abs=1)


def test_max_duration_refuses_a_long_recording_as_too_long_in_either_shape(ten_minutes, small_bundle):
    config = LabelConfig(max_duration_s=60)
    listing = list_inputs([str(ten_minutes)])
    batch = pa.Table.from_pylist(listing.items)
    fused = label_batch(batch, listing.filesystems, str(small_bundle), config).to_pylist()[0]
    pooled = Labeller(str(small_bundle), config)(read_batch(batch, listing.filesystems, str(small_bundle), config))
    for row in (fused, pooled.to_pylist()[0]):
        assert (row["error"], row["language"]) == ("too_long", None)
        assert row["detail"].startswith(str(ten_minutes)) and "at most 60.0 s" in row["detail"]


def test_a_clip_that_makes_the_model_raise_fails_alone_in_the_fused_stage(mixed, small_bundle, monkeypatch):
    root, _ = mixed
    config = LabelConfig(top_k=2)
    listing = list_inputs([str(root / "de"), str(root / "en")])
    batch = pa.Table.from_pylist(listing.items)
    labeller = label_pipeline._labeller(str(small_bundle), config)
    classify_features = labeller.classifier.classify_features

    def breaks_on_b(features, durations, *args):
        if len(features) > 1 or durations[0] == decoded_b:
            raise RuntimeError("kernel fault")
        return classify_features(features, durations, *args)

    decoded_b = Classifier(small_bundle).load_audio(root / "de" / "b.wav").size / 16000
    monkeypatch.setattr(labeller.classifier, "classify_features", breaks_on_b)
    rows = label_batch(batch, listing.filesystems, str(small_bundle), config).to_pylist()
    assert [(r["language"], r["error"]) for r in rows] == [("de", None), (None, "failed"), ("en", None)]
    assert rows[1]["detail"] == f"{root}/de/b.wav: RuntimeError: kernel fault"


def test_the_pool_shape_gives_the_labels_of_the_fused_one(mixed, labelled, small_bundle, tmp_path):
    root, _ = mixed
    fused_out, fused = labelled
    held = object_references()
    pooled = label([str(root)], small_bundle, str(tmp_path / "pool"), LabelConfig(top_k=2, shape="pool"))
    assert (fused["shape"], pooled["shape"]) == ("fused", "pool")  # auto: a tiny model on CPUs is fused
    _assert_same_rows(read_labels(tmp_path / "pool"), read_labels(fused_out))
    assert object_references() <= held, "the run left objects of its own in the object store"


def test_tasks_take_files_by_estimated_seconds_each_file_once_in_order(tmp_path):
    sizes = [32_000 * s for s in (10, 50, 70, 5, 5, 200, 1)]  # seconds of 16 kHz 16-bit audio
    for i, size in enumerate(sizes):
        (tmp_path / f"{i}.wav").write_bytes(b"\0" * size)
    listing = list_inputs([str(tmp_path)])
    blocks = task_blocks(listing.items, listing.filesystems, LabelConfig(audio_s_per_task=60, files_per_task=2))
    names = [[Path(p).name for p in block["path"].to_pylist()] for block in blocks]
    assert names == [["0.wav", "1.wav"], ["2.wav"], ["3.wav", "4.wav"], ["5.wav"], ["6.wav"]]


def test_a_small_job_is_cut_into_a_task_for_every_core(tmp_path):
    """240 s of audio in 30 s files, on 4 cores: 4 tasks of 60 s, not one of 240 s."""
    for i in range(8):
        (tmp_path / f"{i}.wav").write_bytes(b"\0" * 32_000 * 30)
    listing = list_inputs([str(tmp_path)])
    config = LabelConfig(audio_s_per_task=480)
    assert [b.num_rows for b in task_blocks(listing.items, listing.filesystems, config, cores=4)] == [2, 2, 2, 2]
    assert [b.num_rows for b in task_blocks(listing.items, listing.filesystems, config, cores=1)] == [8]


def test_each_task_writes_its_rows_when_it_finishes(speech, small_bundle, tmp_path):
    """Tasks are not gathered into fewer, larger ones to fill `rows_per_file`:
    a small job still runs on every core, and an interrupted one keeps every
    task it finished."""
    root = tmp_path / "in"
    root.mkdir()
    for n in range(12):
        (root / f"{n:02d}.wav").write_bytes(speech["de"][n % 2])
    out = tmp_path / "out"
    summary = label([str(root)], small_bundle, str(out), LabelConfig(files_per_task=2, shape="fused"))
    parts = sorted(out.glob("part-*.parquet"))
    assert summary["labelled"] == 12
    assert sorted(pq.read_table(p).num_rows for p in parts) == [2] * 6


def test_a_resume_with_nothing_left_reports_no_speed():
    outcome = pa.table({"path": ["a.wav", "b.wav"], "language": ["de", None], "duration_s": [3.0, None],
                        "error": [None, "undecodable"]})  # fmt: skip
    summary = summarize({"a.wav", "b.wav"}, outcome, set(), wall_s=2.5, cores=2.0)
    assert summary["labelled_before"] == 2 and summary["audio_s_per_s_per_core"] is None
    text = format_summary({**summary, "skipped_hidden": 0, "out": "labels/"})
    assert "per second per core" not in text and "2 labelled before this run" in text


def _speech_files(root: Path, speech, n: int) -> Path:
    """`root` holding `0.wav` ... as German speech, two recordings in turn."""
    root.mkdir()
    for i in range(n):
        (root / f"{i}.wav").write_bytes(speech["de"][i % 2])
    return root


def _stages_fail_on(monkeypatch, name: str, dies: bool) -> None:
    """The stages that read a block in either shape (`label_part` fused,
    `read_batch` pooled) fail on a block holding a file called `name`: their
    worker process dies (a decoder that crashes on it), or a ValueError is
    raised (a bug)."""

    def failing(stage):
        def wrapped(block, **kwargs):  # defined here, so it travels to the workers by value
            if any(path.endswith(name) for path in block["path"].to_pylist()):
                if dies:
                    os._exit(1)
                raise ValueError(f"a bug met {name}")
            return stage(block, **kwargs)

        return wrapped

    monkeypatch.setattr(label_run, "label_part", failing(label_run.label_part))
    monkeypatch.setattr(label_run, "read_batch", failing(label_run.read_batch))


@pytest.mark.parametrize("shape", ["fused", "pool"])
def test_a_file_that_kills_its_worker_is_a_failed_row_and_its_batch_mates_are_labelled(shape, speech, small_bundle, tmp_path, monkeypatch):
    """As a decoder that crashes on one file: the block is labelled again a
    file per task, and only the file that still kills its worker fails
    (`failed`: a resume tries it again). The pool shape hands the files of
    a block it could not finish to the fused tasks."""
    root = _speech_files(tmp_path / "in", speech, 6)
    _stages_fail_on(monkeypatch, "3.wav", dies=True)
    summary = label([str(root)], small_bundle, str(tmp_path / "out"), LabelConfig(files_per_task=3, shape=shape))
    rows = {Path(r["path"]).name: r for r in read_labels(tmp_path / "out").to_pylist()}
    assert (summary["listed"], summary["labelled"], summary["failed"], summary["failed_transient"]) == (6, 5, 1, 1)
    assert rows["3.wav"]["error"] == "failed" and "3.wav: the process labelling it died" in rows["3.wav"]["detail"]
    classifier = Classifier(small_bundle)
    answers = [classifier.classify(classifier.load_audio(root / f"{n}.wav")).language for n in range(2)]
    assert {name: r["language"] for name, r in rows.items() if name != "3.wav"} == {f"{n}.wav": answers[n % 2] for n in (0, 1, 2, 4, 5)}


@pytest.mark.parametrize("shape", ["fused", "pool"])
def test_a_bug_in_the_stages_stops_the_run_with_its_error(shape, speech, small_bundle, tmp_path, monkeypatch):
    """Unlike a worker's death, an exception is not a file's failure: the run
    stops and says it (the pool shape, which drops a block that failed, meets
    it again in the fused tasks it hands the block to)."""
    root = _speech_files(tmp_path / "in", speech, 4)
    _stages_fail_on(monkeypatch, "3.wav", dies=False)
    with pytest.raises(ValueError, match="a bug met 3.wav"):
        label([str(root)], small_bundle, str(tmp_path / "out"), LabelConfig(files_per_task=2, shape=shape))
