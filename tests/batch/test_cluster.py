"""How slc starts Ray."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
import ray

from slc.batch import cluster

RETRY_MS = "RAY_raylet_client_connect_timeout_milliseconds"
ATTEMPTS = "RAY_raylet_client_num_connect_attempts"


def test_a_ray_started_by_slc_retries_its_sockets_every_50_ms_over_10_s(monkeypatch):
    seen = {}
    monkeypatch.delenv(RETRY_MS, raising=False)
    monkeypatch.delenv(ATTEMPTS, raising=False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(kwargs, env={k: os.environ.get(k) for k in (RETRY_MS, ATTEMPTS)}))
    cluster.init(include_dashboard=False)
    assert seen == {"include_dashboard": False, "env": {RETRY_MS: "50", ATTEMPTS: "200"}}
    assert RETRY_MS not in os.environ and ATTEMPTS not in os.environ  # only for the processes Ray starts


def test_a_users_own_ray_settings_win(monkeypatch):
    seen = {}
    monkeypatch.setenv(RETRY_MS, "1000")
    monkeypatch.delenv(ATTEMPTS, raising=False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: seen.update(os.environ))
    cluster.init()
    assert (seen[RETRY_MS], seen[ATTEMPTS]) == ("1000", "200")



def _init_interrupted(monkeypatch, times: int) -> list[str]:
    """cluster.init on a `ray.init` that gets `times` Ctrl-Cs: what it got done."""
    done = []

    def init(**kwargs):
        for i in range(times):
            signal.raise_signal(signal.SIGINT)
            done.append(f"after Ctrl-C {i + 1}")
        done.append("Ray started")

    monkeypatch.setattr(ray, "init", init)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, not a background job
    try:
        with pytest.raises(KeyboardInterrupt):
            cluster.init()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    return done


def test_a_ctrl_c_while_ray_starts_interrupts_once_it_has_started(monkeypatch):
    assert _init_interrupted(monkeypatch, 1) == ["after Ctrl-C 1", "Ray started"]


def test_a_second_ctrl_c_while_ray_starts_interrupts_at_once(monkeypatch):
    assert _init_interrupted(monkeypatch, 2) == ["after Ctrl-C 1"]


# Ctrl-C (or SIGTERM) as soon as `ray.init` has started the raylet, which is starting its agents.
INTERRUPTED_START = """
import signal
import ray, ray._private.services as services
from slc.batch import cluster

signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, not a background job
start_raylet = services.start_raylet
def interrupted(*args, **kwargs):
    started = start_raylet(*args, **kwargs)
    signal.raise_signal(signal.{signal})
    return started
services.start_raylet = interrupted
try:
    cluster.init(address="local", include_dashboard=False, logging_level="ERROR")
except KeyboardInterrupt:
    print("interrupted; Ray started:", ray.is_initialized(), flush=True)
    raise
print("not interrupted", flush=True)
"""


def _session_processes(sid: int) -> list[str]:
    rows = subprocess.run(["ps", "-eo", "sid=,args="], capture_output=True, text=True, check=True).stdout.splitlines()
    return [row.split(None, 1)[1][:100] for row in rows if row.split(None, 1)[0] == str(sid)]


def _run_alone(script: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`script` run by Python in a session of its own (in `env`, else this
    process's environment) -> (its run, the processes of that session left after it)."""
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env=env,
    )  # fmt: skip
    try:
        out = child.communicate(timeout=120)[0]
        deadline = time.monotonic() + 15
        while (left := _session_processes(child.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(child.args, child.returncode, out), left


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_while_ray_starts_stops_once_it_has_started_and_leaves_no_process(name):
    run, left = _run_alone(INTERRUPTED_START.replace("{signal}", name))
    assert "interrupted; Ray started: True" in run.stdout, run.stdout
    assert run.returncode != 0
    assert left == [], f"Ray processes left running: {left}"


# `docker stop`, a pod's end, `ray job stop`: SIGTERM to a process that started Ray.
TERMINATED = """
import os, signal, time
import ray
from slc.batch import cluster

cluster.init(address="local", include_dashboard=False, logging_level="ERROR")
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
except KeyboardInterrupt:
    print("stopped as by Ctrl-C", flush=True)
    raise
"""


def test_sigterm_after_ray_has_started_stops_as_ctrl_c_does_without_rays_stack_trace():
    run, left = _run_alone(TERMINATED)
    assert "stopped as by Ctrl-C" in run.stdout, run.stdout
    assert "SIGTERM received" not in run.stdout, run.stdout
    assert left == [], f"Ray processes left running: {left}"


SHUT_DOWN = """
import ray
from slc.batch import cluster

cluster.init(address="{address}", include_dashboard=False, logging_level="ERROR")
ray.get(ray.remote(lambda: 1).remote())
cluster.shutdown()
print("shut down", flush=True)
"""


def test_shutting_down_a_ray_started_here_leaves_no_process():
    run, left = _run_alone(SHUT_DOWN.replace("{address}", "local"))
    assert "shut down" in run.stdout, run.stdout
    assert left == [], f"Ray processes left running: {left}"


def test_shutting_down_after_joining_a_cluster_leaves_every_process_of_the_cluster_running(ray_head):
    """The monitor that `shutdown` stops at once is the one of a Ray started
    here: a cluster the process joined keeps its own."""
    before = ray_head.processes()
    assert any("autoscaler/_private/monitor.py" in line for line in before.values()), before
    run, _ = _run_alone(SHUT_DOWN.replace("{address}", ray_head.address), env=ray_head.env)
    assert "shut down" in run.stdout, run.stdout
    after = ray_head.processes()
    assert before.items() <= after.items(), f"processes of the cluster gone: {set(before.items()) - set(after.items())}"
