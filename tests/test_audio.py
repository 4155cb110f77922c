import io
import struct

import numpy as np
import pytest
import soundfile as sf

from slc import audio
from slc.config import AudioConfig

NO_TRIM = AudioConfig(trim_silence=False)


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def encode(samples: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "fmt, subtype",
    [
        ("WAV", "PCM_16"),
        ("WAV", "PCM_24"),
        ("WAV", "PCM_32"),
        ("WAV", "FLOAT"),
        ("FLAC", "PCM_16"),
        ("OGG", "VORBIS"),
        pytest.param("MP3", "MPEG_LAYER_III", marks=pytest.mark.skipif(
            "MP3" not in sf.available_formats(), reason="this libsndfile has no MP3")),
    ],
)
def test_formats_decode_to_16k_mono(fmt, subtype):
    data = encode(tone(1.0, 44100, channels=2), 44100, fmt, subtype)
    clip = audio.load(data, NO_TRIM)
    assert clip.dtype == np.float32 and clip.ndim == 1
    assert abs(len(clip) - 16000) <= 1200  # lossy codecs add encoder delay/padding
    assert np.isfinite(clip).all()


def test_44k_stereo_is_downmixed_and_resampled_keeping_pitch():
    clip = audio.load(encode(tone(2.0, 44100, channels=2, freq=1000.0), 44100, "WAV", "PCM_16"), NO_TRIM)
    assert len(clip) == 32000
    spectrum = np.abs(np.fft.rfft(clip))
    assert abs(np.argmax(spectrum) * 16000 / len(clip) - 1000.0) < 2.0
    # channel gains 0.5 and 1.0 of a 0.5 tone -> mean amplitude 0.375
    assert np.max(np.abs(clip)) == pytest.approx(0.375, abs=0.01)


def test_path_and_bytes_give_the_same_clip(tmp_path):
    data = encode(tone(1.0, 16000), 16000, "WAV", "PCM_16")
    path = tmp_path / "a.wav"
    path.write_bytes(data)
    np.testing.assert_array_equal(audio.load(path), audio.load(data))


def test_trim_removes_leading_and_trailing_silence():
    silence = np.zeros((16000, 1), np.float32)
    samples = np.concatenate([silence, tone(1.0, 16000), silence])
    clip = audio.load(encode(samples, 16000, "WAV", "FLOAT"))
    assert abs(len(clip) - 16000) <= 160
    assert len(audio.load(encode(samples, 16000, "WAV", "FLOAT"), NO_TRIM)) == 48000


def test_errors_name_the_file_and_reason(tmp_path):
    path = tmp_path / "zero.wav"
    path.write_bytes(b"")
    with pytest.raises(audio.EmptyAudioError) as caught:
        audio.load(path)
    assert str(path) in str(caught.value) and "empty" in str(caught.value)
    assert caught.value.reason == "empty"


def test_random_bytes_are_undecodable():
    data = np.random.default_rng(0).bytes(5000)
    with pytest.raises(audio.UndecodableAudioError, match="upload.bin: undecodable"):
        audio.load(data, name="upload.bin")


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="this libsndfile has no MP3")
def test_an_mpeg_stream_without_a_whole_frame_is_undecodable_and_not_called_missing(tmp_path):
    """libsndfile's MPEG decoder gives up on such a stream with its message for
    a path that is not a regular file: untrue of a file slc opened, or of bytes."""
    damaged = b"\xff\xfb\x90\x00" + bytes(400)  # one frame header, then nothing of its frame
    path = tmp_path / "damaged.mp3"
    path.write_bytes(damaged)
    for source in (path, damaged):
        with pytest.raises(audio.UndecodableAudioError) as caught:
            audio.load(source, name="damaged.mp3")
        assert "damaged.mp3: undecodable: not a readable audio file (no audio frame could be decoded)" in str(caught.value)


def test_wav_header_cut_off_is_undecodable():
    data = encode(tone(1.0, 16000), 16000, "WAV", "PCM_16")
    with pytest.raises(audio.UndecodableAudioError):
        audio.load(data[:30])


def test_wav_with_data_cut_off_keeps_what_it_holds():
    data = encode(tone(2.0, 16000), 16000, "WAV", "PCM_16")
    clip = audio.load(data[: 44 + 2 * 16000], NO_TRIM)  # header + 1 s of 16-bit samples
    assert len(clip) == 16000
    with pytest.raises(audio.TooShortAudioError, match="0.25 s"):
        audio.load(data[: 44 + 2 * 4000], NO_TRIM)


