"""One decode step: every item becomes a clip or a reason naming the file."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow.fs as pafs
import soundfile as sf

from slc import audio
from slc.batch import decode as decode_module
from slc.batch.decode import decode_items
from slc.batch.inputs import item
from slc.config import AudioConfig


def _tone(path, seconds: float = 1.0) -> None:
    t = np.arange(int(16000 * seconds)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)


def test_clips_and_reasons_for_every_kind_of_item(tmp_path):
    _tone(tmp_path / "tone.wav")
    (tmp_path / "zero.wav").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + b"\xff" * 60)
    items = [
        item(str(tmp_path / "tone.wav"), 0, str(tmp_path / "tone.wav")),
        item(str(tmp_path / "zero.wav"), 0, str(tmp_path / "zero.wav")),
        item(str(tmp_path / "junk.wav"), 0, str(tmp_path / "junk.wav")),
        item(str(tmp_path / "absent.wav"), 0, str(tmp_path / "absent.wav")),
        item(str(tmp_path / "a.tar"), 0, str(tmp_path / "a.tar"), error="no_audio", detail=f"{tmp_path}/a.tar: no"),
    ]
    decoded = decode_items(items, [pafs.LocalFileSystem()], AudioConfig())
    assert [d.reason for d in decoded] == [None, "empty", "undecodable", "unreadable", "no_audio"]
    assert decoded[0].ok and decoded[0].clip.dtype == np.float32 and len(decoded[0].clip) > 8000
    assert all(d.detail.startswith(d.path) for d in decoded[1:])


def test_an_unexpected_failure_is_a_row_and_a_logged_traceback(tmp_path, monkeypatch, caplog):
    for name in ("a.wav", "b.wav"):
        _tone(tmp_path / name)
    real = audio.load

    def flaky(data, config, name):
        if name.endswith("b.wav"):
            raise RuntimeError("decoder crashed")
        return real(data, config, name=name)

    monkeypatch.setattr(decode_module.audio, "load", flaky)
    items = [item(str(tmp_path / n), 0, str(tmp_path / n)) for n in ("a.wav", "b.wav")]
    with caplog.at_level(logging.ERROR, logger="slc.batch.decode"):
        good, bad = decode_items(items, [pafs.LocalFileSystem()], AudioConfig())
    assert good.ok
    assert (bad.reason, bad.detail) == ("failed", f"{tmp_path}/b.wav: RuntimeError: decoder crashed")
    assert "decoder crashed" in caplog.text and "Traceback" in caplog.text
