"""Texts for background speech: languages outside the label set.

slc ships sentences only for the languages it labels; for the background
class (`slc synth --background N`) espeak-ng reads what Faker's locale for the
language composes: names, places, streets, firms, jobs, dates and numbers,
which espeak-ng speaks with that language's phonology, numbers included.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from faker import Faker

# espeak-ng language -> Faker locale, in the order `--background N` takes them.
LOCALES = {
    "es": "es_ES", "nl": "nl_NL", "pl": "pl_PL", "pt": "pt_PT", "sv": "sv_SE", "cs": "cs_CZ",
    "ro": "ro_RO", "hu": "hu_HU", "fi": "fi_FI", "da": "da_DK", "ru": "ru_RU", "tr": "tr_TR",
    "el": "el_GR", "uk": "uk_UA", "hr": "hr_HR", "sk": "sk_SK", "sl": "sl_SI", "nb": "no_NO",
    "id": "id_ID", "vi": "vi_VN", "fa": "fa_IR", "hy": "hy_AM", "ka": "ka_GE", "hi": "hi_IN",
    "az": "az_AZ",
}  # fmt: skip

# Faker's date methods draw between 1970 and the clock's now, so their
# answers change from day to day; names drawn from its lists do not.
_ENGLISH_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ENGLISH_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
                   "October", "November", "December")  # fmt: skip


def day_name(fake: Faker) -> str:
    """A day of the week in the locale's words, drawn from the seeded generator alone."""
    names = getattr(fake.day_of_week.__self__, "DAY_NAMES", None)
    return fake.random_element(sorted(names.values()) if names else _ENGLISH_DAYS)


def month_name(fake: Faker) -> str:
    """A month in the locale's words, drawn from the seeded generator alone."""
    names = getattr(fake.month_name.__self__, "MONTH_NAMES", None)
    return fake.random_element(sorted(names.values()) if names else _ENGLISH_MONTHS)


# Faker provider -> what it says; a provider the locale lacks would fall back to English.
_FIELDS = {
    "person": lambda fake: fake.name(),
    "address": lambda fake: fake.city(),
    "company": lambda fake: fake.company(),
    "job": lambda fake: fake.job(),
    "date_time": lambda fake: f"{day_name(fake)} {fake.random_int(1, 28)} {month_name(fake)}",
    "lorem": lambda fake: fake.sentence(nb_words=fake.random_int(4, 8)).rstrip("."),
}


def languages(count: int, exclude: tuple[str, ...]) -> list[str]:
    """The first `count` background languages not in `exclude`."""
    available = [lang for lang in LOCALES if lang not in exclude]
    if count > len(available):
        raise ValueError(f"at most {len(available)} background languages are available, asked for {count}")
    return available[:count]


class ForeignTexts:
    """Utterances in a background language, never the same text twice."""

    def __init__(self, lang: str, rng: random.Random) -> None:
        if lang not in LOCALES:
            raise ValueError(f"no background texts for {lang!r}; slc has them for {', '.join(LOCALES)}")
        self.fake = Faker(LOCALES[lang])
        self.fake.seed_instance(rng.getrandbits(32))
        prefix = LOCALES[lang].split("_")[0] + "_"
        # Provider modules are faker.providers.<provider>.<locale>.
        local = {module.split(".")[2] for module in (type(p).__module__ for p in self.fake.providers)
                 if module.rsplit(".", 1)[-1].startswith(prefix)}  # fmt: skip
        self.fields = [field for provider, field in _FIELDS.items() if provider in local]
        self.rng = rng
        self.used: set[str] = set()

    def utterance(self, seconds: float, seconds_of: Callable[[str], float]) -> str:
        """A new text that `seconds_of` (text -> spoken seconds) puts at about `seconds`."""
        for _ in range(100):
            parts: list[str] = []
            while not parts or seconds_of(", ".join(parts)) < seconds:
                if self.fields and self.rng.random() < 0.75:
                    parts.append(self.rng.choice(self.fields)(self.fake))
                else:
                    parts.append(str(self.fake.random_int(2, 999)))
            text = ", ".join(parts) + "."
            if text not in self.used:
                self.used.add(text)
                return text
        raise RuntimeError("no new background text found")
