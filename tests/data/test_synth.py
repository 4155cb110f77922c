"""slc.data.synth: the espeak-ng demo corpus a user trains and evaluates on."""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from slc.data import espeak, synth
from slc.data.espeak import EspeakNotFound
from slc.data.synth import DEFAULT_LANGS, make_corpus

PER_LANG = 12


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    calls = []
    root = tmp_path_factory.mktemp("synth") / "corpus"
    summary = make_corpus(root, per_lang=PER_LANG, seed=0, workers=2,
                          progress=lambda done, total: calls.append((done, total)))
    return summary, calls


def test_layout_manifest_and_counts(corpus):
    summary, _ = corpus
    rows = _rows(summary.root)
    assert summary.manifest == summary.root / "manifest.csv"
    assert list(rows[0]) == ["path", "lang", "group", "split", "text"]
    assert len(rows) == PER_LANG * len(DEFAULT_LANGS)
    on_disk = {p for p in _files(summary.root) if p != "manifest.csv"}
    assert on_disk == {row["path"] for row in rows}
    for row in rows:
        lang, name = row["path"].split("/")
        assert lang == row["lang"] and row["split"] in ("train", "val", "test")
        assert re.fullmatch(r"[A-Za-z0-9_+.-]+__\d+\.wav", name), name
        assert name.split("__")[0] == row["group"]
        assert row["text"].strip()
    for lang in DEFAULT_LANGS:
        assert sum(summary.clips[split][lang] for split in summary.clips) == PER_LANG
        for split in ("train", "val", "test"):
            clips = [r for r in rows if r["lang"] == lang and r["split"] == split]
            assert summary.clips[split][lang] == len(clips) >= 1
            assert summary.voices[split][lang] == len({r["group"] for r in clips}) >= 1


def test_every_clip_is_readable_speech(corpus):
    summary, _ = corpus
    for row in _rows(summary.root):
        audio, rate = sf.read(summary.root / row["path"], dtype="float32")
        assert rate == 22050 and audio.ndim == 1, row["path"]
        assert 1.5 < len(audio) / rate < 10, row["path"]
        assert np.sqrt(np.mean(audio**2)) > 0.005, f"{row['path']} is silent"


def test_no_voice_is_heard_in_two_splits(corpus):
    summary, _ = corpus
    split_of_group, split_of_variant = {}, {}
    for row in _rows(summary.root):
        variant = row["group"].split("+", 1)[1]
        assert split_of_group.setdefault(row["group"], row["split"]) == row["split"]
        assert split_of_variant.setdefault(variant, row["split"]) == row["split"]


def test_voices_spread_over_accents(corpus):
    summary, _ = corpus
    accents = {row["group"].split("+")[0] for row in _rows(summary.root) if row["lang"] == "en"}
    assert len(accents) >= 3


def test_val_and_test_texts_are_unseen_in_training(corpus):
    summary, _ = corpus
    rows = _rows(summary.root)
    train = {row["text"] for row in rows if row["split"] == "train"}
    assert not [row["text"] for row in rows if row["split"] != "train" and row["text"] in train]


def test_progress_counts_every_clip(corpus):
    _, calls = corpus
    total = PER_LANG * len(DEFAULT_LANGS)
    assert calls == [(done, total) for done in range(1, total + 1)]


def test_same_seed_same_bytes_other_seed_differs(corpus, tmp_path):
    summary, _ = corpus
    twin = make_corpus(tmp_path / "twin", per_lang=PER_LANG, seed=0)
    other = make_corpus(tmp_path / "other", per_lang=PER_LANG, seed=1)
    assert _files(twin.root) == _files(summary.root)
    assert _rows(other.root) != _rows(summary.root)


@pytest.mark.parametrize("per_lang, clips, voices", [
    (1, (1, 0, 0), (1, 0, 0)),
    (3, (1, 1, 1), (1, 1, 1)),
    (21, (17, 2, 2), (4, 1, 1)),
])
def test_small_corpora_fill_every_split_they_can(tmp_path, per_lang, clips, voices):
    summary = make_corpus(tmp_path / "c", langs=("it",), per_lang=per_lang)
    splits = ("train", "val", "test")
    assert tuple(summary.clips[split]["it"] for split in splits) == clips
    assert tuple(summary.voices[split]["it"] for split in splits) == voices


