"""deploy/grafana/wanserve.json imports as it is and only queries metrics that wanserve exports."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from service.api.metrics import HTTP_REGISTRY, RedisStateCollector
from worker.metrics import WorkerMetrics

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "wanserve.json"
_METRIC = re.compile(r"\bwanserve_[a-z0-9_]+")
_SELECTOR = re.compile(r"\b(wanserve_[a-z0-9_]+)\{([^}]*)\}")
_BY = re.compile(r"\bby \(([^)]*)\)")
_SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}
PROMETHEUS_LABELS = {"instance", "job", "le"}
"""Labels Prometheus adds at scrape (and a histogram's bucket bound)."""


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def families() -> Iterator[Any]:
    """Every metric family wanserve defines: the API's (HTTP counted here, fleet state read from Redis)
    and a worker's."""
    yield from HTTP_REGISTRY.collect()
    # describe() names the families without reading Redis (none is contacted here).
    yield from RedisStateCollector(Redis.from_url("redis://127.0.0.1:1"), "wanserve").describe()
    yield from WorkerMetrics("wan2.1-t2v-1.3b", {"ranks": 2, "ulysses": 2, "cfg": 1}).registry.collect()


def exported_series() -> dict[str, set[str] | None]:
    """Series name -> its labels (None where the family has no samples to tell)."""
    series: dict[str, set[str] | None] = {}
    for family in families():
        labels = set().union(*(sample.labels for sample in family.samples)) if family.samples else None
        for suffix in _SERIES_SUFFIXES[family.type]:
            series[family.name + suffix] = labels
    return series


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        found.append(query["query"] if isinstance(query, dict) else query)
    return found


def test_the_dashboard_imports_as_it_is(dashboard: dict[str, Any]) -> None:
    (source,) = dashboard["__inputs"]
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    datasource = {"type": "prometheus", "uid": "${" + source["name"] + "}"}
    assert dashboard["id"] is None and dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == datasource, panel["title"]
        assert panel["type"] in {"stat", "timeseries"}
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert panel["targets"] and len(ref_ids) == len(set(ref_ids))
        assert all(target["datasource"] == datasource for target in panel["targets"])
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"] == datasource


def test_the_dashboard_shows_what_the_issue_asks(dashboard: dict[str, Any]) -> None:
    text = " ".join(queries(dashboard))
    for needed in (
        "wanserve_queue_length",
        "wanserve_jobs_total",
        "histogram_quantile(0.5, sum by (le, stage) (rate(wanserve_stage_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, stage) (rate(wanserve_stage_seconds_bucket",
        "rate(wanserve_denoise_step_seconds_count",
        "wanserve_cache_skipped_ratio",
        "wanserve_workers",
    ):
        assert needed in text


def test_every_metric_queried_is_exported(dashboard: dict[str, Any]) -> None:
    series = exported_series()
    for query in queries(dashboard):
        names = _METRIC.findall(query)
        assert names, query
        for name in names:
            assert name in series, f"{name} (in {query!r}) is not exported; exported: {sorted(series)}"


def test_every_label_queried_exists(dashboard: dict[str, Any]) -> None:
    series = exported_series()
    for query in queries(dashboard):
        known: set[str] = set(PROMETHEUS_LABELS)
        for name in _METRIC.findall(query):
            labels = series[name]
            if labels is None:  # no samples to tell (checked against a real scrape in integration)
                known = set()
                break
            known |= labels
        if not known:
            continue
        for name, matchers in _SELECTOR.findall(query):
            used = {matcher.split("=")[0].rstrip("!~ ").strip() for matcher in matchers.split(",")}
            assert used <= (series[name] or set()) | PROMETHEUS_LABELS, (name, used, query)
        for grouping in _BY.findall(query):
            used = {label.strip() for label in grouping.split(",")}
            assert used <= known, (used, query)
