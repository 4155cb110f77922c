"""What a command shows on the terminal, and where the rest goes.

By default the terminal gets slc's own lines (`slc: ...`) and one progress
bar per long stage; Ray's log lines, the output of its workers and actors,
what native code in this process writes to stderr (Ray's C++ core), and
Python warnings go to a log file that ends as `OUT/logs/slc.log`. With
`--verbose` they show on the terminal as well, and slc's debug lines too.
`slc predict` and `slc stream`, which have no OUT, send the native notes of
their decoders to a log in the temporary directory (`decoder_notes`).
Off a TTY (CI, `ray job submit`) a bar becomes a plain line every
`PLAIN_INTERVAL_S` and one at the end. `slc serve`, which runs until
stopped, logs to a file in the temporary directory and keeps its replicas'
request lines on the terminal (`service`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from slc import storage

log = logging.getLogger("slc.terminal")

PLAIN_INTERVAL_S = 30.0
# The shortest time a plain line computes a rate over.
MIN_RATE_S = 1.0
LOG_FILE = "logs/slc.log"
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers Ray gives a handler of their own that prints to stderr.
_RAY_LOGGERS = ("ray", "ray.data", "ray.serve")
# Worker lines that reach the terminal from any actor, by their first word (Ray's and Serve's log formats).
_SHOWN_LEVELS = ("WARNING", "ERROR", "CRITICAL")


class _TerminalHandler(logging.Handler):
    """Lines to the current stderr, above any progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 -- as logging's own handlers: a failed write must not stop the job
            self.handleError(record)


