"""`WS /v1/stream` on a real Serve deployment (serve_config.yaml's, as in
test_serve.py): a German -> English -> German recording streamed over a real
WebSocket, and a fuzzing client that breaks the protocol every way it can.

The small bundle knows only de and en and tells them apart only weakly (0.55
to 0.75 per window), too weakly to confirm changes against the truth: the
stream's events are checked against the same session scored here, and the
smoothing against the truth in test_stream_session.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from conftest import espeak_wav
from test_serve import Endpoint, deployed
from starlette.websockets import WebSocketState
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from slc.apps.stream import StreamHub
from slc.apps.stream_session import StreamSession, StreamStart
from slc.audio import trim_silence
from slc.config import FeatureConfig, StreamConfig, WindowConfig
from slc.runtime.classifier import Classifier

RATE = 16000
HOP_S = 0.5
LIMITS = {"max_streams": 4, "idle_timeout_s": 1.0, "max_frame_bytes": 65536, "max_stream_s": 120.0}
GERMAN = [
    "Guten Morgen. Der Zug nach Zürich fährt heute um halb neun vom dritten Gleis ab.",
    "Am Wochenende wollen wir mit den Kindern in die Berge fahren und dort wandern.",
]
ENGLISH = "The weather will be sunny in the morning, but heavy rain is expected later in the afternoon."


@pytest.fixture(scope="module")
def endpoint(ray_session, small_bundle) -> Iterator[Endpoint]:
    with deployed(small_bundle, max_duration_s=120, stream=LIMITS) as running:
        yield running


def _speech(text: str, voice: str) -> np.ndarray:
    samples, rate = sf.read(io.BytesIO(espeak_wav(text, voice, rate=150)), dtype="float32")
    return trim_silence(soxr.resample(samples, rate, RATE).astype(np.float32), RATE, 40)


@pytest.fixture(scope="module")
def recording() -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """German, English, German (espeak-ng, each part repeated to ~10 s) at
    16 kHz -> the samples and the truth, (language, start_s, end_s)."""
    parts = [("de", _speech(GERMAN[0], "de")), ("en", _speech(ENGLISH, "en")), ("de", _speech(GERMAN[1], "de"))]
    pieces, truth, at = [], [], 0.0
    for language, clip in parts:
        clip = np.tile(clip, int(np.ceil(10 * RATE / len(clip))))[: 10 * RATE]
        pieces.append(clip)
        truth.append((language, at, at + len(clip) / RATE))
        at += len(clip) / RATE
    return np.concatenate(pieces), truth


def stream(url: str, samples: np.ndarray, rate: int = RATE, frame_s: float = 0.2, **start) -> list[dict]:
    """Stream `samples` as pcm_s16le frames, then end -> every event the server sent."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(frame_s * rate) * 2
    events = []
    with connect(url.replace("http", "ws") + "/v1/stream", open_timeout=30, close_timeout=10) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": rate, "encoding": "pcm_s16le", "hop_s": HOP_S, **start}))
        events.append(json.loads(ws.recv(timeout=30)))
        for at in range(0, len(pcm), step):
            ws.send(pcm[at : at + step])
        ws.send(json.dumps({"type": "end"}))
        try:
            while True:
                events.append(json.loads(ws.recv(timeout=60)))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1000, closed
    return events


def local_events(classifier: Classifier, samples: np.ndarray) -> list[dict]:
    """The events a StreamSession earns here, scored by `classifier`, for
    `samples` fed as `stream` feeds them."""
    start = StreamStart(RATE, "pcm_s16le", hop_s=HOP_S)
    session = StreamSession(start, StreamConfig(**LIMITS), classifier.window, classifier.labels.codes, classifier.feature_config)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    step, windows = int(0.2 * RATE) * 2, []
    for at in range(0, len(pcm), step):
        windows += session.feed(pcm[at : at + step])
    events = []
    for start_, end, clip, features in windows + session.finish():
        scores = classifier.probabilities_of_features([features])[0] if session.speech(clip) else None
        events += session.observe(start_, end, scores)
    return events + [session.final()]


def test_a_de_en_de_stream_gets_the_events_and_timeline_of_the_shared_smoothing(endpoint, recording, small_bundle):
    samples, truth = recording
    events = stream(endpoint.url, samples)
    assert events[0]["type"] == "ready" and events[0]["hop_s"] == HOP_S and events[-1]["type"] == "final"
    partials = [e for e in events if e["type"] == "partial"]
    assert np.allclose(np.diff([p["time_s"] for p in partials]), HOP_S)
    assert partials[0]["time_s"] == StreamConfig().min_audio_s
    classifier = Classifier(small_bundle)
    wanted = local_events(classifier, samples)
    assert [e["type"] for e in events[1:]] == [e["type"] for e in wanted]
    for got, want in zip(events[1:], wanted):
        if got["type"] == "partial":
            assert got["language"] == want["language"] and got["time_s"] == want["time_s"]
            assert got["confidence"] == pytest.approx(want["confidence"], abs=1e-3)
        else:
            assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True) or got["type"] == "final"
    segments, want_segments = events[-1]["segments"], wanted[-1]["segments"]
    assert [(s["language"], s["start_s"], s["end_s"]) for s in segments] == [
        (s["language"], s["start_s"], s["end_s"]) for s in want_segments
    ]
    assert segments[0]["start_s"] == 0 and segments[-1]["end_s"] == pytest.approx(truth[-1][2], abs=0.01)


