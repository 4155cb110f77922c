"""Clips -> log-mel features: Kaldi-compatible 80-bin fbank with utterance
mean/variance normalisation, the numbers of transformers'
`Speech2TextFeatureExtractor`.

One implementation serves ingest, training and (exported to `features.onnx`)
serving, so a model never sees features computed two different ways; the
filter bank and window come from `slc.runtime.fbank`, whose numpy frames
(live streams) are held to this module's numbers by a test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from slc.config import FeatureConfig
from slc.runtime.fbank import INT16_SCALE, mel_filter_bank, povey_window


class Fbank(nn.Module):
    """Batched fbank: padded waveforms and their lengths -> features.

    Padding never changes a shorter clip's frames: each clip's frames and
    normalisation statistics come from its own samples only, and frames past
    its length are zero.
    """

    def __init__(self, config: FeatureConfig = FeatureConfig()) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.from_numpy(povey_window(config.frame_length)), persistent=False)
        self.register_buffer("mel_filters", torch.from_numpy(mel_filter_bank(config)).float(), persistent=False)
        # A tensor, not a Python float: the ONNX exporter would round a scalar
        # constant to float32.
        self.register_buffer("preemphasis", torch.tensor(config.preemphasis, dtype=torch.float64), persistent=False)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`waveforms: float32[B, N]` at 16 kHz in [-1, 1] (N >= one frame),
        `lengths: int64[B]` valid samples -> (`float32[B, T, 80]`, `int64[B]` frames)."""
        cfg = self.config
        # float64 from framing to the FFT: DC removal, pre-emphasis and the FFT
        # cancel large terms, and in float32 the spectral bins near zero come
        # out of different FFT libraries (torch, onnxruntime) 1e-3 apart after
        # the log. Past the FFT, sums are of positive terms and float32 is exact
        # enough.
        frames = (waveforms.double() * INT16_SCALE).unfold(1, cfg.frame_length, cfg.hop_length)
        frames = frames - frames.mean(dim=-1, keepdim=True)
        frames = torch.cat(
            [frames[..., :1] * (1.0 - self.preemphasis), frames[..., 1:] - self.preemphasis * frames[..., :-1]],
            dim=-1,
        )
        frames = nn.functional.pad(frames * self.window, (0, cfg.fft_length - cfg.frame_length))
        spectrum = torch.view_as_real(torch.fft.rfft(frames)).float()
        power = spectrum[..., 0].square() + spectrum[..., 1].square()
        log_mel = torch.log(torch.clamp(power @ self.mel_filters, min=cfg.mel_floor))

        frame_lengths = torch.clamp(
            torch.div(lengths - cfg.frame_length, cfg.hop_length, rounding_mode="floor") + 1, min=0
        )
        valid = torch.arange(log_mel.shape[1], device=log_mel.device)[None, :] < frame_lengths[:, None]
        if cfg.normalize:
            log_mel = _normalize(log_mel, valid, frame_lengths)
        return log_mel * valid.unsqueeze(-1).to(log_mel.dtype), frame_lengths


def _normalize(log_mel: torch.Tensor, valid: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """Per-clip mean and variance normalisation over valid frames only. The
    statistics are summed in float64: float32 sums over minutes of frames differ
    between torch and onnxruntime by more than 1e-5."""
    values = log_mel.double()
    weights = valid.unsqueeze(-1).to(values.dtype)
    count = torch.clamp(frame_lengths, min=1).to(values.dtype)[:, None, None]
    mean = (values * weights).sum(dim=1, keepdim=True) / count
    centered = values - mean
    variance = (centered.square() * weights).sum(dim=1, keepdim=True) / count
    return (centered / torch.sqrt(torch.clamp(variance, min=1e-10))).float()


def extract(clip: np.ndarray, fbank: Fbank) -> np.ndarray:
    """One clip, `float32[n]` at 16 kHz -> `float32[T, 80]`."""
    with torch.inference_mode():
        features, _ = fbank(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
    return features[0].numpy()


def export_onnx(path: str | Path, config: FeatureConfig = FeatureConfig()) -> Path:
    """Write `Fbank` as an ONNX graph with dynamic batch and sample axes.

    Inputs `waveforms: float32[batch, samples]`, `lengths: int64[batch]`;
    outputs `features: float32[batch, frames, 80]`, `frame_lengths: int64[batch]`.
    """
    import onnx

    path = Path(path)
    module = Fbank(config).eval()
    # Two clips of different lengths: an example batch of one would fix the
    # batch axis, and equal lengths would hide the padding logic.
    waveforms = torch.randn(2, config.sample_rate * 2) * 0.1
    lengths = torch.tensor([config.sample_rate * 2, config.sample_rate + 123])
    batch = torch.export.Dim("batch", min=1)
    samples = torch.export.Dim("samples", min=config.frame_length)
    torch.onnx.export(
        module,
        (waveforms, lengths),
        path,
        input_names=["waveforms", "lengths"],
        output_names=["features", "frame_lengths"],
        dynamic_shapes=({0: batch, 1: samples}, {0: batch}),
        external_data=False,
        dynamo=True,
        verbose=False,
    )
    onnx.checker.check_model(str(path), full_check=True)
    return path
