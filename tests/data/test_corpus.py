from collections import Counter, defaultdict
from pathlib import Path

import pytest

from slc.config import SplitConfig
from slc.data.corpus import CorpusError, discover, group_of, split_of
from slc.labels import LabelSet


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")
    return path


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "voxlingua"
    touch(root / "de" / "abcDEF_123__U__S0-10.wav")
    touch(root / "de" / "abcDEF_123__U__S10-20.wav")
    touch(root / "de-CH" / "interviews" / "bern" / "zh01.flac")
    touch(root / "fr" / "x-y_z__U__S1.ogg")
    touch(root / "en" / "notes.txt")  # not audio: not a clip
    touch(root / ".cache" / "de" / "hidden.wav")
    return root


def test_tree_layout(tree):
    corpus = discover(tree)
    by_id = {c.id: c for c in corpus.clips}
    assert sorted(by_id) == [
        "de-CH/interviews/bern/zh01.flac",
        "de/abcDEF_123__U__S0-10.wav",
        "de/abcDEF_123__U__S10-20.wav",
        "fr/x-y_z__U__S1.ogg",
    ]
    assert by_id["de-CH/interviews/bern/zh01.flac"].lang == "gsw"
    assert by_id["de-CH/interviews/bern/zh01.flac"].group == "bern"
    assert by_id["de/abcDEF_123__U__S0-10.wav"].group == "abcDEF_123"
    assert by_id["fr/x-y_z__U__S1.ogg"].group == "x-y_z"
    assert corpus.labels.codes == ("gsw", "de", "fr")
    assert all(Path(c.path).is_absolute() for c in corpus.clips)


def test_manifest_csv_and_tsv_resolve_relative_paths(tmp_path):
    audio = touch(tmp_path / "audio" / "one.wav")
    absolute = touch(tmp_path / "elsewhere" / "two.wav")
    (tmp_path / "list.csv").write_text(
        f"path,lang,group,split\naudio/one.wav,Swiss_German,spk1,test\n{absolute},de_DE,,\n"
    )
    (tmp_path / "list.tsv").write_text("path\tlang\naudio/one.wav\tfr-BE\n")
    clips = discover(tmp_path / "list.csv").clips
    assert [(c.path, c.lang, c.group, c.split) for c in clips] == [
        (str(audio), "gsw", "spk1", "test"),
        (str(absolute), "de", "elsewhere", split_of("elsewhere")),
    ]
    (tsv,) = discover(tmp_path / "list.tsv").clips
    assert (tsv.path, tsv.lang, tsv.group) == (str(audio), "fr", "audio")


def test_root_manifest_adds_group_and_split_to_the_tree(tree):
    (tree / "manifest.csv").write_text("path,lang,group,split\nde/abcDEF_123__U__S0-10.wav,de,speakerA,val\n")
    by_id = {c.id: c for c in discover(tree).clips}
    assert (by_id["de/abcDEF_123__U__S0-10.wav"].group, by_id["de/abcDEF_123__U__S0-10.wav"].split) == ("speakerA", "val")
    assert len(by_id) == 4  # files the manifest does not name are still found


def test_labels_restrict_and_order(tree):
    corpus = discover(tree, labels=LabelSet.parse("fr,de"))
    assert corpus.labels.codes == ("fr", "de")
    assert {c.lang for c in corpus.clips} == {"fr", "de"}
    assert corpus.excluded == {"gsw": 1}


def test_no_group_spans_two_splits_and_fractions_hold(tmp_path):
    for g in range(1500):
        for k in range(3):
            touch(tmp_path / "c" / ("de", "fr", "it")[g % 3] / f"vid{g:04d}__U__S{k}.wav")
    clips = discover(tmp_path / "c").clips
    splits_of_group = defaultdict(set)
    for clip in clips:
        splits_of_group[clip.group].add(clip.split)
    assert all(len(s) == 1 for s in splits_of_group.values())
    share = Counter(next(iter(s)) for s in splits_of_group.values())
    assert share["train"] / 1500 == pytest.approx(0.8, abs=0.04)
    assert share["val"] / 1500 == pytest.approx(0.1, abs=0.03)
    assert share["test"] / 1500 == pytest.approx(0.1, abs=0.03)


def test_split_is_stable_when_files_are_added(tmp_path):
    root = tmp_path / "c"
    for g in range(60):
        touch(root / "de" / f"v{g}__U__S0.wav")
    before = {c.id: c.split for c in discover(root).clips}
    for g in range(40, 120):  # new clips of existing groups, and new groups
        touch(root / "de" / f"v{g}__U__S1.wav")
    after = {c.id: c.split for c in discover(root).clips}
    assert len(after) == 140
    assert all(after[i] == s for i, s in before.items())
    assert all(after[f"de/v{g}__U__S1.wav"] == after[f"de/v{g}__U__S0.wav"] for g in range(40, 60))


def test_split_depends_on_seed():
    groups = [f"g{i}" for i in range(200)]
    a = [split_of(g, SplitConfig(seed=0)) for g in groups]
    b = [split_of(g, SplitConfig(seed=1)) for g in groups]
    assert a != b and a == [split_of(g, SplitConfig(seed=0)) for g in groups]


def test_group_of_names():
    assert group_of(Path("/x/de/Ab-c_d__U__S12.wav")) == "Ab-c_d"
    assert group_of(Path("/x/de/speaker7/clip.wav")) == "speaker7"


@pytest.mark.parametrize(
    "manifest, message",
    [
        ("path,language\na.wav,de\n", "missing column"),
        ("path,lang,split\na.wav,de,holdout\n", "unknown split 'holdout'"),
        ("path,lang\na.wav,!!\n", "not a language code"),
        ("path,lang\n,de\n", "empty path"),
    ],
)
def test_malformed_manifest_names_file_and_line(tmp_path, manifest, message):
    path = tmp_path / "m.csv"
    path.write_text(manifest)
    with pytest.raises(CorpusError, match=message) as caught:
        discover(path)
    assert str(path) in str(caught.value)


def test_missing_or_empty_corpus(tmp_path):
    with pytest.raises(CorpusError, match="no such file"):
        discover(tmp_path / "absent")
    with pytest.raises(CorpusError, match="no audio files"):
        discover(tmp_path)


def test_audio_files_outside_language_folders_are_counted_in_the_error(tmp_path):
    for name in ("a.wav", "b.flac"):
        (tmp_path / name).write_bytes(b"RIFF")
    with pytest.raises(CorpusError) as caught:
        discover(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path}: 2 audio files at its top level and none in a language folder "
        "(expected <root>/<lang>/**/<audio> or a manifest)"
    )


def test_split_fractions_are_checked():
    with pytest.raises(ValueError, match="sum to 1"):
        SplitConfig(train=0.8, val=0.3, test=0.1)
