"""Ray Data settings shared by the stages that run on it (ingest, label)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import ray.data


@contextlib.contextmanager
def without_resource_reservation() -> Iterator[None]:
    """Ray Data reserves a share of the CPUs for each operator; on a small
    machine that leaves the operator that matters (featurizing at ingest,
    reading beside the classifier when labelling) a single task at a time.
    Lifted for the duration of a run."""
    context = ray.data.DataContext.get_current()
    reserving = context.op_resource_reservation_enabled
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        context.op_resource_reservation_enabled = reserving
