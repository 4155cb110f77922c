"""JSON errors from Ray Serve's HTTP proxy, not only from the application.

When a replica dies with requests in flight, the proxy answers them itself:
it returns without a response, and uvicorn sends a plain-text `Internal
Server Error` 500; an unreachable deployment gets a plain-text 503. This
middleware runs in the proxy and turns those into the application's error
shape `{"error": "replica_failed" | "unavailable", "detail": ...}` with the
same status. JSON responses, and anything below 500, pass through untouched
and unbuffered.

The proxy loads it through Ray Serve's `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`
(`PROXY_CALLBACK_ENV`), which every node's environment must carry before Ray
starts there: `with_json_errors()` sets it for a Ray started by this process;
`ray start` on a cluster needs it exported (cluster.yaml does).
"""

import json
import logging
import os
from collections.abc import MutableMapping
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


def middlewares() -> list[Middleware]:
    """What Serve's proxy calls through `PROXY_CALLBACK`: its extra middlewares."""
    return [Middleware(JsonErrors)]


def with_json_errors(environ: MutableMapping[str, str] = os.environ) -> None:
    """Point Serve's proxy callback at `middlewares` in `environ`, unless it
    names a callback already. Call it before Ray starts: the proxy inherits
    the environment of the node it runs on."""
    environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)


def _is_json(headers: list[tuple[bytes, bytes]]) -> bool:
    kind = next((value for name, value in headers if name.lower() == b"content-type"), b"")
    media = kind.split(b";")[0].strip().lower()
    return media == b"application/json" or media.endswith(b"+json")


async def _send_json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    error = "unavailable" if status == 503 else "replica_failed"
    body = json.dumps({"error": error, "detail": detail}).encode()
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
    becomes a JSON error with the same status (500 when there was none)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        where = f"{scope.get('method', '')} {scope.get('path', '')}"
        state: dict[str, Any] = {"started": False, "held": None, "body": b"", "done": False}

        async def relay(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                if message["status"] >= 500 and not _is_json(message.get("headers", [])):
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
