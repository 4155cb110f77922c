"""espeak-ng as a source of many voices: its accents per language, the voice
variants it ships, and invented variants (vocal tract, pitch, breath) written
into a private copy of its data directory."""

from __future__ import annotations

import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

# Spoken by every candidate variant: two variants that say it identically are one voice.
PROBE_TEXT = "one two three, a e i o u."


class EspeakNotFound(RuntimeError):
    """espeak-ng is not installed or not on PATH."""


class SynthesisError(RuntimeError):
    """An espeak-ng run failed; the message holds its command line and stderr."""


def executable() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise EspeakNotFound("espeak-ng is not installed: run `apt-get install -y espeak-ng`")
    return exe


def run(args: list[str], stdin: bytes = b"") -> bytes:
    done = subprocess.run(args, input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise SynthesisError(f"{' '.join(args)} exited with {done.returncode}: "
                             f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def system_data(exe: str) -> Path:
    """The espeak-ng-data directory the installed espeak-ng reads."""
    found = re.search(r"Data at:\s*(\S.*)$", run([exe, "--version"]).decode(), re.MULTILINE)
    if found is None or not Path(found.group(1)).is_dir():
        raise EspeakNotFound("cannot find espeak-ng's data directory; "
                             "reinstall it: `apt-get install -y espeak-ng`")
    return Path(found.group(1))


def accents(exe: str, lang: str) -> list[tuple[str, str]]:
    """lang -> [(language code, voice file)] for every espeak-ng variant of it,
    e.g. ("en-gb-scotland", "gmw/en-GB-scotland"). MBROLA voices are left out:
    they need the separate mbrola program and voice databases."""
    accents = {}
    for line in run([exe, f"--voices={lang}"]).decode().splitlines()[1:]:
        row = re.match(r"\s*\d+\s+(\S+)\s+\S+\s+\S+\s+(\S+)", line)
        if row is None:
            continue
        code, file = row.groups()
        if (code == lang or code.startswith(f"{lang}-")) and not file.startswith("mb/"):
            accents.setdefault(code, file)
    return sorted(accents.items())


def shipped_variants(exe: str) -> dict[str, str]:
    """Safe name -> file name under voices/!v of every variant espeak-ng ships."""
    variants = {}
    for line in run([exe, "--voices=variant"]).decode().splitlines():
        found = re.search(r"!v/(.+?)\s*(\(.*\))?\s*$", line)
        if found:
            variants[re.sub(r"[^A-Za-z0-9_.-]", "_", found.group(1))] = found.group(1)
    return variants


def data_dir(root: Path, system: Path, shipped: dict[str, str]) -> Path:
    """Build root/espeak-ng-data: links to the system data, with a voices/!v of
    links to the shipped variants under safe names, where generated ones can be
    written without touching the system. Returns root, espeak-ng's --path."""
    data = root / "espeak-ng-data"
    variants = data / "voices" / "!v"
    variants.mkdir(parents=True)
    for entry in system.iterdir():
        if entry.name != "voices":
            (data / entry.name).symlink_to(entry)
    for entry in (system / "voices").iterdir():
        if entry.name != "!v":
            (data / "voices" / entry.name).symlink_to(entry)
    for name, file in shipped.items():
        (variants / name).symlink_to(system / "voices" / "!v" / file)
    return root


def distinct(exe: str, path: Path, accent: str, names: Sequence[str]) -> list[str]:
    """Variants whose probe audio differs from the plain voice and from each
    other: several shipped ones sound identical (klatt, klatt6, caleb), and a
    voice split between train and test would leak."""
    seen = {run([exe, f"--path={path}", "-v", accent, "--stdout", PROBE_TEXT])}
    kept = []
    for name in sorted(names):
        audio = run([exe, f"--path={path}", "-v", f"{accent}+{name}", "--stdout", PROBE_TEXT])
        if audio not in seen:
            seen.add(audio)
            kept.append(name)
    return kept


def variant_file(rng: random.Random, name: str) -> str:
    """The text of an espeak-ng variant file for an invented speaker: formants
    scaled together as one vocal tract then jittered, with its own pitch, breath,
    flutter and roughness (format of voices/!v/* in espeak-ng-data)."""
    female = rng.random() < 0.5
    base = rng.randint(150, 230) if female else rng.randint(70, 130)
    tract = rng.uniform(1.05, 1.25) if female else rng.uniform(0.85, 1.05)
    lines = ["language variant", f"name {name}", f"gender {'female' if female else 'male'}",
             f"pitch {base} {base + rng.randint(30, 110)}"]
    for k in range(9):
        scale = tract if 1 <= k <= 5 else 1.0
        lines.append(f"formant {k} {round(100 * scale * rng.uniform(0.93, 1.07))} "
                     f"{rng.randint(70, 130)} {rng.randint(80, 150)}")
    lines += [f"flutter {rng.randint(0, 30)}", f"roughness {rng.randint(0, 5)}",
              f"voicing {rng.randint(75, 125)}", f"consonants {rng.randint(80, 120)}"]
    if rng.random() < 0.35:
        lines.append("breath " + " ".join(str(rng.randint(0, 4)) for _ in range(8)))
    if rng.random() < 0.2:
        lines.append(f"echo {rng.randint(40, 140)} {rng.randint(5, 15)}")
    if rng.random() < 0.15:
        lines.append(f"klatt {rng.randint(1, 4)}")
    return "\n".join(lines) + "\n"
