"""Prometheus metrics against a real Redis: the API's /metrics (route templates, fleet state read from
Redis, several processes), and a worker's probe server (/healthz, /readyz, /metrics, job metrics)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq.registry import StartedJobRegistry

from service.api.app import create_app
from service.api.metrics import install_metrics
from service.core.settings import Settings, SettingsError
from service.core.video_counts import count_ended
from service.core.worker_registry import WorkerInfo, WorkerRegistration, WorkerState
from worker.metrics import (
    ProbeServer,
    StepClock,
    WorkerMetrics,
    WorkerReadiness,
    skipped_ratio,
    start_probe_server,
)

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "wanserve.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a scrape, by (series name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scraped: Samples, name: str, **labels: str) -> float:
    """One series' value (0 when absent)."""
    return scraped.get((name, frozenset(labels.items())), 0.0)


def label_values(scraped: Samples, name: str, label: str) -> set[str]:
    return {dict(labels)[label] for series, labels in scraped if series == name and label in dict(labels)}


@pytest.fixture
def client(redis: Redis, redis_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, data_dir=tmp_path, storage_dir=tmp_path / "videos")
    with TestClient(create_app(settings)) as test_client:  # create_app installs the metrics
        yield test_client


def scrape(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def test_requests_are_counted_by_route_template_never_by_raw_path(client: TestClient) -> None:
    before = scrape(client)
    unknown_ids = ["video_" + "a" * 32, "video_" + "b" * 32]
    for video_id in unknown_ids:
        assert client.get(f"/v1/videos/{video_id}").status_code == 404
    assert client.get("/healthz").status_code == 200
    for path in ("/no/such/page", "/wp-admin/setup.php"):
        assert client.get(path).status_code == 404
    assert client.request("BREW", "/healthz").status_code == 405
    after = scrape(client)

    def moved(**labels: str) -> float:
        name = "wanserve_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(route="/v1/videos/{video_id}", method="GET", status="404") == 2
    assert moved(route="/healthz", method="GET", status="200") == 1
    assert moved(route="unmatched", method="GET", status="404") == 2
    assert moved(route="/healthz", method="other", status="405") == 1
    assert moved(route="/metrics", method="GET", status="200") == 1  # the first scrape
    count = "wanserve_http_request_seconds_count"
    route = "/v1/videos/{video_id}"
    assert value(after, count, route=route) - value(before, count, route=route) == 2
    raw = " ".join(f"{name} {sorted(labels)}" for name, labels in after)
    for leaked in (*unknown_ids, "/no/such", "wp-admin", "BREW"):
        assert leaked not in raw  # unbounded label values would be a defect


def test_fleet_state_is_read_from_redis_at_scrape_time(client: TestClient, redis: Redis) -> None:
    for _ in range(3):
        response = client.post("/v1/videos", json={"prompt": "a red fox", "seconds": 1, "size": "64x64"})
        assert response.status_code == 200, response.text
    started = StartedJobRegistry("wanserve", connection=redis).key
    redis.zadd(started, {"job-a:exec-1": time.time() + 60, "job-b:exec-1": time.time() - 1})  # one expired
    info = WorkerInfo(model="wan2.1-tiny-random", parallel={"ranks": 1, "ulysses": 1, "cfg": 1})
    WorkerRegistration(redis, "idle-1", info).set_state(WorkerState.IDLE)
    WorkerRegistration(redis, "busy-1", info).set_state(WorkerState.BUSY, "video_" + "c" * 32)
    count_ended(redis, "completed")
    count_ended(redis, "completed")
    count_ended(redis, "failed")

    scraped = scrape(client)
    assert value(scraped, "wanserve_queue_length") == 3
    assert value(scraped, "wanserve_jobs_running") == 1
    assert value(scraped, "wanserve_redis_up") == 1
    workers = {
        state: value(scraped, "wanserve_workers", state=state) for state in ("loading", "idle", "busy")
    }
    assert workers == {"loading": 0, "idle": 1, "busy": 1}
    ended = {
        s: value(scraped, "wanserve_videos_total", status=s) for s in ("completed", "failed", "cancelled")
    }
    assert ended == {"completed": 2, "failed": 1, "cancelled": 0}


def test_a_scrape_without_redis_still_answers(redis_url: str) -> None:
    app = FastAPI()
    install_metrics(app, Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2), "wanserve")
    with TestClient(app) as test_client:
        scraped = scrape(test_client)
    assert value(scraped, "wanserve_redis_up") == 0
    assert not label_values(scraped, "wanserve_workers", "state")  # unknown, not zero