def test_nan_in_float_wav_is_non_finite():
    samples = tone(1.0, 16000)
    samples[100] = np.nan
    samples[200] = np.inf
    with pytest.raises(audio.NonFiniteAudioError, match="2 samples"):
        audio.load(encode(samples, 16000, "WAV", "FLOAT"))


def test_header_claiming_gigabytes_does_not_allocate_them():
    data = bytearray(encode(tone(1.0, 16000), 16000, "WAV", "PCM_16"))
    struct.pack_into("<I", data, 4, 0xFFFFFFF0)  # RIFF size
    struct.pack_into("<I", data, 40, 0xFFFFFF00)  # data chunk size: ~4 GB
    clip = audio.load(bytes(data), NO_TRIM)
    assert len(clip) == 16000


def test_too_long_is_refused_before_decoding():
    data = encode(tone(3.0, 8000), 8000, "WAV", "PCM_16")
    with pytest.raises(audio.TooLongAudioError, match="3.0 s"):
        audio.load(data, AudioConfig(max_duration_s=2.0))


def test_silence_is_too_short_after_trimming():
    with pytest.raises(audio.TooShortAudioError, match="after trimming"):
        audio.load(encode(np.zeros((32000, 1), np.float32), 16000, "WAV", "PCM_16"))


def test_short_clip_is_too_short():
    with pytest.raises(audio.TooShortAudioError, match="0.30 s"):
        audio.load(encode(tone(0.3, 16000), 16000, "WAV", "PCM_16"))


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(audio.UnreadableAudioError, match="nope.wav"):
        audio.load(tmp_path / "nope.wav")


def test_a_directory_is_unreadable_and_says_it_is_one(tmp_path):
    with pytest.raises(audio.UnreadableAudioError, match="a directory, not an audio file"):
        audio.load(tmp_path)


def test_every_error_is_an_audio_error():
    for cls in (audio.EmptyAudioError, audio.UndecodableAudioError, audio.NonFiniteAudioError,
                audio.TooShortAudioError, audio.TooLongAudioError, audio.UnreadableAudioError):
        assert issubclass(cls, audio.AudioError)


# --- recordings of any length, a block at a time ------------------------------


def speech_like(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    """Tones that come and go, with a second of silence at each end."""
    samples = tone(seconds, rate, channels, freq=330.0)
    envelope = (np.sin(np.arange(len(samples)) * 2 * np.pi * 0.7 / rate) > -0.3).astype(np.float32)
    samples *= envelope[:, None]
    silence = np.zeros((rate, channels), np.float32)
    return np.concatenate([silence, samples, silence])


@pytest.mark.parametrize("rate, channels", [(16000, 1), (44100, 2), (8000, 1)])
def test_streamed_blocks_are_the_samples_load_gives(tmp_path, rate, channels):
    path = tmp_path / "long.wav"
    sf.write(path, speech_like(12.0, rate, channels), rate, subtype="PCM_16")
    blocks = list(audio.stream(path, block_s=1.3))
    assert len(blocks) > 5 and all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    np.testing.assert_allclose(np.concatenate(blocks), audio.load(path, NO_TRIM), atol=1e-6)
    start, end = audio.loud_span(path)
    assert 0 < start < end < sum(map(len, blocks))
    trimmed = audio.load(path)
    assert end - start == len(trimmed)
    np.testing.assert_allclose(np.concatenate(list(audio.stream(path, start=start, end=end, block_s=0.7))), trimmed, atol=1e-6)


def test_loud_span_without_trimming_is_the_whole_recording(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, speech_like(3.0, 16000), 16000, subtype="PCM_16")
    assert audio.loud_span(path, NO_TRIM) == (0, 5 * 16000)


def test_streamed_recordings_fail_as_loaded_ones_do(tmp_path):
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(40 * 16000, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(audio.TooShortAudioError, match="silence.wav: too_short: 0.00 s of audio after trimming"):
        audio.loud_span(silence)
    samples = speech_like(20.0, 16000)
    samples[15 * 16000] = np.nan
    broken = tmp_path / "nan.wav"
    sf.write(broken, samples, 16000, subtype="FLOAT")
    with pytest.raises(audio.NonFiniteAudioError, match=r"nan.wav: non_finite: 1 samples are NaN or infinite between 10.0 s and 20.0 s"):
        audio.loud_span(broken)
    with pytest.raises(audio.UndecodableAudioError, match="notes.txt: undecodable"):
        next(audio.stream(b"just some notes\n" * 20, name="notes.txt"))
