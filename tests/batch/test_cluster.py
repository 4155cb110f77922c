"""How slc starts Ray."""

from __future__ import annotations

import os

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
