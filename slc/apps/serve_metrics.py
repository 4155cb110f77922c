"""Prometheus metrics of the endpoint, recorded in each replica through Ray
Serve's metrics API and exported by every node's Ray metrics agent (the
`metrics_export_port` of the node, scraped at /metrics). Ray prefixes the
names with `ray_`; Serve adds the `deployment`, `replica` and `application`
tags.

    slc_requests_total{route, status}        requests answered, by HTTP status
    slc_request_seconds{route}               time from request to last byte, in the replica
    slc_classified_total{language}           clips classified, by answered language
    slc_audio_seconds_total{language}        seconds of audio classified
    slc_batch_size                           requests per model batch

`route` is the route's template (`/v1/classify`); paths no route matches
(probes for /wp-login.php, ...) count as `other`, so a scanner cannot add a
time series per path it tries. The
proxy's view (requests that never reached a replica) is Serve's own
`ray_serve_num_http_requests_total` and `ray_serve_http_request_latency_ms`.
"""

import functools
import time

from ray.serve import metrics
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Seconds: from a health probe to a 10-minute upload.
LATENCY_BOUNDS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
BATCH_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128]
OTHER_ROUTE = "other"


class ServeMetrics:
    """The metrics of one replica process; `replica_metrics()` makes it once
    there, where Serve's replica context gives it its tags."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(
            "slc_requests_total", description="HTTP requests answered, by route and status", tag_keys=("route", "status")
        )
        self.latency = metrics.Histogram(
            "slc_request_seconds",
            description="Seconds from a request's arrival at the replica to its last response byte",
            boundaries=LATENCY_BOUNDS_S,
            tag_keys=("route",),
        )
        self.classified = metrics.Counter(
            "slc_classified_total", description="Clips classified, by answered language", tag_keys=("language",)
        )
        self.audio = metrics.Counter(
            "slc_audio_seconds_total", description="Seconds of audio classified, by answered language", tag_keys=("language",)
        )
        self.batch_size = metrics.Histogram(
            "slc_batch_size", description="Requests per model batch", boundaries=BATCH_BOUNDS
        )


@functools.cache
def replica_metrics() -> ServeMetrics:
    return ServeMetrics()


def record_classified(language: str, audio_s: float) -> None:
    """One clip answered with `language` (a label or `unknown`), `audio_s` seconds long."""
    found = replica_metrics()
    found.classified.inc(tags={"language": language})
    found.audio.inc(audio_s, tags={"language": language})


def record_batch(size: int) -> None:
    """One model batch of `size` requests."""
    replica_metrics().batch_size.observe(size)


class RequestMetrics:
    """ASGI middleware of the application: counts every HTTP answer by route
    and status and times it. A request that raises counts as a 500 (the
    application's error handler outside this middleware answers it)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def relay(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, relay)
        finally:
            # The router leaves the route it matched in the scope.
            route = getattr(scope.get("route"), "path", OTHER_ROUTE)
            found = replica_metrics()
            found.requests.inc(tags={"route": route, "status": str(status[0])})
            found.latency.observe(time.perf_counter() - started, tags={"route": route})
