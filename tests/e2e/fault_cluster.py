"""A Ray cluster of several nodes on this machine, whose worker nodes tests
kill mid-run as a crash would.

The head has no CPUs, so every task, actor, training worker and replica runs
on a worker node: a killed node always takes work with it. The cluster lives
in a temp dir of its own (RAY_TMPDIR), so no `ray.init()` elsewhere on the
machine finds it, and the session's single-node Ray is stopped while it runs
and started again after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import start_session_ray

WORKER_NODES = 2
CPUS_PER_NODE = 2
OBJECT_STORE_BYTES = 100 * 2**20


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> set[int]:
    """Live processes below `pid` in the process tree."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclasses.dataclass
class Kill:
    """What a kill switch did: the node, why it was chosen, and how far the
    run had got (seconds since it started, the progress it reported)."""

    node_id: str
    what: str
    at_s: float
    progress: str


class FaultCluster:
    """A head without CPUs and worker nodes with CPUs; nodes are killed
    without a graceful shutdown and replaced between tests."""

    def __init__(self) -> None:
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "object_store_memory": OBJECT_STORE_BYTES,
                "include_dashboard": True,  # the state API (which node runs what) goes through it
                "dashboard_host": "127.0.0.1",
                "dashboard_port": free_port(),
                "dashboard_agent_listen_port": free_port(),
                # A killed node is found dead after about 3 s, not Ray's default 15 (five missed checks 3 s apart).
                "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
            },
        )
        self.top_up()

    @property
    def address(self) -> str:
        return self.cluster.address

    def top_up(self) -> None:
        """Add worker nodes until there are WORKER_NODES."""
        while len(self.cluster.worker_nodes) < WORKER_NODES:
            self.cluster.add_node(num_cpus=CPUS_PER_NODE, object_store_memory=OBJECT_STORE_BYTES)
        self.cluster.wait_for_nodes()

    def kill(self, node_id: str) -> None:
        """Kill every process of a worker node at once, as a crash would."""
        (node,) = [n for n in self.cluster.worker_nodes if n.node_id == node_id]
        self.cluster.remove_node(node, allow_graceful=False)

    def worker_node_ids(self) -> set[str]:
        return {n.node_id for n in self.cluster.worker_nodes}

    def shutdown(self) -> None:
        self.cluster.shutdown()


@contextlib.contextmanager
def kill_switch(
    cluster: FaultCluster,
    ready: Callable[[], str | None],
    victim: Callable[[], tuple[str, str] | None],
    started: Callable[[], float],
    timeout_s: float = 300,
) -> Iterator[list[Kill]]:
    """While the body runs, poll `ready()` (the progress so far once it is
    time to kill, else None) and `victim()` ((node id, what runs there) or
    None); kill that node once both answer. Yields the list the kill is
    recorded in; raises after the body if the kill failed."""
    kills: list[Kill] = []
    errors: list[Exception] = []
    stop = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                progress = ready()
                chosen = victim() if progress is not None else None
                if chosen is not None and chosen[0] in cluster.worker_node_ids():
                    cluster.kill(chosen[0])
                    kills.append(Kill(chosen[0], chosen[1], time.monotonic() - started(), progress))
                    return
                time.sleep(0.2)
        except Exception as error:  # noqa: BLE001 (surfaced in the test, not lost in the thread)
            errors.append(error)

    thread = threading.Thread(target=watch, name="kill-switch", daemon=True)
    thread.start()
    try:
        yield kills
    finally:
        stop.set()
        thread.join(timeout=120)
    if errors:
        raise errors[0]


def node_of_actor(name_part: str) -> tuple[str, str] | None:
    """(node id, class) of a live actor whose class name contains `name_part`."""
    from ray.util.state import list_actors

    for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True, raise_on_missing_output=False):
        if name_part in actor.class_name or name_part in (actor.repr_name or ""):
            return actor.node_id, actor.repr_name or actor.class_name
    return None


def busiest_node(name_part: str) -> tuple[str, str] | None:
    """(node id, what) of the node running the most tasks named with `name_part`."""
    from ray.util.state import list_tasks

    running = list_tasks(filters=[("state", "=", "RUNNING")], detail=True, raise_on_missing_output=False)
    nodes = Counter(t.node_id for t in running if name_part in t.name and t.node_id)
    if not nodes:
        return None
    node_id, count = nodes.most_common(1)[0]
    return node_id, f"{count} running {name_part} task(s)"


@contextlib.contextmanager
def running_cluster() -> Iterator[FaultCluster]:
    """The cluster, connected; the session's Ray, if up, is stopped meanwhile
    and started again after. Fails if any process of the cluster outlives it."""
    import ray

    session_was_up = ray.is_initialized()
    if session_was_up:
        ray.shutdown()
    # Short: Ray's unix sockets live under it and paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="slc-faults-", dir="/tmp")
    cluster = None
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("RAY_TMPDIR", temp_dir)  # its sessions and the address file it writes
            cluster = FaultCluster()
            ray.init(address=cluster.address, log_to_driver=False)
            yield cluster
    finally:
        stopping = time.monotonic()
        started_here = _descendants(os.getpid())
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        deadline = time.monotonic() + 30
        while (left := {p for p in started_here if _alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)
        stopped_s = time.monotonic() - stopping
        if session_was_up:
            start_session_ray()
        print(
            f"\n[cluster] stopped in {stopped_s:.1f} s, {len(left)} processes left behind; "
            f"session Ray back after {time.monotonic() - stopping:.1f} s"
        )
    assert not left, f"processes of the test cluster outlived it: {sorted(left)}"
