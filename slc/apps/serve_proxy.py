"""JSON errors and a deadline for HTTP requests in Ray Serve's proxy.

When a replica dies with requests in flight, the proxy answers them itself:
it returns without a response, and uvicorn sends a plain-text `Internal
Server Error` 500; an unreachable deployment gets a plain-text 503. This
middleware runs in the proxy and turns those into the application's error
shape `{"error": "replica_failed" | "unavailable", "detail": ...}` with the
same status. JSON responses, and anything else below 500, pass through
untouched and unbuffered.

No HTTP request waits for its replica longer than `REQUEST_TIMEOUT_ENV`
seconds (`DEFAULT_REQUEST_TIMEOUT_S`; 0: no deadline): the middleware hands
Serve the deadline in its per-request header, unless the client sent one,
and Serve cancels the request when it passes. Serve's plain-text 408 for it
becomes a JSON 504 `{"error": "timeout"}`: the gateway, not the client, ran
out of time. WebSocket streams have no deadline.

The proxy loads it through Ray Serve's `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`
(`PROXY_CALLBACK_ENV`), which every node's environment must carry before Ray
starts there: `proxy_environment()` is what a Ray started by this process
needs (see `slc.batch.cluster.init`); `ray start` on a cluster needs it
exported (cluster.yaml does).
"""

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The proxy's own log file (logs/serve/proxy_*.log).
log = logging.getLogger("ray.serve")

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "slc.apps.serve_proxy:middlewares"
# A plain-text error body is quoted in `detail` up to this many bytes.
DETAIL_BYTES = 1000
# Headers of the replaced response worth keeping for the client.
KEPT_HEADERS = (b"retry-after", b"x-request-id")
REQUEST_TIMEOUT_ENV = "SLC_SERVE_REQUEST_TIMEOUT_S"
DEFAULT_REQUEST_TIMEOUT_S = 60.0
# Serve's per-request deadline in seconds (SERVE_HTTP_REQUEST_TIMEOUT_S_HEADER).
TIMEOUT_HEADER = b"x-request-timeout-seconds"
# Serve's status for a request past its deadline, and what the client gets instead.
SERVE_TIMEOUT_STATUS, GATEWAY_TIMEOUT = 408, 504
ERRORS = {503: "unavailable", GATEWAY_TIMEOUT: "timeout"}


def middlewares() -> list[Middleware]:
    """What Serve's proxy calls through `PROXY_CALLBACK`: its extra middlewares."""
    return [Middleware(JsonErrors)]


def proxy_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The environment a starting Ray needs for its proxy to load `middlewares`.
    ValueError for a bad `REQUEST_TIMEOUT_ENV` in `environ`, which the proxy
    would read: here, rather than in the proxy's log."""
    request_timeout_s(environ)
    return {PROXY_CALLBACK_ENV: PROXY_CALLBACK}


def request_timeout_s(environ: Mapping[str, str] = os.environ) -> float:
    """The deadline for HTTP requests that `environ` sets, in seconds (0: none).
    ValueError naming `REQUEST_TIMEOUT_ENV` when it is not a number >= 0."""
    text = environ.get(REQUEST_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_REQUEST_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise ValueError(f"{REQUEST_TIMEOUT_ENV} must be a number of seconds >= 0 (0: no deadline), got {text!r}")
    return seconds


def _with_deadline(scope: Scope, seconds: float) -> Scope:
    """`scope` whose headers give Serve `seconds` as the request's deadline,
    unless the client gave one or `seconds` is 0."""
    headers = list(scope.get("headers", []))
    if not seconds or any(name.lower() == TIMEOUT_HEADER for name, _ in headers):
        return scope
    return {**scope, "headers": [*headers, (TIMEOUT_HEADER, f"{seconds:g}".encode())]}


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    kind = next((value for name, value in headers if name.lower() == b"content-type"), b"")
    media = kind.split(b";")[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


def _replaces(status: int, headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a response starting with `status` and `headers` is the proxy's
    own plain-text error, which the client gets as JSON."""
    return (status >= 500 or status == SERVE_TIMEOUT_STATUS) and not _is_json(headers)


async def _send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    status = GATEWAY_TIMEOUT if status == SERVE_TIMEOUT_STATUS else status
    body = json.dumps({"error": ERRORS.get(status, "replica_failed"), "detail": detail}).encode()
    kept = [(name, value) for name, value in headers if name.lower() in KEPT_HEADERS]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *kept,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class JsonErrors:
    """ASGI middleware: a 5xx that is not JSON, or no response at all,
    becomes a JSON error with the same status (500 when there was none);
    Serve's 408 for a request past its deadline becomes a JSON 504."""

    def __init__(self, app: ASGIApp, timeout_s: float | None = None) -> None:
        self.app = app
        self.timeout_s = request_timeout_s() if timeout_s is None else timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = f"{scope.get('method', '')} {scope.get('path', '')}"
        scope = _with_deadline(scope, self.timeout_s)
        state: dict[str, Any] = {"started": False, "held": None, "body": b"", "done": False}

        async def relay(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if _replaces(message["status"], message.get("headers", [])):
                    state["held"] = message  # replaced once its (short) body is read
                    return
            elif state["held"] is not None and message["type"] == "http.response.body":
                state["body"] = (state["body"] + message.get("body", b""))[:DETAIL_BYTES]
                if not message.get("more_body", False):
                    await self._replace(send, where, state)
                return
            await send(message)

        try:
            await self.app(scope, receive, relay)
        except Exception:
            if state["started"] and state["held"] is None:
                raise  # part of a response went out already: nothing to replace
            log.exception("%s: the proxy failed before answering", where)
        if not state["started"]:
            detail = f"{where}: the replica serving this request stopped before answering; retry the request"
            await _send_json(send, 500, detail, [])
        elif state["held"] is not None and not state["done"]:
            await self._replace(send, where, state)

    @staticmethod
    async def _replace(send: Send, where: str, state: dict[str, Any]) -> None:
        held = state["held"]
        text = state["body"].decode("utf-8", errors="replace").strip()
        detail = f"{where}: {text or 'the server failed before answering'}"
        state["done"] = True
        await _send_json(send, held["status"], detail, held.get("headers", []))
