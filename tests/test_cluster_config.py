"""cluster.yaml: what `ray up` accepts and what a user of the cluster relies on.

Validation runs Ray's own launcher steps that need no cloud: `prepare_config` (merge
the AWS defaults, setup commands, per-type worker counts) and `validate_config` (the
JSON schema shipped as ray/autoscaler/ray-schema.json plus its cross-field checks).
No network, no AWS credentials: the steps that call EC2 (resource autodetection,
key pairs, security groups) are not run.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
REPO_ON_NODE = "~/slc"
TOKEN_ON_NODE = "~/.ray/auth_token"
# EC2 families whose instances carry NVIDIA GPUs (Ray autodetects GPU: n for them).
GPU_FAMILIES = {"g4dn", "g5", "g6", "g6e", "gr6", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en"}


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    return prepare_config(copy.deepcopy(raw))


@pytest.fixture(scope="module")
def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _gpus(node_type: dict) -> int:
    """GPUs a node type offers: declared, or implied by its EC2 instance family."""
    declared = node_type.get("resources", {}).get("GPU", 0)
    family = node_type["node_config"]["InstanceType"].split(".")[0]
    return declared or (1 if family in GPU_FAMILIES else 0)


def _workers(prepared: dict) -> dict[str, dict]:
    head = prepared["head_node_type"]
    return {name: t for name, t in prepared["available_node_types"].items() if name != head}


def _setup_commands(prepared: dict) -> dict[str, list[str]]:
    """The setup commands each node type really runs (a type's own list replaces the global one)."""
    head = prepared["head_node_type"]
    commands = {head: prepared["head_setup_commands"]}
    for name, node_type in _workers(prepared).items():
        commands[name] = node_type.get("worker_setup_commands", prepared["worker_setup_commands"])
    return commands


def _pinned(requirement_name: str, requirements: list[str]) -> str:
    for req in requirements:
        match = re.fullmatch(rf"{requirement_name}(\[[^\]]*\])?==(\S+)", req)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml does not pin {requirement_name}: {requirements}")


def test_ray_launcher_accepts_the_config(prepared):
    validate_config(prepared)  # raises jsonschema.ValidationError / ValueError on a bad config


def test_head_cpu_and_gpu_worker_types(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    workers = _workers(prepared)
    cpu = [name for name, t in workers.items() if _gpus(t) == 0 and t["max_workers"] >= 1]
    gpu = [name for name, t in workers.items() if _gpus(t) >= 1 and t["max_workers"] >= 1]
    assert cpu, f"no CPU worker type that can scale up among {sorted(workers)}"
    assert gpu, f"no GPU worker type that can scale up among {sorted(workers)}"
    # Drivers, the Serve controller and proxies need no CPU; tasks and replicas go to workers.
    assert head["resources"].get("CPU") == 0


def test_every_node_type_names_an_image(prepared):
    # Without ImageId Ray falls back to an Ubuntu 18.04 DLAMI too old for the torch wheels.
    for name, node_type in prepared["available_node_types"].items():
        assert node_type["node_config"].get("ImageId"), f"{name} has no ImageId"


def test_every_node_installs_this_package(prepared, pyproject):
    extras = pyproject["project"].get("optional-dependencies", {})
    # Nodes train and export: they need the extra holding torch and transformers, when there is one.
    needed = {"train"} & set(extras)
    torch = _pinned("torch", pyproject["project"]["dependencies"] + extras.get("train", []))
    repo = rf"(~|\$HOME){re.escape(REPO_ON_NODE[1:])}(\[(?P<extras>[\w,-]*)\])?"
    for name, commands in _setup_commands(prepared).items():
        words = [shlex.split(c) for c in commands]
        installed = [
            re.fullmatch(repo, w[i + 1]) for w in words if "pip" in w and "install" in w
            for i in range(1, len(w) - 1) if w[i] == "-e"
        ]  # fmt: skip
        assert any(m and needed <= set((m["extras"] or "").split(",")) for m in installed), (
            f"{name} never runs `pip install -e {REPO_ON_NODE}` with the extras {sorted(needed)}: {commands}"
        )
        assert any(f"torch=={torch}" in c for c in commands), f"{name} does not install torch=={torch}"
        # The launcher and `ray job submit` on this machine talk to the cluster's Ray.
        assert any(f"=={ray.__version__}" in c and "ray[" in c for c in commands), (
            f"{name} does not install ray=={ray.__version__}, the version this checkout runs"
        )


def test_file_mounts_bring_the_repo(prepared, pyproject):
    mounts = {remote.rstrip("/"): local for remote, local in prepared["file_mounts"].items()}

    def mounted(rel: str) -> bool:  # local paths are relative to the repo root, where `ray up` runs
        if REPO_ON_NODE in mounts and (ROOT / mounts[REPO_ON_NODE]).resolve() == ROOT:
            return True
        local = mounts.get(f"{REPO_ON_NODE}/{rel}")
        return local is not None and (ROOT / local).resolve() == (ROOT / rel).resolve()

    needed = ["pyproject.toml", pyproject["project"]["readme"], "slc", "jobs"]
    assert [rel for rel in needed if not mounted(rel)] == []
    for remote, local in mounts.items():
        if remote.startswith(REPO_ON_NODE):
            assert (ROOT / local).exists(), f"{remote} mounts {local}, which is not in the repo"


def test_token_auth_on_every_node(prepared):
    assert Path(prepared["file_mounts"].get(TOKEN_ON_NODE, "")).expanduser() == Path(TOKEN_ON_NODE).expanduser()
    head = " ".join(prepared["head_start_ray_commands"])
    worker = " ".join(prepared["worker_start_ray_commands"])
    for commands in (head, worker):
        assert re.search(r"RAY_AUTH_MODE=token ray start\b", commands), commands
    assert "--head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    port = re.search(r"--port=(\d+)", head).group(1)
    assert f"--address=$RAY_HEAD_IP:{port}" in worker


def test_readme_cluster_training_asks_for_the_gpus_the_cluster_can_start(prepared):
    """GPU workers scale from zero, so a training job that does not ask for GPUs
    trains on CPU; one asking for more than the GPU types allow is refused."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run on a cluster", 1)[1].split("\n## ", 1)[0]
    commands = [" ".join(shlex.split(c.replace("\\\n", " "))) for c in re.findall(r"ray job submit[^\n]*\\\n[^\n]*", section)]
    train = [shlex.split(c) for c in commands if "jobs/train.py" in c]
    assert train, f"no `jobs/train.py` job in README's 'Run on a cluster': {commands}"
    capacity = sum(t["max_workers"] * _gpus(t) for t in _workers(prepared).values())
    for words in train:
        assert "--gpu" in words, f"README's cluster training job does not pass --gpu: {' '.join(words)}"
        workers = int(words[words.index("--workers") + 1]) if "--workers" in words else 1
        assert 1 <= workers <= capacity, f"--workers {workers}, but cluster.yaml allows {capacity} GPU nodes"
