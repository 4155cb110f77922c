"""slc ingest where users run it: shards written to S3 (moto's server stands in
for it) and the featurize job submitted with `ray job submit` to a Ray head
started with `ray start`, as jobs/featurize.py tells them to."""

from __future__ import annotations

import contextlib
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

import boto3
import pytest
from moto.server import ThreadedMotoServer

from slc.corpus import SPLITS
from slc.ingest import ingest
from slc.shards import NUM_MEL_BINS, read_rejects, read_split
from slc.storage import StorageError
from slc.synth import make_corpus

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
PER_LANG = 4
BROKEN = "de/broken__0.wav"
# Dummy keys: moto accepts any. They travel in the URI because the Ray workers
# that write the shards were started before this test and never see its env.
ACCESS_KEY, SECRET_KEY, BUCKET = "slc-test-key", "slc-test-secret", "slc-shards"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8 espeak-ng clips (de, en) and one file with a corrupt header."""
    root = tmp_path_factory.mktemp("remote") / "corpus"
    make_corpus(root, ("de", "en"), per_lang=PER_LANG, seed=0)
    (root / BROKEN).write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\xff" * 64)
    return root


def _expected_ids(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.wav")} - {BROKEN}


def _assert_reconciles(summary: dict, corpus_root: Path) -> None:
    assert summary["discovered"] == 2 * PER_LANG + 1
    assert summary["accepted"] + summary["rejected"] == summary["discovered"]
    assert summary["accepted"] == sum(summary["splits"][s]["clips"] for s in SPLITS) == len(_expected_ids(corpus_root))
    assert summary["rejected_by_reason"] == {"undecodable": 1}


def _assert_shards(root: str, summary: dict, corpus_root: Path) -> None:
    """Every split reads back with `80 * n_frames` features per row, and the
    rows are exactly the clips that decode; the corrupt file is a reject."""
    ids = []
    for split in SPLITS:
        table = read_split(root, split, columns=["id", "split", "n_frames", "features"])
        assert table.num_rows == summary["splits"][split]["clips"] >= 1, split
        for row in table.to_pylist():
            assert row["split"] == split
            assert row["n_frames"] > 100, row["id"]  # every clip is 2-8 s of speech
            assert len(row["features"]) == NUM_MEL_BINS * row["n_frames"], row["id"]
            ids.append(row["id"])
    assert sorted(ids) == sorted(_expected_ids(corpus_root))
    rejects = read_rejects(root).to_pylist()
    assert [(r["id"], r["reason"]) for r in rejects] == [(BROKEN, "undecodable")]
    assert BROKEN in rejects[0]["detail"]


def _free_ports(n: int) -> list[int]:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


# --- S3 ---------------------------------------------------------------------


@pytest.fixture
def s3():
    """moto's S3 server on loopback with one empty bucket; a boto3 client for it."""
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
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        yield client, f"{host}:{port}"
    finally:
        server.stop()
        werkzeug.setLevel(level)


def _keys(client, prefix: str) -> dict[str, str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_ingest_writes_readable_shards_to_s3(ray_session, corpus, s3):
    client, endpoint = s3
    uri = f"s3://{ACCESS_KEY}:{SECRET_KEY}@{BUCKET}/shards?endpoint_override={endpoint}&scheme=http"

    summary = ingest(corpus, uri)

    keys = _keys(client, "shards/")
    for split in SPLITS:
        assert any(k.startswith(f"shards/{split}/") and k.endswith(".parquet") for k in keys), (split, sorted(keys))
    for name in ("summary.json", "rejects.parquet", "labels.json", "config.json"):
        assert f"shards/{name}" in keys
    stored = json.loads(client.get_object(Bucket=BUCKET, Key="shards/summary.json")["Body"].read())
    assert stored == summary
    assert SECRET_KEY not in json.dumps(stored)  # credentials never land in artifacts
    assert json.loads(client.get_object(Bucket=BUCKET, Key="shards/labels.json")["Body"].read())
    _assert_reconciles(stored, corpus)
    _assert_shards(uri, stored, corpus)

    with pytest.raises(StorageError, match="not empty") as refused:
        ingest(corpus, uri)
    assert SECRET_KEY not in str(refused.value)
    assert _keys(client, "shards/") == keys  # the refusal left the shards alone


# --- ray job submit ---------------------------------------------------------


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
    """A running head: its dashboard address and the environment (token
    included) its clients need."""

    def __init__(self, dashboard: str, env: dict[str, str]) -> None:
        self.dashboard, self.env = dashboard, env

    def ray(self, *args: str, token: str | None = None, timeout_s: float = 120) -> subprocess.CompletedProcess:
        env = dict(self.env, RAY_AUTH_TOKEN=token) if token else self.env
        return subprocess.run(
            [str(VENV_BIN / "ray"), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s
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
        yield RayHead(f"http://127.0.0.1:{dashboard}", env)
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


def test_featurize_job_runs_on_a_ray_start_head(ray_head, corpus, tmp_path):
    out = tmp_path / "shards"
    job_id = f"featurize-{secrets.token_hex(4)}"

    refused = ray_head.ray("job", "list", "--address", ray_head.dashboard, token=secrets.token_hex(32))
    assert refused.returncode != 0 and "authentication" in refused.stderr.lower(), refused.stderr[-2000:]

    # .venv is never uploaded: Ray excludes it by default and honours .gitignore.
    submitted = ray_head.ray(
        "job", "submit", "--address", ray_head.dashboard, "--submission-id", job_id,
        "--working-dir", str(REPO), "--", "python", "jobs/featurize.py", str(corpus), str(out),
        timeout_s=300,
    )  # fmt: skip
    assert submitted.returncode == 0, f"{submitted.stdout[-4000:]}\n{submitted.stderr[-4000:]}"
    assert "discovered 9 = accepted 8 + rejected 1" in submitted.stdout  # the job's own summary, streamed back
    status = ray_head.ray("job", "status", "--address", ray_head.dashboard, job_id)
    assert status.returncode == 0 and f"Job '{job_id}' succeeded" in status.stdout + status.stderr, status

    summary = json.loads((out / "summary.json").read_text())
    assert summary["out"] == str(out)
    for split in SPLITS:
        assert list((out / split).glob("*.parquet")), split
    _assert_reconciles(summary, corpus)
    _assert_shards(str(out), summary, corpus)


def test_session_cluster_outlives_the_separate_head(ray_session):
    """Runs after the head above was stopped: the session's own cluster, in
    this process, still runs tasks."""
    assert ray_session.get(ray_session.remote(lambda: os.getpid()).remote()) != os.getpid()
    assert ray_session.cluster_resources()["CPU"] == 2
