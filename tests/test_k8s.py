"""deploy/: the images and the KubeRay manifests, checked without docker or kubectl.

The manifests must be what KubeRay accepts (the CRD schemas, cut to the fields they
use in deploy/kuberay-crd-schema.json, plus the checks KubeRay's controller makes
in Go), run what the repository ships (entrypoints through the jobs' own parsers,
scripts where the Dockerfile puts them, serve_config.yaml's application), on the
images deploy/Dockerfile builds with the extras each needs.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
import runpy
import shlex
import subprocess
import sys
import types
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMA = DEPLOY / "kuberay-crd-schema.json"
# Which image (Dockerfile target) runs each manifest: training needs torch, the rest must not.
TARGETS = {"ingest.yaml": "train", "train.yaml": "train", "label.yaml": "serve", "serve.yaml": "serve"}
GPU = "nvidia.com/gpu"


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


MANIFESTS = {p.name: _documents(p) for p in sorted((DEPLOY / "k8s").glob("*.yaml"))}
DOCUMENTS = [(name, d) for name, docs in MANIFESTS.items() for d in docs]
DOC_IDS = [f"{name}:{d['metadata']['name']}" for name, d in DOCUMENTS]
JOBS = [(name, d) for name, d in DOCUMENTS if d["kind"] == "RayJob"]
JOB_IDS = [name for name, _ in JOBS]


def _cluster(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


def _pods(doc: dict) -> dict[str, dict]:
    """Pod spec per group: `head` and each worker group's name."""
    cluster = _cluster(doc)
    pods = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    pods |= {g["groupName"]: g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])}
    return pods


def _containers(doc: dict) -> list[dict]:
    return [c for pod in _pods(doc).values() for c in pod.get("initContainers", []) + pod["containers"]]


def _mounts(pod: dict) -> dict[str, str]:
    """mountPath -> volume name of the pod's Ray container."""
    return {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}


def _serve_config(doc: dict) -> dict:
    return yaml.safe_load(doc["spec"]["serveConfigV2"])


# --- deploy/Dockerfile ------------------------------------------------------------


