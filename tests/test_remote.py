"""slc where users run it: shards and training runs on S3 (moto's server stands
in for it), and the featurize job submitted with `ray job submit` to a Ray head
started with `ray start`, as jobs/featurize.py tells them to."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest

from slc.data.corpus import SPLITS
from slc.config import ModelConfig, TrainConfig
from slc.data.ingest import ingest
from slc.data.shards import NUM_MEL_BINS, read_rejects, read_split
from slc.storage import StorageError
from slc.data.synth import make_corpus
from slc.training.loop import train

REPO = Path(__file__).resolve().parents[1]
PER_LANG = 4
BROKEN = "de/broken__0.wav"
from conftest import S3_ACCESS_KEY as ACCESS_KEY, S3_BUCKET as BUCKET, S3_SECRET_KEY as SECRET_KEY


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


# --- S3 ---------------------------------------------------------------------


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

    # As a run cut short leaves it: a shard file and the summary missing.
    client.delete_object(Bucket=BUCKET, Key=next(k for k in keys if k.startswith("shards/train/part-")))
    client.delete_object(Bucket=BUCKET, Key="shards/summary.json")
    resumed = ingest(corpus, uri, resume=True)
    assert 0 < resumed["kept_from_earlier_run"] < stored["accepted"] == resumed["accepted"]
    _assert_reconciles(resumed, corpus)
    _assert_shards(uri, resumed, corpus)


@pytest.mark.slow
def test_training_run_and_best_checkpoint_on_s3(small_shards, s3):
    client, endpoint = s3
    uri = f"s3://{ACCESS_KEY}:{SECRET_KEY}@{BUCKET}/runs/r1?endpoint_override={endpoint}&scheme=http"
    config = TrainConfig(model=ModelConfig.preset("tiny"), epochs=2, batch_size=8, workers=1, keep_checkpoints=1)
    best = train(str(small_shards), uri, config)
    keys = _keys(client, "runs/r1/")
    assert any(k.startswith("runs/r1/run/checkpoint_") and k.endswith("/model.safetensors") for k in keys), keys
    for name in ("model.safetensors", "config.json", "labels.json", "metrics.json", "history.json"):
        assert f"runs/r1/best/{name}" in keys
    history = json.loads(client.get_object(Bucket=BUCKET, Key="runs/r1/best/history.json")["Body"].read())
    assert [row["epoch"] for row in history] == [1, 2] and best["epochs_run"] == 2
    assert SECRET_KEY not in json.dumps(best)


# --- ray job submit ---------------------------------------------------------


@pytest.mark.slow
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