def test_44k_stereo_with_silence_and_noise_is_resampled_and_gated(endpoint, recording):
    samples, truth = recording
    rng = np.random.default_rng(0)
    quiet = np.zeros(3 * RATE, dtype=np.float32)
    noise = (rng.standard_normal(3 * RATE) * 0.05).astype(np.float32)
    mono = np.concatenate([quiet, noise, samples[: int(truth[0][2] * RATE)]])
    stereo = np.repeat(soxr.resample(mono, RATE, 44100)[:, None], 2, axis=1)
    events = stream(endpoint.url, stereo.reshape(-1), rate=44100, channels=2, frame_s=0.1)
    before_speech = [e for e in events if e["type"] in ("partial", "silence") and e["time_s"] <= 6.0]
    assert before_speech and all(e["type"] == "silence" for e in before_speech), before_speech
    assert all(e["at_s"] >= 6.0 - HOP_S for e in events if e["type"] == "change")
    assert events[-1]["duration_s"] == pytest.approx(len(mono) / RATE, abs=0.01)


# --- a fuzzing client: every way to break the protocol ----------------------

START = json.dumps({"type": "start", "sample_rate": RATE, "encoding": "pcm_s16le"})


def closing(url: str, messages: list, wait_s: float = 0.0) -> tuple[int, dict, list[dict]]:
    """Send `messages` (str: text, bytes: binary), wait, read to the close ->
    (close code, JSON close reason, events)."""
    events = []
    with connect(url.replace("http", "ws") + "/v1/stream", open_timeout=30, max_size=None) as ws:
        try:
            for message in messages:
                ws.send(message)
            time.sleep(wait_s)
            while True:
                events.append(json.loads(ws.recv(timeout=30)))
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, f"no close frame from the server: {closed}"
            return closed.rcvd.code, json.loads(closed.rcvd.reason), events
    raise AssertionError("unreachable")


FAULTS = {
    "start is not JSON": ([b"\x00\x01"], 1008, "bad_start"),
    "start is binary": ([b"\x00\x01"], 1008, "bad_start"),
    "start lacks the rate": (['{"encoding": "pcm_s16le"}'], 1008, "bad_start"),
    "start has a field too many": ([START[:-1] + ', "x": 1}'], 1008, "bad_start"),
    "text where audio belongs": ([START, "hello"], 1003, "text_not_audio"),
    "half a sample": ([START, b"\x00\x01\x02"], 1003, "wrong_encoding"),
    "int16 sent as f32le": ([START.replace("pcm_s16le", "f32le"), (np.ones(800) * 20000).astype("<i2").tobytes()], 1003, "wrong_encoding"),
    "frame over the limit": ([START, bytes(65536 + 2)], 1009, "frame_too_big"),
}  # fmt: skip
FAULTS["start is not JSON"] = (["{not json"], 1008, "bad_start")


@pytest.mark.parametrize("fault", list(FAULTS))
def test_each_protocol_fault_closes_with_its_code_and_a_json_reason(endpoint, fault):
    messages, code, error = FAULTS[fault]
    got_code, reason, events = closing(endpoint.url, messages)
    assert (got_code, reason) == (code, {"error": error})
    assert events[-1]["type"] == "error" and events[-1]["error"] == error and events[-1]["detail"]


def test_an_idle_stream_is_closed_and_a_replica_holds_at_most_its_streams(endpoint):
    assert closing(endpoint.url, [START], wait_s=LIMITS["idle_timeout_s"] + 0.5)[:2] == (1008, {"error": "idle"})
    url = endpoint.url.replace("http", "ws") + "/v1/stream"
    with contextlib.ExitStack() as streams:
        for _ in range(LIMITS["max_streams"]):
            ws = streams.enter_context(connect(url, open_timeout=30))
            ws.send(START)
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        assert closing(endpoint.url, [START])[:2] == (1013, {"error": "busy"})


