"""`slc label` on a cluster with GPUs: the actor pool, one GPU per
classifier actor, the model asked of onnxruntime's CUDA provider, fp32 unless
a variant is named (the bundle's default is chosen for CPUs). A Ray node
declaring a GPU stands in for one (no CUDA needed); the onnxruntime here has
no CUDA provider, so the actors say so and classify on CPU."""

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap

from conftest import REPO, espeak_wav


def test_on_a_node_with_a_gpu_the_pool_classifiers_each_get_one_and_run_fp32(small_bundle, tmp_path):
    # A bundle whose default is an int8 variant, as export makes it for CPUs.
    bundle = tmp_path / "bundle"
    shutil.copytree(small_bundle, bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["default_variant"] = "int8-static"
    (bundle / "bundle.json").write_text(json.dumps(manifest))
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "de.wav").write_bytes(espeak_wav("Guten Morgen, der Zug fährt um acht Uhr.", "de"))
    (clips / "en.wav").write_bytes(espeak_wav("Good morning, the train leaves at eight.", "en"))
    script = textwrap.dedent(
        """
        import json, sys
        import ray
        from slc.apps import label_pipeline, label_run
        from slc.apps.label import label
        from slc.config import LabelConfig

        # Writes down what each classifier actor was given (its GPUs, the device
        # asked for) and where its model runs: a file, as an actor's printed
        # lines may not reach the driver before Ray stops.
        REPORTS = sys.argv[5]

        class Reporting(label_pipeline.Labeller):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                with open(REPORTS, "a") as reports:
                    reports.write(json.dumps({"gpu_ids": ray.get_gpu_ids(), "asked": kwargs.get("device"),
                                              "runs_on": self.classifier.device, "variant": self.classifier.variant}) + "\\n")

        label_run.Labeller = Reporting  # defined here, so it travels to the actors by value

        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, _temp_dir=sys.argv[1])
        try:
            for out, variant in ((sys.argv[4], None), (sys.argv[4] + "-int8", "int8-static")):
                summary = label([sys.argv[2]], sys.argv[3], out, LabelConfig(variant=variant))
                print("SUMMARY " + json.dumps({**{k: summary[k] for k in ("shape", "listed", "labelled")},
                                               "variant": summary["bundle"]["variant"]}), flush=True)
        finally:
            ray.shutdown()
        """
    )
    # A temp dir of its own keeps this Ray apart from the session's; short, as
    # Ray's socket paths are limited to 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="slc-gpu-", dir="/tmp")
    reports = tmp_path / "actors.jsonl"
    try:
        result = subprocess.run(
            [sys.executable, "-c", script, temp_dir, str(clips), str(bundle), str(tmp_path / "labels"), str(reports)],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    summaries = [json.loads(part.splitlines()[0]) for part in output.split("SUMMARY ")[1:]]
    actors = [json.loads(line) for line in reports.read_text().splitlines()]
    # No variant named: fp32 on the GPU, and the summary says so; a variant named is the one run.
    assert summaries == [
        {"shape": "pool", "listed": 2, "labelled": 2, "variant": "fp32"},
        {"shape": "pool", "listed": 2, "labelled": 2, "variant": "int8-static"},
    ]
    assert sorted(a["variant"] for a in actors) == ["fp32", "int8-static"]
    assert all({k: a[k] for k in ("gpu_ids", "asked", "runs_on")} == {"gpu_ids": [0], "asked": "cuda", "runs_on": "cpu"} for a in actors)
    assert json.loads((tmp_path / "labels" / "settings.json").read_text())["bundle"]["variant"] == "fp32"
    assert "no CUDA provider" in output and "onnxruntime-gpu" in output
