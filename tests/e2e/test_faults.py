"""Crashes on a cluster of several nodes: a worker node killed mid-run (or a
Serve replica killed under load) and what each stage still promises.
Every test prints what it killed, when, and what came out."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from conftest import TINY_RUN_EPOCHS, espeak_wav, registered_epochs, tiny_run_config
from fault_cluster import (
    FaultCluster,
    busiest_node,
    free_port,
    kill_switch,
    node_of_actor,
    running_cluster,
)

from slc.apps.label import label, read_labels
from slc.apps.serve_proxy import PROXY_CALLBACK, PROXY_CALLBACK_ENV, REQUEST_TIMEOUT_ENV, TIMEOUT_HEADER
from slc.config import AugmentConfig, IngestConfig, LabelConfig, ServeConfig
from slc.data.corpus import discover
from slc.data.ingest import ingest
from slc.data.shards import copy_id, read_rejects, read_split
from slc.runtime.classifier import Classifier
from slc.training.loop import train

pytestmark = pytest.mark.slow

SAYINGS = {
    "de": [
        "Guten Morgen, der Zug nach Bern fährt um acht Uhr.",
        "Wir essen heute Abend bei meiner Schwester.",
        "Das Wetter bleibt morgen sonnig und warm.",
    ],
    "en": [
        "Good morning, the train to London leaves at eight.",
        "We are having dinner at my sister's tonight.",
        "The weather stays sunny and warm tomorrow.",
    ],
}
FILES = 300


@pytest.fixture(scope="module")
def fault_cluster(small_bundle, small_shards, tiny_run) -> Iterator[FaultCluster]:
    """The cluster of several nodes. The session fixtures it asks for are
    built first, on the session's Ray: it cannot start while this runs.
    Its nodes inherit this environment: Serve's proxy answers in JSON, as
    with `slc serve` and the cluster configs, and gives up on a request
    after DEADLINE_S."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
        patch.setenv(REQUEST_TIMEOUT_ENV, str(DEADLINE_S))
        with running_cluster() as cluster:
            yield cluster


@pytest.fixture(scope="module")
def speech() -> list[tuple[str, bytes]]:
    return [(lang, espeak_wav(text, lang)) for lang, texts in SAYINGS.items() for text in texts]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, speech) -> Path:
    """FILES clips as `<lang>/speaker<g>/clip<n>.wav`: the six recordings of
    `speech` copied under many names (the group is the speaker folder)."""
    root = tmp_path_factory.mktemp("faults") / "corpus"
    for n in range(FILES):
        lang, wav = speech[n % len(speech)]
        path = root / lang / f"speaker{n % 20:02d}" / f"clip{n:03d}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(wav)
    return root


def _parts(out: Path, pattern: str) -> list[Path]:
    return sorted(out.glob(pattern)) if out.exists() else []


def _report(stage: str, kill, inputs: int, rows: list[str], wall_s: float) -> None:
    duplicates = len(rows) - len(set(rows))
    print(
        f"\n[{stage}] killed {kill.what} on node {kill.node_id[:8]} at {kill.at_s:.1f} s ({kill.progress}); "
        f"inputs {inputs}, output rows {len(rows)}, duplicates {duplicates}, run {wall_s:.1f} s"
    )


# --- slc label -------------------------------------------------------------


# Where each shape classifies: the pool in its actors, the fused shape in the tasks that read.
CLASSIFIER_NODE = {"pool": lambda: node_of_actor("Labeller"), "fused": lambda: busiest_node("slc-label")}


@pytest.mark.parametrize("shape", ["pool", "fused"])
def test_label_finishes_with_every_file_once_when_the_classifier_node_dies(
    shape, fault_cluster, corpus, speech, small_bundle, tmp_path
):
    fault_cluster.top_up()
    config = LabelConfig(files_per_task=4, rows_per_file=10, top_k=2, shape=shape)
    # The answer of each recording, classified here; every copy of it must get that answer.
    classifier = Classifier(small_bundle)
    answers = {wav: classifier.classify(classifier.load_audio(wav)).language for _, wav in speech}
    reference = {str(path): (answers[path.read_bytes()], None) for path in corpus.rglob("*.wav")}
    assert len(reference) == FILES

    out = tmp_path / "labels"
    started = time.monotonic()

    def ready() -> str | None:
        parts = _parts(out, "part-*.parquet")
        return f"{len(parts)} parts of {config.rows_per_file} rows written" if len(parts) >= 3 else None

    with kill_switch(fault_cluster, ready, CLASSIFIER_NODE[shape], lambda: started) as kills:
        summary = label([str(corpus)], small_bundle, str(out), config)
    wall_s = time.monotonic() - started
    assert kills, f"the run finished ({wall_s:.1f} s) before a node was killed"
    rows = read_labels(out).to_pylist()
    paths = [r["path"] for r in rows]
    _report(f"label, {shape}", kills[0], FILES, paths, wall_s)
    print(f"[label] lost {len(set(reference) - set(paths))}, summary {summary['listed']} listed")
    assert sorted(paths) == sorted(reference), "files lost or repeated"
    assert {r["path"]: (r["language"], r["error"]) for r in rows} == reference
    assert summary["listed"] == summary["labelled"] == FILES


