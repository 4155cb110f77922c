"""`WS /v1/stream` against the truth: recordings whose language changes at
known times, streamed over a real WebSocket to a Serve deployment of the
oracle bundle (tests/band_oracle.py), whose model is sure of each part's
language. The live `change` events, the stream's `final` timeline and the
offline timeline of the same recording (`--segments`, the HTTP endpoint)
must all put the changes where they are."""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import soundfile as sf
from band_oracle import RATE, recording
from test_serve import Endpoint, deployed
from test_stream import HOP_S, stream

from slc.runtime.classifier import Classifier

# The client sends faster than real time: no lead bound to wait on.
LIMITS = {"max_lead_s": 3600.0, "max_stream_s": 600.0}


@pytest.fixture(scope="module")
def endpoint(ray_session, oracle_bundle) -> Iterator[Endpoint]:
    with deployed(oracle_bundle, stream=LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def de_fr_de() -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """20 s of German, 20 s of French, 20 s of German."""
    return recording([("de", 20.0), ("fr", 20.0), ("de", 20.0)], seed=0)


def _wav(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _spans(segments: list[dict]) -> list[tuple[str, float, float]]:
    return [(s["language"], s["start_s"], s["end_s"]) for s in segments]


def _assert_matches(spans: list[tuple[str, float, float]], truth: list[tuple[str, float, float]], within_s: float) -> None:
    assert [language for language, _, _ in spans] == [language for language, _, _ in truth], spans
    for (_, start, end), (_, true_start, true_end) in zip(spans, truth):
        assert abs(start - true_start) <= within_s and abs(end - true_end) <= within_s, (spans, truth)


def test_de_fr_de_stream_reports_each_change_and_the_timeline_within_one_hop(endpoint, de_fr_de):
    samples, truth = de_fr_de
    events = stream(endpoint.url, samples)
    assert events[0]["type"] == "ready" and events[0]["hop_s"] == HOP_S
    assert not [e for e in events if e["type"] in ("silence", "error")]
    changes = [e for e in events if e["type"] == "change"]
    assert [(c["from"], c["language"]) for c in changes] == [(None, "de"), ("de", "fr"), ("fr", "de")]
    for change, (_, boundary, _) in zip(changes, truth):
        assert abs(change["at_s"] - boundary) <= HOP_S, change
        assert change["time_s"] > change["at_s"] and change["confidence"] > 0.9, change
    # Once a language is in force, every partial names it until the next change.
    for partial in (e for e in events if e["type"] == "partial" and e["time_s"] >= changes[0]["time_s"]):
        in_force = [c for c in changes if c["time_s"] <= partial["time_s"]][-1]
        assert partial["language"] == in_force["language"], partial
    final = events[-1]
    assert final["type"] == "final" and final["duration_s"] == pytest.approx(60.0, abs=0.01)
    _assert_matches(_spans(final["segments"]), truth, HOP_S)


def test_the_offline_timeline_of_the_same_recording_agrees(endpoint, de_fr_de, oracle_bundle, tmp_path):
    samples, truth = de_fr_de
    path = tmp_path / "de-fr-de.wav"
    path.write_bytes(_wav(samples))
    classifier = Classifier(oracle_bundle)
    offline = [(s.language, s.start_s, s.end_s) for s in classifier.classify_file(path, segments=True).segments]
    # Offline windows are `window.hop_s` (2 s) apart: a boundary falls within one of them.
    _assert_matches(offline, truth, classifier.window.hop_s)
    answer = endpoint.post(path.read_bytes(), "segments=true", headers={"Content-Type": "audio/wav"})
    assert answer.status_code == 200, answer.text
    assert _spans(answer.json()["segments"]) == offline
    live = _spans(stream(endpoint.url, samples)[-1]["segments"])
    _assert_matches(live, offline, classifier.window.hop_s)


def test_a_two_second_blip_of_another_language_changes_nothing(endpoint):
    samples, _ = recording([("de", 12.0), ("it", 2.0), ("de", 12.0)], seed=1)
    events = stream(endpoint.url, samples)
    assert [(e["from"], e["language"]) for e in events if e["type"] == "change"] == [(None, "de")]
    assert [s["language"] for s in events[-1]["segments"]] == ["de"]
