"""The HTTP endpoint, deployed from serve_config.yaml the way `serve run` and
`serve deploy` deploy it (only the bundle, the port and two limits swapped for
test ones), on the session's Ray. The small bundle is a poor judge of
language, so answers are compared with `Classifier` run here on the same audio."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf
import soxr
import yaml
from conftest import espeak_wav

from slc.config import ServeConfig
from slc.runtime.classifier import Classifier
from slc.apps.serve import app_builder, checked_batching, config_from_args
from slc.apps.serve_launcher import free_port

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.yaml"
# Small limits keep the limit tests cheap: 1 MB uploads, 30 s of audio.
TEST_LIMITS = {"max_upload_mb": 1, "max_duration_s": 30}


# --- deploying serve_config.yaml on the session cluster -------------------


def config_schema(bundle: Path, name: str, port: int, user_config: dict | None = None, **args):
    """serve_config.yaml, validated by Ray Serve's own schema, serving
    `bundle` as application `name` on `port`."""
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(CONFIG.read_text())
    data["http_options"]["port"] = port
    app = data["applications"][0]
    app["name"] = name
    app["args"] = {**app["args"], "bundle": str(bundle), **args}
    if user_config:
        app["deployments"][0]["user_config"] = user_config
    return ServeDeploySchema.model_validate(data)


@dataclasses.dataclass
class Endpoint:
    url: str
    app_name: str
    deploy: Callable[..., None]  # redeploy the config with other user_config

    def post(self, body: bytes | None = None, query: str = "", **kwargs) -> requests.Response:
        return requests.post(f"{self.url}/v1/classify{'?' + query if query else ''}", data=body, timeout=120, **kwargs)

    def upload(self, body: bytes, name: str = "clip.wav", query: str = "") -> requests.Response:
        return self.post(query=query, files={"file": (name, body)})

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}{path}", timeout=30)


def _wait_running(app_name: str, timeout_s: float = 180) -> None:
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(app_name)
        if app and app.status == "RUNNING":
            return
        if app and app.status == "DEPLOY_FAILED":
            raise RuntimeError(f"{app_name} failed to deploy: {app.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{app_name} not running after {timeout_s:.0f} s: {app}")
        time.sleep(0.5)


@contextlib.contextmanager
def deployed(bundle: Path, **args) -> Iterator[Endpoint]:
    """serve_config.yaml's application on a free port; Serve shut down after."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # The client `serve run serve_config.yaml` and `serve deploy` use: the
    # controller builds the app from the import path and applies the
    # config's deployment options and user_config.
    client = serve.context._get_global_client()
    name = f"slc-test-{secrets.token_hex(3)}"

    def deploy(user_config: dict | None = None) -> None:
        client.deploy_apps(config_schema(bundle, name, port, user_config, **args))
        _wait_running(name)

    try:
        deploy()
        endpoint = Endpoint(f"http://127.0.0.1:{port}", name, deploy)
        deadline = time.monotonic() + 60
        while not _answers(endpoint):
            assert time.monotonic() < deadline, "the endpoint never answered /readyz"
            time.sleep(0.3)
        yield endpoint
    finally:
        serve.shutdown()