# --- slc ingest ------------------------------------------------------------


def _clip_ids(out: Path) -> list[str]:
    return [i for split in ("train", "val", "test") for i in read_split(str(out), split, columns=["id"])["id"].to_pylist()]


def test_ingest_keeps_every_clip_once_when_a_featurizing_node_dies(fault_cluster, corpus, tmp_path):
    fault_cluster.top_up()
    # Two augmented copies of each training clip: work enough that the run is
    # still featurizing when the kill comes (the bare clips take about a second).
    config = IngestConfig(clips_per_task=4, rows_per_file=8, augment=AugmentConfig(copies=2))
    # Every clip, and each training clip's copies (numbered after the clip itself).
    found = discover(corpus, split=config.split)
    reference = [c.id for c in found.clips] + [
        copy_id(c.id, i) for c in found.clips if c.split == "train" for i in range(1, config.augment.copies + 1)
    ]

    out = tmp_path / "shards"
    started = time.monotonic()

    def ready() -> str | None:
        parts = _parts(out, "*/part-*.parquet")
        return f"{len(parts)} shard files written" if len(parts) >= 2 else None

    with kill_switch(fault_cluster, ready, lambda: busiest_node("MapBatches"), lambda: started) as kills:
        summary = ingest(corpus, str(out), config)
    wall_s = time.monotonic() - started
    assert kills, f"the run finished ({wall_s:.1f} s) before a node was killed"
    ids = _clip_ids(out)
    _report("ingest", kills[0], summary["discovered"], ids, wall_s)
    print(f"[ingest] lost {len(set(reference) - set(ids))}, rejected {summary['rejected']}")
    assert summary["discovered"] == FILES
    assert summary["accepted"] + summary["rejected"] == summary["discovered"]
    assert sorted(ids) == sorted(reference), "clips lost or repeated"
    assert read_rejects(str(out)).num_rows == summary["rejected"]


# --- slc train -------------------------------------------------------------


def test_training_resumes_from_its_latest_checkpoint_when_a_worker_node_dies_and_ends_as_an_uninterrupted_run(
    fault_cluster, small_shards, tiny_run, tmp_path
):
    """The node of a training worker dies after the first checkpoint; Ray
    restarts the group from the latest one, and the run ends with the history
    of `tiny_run`, which nothing interrupted: rows reach the workers in order
    and every random draw is seeded by epoch, so the same shards and settings
    give the same weights, resumed or not."""
    fault_cluster.top_up()
    epochs = TINY_RUN_EPOCHS
    # Every checkpoint kept: an epoch trained twice would show as two.
    config = tiny_run_config(max_failures=2, keep_checkpoints=epochs)
    out = tmp_path / "run"
    started = time.monotonic()

    def ready() -> str | None:
        done = registered_epochs(out)
        return f"{len(done)} of {epochs} epochs checkpointed" if done else None

    with kill_switch(fault_cluster, ready, lambda: node_of_actor("RayTrainWorker"), lambda: started) as kills:
        best = train(str(small_shards), str(out), config)
    wall_s = time.monotonic() - started
    assert kills, f"the run finished ({wall_s:.1f} s) before a node was killed"
    resumed = json.loads((out / "best" / "history.json").read_text())
    registered = registered_epochs(out)
    written = sorted(json.loads(p.read_text())["epoch"] for p in _parts(out, "run/checkpoint_*/metrics.json"))
    _report("train", kills[0], epochs, [str(row["epoch"]) for row in resumed], wall_s)
    print(f"[train] checkpoints by epoch: {registered} registered, {written} on disk; best epoch {best['epoch']}")
    assert not kills[0].progress.startswith(f"{epochs} of"), "killed after the last epoch"
    assert [row["epoch"] for row in resumed] == list(range(1, epochs + 1))
    assert registered == list(range(1, epochs + 1)), "an epoch was trained twice: not resumed"
    uninterrupted = json.loads((tiny_run[0] / "best" / "history.json").read_text())
    for name in ("train_loss", "val_loss", "val_f1"):
        assert [row[name] for row in resumed] == pytest.approx([row[name] for row in uninterrupted], abs=1e-6), name


# --- Serve ---------------------------------------------------------------


LOAD_S, KILL_AT_S, CLIENTS = 18.0, 8.0, 8
# The proxy's deadline for a request; the clients wait longer.
DEADLINE_S, CLIENT_TIMEOUT_S = 20, 60


def _post(session: requests.Session, url: str, body: bytes, headers: dict | None = None) -> dict:
    sent = time.monotonic()
    try:
        response = session.post(
            f"{url}/v1/classify", files={"file": ("clip.wav", body)}, headers=headers, timeout=CLIENT_TIMEOUT_S
        )
        status, text = response.status_code, response.text
    except (requests.ConnectionError, requests.Timeout) as error:
        status, text = None, str(error)
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    return {"sent": sent, "done": time.monotonic(), "status": status, "answer": answer, "text": text[:200]}


