"""Talking to a running endpoint over HTTP with the standard library: for
smoke tests, benchmarks and `slc serve --once`."""

import json
import time
import urllib.error
import urllib.request
from typing import Any


def post_audio(url: str, body: bytes, query: str = "") -> tuple[int, dict[str, Any]]:
    """POST encoded audio to a running endpoint -> (HTTP status, JSON answer)."""
    request = urllib.request.Request(
        f"{url}/v1/classify{'?' + query if query else ''}",
        data=body,
        headers={"Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def wait_until_ready(url: str, timeout_s: float = 60.0) -> None:
    """Return once `url`/readyz answers 200; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass  # the proxy is still starting
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url}/readyz did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)