_MULTIPROCESS_SCRIPT = """
import sys
from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis import Redis
from service.api.metrics import install_metrics

app = FastAPI()

@app.get("/items/{item_id}")
def item(item_id: str) -> dict:
    return {"id": item_id}

install_metrics(app, Redis.from_url(sys.argv[1]), "wanserve")
with TestClient(app) as client:
    for i in range(int(sys.argv[2])):
        assert client.get(f"/items/{i}").status_code == 200
    if sys.argv[3] == "scrape":
        print(client.get("/metrics").text)
"""


def test_several_api_processes_add_up_in_multiprocess_mode(
    redis: Redis, redis_url: str, tmp_path: Path
) -> None:
    """What ``uvicorn --workers N`` does: processes sharing PROMETHEUS_MULTIPROC_DIR; a scrape of any
    of them counts every process's requests."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}

    def run(requests: int, scrape: bool) -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                _MULTIPROCESS_SCRIPT,
                redis_url,
                str(requests),
                "scrape" if scrape else "-",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return done.stdout

    run(3, scrape=False)
    scraped = samples(run(2, scrape=True))
    assert (
        value(scraped, "wanserve_http_requests_total", route="/items/{item_id}", method="GET", status="200")
        == 5
    )
    assert value(scraped, "wanserve_http_request_seconds_count", route="/items/{item_id}") == 5
    # The Redis-read families come from the process answering the scrape, next to the files' sums.
    fleet = {name: v for (name, labels), v in scraped.items() if not labels}
    assert fleet.get("wanserve_redis_up") == 1 and "wanserve_queue_length" in fleet, fleet


@pytest.fixture
def worker_metrics() -> WorkerMetrics:
    return WorkerMetrics("wan2.1-tiny-random", {"ranks": 2, "ulysses": 2, "cfg": 1})


@pytest.fixture
def readiness(redis: Redis) -> WorkerReadiness:
    return WorkerReadiness(redis)


@pytest.fixture
def probes(worker_metrics: WorkerMetrics, readiness: WorkerReadiness) -> Iterator[ProbeServer]:
    server = ProbeServer(0, worker_metrics.registry, readiness, host="127.0.0.1").start()
    yield server
    server.close()


_HTTP = httpx.Client(timeout=10)  # one client: each new one loads the CA bundle


def get(server: ProbeServer, path: str) -> httpx.Response:
    return _HTTP.get(f"http://127.0.0.1:{server.port}{path}")


def test_worker_probes_follow_readiness(probes: ProbeServer, readiness: WorkerReadiness) -> None:
    assert get(probes, "/healthz").json() == {"status": "ok"}
    loading = get(probes, "/readyz")
    assert loading.status_code == 503 and loading.json()["failed"] == ["model_loaded"]

    readiness.model_loaded = True
    ready = get(probes, "/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"model_loaded": True, "redis": True, "not_draining": True},
    }

    readiness.draining = True
    draining = get(probes, "/readyz")
    assert draining.status_code == 503 and draining.json()["failed"] == ["not_draining"]
    assert get(probes, "/healthz").status_code == 200  # draining is not dead
    assert get(probes, "/nothing").status_code == 404


def test_worker_readiness_fails_without_redis_or_when_the_check_raises(worker_metrics: WorkerMetrics) -> None:
    lost = WorkerReadiness(Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2))
    lost.model_loaded = True
    server = ProbeServer(0, worker_metrics.registry, lost, host="127.0.0.1").start()
    try:
        answer = get(server, "/readyz")
        assert answer.status_code == 503 and answer.json()["failed"] == ["redis"]
    finally:
        server.close()

    def broken() -> dict[str, bool]:
        raise RuntimeError("boom")

    server = ProbeServer(0, worker_metrics.registry, broken, host="127.0.0.1").start()
    try:
        answer = get(server, "/readyz")
        assert answer.status_code == 503 and answer.json()["failed"] == ["readiness_check"]
    finally:
        server.close()


def test_port_zero_means_no_server_and_a_taken_port_names_the_setting(
    worker_metrics: WorkerMetrics, readiness: WorkerReadiness, probes: ProbeServer
) -> None:
    assert start_probe_server(0, worker_metrics.registry, readiness) is None
    with pytest.raises(SettingsError, match=f"WANSERVE_METRICS_PORT={probes.port}: cannot listen there"):
        start_probe_server(probes.port, worker_metrics.registry, readiness, host="127.0.0.1")


def test_job_metrics_move_after_record_job(probes: ProbeServer, worker_metrics: WorkerMetrics) -> None:
    labels = {"model": "wan2.1-tiny-random", "layout": "ulysses2-cfg1"}
    before = samples(get(probes, "/metrics").text)
    assert value(before, "wanserve_model_loaded", **labels) == 0
    assert value(before, "wanserve_jobs_total", status="completed", **labels) == 0  # present at zero

    clock = StepClock()
    clock.start()
    for done in range(1, 5):
        clock.lap(done, 4)
    assert len(clock.laps) == 4 and all(lap >= 0 for lap in clock.laps)
    cache = {"blocks_computed": 30, "blocks_skipped": 10}
    timings = {"queue_wait_s": 0.5, "text_encode_s": 0.02, "denoise_s": 1.5, "vae_decode_s": 0.3}
    worker_metrics.set_model_loaded(True)
    worker_metrics.record_job(
        {**timings, "encode_s": 0.2, "store_s": 0.01, "other_s": 9.0},
        "completed",
        skipped_ratio=skipped_ratio(cache),
        peak_memory_bytes=123.5 * 2**20,
        step_seconds=clock.laps,
    )
    worker_metrics.record_job(timings, "failed")
    worker_metrics.record_job({}, "something-new")  # counted as failed, logged

    after = samples(get(probes, "/metrics").text)
    assert value(after, "wanserve_model_loaded", **labels) == 1
    assert value(after, "wanserve_jobs_total", status="completed", **labels) == 1
    assert value(after, "wanserve_jobs_total", status="failed", **labels) == 2
    assert label_values(after, "wanserve_jobs_total", "status") == {
        "completed",
        "failed",
        "cancelled",
        "deleted",
        "retried",
    }
    stage_counts = {
        stage: value(after, "wanserve_stage_seconds_count", stage=stage, **labels)
        for stage in ("queue_wait", "text_encode", "denoise", "vae_decode", "encode", "store")
    }
    assert stage_counts == {
        "queue_wait": 2,
        "text_encode": 2,
        "denoise": 2,
        "vae_decode": 2,
        "encode": 1,
        "store": 1,
    }
    assert value(after, "wanserve_stage_seconds_sum", stage="denoise", **labels) == pytest.approx(3.0)
    assert value(after, "wanserve_denoise_step_seconds_count", **labels) == 4
    assert value(after, "wanserve_cache_skipped_ratio_sum", **labels) == pytest.approx(0.25)
    assert value(after, "wanserve_cache_skipped_ratio_bucket", le="0.3", **labels) == 1
    assert value(after, "wanserve_peak_memory_bytes", **labels) == 123.5 * 2**20
    assert "other" not in label_values(after, "wanserve_stage_seconds_count", "stage")


def test_skipped_ratio_of_a_cache_report() -> None:
    assert skipped_ratio(None) is None
    assert skipped_ratio({"method": "none", "blocks_computed": None, "blocks_skipped": None}) is None
    assert skipped_ratio({"blocks_computed": 0, "blocks_skipped": 0}) is None
    assert skipped_ratio({"blocks_computed": 6, "blocks_skipped": 2}) == 0.25


_SELECTOR = re.compile(r"\b(wanserve_[a-z0-9_]+)\{([^}]*)\}")
_BY = re.compile(r"\bby \(([^)]*)\)")
_METRIC = re.compile(r"\bwanserve_[a-z0-9_]+")


def test_the_dashboard_queries_labels_a_real_scrape_has(
    client: TestClient, redis: Redis, probes: ProbeServer, worker_metrics: WorkerMetrics
) -> None:
    """Complements the unit test: every label a panel selects or groups by is on the series scraped
    from a real API (with Redis) and a real worker."""
    WorkerRegistration(redis, "w", WorkerInfo(model="m")).set_state(WorkerState.IDLE)
    count_ended(redis, "completed")
    client.get("/healthz")
    worker_metrics.record_job({"denoise_s": 1.0}, "completed", skipped_ratio=0.5, step_seconds=[0.1])
    scraped = {**scrape(client), **samples(get(probes, "/metrics").text)}
    labels: dict[str, set[str]] = {}
    for name, series_labels in scraped:
        labels.setdefault(name, set()).update(key for key, _ in series_labels)
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for expr in exprs:
        names = _METRIC.findall(expr)
        assert all(name in labels for name in names), (expr, sorted(labels))
        available = set().union(*(labels[name] for name in names)) | {"instance", "job", "le"}
        for name, matchers in _SELECTOR.findall(expr):
            used = {matcher.split("=")[0].rstrip("!~ ").strip() for matcher in matchers.split(",")}
            assert used <= labels[name], (expr, used)
        for grouping in _BY.findall(expr):
            assert {label.strip() for label in grouping.split(",")} <= available, expr
