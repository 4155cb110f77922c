"""`pip install slc` without extras: predict, label and serve run on
onnxruntime in a fresh virtual environment that has no torch.

Slow (a fresh venv and `pip install`, about a minute with pip's cache warm),
but part of the default run.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, espeak_wav

pytestmark = pytest.mark.slow

TRAINING_ONLY = ("torch", "transformers", "sklearn", "matplotlib", "onnx", "onnxscript", "safetensors", "faker")


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding `pip install <repo>` and nothing else."""
    root = tmp_path_factory.mktemp("base-install")
    # A copy: building in the working tree would leave build/ and egg-info there.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    shutil.copytree(REPO / "slc", source / "slc", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    bin_dir = root / "venv" / "bin"
    done = subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return bin_dir


def run(bin_dir: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """A command of the base venv, as a user who activated it runs it: none of this test run's Ray or paths."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A German and an English espeak-ng clip, and a file that is not audio."""
    root = tmp_path_factory.mktemp("install-clips")
    (root / "de.wav").write_bytes(espeak_wav("Guten Morgen. Der Zug nach Zürich fährt heute um halb neun ab.", "de"))
    (root / "en.wav").write_bytes(espeak_wav("Good morning. The train to London leaves at half past eight.", "en"))
    (root / "broken.wav").write_bytes(b"RIFF not really a wave file")
    return root


def test_the_base_install_has_no_training_packages(base_venv, tmp_path):
    code = "import importlib.util as u; print([m for m in %r if u.find_spec(m)])" % (TRAINING_ONLY,)
    done = run(base_venv, "python", "-c", code, cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    done = run(base_venv, "python", "-c", "import torch", cwd=tmp_path)
    assert done.returncode == 1 and "No module named 'torch'" in done.stderr


def test_predict_gives_the_answer_of_the_full_install(base_venv, small_bundle, clips, tmp_path):
    from slc.runtime.classifier import Classifier

    done = run(base_venv, "slc", "predict", "--json", str(clips / "de.wav"), "--bundle", str(small_bundle), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    classifier = Classifier(small_bundle)
    wanted = classifier.classify(classifier.load_audio(clips / "de.wav")).to_dict(3)
    assert answer["language"] == wanted["language"]
    assert answer["probabilities"] == pytest.approx(wanted["probabilities"], abs=1e-5)


def test_label_labels_a_folder_and_accounts_for_every_file(base_venv, small_bundle, clips, tmp_path):
    out = tmp_path / "labels"
    done = run(base_venv, "slc", "label", str(clips), "--bundle", str(small_bundle), "--out", str(out), cwd=tmp_path)
    # Exit status 0 or 1 (some file failed): the broken file is a row, not a crash.
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["listed"], summary["labelled"], summary["failed"]) == (3, 2, 1)
    assert json.loads((out / "settings.json").read_text())["config"]["format"] == "parquet"


def test_serve_once_answers_over_http_as_the_classifier_does_and_stops(base_venv, small_bundle, clips, tmp_path):
    """The start-classify-stop path `make demo` takes, on a Ray of its own as on a user's machine."""
    from slc.runtime.classifier import Classifier

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clip = clips / "en.wav"
    done = run(base_venv, "slc", "serve", str(small_bundle), "--once", str(clip), "--port", str(port), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{clip}: HTTP 200 ")
    answer = json.loads(last.removeprefix(f"{clip}: HTTP 200 "))
    classifier = Classifier(small_bundle)
    wanted = classifier.classify(classifier.load_audio(clip)).to_dict()
    assert answer["language"] == wanted["language"] and list(answer["probabilities"]) == list(wanted["probabilities"])
    assert answer["probabilities"] == pytest.approx(wanted["probabilities"], abs=1e-5)
    assert "(raylet)" not in done.stdout + done.stderr, "Ray's messages reached the terminal"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the endpoint is still listening"


def test_the_label_job_entry_point_runs_without_torch(base_venv, tmp_path):
    done = run(base_venv, "python", str(REPO / "jobs" / "label.py"), "--help", cwd=tmp_path)
    assert done.returncode == 0 and "--bundle" in done.stdout, done.stderr[-3000:]


@pytest.mark.parametrize("args", [["train", "shards", "run"], ["export", "run/best", "bundle"], ["synth", "corpus"]])
def test_a_training_command_names_the_extra_it_needs(base_venv, tmp_path, args):
    done = run(base_venv, "slc", *args, cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert f"error: slc {args[0]} needs the training extra: pip install 'slc[train]' (missing module: " in done.stderr
