"""Shared fixtures: one local Ray for the whole session, espeak-ng speech."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
import soundfile as sf
import soxr


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session; shut down (no processes left) at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def espeak_wav(text: str, voice: str = "en", rate: int = 160) -> bytes:
    """WAV bytes (22050 Hz, 16-bit mono) of espeak-ng saying `text`."""
    return subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text], capture_output=True, check=True
    ).stdout


@pytest.fixture(scope="session")
def speech_16k() -> np.ndarray:
    """About 5 s of German espeak-ng speech, mono float32 at 16 kHz."""
    wav = espeak_wav("Guten Morgen. Der Zug nach Zürich fährt heute um halb neun vom dritten Gleis ab.", "de")
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(samples, rate, 16000).astype(np.float32)
