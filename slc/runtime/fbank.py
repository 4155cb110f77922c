"""Kaldi fbank in numpy, for audio that arrives a little at a time.

`features.onnx` (slc.data.features, exported into every bundle) featurises
whole clips: log-mel frames, then each clip's mean and variance
normalisation. A live stream scores a window of several seconds every hop,
and the windows overlap; `FrameCache` computes each 10 ms frame once and
normalises the frames of each window, which gives `features.onnx`'s numbers
for that window (tests/runtime/test_fbank.py holds them to it) at a fraction
of the cost. The filter bank and window are defined here once; the torch
module that training uses takes them from here.
"""

from __future__ import annotations

import numpy as np

from slc.config import FeatureConfig

# Kaldi computes fbank on 16-bit integer sample values.
INT16_SCALE = 32768.0


def num_frames(n_samples: int, config: FeatureConfig = FeatureConfig()) -> int:
    """Frames Kaldi makes from `n_samples` (snip_edges: no partial frames)."""
    if n_samples < config.frame_length:
        return 0
    return 1 + (n_samples - config.frame_length) // config.hop_length


def _kaldi_mel(freq_hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(freq_hz, dtype=np.float64) / 700.0)


def mel_filter_bank(config: FeatureConfig) -> np.ndarray:
    """`float64[fft_length // 2 + 1, num_mel_bins]` triangles, equally spaced
    and triangular on Kaldi's mel scale."""
    n_bins = config.fft_length // 2 + 1
    bin_mel = _kaldi_mel(np.arange(n_bins, dtype=np.float64) * config.sample_rate / config.fft_length)
    low, high = _kaldi_mel(config.low_freq_hz), _kaldi_mel(config.high_freq_hz)
    edges = np.linspace(0.0, 1.0, config.num_mel_bins + 2) * (high - low) + low
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - left) / (center - left)
    falling = (right - bin_mel[:, None]) / (right - center)
    return np.clip(np.minimum(rising, falling), 0.0, None)


def povey_window(length: int) -> np.ndarray:
    """Kaldi's default window: a (symmetric) Hann window raised to 0.85."""
    return np.hanning(length) ** 0.85


class LogMel:
    """Samples -> log-mel frames, without normalisation: `features.onnx`'s
    steps, in float64 up to the power spectrum as it computes them."""

    def __init__(self, config: FeatureConfig = FeatureConfig()) -> None:
        self.config = config
        self.window = povey_window(config.frame_length)
        self.filters = mel_filter_bank(config).astype(np.float32)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """`float32[n]` at the config's rate in [-1, 1] -> `float32[frames, num_mel_bins]`."""
        cfg = self.config
        n = num_frames(len(samples), cfg)
        if n == 0:
            return np.zeros((0, cfg.num_mel_bins), dtype=np.float32)
        scaled = np.asarray(samples, dtype=np.float64) * INT16_SCALE
        frames = np.lib.stride_tricks.sliding_window_view(scaled, cfg.frame_length)[:: cfg.hop_length][:n]
        frames = frames - frames.mean(axis=-1, keepdims=True)
        frames[:, 1:] -= cfg.preemphasis * frames[:, :-1].copy()
        frames[:, 0] *= 1.0 - cfg.preemphasis
        spectrum = np.fft.rfft(frames * self.window, n=cfg.fft_length)
        power = (spectrum.real.astype(np.float32) ** 2) + (spectrum.imag.astype(np.float32) ** 2)
        return np.log(np.maximum(power @ self.filters, np.float32(cfg.mel_floor)))


def normalize(log_mel: np.ndarray) -> np.ndarray:
    """Mean and variance normalisation over a clip's frames, statistics in
    float64 as `features.onnx` sums them."""
    values = log_mel.astype(np.float64)
    centered = values - values.mean(axis=0)
    variance = np.square(centered).mean(axis=0)
    return (centered / np.sqrt(np.maximum(variance, 1e-10))).astype(np.float32)


def clip_features(log_mel: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """A clip's log-mel frames -> its features: normalised, unless `config` says not."""
    return normalize(log_mel) if config.normalize else log_mel


class FrameCache:
    """The features of the windows of one growing recording, each 10 ms frame
    computed once. Windows come in order of start; a window starting on the
    frame grid reuses the frames it shares with the last one, any other is
    featurised whole."""

    def __init__(self, config: FeatureConfig = FeatureConfig()) -> None:
        self.config, self.log_mel = config, LogMel(config)
        self.first = 0  # the recording's frame index of frames[0]
        self.frames = np.zeros((0, config.num_mel_bins), dtype=np.float32)

    def window(self, samples: np.ndarray, offset: int, start: int, end: int) -> np.ndarray:
        """The features (`clip_features`, `float32[frames, num_mel_bins]`) of
        the recording's samples `[start, end)`; `samples` holds the recording
        from sample `offset` on and covers the window."""
        hop, n = self.config.hop_length, num_frames(end - start, self.config)
        if start % hop:
            return clip_features(self.log_mel(samples[start - offset : end - offset]), self.config)
        first = start // hop
        if not self.first <= first <= self.first + len(self.frames):
            self.first, self.frames = first, self.frames[:0]
        have = self.first + len(self.frames)
        if first + n > have:
            stop = (first + n - 1) * hop + self.config.frame_length
            self.frames = np.concatenate([self.frames, self.log_mel(samples[have * hop - offset : stop - offset])])
        self.frames, self.first = self.frames[first - self.first :], first
        return clip_features(self.frames[:n].copy(), self.config)