def _answers(endpoint: Endpoint) -> bool:
    try:
        return endpoint.get("/readyz").status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def endpoint(ray_session, small_bundle) -> Iterator[Endpoint]:
    with deployed(small_bundle, **TEST_LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def classifier(small_bundle) -> Classifier:
    return Classifier(small_bundle)


@pytest.fixture(scope="module")
def german_wav() -> bytes:
    return espeak_wav("Guten Morgen. Der Zug nach Zürich fährt heute um halb neun ab.", "de")


@pytest.fixture(scope="module")
def long_wav() -> bytes:
    """About 20 s: German and English taking turns, as one 16 kHz WAV."""
    parts = [
        espeak_wav("Der Zug nach Zürich fährt heute um halb neun vom dritten Gleis ab. Bitte einsteigen.", "de"),
        espeak_wav("The train to London leaves at half past eight from platform three. Please mind the gap.", "en"),
        espeak_wav("Wir wünschen Ihnen eine angenehme Reise und einen schönen Tag.", "de"),
        espeak_wav("Tickets are available from the machines at the entrance and on the train.", "en"),
    ]
    clips = []
    for part in parts:
        samples, rate = sf.read(io.BytesIO(part), dtype="float32")
        clips.append(soxr.resample(samples, rate, 16000))
    return wav_bytes(np.concatenate(clips), 16000)


def wav_bytes(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def expected(classifier: Classifier, wav: bytes, top_k: int | None = None, **options) -> dict:
    return classifier.classify(classifier.load_audio(wav), **options).to_dict(top_k)


def assert_same_answer(answer: dict, wanted: dict) -> None:
    assert answer["language"] == wanted["language"]
    assert list(answer["probabilities"]) == list(wanted["probabilities"])
    assert answer["probabilities"] == pytest.approx(wanted["probabilities"], abs=1e-5)
    assert answer["duration_s"] == pytest.approx(wanted["duration_s"], abs=1e-3)


# --- the config file and its arguments ------------------------------------


def test_serve_config_passes_ray_serves_schema_and_binds_loopback():
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(CONFIG.read_text()))
    assert (config.http_options.host, config.http_options.port) == ("127.0.0.1", 8000)
    (app,) = config.applications
    assert app.import_path == "slc.apps.serve:app_builder" and app.args["bundle"]
    (deployment,) = app.deployments
    assert deployment.ray_actor_options.num_cpus > 0
    assert checked_batching(deployment.user_config)
    assert deployment.max_ongoing_requests >= deployment.user_config["max_batch_size"]


def test_builder_arguments_are_converted_and_checked(small_bundle, tmp_path):
    assert config_from_args({"threads": "2", "variant": "fp32", "max_upload_mb": "5", "open_set": "no"}) == ServeConfig(
        threads=2, variant="fp32", max_upload_mb=5.0, open_set=False
    )
    assert config_from_args({"variant": ""}).variant is None
    with pytest.raises(ValueError, match=r"unknown ServeConfig settings: \['thread'\]; known: .*, threads,"):
        config_from_args({"thread": "2"})
    with pytest.raises(ValueError, match=r"threads: Input should be a valid integer.*\(got 'two'\)"):
        config_from_args({"threads": "two"})
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        config_from_args({"max_batch_size": "64", "max_ongoing_requests": "8"})
    with pytest.raises(FileNotFoundError, match="not a bundle"):
        app_builder({"bundle": str(tmp_path)})
    with pytest.raises(ValueError, match="export RAY_SERVE_ENABLE_HA_PROXY=1"):
        app_builder({"bundle": str(small_bundle), "ingress": "haproxy"})
    with pytest.raises(ValueError, match="max_batch_size"):
        checked_batching({"max_batch_size": 0, "batch_wait_timeout_s": 0.01})


def test_haproxy_ingress_needs_its_binary_and_a_ray_started_with_it(monkeypatch):
    from slc.apps.serve_launcher import check_ingress

    haproxy = ServeConfig(ingress="haproxy")
    with pytest.raises(ValueError, match="ingress must be one of proxy, haproxy"):
        ServeConfig(ingress="nginx")
    monkeypatch.delenv("RAY_SERVE_ENABLE_HA_PROXY", raising=False)
    check_ingress(haproxy, starts_ray=True)
    with pytest.raises(ValueError, match="export RAY_SERVE_ENABLE_HA_PROXY=1"):
        check_ingress(haproxy, starts_ray=False)
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "1")
    check_ingress(haproxy, starts_ray=False)
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", "/nonexistent/haproxy")
    with pytest.raises(FileNotFoundError, match="--ingress haproxy: .*'/nonexistent/haproxy'"):
        check_ingress(haproxy, starts_ray=True)
    check_ingress(ServeConfig(), starts_ray=False)


def test_importing_the_endpoint_never_imports_torch():
    code = "import sys, slc.apps.serve, slc.apps.serve_launcher\nassert 'torch' not in sys.modules, 'torch was imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- answers ---------------------------------------------------------------