@pytest.mark.parametrize("kwargs, message", [
    ({"langs": ("de", "xx")}, "no voice for 'xx'"),
    ({"langs": ("es",)}, "no sentences for language 'es'"),
    ({"langs": ()}, "langs is empty"),
    ({"per_lang": 0}, "per_lang must be at least 1"),
    ({"fractions": (0.8, 0.1, 0.2)}, "summing to 1"),
    ({"fractions": (1.2, -0.1, -0.1)}, "non-negative"),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make_corpus(tmp_path / "c", **kwargs)
    assert not (tmp_path / "c").exists()


def test_non_empty_output_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        make_corpus(tmp_path, per_lang=3)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_missing_espeak_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EspeakNotFound, match=re.escape("apt-get install -y espeak-ng")):
        make_corpus(tmp_path / "c", per_lang=3)


def test_generated_variants_change_the_audio(tmp_path):
    # espeak-ng silently falls back to the plain voice for a variant it cannot
    # load, so an invented variant counts only if its audio differs.
    exe = espeak.executable()
    path = espeak.data_dir(tmp_path / "data", espeak.system_data(exe), {})
    rng = random.Random(0)
    variants = path / "espeak-ng-data" / "voices" / "!v"
    for name in ("gen000", "gen001"):
        (variants / name).write_text(espeak.variant_file(rng, name))
    audio = set()
    for i, voice in enumerate(("gmw/de", "gmw/de+gen000", "gmw/de+gen001")):
        clip = synth._Clip(path=f"{i}.wav", lang="de", group="g", split="train",
                           text="Guten Morgen, wie geht es dir heute?", voice=voice,
                           rate=160, pitch=50, amplitude=100)
        synth._speak(exe, path, clip, tmp_path / clip.path)
        audio.add((tmp_path / clip.path).read_bytes())
    assert len(audio) == 3


def test_a_corpus_too_large_for_espeaks_voice_list_gives_voices_more_clips():
    # espeak-ng lists at most 349 voices: inventing one per 5 clips of a large
    # corpus would end in "The specified espeak-ng voice does not exist".
    shipped = [f"v{i}" for i in range(100)]
    needed = {"train": 400, "val": 50, "test": 50}
    pools, generated = synth._variant_pools(shipped, needed, (0.8, 0.1, 0.1), random.Random(0))
    assert len(generated) <= synth._MAX_GENERATED
    assert sum(map(len, pools.values())) == len(shipped) + len(generated)
    voices = synth._voices([("de", "gmw/de")], pools["val"], 250, random.Random(0))
    assert len(voices) == len(pools["val"]) and sum(n for _, _, n in voices) == 250


def test_background_languages_speak_with_training_voices_only(tmp_path):
    summary = make_corpus(tmp_path / "c", ("de",), per_lang=10, seed=1, background=2, background_per_lang=5)
    rows = list(csv.DictReader((tmp_path / "c" / "manifest.csv").open()))
    others = [r for r in rows if r["lang"] not in ("de",)]
    assert {r["lang"] for r in others} == {"es", "nl"} and len(others) == 10
    held_out = {r["group"].split("+")[1] for r in rows if r["lang"] == "de" and r["split"] != "train"}
    assert all(r["split"] == "train" for r in others)
    assert {r["group"].split("+")[1] for r in others}.isdisjoint(held_out)
    assert summary.clips["train"]["es"] == 5
    assert len({r["text"] for r in others}) == len(others)


def test_texts_do_not_depend_on_the_date_the_corpus_is_made(tmp_path, monkeypatch):
    import datetime as dt

    import faker.providers.date_time as faker_dates

    def made_on(day: dt.datetime, out: Path) -> list[str]:
        class Clock(dt.datetime):
            @classmethod
            def now(cls, tz=None):
                return day

        monkeypatch.setattr(faker_dates, "datetime", Clock)
        make_corpus(out, ("de", "en"), per_lang=10, seed=2, background=2, background_per_lang=5)
        return [row["text"] for row in csv.DictReader((out / "manifest.csv").open())]

    assert made_on(dt.datetime(2026, 11, 30), tmp_path / "a") == made_on(dt.datetime(2031, 5, 3), tmp_path / "b")
