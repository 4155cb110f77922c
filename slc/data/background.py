"""The background class: languages outside the label set, as `other`.

A model that has only heard its own languages names one of them for any
speech at all. Clips of other languages, mapped to `other` (slc.labels.
BACKGROUND), teach it "none of these". Three rules keep that honest:

- each background language gives at most `per_lang` clips (a hash of the
  clip id picks them), so a large language cannot swamp the class;
- background languages are split by language, not by speaker: the `other`
  clips of the test split come from languages that neither training nor
  validation ever heard, so the test measures the answer to a new language;
- a clip keeps its own language in `source_lang`, so reports can say which
  languages were accepted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence

from slc.config import SplitConfig
from slc.labels import BACKGROUND, LabelSet, normalize

# `--background all-others`: every language of the corpus outside the labels.
ALL_OTHERS = "all-others"


def select(
    clips: Sequence, labels: LabelSet, background: Sequence[str], per_lang: int, split: SplitConfig
) -> tuple[list, dict[str, str]]:
    """The background clips of `clips` (objects with `id`, `lang`, `split`,
    `source_lang` fields; any dataclass) relabelled `other`, and the split
    given to each background language. `background` names languages, or is
    `[ALL_OTHERS]`. Raises ValueError for a background language in the label
    set or absent from the corpus."""
    if per_lang < 1:
        raise ValueError(f"background clips per language must be >= 1, got {per_lang}")
    outside = sorted({c.lang for c in clips} - set(labels.codes))
    background = [b if b == ALL_OTHERS else normalize(b) for b in background]
    if list(background) == [ALL_OTHERS]:
        chosen = outside
    else:
        inside = sorted(set(background) & set(labels.codes))
        if inside:
            raise ValueError(f"background languages {inside} are in the label set {list(labels.codes)}")
        missing = sorted(set(background) - set(outside))
        if missing:
            raise ValueError(f"background languages {missing} have no clips in the corpus; it has {outside}")
        chosen = sorted(set(background))
    splits = language_splits(chosen, split)
    by_lang: dict[str, list] = defaultdict(list)
    for clip in clips:
        if clip.lang in splits:
            by_lang[clip.lang].append(clip)
    picked = []
    for lang, found in sorted(by_lang.items()):
        found.sort(key=lambda c: _digest(f"{split.seed}:{c.id}"))
        picked += [
            dataclasses.replace(c, lang=BACKGROUND, source_lang=lang, split=splits[lang]) for c in found[:per_lang]
        ]
    return sorted(picked, key=lambda c: c.id), splits


def language_splits(languages: Sequence[str], split: SplitConfig) -> dict[str, str]:
    """Each language's split: languages ordered by a hash with the seed, then
    shared out by the split fractions (largest remainder), val and test
    getting one each as soon as there are three languages."""
    ordered = sorted(languages, key=lambda lang: _digest(f"{split.seed}:{lang}"))
    fractions = (split.train, split.val, split.test)
    counts = [math.floor(len(ordered) * f) for f in fractions]
    by_remainder = sorted(range(3), key=lambda i: counts[i] - len(ordered) * fractions[i])
    for i in by_remainder[: len(ordered) - sum(counts)]:
        counts[i] += 1
    if len(ordered) >= 3:
        for i in (1, 2):
            if counts[i] == 0 and fractions[i] > 0:
                counts[i], counts[0] = 1, counts[0] - 1
    names = ["train"] * counts[0] + ["val"] * counts[1] + ["test"] * counts[2]
    return dict(zip(ordered, names))


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()
