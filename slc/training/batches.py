"""Shards -> training batches: random crop, padding + lengths, SpecAugment.

Rows arrive as Arrow batches from `ray.train.get_dataset_shard`; features are
the shard's flattened float16 column, sliced per row without copying it whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import torch

from slc.config import TrainConfig
from slc.labels import LabelSet
from slc.data.shards import NUM_MEL_BINS

COLUMNS = ["lang", "n_frames", "features"]


def batches(
    shard, config: TrainConfig, labels: LabelSet, train: bool, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(features `[B, T, 80]`, frame lengths `[B]`, label ids `[B]`) per batch.

    Training batches are shuffled (a local buffer over blocks in random order),
    randomly cropped to `max_frames` and SpecAugmented; validation batches hold
    whole clips up to `eval_max_frames`.
    """
    iterator = shard.iter_batches(
        batch_size=config.batch_size,
        batch_format="pyarrow",
        local_shuffle_buffer_size=config.batch_size * 8 if train else None,
        local_shuffle_seed=int(rng.integers(2**31)) if train else None,
    )
    for table in iterator:
        yield collate(table, labels, config.max_frames if train else config.eval_max_frames, train, rng, config)


def collate(
    table: pa.Table, labels: LabelSet, max_frames: int, train: bool, rng: np.random.Generator, config: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    column = table.column("features").combine_chunks()
    offsets = column.offsets.to_numpy() // NUM_MEL_BINS
    values = column.values.to_numpy(zero_copy_only=False).reshape(-1, NUM_MEL_BINS)
    n_frames = table.column("n_frames").to_numpy()
    lengths = np.minimum(n_frames, max_frames)
    starts = rng.integers(0, n_frames - lengths + 1) if train else np.zeros_like(n_frames)
    features = np.zeros((len(n_frames), int(lengths.max()), NUM_MEL_BINS), dtype=np.float32)
    for i, (offset, start, length) in enumerate(zip(offsets[:-1], starts, lengths)):
        features[i, :length] = values[offset + start : offset + start + length]
    targets = torch.tensor([labels.id(code) for code in table.column("lang").to_pylist()])
    features_t, lengths_t = torch.from_numpy(features), torch.from_numpy(lengths.astype(np.int64))
    if train:
        features_t = spec_augment(features_t, lengths_t, config, rng)
    return features_t, lengths_t, targets


def spec_augment(
    features: torch.Tensor, lengths: torch.Tensor, config: TrainConfig, rng: np.random.Generator
) -> torch.Tensor:
    """Zero random bands of mel bins and spans of valid frames per clip (zero is
    the mean after normalisation). `[B, T, 80]` -> same shape."""
    batch, frames, bins = features.shape
    keep = torch.ones_like(features, dtype=torch.bool)
    frame_index = torch.arange(frames)[None, :]
    bin_index = torch.arange(bins)[None, :]
    for _ in range(config.freq_masks):
        width = torch.from_numpy(rng.integers(0, config.freq_mask_bins + 1, batch))
        start = torch.from_numpy(rng.integers(0, bins - config.freq_mask_bins, batch))
        band = (bin_index >= start[:, None]) & (bin_index < (start + width)[:, None])
        keep &= ~band[:, None, :]
    for _ in range(config.time_masks):
        width = torch.minimum(torch.from_numpy(rng.integers(0, config.time_mask_frames + 1, batch)), lengths // 5)
        start = (torch.from_numpy(rng.random(batch)) * (lengths - width + 1)).long()
        span = (frame_index >= start[:, None]) & (frame_index < (start + width)[:, None])
        keep &= ~span[:, :, None]
    return features * keep


def class_weights(counts: dict[str, int], labels: LabelSet) -> list[float]:
    """Inverse-frequency loss weights, 1.0 on average over classes; a label with
    no training clips gets weight 0."""
    total = sum(counts.get(code, 0) for code in labels.codes)
    present = sum(1 for code in labels.codes if counts.get(code, 0))
    return [total / (present * counts[code]) if counts.get(code, 0) else 0.0 for code in labels.codes]
