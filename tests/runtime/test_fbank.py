import numpy as np
import pytest

from slc.config import FeatureConfig
from slc.data.features import Fbank, extract
from slc.runtime.fbank import FrameCache, LogMel, normalize, num_frames

RATE = 16_000


@pytest.fixture(scope="module")
def fbank():
    return Fbank().eval()


@pytest.fixture(scope="module")
def recording(speech_16k):
    """Speech, then quiet noise, then speech: 2.5 clips' worth, odd length."""
    quiet = (np.random.default_rng(0).standard_normal(RATE) * 1e-3).astype(np.float32)
    return np.concatenate([speech_16k, quiet, speech_16k[: len(speech_16k) // 2], quiet[:123]])


def test_frames_equal_the_exported_featuriser(fbank, recording):
    ours = normalize(LogMel()(recording))
    theirs = extract(recording, fbank)
    assert ours.shape == theirs.shape == (num_frames(len(recording)), 80)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_too_short_for_a_frame_gives_no_frames():
    assert LogMel()(np.zeros(399, dtype=np.float32)).shape == (0, 80)


class CountingLogMel(LogMel):
    def __init__(self) -> None:
        super().__init__()
        self.frames = 0

    def __call__(self, samples):
        out = super().__call__(samples)
        self.frames += len(out)
        return out


def test_windows_of_a_growing_recording_equal_each_window_featurised_alone(fbank, recording):
    """A stream's windows: 4 s every 0.5 s, the buffer holding only the last
    window, then a last window ending with the recording (off the frame
    grid). Each equals its clip featurised alone; the frames on the grid are
    computed once."""
    cache = FrameCache(FeatureConfig())
    cache.log_mel = counting = CountingLogMel()
    window, hop = 4 * RATE, RATE // 2
    ends = [*range(RATE, len(recording) + 1, hop), len(recording)]
    for end in ends:
        start = max(0, end - window)
        offset = max(0, end - window - 1000)  # the buffer: the window and a little before it
        features = cache.window(recording[offset:end], offset, start, end)
        np.testing.assert_allclose(features, extract(recording[start:end], fbank), atol=1e-4)
    on_grid = num_frames(ends[-2])
    last_window = num_frames(window)
    assert counting.frames <= on_grid + last_window


def test_a_window_past_the_cached_frames_starts_afresh(fbank, recording):
    cache = FrameCache(FeatureConfig())
    first = cache.window(recording, 0, 0, 2 * RATE)
    later = cache.window(recording, 0, 6 * RATE, 8 * RATE)  # a gap: nothing shared
    np.testing.assert_allclose(first, extract(recording[: 2 * RATE], fbank), atol=1e-4)
    np.testing.assert_allclose(later, extract(recording[6 * RATE : 8 * RATE], fbank), atol=1e-4)


def test_a_config_without_normalisation_gives_the_log_mel_frames(recording):
    config = FeatureConfig(normalize=False)
    cache = FrameCache(config)
    for end in (RATE, 2 * RATE, 3 * RATE):
        features = cache.window(recording, 0, max(0, end - 2 * RATE), end)
    theirs = extract(recording[RATE : 3 * RATE], Fbank(config).eval())
    np.testing.assert_allclose(features, theirs, atol=1e-4)
