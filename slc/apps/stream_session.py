"""One live stream of `WS /v1/stream`: its start message, its audio and the
events it earns. No sockets here: `slc.apps.stream` moves the bytes.

Audio arrives as raw PCM frames at the client's rate and channel count; it
is downmixed (mean of the channels) and resampled with soxr's stream
resampler at HQ quality, as `slc.audio.stream` does for files. Every `hop_s`
of audio a window of the bundle's `window_s` ending there is due: the
voice-activity gate either calls it silence or hands it to the model, and
the model's probabilities go through the same `Smoother` as a recording's
timeline does. Each window's features come from a `FrameCache`: the
windows overlap, and each 10 ms frame is computed once.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import soxr

from slc.apps.stream_activity import is_speech
from slc.config import FeatureConfig, StreamConfig, WindowConfig
from slc.labels import LabelError, normalize
from slc.runtime import openset, smoothing
from slc.runtime.fbank import FrameCache

# Sample format -> (numpy dtype, full scale).
ENCODINGS = {"pcm_s16le": ("<i2", 32768.0), "f32le": ("<f4", 1.0)}
MIN_RATE, MAX_RATE, MAX_CHANNELS = 8000, 48000, 8
# f32le samples beyond this are not audio: most likely int16 bytes read as floats.
_F32_LIMIT = 16.0
START_FIELDS = {"type", "sample_rate", "encoding", "channels", "allow", "min_confidence", "hop_s", "top_k"}

# Close codes (RFC 6455).
UNSUPPORTED_DATA, POLICY_VIOLATION, TOO_BIG, INTERNAL_ERROR, TRY_AGAIN_LATER = 1003, 1008, 1009, 1011, 1013


class StreamClosed(Exception):
    """A stream ends: WebSocket close `code`, short `error` code, `detail` for a person."""

    def __init__(self, code: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.code, self.error, self.detail = code, error, detail


@dataclasses.dataclass(frozen=True)
class StreamStart:
    """What the client's first message asks for."""

    sample_rate: int
    encoding: str
    channels: int = 1
    allow: tuple[str, ...] | None = None
    min_confidence: float | None = None
    hop_s: float | None = None
    top_k: int = 3

    @classmethod
    def parse(cls, text: str, codes: Sequence[str]) -> StreamStart:
        """The start message (JSON text) -> StreamStart; StreamClosed (1008)
        naming the field and the reason when it is malformed."""
        try:
            data = json.loads(text)
        except ValueError as error:
            raise _bad_start(f"not JSON ({error})") from None
        if not isinstance(data, dict):
            raise _bad_start(f"expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - START_FIELDS)
        if unknown:
            raise _bad_start(f"unknown fields {unknown}; it takes {sorted(START_FIELDS)}")
        if data.get("type", "start") != "start":
            raise _bad_start(f"type must be 'start', got {data.get('type')!r}")
        rate, channels = data.get("sample_rate"), data.get("channels", 1)
        if not _is_int(rate) or not MIN_RATE <= rate <= MAX_RATE:
            raise _bad_start(f"sample_rate must be an integer within [{MIN_RATE}, {MAX_RATE}] Hz, got {rate!r}")
        if data.get("encoding") not in ENCODINGS:
            raise _bad_start(f"encoding must be one of {list(ENCODINGS)}, got {data.get('encoding')!r}")
        if not _is_int(channels) or not 1 <= channels <= MAX_CHANNELS:
            raise _bad_start(f"channels must be an integer within [1, {MAX_CHANNELS}], got {channels!r}")
        return cls(rate, data["encoding"], channels, _allow(data.get("allow"), codes), *_numbers(data))


def _bad_start(detail: str) -> StreamClosed:
    return StreamClosed(POLICY_VIOLATION, "bad_start", f"start message: {detail}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _allow(value: Any, codes: Sequence[str]) -> tuple[str, ...] | None:
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise _bad_start(f"allow must be a list of language codes, got {value!r}")
    try:
        wanted = tuple(normalize(c) for c in value)
    except LabelError as error:
        raise _bad_start(f"allow: {error}") from None
    unknown = [c for c in wanted if c not in codes]
    if unknown:
        raise _bad_start(f"allow: the model does not know {unknown}; it knows {list(codes)}")
    return wanted


def _numbers(data: dict[str, Any]) -> tuple[float | None, float | None, int]:
    """min_confidence, hop_s and top_k of a start message, checked."""
    confidence, hop, top_k = data.get("min_confidence"), data.get("hop_s"), data.get("top_k", 3)
    if confidence is not None and (not _is_number(confidence) or not 0 <= confidence <= 1):
        raise _bad_start(f"min_confidence must be a number within [0, 1], got {confidence!r}")
    if hop is not None and (not _is_number(hop) or not 0.25 <= hop <= 4):
        raise _bad_start(f"hop_s must be a number within [0.25, 4] s, got {hop!r}")
    if not _is_int(top_k) or top_k < 1:
        raise _bad_start(f"top_k must be an integer >= 1, got {top_k!r}")
    return confidence, hop, top_k


class Window(NamedTuple):
    """A window due: its sample range at the model's rate, its samples (for
    the voice-activity gate) and its features (for the model)."""

    start: int
    end: int
    clip: np.ndarray
    features: np.ndarray


class StreamSession:
    """A stream's state: audio not yet windowed, the smoother, the windows
    scored so far. `feed` and `finish` hand out the windows due; `observe`
    turns each window's probabilities (None for silence) into events."""

    def __init__(
        self,
        start: StreamStart,
        config: StreamConfig,
        window: WindowConfig,
        codes: Sequence[str],
        features: FeatureConfig,
        threshold: float | None = None,
        open_set: bool = True,
    ) -> None:
        self.start, self.config, self.window, self.codes = start, config, window, tuple(codes)
        self.rate = sample_rate = features.sample_rate
        self.frames = FrameCache(features)
        self.hop_s = start.hop_s or config.hop_s
        # The open-set answer, as the Classifier gives it (slc.runtime.openset):
        # the start message's min_confidence or the bundle's threshold, and the
        # background class named `unknown` (or left out when the open set is off).
        self.threshold = start.min_confidence if start.min_confidence is not None else threshold
        self.names = openset.shown_names(self.codes)
        self.keep = openset.answerable(self.codes, start.allow, open_set)
        self.dtype, self.scale = ENCODINGS[start.encoding]
        self.resampler = (
            soxr.ResampleStream(start.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
            if start.sample_rate != sample_rate
            else None
        )
        self.buffer = np.zeros(0, dtype=np.float32)  # the last samples, up to a window
        self.produced = 0  # samples at `sample_rate` so far
        self.received = 0  # frames (samples per channel) at the client's rate
        self.next_end = max(round(config.min_audio_s * sample_rate), round(self.hop_s * sample_rate))
        self.smoother = smoothing.Smoother(len(self.codes), config.change_evidence, config.evidence_cap)
        self.bounds: list[tuple[int, int]] = []  # speech windows scored
        self.scores: list[np.ndarray] = []
        self.silent_until = 0  # end (samples) of the last window the gate called silence
        self.speech_from = 0  # where the first speech window's speech can have begun

    @property
    def received_s(self) -> float:
        return self.received / self.start.sample_rate

    def feed(self, frame: bytes) -> list[Window]:
        """A binary frame -> the windows it completes (`Window`: samples at
        the model's rate, and their features). StreamClosed when the frame is not
        whole samples in the stream's encoding, or the stream grows too long."""
        width = np.dtype(self.dtype).itemsize * self.start.channels
        if len(frame) % width:
            raise StreamClosed(
                UNSUPPORTED_DATA, "wrong_encoding",
                f"a frame of {len(frame)} bytes is not whole {self.start.encoding} samples of "
                f"{self.start.channels} channel(s) ({width} bytes each)",
            )  # fmt: skip
        samples = np.frombuffer(frame, dtype=self.dtype).reshape(-1, self.start.channels).astype(np.float32)
        samples /= self.scale
        if self.start.encoding == "f32le" and not (np.isfinite(samples).all() and np.abs(samples).max(initial=0) <= _F32_LIMIT):
            raise StreamClosed(
                UNSUPPORTED_DATA, "wrong_encoding",
                f"f32le samples must be finite and within +-{_F32_LIMIT:g} (full scale is 1); "
                "is this pcm_s16le audio?",
            )  # fmt: skip
        self.received += len(samples)
        if self.received_s > self.config.max_stream_s:
            raise StreamClosed(
                POLICY_VIOLATION, "too_long", f"the stream passed {self.config.max_stream_s:.0f} s of audio, the most allowed"
            )
        return self._append(samples.mean(axis=1), last=False)

    def finish(self) -> list[Window]:
        """The end of the audio -> the last windows: the resampler's tail,
        and a window ending with the stream when audio came after the last one."""
        windows = self._append(np.zeros(0, dtype=np.float32), last=True)
        last_end = self.next_end - round(self.hop_s * self.rate)
        if self.produced > last_end and self.produced >= round(0.1 * self.rate):
            windows.append(self._window(self.produced))
        return windows

    def _append(self, mono: np.ndarray, last: bool) -> list[Window]:
        chunk = self.resampler.resample_chunk(mono, last=last) if self.resampler else mono
        self.buffer = np.concatenate([self.buffer, chunk.astype(np.float32, copy=False)])
        self.produced += len(chunk)
        windows = []
        while self.next_end <= self.produced:
            windows.append(self._window(self.next_end))
            self.next_end += round(self.hop_s * self.rate)
        span = round(self.window.window_s * self.rate)
        self.buffer = self.buffer[-span:]
        return windows

    def _window(self, end: int) -> Window:
        start = max(0, end - round(self.window.window_s * self.rate))
        offset = self.produced - len(self.buffer)  # sample index of buffer[0]
        clip = self.buffer[start - offset : end - offset].copy()
        return Window(start, end, clip, self.frames.window(self.buffer, offset, start, end))

    def speech(self, clip: np.ndarray) -> bool:
        return is_speech(clip, self.rate, self.config.speech_level_db, self.config.speech_range_db)

    def observe(self, start: int, end: int, probabilities: np.ndarray | None) -> list[dict[str, Any]]:
        """One window (samples) and its probabilities over all labels, or
        None when the gate heard no speech -> the events it earns."""
        where = {"time_s": round(end / self.rate, 3), "start_s": round(start / self.rate, 3)}
        if probabilities is None:
            self.silent_until = end
            return [{"type": "silence", **where}]
        scores = np.where(self.keep, probabilities, 0.0)
        scores = scores / max(float(scores.sum()), 1e-12)
        before = self.smoother.current
        change = self.smoother.push(scores, self.hop_s)
        if not self.bounds:
            self.speech_from = max(start, self.silent_until)
        self.bounds.append((start, end))
        self.scores.append(scores)
        current = self.smoother.current if self.smoother.current is not None else int(scores.argmax())
        ranked = sorted((i for i in range(len(scores)) if self.keep[i]), key=lambda i: -scores[i])
        events = [{
            "type": "partial", **where, "language": self._name(current, scores),
            "confidence": round(float(scores[current]), 4),
            "probabilities": {self.codes[i]: round(float(scores[i]), 4) for i in ranked[: self.start.top_k]},
        }]  # fmt: skip
        if change is not None:
            events.append({
                "type": "change", "time_s": where["time_s"], "at_s": self._change_time(change.since),
                "from": None if before is None else self.names[before], "language": self.names[change.label],
                "confidence": round(float(scores[change.label]), 4),
            })  # fmt: skip
        return events

    def _name(self, label: int, scores: np.ndarray) -> str:
        below = self.threshold is not None and scores[label] < self.threshold
        return smoothing.UNKNOWN if below else self.names[label]

    def _change_time(self, since: int) -> float:
        """Where a change happened: the middle of the overlap of the windows
        either side of `since`; for the first speech window, its start or,
        after silence, the end of the last window the gate called silent."""
        if since == 0:
            return round(self.speech_from / self.rate, 3)
        return round((self.bounds[since - 1][1] + self.bounds[since][0]) / 2 / self.rate, 3)

    def final(self) -> dict[str, Any]:
        """The whole stream's timeline, smoothed as a recording's is (with
        the stream's change detector: it agrees with the `change` events)."""
        segments = smoothing.timeline(
            self.bounds, np.array(self.scores).reshape(len(self.scores), len(self.codes)), self.names,
            self.produced, self.rate, self.hop_s, self.config.change_evidence, self.config.evidence_cap,
            self.threshold,
        )  # fmt: skip
        return {
            "type": "final",
            "duration_s": round(self.produced / self.rate, 3),
            "segments": [dataclasses.asdict(s) for s in segments],
        }