def _dockerfile() -> tuple[dict[str, str], dict[str, dict]]:
    """(global ARG defaults, stages by name); a stage: base image, WORKDIR, RUN and COPY lines."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    args, stages, stage = {}, {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, rest = line.split(None, 1)
        instruction = instruction.upper()
        if instruction == "ARG" and stage is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif instruction == "FROM":
            base, name = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest.strip(), flags=re.IGNORECASE).groups()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], base)
            stage = stages[name] = {"base": base, "workdir": "/", "run": [], "copy": [], "env": {}}
        elif instruction == "WORKDIR":
            stage["workdir"] = rest.strip()
        elif instruction in ("RUN", "COPY"):
            stage[instruction.lower()].append(rest.strip())
        elif instruction == "ENV":
            name, _, value = rest.strip().partition("=")
            stage["env"][name] = value
    return args, stages


def test_the_serve_image_makes_serves_proxy_answer_a_dead_replica_with_json():
    import importlib

    from ray.serve._private.http_util import validate_http_proxy_callback_return

    callback = _dockerfile()[1]["serve"]["env"]["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"]
    module, _, name = callback.partition(":")
    assert validate_http_proxy_callback_return(getattr(importlib.import_module(module), name)())


def _pip_installs(stage: dict) -> list[list[str]]:
    """The requirements of each `pip install` the stage runs, in order."""
    installs = []
    for command in stage["run"]:
        words = shlex.split(command)
        if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
            start = words.index("install") + 1
            installs.append([w for w in words[start:] if not w.startswith("-")])
    return installs


def _copied(stage: dict) -> dict[str, Path]:
    """Absolute path in the image -> what the COPY lines put there from the repository."""
    copied = {}
    for line in stage["copy"]:
        *sources, dest = [w for w in shlex.split(line) if not w.startswith("--")]
        into = dest.endswith("/") or len(sources) > 1  # a folder that receives the sources
        dest = posixpath.normpath(posixpath.join(stage["workdir"], dest))
        for source in sources:
            copied[posixpath.join(dest, source) if into else dest] = ROOT / source
    return copied


def _in_image(stage: dict, path: str) -> Path:
    """The repository file that the image holds at `path`."""
    for image_path, source in _copied(stage).items():
        if path == image_path or path.startswith(image_path + "/"):
            return source / path[len(image_path) :].lstrip("/")
    raise AssertionError(f"no COPY in deploy/Dockerfile puts anything at {path}: {stage['copy']}")


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerfile_bases_are_ray_images_of_this_ray():
    args, stages = _dockerfile()
    assert set(stages) >= {"serve", "train"}
    assert args["RAY_VERSION"] == ray.__version__
    python = re.fullmatch(r"py3(\d+)", args["PYTHON"])
    requires = _pyproject()["project"]["requires-python"]  # ">=3.10,<3.13"
    low, high = (int(v) for v in re.findall(r"3\.(\d+)", requires))
    assert python and low <= int(python[1]) < high, f"image Python {args['PYTHON']} outside {requires}"
    assert stages["serve"]["base"] == f"rayproject/ray:{ray.__version__}-{args['PYTHON']}-cpu"
    assert stages["train"]["base"] == f"rayproject/ray:{ray.__version__}-{args['PYTHON']}-gpu"


def test_serve_image_installs_the_base_package_without_torch():
    serve = _dockerfile()[1]["serve"]
    installs = _pip_installs(serve)
    assert ["."] in installs, f"serve stage never runs `pip install .`: {serve['run']}"
    assert not [r for reqs in installs for r in reqs if r.startswith((".[", "torch"))], installs


def test_train_image_installs_pinned_torch_then_the_train_extra():
    pyproject = _pyproject()["project"]
    torch = next(r for r in pyproject["optional-dependencies"]["train"] if r.startswith("torch=="))
    installs = _pip_installs(_dockerfile()[1]["train"])
    assert [torch] in installs and [".[train]"] in installs, installs
    assert installs.index([torch]) < installs.index([".[train]"]), "torch must come first, pinned"


@pytest.mark.parametrize("target", ["serve", "train"])
def test_images_hold_what_pip_install_needs(target):
    stage = _dockerfile()[1][target]
    needed = ["pyproject.toml", _pyproject()["project"]["readme"], "slc"]
    workdir = stage["workdir"].rstrip("/")
    assert {rel: _in_image(stage, f"{workdir}/{rel}") for rel in needed} == {rel: ROOT / rel for rel in needed}


# --- the manifests as KubeRay sees them -------------------------------------------


def test_manifests_are_the_four_kuberay_resources():
    assert {name: [(d["apiVersion"], d["kind"]) for d in docs] for name, docs in MANIFESTS.items()} == {
        "ingest.yaml": [("ray.io/v1", "RayJob")],
        "train.yaml": [("ray.io/v1", "RayJob")],
        "label.yaml": [("ray.io/v1", "RayJob")],
        "serve.yaml": [("ray.io/v1", "RayService")],
    }


@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=DOC_IDS)
def test_manifest_matches_the_kuberay_crd_schema(name, doc):
    schema = json.loads(SCHEMA.read_text())["schemas"][doc["kind"]]
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]  # fmt: skip
    assert errors == [], (
        f"{name}: not what the KubeRay CRD allows (a field the manifest adds since "
        f"{SCHEMA.name} was cut needs `python deploy/crd_schema.py KUBERAY_CHECKOUT VERSION`): {errors}"
    )


@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=DOC_IDS)
def test_manifest_passes_kuberay_controller_checks(name, doc):
    """What ray-operator/controllers/ray/utils/validation.go refuses, and the Ray version."""
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,45}[a-z0-9])?", doc["metadata"]["name"]), "DNS-1035 label, <= 47 chars"
    cluster = _cluster(doc)
    assert cluster["rayVersion"] == ray.__version__, "rayVersion must be the Ray of the image"
    groups = cluster["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for group in groups:
        replicas = group.get("replicas", group["minReplicas"])
        assert 0 <= group["minReplicas"] <= replicas <= group["maxReplicas"], group["groupName"]
    for group in [cluster["headGroupSpec"], *groups]:
        assert group["template"]["spec"]["containers"], "a pod needs a container"
        assert not (group.get("resources") and set(group["rayStartParams"]) & {"num-cpus", "num-gpus", "memory"})
    if doc["kind"] == "RayJob":
        assert doc["spec"]["shutdownAfterJobFinishes"] is True, "a job's cluster must not outlive it"


@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=DOC_IDS)
def test_pods_request_what_ray_counts(name, doc):
    """Ray reads a pod's CPUs, memory and GPUs from the limits; requests equal to
    them are what the scheduler reserves. The head takes no tasks (num-cpus 0)."""
    for container in _containers(doc):
        if container["name"].startswith("ray-"):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]
            assert resources["requests"] == resources["limits"], container["name"]
    assert _cluster(doc)["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_training_has_cpu_and_gpu_workers_for_the_gpus_it_asks():
    doc = MANIFESTS["train.yaml"][0]
    groups = {g["groupName"]: g for g in _cluster(doc)["workerGroupSpecs"]}
    limits = {n: g["template"]["spec"]["containers"][0]["resources"]["limits"] for n, g in groups.items()}
    gpus = {n: int(limit.get(GPU, 0)) for n, limit in limits.items()}
    assert 0 in gpus.values() and any(gpus.values()), f"CPU and GPU worker groups: {gpus}"
    words = shlex.split(doc["spec"]["entrypoint"])
    assert "--gpu" in words, "without --gpu, GPU pods that scale from zero are never asked for"
    workers = int(words[words.index("--workers") + 1])
    assert 1 <= workers <= sum(g["maxReplicas"] * gpus[n] for n, g in groups.items())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_manifest_runs_the_image_of_its_target(name):
    """Every container runs one image; the README builds it from the right target."""
    section = _readme_section()
    registry = re.search(r"REGISTRY=(\S+)", section)[1]
    built = {
        target: image.replace("$REGISTRY", registry)
        for target, image in re.findall(r"docker build -f deploy/Dockerfile --target (\w+) -t (\S+) \.", section)
    }  # fmt: skip
    images = {c["image"] for d in MANIFESTS[name] for c in _containers(d)}
    assert images == {built[TARGETS[name]]}, f"{name}: {images}; README builds {built}"


# --- what the manifests run ---------------------------------------------------------


@pytest.mark.parametrize(("name", "doc"), JOBS, ids=JOB_IDS)
def test_job_entrypoint_runs_a_script_the_image_holds(name, doc):
    words = shlex.split(doc["spec"]["entrypoint"])
    assert words[0] == "python"
    script = _in_image(_dockerfile()[1][TARGETS[name]], words[1])
    assert script.is_file() and script.parent == ROOT / "jobs", script


def _fake_library(monkeypatch, module: str, **functions) -> list[tuple]:
    """Put a module holding `functions` (which record their calls) in place of `module`,
    so a command parses its arguments and calls the library without running it."""
    calls = []

    def recorder(name, result):
        def function(*args, **kwargs):
            calls.append((name, args, kwargs))
            return result

        return function

    fake = types.ModuleType(module)
    for name, result in functions.items():
        setattr(fake, name, recorder(name, result))
    monkeypatch.setitem(sys.modules, module, fake)
    return calls


def _run_entrypoint(monkeypatch, doc: dict) -> None:
    words = shlex.split(doc["spec"]["entrypoint"])
    monkeypatch.setattr(sys, "argv", [str(ROOT / "jobs" / Path(words[1]).name), *words[2:]])
    # The log of a finished command goes to OUT, here a bucket that exists only on the cluster.
    monkeypatch.setattr("slc.apps.terminal.job", lambda *args, **kwargs: contextlib.nullcontext())
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(sys.argv[0], run_name="__main__")
    assert exit_.value.code in (0, None), f"{' '.join(words)} exited with {exit_.value.code}"


def test_train_entrypoint_parses_into_a_gpu_run(monkeypatch):
    doc = MANIFESTS["train.yaml"][0]
    best = {"epoch": 1, "epochs_run": 1, "val_f1": 1.0, "best": "out/best"}
    calls = _fake_library(monkeypatch, "slc.training.loop", train=best)
    _run_entrypoint(monkeypatch, doc)
    [(_, (shards, out, settings), _)] = calls
    words = shlex.split(doc["spec"]["entrypoint"])
    assert (shards, out) == tuple(words[2:4])
    assert settings.use_gpu is True and settings.workers == int(words[words.index("--workers") + 1])


def test_label_entrypoint_parses_and_reads_the_mounted_bundle(monkeypatch):
    doc = MANIFESTS["label.yaml"][0]
    calls = _fake_library(monkeypatch, "slc.apps.label", label={}, format_summary="")
    _run_entrypoint(monkeypatch, doc)
    [(inputs, bundle, out, _settings)] = [args for name, args, _ in calls if name == "label"]
    assert inputs and out.startswith("s3://")
    for group, pod in _pods(doc).items():
        assert str(bundle) in _mounts(pod), f"{group} pods have no {bundle} for the classifier"


def test_ingest_entrypoint_parses_into_a_resumable_run(monkeypatch):
    doc = MANIFESTS["ingest.yaml"][0]
    summary = {"splits": {}, "discovered": 0, "accepted": 0, "rejected": 0, "audio_hours": 0.0, "wall_s": 0.0,
               "kept_from_earlier_run": 0, "augmented": {"clips": 0}, "rejected_by_reason": {},
               "excluded_by_label": {}, "out": "out"}  # fmt: skip
    calls = _fake_library(monkeypatch, "slc.data.ingest", ingest=summary)
    _run_entrypoint(monkeypatch, doc)
    [(_, (corpus, out, settings), options)] = calls
    assert corpus.startswith("s3://") and out.startswith("s3://") and options["resume"] is True
    assert settings.labels == ("de", "fr", "it", "en") and settings.augment.copies == 2


@pytest.mark.parametrize(("name", "doc"), JOBS, ids=JOB_IDS)
def test_a_job_that_kuberay_retries_resumes_its_output(name, doc):
    """A retry (`backoffLimit`) runs the same entrypoint on a new cluster: it
    must continue the output the first attempt left, not refuse it as not empty."""
    if doc["spec"].get("backoffLimit", 0) > 0:
        assert "--resume" in shlex.split(doc["spec"]["entrypoint"]), f"{name}: a retry would find OUT not empty"


# --- the RayService and serve_config.yaml ------------------------------------------


def test_serve_config_v2_is_a_valid_serve_config():
    ServeDeploySchema.model_validate(_serve_config(MANIFESTS["serve.yaml"][0]))


def test_rayservice_serves_the_application_of_serve_config_yaml():
    """The same application, settings and deployments; only the bundle's path differs."""
    ours = yaml.safe_load((ROOT / "serve_config.yaml").read_text())["applications"]
    service = _serve_config(MANIFESTS["serve.yaml"][0])["applications"]
    bundles = [app["args"].pop("bundle") for app in service]
    for app in ours:
        app["args"].pop("bundle")
    assert service == ours, "deploy/k8s/serve.yaml's serveConfigV2 and serve_config.yaml differ"
    assert all(Path(b).is_absolute() for b in bundles), bundles