class ScriptedSocket:
    """The client side of a WebSocket as `StreamHub.run` sees it: messages
    given in advance, what the server sends kept."""

    def __init__(self, messages: list) -> None:
        self.incoming = [{"type": "websocket.receive", **({"text": m} if isinstance(m, str) else {"bytes": m})}
                         for m in messages]  # fmt: skip
        self.sent: list[dict] = []
        self.closed: tuple[int, str] | None = None
        self.client_state = WebSocketState.CONNECTED

    async def accept(self) -> None:
        pass

    async def receive(self) -> dict:
        return self.incoming.pop(0) if self.incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send_json(self, data: dict) -> None:
        self.sent.append(data)

    async def close(self, code: int, reason: str = "") -> None:
        self.closed, self.client_state = (code, reason), WebSocketState.DISCONNECTED


def test_a_failure_of_the_server_closes_the_stream_with_1011_and_a_json_reason(speech_16k):
    async def broken_model(features: np.ndarray) -> np.ndarray:
        raise RuntimeError("the model failed")

    hub = StreamHub(StreamConfig(), WindowConfig(), ("de", "en"), FeatureConfig(), broken_model)
    socket = ScriptedSocket([START, (speech_16k * 32767).astype("<i2").tobytes()])
    asyncio.run(hub.run(socket))
    assert socket.closed == (1011, json.dumps({"error": "internal"}))
    assert socket.sent[-1]["type"] == "error" and socket.sent[-1]["error"] == "internal"
    assert hub.open == 0


def test_random_messages_never_crash_a_stream_or_the_replica(endpoint, recording):
    rng = np.random.default_rng(7)
    pcm = (recording[0][: 2 * RATE] * 32767).astype("<i2").tobytes()
    pieces = [START, '{"type": "end"}', "", "{}", "null", '{"type": "start"}', b"", pcm[:3], pcm[:4000], rng.bytes(70000)]
    for trial in range(30):
        messages = [pieces[i] for i in rng.integers(0, len(pieces), int(rng.integers(1, 5)))]
        code, reason, events = closing(endpoint.url, messages, wait_s=0.1 if trial % 10 else LIMITS["idle_timeout_s"] + 0.5)
        assert code in (1000, 1003, 1008, 1009), (messages, code, reason)
        assert code == 1000 or set(reason) == {"error"}
    events = stream(endpoint.url, recording[0][: 12 * RATE])
    assert events[-1]["type"] == "final"


# --- `slc stream`: a file, or raw PCM on standard input ---------------------


def test_slc_stream_prints_the_events_of_a_file_and_of_raw_pcm_on_stdin(endpoint, recording, tmp_path):
    samples = recording[0][: 12 * RATE]
    path = tmp_path / "recording.wav"
    sf.write(path, soxr.resample(samples, RATE, 22050), 22050)
    slc = [sys.executable, "-m", "slc.apps.cli", "stream", "--url", endpoint.url]
    done = subprocess.run([*slc, str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ready: 16000 Hz") and " partial " in lines[2] and lines[-2].startswith("final: 12.0 s")
    pcm = (samples * 32767).astype("<i2").tobytes()
    done = subprocess.run([*slc, "-", "--json", "--rate", "16000"], input=pcm, capture_output=True, timeout=120, check=True)
    events = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert events[-1]["type"] == "final" and events[-1]["duration_s"] == pytest.approx(12.0, abs=0.01)
    refused = subprocess.run([*slc, "-", "--encoding", "f32le"], input=pcm, capture_output=True, text=False, timeout=120)
    assert refused.returncode == 2 and b"1003" in refused.stderr and b"wrong_encoding" in refused.stderr
    # libmpg123 writes notes to stderr as it gives up on a damaged MP3: they go to a log slc names.
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(b"\xff\xfb\x90\x00" + bytes(400))
    done = subprocess.run([*slc, str(damaged)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    error, named = done.stderr.splitlines()
    assert error == f"error: {damaged}: undecodable: not a readable audio file (no audio frame could be decoded)"
    assert "libmpg123" in Path(named.removeprefix("slc: decoder messages: ")).read_text()


def test_streaming_to_an_address_with_no_endpoint_names_it_and_says_why():
    from slc.apps.serve_launcher import free_port
    from slc.apps.stream_client import stream_events

    start = {"sample_rate": RATE, "encoding": "pcm_s16le"}
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(OSError, match=r"ws://127.0.0.1:\d+/v1/stream: cannot connect \(Connection refused\)"):
        stream_events(url, [], start, realtime=False, on_event=print)
    with plain_http_server() as other:
        with pytest.raises(ValueError, match=rf"{other}/v1/stream: the server answered HTTP 501, not a WebSocket"):
            stream_events(other.replace("ws://", "http://"), [], start, realtime=False, on_event=print)


@contextlib.contextmanager
def plain_http_server() -> Iterator[str]:
    """An HTTP server that answers every GET with 501 (no WebSocket), on a free port: its ws:// URL."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
