"""Streaming audio to `WS /v1/stream` and reading its events: `slc stream`
and the streaming benchmark use this.

A file is decoded a block at a time (`slc.audio.stream`, at 16 kHz mono)
and sent as pcm_s16le; standard input is sent as it comes, raw PCM in the
encoding, rate and channels the caller names (what `arecord -f S16_LE` or
`ffmpeg -f s16le -` write). Events are read while audio is sent.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.sync.client import ClientConnection, connect

from slc import audio
from slc.config import AudioConfig

FRAME_S = 0.1  # audio per binary frame


def file_frames(path: str, frame_s: float = FRAME_S) -> Iterator[bytes]:
    """A recording -> pcm_s16le frames of `frame_s` at 16 kHz mono."""
    config = AudioConfig()
    step = int(frame_s * config.sample_rate)
    carry = np.zeros(0, dtype=np.float32)
    for block in audio.stream(path, config, block_s=1.0):
        carry = np.concatenate([carry, block])
        while len(carry) >= step:
            yield _pcm(carry[:step])
            carry = carry[step:]
    if len(carry):
        yield _pcm(carry)


def _pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


def pipe_frames(pipe: BinaryIO, bytes_per_frame: int, width: int) -> Iterator[bytes]:
    """Raw PCM from a pipe -> frames of whole samples (`width` bytes, all
    channels), at most `bytes_per_frame`, as they arrive. A trailing
    partial sample is dropped."""
    pending = b""
    while chunk := pipe.read1(bytes_per_frame) if hasattr(pipe, "read1") else pipe.read(bytes_per_frame):
        pending += chunk
        whole = len(pending) - len(pending) % width
        if whole:
            yield pending[:whole]
            pending = pending[whole:]


def stream_events(
    url: str,
    frames: Iterable[bytes],
    start: dict[str, Any],
    realtime: bool,
    on_event: Callable[[dict[str, Any]], None],
) -> dict[str, Any] | None:
    """Send `start`, then `frames` (paced at real time when `realtime`,
    from the start message's rate, channels and encoding), then end; each
    event goes to `on_event` as it arrives. Returns the close as
    `{"code": ..., "reason": ...}`, or None after a normal close (1000)."""
    width = {"pcm_s16le": 2, "f32le": 4}[start["encoding"]] * start.get("channels", 1)
    address = url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://") + "/v1/stream"
    with _connected(address) as ws:
        ws.send(json.dumps({"type": "start", **start}))
        reader = threading.Thread(target=_read, args=(ws, on_event), daemon=True)
        reader.start()
        began, sent = time.monotonic(), 0
        try:
            for frame in frames:
                ws.send(frame)
                sent += len(frame) // width
                ahead = sent / start["sample_rate"] - (time.monotonic() - began)
                if realtime and ahead > 0:
                    time.sleep(ahead)
            ws.send(json.dumps({"type": "end"}))
        except ConnectionClosed:
            pass  # the server closed; its reason is read below
        reader.join()
    if ws.close_code in (None, 1000):
        return None
    return {"code": ws.close_code, "reason": ws.close_reason}


@contextlib.contextmanager
def _connected(address: str) -> Iterator[ClientConnection]:
    """A WebSocket to `address`; failing to open one is an OSError or a
    ValueError that names the address and says why."""
    try:
        ws = connect(address, open_timeout=30, close_timeout=10, max_size=None)
    except InvalidURI:
        raise ValueError(f"{address}: not a URL of an endpoint (http://HOST:PORT)") from None
    except InvalidStatus as error:
        status = error.response.status_code
        raise ValueError(f"{address}: the server answered HTTP {status}, not a WebSocket: is it `slc serve`?") from None
    except InvalidHandshake as error:
        raise ValueError(f"{address}: the server did not answer as a WebSocket ({error}): is it `slc serve`?") from None
    except OSError as error:  # TimeoutError among them
        why = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise OSError(f"{address}: cannot connect ({why}); is `slc serve` running there?") from None
    with ws:
        yield ws


def _read(ws: Any, on_event: Callable[[dict[str, Any]], None]) -> None:
    try:
        for message in ws:
            on_event(json.loads(message))
    except ConnectionClosed:
        return


def format_event(event: dict[str, Any]) -> str:
    """One event -> one line for a person."""
    kind = event["type"]
    if kind == "partial":
        ranked = "  ".join(f"{code} {p:.2f}" for code, p in event["probabilities"].items())
        return f"{event['time_s']:7.1f} s  partial  {event['language']:8s} {event['confidence']:.2f}  ({ranked})"
    if kind == "change":
        return f"{event['time_s']:7.1f} s  change   {event['from'] or '-'} -> {event['language']} (from {event['at_s']:.1f} s)"
    if kind == "silence":
        return f"{event['time_s']:7.1f} s  silence"
    if kind == "final":
        lines = [f"final: {event['duration_s']:.1f} s"]
        lines += [f"  {s['start_s']:7.1f} - {s['end_s']:7.1f} s  {s['language']:8s} {s['confidence']:.3f}" for s in event["segments"]]
        return "\n".join(lines)
    if kind == "ready":
        return f"ready: {event['sample_rate']} Hz, {event['window_s']:g} s windows every {event['hop_s']:g} s, {','.join(event['labels'])}"
    return f"{kind}: {event.get('error', '')} {event.get('detail', '')}".rstrip()
