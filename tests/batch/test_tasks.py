"""A function over blocks in Ray tasks: every block's result once, a bounded
number in flight, a dead worker's task run again, a block whose worker keeps
dying run again in pieces, a bug raised on the driver."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import ray
import ray.cloudpickle

from slc.batch.tasks import run_tasks

# The functions below travel to Ray's workers by value: this module is not importable there.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _double(block: int, offset: int) -> int:
    return 2 * block + offset


def test_every_block_gives_its_result_once(ray_session):
    results = []
    run_tasks(_double, range(20), {"offset": 1}, num_cpus=1, on_done=results.append, name="double")
    assert sorted(results) == [2 * n + 1 for n in range(20)]


def test_blocks_are_taken_as_tasks_finish_not_all_at_once(ray_session):
    taken, finished = [], []

    def blocks():
        for n in range(30):
            taken.append(len(finished))  # how many had finished when this block was submitted
            yield n

    run_tasks(_double, blocks(), {"offset": 0}, num_cpus=1, on_done=finished.append, name="double", in_flight=1)
    slots = int(ray.cluster_resources()["CPU"])
    assert len(finished) == 30
    # block n is submitted only once n - slots have finished: at most `slots` in flight
    assert all(done >= n - slots for n, done in enumerate(taken)), taken


def _dies_once(block: int, marks: str) -> int:
    mark = Path(marks) / str(block)
    if block == 3 and not mark.exists():
        mark.touch()
        os._exit(1)  # the worker process dies mid-task, as on a lost node
    return block


def test_a_task_whose_worker_dies_runs_again(ray_session, tmp_path):
    results = []
    run_tasks(_dies_once, range(6), {"marks": str(tmp_path)}, num_cpus=1, on_done=results.append, name="dies-once")
    assert sorted(results) == list(range(6))
    assert (tmp_path / "3").exists()


def _fails_on_two(block: int) -> int:
    if block == 2:
        raise ValueError(f"block {block} is bad")
    return block


def test_an_exception_stops_the_run_and_is_raised_on_the_driver(ray_session):
    taken = []

    def blocks():
        for n in range(100):
            taken.append(n)
            yield n

    with pytest.raises(ValueError, match="block 2 is bad"):
        run_tasks(_fails_on_two, blocks(), {}, num_cpus=1, on_done=lambda result: None, name="fails")
    assert len(taken) < 100, "blocks went on being submitted after the failure"


def _dies_on_poison(block: list[str]) -> list[str]:
    if "poison" in block:
        os._exit(1)  # every time: as a decoder that crashes on one file
    return block


def test_a_block_whose_worker_keeps_dying_runs_again_a_piece_per_task_and_the_killer_is_lost_alone(ray_session):
    results = []
    run_tasks(
        _dies_on_poison, [["a", "poison", "b"], ["c"]], {}, num_cpus=1, on_done=results.append, name="poison",
        split=lambda block: [[item] for item in block], lost=lambda block, error: ("lost", block, type(error).__name__),
        max_retries=1,
    )  # fmt: skip
    assert sorted(map(str, results)) == sorted(map(str, [["a"], ["b"], ["c"], ("lost", ["poison"], "WorkerCrashedError")]))


def test_without_lost_a_worker_that_keeps_dying_is_an_error(ray_session):
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        run_tasks(_dies_on_poison, [["poison"]], {}, num_cpus=1, on_done=lambda result: None, name="poison", max_retries=0)
