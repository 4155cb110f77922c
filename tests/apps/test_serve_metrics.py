"""What operators rely on around the endpoint: its Prometheus metrics, read
from the node's metrics export port after a few requests, and the proxy's
errors in the application's JSON shape."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path

import pytest
import requests
from conftest import espeak_wav

from slc.apps.serve_launcher import free_port, running
from slc.apps.serve_proxy import (
    DEFAULT_REQUEST_TIMEOUT_S,
    PROXY_CALLBACK,
    PROXY_CALLBACK_ENV,
    REQUEST_TIMEOUT_ENV,
    TIMEOUT_HEADER,
    JsonErrors,
    middlewares,
    proxy_environment,
    request_timeout_s,
)
from slc.config import ServeConfig

# --- the proxy's errors: JsonErrors on a bare ASGI app ------------------------


def _app(status: int | None, body: bytes = b"", kind: bytes = b"text/plain", chunks: int = 1):
    """An ASGI app answering `status` with `body` in `chunks` parts, or
    returning without an answer (None), as Serve's proxy does when the
    replica died."""

    async def app(scope, receive, send):
        if status is None:
            return
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", kind), (b"x-request-id", b"r1")]})
        size = -(-len(body) // chunks) or 1
        parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
        for n, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": n < len(parts) - 1})

    return app


def _call(app, path: str = "/v1/classify") -> tuple[int, dict[bytes, bytes], bytes, int]:
    """(status, headers, body, messages sent) of one POST through `app`."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": path, "headers": []}, receive, send))
    (start,) = [m for m in sent if m["type"] == "http.response.start"]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, len(sent)


def test_a_request_whose_replica_died_gets_a_json_500():
    status, headers, body, _ = _call(JsonErrors(_app(None)))
    answer = json.loads(body)
    assert status == 500 and headers[b"content-type"] == b"application/json"
    assert answer["error"] == "replica_failed" and answer["detail"].startswith("POST /v1/classify: ")
    assert int(headers[b"content-length"]) == len(body)


@pytest.mark.parametrize(
    ("status", "error"), [(500, "replica_failed"), (502, "replica_failed"), (503, "unavailable")]
)
def test_a_plain_text_5xx_becomes_json_with_the_same_status_and_its_text(status, error):
    text = b"Deployment 'LanguageClassifier' is unavailable because it has no replicas."
    got, headers, body, _ = _call(JsonErrors(_app(status, text, chunks=3)))
    assert got == status
    assert json.loads(body) == {"error": error, "detail": f"POST /v1/classify: {text.decode()}"}
    assert headers[b"x-request-id"] == b"r1"


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (500, b'{"error": "model_failed", "detail": "clip.wav: ..."}', b"application/json"),
        (200, b'{"language": "de"}', b"application/json"),
        (200, b"<html>page</html>", b"text/html; charset=utf-8"),
        (404, b"Not Found", b"text/plain"),
    ],
)
def test_json_errors_and_answers_below_500_pass_unchanged_and_unbuffered(status, body, kind):
    got, headers, passed, messages = _call(JsonErrors(_app(status, body, kind, chunks=2)))
    assert (got, headers[b"content-type"], passed) == (status, kind, body)
    assert messages == 3  # start and both body parts, as the app sent them


def _deadline_seen(middleware_args: dict, scope_type: str = "http", headers=()) -> list[bytes]:
    """The deadline headers Serve's proxy finds in a request passed through JsonErrors."""
    seen = []

    async def app(scope, receive, send):
        seen.extend(value for name, value in scope["headers"] if name == TIMEOUT_HEADER)

    async def send(message):
        pass

    scope = {"type": scope_type, "method": "POST", "path": "/v1/classify", "headers": list(headers)}
    asyncio.run(JsonErrors(app, **middleware_args)(scope, None, send))
    return seen


def test_http_requests_get_a_deadline_unless_the_client_set_one_and_streams_get_none(monkeypatch):
    monkeypatch.delenv(REQUEST_TIMEOUT_ENV, raising=False)
    assert _deadline_seen({}) == [f"{DEFAULT_REQUEST_TIMEOUT_S:g}".encode()]
    monkeypatch.setenv(REQUEST_TIMEOUT_ENV, "12.5")
    assert _deadline_seen({}) == [b"12.5"]
    assert _deadline_seen({}, headers=[(TIMEOUT_HEADER, b"300")]) == [b"300"]
    assert _deadline_seen({"timeout_s": 0}) == []
    assert _deadline_seen({}, scope_type="websocket") == []


