"""The HTTP endpoint: a Ray Serve deployment holding a `Classifier` per replica.

    POST /v1/classify   audio as multipart field `file` or as the raw body
                        ?top_k=3&segments=true&allow=de,fr&min_confidence=0.5
    WS   /v1/stream     live detection over a WebSocket (slc.apps.stream)
    GET  /v1/labels     the languages the model knows
    GET  /healthz       the replica is alive
    GET  /readyz        the bundle is loaded and answers
    GET  /              a page to upload or record audio

Requests are decoded in threads and classified together by `@serve.batch`
(a request alone in its replica skips the batch queue and its wait);
`max_batch_size` and `batch_wait_timeout_s` follow the deployment's
`user_config`, so they change without a redeploy. Every error is JSON
`{"error": <code>, "detail": <message naming the file and the reason>}`
with a 4xx status; a 5xx means a bug, logged with its traceback in the
replica's log. A clip the model fails on gets the 500 alone: its batch is
classified again one request at a time. Like the runtime, this never
imports torch.

Running the application on this machine: `slc.apps.serve_launcher`; talking
to it: `slc.apps.serve_client`.
"""

import asyncio
import dataclasses
import logging
import os
import typing
from collections import defaultdict
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from slc import audio
from slc.apps.serve_metrics import RequestMetrics, record_batch, record_classified
from slc.apps.stream import StreamHub
from slc.config import ServeConfig
from slc.config_io import from_dict, to_dict
from slc.labels import LabelError, normalize
from slc.runtime.classifier import Classifier, Prediction

# Serve writes this logger to the replica's own log file, with the request id.
log = logging.getLogger("ray.serve")

APP_NAME = "slc"
BUNDLE_ENV = "SLC_BUNDLE"
DEFAULT_BUNDLE = "demo-output/bundle"
BATCHING = ("max_batch_size", "batch_wait_timeout_s")
RAW_BODY = "request body"

# HTTP status per AudioError reason: 415 for bytes that are no audio format
# we read, 422 for audio that decodes but cannot be classified.
STATUS_OF_REASON = {
    "empty": 400,
    "too_long": 413,
    "undecodable": 415,
    "unreadable": 422,
    "non_finite": 422,
    "too_short": 422,
}


