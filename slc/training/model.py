"""The classifier: an encoder + masked attentive statistics pooling ->
dropout -> linear.

The default encoder is transformers' Speech2Text encoder: its modules (conv
subsampler, sinusoidal positions, transformer layers) are transformers' own,
so `save_pretrained` checkpoints load into it; the forward pass is written
here because transformers' subsampler convolves over padding, which makes a
clip's output depend on what it is batched with. The `tdnn` family is an
x-vector TDNN (Snyder et al., 2018): dilated 1-D convolutions, each followed
by ReLU and batch norm, with the padding zeroed between layers.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from transformers import Speech2TextConfig
from transformers.models.speech_to_text.modeling_speech_to_text import Speech2TextEncoder, Speech2TextModel

from slc.config import ModelConfig


# Encoder settings a checkpoint does not record: a pretrained encoder must have
# transformers' defaults for them, or the model rebuilt from a checkpoint would compute
# something other than the one that was trained.
REBUILT_AS_DEFAULT = ("input_feat_per_channel", "input_channels", "scale_embedding", "activation_function")


def encoder_config(config: ModelConfig, num_mel_bins: int = 80) -> Speech2TextConfig:
    """transformers' config for the encoder shape of `config`."""
    return Speech2TextConfig(
        d_model=config.d_model,
        encoder_layers=config.encoder_layers,
        encoder_attention_heads=config.encoder_attention_heads,
        encoder_ffn_dim=config.encoder_ffn_dim,
        conv_channels=config.conv_channels,
        conv_kernel_sizes=list(config.conv_kernel_sizes),
        num_conv_layers=len(config.conv_kernel_sizes),
        input_feat_per_channel=num_mel_bins,
        max_source_positions=config.max_source_positions,
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        activation_dropout=config.dropout,
        encoder_layerdrop=0.0,
        decoder_layers=0,
        attn_implementation="eager",
    )


def load_encoder(config: ModelConfig) -> tuple[Speech2TextEncoder, ModelConfig]:
    """The encoder of the Speech2Text checkpoint `config.init_from` (saved with
    `save_pretrained`: a local directory; a hub name needs a network) and
    `config` with that encoder's shape: what rebuilds it without the checkpoint."""
    pretrained = Speech2TextModel.from_pretrained(
        config.init_from,
        attn_implementation="eager",
        # The regularisation asked for applies to the pretrained encoder too.
        dropout=config.dropout,
        attention_dropout=config.attention_dropout,
        activation_dropout=config.dropout,
        encoder_layerdrop=0.0,
    )
    hf = pretrained.config
    shape = dataclasses.replace(
        config,
        d_model=hf.d_model,
        encoder_layers=hf.encoder_layers,
        encoder_attention_heads=hf.encoder_attention_heads,
        encoder_ffn_dim=hf.encoder_ffn_dim,
        conv_channels=hf.conv_channels,
        conv_kernel_sizes=tuple(hf.conv_kernel_sizes),
        max_source_positions=hf.max_source_positions,
    )
    rebuilt = encoder_config(shape)
    differing = {
        name: (getattr(hf, name), getattr(rebuilt, name)) for name in REBUILT_AS_DEFAULT
        if getattr(hf, name) != getattr(rebuilt, name)
    }  # fmt: skip
    if differing:
        details = ", ".join(f"{name} {theirs!r} (slc builds {ours!r})" for name, (theirs, ours) in differing.items())
        raise ValueError(f"{config.init_from}: its encoder differs from the one slc trains and exports: {details}")
    return pretrained.get_encoder(), shape


