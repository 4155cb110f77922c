"""The import contracts in pyproject.toml: kept by the package, broken by a bad import.

The runtime side (runtime, batch, every app but cli) must stay installable
without the `train` extra; stages import only earlier stages.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, VENV_BIN


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package and contracts under `root` (it imports from its working directory)."""
    return subprocess.run(
        [str(VENV_BIN / "lint-imports"), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=120
    )


def test_the_package_keeps_its_import_contracts():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("runtime/bundle.py", "import torch", "Runtime side: no training code"),
        ("batch/columns.py", "from slc.data import features", "Runtime side: no training code"),
        # A new app module is covered as it is written: no contract lists it by name.
        ("apps/label_plots.py", "import matplotlib", "Runtime side: no training code"),
        # Through a shared module: the serve app would pull torch in with slc.audio.
        ("audio.py", "from slc.training import model", "Runtime side: no training code"),
        ("runtime/classifier.py", "from slc.batch import columns", "Stages import earlier stages only"),
        ("data/corpus.py", "from slc.training import metrics", "Stages import earlier stages only"),
        ("training/metrics.py", "from slc.apps import cli", "Stages import earlier stages only"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, broken):
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    shutil.copytree(REPO / "slc", tmp_path / "slc", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "slc" / module
    path.write_text((path.read_text() if path.exists() else "") + f"\n{line}\n")

    done = lint_imports(tmp_path)

    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{broken} BROKEN" in done.stdout
