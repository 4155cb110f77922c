"""Shared fixtures: one local Ray for the whole session, espeak-ng speech."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# Every process the tests start inherits this variable, Ray's included: what
# is left of them when the session ends is found by it, reported and killed.
SESSION_MARK = ("SLC_TEST_SESSION", secrets.token_hex(8))
os.environ[SESSION_MARK[0]] = SESSION_MARK[1]
_left_behind: list[str] = []


def _marked_processes() -> dict[int, str]:
    """Live processes carrying this session's mark -> their command lines."""
    mark = "=".join(SESSION_MARK).encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile, or not ours to read
    return found


def pytest_sessionfinish(session, exitstatus):
    """Kill what the tests left running, after 10 s to exit on their own.
    Ray can leave one: a Ray Train controller whose actor was killed when its
    cluster went down keeps its process (its core worker shut down, its
    interpreter never exits)."""
    deadline = time.monotonic() + 10
    while (left := _marked_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid, command in left.items():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _left_behind.append(f"{pid} {command[:120]}")
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: the controller reports them
        session.config.workeroutput["left_behind"] = _left_behind


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """A pytest-xdist worker has finished: what it killed joins the report."""
    _left_behind.extend(getattr(node, "workeroutput", {}).get("left_behind", []))


def pytest_terminal_summary(terminalreporter):
    if _left_behind:
        terminalreporter.write_sep("-", f"killed {len(_left_behind)} processes the tests left running")
        for line in _left_behind:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items):
    """Modules with slow tests first, each whole and in its own order: with
    workers in parallel, a long module left for last keeps one busy while
    the other has finished."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def start_session_ray():
    """Start the session's local Ray; tests that need a cluster of their own
    shut it down first and call this again when they are done."""
    import ray

    from slc.batch import cluster

    cluster.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray per test session; shut down (no processes left) at the end."""
    from slc.batch import cluster

    ray = start_session_ray()
    yield ray
    cluster.shutdown()


def object_references() -> set:
    """The object references this process holds: what it keeps pinned in the
    object store, and what Ray would rebuild if a node holding it were lost."""
    import ray

    return set(ray._private.worker.global_worker.core_worker.get_all_reference_counts())


def registered_epochs(out: Path) -> list[int]:
    """Epochs of the checkpoints Ray Train has registered for the run in
    `out` (those a restarted run resumes from), from the snapshot it keeps in
    `out/run`. A checkpoint written by a worker that died before reporting it
    is on disk but not here."""
    snapshot = out / "run" / "checkpoint_manager_snapshot.json"
    with contextlib.suppress(FileNotFoundError, ValueError):  # not yet, or caught mid-write
        return sorted(r["metrics"]["epoch"] for r in json.loads(snapshot.read_text())["checkpoint_results"])
    return []


def espeak_wav(text: str, voice: str = "en", rate: int = 160) -> bytes:
    """WAV bytes (22050 Hz, 16-bit mono) of espeak-ng saying `text`."""
    return subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "--stdout", text], capture_output=True, check=True
    ).stdout


@pytest.fixture(scope="session")
def speech_16k() -> np.ndarray:
    """About 5 s of German espeak-ng speech, mono float32 at 16 kHz."""
    wav = espeak_wav("Guten Morgen. Der Zug nach Zürich fährt heute um halb neun vom dritten Gleis ab.", "de")
    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(samples, rate, 16000).astype(np.float32)


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory, ray_session):
    """Shards of a small espeak-ng corpus (de, en; 16 clips each) for training tests."""
    from slc.data.ingest import ingest
    from slc.data.synth import make_corpus

    root = tmp_path_factory.mktemp("small")
    make_corpus(root / "corpus", ("de", "en"), per_lang=16, seed=3)
    ingest(root / "corpus", str(root / "shards"))
    return root / "shards"


@pytest.fixture(scope="session")
def small_checkpoint(small_shards, tmp_path_factory):
    """A 2-layer tiny classifier trained in-process for a few seconds on
    `small_shards`, saved as a checkpoint that records those shards."""
    from slc.labels import LabelSet

    directory = tmp_path_factory.mktemp("checkpoint") / "best"
    return train_in_process(small_shards, LabelSet(("de", "en")), epochs=8, directory=directory)