def test_serves_408_for_a_request_past_its_deadline_becomes_a_json_504():
    text = b"Request 3f1a timed out after 20.0s."
    status, headers, body, _ = _call(JsonErrors(_app(408, text), timeout_s=20))
    assert status == 504 and headers[b"content-type"] == b"application/json"
    assert json.loads(body) == {"error": "timeout", "detail": f"POST /v1/classify: {text.decode()}"}


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_bad_deadline_is_refused_naming_the_variable(value):
    with pytest.raises(ValueError, match=f"{REQUEST_TIMEOUT_ENV} must be a number of seconds >= 0"):
        request_timeout_s({REQUEST_TIMEOUT_ENV: value})
    with pytest.raises(ValueError, match=REQUEST_TIMEOUT_ENV):
        proxy_environment({REQUEST_TIMEOUT_ENV: value})
    assert request_timeout_s({REQUEST_TIMEOUT_ENV: "0"}) == 0
    assert request_timeout_s({}) == DEFAULT_REQUEST_TIMEOUT_S


def test_the_proxy_callback_is_importable_and_named_for_a_starting_ray():
    module, name = PROXY_CALLBACK.split(":")
    assert getattr(__import__(module, fromlist=[name]), name) is middlewares
    assert [m.cls for m in middlewares()] == [JsonErrors]
    assert proxy_environment({}) == {PROXY_CALLBACK_ENV: PROXY_CALLBACK}


# --- metrics from a running endpoint ----------------------------------------


def _samples(replica: str) -> dict[str, dict[tuple, float]]:
    """Metric name -> {tags without Ray's own: value} for `replica`, from
    every node's metrics export port."""
    import ray
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, dict[tuple, float]] = defaultdict(dict)
    for node in ray.nodes():
        if not node["Alive"]:
            continue
        text = requests.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ray_slc_") and replica in sample.labels.get("replica", ""):
                    tags = tuple(sorted((k, v) for k, v in sample.labels.items() if k in ("route", "status", "language", "le")))
                    found[sample.name][tags] = sample.value
    return found


def _wait_for_metrics(replica: str, done, timeout_s: float = 90) -> dict:
    """Samples once `done(samples)` holds; the replica's metrics agent pushes them every few seconds."""
    deadline = time.monotonic() + timeout_s
    while not done(samples := _samples(replica)):
        assert time.monotonic() < deadline, f"metrics never showed the requests: {dict(samples)}"
        time.sleep(1)
    return samples


def test_metrics_count_requests_by_status_and_language_audio_latency_and_batches(ray_session, small_bundle):
    wav = espeak_wav("Guten Morgen. Der Zug fährt heute um halb neun ab.", "de")
    with running(small_bundle, ServeConfig(port=free_port()), show_logs=False) as url:
        replica = requests.get(f"{url}/readyz", timeout=30).json()["replica"]
        answers = [requests.post(f"{url}/v1/classify", files={"file": ("clip.wav", wav)}, timeout=60).json() for _ in range(3)]
        assert requests.post(f"{url}/v1/classify", data=b"", timeout=60).status_code == 400
        assert requests.get(f"{url}/wp-login.php", timeout=30).status_code == 404
        languages = {a["language"] for a in answers}

        def done(samples) -> bool:
            requests_total = samples.get("ray_slc_requests_total", {})
            return requests_total.get((("route", "/v1/classify"), ("status", "200"))) == 3 and (
                (("route", "other"), ("status", "404")) in requests_total
            )

        samples = _wait_for_metrics(replica, done)
    requests_total = samples["ray_slc_requests_total"]
    assert requests_total[(("route", "/v1/classify"), ("status", "400"))] == 1
    assert requests_total[(("route", "other"), ("status", "404"))] == 1
    assert {dict(k)["language"] for k in samples["ray_slc_classified_total"]} == languages
    assert sum(samples["ray_slc_classified_total"].values()) == 3
    audio_s = sum(samples["ray_slc_audio_seconds_total"].values())
    assert audio_s == pytest.approx(sum(a["duration_s"] for a in answers), rel=1e-3)
    assert samples["ray_slc_request_seconds_count"][(("route", "/v1/classify"),)] == 4
    assert samples["ray_slc_request_seconds_sum"][(("route", "/v1/classify"),)] > 0
    # One request at a time: three batches of one. (Ray reports a histogram's
    # sum from its buckets, so only counts are exact.)
    assert sum(samples["ray_slc_batch_size_count"].values()) == 3
    ones = [v for k, v in samples["ray_slc_batch_size_bucket"].items() if float(dict(k)["le"]) == 1]
    assert ones == [3]


def test_the_cluster_config_starts_ray_with_the_json_errors_callback():
    import yaml

    cluster = yaml.safe_load((Path(__file__).resolve().parents[2] / "cluster.yaml").read_text())
    for commands in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in cluster[commands] if "ray start" in c]
        assert f"{PROXY_CALLBACK_ENV}={PROXY_CALLBACK} " in start, start
