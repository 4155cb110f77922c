"""GPU or CPU: decided from the flag and the cluster's resources when a run
starts, and said in the first lines of its log."""

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

from slc.config import TrainConfig
from slc.training.placement import choose_device, scaling

from conftest import REPO

NO_GPU = {"CPU": 8.0, "memory": 3e10}
TWO_GPUS = {"CPU": 8.0, "GPU": 2.0}


@pytest.mark.parametrize(
    "flag, resources, use_gpu, reason",
    [
        (None, NO_GPU, False, "training on CPU: the cluster has no GPUs now and --gpu was not given; "
                              "pass --gpu to request GPU nodes"),
        (None, {"CPU": 0.0}, False, "training on CPU: the cluster has no GPUs now and --gpu was not given"),
        (None, TWO_GPUS, True, "training on GPU: the cluster has 2 GPUs now"),
        (True, NO_GPU, True, "training on GPU: --gpu was given and the cluster has no GPUs now; "
                             "the run waits for the autoscaler to start GPU nodes"),
        (True, TWO_GPUS, True, "training on GPU: --gpu was given and the cluster has 2 GPUs now"),
        (False, TWO_GPUS, False, "training on CPU: --no-gpu was given"),
    ],
)  # fmt: skip
def test_device_follows_the_flag_then_the_cluster(flag, resources, use_gpu, reason):
    assert choose_device(flag, resources)[0] is use_gpu
    assert choose_device(flag, resources)[1].startswith(reason)


def test_gpu_flag_asks_ray_for_one_gpu_per_worker_on_a_cluster_without_gpus():
    # What makes the autoscaler start GPU nodes: a request for GPUs.
    config, _ = scaling(TrainConfig(workers=4, use_gpu=True), {"CPU": 0.0})
    assert config.use_gpu and config.num_workers == 4 and config.num_gpus_per_worker == 1
    assert 0 < config.num_cpus_per_worker <= 1


def test_without_the_flag_a_cpu_cluster_gets_cpu_workers_that_leave_a_cpu_to_ray_data():
    config, _ = scaling(TrainConfig(workers=2), {"CPU": 2.0})
    assert not config.use_gpu and config.num_gpus_per_worker == 0 and config.num_cpus_per_worker == 0.5


def test_a_ray_node_with_a_gpu_gets_gpu_workers():
    """A real Ray node declaring one GPU (no CUDA needed): the decision reads
    it from `ray.cluster_resources()` and a worker's request is granted a GPU."""
    script = textwrap.dedent(
        """
        import json, sys
        import ray
        from slc.config import TrainConfig
        from slc.training.placement import scaling

        ray.init(address="local", num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False,
                 _temp_dir=sys.argv[1])
        try:
            config, reason = scaling(TrainConfig(workers=1), ray.cluster_resources())
            worker = ray.remote(num_cpus=config.num_cpus_per_worker, num_gpus=config.num_gpus_per_worker)(
                lambda: ray.get_gpu_ids()
            )
            print(json.dumps({"use_gpu": config.use_gpu, "reason": reason, "gpu_ids": ray.get(worker.remote(), timeout=60)}))
        finally:
            ray.shutdown()
        """
    )
    # A temp dir of its own keeps this Ray apart from the session's; short, as
    # Ray's socket paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="slc-gpu-", dir="/tmp")
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, temp_dir], cwd=REPO, capture_output=True, text=True, timeout=180
        )
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    decided = json.loads(result.stdout.splitlines()[-1])
    assert decided == {"use_gpu": True, "reason": "training on GPU: the cluster has 1 GPU now", "gpu_ids": [0]}