def test_multipart_upload_and_raw_body_answer_like_the_classifier(endpoint, classifier, german_wav):
    wanted = expected(classifier, german_wav)
    uploaded = endpoint.upload(german_wav)
    raw = endpoint.post(german_wav, headers={"Content-Type": "audio/wav"})
    for response in (uploaded, raw):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert_same_answer(answer, wanted)
        assert "segments" not in answer
        assert answer["model"] == classifier.info


def test_query_options_reach_the_classifier(endpoint, classifier, german_wav):
    top = endpoint.upload(german_wav, query="top_k=1").json()
    assert list(top["probabilities"]) == [top["language"]]
    only_en = endpoint.upload(german_wav, query="allow=en").json()
    assert only_en["language"] == "en" and only_en["probabilities"] == {"en": pytest.approx(1.0)}
    aliased = endpoint.upload(german_wav, query="allow=de-DE,EN").json()
    assert_same_answer(aliased, expected(classifier, german_wav, allow=["de", "en"]))
    unsure = endpoint.upload(german_wav, query="min_confidence=1").json()
    assert unsure["language"] == "unknown"
    assert unsure["probabilities"] == pytest.approx(expected(classifier, german_wav)["probabilities"], abs=1e-5)


def test_long_audio_gets_the_same_timeline_as_the_classifier(endpoint, classifier, long_wav):
    response = endpoint.upload(long_wav, name="long.wav", query="segments=true")
    assert response.status_code == 200, response.text
    answer = response.json()
    wanted = expected(classifier, long_wav, segments=True)
    assert answer["duration_s"] == pytest.approx(wanted["duration_s"], abs=1e-3) and answer["duration_s"] > 15
    assert [s["language"] for s in answer["segments"]] == [s["language"] for s in wanted["segments"]]
    for got, want in zip(answer["segments"], wanted["segments"]):
        assert (got["start_s"], got["end_s"]) == pytest.approx((want["start_s"], want["end_s"]))
    assert answer["segments"][0]["start_s"] == 0 and answer["segments"][-1]["end_s"] == answer["duration_s"]


def test_concurrent_requests_with_different_options_each_get_their_own(endpoint, german_wav, long_wav):
    asks = ["", "allow=en", "top_k=1", "min_confidence=1", "allow=de"] * 3
    with ThreadPoolExecutor(max_workers=len(asks)) as pool:
        answers = list(pool.map(lambda q: endpoint.upload(german_wav, query=q).json(), asks))
    for query, answer in zip(asks, answers):
        if query.startswith("allow="):
            assert list(answer["probabilities"]) == [query.split("=")[1]]
        elif query == "top_k=1":
            assert len(answer["probabilities"]) == 1
        elif query == "min_confidence=1":
            assert answer["language"] == "unknown"
        else:
            # The same default answer (the bundle's open-set rule included) every time.
            assert len(answer["probabilities"]) == 2 and answer["language"] == answers[0]["language"]


def test_labels_health_readiness_and_page(endpoint, classifier):
    labels = endpoint.get("/v1/labels").json()
    assert labels["labels"] == list(classifier.labels.codes) and labels["model"] == classifier.info
    assert endpoint.get("/healthz").json() == {"status": "ok"}
    ready = endpoint.get("/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == classifier.info
    page = endpoint.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file"' in page.text and 'id="record"' in page.text
    missing = endpoint.get("/v2/nothing")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_replicas_never_load_torch(endpoint):
    replicas = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_replica_of(p, endpoint.app_name)]
    assert replicas, f"no replica process of {endpoint.app_name}"
    for process in replicas:
        assert "torch" not in (process / "maps").read_text(), f"replica {process.name} loaded torch"


