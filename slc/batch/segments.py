"""A span of a recording, cut from its bytes: what a segment manifest
(lhotse supervisions and cuts) names as a clip."""

from __future__ import annotations

import io

import soundfile as sf

from slc import audio


def cut(data: bytes, span: tuple[float, float], name: str) -> bytes | audio.AudioError:
    """WAV bytes (float32, the file's own rate and channels) of `span` =
    `(start_s, duration_s)` of the encoded audio `data`, or the error naming
    `name`: `undecodable` for bytes libsndfile cannot read, `empty` for a
    span past the end."""
    start_s, duration_s = span
    try:
        with sf.SoundFile(io.BytesIO(data)) as source:
            start = int(round(start_s * source.samplerate))
            if start >= source.frames:
                return audio.EmptyAudioError(name, f"the span starts at {start_s:.2f} s, after the recording's end")
            source.seek(start)
            samples = source.read(int(round(duration_s * source.samplerate)), dtype="float32", always_2d=True)
            rate = source.samplerate
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        return audio.UndecodableAudioError(name, f"cannot cut {start_s:.2f}+{duration_s:.2f} s from it ({error})")
    out = io.BytesIO()
    sf.write(out, samples, rate, format="WAV", subtype="FLOAT")
    return out.getvalue()
