"""Demo speech corpus from espeak-ng voices, in the VoxLingua107 layout.

A classifier trained on one synthetic voice learns the voice, not the language,
so the corpus is built for variety: every accent espeak-ng has for a language,
crossed with every voice variant it ships plus invented ones, at varied rate,
pitch and loudness, reading shipped sentences and Faker compositions. Splits
are disjoint in voices and in texts, so val and test measure unseen speakers
saying unseen things.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import importlib.resources
import itertools
import math
import os
import random
import re
import string
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from faker import Faker

from slc.data import espeak
from slc.data.foreign import ForeignTexts, day_name, month_name
from slc.data.foreign import languages as foreign_languages

DEFAULT_LANGS = ("de", "en", "fr", "it")

_SPLITS = ("train", "val", "test")
_CLIPS_PER_VOICE = 5
_MIN_GENERATED = 32
# espeak-ng lists at most 349 voices (N_VOICES_LIST); its ~130 languages and
# ~100 shipped variants leave room for this many invented ones. A corpus that
# needs more voices gives each voice more clips instead.
_MAX_GENERATED = 100
_RATE_WPM = (120, 200)
_PITCH = (30, 70)
# Many shipped variants already peak at full scale at espeak's default of 100.
_AMPLITUDE = (50, 110)
# Texts are planned to last this long by `_seconds`, which is within about 20%
# of espeak-ng across voices and languages, so clips come out at 2-8 s.
_SECONDS = (2.6, 6.5)
# espeak-ng speaks roughly rate/60 words a second; a word averages ~6 characters
# with its space, and a digit expands into a spoken number several times longer.
_CHARS_PER_WORD = 6.0
_DIGIT_WEIGHT = 6

_LOCALES = {"de": "de_DE", "en": "en_US", "fr": "fr_FR", "it": "it_IT"}
# Which Faker provider each field comes from; a field whose provider falls back
# to another language (it_IT has no jobs) would put foreign words in the clip.
_FIELD_PROVIDERS = {"name": "person", "city": "address", "street": "address",
                    "job": "job", "company": "company", "weekday": "date_time",
                    "month": "date_time", "words": "lorem"}
_FRAMES = {
    "de": ("{name} wohnt seit {year} in {city}.",
           "Am {weekday}, den {day}. {month}, fahren wir nach {city}.",
           "Meine neue Adresse ist {street} in {city}.",
           "{name} arbeitet als {job} bei {company}.",
           "Die Rechnung über {number} Euro ist am {day}. {month} fällig.",
           "Bitte rufen Sie {name} vor {weekday} zurück.",
           "{words}."),
    "en": ("{name} has lived in {city} since {year}.",
           "On {weekday}, {month} {day}, we are driving to {city}.",
           "My new address is {street}, {city}.",
           "{name} got a job at {company}: {job}.",
           "The bill for {number} dollars is due on {month} {day}.",
           "Please call {name} back before {weekday}.",
           "{words}."),
    "fr": ("{name} habite à {city} depuis {year}.",
           "Le {weekday} {day} {month}, nous partons pour {city}.",
           "Ma nouvelle adresse est {street}, {city}.",
           "{name} travaille comme {job} chez {company}.",
           "La facture de {number} euros est à payer avant le {day} {month}.",
           "Merci de rappeler {name} avant {weekday}.",
           "{words}."),
    "it": ("{name} abita a {city} dal {year}.",
           "{weekday} {day} {month} partiamo per {city}.",
           "Il mio nuovo indirizzo è {street}, {city}.",
           "{name} lavora come {job} presso {company}.",
           "La fattura di {number} euro scade il {day} {month}.",
           "Per favore richiami {name} prima di {weekday}.",
           "{words}."),
}


@dataclass(frozen=True)
class SynthSummary:
    """What `make_corpus` wrote: clip and voice (group) counts by split, then language."""

    root: Path
    manifest: Path
    clips: dict[str, dict[str, int]]
    voices: dict[str, dict[str, int]]


@dataclass(frozen=True)
class _Clip:
    path: str
    lang: str
    group: str
    split: str
    text: str
    voice: str
    rate: int
    pitch: int
    amplitude: int


def _split_counts(total: int, fractions: Sequence[float]) -> dict[str, int]:
    """Share `total` among the splits by `fractions` (largest remainder); each
    split with a positive fraction gets at least one when there are enough."""
    exact = [total * f for f in fractions]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(counts)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    for i, fraction in enumerate(fractions):
        donor = max(range(len(counts)), key=counts.__getitem__)
        if fraction > 0 and counts[i] == 0 and counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return dict(zip(_SPLITS, counts))


def _seconds(text: str, rate: int) -> float:
    """Rough spoken duration of `text` at `rate` words per minute."""
    weight = sum(_DIGIT_WEIGHT if c.isdigit() else 1 for c in text)
    return weight / _CHARS_PER_WORD / (rate / 60)


class _Texts:
    """Utterances in one language: shipped sentences, hashed into disjoint pools
    per split, and Faker compositions, never reusing a text across splits."""

    def __init__(self, lang: str, fractions: Sequence[float], rng: random.Random) -> None:
        resource = importlib.resources.files("slc.data") / "sentences" / f"{lang}.txt"
        if lang not in _FRAMES or not resource.is_file():
            raise ValueError(f"no sentences for language {lang!r}; slc has them for "
                             f"{', '.join(sorted(_FRAMES))}")
        lines = dict.fromkeys(s.strip() for s in resource.read_text(encoding="utf-8").splitlines())
        self.pools: dict[str, list[str]] = {split: [] for split in _SPLITS}
        for sentence in filter(None, lines):
            self.pools[_sentence_split(sentence, fractions)].append(sentence)
        self.fake = Faker(_LOCALES[lang])
        self.fake.seed_instance(rng.getrandbits(32))
        # Provider modules are faker.providers.<provider>.<locale>.
        local = {module.split(".")[2] for module in
                 (type(provider).__module__ for provider in self.fake.providers)
                 if module.rsplit(".", 1)[-1].startswith(f"{lang}_")}
        self.frames = [frame for frame in _FRAMES[lang]
                       if {_FIELD_PROVIDERS.get(f) for f in _fields(frame)} - {None} <= local]
        self.rng = rng
        self.used: dict[str, str] = {}

    def utterance(self, split: str, rate: int) -> str:
        """A text for `split` that no other split uses, of 2-8 s at `rate` wpm."""
        for _ in range(100):
            text = self._compose(split, rate)
            if self.used.setdefault(text, split) == split:
                return text
        raise RuntimeError(f"no unused text left for split {split!r}")

    def _compose(self, split: str, rate: int) -> str:
        low, high = _SECONDS
        kind = self.rng.choices(("sentence", "faker", "both"), weights=(4, 3, 3))[0]
        fitting = [s for s in self.pools[split] if _seconds(s, rate) <= high]
        parts = [self.rng.choice(fitting)] if kind != "faker" and fitting else []
        # A shipped sentence alone is only topped up to the shortest length; Faker
        # phrases otherwise run to a random length, so clip lengths vary too.
        target = low if parts and kind == "sentence" else self.rng.uniform(low, high)
        for frame in self.rng.sample(self.frames, len(self.frames)):
            if parts and _seconds(" ".join(parts), rate) >= target:
                break
            phrase = self._phrase(frame)
            if parts and _seconds(" ".join([*parts, phrase]), rate) > high:
                break
            parts.append(phrase)
        return " ".join(parts)

    def _phrase(self, frame: str) -> str:
        fake = self.fake
        values = {"name": fake.name, "city": fake.city, "street": fake.street_address,
                  "job": fake.job, "company": fake.company, "weekday": lambda: day_name(fake),
                  "month": lambda: month_name(fake), "year": lambda: str(fake.random_int(1950, 2024)),
                  "day": lambda: str(fake.random_int(1, 28)),
                  "number": lambda: str(fake.random_int(2, 9999)),
                  "words": lambda: fake.sentence(nb_words=self.rng.randint(4, 9)).rstrip(".")}
        # Company names and titles can end in a full stop of their own.
        return re.sub(r"\.{2,}", ".", frame.format(**{f: values[f]() for f in _fields(frame)}))


def _fields(frame: str) -> list[str]:
    """The {field} names in a frame, in order of first use."""
    return list(dict.fromkeys(f for _, f, _, _ in string.Formatter().parse(frame) if f))


def _sentence_split(sentence: str, fractions: Sequence[float]) -> str:
    """The split a shipped sentence belongs to, the same for every seed."""
    point = int.from_bytes(hashlib.sha256(sentence.encode("utf-8")).digest()[:8], "big") / 2**64
    edges = list(itertools.accumulate(fractions))
    return _SPLITS[min(bisect.bisect_right(edges, point), len(_SPLITS) - 1)]


def _variant_pools(shipped: Sequence[str], needed: dict[str, int], fractions: Sequence[float],
                   rng: random.Random) -> tuple[dict[str, list[str]], list[str]]:
    """Deal voice variants to splits, so no variant is heard in two splits (in any
    language), inventing variants where a split's share of shipped ones is smaller
    than the voices it needs. -> (split -> variant names, invented names)."""
    names = rng.sample(list(shipped), len(shipped))
    shares = _split_counts(len(names), fractions)
    wanted = {split: max(floor, needed[split] - shares[split])
              for split, floor in _split_counts(_MIN_GENERATED, fractions).items()}
    # Beyond espeak-ng's room, each split invents its share of what fits.
    if sum(wanted.values()) > _MAX_GENERATED:
        wanted = _split_counts(_MAX_GENERATED, [wanted[split] / sum(wanted.values()) for split in _SPLITS])
    pools: dict[str, list[str]] = {}
    generated: list[str] = []
    for split in _SPLITS:
        pools[split], names = names[: shares[split]], names[shares[split]:]
        for _ in range(wanted[split]):
            generated.append(f"gen{len(generated):03d}")
            pools[split].append(generated[-1])
    return pools, generated


def _voices(accents: Sequence[tuple[str, str]], pool: Sequence[str], clips: int,
            rng: random.Random) -> list[tuple[str, str, int]]:
    """Voices for one language and split: (group, espeak -v argument, clips),
    each a distinct variant of `pool`, taking the accents in turn."""
    count = min(math.ceil(clips / _CLIPS_PER_VOICE), len(pool))
    order = rng.sample(list(accents), len(accents))
    voices = []
    for i, variant in enumerate(rng.sample(list(pool), count)):
        code, file = order[i % len(order)]
        share = clips // count + (i < clips % count)
        voices.append((f"{code}+{variant}", f"{file}+{variant}", share))
    return voices


def _plan(accents: dict[str, list[tuple[str, str]]], texts: dict[str, _Texts],
          variants: Sequence[str], per_lang: int, fractions: Sequence[float],
          rng: random.Random, background: dict[str, list[tuple[str, str]]],
          background_per_lang: int) -> tuple[list[_Clip], dict[str, str]]:
    """Every clip's voice, text and prosody, drawn from `rng` before any audio is
    made. -> (clips, invented variant name -> variant file text).

    Background languages speak with training voices only, so a validation or
    test voice is never heard in training, in any language; their split is
    left to `slc ingest --background`, which splits them by language."""
    counts = _split_counts(per_lang, fractions)
    needed = {split: math.ceil(n / _CLIPS_PER_VOICE) for split, n in counts.items()}
    if background:
        needed["train"] = max(needed["train"], math.ceil(background_per_lang / _CLIPS_PER_VOICE))
    pools, generated = _variant_pools(variants, needed, fractions, rng)
    width = max(4, len(str(per_lang - 1)))
    clips = []
    for lang, lang_accents in accents.items():
        index = 0
        for split in _SPLITS:
            if counts[split] == 0:
                continue
            for group, voice, n in _voices(lang_accents, pools[split], counts[split], rng):
                for _ in range(n):
                    rate = rng.randint(*_RATE_WPM)
                    clips.append(_Clip(
                        path=f"{lang}/{group}__{index:0{width}d}.wav", lang=lang, group=group,
                        split=split, text=texts[lang].utterance(split, rate), voice=voice,
                        rate=rate, pitch=rng.randint(*_PITCH), amplitude=rng.randint(*_AMPLITUDE)))
                    index += 1
    for lang, lang_accents in background.items():
        foreign = ForeignTexts(lang, rng)
        for index, (group, voice, rate) in enumerate(
            (group, voice, rng.randint(*_RATE_WPM))
            for group, voice, n in _voices(lang_accents, pools["train"], background_per_lang, rng)
            for _ in range(n)
        ):
            text = foreign.utterance(rng.uniform(*_SECONDS), lambda text: _seconds(text, rate))
            clips.append(_Clip(
                path=f"{lang}/{group}__{index:0{width}d}.wav", lang=lang, group=group, split="train",
                text=text, voice=voice, rate=rate, pitch=rng.randint(*_PITCH), amplitude=rng.randint(*_AMPLITUDE)))
    return clips, {name: espeak.variant_file(rng, name) for name in generated}


def _speak(exe: str, path: Path, clip: _Clip, wav: Path) -> None:
    """Synthesise `clip` into `wav` (espeak-ng's 22050 Hz 16-bit mono WAV)."""
    espeak.run([exe, f"--path={path}", "-b", "1", "-v", clip.voice, "-s", str(clip.rate),
          "-p", str(clip.pitch), "-a", str(clip.amplitude), "-w", str(wav), "--stdin"],
         clip.text.encode("utf-8"))


def _synthesize(exe: str, path: Path, clips: Sequence[_Clip], out: Path, workers: int | None,
                progress: Callable[[int, int], None] | None) -> None:
    """Run espeak-ng for every clip, `workers` processes at a time; stop at the first failure."""
    for lang in sorted({clip.lang for clip in clips}):
        (out / lang).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        futures = [pool.submit(_speak, exe, path, clip, out / clip.path) for clip in clips]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()
                if progress is not None:
                    progress(done, len(clips))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def _write_manifest(out: Path, clips: Sequence[_Clip]) -> Path:
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "lang", "group", "split", "text"])
        for clip in sorted(clips, key=lambda c: c.path):
            writer.writerow([clip.path, clip.lang, clip.group, clip.split, clip.text])
    return manifest


