"""Where a training run's workers go: GPUs or CPUs, and the logical CPUs each
Ray Train worker holds, from what the user asked and the cluster's resources
when the run starts (`ray.cluster_resources()`).

An autoscaling cluster has no GPU nodes until something asks for GPUs, so
"use GPUs when the cluster has them" trains on CPU there: asking (`--gpu`) is
what makes the autoscaler start GPU nodes, and Ray Train waits for them.
"""

from __future__ import annotations

from collections.abc import Mapping

from ray.train import ScalingConfig

from slc.config import TrainConfig


def choose_device(use_gpu: bool | None, resources: Mapping[str, float]) -> tuple[bool, str]:
    """`use_gpu`: True (--gpu), False (--no-gpu) or None (decide here);
    `resources`: the cluster's total resources, as `ray.cluster_resources()`.
    -> (use GPUs, a sentence saying which and why, for the first lines of the log)."""
    gpus = resources.get("GPU", 0)
    count = f"{gpus:g} GPU{'' if gpus == 1 else 's'}"
    if use_gpu:
        if gpus:
            return True, f"training on GPU: --gpu was given and the cluster has {count} now"
        return True, (
            "training on GPU: --gpu was given and the cluster has no GPUs now; "
            "the run waits for the autoscaler to start GPU nodes"
        )
    if use_gpu is False:
        return False, "training on CPU: --no-gpu was given"
    if gpus:
        return True, f"training on GPU: the cluster has {count} now"
    return False, (
        "training on CPU: the cluster has no GPUs now and --gpu was not given; pass --gpu to request GPU nodes"
    )


def scaling(config: TrainConfig, resources: Mapping[str, float]) -> tuple[ScalingConfig, str]:
    """Ray Train's ScalingConfig for `config.workers` workers (one GPU each when
    GPUs are used) and the sentence of `choose_device`."""
    use_gpu, reason = choose_device(config.use_gpu, resources)
    # Workers holding every CPU starve Ray Data's read tasks and the run waits forever.
    cpus = config.cpus_per_worker or min(1.0, max(0.25, (resources.get("CPU", 1) - 1) / config.workers))
    return ScalingConfig(num_workers=config.workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}), reason
