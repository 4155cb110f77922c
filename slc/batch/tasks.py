"""A function over blocks of work, one Ray task per block, without Ray Data.

For a stage that needs nothing more than "run this on each block, anywhere":
Ray Data's executor starts helper actors and has every worker import it,
seconds of core time in a small cluster's first job, which a job of seconds
then waits for. At most `in_flight` tasks per slot of the cluster (its CPUs
over each task's) are submitted at once, so a long listing is not put in
the object store whole, and a cluster that grows gets more.

Tasks are spread over the cluster's nodes and a task whose worker or node
dies runs again, as Ray Data's are and do: the function must be safe to run
twice on a block. An exception it raises stops the run:
the tasks left are cancelled and the error is raised on the driver.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import ray


def run_tasks(
    fn: Callable[..., Any],
    blocks: Iterable[Any],
    kwargs: dict[str, Any],
    num_cpus: float,
    on_done: Callable[[Any], None],
    name: str,
    in_flight: int = 2,
) -> None:
    """`fn(block, **kwargs)` for each of `blocks` in a Ray task named `name`
    holding `num_cpus`; `on_done(result)` on the driver as each finishes."""
    remote = ray.remote(fn).options(
        num_cpus=num_cpus, name=name, scheduling_strategy="SPREAD",
        max_retries=-1, retry_exceptions=[ray.exceptions.RaySystemError],
    )  # fmt: skip
    shared = {key: ray.put(value) for key, value in kwargs.items()}  # once, not once per task
    waiting = iter(blocks)
    running: list[ray.ObjectRef] = []
    try:
        while True:
            slots = max(1, int(ray.cluster_resources().get("CPU", 1.0) / max(num_cpus, 1e-9)))
            room = max(0, in_flight * slots - len(running))
            running += [remote.remote(block, **shared) for block in itertools.islice(waiting, room)]
            if not running:
                return
            done, running = ray.wait(running, num_returns=1)
            on_done(ray.get(done[0]))
    finally:
        for ref in running:
            ray.cancel(ref)
