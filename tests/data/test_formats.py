"""Ingest of the corpora people already have: a Hugging Face dataset (saved
with `save_to_disk`, or Parquet), a Common Voice release, WebDataset shards
and lhotse manifests, each built here with the format's own library. Every
clip is accepted or rejected with its reason; no group spans two splits."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from typer.testing import CliRunner

from conftest import espeak_wav
from slc.apps.cli import app
from slc.config import IngestConfig, SplitConfig
from slc.data.corpus import CorpusError, discover
from slc.data.ingest import ingest
from slc.data.shards import read_rejects, read_split

SAYINGS = {
    "de": ["Guten Morgen, der Zug fährt um acht.", "Wir essen heute bei meiner Schwester.", "Das Wetter ist schön."],
    "en": ["Good morning, the train leaves at eight.", "We are having dinner tonight.", "The weather is lovely."],
}
JUNK = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\xff" * 64


@pytest.fixture(scope="module")
def speech() -> dict[str, list[bytes]]:
    """Three WAV clips (22.05 kHz) per language."""
    return {lang: [espeak_wav(text, lang) for text in texts] for lang, texts in SAYINGS.items()}


def encoded(wav: bytes, fmt: str) -> bytes:
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    out = io.BytesIO()
    sf.write(out, samples, rate, format=fmt)
    return out.getvalue()


def shard_rows(out: Path, columns: tuple[str, ...] = ("id", "path", "lang", "split", "group")) -> list[dict]:
    return [
        row
        for split in ("train", "val", "test")
        if (out / split).exists()
        for row in read_split(str(out), split, columns=list(columns)).to_pylist()
    ]


def accounted(out: Path, summary: dict) -> tuple[list[dict], dict[str, str]]:
    """The shard rows and the rejects (id -> reason), after checking that
    every clip is one or the other and no group spans two splits."""
    rows = shard_rows(out)
    rejects = {r["id"]: r["reason"] for r in read_rejects(str(out)).to_pylist()}
    assert summary["accepted"] + summary["rejected"] == summary["discovered"]
    assert len(rows) == summary["accepted"] and len(rejects) == summary["rejected"]
    splits_of_group = defaultdict(set)
    for row in rows:
        splits_of_group[row["group"]].add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of_group.values())
    return rows, rejects


def test_a_saved_hugging_face_dataset_keeps_its_splits_and_rejects_an_undecodable_row(speech, tmp_path, ray_session):
    from datasets import Audio, Dataset, DatasetDict

    def split(rows):
        table = {"audio": [{"bytes": b, "path": f"{i}.wav"} for i, (b, _, _) in enumerate(rows)]}
        table.update(locale=[lang for _, lang, _ in rows], client_id=[who for _, _, who in rows])
        return Dataset.from_dict(table).cast_column("audio", Audio())

    DatasetDict({
        "train": split([(speech["de"][0], "de-DE", "anna"), (speech["en"][0], "en-GB", "bob"), (JUNK, "de-DE", "anna")]),
        "validation": split([(speech["de"][1], "de-DE", "carl")]),
        "test": split([(speech["en"][1], "en-US", "dora")]),
    }).save_to_disk(str(tmp_path / "hf"))  # fmt: skip

    args = ["ingest", str(tmp_path / "hf"), str(tmp_path / "shards"), "--split", "from-release", "--lang-column", "locale"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "shards" / "summary.json").read_text())
    rows, rejects = accounted(tmp_path / "shards", summary)
    assert summary["discovered"] == 5 and summary["labels"] == ["de", "en"]
    assert json.loads((tmp_path / "shards" / "config.json").read_text())["split"]["mode"] == "from-release"
    assert rejects == {"train/data-00000-of-00001.arrow::2": "undecodable"}
    assert {r["id"]: (r["split"], r["lang"], r["group"]) for r in rows} == {
        "train/data-00000-of-00001.arrow::0": ("train", "de", "anna"),
        "train/data-00000-of-00001.arrow::1": ("train", "en", "bob"),
        "validation/data-00000-of-00001.arrow::0": ("val", "de", "carl"),
        "test/data-00000-of-00001.arrow::0": ("test", "en", "dora"),
    }


def test_parquet_files_with_a_class_label_column_are_found_without_flags(speech, tmp_path, ray_session):
    from datasets import Audio, ClassLabel, Dataset

    names = [f"yt{i % 3}__U__S{i}.wav" for i in range(6)]  # VoxLingua107 names: three videos, two clips each
    langs = ["de", "de", "en", "en", "de", "en"]
    clips = [speech[lang][i % 3] for i, lang in enumerate(langs)]
    dataset = Dataset.from_dict({"audio": [{"bytes": c, "path": n} for c, n in zip(clips, names)], "label": langs})
    dataset = dataset.cast_column("audio", Audio()).cast_column("label", ClassLabel(names=["de", "en"]))
    (tmp_path / "hub" / "data").mkdir(parents=True)
    dataset.to_parquet(str(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"), batch_size=2)
    assert pq.ParquetFile(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet").num_row_groups == 3

    summary = ingest(tmp_path / "hub", str(tmp_path / "shards"))
    rows, rejects = accounted(tmp_path / "shards", summary)
    assert not rejects and summary["accepted"] == 6
    by_row = {int(r["id"].rsplit("::", 1)[1]): r for r in rows}
    assert [by_row[i]["lang"] for i in range(6)] == langs
    assert {by_row[i]["group"] for i in range(6)} == {"yt0", "yt1", "yt2"}


def test_a_parquet_file_without_a_language_column_is_refused_naming_its_columns(speech, tmp_path):
    from datasets import Audio, Dataset

    Dataset.from_dict({"audio": [{"bytes": speech["de"][0], "path": "a.wav"}], "text": ["hallo"]}).cast_column(
        "audio", Audio()
    ).to_parquet(str(tmp_path / "clips.parquet"))
    with pytest.raises(CorpusError, match=r"clips.parquet: no language column; name one of \['audio', 'text'\]"):
        discover(tmp_path / "clips.parquet")
    with pytest.raises(CorpusError, match="no column 'lingo'"):
        discover(tmp_path / "clips.parquet", lang_column="lingo")


def write_tsv(path: Path, rows: list[dict]) -> None:
    columns = ["client_id", "path", "sentence_id", "sentence", "up_votes", "down_votes", "age", "gender", "locale"]
    with path.open("w", newline="") as f:
        # As Common Voice writes them: tabs, quotes taken literally.
        writer = csv.DictWriter(f, columns, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar=None, quotechar=None)
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in columns} for row in rows)


def test_a_common_voice_release_groups_by_speaker_and_keeps_its_splits(speech, tmp_path, ray_session):
    release = tmp_path / "cv-corpus-20.0"
    plan = {  # locale -> (speaker, release split or None for validated only, clip)
        "de": [("s1", "train", 0), ("s1", None, 1), ("s2", "dev", 2)],
        "en": [("s3", "test", 0), ("s4", None, 1), ("s4", "train", 2)],
    }
    for locale, clips in plan.items():
        (release / locale / "clips").mkdir(parents=True)
        rows = {"validated": [], "train": [], "dev": [], "test": []}
        for speaker, split, n in clips:
            name = f"common_voice_{locale}_{n}.mp3"
            (release / locale / "clips" / name).write_bytes(encoded(speech[locale][n], "MP3"))
            row = {"client_id": speaker, "path": name, "sentence": 'He said "hi', "locale": locale}
            rows["validated"].append(row)
            if split:
                rows[split].append(row)
        rows["validated"].append({"client_id": "s5", "path": f"common_voice_{locale}_gone.mp3", "locale": locale})
        for name, listed in rows.items():
            write_tsv(release / locale / f"{name}.tsv", listed)
        write_tsv(release / locale / "invalidated.tsv", [{"client_id": "s9", "path": "bad.mp3"}])

    config = IngestConfig(split=SplitConfig(mode="from-release"))
    summary = ingest(release, str(tmp_path / "shards"), config)
    rows, rejects = accounted(tmp_path / "shards", summary)
    assert summary["discovered"] == 8
    assert rejects == {"de/clips/common_voice_de_gone.mp3": "unreadable", "en/clips/common_voice_en_gone.mp3": "unreadable"}
    assert {r["id"]: (r["split"], r["group"], r["lang"]) for r in rows} == {
        "de/clips/common_voice_de_0.mp3": ("train", "s1", "de"),
        "de/clips/common_voice_de_1.mp3": ("train", "s1", "de"),  # validated only: its speaker's split
        "de/clips/common_voice_de_2.mp3": ("val", "s2", "de"),
        "en/clips/common_voice_en_0.mp3": ("test", "s3", "en"),
        "en/clips/common_voice_en_1.mp3": ("train", "s4", "en"),
        "en/clips/common_voice_en_2.mp3": ("train", "s4", "en"),
    }
    hashed = discover(release / "de")  # one locale; the hash split by speaker
    assert {c.id: c.group for c in hashed.clips} == {
        "clips/common_voice_de_0.mp3": "s1", "clips/common_voice_de_1.mp3": "s1",
        "clips/common_voice_de_2.mp3": "s2", "clips/common_voice_de_gone.mp3": "s5",
    }  # fmt: skip


def test_a_release_that_puts_a_speaker_in_two_splits_is_refused_for_from_release(speech, tmp_path):
    (tmp_path / "de" / "clips").mkdir(parents=True)
    rows = [{"client_id": "s1", "path": f"{n}.mp3"} for n in range(2)]
    write_tsv(tmp_path / "de" / "train.tsv", rows[:1])
    write_tsv(tmp_path / "de" / "test.tsv", rows[1:])
    (tmp_path / "de" / "clips" / "0.mp3").write_bytes(b"")
    with pytest.raises(CorpusError, match=r"1 group\(s\) in more than one split, e.g. 's1' in \['test', 'train'\]"):
        discover(tmp_path, split=SplitConfig(mode="from-release"))
    assert {c.split for c in discover(tmp_path).clips} == {discover(tmp_path).clips[0].split}


def test_webdataset_shards_with_json_or_cls_labels(speech, tmp_path, ray_session):
    import webdataset as wds

    (tmp_path / "wds" / "train").mkdir(parents=True)
    with wds.TarWriter(str(tmp_path / "wds" / "train" / "shard-000000.tar")) as sink:
        for n in range(3):
            sink.write({"__key__": f"de{n}", "wav": speech["de"][n], "json": {"language": "de", "speaker": f"d{n % 2}"}})
        sink.write({"__key__": "broken", "wav": JUNK, "json": {"language": "de"}})
    with wds.TarWriter(str(tmp_path / "wds" / "train" / "shard-000001.tar.gz"), compress=True) as sink:
        for n in range(3):
            sink.write({"__key__": f"abc{n}__U__S{n}", "flac": encoded(speech["en"][n], "FLAC"), "cls": "en"})

    summary = ingest(tmp_path / "wds", str(tmp_path / "shards"))
    rows, rejects = accounted(tmp_path / "shards", summary)
    assert summary["discovered"] == 7 and summary["labels"] == ["de", "en"]
    assert rejects == {"train/shard-000000.tar::broken.wav": "undecodable"}
    assert {r["id"]: (r["lang"], r["group"]) for r in rows} == {
        "train/shard-000000.tar::de0.wav": ("de", "d0"),
        "train/shard-000000.tar::de1.wav": ("de", "d1"),
        "train/shard-000000.tar::de2.wav": ("de", "d0"),
        **{f"train/shard-000001.tar.gz::abc{n}__U__S{n}.flac": ("en", f"abc{n}") for n in range(3)},
    }


def test_a_webdataset_sample_without_audio_is_named(tmp_path):
    import webdataset as wds

    with wds.TarWriter(str(tmp_path / "shard.tar")) as sink:
        sink.write({"__key__": "ok", "wav": b"RIFF", "cls": "de"})
        sink.write({"__key__": "torch", "pth": b"\x00", "cls": "de"})
    with pytest.raises(CorpusError, match=r"shard.tar::torch: no audio member \(cls, pth\)"):
        discover(tmp_path / "shard.tar")


def test_lhotse_supervisions_and_cuts_are_clips_cut_from_their_recordings(speech, tmp_path, ray_session):
    from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet

    de, rate = sf.read(io.BytesIO(speech["de"][0]), dtype="float32")
    en, _ = sf.read(io.BytesIO(speech["en"][0]), dtype="float32")
    gap = np.zeros(rate // 2, np.float32)
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "mixed.flac", np.concatenate([de, gap, en]), rate)
    sf.write(tmp_path / "audio" / "en.wav", en, rate)
    (tmp_path / "audio" / "junk.wav").write_bytes(JUNK)
    mixed = Recording.from_file(tmp_path / "audio" / "mixed.flac")
    whole = Recording.from_file(tmp_path / "audio" / "en.wav")
    junk_source = {"type": "file", "channels": [0], "source": str(tmp_path / "audio" / "junk.wav")}
    junk = Recording.from_dict({**whole.to_dict(), "id": "junk", "sources": [junk_source]})
    split_at = (len(de) + len(gap) // 2) / rate
    supervisions = [
        SupervisionSegment("m-de", mixed.id, 0.0, split_at, language="German", speaker="anna"),
        SupervisionSegment("m-en", mixed.id, split_at, mixed.duration - split_at, language="English", speaker="bob"),
        SupervisionSegment("w-en", whole.id, 0.0, whole.duration, language="en", speaker="bob"),
        SupervisionSegment("j-de", "junk", 0.0, 1.0, language="de", speaker="carl"),
    ]
    (tmp_path / "manifests").mkdir()
    RecordingSet.from_recordings([mixed, whole, junk]).to_file(tmp_path / "manifests" / "x_recordings_train.jsonl.gz")
    SupervisionSet.from_segments(supervisions).to_file(tmp_path / "manifests" / "x_supervisions_train.jsonl.gz")

    summary = ingest(tmp_path / "manifests", str(tmp_path / "shards"))
    rows, rejects = accounted(tmp_path / "shards", summary)
    audio = tmp_path / "audio"
    assert rejects == {f"{audio}/junk.wav::j-de": "undecodable"}
    assert {r["id"]: (r["lang"], r["group"]) for r in rows} == {
        f"{audio}/mixed.flac::m-de": ("de", "anna"),
        f"{audio}/mixed.flac::m-en": ("en", "bob"),
        f"{audio}/en.wav::w-en": ("en", "bob"),
    }
    durations = {r["id"]: r["duration_s"] for r in shard_rows(tmp_path / "shards", ("id", "duration_s"))}
    assert durations[f"{audio}/mixed.flac::m-de"] < len(de) / rate + 0.3  # the German span alone, not the recording

    cuts = CutSet.from_manifests(RecordingSet.from_recordings([mixed]), SupervisionSet.from_segments(supervisions[:2]))
    cuts.trim_to_supervisions().to_file(tmp_path / "cuts.jsonl.gz")
    found = discover(tmp_path / "cuts.jsonl.gz")
    assert sorted((c.lang, c.group, c.span is not None) for c in found.clips) == [("de", "anna", True), ("en", "bob", True)]