def _check(langs: tuple[str, ...], per_lang: int, fractions: Sequence[float], out: Path) -> None:
    if not langs:
        raise ValueError("langs is empty: name at least one language, e.g. ('de', 'en')")
    if per_lang < 1:
        raise ValueError(f"per_lang must be at least 1, got {per_lang}")
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three non-negative (train, val, test) shares "
                         f"summing to 1, got {tuple(fractions)}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; remove it first")


def make_corpus(out: Path, langs: Sequence[str] = DEFAULT_LANGS, per_lang: int = 100,
                seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                workers: int | None = None,
                progress: Callable[[int, int], None] | None = None,
                background: int = 0, background_per_lang: int = 40) -> SynthSummary:
    """Synthesise a corpus of `per_lang` clips per language with espeak-ng.

    Writes out/<lang>/<group>__<index>.wav (22050 Hz 16-bit mono, 2-8 s) and
    out/manifest.csv (path relative to `out`, lang, group, split, text), where a
    group is one voice (accent + voice variant) and belongs to one split only;
    splits share no texts either. `fractions` are the train/val/test shares of
    clips. The same seed gives byte-identical files. `progress(done, total)` is
    called as clips finish; `workers` espeak-ng processes run at once
    (default: one per CPU). `background` more languages (slc.data.foreign),
    `background_per_lang` clips each, speak with training voices, for the
    background class of `slc ingest --background`.

    Raises ValueError for an unknown language or bad argument, FileExistsError
    when `out` is not empty, EspeakNotFound without espeak-ng.
    """
    out = Path(out)
    langs = tuple(dict.fromkeys([langs] if isinstance(langs, str) else langs))
    _check(langs, per_lang, fractions, out)
    if background < 0 or (background and background_per_lang < 1):
        raise ValueError(f"background must be >= 0 and background_per_lang >= 1, got {background} and {background_per_lang}")
    exe = espeak.executable()
    accents = {lang: espeak.accents(exe, lang) for lang in langs}
    others = {lang: espeak.accents(exe, lang) for lang in foreign_languages(background, langs)}
    unknown = [lang for lang, found in {**accents, **others}.items() if not found]
    if unknown:
        raise ValueError(f"espeak-ng has no voice for {', '.join(map(repr, unknown))}; "
                         f"see `espeak-ng --voices`")
    rng = random.Random(seed)
    texts = {lang: _Texts(lang, fractions, rng) for lang in langs}
    with tempfile.TemporaryDirectory(prefix="slc-espeak-") as tmp:
        shipped = espeak.shipped_variants(exe)
        path = espeak.data_dir(Path(tmp), espeak.system_data(exe), shipped)
        variants = espeak.distinct(exe, path, accents[langs[0]][0][1], list(shipped))
        clips, generated = _plan(accents, texts, variants, per_lang, fractions, rng, others, background_per_lang)
        for name, text in generated.items():
            (path / "espeak-ng-data" / "voices" / "!v" / name).write_text(text, encoding="utf-8")
        _synthesize(exe, path, clips, out, workers, progress)
    groups = {split: {lang: set() for lang in (*langs, *others)} for split in _SPLITS}
    counts = {split: {lang: 0 for lang in (*langs, *others)} for split in _SPLITS}
    for clip in clips:
        groups[clip.split][clip.lang].add(clip.group)
        counts[clip.split][clip.lang] += 1
    voices = {split: {lang: len(found) for lang, found in by_lang.items()}
              for split, by_lang in groups.items()}
    return SynthSummary(out, _write_manifest(out, clips), counts, voices)


