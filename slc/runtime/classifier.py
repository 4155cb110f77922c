"""`Classifier`: a bundle -> language probabilities, on onnxruntime alone.

One clip, a batch of clips of different lengths, or a long recording cut
into sliding windows (per-window probabilities, a timeline of language
segments, a recording-level label by mean log-probability), held in memory or
streamed from its file. Serving and batch labeling load this; it never
imports torch.

Features are computed in numpy (slc.runtime.fbank), not by the bundle's
`features.onnx`: the same numbers (checked against the graph when a bundle
loads) at 6x the speed, since onnxruntime runs the graph's float64 DFT far
slower than numpy's FFT. The graph stays in the bundle as the portable
definition of the features.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slc import audio
from slc.config import AudioConfig, FeatureConfig, WindowConfig
from slc.config_io import from_dict
from slc.labels import BACKGROUND, LabelSet, normalize
from slc.runtime import bundle as bundles
from slc.runtime.fbank import LogMel, clip_features
from slc.runtime.openset import OpenSet, answerable, shown_names
from slc.runtime.smoothing import UNKNOWN, Segment, timeline
from slc.runtime.windows import cut, window_bounds

log = logging.getLogger(__name__)

# Largest difference allowed between the numpy features and features.onnx's
# (they agree to about 1e-5).
_FEATURE_TOLERANCE = 1e-3

@dataclasses.dataclass(frozen=True)
class WindowScore:
    start_s: float
    end_s: float
    probabilities: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Prediction:
    """`language` is the most probable label, or `unknown` when its probability
    is below the `min_confidence` asked for (by default the bundle's open-set
    threshold) or when the background class wins. `confidence` is the
    probability of the best language in the label set. `probabilities` are
    over the allowed labels, highest first, summing to 1."""

    language: str
    confidence: float
    probabilities: dict[str, float]
    duration_s: float
    windows: list[WindowScore] | None = None
    segments: list[Segment] | None = None

    def top(self, k: int) -> list[tuple[str, float]]:
        return list(self.probabilities.items())[:k]

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "language": self.language,
            "confidence": self.confidence,
            "probabilities": dict(self.top(top_k)) if top_k else dict(self.probabilities),
            "duration_s": self.duration_s,
        }
        if self.segments is not None:
            data["segments"] = [dataclasses.asdict(s) for s in self.segments]
        return data


class Classifier:
    """A loaded bundle. `threads` is onnxruntime's intra-op thread count for
    each session, set explicitly: ORT ignores OMP_NUM_THREADS. `device`
    (`cpu` or `cuda`) runs the model there, and `self.device` is where it
    runs (`cpu` when onnxruntime has no CUDA); features are always numpy's. `verify`
    checks the files it loads against the bundle's sha256 (once per process
    for each file; see `bundle.verify`). `open_set` applies the bundle's
    calibration and `unknown` rule (slc.runtime.openset); off, every answer is
    one of the model's languages, the background class excluded."""

    def __init__(
        self,
        bundle: str | Path,
        variant: str | None = None,
        threads: int = 1,
        batch_size: int = 16,
        verify: bool = True,
        open_set: bool = True,
        device: str = "cpu",
    ) -> None:
        self.path = Path(bundle)
        manifest = bundles.read_manifest(self.path)
        self.manifest = manifest
        self.labels = LabelSet(tuple(manifest["labels"]))
        self.audio_config = from_dict(AudioConfig, manifest["audio"])
        self.feature_config = from_dict(FeatureConfig, manifest["features"])
        self.window = from_dict(WindowConfig, manifest["window"])
        self.variant = variant or manifest["default_variant"]
        usable = [name for name, v in manifest["variants"].items() if "file" in v]
        if self.variant not in usable:
            raise bundles.BundleError(f"{self.path}: no variant {self.variant!r}; it has {usable}")
        if manifest["variants"][self.variant].get("rejected"):
            log.warning("variant %s was rejected at export: %s", self.variant,
                        manifest["variants"][self.variant].get("rejected_because"))
        model_file = manifest["variants"][self.variant]["file"]
        if verify:
            bundles.verify(self.path, manifest, [bundles.FEATURES_FILE, model_file])
        self.open_set = OpenSet.from_dict(manifest["open_set"]) if open_set and "open_set" in manifest else None
        self.threads, self.batch_size = threads, batch_size
        self._log_mel = LogMel(self.feature_config)
        self._check_features(bundles.session(self.path / bundles.FEATURES_FILE, threads))
        self._model = bundles.session(self.path / model_file, threads, device)
        # Where the model runs: `cuda` only when onnxruntime gave it the CUDA provider.
        self.device = "cuda" if "CUDAExecutionProvider" in self._model.get_providers() else "cpu"

    def _check_features(self, graph: Any) -> None:
        """BundleError unless the numpy features equal those of the bundle's
        `features.onnx` on a probe second of noise."""
        probe = (np.random.default_rng(0).standard_normal(self.feature_config.sample_rate) * 0.1).astype(np.float32)
        theirs = graph.run(None, {"waveforms": probe[None], "lengths": np.array([len(probe)])})[0][0]
        ours = self._features_of(probe)
        if ours.shape != theirs.shape or not np.allclose(ours, theirs, atol=_FEATURE_TOLERANCE):
            raise bundles.BundleError(
                f"{self.path / bundles.FEATURES_FILE}: its features differ from those of the bundle's feature "
                f"settings {self.feature_config}; re-export the bundle with this version of slc"
            )

    @property
    def info(self) -> dict[str, Any]:
        """What answered: for responses and output files."""
        return {
            "bundle": self.path.name,
            "slc_version": self.manifest["slc_version"],
            "variant": self.variant,
            "sha256": self.manifest["files"][self.manifest["variants"][self.variant]["file"]][:12],
            "open_set": self.open_set is not None,
        }

    def load_audio(self, source: audio.Source, name: str | None = None) -> np.ndarray:
        """A path or encoded bytes -> clip, with the bundle's audio settings."""
        return audio.load(source, self.audio_config, name)

    # --- probabilities --------------------------------------------------

    def probabilities(self, clips: Sequence[np.ndarray]) -> np.ndarray:
        """`float32[len(clips), labels]` for whole clips (each at most
        `window.whole_clip_max_s`), batched by similar length."""
        if not clips:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.probabilities_of_features(self.featurize(clips))

    def featurize(self, clips: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Whole clips (as for `probabilities`) -> their features,
        `float32[frames, num_mel_bins]` each: the first half of
        `probabilities`, for pipelines that featurise and classify in
        different processes."""
        if not clips:
            return []
        self._check_whole(clips)
        return [self._features_of(clip) for clip in clips]

    def _features_of(self, clip: np.ndarray) -> np.ndarray:
        return clip_features(self._log_mel(clip), self.feature_config)

    def classify_features(
        self,
        features: Sequence[np.ndarray],
        durations_s: Sequence[float],
        allow: Sequence[str] | None = None,
        min_confidence: float | None = None,
    ) -> list[Prediction]:
        """Features from `featurize` (and each clip's duration) -> one
        Prediction each, in order: the second half of `classify_batch` for
        whole clips."""
        keep, min_confidence = self._keep(allow, min_confidence), self.threshold(min_confidence)
        scores = self.probabilities_of_features(features)
        return [
            self._answer(_restrict(s, keep), keep, min_confidence, duration)
            for s, duration in zip(scores, durations_s)
        ]

    def probabilities_of_features(self, features: Sequence[np.ndarray]) -> np.ndarray:
        """Features (`float32[frames, num_mel_bins]` each, as `featurize` or
        `slc.runtime.fbank` give them) -> `float32[len(features), labels]`."""
        scores = np.empty((len(features), len(self.labels)), dtype=np.float32)
        for chosen in self._batches([len(f) for f in features]):
            frame_lengths = np.array([len(features[i]) for i in chosen], dtype=np.int64)
            padded = np.zeros((len(chosen), int(frame_lengths.max()), features[0].shape[1]), dtype=np.float32)
            for row, i in zip(padded, chosen):
                row[: len(features[i])] = features[i]
            scores[chosen] = self._score(padded, frame_lengths)
        return scores

    def _check_whole(self, clips: Sequence[np.ndarray]) -> None:
        lengths = np.array([len(c) for c in clips])
        short = int(self.feature_config.frame_length)
        if lengths.min() < short:
            raise ValueError(f"a clip needs at least {short} samples (one 25 ms frame), got {int(lengths.min())}")
        longest = self.window.whole_clip_max_s * self.feature_config.sample_rate
        if lengths.max() > longest:
            raise ValueError(f"a whole clip may be at most {self.window.whole_clip_max_s:.0f} s; use windows")

    def _batches(self, lengths: Sequence[int]) -> list[np.ndarray]:
        """Indices in batches of `batch_size`, by similar length (less padding)."""
        order = np.argsort(np.asarray(lengths), kind="stable")
        return [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]

    def _score(self, features: np.ndarray, frame_lengths: np.ndarray) -> np.ndarray:
        (probabilities,) = self._model.run(None, {"features": features, "frame_lengths": frame_lengths})
        return self.open_set.calibrate(probabilities) if self.open_set else probabilities

    def window_probabilities(
        self, clip: np.ndarray, window_s: float | None = None, hop_s: float | None = None
    ) -> tuple[list[tuple[int, int]], np.ndarray]:
        """Sliding windows over `clip` -> (sample ranges, `float32[windows, labels]`).
        Windows are featurised a batch at a time, so memory does not grow
        with the recording's length beyond the clip itself."""
        bounds = window_bounds(len(clip), *self._window_samples(window_s, hop_s))
        return bounds, self._window_scores(clip[s:e] for s, e in bounds)

    def _window_samples(self, window_s: float | None, hop_s: float | None) -> tuple[int, int]:
        rate = self.feature_config.sample_rate
        window = round((window_s or self.window.window_s) * rate)
        hop = round((hop_s or self.window.hop_s) * rate)
        if window <= 0 or hop <= 0:
            raise ValueError(f"window and hop must be > 0 s, got {window / rate} s and {hop / rate} s")
        return window, hop

    def _window_scores(self, windows: Iterable[np.ndarray]) -> np.ndarray:
        """Windows, taken `batch_size` at a time -> `float32[windows, labels]`."""
        windows = iter(windows)
        scores = [np.zeros((0, len(self.labels)), dtype=np.float32)]
        while batch := list(itertools.islice(windows, self.batch_size)):
            scores.append(self.probabilities(batch))
        return np.concatenate(scores)

    # --- answers -------------------------------------------------------

    def classify(
        self,
        clip: np.ndarray,
        allow: Sequence[str] | None = None,
        min_confidence: float | None = None,
        segments: bool = False,
    ) -> Prediction:
        """One clip -> Prediction. A clip longer than `whole_clip_max_s`, or
        any clip when `segments`, is classified by sliding windows."""
        return self.classify_batch([clip], allow, min_confidence, segments)[0]

    def classify_long(
        self, clip: np.ndarray, allow: Sequence[str] | None = None, min_confidence: float | None = None
    ) -> Prediction:
        """A recording -> per-window probabilities, timeline and recording label."""
        return self.classify(clip, allow, min_confidence, segments=True)

    def classify_file(
        self,
        source: audio.Source,
        allow: Sequence[str] | None = None,
        min_confidence: float | None = None,
        segments: bool = False,
        name: str | None = None,
    ) -> Prediction:
        """A recording (path or encoded bytes) -> Prediction, decoded a block
        at a time: memory is set by a batch of windows, not by the length of
        the recording, and the bundle's `max_duration_s` does not apply.

        The answer is `classify(load_audio(source))`'s: silence trimmed as
        `load` trims it (found in a first pass over the file, see
        `audio.loud_span`, for a file longer than a whole clip), then a
        whole clip or sliding windows. `name` is what errors call the source."""
        keep, min_confidence = self._keep(allow, min_confidence), self.threshold(min_confidence)
        if not segments:
            # A file whose header promises no more than a whole clip is
            # decoded once: `load` refuses a longer one before reading it.
            whole = dataclasses.replace(self.audio_config, max_duration_s=self.window.whole_clip_max_s)
            try:
                return self.classify(audio.load(source, whole, name), allow, min_confidence)
            except audio.TooLongAudioError:
                pass
        start, end = audio.loud_span(source, self.audio_config, name)
        blocks = audio.stream(source, self.audio_config, name, start, end)
        if not segments and end - start <= self.window.whole_clip_max_s * self.feature_config.sample_rate:
            return self.classify(np.concatenate(list(blocks)), allow, min_confidence)
        bounds = window_bounds(end - start, *self._window_samples(None, None))
        scores = self._window_scores(cut(blocks, bounds))
        return self._windowed_answer(bounds, scores, end - start, keep, min_confidence, segments)

    def classify_batch(
        self,
        clips: Sequence[np.ndarray],
        allow: Sequence[str] | None = None,
        min_confidence: float | None = None,
        segments: bool = False,
    ) -> list[Prediction]:
        """Clips of any lengths -> one Prediction each, in order. Whole clips
        share batches; long ones go through windows."""
        keep, min_confidence = self._keep(allow, min_confidence), self.threshold(min_confidence)
        rate = self.feature_config.sample_rate
        windowed = [segments or len(c) > self.window.whole_clip_max_s * rate for c in clips]
        whole = [i for i, w in enumerate(windowed) if not w]
        results: list[Prediction | None] = [None] * len(clips)
        for i, scores in zip(whole, self.probabilities([clips[i] for i in whole])):
            results[i] = self._answer(_restrict(scores, keep), keep, min_confidence, len(clips[i]) / rate)
        for i in (i for i, w in enumerate(windowed) if w):
            results[i] = self._windowed(clips[i], keep, min_confidence, segments)
        return results  # type: ignore[return-value]

    def _windowed(self, clip: np.ndarray, keep: np.ndarray, min_confidence: float | None, segments: bool) -> Prediction:
        bounds, scores = self.window_probabilities(clip)
        return self._windowed_answer(bounds, scores, len(clip), keep, min_confidence, segments)

    def _windowed_answer(
        self,
        bounds: list[tuple[int, int]],
        scores: np.ndarray,
        n_samples: int,
        keep: np.ndarray,
        min_confidence: float | None,
        segments: bool,
    ) -> Prediction:
        """Per-window probabilities -> the recording's label, its windows and
        (when `segments`) its timeline."""
        rate = self.feature_config.sample_rate
        scores = _restrict(scores, keep)
        # Recording label: mean log-probability over windows, renormalised.
        mean_log = np.log(np.clip(scores, 1e-12, None)).mean(axis=0)
        recording = np.exp(mean_log - mean_log.max())
        recording[~keep] = 0.0
        answer = self._answer(recording / recording.sum(), keep, min_confidence, n_samples / rate)
        windows = [
            WindowScore(s / rate, e / rate, self._ranked(p, keep)) for (s, e), p in zip(bounds, scores)
        ]
        timeline = self._timeline(bounds, scores, min_confidence, n_samples) if segments else None
        return dataclasses.replace(answer, windows=windows, segments=timeline)

    def _timeline(
        self, bounds: list[tuple[int, int]], scores: np.ndarray, min_confidence: float | None, n_samples: int
    ) -> list[Segment]:
        """Windows -> segments, smoothed with hysteresis (slc.runtime.smoothing)
        exactly as a live stream's timeline is."""
        w = self.window
        return timeline(
            bounds, scores, shown_names(self.labels.codes), n_samples, self.feature_config.sample_rate,
            w.hop_s, w.change_evidence, w.evidence_cap, min_confidence,
        )  # fmt: skip

    def threshold(self, min_confidence: float | None) -> float | None:
        """The confidence below which the answer is `unknown`: the one asked
        for, else the open-set threshold, else none."""
        if min_confidence is not None or self.open_set is None:
            return min_confidence
        return self.open_set.threshold

    def _keep(self, allow: Sequence[str] | None, min_confidence: float | None) -> np.ndarray:
        """The labels an answer may name (`openset.answerable`), after checking
        both answer options."""
        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be within [0, 1], got {min_confidence}")
        return answerable(self.labels.codes, self._allowed(allow), self.open_set is not None)

    def _allowed(self, allow: Sequence[str] | None) -> set[str] | None:
        if not allow:
            return None
        wanted = {normalize(code) for code in allow}
        unknown = sorted(wanted - set(self.labels.codes) - {BACKGROUND})
        if unknown:
            raise ValueError(f"allow names languages the model does not know: {unknown}; it knows {list(self.labels.codes)}")
        return wanted

    def _answer(self, scores: np.ndarray, keep: np.ndarray, min_confidence: float | None, duration_s: float) -> Prediction:
        probabilities = self._ranked(scores, keep)
        language, confidence = next(iter(probabilities.items()))
        if language == BACKGROUND:
            language = UNKNOWN
            confidence = next((p for code, p in probabilities.items() if code != BACKGROUND), 0.0)
        if min_confidence is not None and confidence < min_confidence:
            language = UNKNOWN
        return Prediction(language, confidence, probabilities, round(duration_s, 3))

    def _ranked(self, scores: np.ndarray, keep: np.ndarray) -> dict[str, float]:
        ranked = sorted((i for i in range(len(scores)) if keep[i]), key=lambda i: -scores[i])
        return {self.labels.code(i): float(scores[i]) for i in ranked}


def _restrict(scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Zero the labels not allowed and renormalise (rows of `scores`)."""
    if keep.all():
        return scores
    kept = np.where(keep, scores, 0.0)
    total = kept.sum(axis=-1, keepdims=True)
    return kept / np.where(total > 0, total, 1.0)
