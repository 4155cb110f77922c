"""Progress events from Ray tasks and workers back to the driver.

A stage that runs on Ray hands a `Reporter` to its tasks; each event a task
sends (a small dict) reaches a callback on the driver, in the order one sender
sent them. The driver renders progress however it likes; the stages stay free
of terminal code.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import ray

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
    there, so a task that has returned has delivered all its events."""

    def __init__(self, mailbox: Any) -> None:
        self._mailbox = mailbox

    def __call__(self, **event: Any) -> None:
        ray.get(self._mailbox.put.remote(event))


@contextlib.contextmanager
def relay(on_event: Callable[[dict[str, Any]], None] | None, interval_s: float = 0.5) -> Iterator[Reporter | None]:
    """Yields a `Reporter` whose events reach `on_event` on the driver, from a
    background thread, at most about `interval_s` late; the last ones when the
    block ends. With `on_event=None` yields None and starts nothing."""
    if on_event is None:
        yield None
        return
    mailbox = _Mailbox.remote()
    stop = threading.Event()

    def deliver() -> None:
        for event in ray.get(mailbox.take.remote()):
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
