"""A robustness test set: unseen speech under named recording conditions.

`make_conditions_corpus` synthesises a test-only corpus (`synth.make_unseen_corpus`:
voices and sentences no demo corpus trains on) and renders every clip under
every condition of `CONDITIONS`, each an `AugmentConfig` that turns one part
of the augmentation on with its settings fixed here. A clip's recipe is drawn
from (seed, clip, condition) alone and written to the manifest, so the set is
the same on every run and each file says what was done to it.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from slc.config import SAMPLE_RATE, AugmentConfig
from slc.data import augment, synth

_OFF = AugmentConfig(
    speed_prob=0.0, pitch_prob=0.0, formant_prob=0.0, noise_prob=0.0, gain_prob=0.0, band_limit_prob=0.0,
    silence_prob=0.0, reverb_prob=0.0, eq_prob=0.0, telephone_prob=0.0, codec_prob=0.0, floor_db=None,
)  # fmt: skip
CONDITIONS: dict[str, AugmentConfig] = {
    "clean": _OFF,
    "noise": dataclasses.replace(_OFF, noise_prob=1.0, snr_db=(5.0, 10.0)),
    "reverb": dataclasses.replace(_OFF, reverb_prob=1.0, rt60_s=(0.4, 0.8)),
    "telephone": dataclasses.replace(_OFF, telephone_prob=1.0),
    # About 24-26 kbps MP3 and 28-31 kbps Vorbis at 16 kHz.
    "codec": dataclasses.replace(_OFF, codec_prob=1.0, codecs=("mp3", "vorbis"), codec_level=(0.95, 0.99)),
}
MANIFEST_COLUMNS = ("path", "lang", "group", "split", "text", "condition", "recipe")


@dataclasses.dataclass(frozen=True)
class ConditionsSummary:
    """What `make_conditions_corpus` wrote: files per condition and language, voices per language."""

    root: Path
    manifest: Path
    clips: dict[str, dict[str, int]]
    voices: dict[str, int]


def make_conditions_corpus(
    out: Path,
    langs: Sequence[str] = synth.DEFAULT_LANGS,
    per_lang: int = 20,
    seed: int = 0,
    conditions: Sequence[str] = tuple(CONDITIONS),
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ConditionsSummary:
    """`per_lang` unseen clips per language, each under every condition.

    Writes out/<lang>/<condition>/<voice>__<n>.wav (16 kHz 16-bit mono; the
    VoxLingua107 layout, language first, that `slc ingest`, `label` and
    `predict` read) and out/manifest.csv (`MANIFEST_COLUMNS`; every clip in
    the test split, the same group and text under every condition).
    `progress(done, total)` counts clips synthesised, then files rendered.
    Raises ValueError for an unknown condition, FileExistsError when `out`
    is not empty, and as `make_corpus` does.
    """
    unknown = [name for name in conditions if name not in CONDITIONS]
    if unknown or not conditions:
        raise ValueError(f"conditions must name some of {list(CONDITIONS)}, got {list(conditions)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; remove it first")
    langs = tuple(dict.fromkeys([langs] if isinstance(langs, str) else langs))
    total = len(langs) * per_lang * (1 + len(conditions))

    def report(done: int, _: int) -> None:
        if progress is not None:
            progress(done, total)

    with tempfile.TemporaryDirectory(prefix="slc-unseen-") as tmp:
        speech = synth.make_unseen_corpus(Path(tmp) / "speech", langs, per_lang, seed, workers, report)
        with speech.manifest.open(newline="", encoding="utf-8") as f:
            clips = list(csv.DictReader(f))
        jobs = [(clip, name) for clip in clips for name in conditions]
        rows = []
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for row in pool.map(lambda job: _render(speech.root, out, job[0], job[1], seed), jobs):
                rows.append(row)
                report(len(clips) + len(rows), total)
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda row: row["path"]))
    counts = {name: {lang: sum(r["lang"] == lang and r["condition"] == name for r in rows) for lang in speech.voices["test"]}
              for name in conditions}  # fmt: skip
    return ConditionsSummary(out, manifest, counts, dict(speech.voices["test"]))


def _render(source_root: Path, out: Path, clip: dict[str, str], condition: str, seed: int) -> dict[str, str]:
    """One clip under one condition -> its manifest row."""
    samples, rate = sf.read(source_root / clip["path"], dtype="float32")
    samples = soxr.resample(samples, rate, SAMPLE_RATE)
    key = int.from_bytes(hashlib.blake2b(f"{clip['path']}|{condition}".encode(), digest_size=8).digest(), "little")
    recipe = augment.draw(np.random.default_rng([seed, key]), CONDITIONS[condition])
    lang, name = clip["path"].split("/", 1)
    path = f"{lang}/{condition}/{name}"
    (out / path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(out / path, augment.apply(samples, recipe), SAMPLE_RATE, subtype="PCM_16")
    return {**{k: clip[k] for k in ("lang", "group", "split", "text")}, "path": path, "condition": condition,
            "recipe": recipe.to_json()}  # fmt: skip

