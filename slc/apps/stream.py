"""`WS /v1/stream`: live language detection over a WebSocket.

    client -> {"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le", "channels": 1, ...}
    server -> {"type": "ready", ...}
    client -> binary frames of raw PCM, any size up to `max_frame_bytes`, whole samples
    server -> {"type": "partial" | "silence" | "change", ...} as the audio arrives
    client -> {"type": "end"}
    server -> {"type": "final", "segments": [...]}, then closes (1000)

A stream that breaks the protocol gets an `{"type": "error", "error": ...,
"detail": ...}` event and a close with code 1003 (text where audio belongs,
audio not in the stream's encoding), 1008 (bad start message, idle, too
long), 1009 (frame too big), 1011 (the server failed: a bug, logged) or
1013 (the replica holds its most streams),
the reason being `{"error": ...}` in JSON.

The replica reads a stream's next frame only once the windows of the last
one are classified, and not at all while the client is more than
`max_lead_s` ahead of real time: a faster client waits in TCP's buffers.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from slc.apps.stream_session import (
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    TOO_BIG,
    TRY_AGAIN_LATER,
    UNSUPPORTED_DATA,
    StreamClosed,
    StreamSession,
    StreamStart,
    Window,
)
from slc.config import FeatureConfig, StreamConfig, WindowConfig

log = logging.getLogger(__name__)

# A window's features (slc.runtime.fbank) -> its probabilities, `float32[labels]`
# (batched by the caller's queue).
Scorer = Callable[[np.ndarray], Awaitable[np.ndarray]]


class StreamHub:
    """A replica's streams: the limit on how many run at once and the loop
    each runs."""

    def __init__(
        self,
        config: StreamConfig,
        window: WindowConfig,
        codes: Sequence[str],
        features: FeatureConfig,
        score: Scorer,
        threshold: float | None = None,
        open_set: bool = True,
    ) -> None:
        self.config, self.window, self.codes, self.features, self.score = config, window, tuple(codes), features, score
        self.threshold, self.open_set = threshold, open_set  # the bundle's open-set answer (StreamSession)
        self.open = 0

    async def run(self, websocket: WebSocket) -> None:
        """Serve one WebSocket from accept to close."""
        await websocket.accept()
        if self.open >= self.config.max_streams:
            await _close(websocket, StreamClosed(
                TRY_AGAIN_LATER, "busy", f"this replica holds its most streams ({self.config.max_streams}); try again later"
            ))  # fmt: skip
            return
        self.open += 1
        try:
            await self._converse(websocket)
        except StreamClosed as closed:
            await _close(websocket, closed)
        except TimeoutError:
            await _close(websocket, StreamClosed(
                POLICY_VIOLATION, "idle", f"no message for {self.config.idle_timeout_s:g} s"
            ))  # fmt: skip
        except WebSocketDisconnect:
            pass  # the client left; nobody to tell
        except Exception:
            log.exception("a stream failed")
            await _close(websocket, StreamClosed(INTERNAL_ERROR, "internal", "the server failed; see its log"))
        finally:
            self.open -= 1

    async def _converse(self, websocket: WebSocket) -> None:
        first = await self._receive(websocket)
        if first.get("text") is None:
            raise StreamClosed(POLICY_VIOLATION, "bad_start", "start message: expected JSON text, got a binary frame")
        start = StreamStart.parse(first["text"], self.codes)
        session = StreamSession(start, self.config, self.window, self.codes, self.features, self.threshold, self.open_set)
        await websocket.send_json({
            "type": "ready", "sample_rate": self.features.sample_rate, "window_s": self.window.window_s, "hop_s": session.hop_s,
            "labels": [c for c, keep in zip(self.codes, session.keep) if keep],
        })  # fmt: skip
        began = time.monotonic()
        while True:
            ahead = session.received_s - (time.monotonic() - began) - self.config.max_lead_s
            if ahead > 0:
                await asyncio.sleep(ahead)
            message = await self._receive(websocket)
            if message.get("bytes") is not None:
                if len(message["bytes"]) > self.config.max_frame_bytes:
                    raise StreamClosed(
                        TOO_BIG, "frame_too_big",
                        f"a frame of {len(message['bytes'])} bytes; at most {self.config.max_frame_bytes} allowed",
                    )  # fmt: skip
                await self._events(websocket, session, session.feed(message["bytes"]))
            elif _is_end(message.get("text")):
                await self._events(websocket, session, session.finish())
                await websocket.send_json(session.final())
                await websocket.close(1000)
                return
            else:
                raise StreamClosed(
                    UNSUPPORTED_DATA, "text_not_audio",
                    'expected a binary frame of audio or {"type": "end"}, got text',
                )  # fmt: skip

    async def _receive(self, websocket: WebSocket) -> dict[str, Any]:
        """The next message; WebSocketDisconnect when the client closed,
        TimeoutError after `idle_timeout_s` without one."""
        message = await asyncio.wait_for(websocket.receive(), self.config.idle_timeout_s)
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def _events(self, websocket: WebSocket, session: StreamSession, windows: list[Window]) -> None:
        """Windows -> gate -> model -> events, sent in the windows' order."""
        speech = [session.speech(w.clip) for w in windows]
        scores = iter(await asyncio.gather(*(self.score(w.features) for w, s in zip(windows, speech) if s)))
        for w, s in zip(windows, speech):
            for event in session.observe(w.start, w.end, next(scores) if s else None):
                await websocket.send_json(event)


def _is_end(text: str | None) -> bool:
    try:
        return text is not None and json.loads(text) == {"type": "end"}
    except ValueError:
        return False


async def _close(websocket: WebSocket, closed: StreamClosed) -> None:
    """Tell the client why (an error event), then close with the code and a
    short JSON reason (a close reason holds at most 123 bytes)."""
    if websocket.client_state != WebSocketState.CONNECTED:
        return
    try:
        await websocket.send_json({"type": "error", "error": closed.error, "detail": closed.detail})
        await websocket.close(closed.code, json.dumps({"error": closed.error}))
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client left meanwhile