class _Session:
    """This process's terminal handlers, and whether the command is verbose."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.slc = _TerminalHandler()
        self.slc.setFormatter(logging.Formatter("slc: %(message)s"))
        self.everything = _TerminalHandler()  # the root logger's, with --verbose
        self.everything.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def install(self) -> None:
        slc = logging.getLogger("slc")
        slc.addHandler(self.slc)
        slc.propagate = False  # libraries that configure the root logger would print each line twice
        slc.setLevel(logging.DEBUG if self.verbose else logging.INFO)
        root = logging.getLogger()
        if self.verbose:
            root.addHandler(self.everything)
        root.setLevel(logging.DEBUG if self.verbose else logging.INFO)
        logging.captureWarnings(True)

    def uninstall(self) -> None:
        logging.getLogger("slc").removeHandler(self.slc)
        logging.getLogger().removeHandler(self.everything)


_session: _Session | None = None


def configure(verbose: bool) -> None:
    """Set up this process's logging (see the module docstring); a later
    call replaces what an earlier one set up."""
    global _session
    if _session is not None:
        _session.uninstall()
    _session = _Session(verbose)
    _session.install()


def _current() -> _Session:
    if _session is None:
        configure(verbose=False)
    return _session


@contextlib.contextmanager
def job(out: str | Path, uses_ray: bool = True) -> Iterator[None]:
    """Around a command that writes OUT (a path or URI): everything logged,
    and with `uses_ray` what Ray's loggers, workers and actors say, goes to a
    log file. When the command succeeds the log is appended to
    `OUT/logs/slc.log`; when it fails, OUT is left alone (it may be someone
    else's directory) and the path of the log, in the temporary directory,
    is shown, unless nothing was logged (a command refusing its arguments):
    that log is removed."""
    session = _current()
    with _temporary_log("slc-", session.verbose) as file:
        path = Path(file.baseFilename)
        try:
            with _ray_to(file, session.verbose) if uses_ray else contextlib.nullcontext():
                yield
        except BaseException:
            _named_or_removed(path, "log")
            raise
    _keep(path, str(out))
    if not session.verbose:
        log.info("full log: %s", storage.join(storage.redact(str(out)), LOG_FILE))


@contextlib.contextmanager
def service() -> Iterator[None]:
    """Around a command that serves until it is stopped: everything logged,
    Ray's and Serve's loggers and the output of Ray's workers go to a log
    file in the temporary directory, named at the start. The terminal keeps
    slc's lines, the replicas' lines (a line per request) and the warnings
    and errors of other actors; with --verbose, everything."""
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    session = _current()
    with _temporary_log("slc-serve-", session.verbose) as file:
        log.info("log: %s", file.baseFilename)
        if not session.verbose:  # verbose: Ray prints every worker line itself
            dispatcher.add_handler("slc_terminal", _replica_lines(logging.getLogger("slc.serve")))
        try:
            with _ray_to(file, session.verbose):
                yield
        finally:
            dispatcher.remove_handler("slc_terminal")


@contextlib.contextmanager
def decoder_notes() -> Iterator[None]:
    """Around a command that decodes audio in this process and has no OUT
    (`slc predict`, `slc stream`): what native code writes to stderr (libmpg123's notes on a
    damaged or oddly tagged MP3) goes to a log file in the temporary
    directory, named at the end when it holds anything and removed when it is
    empty. With --verbose the notes stay on the terminal."""
    if _current().verbose:
        yield
        return
    handle, name = tempfile.mkstemp(prefix="slc-", suffix=".log")
    os.close(handle)
    try:
        with _native_stderr_to(name):
            yield
    finally:
        _named_or_removed(Path(name), "decoder messages")


def _named_or_removed(path: Path, what: str) -> None:
    """Name the log at `path` on the terminal (`slc: WHAT: PATH`) when it holds anything; remove it when empty."""
    if path.stat().st_size:
        log.info("%s: %s", what, path)
    else:
        path.unlink()


@contextlib.contextmanager
def _temporary_log(prefix: str, verbose: bool) -> Iterator[logging.FileHandler]:
    """A log file in the temporary directory that slc's loggers and the root
    logger write to while the block runs; closed (not removed) after it."""
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=".log")
    os.close(handle)
    file = logging.FileHandler(name)
    file.setFormatter(logging.Formatter(_FILE_FORMAT))
    file.setLevel(logging.DEBUG if verbose else logging.INFO)
    loggers = [logging.getLogger(n) for n in ("slc", "")]
    for logger in loggers:
        logger.addHandler(file)
    try:
        yield file
    finally:
        for logger in loggers:
            logger.removeHandler(file)
        file.close()


def _replica_lines(logger: logging.Logger) -> Callable[[dict[str, Any]], None]:
    """A handler for Ray's worker-output dispatcher: the lines of Serve's
    replicas, and the warnings and errors of other actors, as records of `logger`."""

    def write(batch: dict[str, Any]) -> None:
        replica = (batch.get("actor_name") or "").startswith("ServeReplica")
        for line in batch.get("lines", []):
            if replica or line.split(" ", 1)[0] in _SHOWN_LEVELS:
                logger.info("(%s) %s", _source(batch), line)

    return write


def _keep(path: Path, out: str) -> None:
    """Append the log at `path` to OUT/logs/slc.log, then remove it."""
    fs, root = storage.resolve(out)
    target = storage.join(root, LOG_FILE)
    fs.create_dir(storage.join(root, "logs"), recursive=True)
    earlier = storage.read_text(fs, target) if fs.get_file_info(target).is_file else ""
    storage.write_text(fs, target, earlier + path.read_text())
    path.unlink()


@contextlib.contextmanager
def _ray_to(file: logging.Handler, verbose: bool) -> Iterator[None]:
    """Ray's loggers and the output of its workers go to `file` (and, with
    `verbose`, to the terminal as Ray prints them), whenever Ray starts;
    restored on exit. A Ray that started inside is shut down here, so its
    last lines reach the file."""
    import ray
    import ray._private.worker as ray_worker
    import ray.data
    from ray._private.ray_logging import (
        global_worker_stdstream_dispatcher as dispatcher,
    )

    from slc.batch import cluster

    # A handler of their own: Ray's set-up at init reformats the handlers of its loggers.
    file, level = logging.FileHandler(file.baseFilename), file.level
    file.setFormatter(logging.Formatter(_FILE_FORMAT))
    file.setLevel(level)
    loggers = [logging.getLogger(name) for name in _RAY_LOGGERS]
    removed = {logger.name: [] if verbose else _console_handlers(logger) for logger in loggers}
    for logger in loggers:
        for handler in removed[logger.name]:
            logger.removeHandler(handler)
        logger.addHandler(file)
    workers = logging.getLogger("ray.worker_output")
    workers.propagate = False
    workers.addHandler(file)
    dispatcher.add_handler("slc_log_file", _worker_lines(workers))
    context = ray.data.DataContext.get_current()
    settings = (ray_worker._worker_logs_enabled, context.enable_progress_bars)
    if not verbose:
        # Ray's printing of worker output is what log_to_driver would start; the file has it.
        ray_worker._worker_logs_enabled = False
        # slc draws its own bars; Ray Data's would fight them for the terminal.
        context.enable_progress_bars = False
    running = ray.is_initialized()
    try:
        with contextlib.nullcontext() if verbose else _native_stderr_to(file.baseFilename):
            try:
                yield
            finally:
                if not running and ray.is_initialized():
                    cluster.shutdown()
    finally:
        ray_worker._worker_logs_enabled, context.enable_progress_bars = settings
        dispatcher.remove_handler("slc_log_file")
        workers.removeHandler(file)
        for logger in loggers:
            logger.removeHandler(file)
            for handler in removed[logger.name]:
                logger.addHandler(handler)
        file.close()


@contextlib.contextmanager
def _native_stderr_to(path: str) -> Iterator[None]:
    """What native code writes to this process's stderr goes to the log at
    `path` (Ray's core worker writes its errors there from C++, e.g. that an
    actor's arguments are in the object store); Python's `sys.stderr`, which
    slc's lines and bars write to, keeps the terminal. Nothing changes where
    `sys.stderr` is not file descriptor 2 (output captured in-process)."""
    try:
        python_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        python_fd = None
    if python_fd != 2:
        yield
        return
    python_stderr = sys.stderr
    python_stderr.flush()
    terminal_fd = os.dup(2)
    log_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = open(  # noqa: SIM115 -- closed below, with the descriptor it writes to
        terminal_fd, "w", buffering=1, encoding=python_stderr.encoding, errors=python_stderr.errors, closefd=False
    )
    try:
        yield
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(terminal_fd, 2)
        os.close(terminal_fd)


def _console_handlers(logger: logging.Logger) -> list[logging.Handler]:
    return [
        h for h in logger.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]  # fmt: skip


def _worker_lines(logger: logging.Logger) -> Callable[[dict[str, Any]], None]:
    """A handler for Ray's worker-output dispatcher: each line a worker or
    actor printed becomes a record of `logger`, prefixed like Ray's own."""

    def write(batch: dict[str, Any]) -> None:
        for line in batch.get("lines", []):
            logger.info("(%s) %s", _source(batch), line)

    return write


def _source(batch: dict[str, Any]) -> str:
    """Who printed a batch of worker lines, as Ray's own prefix names it: `Actor pid=N`."""
    return " ".join(str(s) for s in (batch.get("actor_name") or batch.get("task_name"), f"pid={batch.get('pid')}") if s)


class Bar:
    """A stage's progress, called as `bar(done, total, **figures)`: a tqdm
    bar on a TTY; elsewhere a plain line at the first update, then at most
    every `interval_s`, and one when the bar closes, written as slc's log lines are. Figures show after
    the count, e.g. `loss=0.53`."""

    def __init__(
        self, label: str, unit: str, stream: TextIO | None = None, interactive: bool | None = None,
        interval_s: float = PLAIN_INTERVAL_S,
    ) -> None:  # fmt: skip
        self.label, self.unit, self.interval_s = label, unit, interval_s
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        # The clock starts at the first update (the work, not the set-up before
        # it), and rates count what was done after it: a first update can bring
        # a whole task's worth at once.
        self.started: float | None = None
        self.initial = 0.0
        self.shown = -math.inf
        self.done, self.total, self.figures = 0.0, None, ""
        self.printed: tuple[float, float] | None = None
        self._bar: tqdm | None = None

    def __call__(self, done: float, total: float, **figures: Any) -> None:
        if self.started is None:
            self.started, self.initial = time.monotonic(), done
        self.done, self.total = done, total
        self.figures = ", ".join(f"{name}={_number(value)}" for name, value in figures.items())
        if not self.interactive:
            if time.monotonic() - self.shown >= self.interval_s:
                self._plain_line()
            return
        if self._bar is None:
            self._bar = tqdm(
                total=total, initial=done, desc=self.label, unit=self.unit, file=self.stream, dynamic_ncols=True
            )  # fmt: skip
        self._bar.total = total
        self._bar.set_postfix_str(self.figures, refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()
            self._bar.close()
        elif not self.interactive and self.total is not None and self.printed != (self.done, self.total):
            self._plain_line()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _plain_line(self) -> None:
        self.shown = time.monotonic()
        self.printed = (self.done, self.total)
        elapsed = self.shown - self.started
        line = tqdm.format_meter(
            self.done, self.total, elapsed, prefix=self.label, unit=self.unit,
            postfix=self.figures or None, initial=self.initial,
            # Over less than a second (updates delivered together) a rate says nothing: 0 shows as `?`.
            rate=None if elapsed >= MIN_RATE_S else 0,
            bar_format="{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
        )  # fmt: skip
        logging.getLogger("slc.progress").info("%s", line)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