def _replicas(app: str) -> list[str]:
    from ray.util.state import list_actors

    found = list_actors(filters=[("state", "=", "ALIVE")], detail=True, raise_on_missing_output=False)
    return [a.name for a in found if a.class_name == f"ServeReplica:{app}:LanguageClassifier"]


def _running_replicas(app: str) -> int:
    from ray import serve

    deployment = serve.status().applications[app].deployments["LanguageClassifier"]
    return deployment.replica_states.get("RUNNING", 0)


@pytest.fixture(scope="module")
def replica_killed_under_load(fault_cluster, small_bundle, speech):
    """Two replicas, CLIENTS clients posting for LOAD_S seconds, one replica
    killed at KILL_AT_S; then a burst once both replicas run again.
    -> (requests under load, (kill sent, replica seen dead), burst after
    recovery, seconds to recover, the endpoint's URL)."""
    import ray
    from ray import serve

    from slc.apps.serve import build_app

    fault_cluster.top_up()
    app, port = "slc-faults", free_port()
    url = f"http://127.0.0.1:{port}"
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(small_bundle, ServeConfig(num_replicas=2, port=port)), name=app, route_prefix="/")
        body = speech[0][1]
        stop_at = time.monotonic() + LOAD_S

        def client() -> list[dict]:
            with requests.Session() as session:
                results = []
                while time.monotonic() < stop_at:
                    results.append(_post(session, url, body))
                return results

        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client) for _ in range(CLIENTS)]
            time.sleep(KILL_AT_S)
            victim = ray.get_actor(_replicas(app)[0], namespace="serve")
            killed_at = time.monotonic()
            ray.kill(victim, no_restart=True)
            with contextlib.suppress(ray.exceptions.RayActorError):
                ray.get(victim.__ray_ready__.remote(), timeout=30)
            dead_at = time.monotonic()
            results = [r for f in futures for r in f.result()]
        while _running_replicas(app) < 2 or len(_replicas(app)) < 2:
            assert time.monotonic() < killed_at + 120, "the killed replica was never replaced"
            time.sleep(0.2)
        recovered_s = time.monotonic() - killed_at
        with ThreadPoolExecutor(CLIENTS) as pool:
            burst = list(pool.map(lambda _: _post(requests.Session(), url, body), range(4 * CLIENTS)))
        yield results, (killed_at, dead_at), burst, recovered_s, url
    finally:
        serve.shutdown()


def test_killing_a_replica_under_load_fails_only_its_requests_in_flight(replica_killed_under_load):
    results, (killed_at, dead_at), burst, recovered_s, _ = replica_killed_under_load
    failed = [r for r in results if r["status"] != 200]
    # Sent before the replica was seen dead and answered after the kill was sent.
    in_flight = [r for r in results if r["sent"] <= dead_at and r["done"] >= killed_at]
    late = [r for r in failed if r["sent"] > dead_at]
    print(
        f"\n[serve] killed 1 of 2 replicas at {KILL_AT_S:.0f} s of {LOAD_S:.0f} s under {CLIENTS} clients "
        f"(seen dead {1000 * (dead_at - killed_at):.0f} ms after the kill); "
        f"sent {len(results)}, succeeded {len(results) - len(failed)}, failed {len(failed)} "
        f"({len(in_flight)} in flight at the kill, {len(late)} failures sent after it), "
        f"statuses {sorted({r['status'] for r in failed}, key=str)}, slowest answer "
        f"{max(r['done'] - r['sent'] for r in results):.1f} s; replaced in {recovered_s:.1f} s; "
        f"after recovery {sum(r['status'] == 200 for r in burst)}/{len(burst)} succeeded"
    )
    assert all(r["status"] is not None and r["status"] >= 500 for r in failed), [r["text"] for r in failed]
    assert not late, f"requests sent after the kill failed: {[r['text'] for r in late]}"
    assert all(r in in_flight for r in failed), "a request failed that was not in flight at the kill"
    assert all(r["status"] == 200 for r in burst)


def test_requests_failed_by_a_dead_replica_get_a_json_error(replica_killed_under_load):
    results, *_ = replica_killed_under_load
    failed = [r for r in results if r["status"] != 200]
    if not failed:
        pytest.skip("no request was in flight on the killed replica")
    assert all(set(r["answer"] or {}) == {"error", "detail"} for r in failed), [r["text"] for r in failed]


def test_a_request_past_its_deadline_gets_a_json_504(replica_killed_under_load, speech):
    *_, url = replica_killed_under_load
    with requests.Session() as session:
        answer = _post(session, url, speech[0][1], headers={TIMEOUT_HEADER.decode(): "0.001"})
        assert answer["status"] == 504, answer["text"]
        assert answer["answer"]["error"] == "timeout" and "timed out" in answer["answer"]["detail"]
        assert _post(session, url, speech[0][1])["status"] == 200
