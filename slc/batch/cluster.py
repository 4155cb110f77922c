"""The Ray cluster that ingest, train and label run on."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

import ray

log = logging.getLogger(__name__)

# RAY_ADDRESS as host:port of a cluster's GCS (not `auto`, `local` or a ray:// client address).
_GCS_ADDRESS = re.compile(r"^(?P<host>[\w.-]+):(?P<port>\d+)$")

# Ray's processes retry a unix socket that is not listening yet once a
# second. A starting raylet connects to its own object store as the store's
# thread starts, and when it loses that race every start takes a second
# longer (two starts in three here). Retrying every 50 ms over the same 10 s
# takes that second off. A user's own RAY_ settings win.
_SOCKET_RETRY_ENV = {
    "RAY_raylet_client_connect_timeout_milliseconds": "50",
    "RAY_raylet_client_num_connect_attempts": "200",
}


def check_address() -> None:
    """ConnectionError when RAY_ADDRESS names a port nothing listens on: Ray
    itself would retry for minutes. Cheap, so commands run it before they
    write any output."""
    address = os.environ.get("RAY_ADDRESS", "")
    if ray.is_initialized() or not (match := _GCS_ADDRESS.match(address)):
        return
    try:
        socket.create_connection((match["host"], int(match["port"])), timeout=5).close()
    except OSError as error:
        raise ConnectionError(
            f"RAY_ADDRESS={address}: no Ray cluster answers there ({error.strerror or error}); "
            "start one with `ray start --head`, or unset RAY_ADDRESS to run on a Ray of this command's own"
        ) from None


def connect(dashboard: bool = False) -> None:
    """Join the Ray cluster this process belongs to (a `ray job submit`,
    RAY_ADDRESS, a `ray start` on this machine), else start one here
    (see `check_address` for an address nothing answers at).

    One started here has the dashboard only when asked for: its processes
    cost about a second of every start on a small machine and a share of
    its cores while the job runs, and slc shows its own progress. Run
    `ray start --head` first to have one."""
    if ray.is_initialized():
        return
    check_address()
    init(include_dashboard=dashboard)


def init(environ: Mapping[str, str] = MappingProxyType({}), **kwargs) -> None:
    """`ray.init(**kwargs)`, with `environ` in the environment of the processes
    a Ray it starts inherits, and those processes retrying their sockets
    often (see `_SOCKET_RETRY_ENV`). A variable set already keeps its value.
    A Ctrl-C or SIGTERM while Ray starts takes effect once it has (see
    `_stops_held`); a SIGTERM after it has started stops this process as
    Ctrl-C does."""
    with _environment({**_SOCKET_RETRY_ENV, **environ}), _stops_held():
        ray.init(**kwargs)
    if threading.current_thread() is threading.main_thread():
        # Ray's core worker takes SIGTERM with a handler that prints a stack
        # trace and kills the process: no finally block runs.
        signal.signal(signal.SIGTERM, stop_as_on_ctrl_c)


def shutdown() -> None:
    """`ray.shutdown()`, a second sooner when this process started the Ray.
    Ray stops its GCS before the autoscaler's monitor, and gives the monitor
    a second to exit gracefully, which it spends reporting its termination
    to the GCS that is gone; then kills it. The monitor holds nothing of a
    job, so it is killed first, at once."""
    node = ray._private.worker._global_node  # None when not connected; no processes of its own when joined
    if node is not None:
        node.kill_monitor(check_alive=False)
    ray.shutdown()


def stop_as_on_ctrl_c(signum: int, frame: Any) -> None:
    """A signal handler: raise KeyboardInterrupt, as Ctrl-C does (finally
    blocks run, then Ray's exit handlers stop the processes it started)."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def _stops_held() -> Iterator[None]:
    """A first Ctrl-C (SIGINT) or SIGTERM in the block stops this process at
    its end, as Ctrl-C does; a second one at once. Ray interrupted while it
    starts its processes leaves its agents running for a minute or more;
    started, it stops them all at exit."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are the main thread's to handle
        return
    ctrl_c = signal.getsignal(signal.SIGINT)
    # An ignored SIGINT (a background job) stays ignored.
    stops = {signal.SIGTERM: stop_as_on_ctrl_c} | ({signal.SIGINT: ctrl_c} if callable(ctrl_c) else {})
    before = {signum: signal.getsignal(signum) for signum in stops}
    held: list[tuple[int, Any]] = []

    def hold(signum: int, frame: Any) -> None:
        if held:
            stops[signum](signum, frame)
            return
        held.append((signum, frame))
        log.warning("interrupted: stopping as soon as Ray has started (Ctrl-C again stops at once)")

    for signum in stops:
        signal.signal(signum, hold)
    try:
        with _without_rays_sigterm_handler():
            yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    if held:
        signum, frame = held[0]
        stops[signum](signum, frame)


@contextlib.contextmanager
def _without_rays_sigterm_handler() -> Iterator[None]:
    """`ray.init` sets SIGTERM to exit at once as it begins, and its node to
    stop the processes started so far (not their children, the agents): the
    block keeps Ray's handlers out, through the function Ray sets them with."""
    utils = ray._private.utils
    set_sigterm_handler = utils.set_sigterm_handler
    utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        utils.set_sigterm_handler = set_sigterm_handler


@contextlib.contextmanager
def _environment(variables: Mapping[str, str]) -> Iterator[None]:
    """`variables` set in this process's environment (where not set already)
    while the block runs: for the processes a `ray.init` starts to inherit."""
    added = {name: value for name, value in variables.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            del os.environ[name]