def test_rayservice_proxies_listen_on_the_serve_port_with_the_bundle_mounted():
    doc = MANIFESTS["serve.yaml"][0]
    config = _serve_config(doc)
    assert config["http_options"]["host"] == "0.0.0.0", "pods are reached from outside the container"
    assert config["proxy_location"] == "EveryNode"
    bundle = config["applications"][0]["args"]["bundle"]
    for group, pod in _pods(doc).items():
        ports = {p["name"]: p["containerPort"] for p in pod["containers"][0].get("ports", [])}
        assert ports.get("serve") == config["http_options"]["port"], f"{group}: KubeRay routes to the `serve` port"
        assert bundle in _mounts(pod), f"{group} pods have no {bundle}"


@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=DOC_IDS)
def test_bundle_volumes_are_filled_before_ray_starts(name, doc, tmp_path):
    """Every emptyDir the Ray container reads is filled by an init container, whose
    command copies a bundle directory (run here from a local URI instead of the bucket)."""
    source = tmp_path / "bucket" / "bundle"
    (source / "sub").mkdir(parents=True)
    (source / "bundle.json").write_text("{}")
    (source / "sub" / "model.onnx").write_bytes(b"onnx")
    for group, pod in _pods(doc).items():
        empty = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        for path, volume in _mounts(pod).items():
            if volume not in empty:
                continue
            fetch = [c for c in pod.get("initContainers", []) if volume in {m["name"] for m in c["volumeMounts"]}]
            assert len(fetch) == 1, f"{name} {group}: nothing fills {path}"
            *command, bucket, dest = fetch[0]["command"] + fetch[0]["args"]
            assert command[0] == "python" and bucket.startswith("s3://") and dest == path
            copy = tmp_path / f"{group}-bundle"
            copy.mkdir()
            subprocess.run([sys.executable, *command[1:], source.as_uri(), str(copy)], check=True)
            copied = sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*"))
            assert copied == ["bundle.json", "sub", "sub/model.onnx"], f"{name} {group}: {fetch[0]['name']}"


# --- README ------------------------------------------------------------------------


def _readme_section() -> str:
    readme = (ROOT / "README.md").read_text()
    assert "\n## Run on Kubernetes\n" in readme
    return readme.split("\n## Run on Kubernetes\n", 1)[1].split("\n## ", 1)[0]


def test_readme_applies_every_manifest_with_the_operator_the_schema_comes_from():
    section = _readme_section()
    for name in MANIFESTS:
        assert f"kubectl apply -f deploy/k8s/{name}" in section, name
    version = json.loads(SCHEMA.read_text())["kuberay"].lstrip("v")
    helm = rf"helm install kuberay-operator kuberay/kuberay-operator --version {re.escape(version)}\b"
    assert re.search(helm, section), f"README does not install KubeRay {version}, whose CRDs {SCHEMA.name} holds"
