import pytest

from slc.labels import LabelError, LabelSet, normalize


@pytest.mark.parametrize(
    "code, expected",
    [("de-CH", "gsw"), ("gsw", "gsw"), ("swiss_german", "gsw"), ("Swiss German", "gsw"), ("de_CH", "gsw"),
     ("de", "de"), ("de-DE", "de"), ("deu", "de"), ("FR", "fr"), ("fr-BE", "fr"), ("fr-ch", "fr"),
     ("en_US", "en"), ("english", "en"), ("ita", "it"), ("haw", "haw"), ("zh-Hant-TW", "zh")],
)
def test_normalize(code, expected):
    assert normalize(code) == expected


@pytest.mark.parametrize("code", ["", "!!", "d", "german!"])
def test_normalize_rejects_junk(code):
    with pytest.raises(LabelError):
        normalize(code)


def test_label_set_parse_orders_and_dedupes():
    labels = LabelSet.parse("de-CH, de, fr, gsw")
    assert labels.codes == ("gsw", "de", "fr")
    assert labels.id("fr") == 2 and labels.code(1) == "de" and len(labels) == 3
    with pytest.raises(LabelError, match="'it' is not in the label set"):
        labels.id("it")


def test_label_set_from_found_puts_default_languages_first():
    assert LabelSet.from_found(["sv", "en", "gsw", "af", "de"]).codes == ("gsw", "de", "en", "af", "sv")


def test_label_set_json_round_trip():
    labels = LabelSet.parse("it,fr,en")
    assert LabelSet.from_json(labels.to_json()) == labels


def test_empty_or_duplicate_label_set():
    with pytest.raises(LabelError):
        LabelSet(())
    with pytest.raises(LabelError, match="duplicate"):
        LabelSet(("de", "de"))