TINY_RUN_EPOCHS = 5


def tiny_run_config(**changes):
    """The settings of `tiny_run`, with `changes`."""
    from slc.config import ModelConfig, TrainConfig

    settings = dict(
        model=ModelConfig.preset("tiny"), batch_size=8, max_frames=300, workers=2, epochs=TINY_RUN_EPOCHS, keep_checkpoints=1
    )
    return TrainConfig(**{**settings, **changes})


@pytest.fixture(scope="session")
def tiny_run(small_shards, tmp_path_factory):
    """A 2-worker Ray Train run of `tiny_run_config()` on `small_shards` that
    nothing interrupted: (its output directory, what `train` returned)."""
    from slc.training.loop import train

    out = tmp_path_factory.mktemp("run")
    return out, train(str(small_shards), str(out), tiny_run_config())


def train_in_process(shards, labels, epochs: int, directory, shuffle: bool = False):
    """A 2-layer tiny classifier of `labels` trained here on the train split
    of `shards` (batches in order, or shuffled), saved at `directory` as a
    checkpoint that records those shards."""
    import torch

    from slc.config import FeatureConfig, ModelConfig, TrainConfig
    from slc.data.shards import read_split
    from slc.training import checkpoint as ckpt
    from slc.training.batches import COLUMNS, collate
    from slc.training.model import LanguageClassifier

    torch.manual_seed(0)
    config = TrainConfig(model=ModelConfig.preset("tiny", encoder_layers=2), batch_size=8, max_frames=300, epochs=epochs)
    model = LanguageClassifier.build(config.model, len(labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    table = read_split(str(shards), "train", columns=COLUMNS)
    rng = np.random.default_rng(0)
    for _ in range(config.epochs):
        starts = np.arange(0, table.num_rows, config.batch_size)
        for start in rng.permutation(starts) if shuffle else starts:
            features, lengths, targets = collate(table.slice(start, config.batch_size), labels, config.max_frames, True, rng, config)
            loss = torch.nn.functional.cross_entropy(model(features, lengths), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    ckpt.save(directory, model, labels, config, FeatureConfig(), {"epoch": config.epochs}, shards=str(shards))
    return directory


@pytest.fixture(scope="session")
def small_bundle(small_checkpoint, tmp_path_factory):
    """The bundle `slc export` writes for `small_checkpoint`, less its open-set answer."""
    from slc.config import ExportConfig
    from slc.export.exporter import export_bundle
    from slc.runtime import bundle as bundles

    directory = tmp_path_factory.mktemp("bundle") / "bundle"
    manifest = export_bundle(small_checkpoint, directory, config=ExportConfig(latency_repeats=5, calibration_clips=8))
    # Without its `open_set` entry, as bundles exported before the open-set
    # answer: raw probabilities, always the top language. Tests of answers
    # then do not hang on this weak model's calibration; the open-set rule has
    # tests of its own (tests/runtime/test_openset.py, test_classifier_openset.py).
    del manifest["open_set"]
    (directory / bundles.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


@pytest.fixture(scope="session")
def oracle_bundle(tmp_path_factory):
    """A bundle whose model knows the truth of `band_oracle` audio (de, fr,
    it, en): for checking live and offline timelines against the truth."""
    from band_oracle import write_bundle

    return write_bundle(tmp_path_factory.mktemp("oracle") / "bundle")


# Dummy keys: moto accepts any. They travel in URIs because Ray workers
# started before a test never see its environment.
S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET = "slc-test-key", "slc-test-secret", "slc-shards"


@pytest.fixture
def s3():
    """moto's S3 server on loopback with one empty bucket; a boto3 client for it."""
    import boto3
    from moto.server import ThreadedMotoServer

    werkzeug = logging.getLogger("werkzeug")  # one log line per request otherwise
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        client = boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            aws_access_key_id=S3_ACCESS_KEY,
            aws_secret_access_key=S3_SECRET_KEY,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=S3_BUCKET)
        yield client, f"{host}:{port}"  # URIs: s3://KEY:SECRET@BUCKET/prefix?endpoint_override=HOST:PORT&scheme=http
    finally:
        server.stop()
        werkzeug.setLevel(level)


# --- a Ray head of its own, as `ray start --head` makes one ----------------

def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _processes_of(head_pid: int, temp_dir: str) -> set[int]:
    """Live processes of the head: its session (everything `ray start` and the
    raylet spawn inherits its setsid), or any naming or running in its temp dir
    (a job's driver gets a session of its own but runs in the working dir
    unpacked under it)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            state, group, session = fields[0], int(fields[2]), int(fields[3])
            if state == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if head_pid in (group, session) or temp_dir in cmdline or os.readlink(entry / "cwd").startswith(temp_dir):
                found.add(int(entry.name))
        except OSError:
            continue  # exited meanwhile
    return found


def _wait_for(condition, timeout_s: float, what: str, interval_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")
        time.sleep(interval_s)
    return result


class RayHead:
    """A running head: its GCS and dashboard addresses, the environment (token
    included) its clients need, and its processes."""

    def __init__(self, address: str, dashboard: str, env: dict[str, str], pid: int, temp_dir: str) -> None:
        self.address, self.dashboard, self.env = address, dashboard, env
        self._pid, self._temp_dir = pid, temp_dir

    def processes(self) -> dict[int, str]:
        """pid -> command line of each live process of the head."""
        lines = {}
        for pid in _processes_of(self._pid, self._temp_dir):
            with contextlib.suppress(OSError):  # exited meanwhile
                lines[pid] = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return lines

    def ray(self, *args: str, token: str | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess:
        env = dict(self.env, RAY_AUTH_TOKEN=token) if token else self.env
        return subprocess.run(
            [str(VENV_BIN / "ray"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False
        )


@pytest.fixture
def ray_head():
    """A Ray head of its own, as `ray start --head` makes one, with token auth.

    It must not touch the session's in-process cluster: its own temp dir (so
    `ray.init()` elsewhere never finds it in /tmp/ray/ray_current_cluster), its
    own ports (the dashboard agent's default 52365 is already taken by the
    session cluster's agent, and without it no job can be submitted), and it is
    stopped by signalling `ray start --block`, never by `ray stop`, which
    would kill every Ray process on the machine.
    """
    # Short: Ray's unix sockets live under it and paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="slc-ray-", dir="/tmp")
    gcs, dashboard, agent, client_server = _free_ports(4)
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # The job's `python` is whatever the head's PATH finds: the venv, as for a
    # user who activated it before `ray start`.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    # On SIGTERM the head otherwise waits up to 30 s for its node to drain
    # (for Serve replicas; there are none here) before stopping its processes.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    log = Path(temp_dir) / "ray-start.log"
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block",
        f"--port={gcs}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client_server}",
        "--min-worker-port=0", "--max-worker-port=0",
        f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]  # fmt: skip
    with log.open("wb") as out:
        head = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # `ray start` writes the address file once GCS, raylet and dashboard are up.
        _wait_for(
            lambda: head.poll() is not None or (Path(temp_dir) / "ray_current_cluster").exists(),
            120,
            "ray start --head",
        )
        assert head.poll() is None, f"ray start exited {head.returncode}:\n{log.read_text()[-3000:]}"
        assert _processes_of(head.pid, temp_dir) > {head.pid}  # the sweep below sees its children
        yield RayHead(f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", env, head.pid, temp_dir)
    finally:
        head.send_signal(signal.SIGTERM)  # stops every process it started, then exits
        with contextlib.suppress(subprocess.TimeoutExpired, TimeoutError):
            head.wait(timeout=60)
            _wait_for(lambda: not _processes_of(head.pid, temp_dir), 15, "the head's processes to exit")
        left = _processes_of(head.pid, temp_dir)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head.wait(timeout=10)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the Ray head outlived it: {sorted(left)}"