def _is_replica_of(process: Path, app_name: str) -> bool:
    try:
        return f"ServeReplica:{app_name}:" in (process / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


# --- limits and errors ----------------------------------------------------


def _silence(seconds: float) -> bytes:
    return wav_bytes(np.zeros(int(16000 * seconds), dtype=np.float32), 16000)


def _tone(seconds: float, rate: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(np.arange(int(rate * seconds)) * 2 * np.pi * 220 / rate)).astype(np.float32)


def _with_nan(seconds: float) -> bytes:
    samples = _tone(seconds)
    samples[100] = np.nan
    return wav_bytes(samples, 16000, "FLOAT")


ERROR_CASES = {
    "empty upload": (lambda e, wav: e.upload(b""), 400, "empty"),
    "empty raw body": (lambda e, wav: e.post(b"", headers={"Content-Type": "audio/wav"}), 400, "empty"),
    "text file upload": (lambda e, wav: e.upload(b"just some notes\n" * 20, "notes.txt"), 415, "undecodable"),
    "text content type": (lambda e, wav: e.post(wav, headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type"),
    "NaN samples": (lambda e, wav: e.upload(_with_nan(2.0), "nan.wav"), 422, "non_finite"),
    "only silence": (lambda e, wav: e.upload(_silence(2.0), "silence.wav"), 422, "too_short"),
    "0.2 s of sound": (lambda e, wav: e.upload(wav_bytes(_tone(0.2), 16000), "short.wav"), 422, "too_short"),
    "too long": (lambda e, wav: e.upload(wav_bytes(_tone(31.0, 8000), 8000), "long.wav"), 413, "too_long"),
    "upload too big": (lambda e, wav: e.upload(b"\0" * (2 << 20), "big.wav"), 413, "too_large"),
    "raw body too big": (lambda e, wav: e.post(b"\0" * (2 << 20), headers={"Content-Type": "audio/wav"}), 413, "too_large"),
    "no file field": (lambda e, wav: e.post({"audio": "x"}, files={"other": ("a.wav", wav)}), 400, "no_file"),
    "bad top_k": (lambda e, wav: e.upload(wav, query="top_k=0"), 422, "invalid_query"),
    "bad min_confidence": (lambda e, wav: e.upload(wav, query="min_confidence=1.5"), 422, "invalid_query"),
    "NaN min_confidence": (lambda e, wav: e.upload(wav, query="min_confidence=nan"), 422, "invalid_query"),
    "unknown language": (lambda e, wav: e.upload(wav, query="allow=de,xx"), 422, "unknown_language"),
    "not a language code": (lambda e, wav: e.upload(wav, query="allow=%3F%3F"), 422, "unknown_language"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_each_error_has_its_status_and_a_message_naming_the_file(endpoint, german_wav, case):
    send, status, error = ERROR_CASES[case]
    response = send(endpoint, german_wav)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error"] == error and isinstance(answer["detail"], str) and answer["detail"]
    if error in ("undecodable", "non_finite", "too_short", "too_long"):
        name = {"text file upload": "notes.txt"}.get(case, "")
        assert name in answer["detail"] and error in answer["detail"]


def malformed_bodies(wav: bytes) -> list[tuple[str, bytes, str | None]]:
    """(what, body, Content-Type or None for a multipart upload): over 200
    bodies no endpoint should answer with anything but a 4xx."""
    rng = np.random.default_rng(5)
    header = wav[:44]
    cases: list[tuple[str, bytes, str | None]] = []
    for i in range(50):
        cases.append((f"random {i}", rng.bytes(int(rng.integers(1, 4000))), None if i % 2 else "audio/wav"))
    for magic in (b"RIFF\xff\xff\xff\xffWAVE", b"fLaC", b"OggS\x00\x02", b"ID3\x04\x00", b"\xff\xfb\x90\x00", b"FORM\x00\x00\x00\x20AIFF"):
        for i in range(5):
            cases.append((f"{magic[:4]!r} + random {i}", magic + rng.bytes(int(rng.integers(0, 3000))), None))
    for cut in range(60):
        cases.append((f"WAV cut at {cut} bytes", wav[:cut], None if cut % 2 else "audio/wav"))
    for i in range(30):
        forged = bytearray(header) + wav[44 : 44 + int(rng.integers(0, 4000))]
        field, size = [(4, 4), (40, 4), (22, 2), (24, 4), (28, 4), (32, 2), (34, 2), (20, 2)][i % 8]
        value = [0, 1, 3, 2 ** (8 * size - 1) - 1, 2 ** (8 * size) - 1][i % 5]
        forged[field : field + size] = value.to_bytes(size, "little")
        cases.append((f"WAV header field {field} forged ({i})", bytes(forged), None))
    for i in range(15):
        samples = _tone(1.0 + i / 10)
        samples[rng.integers(0, len(samples), 1 + i)] = [np.nan, np.inf, -np.inf][i % 3]
        cases.append((f"non-finite float WAV {i}", wav_bytes(samples, 16000, "FLOAT"), None))
    for kind in ("text/plain", "application/json", "text/html", "image/png", "application/x-www-form-urlencoded", "multipart/mixed"):
        cases.append((f"WAV sent as {kind}", wav, kind))
        cases.append((f"nothing sent as {kind}", b"", kind))
    for i, text in enumerate(["hello", '{"audio": [0.1, 0.2]}', "<html><body>hi</body></html>", "a,b,c\n1,2,3\n", "ü" * 999]):
        cases.append((f"text file {i}", text.encode(), None))
        cases.append((f"text raw body {i}", text.encode(), "application/octet-stream"))
    for i in range(10):
        boundary = "b" * (i + 1)
        body = f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.wav\"\r\n\r\n".encode() + wav[: 200 * i]
        kind = f"multipart/form-data; boundary={boundary}" if i % 2 else "multipart/form-data"
        cases.append((f"broken multipart {i}", body, kind))
    for seconds in (0.0, 0.1, 0.3, 0.45):
        cases.append((f"{seconds} s of sound", wav_bytes(_tone(seconds) if seconds else np.zeros(0, np.float32), 16000), None))
    return cases


def test_malformed_bodies_get_4xx_json_and_the_service_keeps_answering(endpoint, german_wav):
    cases = malformed_bodies(german_wav)
    assert len(cases) >= 200
    wrong = []
    with requests.Session() as session:
        for what, body, kind in cases:
            if kind is None:
                response = session.post(f"{endpoint.url}/v1/classify", files={"file": ("upload.bin", body)}, timeout=60)
            else:
                response = session.post(f"{endpoint.url}/v1/classify", data=body, headers={"Content-Type": kind}, timeout=60)
            try:
                answer = response.json()
                ok = 400 <= response.status_code < 500 and set(answer) == {"error", "detail"} and answer["detail"]
            except ValueError:
                ok = False
            if not ok:
                wrong.append(f"{what}: {response.status_code} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)
    assert endpoint.upload(german_wav).status_code == 200


# --- batching settings change on the running replica ------------------------


def test_user_config_changes_batching_without_restarting_the_replica(endpoint, german_wav):
    before = endpoint.get("/readyz").json()
    assert before["batching"] == yaml.safe_load(CONFIG.read_text())["applications"][0]["deployments"][0]["user_config"]
    changed = {"max_batch_size": 4, "batch_wait_timeout_s": 0.05}
    endpoint.deploy(changed)
    deadline = time.monotonic() + 60
    while (after := endpoint.get("/readyz").json())["batching"] != changed:
        assert time.monotonic() < deadline, f"batching still {after['batching']}"
        time.sleep(0.3)
    assert after["replica"] == before["replica"], "the replica was replaced, not reconfigured"
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(lambda _: endpoint.upload(german_wav).status_code, range(10)))
    assert statuses == [200] * 10


def _reconfigure(endpoint: Endpoint, batching: dict) -> None:
    endpoint.deploy(batching)
    deadline = time.monotonic() + 60
    while endpoint.get("/readyz").json()["batching"] != batching:
        assert time.monotonic() < deadline, "the batching settings never arrived"
        time.sleep(0.3)


def test_a_lone_request_does_not_wait_for_batch_mates_and_a_crowd_still_batches(endpoint, german_wav):
    before = endpoint.get("/readyz").json()["batching"]
    _reconfigure(endpoint, {"max_batch_size": 8, "batch_wait_timeout_s": 2.0})
    try:
        endpoint.upload(german_wav)  # warm
        started = time.monotonic()
        assert endpoint.upload(german_wav).status_code == 200
        assert time.monotonic() - started < 1.0, "a lone request waited for batch-mates"
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda _: endpoint.upload(german_wav).status_code, range(8)))
        assert statuses == [200] * 8
    finally:
        _reconfigure(endpoint, before)


# --- `slc serve` as a user runs it, on a Ray of its own --------------------


@contextlib.contextmanager
def serve_command(*args: str, cwd: Path, stop: signal.Signals = signal.SIGINT) -> Iterator[tuple[str, list[str]]]:
    """`slc serve ARGS` as a user runs it: yields its URL once it says it is
    serving, and the lines it has printed so far (the list grows); then
    `stop` (Ctrl-C's SIGINT, or SIGTERM as `docker stop` sends), which must
    stop it and everything it started, with exit status 0. Killed with its
    process group, and the test failed, if it does not."""
    import threading

    port = free_port()
    command = [str(Path(sys.executable).parent / "slc"), "serve", *args, "--port", str(port)]
    # A process started with SIGINT ignored (tests run as a background job)
    # keeps it ignored; one whose parent handles it starts with the default,
    # as from a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)  # fmt: skip
    finally:
        signal.signal(signal.SIGINT, previous)
    lines: list[str] = []
    serving = threading.Event()

    def read() -> None:
        for line in server.stdout:
            lines.append(line)
            if "(Ctrl-C stops)" in line:
                serving.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert serving.wait(timeout=180) and server.poll() is None, "".join(lines)[-3000:]
        yield f"http://127.0.0.1:{port}", lines
    finally:
        server.send_signal(stop)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            pytest.fail(f"slc serve did not stop on {stop.name} within 120 s:\n" + "".join(lines)[-3000:])
        finally:
            reader.join(timeout=10)
    assert server.returncode == 0, "".join(lines)[-3000:]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the endpoint is still listening"


def test_serve_gives_its_proxy_json_errors_and_a_deadline_and_stops_on_sigterm(small_bundle, german_wav, tmp_path):
    """`slc serve` with its own Ray: a request past its deadline gets a JSON
    504 from Serve's proxy, the others are answered; SIGTERM stops it cleanly."""
    from slc.apps.serve_proxy import TIMEOUT_HEADER

    with serve_command(str(small_bundle), cwd=tmp_path, stop=signal.SIGTERM) as (url, lines):
        late = requests.post(f"{url}/v1/classify", data=german_wav, headers={TIMEOUT_HEADER.decode(): "0.001"}, timeout=30)
        assert late.status_code == 504 and late.headers["content-type"] == "application/json", late.text
        assert late.json()["error"] == "timeout" and "timed out" in late.json()["detail"]
        assert requests.post(f"{url}/v1/classify", data=german_wav, timeout=30).status_code == 200
        deadline = time.monotonic() + 15  # Ray forwards a replica's lines about once a second
        while not any("POST /v1/classify 200" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.2)
    # The terminal: slc's lines and a line per request, not Ray's and Serve's start-up.
    printed = "".join(lines)
    assert "POST /v1/classify 200" in printed, printed[-3000:]
    for chatter in ("Started a local Ray instance", "Token authentication", "ProxyActor", "ServeController"):
        assert chatter not in printed, printed[-3000:]


def test_serve_on_a_port_in_use_says_so_without_a_stack_trace(small_bundle, tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        run = subprocess.run(
            [str(Path(sys.executable).parent / "slc"), "serve", str(small_bundle), "--port", str(port)],
            cwd=tmp_path, capture_output=True, text=True, timeout=120, start_new_session=True,
        )  # fmt: skip
    assert run.returncode == 2  # as every other error of the user's
    assert f"error: 127.0.0.1:{port} is in use" in run.stderr, run.stderr[-3000:]
    assert "Traceback" not in run.stdout + run.stderr, (run.stdout + run.stderr)[-3000:]


def test_serve_with_haproxy_in_front_of_two_replicas_answers_http_and_websocket_and_stops(
    small_bundle, classifier, german_wav, tmp_path
):  # fmt: skip
    """`slc serve --ingress haproxy` as a user runs it: its own Ray, HAProxy on
    the port, each replica serving HTTP itself; Ctrl-C stops all of it."""
    from slc.apps.serve_client import post_audio
    from slc.apps.stream_client import stream_events

    with serve_command(str(small_bundle), "--ingress", "haproxy", "--replicas", "2", cwd=tmp_path) as (url, _):
        status, answer = post_audio(url, german_wav)
        assert status == 200
        assert_same_answer(answer, expected(classifier, german_wav))
        assert post_audio(url, b"RIFF, but no audio")[0] == 415
        assert requests.get(f"{url}/", timeout=30).headers["content-type"].startswith("text/html")
        samples, rate = sf.read(io.BytesIO(german_wav), dtype="int16")
        events = []
        start = {"sample_rate": rate, "encoding": "pcm_s16le", "channels": 1}
        closed = stream_events(url, [samples.tobytes()], start, realtime=False, on_event=events.append)
        assert closed is None and events[0]["type"] == "ready" and events[-1]["type"] == "final"
    assert subprocess.run(["pgrep", "-x", "haproxy"], capture_output=True).returncode == 1, "HAProxy is still running"


# --- one clip the model fails on fails alone ------------------------------------


def test_a_clip_the_model_fails_on_fails_alone_and_its_batch_mates_are_answered(small_bundle, classifier, german_wav, monkeypatch):
    import asyncio
    import logging
    import types

    from ray import serve

    from slc.apps import serve as app
    from slc.config_io import to_dict

    # The replica's class as written, without Serve's ingress wrapper (whose
    # constructor needs a running replica): its batch handler is the same,
    # and asks the replica context only for max_ongoing_requests.
    (replica_class,) = [c for c in app.LanguageService.func_or_class.__bases__ if c.__name__ == "LanguageService"]
    service = replica_class(str(small_bundle), to_dict(ServeConfig()))
    context = types.SimpleNamespace(_deployment_config=types.SimpleNamespace(max_ongoing_requests=32))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    for attribute in vars(replica_class).values():
        batcher = getattr(getattr(attribute, "set_max_batch_size", None), "__self__", None)
        if batcher is not None:
            # The batch queue this test makes belongs to its event loop; left on the
            # class, it would make the class unpicklable for later deployments.
            monkeypatch.setattr(batcher, "_queue", None)
    good = classifier.load_audio(german_wav)
    culprit = good[:12345].copy()  # known by its length
    batches, real = [], service.classifier.classify_batch

    def classify_batch(clips, *args):
        batches.append(len(clips))
        if any(len(clip) == len(culprit) for clip in clips):
            raise RuntimeError("onnxruntime: invalid input")
        return real(clips, *args)

    monkeypatch.setattr(service.classifier, "classify_batch", classify_batch)
    clips = [good, culprit, good[:40000], good[8000:]]

    async def together():
        return await asyncio.gather(*(service._classify(clip, app.Options(), f"clip-{len(clip)}.wav") for clip in clips))

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    app.log.addHandler(handler)
    try:
        answers = asyncio.run(together())
    finally:
        app.log.removeHandler(handler)
    assert batches[0] == len(clips), "the requests were not batched together"
    for clip, answer in zip(clips, answers):
        if clip is culprit:
            continue
        assert_same_answer(answer.to_dict(), classifier.classify(clip).to_dict())
    failure = answers[1]
    assert isinstance(failure, app.ApiError) and failure.status == 500
    response = asyncio.run(app._api_error(None, failure))
    assert response.status_code == 500
    assert json.loads(response.body) == {"error": "model_failed", "detail": failure.detail}
    assert failure.detail.startswith("clip-12345.wav: ") and "RuntimeError: onnxruntime: invalid input" in failure.detail
    logged = [r for r in records if r.exc_info and "invalid input" in str(r.exc_info[1])]
    assert logged, "no traceback of the failure in the replica's log"
