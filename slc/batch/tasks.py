"""A function over blocks of work, one Ray task per block, without Ray Data.

For a stage that needs nothing more than "run this on each block, anywhere":
Ray Data's executor starts helper actors and has every worker import it,
seconds of core time in a small cluster's first job, which a job of seconds
then waits for. At most `in_flight` tasks per slot of the cluster (its CPUs
over each task's) are submitted at once, so a long listing is not put in
the object store whole, and a cluster that grows gets more.

Tasks are spread over the cluster's nodes. A task whose worker dies (a
crash, a lost node) runs again, up to
`max_retries` times: the function must be safe to run twice on a block.
After that, the block is run again as its pieces (`split`), each in a task
of its own, so that one input that kills every worker it lands on takes no
other input down; a piece that splits no further is handed to `lost`. An
exception the function raises stops the run: the tasks left are cancelled
and the error is raised on the driver.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

import ray

# How a task ends when its worker process, or the node under it, went away.
WORKER_DIED = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError)

# Tries of a task whose worker died, after the first: Ray's default for tasks.
MAX_RETRIES = 3


def run_tasks(
    fn: Callable[..., Any],
    blocks: Iterable[Any],
    kwargs: dict[str, Any],
    num_cpus: float,
    on_done: Callable[[Any], None],
    name: str,
    split: Callable[[Any], list[Any]] = lambda block: [block],
    lost: Callable[[Any, Exception], Any] | None = None,
    in_flight: int = 2,
    max_retries: int = MAX_RETRIES,
) -> None:
    """`fn(block, **kwargs)` for each of `blocks` in a Ray task named `name`
    holding `num_cpus`; `on_done(result)` on the driver as each finishes.
    A block whose worker died past `max_retries` runs again as `split(block)`
    when that gives more than one piece; else `on_done(lost(block, error))`
    (without `lost`, the error is raised)."""
    remote = ray.remote(fn).options(
        num_cpus=num_cpus, name=name, scheduling_strategy="SPREAD",
        max_retries=max_retries, retry_exceptions=[ray.exceptions.RaySystemError],
    )  # fmt: skip
    shared = {key: ray.put(value) for key, value in kwargs.items()}  # once, not once per task
    fresh, pieces = iter(blocks), collections.deque()
    running: dict[ray.ObjectRef, Any] = {}
    try:
        while True:
            room = in_flight * max(1, int(ray.cluster_resources().get("CPU", 1.0) / max(num_cpus, 1e-9)))
            while len(running) < room and (block := pieces.popleft() if pieces else next(fresh, None)) is not None:
                running[remote.remote(block, **shared)] = block
            if not running:
                return
            (ref,), _ = ray.wait(list(running), num_returns=1)
            block = running.pop(ref)
            try:
                result = ray.get(ref)
            except WORKER_DIED as error:
                if len(parts := split(block)) > 1:
                    pieces.extend(parts)
                    continue
                if lost is None:
                    raise
                result = lost(block, error)
            on_done(result)
    finally:
        for ref in running:
            ray.cancel(ref)