def make_unseen_corpus(out: Path, langs: Sequence[str] = DEFAULT_LANGS, per_lang: int = 20, seed: int = 0,
                       workers: int | None = None,
                       progress: Callable[[int, int], None] | None = None) -> SynthSummary:
    """A test-only corpus of speech that no `make_corpus` corpus trains on,
    whatever its seed: `per_lang` clips per language, all in the test split,
    spoken by invented voice variants only (a shipped variant may be a
    training voice there; these are drawn from their own seed) reading
    sentences of the test pool of `make_corpus`'s default fractions and
    Faker compositions. Layout, manifest and errors as `make_corpus`."""
    out = Path(out)
    langs = tuple(dict.fromkeys([langs] if isinstance(langs, str) else langs))
    test_only = (0.0, 0.0, 1.0)
    _check(langs, per_lang, test_only, out)
    exe = espeak.executable()
    accents = {lang: espeak.accents(exe, lang) for lang in langs}
    unknown = [lang for lang, found in accents.items() if not found]
    if unknown:
        raise ValueError(f"espeak-ng has no voice for {', '.join(map(repr, unknown))}; see `espeak-ng --voices`")
    rng = random.Random(f"unseen-{seed}")
    texts = {lang: _Texts(lang, (0.8, 0.1, 0.1), rng) for lang in langs}
    with tempfile.TemporaryDirectory(prefix="slc-espeak-") as tmp:
        path = espeak.data_dir(Path(tmp), espeak.system_data(exe), espeak.shipped_variants(exe))
        clips, generated = _plan(accents, texts, [], per_lang, test_only, rng, background={}, background_per_lang=0)
        for name, text in generated.items():
            (path / "espeak-ng-data" / "voices" / "!v" / name).write_text(text, encoding="utf-8")
        _synthesize(exe, path, clips, out, workers, progress)
    counts = {split: {lang: sum(c.lang == lang for c in clips) if split == "test" else 0 for lang in langs}
              for split in _SPLITS}
    voices = {split: {lang: len({c.group for c in clips if c.lang == lang}) if split == "test" else 0
                      for lang in langs} for split in _SPLITS}
    return SynthSummary(out, _write_manifest(out, clips), counts, voices)
