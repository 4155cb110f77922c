import csv
import importlib.resources

import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from slc.data import augment, conditions, corpus, synth
from slc.data.augment import Recipe

LANGS = ("de", "it")
PER_LANG = 2


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("conditions") / "corpus"
    calls = []
    summary = conditions.make_conditions_corpus(out, LANGS, PER_LANG, seed=3, progress=lambda *a: calls.append(a))
    with summary.manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return summary, rows, calls


def read(summary, row) -> np.ndarray:
    samples, rate = sf.read(summary.root / row["path"], dtype="float32")
    assert rate == 16000 and samples.ndim == 1
    return samples


def test_every_clip_under_every_condition_in_the_test_split(made):
    summary, rows, calls = made
    names = tuple(conditions.CONDITIONS)
    assert tuple(rows[0]) == conditions.MANIFEST_COLUMNS
    assert summary.clips == {name: {lang: PER_LANG for lang in LANGS} for name in names}
    assert len(rows) == len(LANGS) * PER_LANG * len(names) == len(list(summary.root.rglob("*.wav")))
    assert {row["split"] for row in rows} == {"test"}
    for row in rows:
        assert row["path"].split("/")[:2] == [row["lang"], row["condition"]]
    by_clip = {}
    for row in rows:
        by_clip.setdefault(row["path"].split("/")[2], []).append(row)
    assert len(by_clip) == len(LANGS) * PER_LANG
    for same in by_clip.values():
        assert sorted(r["condition"] for r in same) == sorted(names)
        assert len({(r["group"], r["text"]) for r in same}) == 1
    assert calls[-1] == (len(rows) + len(by_clip), len(rows) + len(by_clip)) and len(calls) == calls[-1][0]


def test_ingest_reads_it_as_a_test_corpus(made):
    summary, rows, _ = made
    found = corpus.discover(summary.root)
    assert found.labels.codes == LANGS
    assert {(c.id, c.split, c.group) for c in found.clips} == {(r["path"], "test", r["group"]) for r in rows}


def test_voices_are_invented_and_texts_never_trained_on(made):
    _, rows, _ = made
    assert all("+gen" in row["group"] for row in rows)
    for lang in LANGS:
        resource = importlib.resources.files("slc.data") / "sentences" / f"{lang}.txt"
        sentences = [s.strip() for s in resource.read_text(encoding="utf-8").splitlines() if s.strip()]
        trained = [s for s in sentences if synth._sentence_split(s, (0.8, 0.1, 0.1)) == "train"]
        for row in (r for r in rows if r["lang"] == lang):
            assert not any(sentence in row["text"] for sentence in trained)


def test_each_file_is_its_clean_clip_under_the_recorded_recipe(made):
    summary, rows, _ = made
    clean = {row["path"].split("/")[2]: read(summary, row) for row in rows if row["condition"] == "clean"}
    for row in rows:
        recipe = Recipe.from_json(row["recipe"])
        audio, source = read(summary, row), clean[row["path"].split("/")[2]]
        assert len(audio) == len(source) and np.isfinite(audio).all()
        if row["condition"] == "clean":
            assert recipe == Recipe(seed=recipe.seed)
        elif row["condition"] == "noise":
            snr = 10 * np.log10(np.mean(source**2) / np.mean((audio - source) ** 2))
            assert 5.0 <= recipe.snr_db <= 10.0 and snr == pytest.approx(recipe.snr_db, abs=0.3)
        elif row["condition"] == "telephone":
            freqs, psd = scipy.signal.welch(audio, 16000, nperseg=1024)
            assert recipe.telephone and psd[freqs > 4200].sum() < 1e-4 * psd.sum()
        else:
            # The clean file is the source rounded to 16 bits: the renders agree closely, not exactly.
            expected = augment.apply(source, recipe)
            assert np.corrcoef(audio, expected)[0, 1] > 0.99
            assert (recipe.room_m is not None) if row["condition"] == "reverb" else recipe.codec in ("mp3", "vorbis")


def test_same_seed_same_bytes(made, tmp_path):
    summary, rows, _ = made
    again = conditions.make_conditions_corpus(tmp_path / "again", LANGS, PER_LANG, seed=3)
    assert again.manifest.read_bytes() == summary.manifest.read_bytes()
    for row in rows:
        assert (again.root / row["path"]).read_bytes() == (summary.root / row["path"]).read_bytes()


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"conditions": ("clean", "fog")}, ValueError, r"conditions must name some of \['clean', 'noise'"),
        ({"conditions": ()}, ValueError, "conditions must name some of"),
        ({"langs": ("xx",)}, ValueError, "no sentences for language 'xx'|espeak-ng has no voice for 'xx'"),
    ],
)
def test_bad_arguments_are_clear_errors(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        conditions.make_conditions_corpus(tmp_path / "c", **{"langs": LANGS, "per_lang": 1, **kwargs})


def test_a_non_empty_out_is_refused(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.wav").write_bytes(b"")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        conditions.make_conditions_corpus(tmp_path / "c", LANGS, 1)
