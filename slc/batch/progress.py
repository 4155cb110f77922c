"""Progress events from Ray tasks and workers back to the driver.

A stage that runs on Ray hands a `Reporter` to its tasks; each event a task
sends (a small dict) reaches a callback on the driver, in the order one sender
sent them. The driver renders progress however it likes; the stages stay free
of terminal code.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

log = logging.getLogger(__name__)

# A stage's progress on the driver: (units done, units in all, figures worth showing).
ProgressFn = Callable[..., None]


@ray.remote(num_cpus=0)
class _Mailbox:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def put(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def take(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events


class Reporter:
    """Picklable: `report(**event)` in a task or worker sends `event` to the
    driver's mailbox and waits (a round trip, about a millisecond) until it is
    there, so a task that has returned has delivered all its events. Progress
    never fails the work: with the mailbox gone, events are dropped."""

    def __init__(self, mailbox: Any) -> None:
        self._mailbox = mailbox
        self._lost = False

    def __call__(self, **event: Any) -> None:
        if self._lost:
            return
        try:
            ray.get(self._mailbox.put.remote(event))
        except ray.exceptions.RayError as error:
            self._lost = True
            log.warning("progress events are no longer delivered: %s", type(error).__name__)


@contextlib.contextmanager
def relay(on_event: Callable[[dict[str, Any]], None] | None, interval_s: float = 0.5) -> Iterator[Reporter | None]:
    """Yields a `Reporter` whose events reach `on_event` on the driver, from a
    background thread, at most about `interval_s` late; the last ones when the
    block ends. With `on_event=None` yields None and starts nothing."""
    if on_event is None:
        yield None
        return
    # Beside the driver: a mailbox on a worker node would go down with it.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    mailbox = _Mailbox.options(scheduling_strategy=here).remote()
    stop = threading.Event()

    def deliver() -> None:
        try:
            events = ray.get(mailbox.take.remote())
        except ray.exceptions.RayError:
            return  # progress is lost with its mailbox; the stage goes on
        for event in events:
            on_event(event)

    def poll() -> None:
        while not stop.wait(interval_s):
            deliver()

    thread = threading.Thread(target=poll, name="slc-progress", daemon=True)
    thread.start()
    try:
        yield Reporter(mailbox)
    finally:
        stop.set()
        thread.join()
        deliver()  # the last events, sent just before the stage returned
        ray.kill(mailbox)
