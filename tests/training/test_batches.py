import numpy as np
import pyarrow as pa
import torch

from slc.config import TrainConfig
from slc.training.batches import class_weights, collate, spec_augment
from slc.labels import LabelSet
from slc.data.shards import features_column

LABELS = LabelSet(("de", "fr"))


def table(lengths, langs):
    features = [np.full((n, 80), i + 1, np.float32) + np.arange(n)[:, None] / 1000 for i, n in enumerate(lengths)]
    return pa.table({
        "lang": langs,
        "n_frames": pa.array(lengths, pa.int32()),
        "features": features_column(features),
    })


def test_validation_batches_keep_whole_clips_and_pad():
    config = TrainConfig()
    features, lengths, targets = collate(table([50, 120, 80], ["de", "fr", "de"]), LABELS, 3000, False,
                                         np.random.default_rng(0), config)
    assert features.shape == (3, 120, 80)
    assert lengths.tolist() == [50, 120, 80] and targets.tolist() == [0, 1, 0]
    assert (features[0, 50:] == 0).all() and (features[0, :50] != 0).all()
    assert torch.allclose(features[1, :, 0], torch.tensor(2 + np.arange(120) / 1000, dtype=torch.float32), atol=1e-3)


def test_training_batches_crop_to_max_frames_at_random_offsets():
    config = TrainConfig(max_frames=60, time_masks=0, freq_masks=0)
    rng = np.random.default_rng(1)
    starts = set()
    for _ in range(20):
        features, lengths, _ = collate(table([200, 40], ["de", "fr"]), LABELS, 60, True, rng, config)
        assert features.shape == (2, 60, 80) and lengths.tolist() == [60, 40]
        starts.add(round(float(features[0, 0, 0] - 1) * 1000))
    assert len(starts) > 5 and all(0 <= s <= 140 for s in starts)


def test_spec_augment_masks_bands_and_spans_within_valid_frames():
    config = TrainConfig(time_masks=2, time_mask_frames=20, freq_masks=2, freq_mask_bins=10)
    features = torch.ones(4, 300, 80)
    lengths = torch.tensor([300, 200, 100, 50])
    masked = spec_augment(features, lengths, config, np.random.default_rng(0))
    zeroed = 1 - masked.mean().item()
    assert 0.0 < zeroed < 0.5
    for i, n in enumerate(lengths.tolist()):
        zero_frames = (masked[i] == 0).all(dim=1).nonzero().flatten()
        assert (zero_frames < n).all() or len(zero_frames) == 0


def test_class_weights_balance_classes():
    weights = class_weights({"de": 300, "fr": 100}, LABELS)
    assert weights == [400 / (2 * 300), 400 / (2 * 100)]
    assert class_weights({"de": 10}, LABELS) == [1.0, 0.0]
