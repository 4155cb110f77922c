"""`ray job submit ... -- python jobs/train.py`, as the README tells users to
run training on a cluster, against a head started with `ray start --head`."""

import json
import secrets
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_train_job_succeeds_and_leaves_the_best_checkpoint(ray_head, small_shards, tmp_path):
    out = tmp_path / "run"
    job_id = f"train-{secrets.token_hex(4)}"
    submitted = ray_head.ray(
        "job", "submit", "--address", ray_head.dashboard, "--submission-id", job_id,
        "--working-dir", str(REPO), "--",
        "python", "jobs/train.py", str(small_shards), str(out),
        "--preset", "tiny", "--workers", "1", "--epochs", "1", "--batch-size", "8",
        timeout_s=400,
    )  # fmt: skip
    assert submitted.returncode == 0, f"{submitted.stdout[-4000:]}\n{submitted.stderr[-4000:]}"
    assert "best checkpoint: epoch 1 of 1" in submitted.stdout
    status = ray_head.ray("job", "status", "--address", ray_head.dashboard, job_id)
    assert f"Job '{job_id}' succeeded" in status.stdout + status.stderr, status

    for name in ("model.safetensors", "config.json", "labels.json", "metrics.json", "history.json"):
        assert (out / "best" / name).is_file(), name
    assert json.loads((out / "best" / "labels.json").read_text()) == {"labels": ["de", "en"]}
    assert [row["epoch"] for row in json.loads((out / "best" / "history.json").read_text())] == [1]
