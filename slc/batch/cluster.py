"""The Ray cluster that ingest, train and label run on."""

from __future__ import annotations

import ray


def connect(dashboard: bool = False) -> None:
    """Join the Ray cluster this process belongs to (a `ray job submit`,
    RAY_ADDRESS, a `ray start` on this machine), else start one here.

    One started here has the dashboard only when asked for: its processes
    cost about a second of every start on a small machine and a share of
    its cores while the job runs, and slc shows its own progress. Run
    `ray start --head` first to have one."""
    if not ray.is_initialized():
        ray.init(include_dashboard=dashboard)
