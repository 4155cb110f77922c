"""Ray Data settings and sinks shared by the stages that run on it (ingest,
label's pool shape)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import ray.data
from ray.data.block import BlockAccessor
from ray.data.datasource.datasink import Datasink

from slc.batch.sink import PartWriter


def without_resource_reservation() -> contextlib.AbstractContextManager[None]:
    """Ray Data reserves a share of the CPUs for each operator; on a small
    machine that leaves the operator that matters (featurizing at ingest,
    reading beside the classifier when labelling) a single task at a time.
    Lifted for the duration of a run."""
    return _data_context(op_resource_reservation_enabled=False)


@contextlib.contextmanager
def references_released() -> Iterator[None]:
    """A run's object references let go of as it ends. Ray Data's executor
    holds them in reference cycles, which live on until Python's cycle
    collector comes by: until then the run's blocks stay pinned in the
    object store, and a node lost meanwhile has Ray rebuild them, the
    classifier actors that made them restarted to hold their CPUs again."""
    try:
        yield
    finally:
        gc.collect()


def errored_blocks_dropped() -> contextlib.AbstractContextManager[None]:
    """A block whose task fails past its retries is dropped and the run goes
    on (Ray Data stops the whole run at the first, by default): for a run
    that finds out afterwards what it did not write, and redoes it."""
    return _data_context(max_errored_blocks=-1)


@contextlib.contextmanager
def _data_context(**settings: Any) -> Iterator[None]:
    """Ray Data's `settings` (attributes of its DataContext) while the block
    runs, those it had restored after."""
    context = ray.data.DataContext.get_current()
    before = {name: getattr(context, name) for name in settings}
    for name, value in settings.items():
        setattr(context, name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            setattr(context, name, value)


class PartSink(PartWriter, Datasink[pa.Table | None]):
    """`PartWriter` as a Ray Data sink: each task's rows written as the task
    finishes; a write of no rows returns None to the driver."""

    def write(self, blocks, ctx) -> pa.Table | None:
        tables = [t for t in (BlockAccessor.for_block(b).to_arrow() for b in blocks) if t.num_rows]
        return self.write_table(pa.concat_tables(tables)) if tables else None