class AttentiveStatsPooling(nn.Module):
    """Attention-weighted mean and standard deviation over valid frames:
    `[B, T, D]`, mask `[B, T]` -> `[B, 2D]`."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scores = self.attention(hidden).squeeze(-1)
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).unsqueeze(-1)
        mean = (weights * hidden).sum(dim=1)
        variance = (weights * hidden.square()).sum(dim=1) - mean.square()
        return torch.cat([mean, torch.sqrt(variance.clamp(min=1e-6))], dim=-1)


class TDNNEncoder(nn.Module):
    """`[B, T, 80]` features -> `[B, T / 2, 2 * channels]` states: the x-vector
    frame layers (context 5, 3 at dilation 2, 3 at dilation 3, 1, 1), the
    first at stride 2, which halves the work and loses nothing a language
    needs."""

    # (kernel, dilation, stride, output channels as a multiple of `channels`)
    LAYERS = ((5, 1, 2, 1), (3, 2, 1, 1), (3, 3, 1, 1), (1, 1, 1, 1), (1, 1, 1, 2))

    def __init__(self, channels: int, num_mel_bins: int = 80) -> None:
        super().__init__()
        widths = [num_mel_bins] + [channels * multiple for *_, multiple in self.LAYERS]
        self.convs = nn.ModuleList(
            nn.Conv1d(widths[i], widths[i + 1], kernel, stride=stride, dilation=dilation,
                      padding=(kernel - 1) * dilation // 2)
            for i, (kernel, dilation, stride, _) in enumerate(self.LAYERS)
        )  # fmt: skip
        self.norms = nn.ModuleList(nn.BatchNorm1d(width) for width in widths[1:])
        self.width = widths[-1]

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, lengths = features.transpose(1, 2), frame_lengths
        for conv, norm, (_, _, stride, _) in zip(self.convs, self.norms, self.LAYERS):
            hidden = norm(torch.relu(conv(hidden)))
            if stride > 1:
                lengths = torch.div(lengths - 1, stride, rounding_mode="floor") + 1
            # Zero the padding, as a clip alone would see the conv's zero padding.
            hidden = hidden * _mask(lengths, hidden.shape[-1]).unsqueeze(1).to(hidden.dtype)
        return hidden.transpose(1, 2), _mask(lengths, hidden.shape[-1])


class LanguageClassifier(nn.Module):
    """Features `float32[B, T, 80]` + valid frame counts `int64[B]` -> logits `[B, labels]`."""

    def __init__(self, config: ModelConfig, num_labels: int, encoder: Speech2TextEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        if config.family == "tdnn":
            self.encoder = TDNNEncoder(config.conv_channels)
            width = self.encoder.width
        else:
            self.encoder = encoder if encoder is not None else Speech2TextEncoder(encoder_config(config))
            width = config.d_model
        self.pooling = AttentiveStatsPooling(width, config.pooling_hidden)
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(2 * width, num_labels)

    @classmethod
    def build(cls, config: ModelConfig, num_labels: int) -> LanguageClassifier:
        """Random init from `config`, or the encoder of `config.init_from`."""
        if config.init_from:
            encoder, shape = load_encoder(config)
            return cls(shape, num_labels, encoder)
        return cls(config, num_labels)

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        hidden, valid = self.encode(features, frame_lengths)
        return self.classifier(self.dropout(self.pooling(hidden, valid)))

    def encode(self, features: torch.Tensor, frame_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> encoder states `[B, T', D]` and their validity mask `[B, T']`
        (T' = T subsampled 2x per conv layer)."""
        if isinstance(self.encoder, TDNNEncoder):
            return self.encoder(features, frame_lengths)
        encoder = self.encoder
        hidden = features.transpose(1, 2)
        lengths = frame_lengths
        for conv in encoder.conv.conv_layers:
            hidden = nn.functional.glu(conv(hidden), dim=1)
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
            # Zero the padding, as a clip alone would see the conv's zero padding.
            hidden = hidden * _mask(lengths, hidden.shape[-1]).unsqueeze(1).to(hidden.dtype)
        hidden = hidden.transpose(1, 2) * encoder.embed_scale
        valid = _mask(lengths, hidden.shape[1])
        hidden = hidden + encoder.embed_positions((~valid).long())
        hidden = nn.functional.dropout(hidden, p=encoder.dropout, training=self.training)
        attention_mask = (~valid)[:, None, None, :].to(hidden.dtype) * torch.finfo(hidden.dtype).min
        for layer in encoder.layers:
            hidden = layer(hidden, attention_mask)
        return encoder.layer_norm(hidden), valid


def _mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
