"""What `slc` shows on the terminal: its own lines and progress, with Ray's
output in OUT/logs/slc.log unless --verbose."""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from slc.apps import terminal
from slc.batch.progress import relay

RAY_CHATTER = ("Started a local Ray instance", "metrics={", "Token authentication", "Deprecat", "Checkpoint successfully")
# A line Ray's C++ core writes to the stderr of the driver, e.g. `[2026-12-01 09:10:04,826 E 7448 7448] core_worker.cc:2465: ...`.
NATIVE_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\] \w+\.cc:\d+:")


def rays_lines(lines: list[str]) -> list[str]:
    """The lines of `lines` that Ray wrote: its Python chatter and its C++ core's log lines."""
    return [line for line in lines if NATIVE_LOG_LINE.match(line) or any(c in line for c in RAY_CHATTER)]


def _slc(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    """`slc ARGS` in its own process, output piped (not a TTY), with its own local Ray."""
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "slc.apps.cli", *args]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from slc.data.synth import make_corpus

    root = tmp_path_factory.mktemp("terminal") / "corpus"
    make_corpus(root, ("de", "en"), per_lang=4, seed=1)
    return root


def test_off_a_tty_a_bar_is_a_plain_line_at_the_start_and_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="slc.progress")
    with terminal.Bar("training", "step", interactive=False, interval_s=3600) as bar:
        for step in range(1, 11):
            bar(step, 10, epoch="1/2", loss=0.51234, **{"val F1": 0.8})
    lines = [r.getMessage() for r in caplog.records if r.name == "slc.progress"]
    assert len(lines) == 2
    assert lines[0].startswith("training:  10% 1/10 step")
    assert lines[1].startswith("training: 100% 10/10 step")
    assert "loss=0.5123, val F1=0.8" in lines[1]


def test_a_bars_rate_counts_only_the_work_after_its_first_update_and_over_a_second_at_least(caplog, monkeypatch):
    # The first update brings a whole task's files at once, and the clock starts there.
    caplog.set_level(logging.INFO, logger="slc.progress")
    now = [100.0]

    def monotonic() -> float:
        now[0] += 1e-6  # the first line is written a few microseconds after the clock starts
        return now[0]

    monkeypatch.setattr(terminal.time, "monotonic", monotonic)
    with terminal.Bar("labelling", "file", interactive=False, interval_s=0) as bar:
        bar(64, 600)
        bar(128, 600)  # delivered with the first
        now[0] += 2.0
        bar(192, 600)
    first, second, third = [r.getMessage() for r in caplog.records if r.name == "slc.progress"]
    assert "64/600 file [00:00<?, ?file/s]" in first
    assert "128/600 file [00:00<?, ?file/s]" in second
    assert "192/600 file [00:02<00:06, 64.00file/s]" in third


def test_on_a_tty_a_bar_is_drawn_with_its_figures():
    stream = io.StringIO()
    with terminal.Bar("labelling", "file", stream=stream, interactive=True) as bar:
        for done in range(1, 5):
            bar(done, 4, **{"audio h/s": 1.5})
    assert "labelling: 100%" in stream.getvalue()
    assert "4/4" in stream.getvalue() and "audio h/s=1.5" in stream.getvalue()


def test_events_sent_from_ray_tasks_reach_the_driver(ray_session):
    ray = ray_session
    seen: list[dict] = []

    @ray.remote(num_cpus=0.1)
    def work(report, i):
        report(clips=i)
        return i

    with relay(seen.append) as report:
        assert sum(ray.get([work.remote(report, i) for i in range(1, 5)])) == 10
    assert sorted(e["clips"] for e in seen) == [1, 2, 3, 4]


