"""The background class: other languages as `other`, split by language."""

import dataclasses
from collections import Counter

import pytest

from slc.config import SplitConfig
from slc.data import background
from slc.data.corpus import Clip
from slc.labels import LabelSet


def _clips(langs: dict[str, int]) -> list[Clip]:
    return [
        Clip(id=f"{lang}/{i}.wav", path=f"/c/{lang}/{i}.wav", lang=lang, group=f"{lang}{i % 3}", split="train",
             source=f"/c/{lang}/{i}.wav")
        for lang, n in langs.items() for i in range(n)
    ]  # fmt: skip


def test_background_languages_go_whole_to_one_split_and_keep_their_language():
    clips = _clips({"de": 5, "fr": 5, **{lang: 7 for lang in ("es", "nl", "pl", "pt", "sv", "cs")}})
    picked, splits = background.select(clips, LabelSet(("de", "fr")), ["all-others"], 100, SplitConfig())
    assert set(splits) == {"es", "nl", "pl", "pt", "sv", "cs"}
    assert Counter(splits.values()) == {"train": 4, "val": 1, "test": 1}
    assert {c.lang for c in picked} == {"other"}
    for clip in picked:
        assert clip.split == splits[clip.source_lang]
    assert Counter(c.source_lang for c in picked) == {lang: 7 for lang in splits}


def test_the_cap_takes_the_same_clips_on_every_run():
    clips = _clips({"de": 3, "es": 50})
    first, _ = background.select(clips, LabelSet(("de",)), ["es"], 10, SplitConfig())
    again, _ = background.select(list(reversed(clips)), LabelSet(("de",)), ["es"], 10, SplitConfig())
    assert len(first) == 10 and [c.id for c in first] == [c.id for c in again]


def test_language_splits_depend_on_the_seed_only():
    langs = ["es", "nl", "pl", "pt", "sv", "cs", "ro", "hu", "fi", "da"]
    a = background.language_splits(langs, SplitConfig(seed=0))
    assert a == background.language_splits(list(reversed(langs)), SplitConfig(seed=0))
    assert Counter(a.values()) == {"train": 8, "val": 1, "test": 1}


@pytest.mark.parametrize(
    ("chosen", "message"),
    [(["de"], "in the label set"), (["ja"], "no clips in the corpus")],
)
def test_a_background_language_must_be_outside_the_labels_and_in_the_corpus(chosen, message):
    with pytest.raises(ValueError, match=message):
        background.select(_clips({"de": 2, "es": 2}), LabelSet(("de",)), chosen, 10, SplitConfig())


def test_ingest_maps_background_languages_and_counts_every_clip(tmp_path, ray_session):
    import numpy as np
    import soundfile as sf

    from slc.config import IngestConfig
    from slc.data.ingest import ingest
    from slc.data.shards import read_split

    rng = np.random.default_rng(0)
    langs = {"de": 6, "fr": 6, "es": 4, "nl": 4, "pl": 4, "pt": 3}
    for lang, n in langs.items():
        for i in range(n):
            (tmp_path / "corpus" / lang).mkdir(parents=True, exist_ok=True)
            sf.write(tmp_path / "corpus" / lang / f"v{i}__{i}.wav", rng.normal(0, 0.1, 16000).astype("float32"), 16000)
    config = dataclasses.replace(IngestConfig(), labels=("de", "fr"), background=("all-others",), background_per_lang=3)
    summary = ingest(str(tmp_path / "corpus"), str(tmp_path / "shards"), config)
    assert summary["labels"] == ["de", "fr", "other"]
    # 12 in-set clips + 3 of each of the 4 background languages; the 3 over the cap are excluded.
    assert summary["discovered"] == 24 and summary["excluded_by_label"] == {"es": 1, "nl": 1, "pl": 1}
    assert sorted(lang for split in summary["background"].values() for lang in split) == ["es", "nl", "pl", "pt"]
    rows = [r for s in ("train", "val", "test") for r in read_split(str(tmp_path / "shards"), s, ["lang", "source_lang"]).to_pylist()]
    assert Counter((r["lang"], r["source_lang"]) for r in rows) == {
        ("de", "de"): 6, ("fr", "fr"): 6, ("other", "es"): 3, ("other", "nl"): 3, ("other", "pl"): 3, ("other", "pt"): 3,
    }
