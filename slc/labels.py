"""Language codes: normalisation of the many spellings corpora use, and the
ordered label set that maps codes to class ids."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable

DEFAULT_LABELS = ("gsw", "de", "it", "fr", "en")

# The class of speech in none of the label set's languages, learnt from other
# languages (`slc ingest --background`); the open-set answer calls it `unknown`.
BACKGROUND = "other"

# Spellings seen in corpora and manifests -> the code slc uses. Region subtags
# not listed here fall back to their language (en-US -> en); de-CH is listed
# because Swiss corpora use it for Swiss German, a label of its own.
ALIASES = {
    BACKGROUND: BACKGROUND,
    "gsw": "gsw",
    "de-ch": "gsw",
    "swiss-german": "gsw",
    "swissgerman": "gsw",
    "schweizerdeutsch": "gsw",
    "ger": "de",
    "deu": "de",
    "german": "de",
    "deutsch": "de",
    "fre": "fr",
    "fra": "fr",
    "french": "fr",
    "francais": "fr",
    "ita": "it",
    "italian": "it",
    "italiano": "it",
    "eng": "en",
    "english": "en",
}

_CODE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$")


class LabelError(ValueError):
    """A language code that cannot be normalised or is not in the label set."""


def normalize(code: str) -> str:
    """`de-CH`, `gsw`, `Swiss_German` -> `gsw`; `en_US` -> `en`; `FR` -> `fr`."""
    key = code.strip().lower().replace("_", "-").replace(" ", "-")
    if key in ALIASES:
        return ALIASES[key]
    if not _CODE.match(key):
        raise LabelError(f"not a language code: {code!r}")
    primary = key.split("-")[0]
    return ALIASES.get(primary, primary)


@dataclasses.dataclass(frozen=True)
class LabelSet:
    """Ordered language codes; a code's position is its class id."""

    codes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.codes:
            raise LabelError("a label set needs at least one language")
        if len(set(self.codes)) != len(self.codes):
            raise LabelError(f"duplicate languages in label set: {list(self.codes)}")

    @classmethod
    def parse(cls, codes: Iterable[str] | str) -> LabelSet:
        """From codes in any accepted spelling, e.g. `"de-CH,de,fr"` or a list."""
        if isinstance(codes, str):
            codes = [c for c in codes.split(",") if c.strip()]
        normalized: list[str] = []
        for code in codes:
            norm = normalize(code)
            if norm not in normalized:
                normalized.append(norm)
        return cls(tuple(normalized))

    @classmethod
    def from_found(cls, codes: Iterable[str]) -> LabelSet:
        """The languages a corpus brings: the default labels first, in their
        order, then the rest alphabetically, the background class last."""
        found = set(codes)
        ordered = [c for c in DEFAULT_LABELS if c in found]
        rest = sorted(found - set(ordered) - {BACKGROUND})
        return cls(tuple(ordered + rest + ([BACKGROUND] if BACKGROUND in found else [])))

    def __len__(self) -> int:
        return len(self.codes)

    def __contains__(self, code: object) -> bool:
        return code in self.codes

    def id(self, code: str) -> int:
        """Class id of a (normalised) code."""
        try:
            return self.codes.index(code)
        except ValueError:
            raise LabelError(f"{code!r} is not in the label set {list(self.codes)}") from None

    def code(self, index: int) -> str:
        return self.codes[index]

    def to_json(self) -> str:
        return json.dumps({"labels": list(self.codes)}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LabelSet:
        return cls(tuple(json.loads(text)["labels"]))