def test_ingest_shows_slc_lines_and_logs_ray_to_the_output_directory(corpus, tmp_path):
    done = _slc("ingest", str(corpus), str(tmp_path / "shards"))
    terminal_lines = (done.stdout + done.stderr).splitlines()
    assert len(terminal_lines) < 30, terminal_lines
    assert not rays_lines(terminal_lines), terminal_lines
    assert any(re.match(r"slc: featurizing: 100% 8/8 clip", line) for line in terminal_lines), terminal_lines
    log = (tmp_path / "shards" / "logs" / "slc.log").read_text()
    assert "Started a local Ray instance" in log and "discovered 8 clips" in log


def test_what_native_code_writes_to_stderr_goes_to_the_log_and_python_keeps_the_terminal(tmp_path):
    """As Ray's C++ core does in the driver (`slc label --shape pool`: that the
    pool's actors have their arguments in the object store)."""
    out = tmp_path / "out"
    script = f"""
import logging, os, sys
from slc.apps import terminal
terminal.configure(verbose=False)
with terminal.job({str(out)!r}):
    os.write(2, b"written to file descriptor 2\\n")
    logging.getLogger("slc.test").info("an slc line")
    print("written to sys.stderr", file=sys.stderr)
os.write(2, b"after the job\\n")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "slc: an slc line", "written to sys.stderr", f"slc: full log: {out}/logs/slc.log", "after the job"
    ]  # fmt: skip
    assert "written to file descriptor 2" in (out / "logs" / "slc.log").read_text()


def test_a_failed_command_names_its_log_only_when_the_log_holds_something(tmp_path):
    """A command that fails on its arguments, before it logged anything, leaves
    no log behind; one that fails later names the log that has its lines. OUT stays untouched."""
    out = tmp_path / "out"
    script = f"""
import logging, tempfile
tempfile.tempdir = {str(tmp_path)!r}
from slc.apps import terminal
terminal.configure(verbose=False)
for logs_first in (False, True):
    try:
        with terminal.job({str(out)!r}):
            if logs_first:
                logging.getLogger("slc.test").info("an slc line")
            raise ValueError("bad input")
    except ValueError:
        pass
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    (kept,) = tmp_path.glob("slc-*.log")
    assert done.stderr.splitlines() == ["slc: an slc line", f"slc: log: {kept}"]
    assert "an slc line" in kept.read_text() and not out.exists()


def test_verbose_brings_rays_lines_back_to_the_terminal(corpus, tmp_path):
    done = _slc("--verbose", "ingest", str(corpus), str(tmp_path / "shards"))
    assert "Started a local Ray instance" in done.stdout + done.stderr
    assert (tmp_path / "shards" / "logs" / "slc.log").is_file()


@pytest.mark.slow
def test_train_prints_each_epoch_line_once_and_keeps_metric_dicts_in_the_log(small_shards, tmp_path):
    run = tmp_path / "run"
    done = _slc("train", str(small_shards), str(run), "--preset", "tiny", "--epochs", "2", "--batch-size", "8")
    terminal_lines = (done.stdout + done.stderr).splitlines()
    assert len(terminal_lines) < 30, terminal_lines
    assert not rays_lines(terminal_lines), terminal_lines
    for epoch in (1, 2):
        assert sum(line.startswith(f"slc: epoch {epoch}/2 ") for line in terminal_lines) == 1, terminal_lines
    assert any(line.startswith("slc: training: 100%") for line in terminal_lines), terminal_lines
    log = (run / "logs" / "slc.log").read_text()
    assert "Started a local Ray instance" in log and "metrics={" in log
    # Ray Train's placement-group cleaner polls the dashboard's state API every second.
    assert "State API may be temporarily unavailable" not in log


def test_a_ray_address_nothing_answers_at_is_an_error_naming_it(corpus, tmp_path):
    """At once: Ray itself would retry for minutes."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{free.getsockname()[1]}"
    env = {**os.environ, "RAY_ADDRESS": address}
    command = [sys.executable, "-m", "slc.apps.cli", "ingest", str(corpus), str(tmp_path / "out")]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: RAY_ADDRESS={address}: no Ray cluster answers there" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing made: the same command runs once the cluster is up