class ApiError(Exception):
    """An answer other than 200: HTTP status, short code, message for a person."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


@dataclasses.dataclass(frozen=True)
class Options:
    """What a request asks beyond the audio; requests share a batch per Options."""

    allow: tuple[str, ...] | None = None
    min_confidence: float | None = None
    segments: bool = False


api = FastAPI(title="slc", docs_url=None, redoc_url=None)
api.add_middleware(RequestMetrics)


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


@api.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return _error(error.status, error.error, error.detail)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc'][1:])}={e.get('input')!r}: {e['msg']}" for e in error.errors()
    )
    return _error(422, "invalid_query", f"{request.url.path}: {problems}")


@api.exception_handler(HTTPException)
async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "bad_request")
    return _error(error.status_code, code, f"{request.method} {request.url.path}: {error.detail}")


@api.exception_handler(Exception)
async def _bug(request: Request, error: Exception) -> JSONResponse:
    log.exception("%s %s failed", request.method, request.url.path)
    return _error(500, "internal", f"{request.method} {request.url.path}: {type(error).__name__}: {error}")


# Serve pickles the deployment class by value when it is decorated: what its
# methods call must be defined above it, and annotations must be objects, not
# strings (no `from __future__ import annotations`), for FastAPI to read them
# in the replica.


def checked_batching(settings: dict[str, Any]) -> dict[str, Any]:
    """`user_config` -> the batch settings, or ValueError (Serve then keeps
    the replicas on their previous settings and reports the deploy failed)."""
    unknown = set(settings) - set(BATCHING)
    if unknown:
        raise ValueError(f"user_config takes {list(BATCHING)}, not {sorted(unknown)}")
    size, wait = settings["max_batch_size"], settings["batch_wait_timeout_s"]
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"max_batch_size must be an integer >= 1, got {size!r}")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait < 60:
        raise ValueError(f"batch_wait_timeout_s must be within [0, 60) seconds, got {wait!r}")
    return {"max_batch_size": size, "batch_wait_timeout_s": float(wait)}


def _too_large(size: int, limit: int) -> ApiError:
    return ApiError(413, "too_large", f"{RAW_BODY}: {size / 2**20:.1f} MB uploaded, at most {limit / 2**20:.1f} MB allowed")


async def _file_part(headers: Headers, body: bytes) -> tuple[bytes, str]:
    """Field `file` of a multipart/form-data body -> (bytes, its file name)."""

    async def chunks() -> AsyncIterator[bytes]:
        yield body

    try:
        form = await MultiPartParser(headers, chunks(), max_files=1, max_fields=16).parse()
    except MultiPartException as error:
        raise ApiError(400, "bad_multipart", f"{RAW_BODY}: {error.message}") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "no_file", f"{RAW_BODY}: the multipart form has no file field named 'file'")
        return await upload.read(), upload.filename or "file"
    finally:
        await form.close()


# A stopping replica counts the requests it still holds every this many
# seconds, and stops once there are none; it sleeps before the first count,
# so Serve's default (2 s) made every stop and redeploy take 2 s at least.
@serve.deployment(name="LanguageClassifier", graceful_shutdown_wait_loop_s=0.2)
@serve.ingress(api)
class LanguageService:
    """One replica: a loaded bundle, a batch queue and the HTTP routes."""

    def __init__(self, bundle: str, config: dict[str, Any]) -> None:
        self.config = from_dict(ServeConfig, config)
        self.classifier = Classifier(
            bundle, variant=self.config.variant, threads=self.config.threads, batch_size=self.config.max_batch_size,
            open_set=self.config.open_set,
        )
        limit = min(self.classifier.audio_config.max_duration_s, self.config.max_duration_s)
        self.audio_config = dataclasses.replace(self.classifier.audio_config, max_duration_s=limit)
        self.max_upload_bytes = int(self.config.max_upload_mb * 2**20)
        self.page = (resources.files("slc.apps") / "web" / "index.html").read_text(encoding="utf-8")
        self.batching = {name: getattr(self.config, name) for name in BATCHING}
        self.active = 0  # classify requests between arrival and answer
        # One second of noise through the model: the replica is ready only
        # once the bundle answers, and the first request pays no warm-up.
        self.classifier.probabilities([np.random.default_rng(0).standard_normal(16_000).astype(np.float32) * 0.1])
        self.streams = StreamHub(
            self.config.stream, self.classifier.window, self.classifier.labels.codes,
            self.classifier.feature_config, self._score_windows,
            self.classifier.threshold(None), self.classifier.open_set is not None,
        )  # fmt: skip

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's `user_config` at start and
        on every change: the batch settings, applied without a restart."""
        batching = checked_batching({**self.batching, **user_config})
        self._classify.set_max_batch_size(batching["max_batch_size"])
        self._classify.set_batch_wait_timeout_s(batching["batch_wait_timeout_s"])
        self.classifier.batch_size = batching["max_batch_size"]
        self.batching = batching

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> dict[str, Any]:
        return {
            "status": "ready",
            "model": self.classifier.info,
            "batching": self.batching,
            "replica": serve.get_replica_context().replica_id.unique_id,
        }

    @api.websocket("/v1/stream")
    async def stream(self, websocket: WebSocket) -> None:
        """Live detection: protocol in slc.apps.stream."""
        await self.streams.run(websocket)

    @serve.batch(max_batch_size=ServeConfig.max_batch_size, batch_wait_timeout_s=ServeConfig.batch_wait_timeout_s)
    async def _score_windows(self, features: list[np.ndarray]) -> list[np.ndarray]:
        """Features of live streams' windows, one a call, batched across
        streams -> each window's probabilities."""
        scores = await asyncio.to_thread(self.classifier.probabilities_of_features, features)
        return list(scores)

    @api.get("/v1/labels")
    async def labels(self) -> dict[str, Any]:
        return {
            "labels": list(self.classifier.labels.codes),
            "window": dataclasses.asdict(self.classifier.window),
            "model": self.classifier.info,
        }

    @api.post("/v1/classify")
    async def classify(
        self,
        request: Request,
        top_k: typing.Annotated[int | None, Query(ge=1)] = None,
        segments: bool = False,
        allow: str | None = None,
        min_confidence: typing.Annotated[float | None, Query(ge=0.0, le=1.0)] = None,
    ) -> JSONResponse:
        """Audio -> `language`, `confidence`, `probabilities` (highest first,
        `top_k` of them), `duration_s`, `segments` when asked, `model`."""
        options = Options(self._allowed(allow), min_confidence, segments)
        self.active += 1
        try:
            body, name = await self._upload(request)
            clip = await asyncio.to_thread(self._decode, body, name)
            if self.active == 1:
                # Alone in the replica, a request has nobody to share a batch
                # with: the batch queue's wait for batch-mates would only delay it.
                (prediction,) = await asyncio.to_thread(self._classify_now, [clip], [options], [name])
            else:
                prediction = await self._classify(clip, options, name)
        finally:
            self.active -= 1
        if isinstance(prediction, ApiError):
            raise prediction
        record_classified(prediction.language, prediction.duration_s)
        # A JSONResponse skips FastAPI's response-model pass over the answer.
        return JSONResponse({**prediction.to_dict(top_k), "model": self.classifier.info})

    # --- request -> clip --------------------------------------------------

    def _allowed(self, allow: str | None) -> tuple[str, ...] | None:
        codes = [c for c in (allow or "").split(",") if c.strip()]
        if not codes:
            return None
        try:
            wanted = tuple(normalize(c) for c in codes)
        except LabelError as error:
            raise ApiError(422, "unknown_language", f"allow={allow}: {error}") from None
        unknown = [c for c in wanted if c not in self.classifier.labels.codes]
        if unknown:
            known = ",".join(self.classifier.labels.codes)
            detail = f"allow={allow}: the model does not know {unknown}; it knows {known}"
            raise ApiError(422, "unknown_language", detail)
        return wanted

    async def _upload(self, request: Request) -> tuple[bytes, str]:
        """The audio bytes and what to call them in errors."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            return await _file_part(request.headers, await self._body(request))
        if kind not in ("", "application/octet-stream") and not kind.startswith("audio/"):
            raise ApiError(
                415,
                "unsupported_media_type",
                f"{RAW_BODY}: Content-Type {kind!r} is not audio; send the file as multipart field 'file' "
                f"(curl -F file=@clip.wav) or as a raw body with Content-Type audio/wav or application/octet-stream",
            )
        return await self._body(request), RAW_BODY

    async def _body(self, request: Request) -> bytes:
        """The whole body, refused (413) as soon as it passes the upload limit."""
        limit = self.max_upload_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _decode(self, body: bytes, name: str) -> np.ndarray:
        try:
            return audio.load(body, self.audio_config, name)
        except audio.AudioError as error:
            raise ApiError(STATUS_OF_REASON.get(error.reason, 422), error.reason, str(error)) from None
        except Exception as error:  # noqa: BLE001
            # audio.load means to raise only AudioError, but it hands untrusted
            # bytes to libsndfile and soxr: whatever else escapes is still
            # the upload's fault, never a reason for a 500.
            log.warning("%s: decoding failed: %r", name, error)
            raise ApiError(415, "undecodable", f"{name}: undecodable: not a readable audio file ({error})") from None

    # --- batched classification ------------------------------------------

    @serve.batch(max_batch_size=ServeConfig.max_batch_size, batch_wait_timeout_s=ServeConfig.batch_wait_timeout_s)
    async def _classify(
        self, clips: list[np.ndarray], options: list[Options], names: list[str]
    ) -> list[Prediction | ApiError]:
        return await asyncio.to_thread(self._classify_now, clips, options, names)

    def _classify_now(
        self, clips: list[np.ndarray], options: list[Options], names: list[str]
    ) -> list[Prediction | ApiError]:
        """Requests asking the same options go through the model together. If
        that fails, each goes alone, so a clip the model fails on gets its
        own 500 (an ApiError, returned for its request) and the others their
        answers."""
        record_batch(len(clips))
        groups: dict[Options, list[int]] = defaultdict(list)
        for i, asked in enumerate(options):
            groups[asked].append(i)
        answers: list[Prediction | ApiError | None] = [None] * len(clips)
        for asked, members in groups.items():
            together = self._classify_together([clips[i] for i in members], asked) if len(members) > 1 else None
            for j, i in enumerate(members):
                answers[i] = together[j] if together else self._classify_alone(clips[i], asked, names[i])
        return answers  # type: ignore[return-value]

    def _classify_together(self, clips: list[np.ndarray], asked: Options) -> list[Prediction] | None:
        """One batch through the model, or None when it fails."""
        try:
            return self.classifier.classify_batch(clips, asked.allow, asked.min_confidence, asked.segments)
        except Exception:
            log.exception("a batch of %d requests failed; classifying them one at a time", len(clips))
            return None

    def _classify_alone(self, clip: np.ndarray, asked: Options, name: str) -> Prediction | ApiError:
        try:
            return self.classifier.classify_batch([clip], asked.allow, asked.min_confidence, asked.segments)[0]
        except Exception as error:
            seconds = len(clip) / self.classifier.feature_config.sample_rate
            log.exception("%s: the model failed on %.2f s of audio", name, seconds)
            detail = f"{name}: the model failed on {seconds:.2f} s of audio ({type(error).__name__}: {error})"
            return ApiError(500, "model_failed", detail)


# --- building and running the application -------------------------------


def build_app(bundle: str | Path, config: ServeConfig = ServeConfig()) -> serve.Application:
    """The application for `serve.run`: one deployment, sized by `config`.
    A relative bundle path is resolved here, where it was given."""
    path = Path(bundle).resolve()
    if not (path / "bundle.json").is_file():
        raise FileNotFoundError(f"{path}: not a bundle (no bundle.json); write one with `slc export`")
    deployment = LanguageService.options(
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.num_cpus},
        user_config={name: getattr(config, name) for name in BATCHING},
    )
    return deployment.bind(str(path), to_dict(config))


def app_builder(args: dict[str, Any]) -> serve.Application:
    """`serve run slc.apps.serve:app_builder bundle=PATH threads=2` and the
    `import_path` of serve_config.yaml. `bundle` defaults to $SLC_BUNDLE,
    then demo-output/bundle; other args are ServeConfig fields (strings are
    converted)."""
    args = dict(args)
    bundle = args.pop("bundle", None) or os.environ.get(BUNDLE_ENV) or DEFAULT_BUNDLE
    config = config_from_args(args)
    if config.ingress != ServeConfig.ingress:
        raise ValueError(
            f"ingress={config.ingress} is not an application's setting: Serve takes it from the environment "
            "of `ray start` on each node (export RAY_SERVE_ENABLE_HA_PROXY=1 there)"
        )
    return build_app(bundle, config)


def config_from_args(args: dict[str, Any]) -> ServeConfig:
    """ServeConfig from `key=value` arguments, whose values may be strings
    (converted to each setting's type; an empty one leaves it unset)."""
    return from_dict(ServeConfig, {name: None if value == "" else value for name, value in args.items()})
